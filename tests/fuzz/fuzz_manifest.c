/*
 * fuzz_manifest.c - libFuzzer target for the text formats a package carries
 * and the store reads: manifest.json (libadapter/store/manifest.c) first of all,
 * and with the same bytes the SSHSIG armor, an allowed_signers file and a
 * public key line (libadapter/store/sshsig.c, sshkey.c).  A manifest that parses
 * is built again from its fields and must parse again.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "libadapter/store/manifest.h"
#include "libadapter/store/sshkey.h"
#include "libadapter/store/sshsig.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct lora_manifest m, m2;
	struct lora_err err = { 0 };
	const char *text = (const char *)data;

	if (lora_manifest_parse(text, size, &m, &err) == 0) {
		struct lora_manifest_spec s = {
			.name = m.name, .tag = m.tag, .description = m.description, .created = m.created,
			.base_name = m.base_name, .base_fingerprint = m.base_fingerprint, .lora = m.lora,
			.provenance = m.provenance, .files = m.files, .n_files = m.n_files,
			.signer_identity = m.signer_identity, .signer_fp = m.signer_fp,
		};
		char *again = lora_manifest_build(&s, &err);
		if (again) {
			if (lora_manifest_parse(again, strlen(again), &m2, &err) != 0)
				abort();  /* what we write we must read */
			lora_manifest_free(&m2);
			free(again);
		}
	}
	lora_manifest_free(&m);

	struct lora_sshsig sig;
	lora_sshsig_parse(text, size, &sig, &err);
	struct lora_signers sg;
	if (lora_signers_parse(text, size, &sg, &err) == 0)
		lora_signers_free(&sg);
	char *line = malloc(size + 1);
	if (line) {
		unsigned char pk[32];
		char *comment = NULL;
		memcpy(line, data, size);
		line[size] = 0;
		lora_sshkey_parse_pub_line(line, pk, &comment, &err);
		free(comment);
		free(line);
	}
	return 0;
}
