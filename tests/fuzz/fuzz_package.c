/*
 * fuzz_package.c - libFuzzer target for the .lora reader (libadapter/store/package.c):
 * any bytes as a tar archive, read in memory without extracting; when it
 * reads, the manifest is parsed and matched against the entries, and the
 * signature parsed, as lora verify would.
 *
 *     make fuzz    (builds tests/fuzz/fuzz_*.c with clang -fsanitize=fuzzer,address,undefined)
 */
#include <stddef.h>
#include <stdint.h>

#include "libadapter/store/manifest.h"
#include "libadapter/store/package.h"
#include "libadapter/store/sshsig.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct lora_pkg p;
	struct lora_err err = { 0 };
	struct lora_manifest m;
	struct lora_sshsig sig;

	if (lora_pkg_read_mem(data, size, "fuzz.lora", NULL, &p, &err) < 0)
		return 0;
	if (lora_manifest_parse(p.manifest, p.manifest_len, &m, &err) == 0)
		lora_pkg_match_files(&m, p.entries, p.n_entries, &err);
	lora_manifest_free(&m);
	if (p.sig)
		lora_sshsig_parse(p.sig, p.sig_len, &sig, &err);
	lora_pkg_free(&p);
	return 0;
}
