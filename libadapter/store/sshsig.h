/*
 * sshsig.h - OpenSSH SSHSIG signatures (PROTOCOL.sshsig) and the
 * allowed_signers trust file, so that `ssh-keygen -Y sign/verify` and lora
 * read each other's signatures.
 *
 * The signature blob:
 *   1. "SSHSIG"                6 bytes of magic
 *   2. uint32 version          1
 *   3. string publickey        string "ssh-ed25519", string pk[32]
 *   4. string namespace        "lora-adapter" for packages
 *   5. string reserved         "" (ignored when read)
 *   6. string hash_algorithm   "sha512" (written; "sha256" also read)
 *   7. string signature        string "ssh-ed25519", string sig[64]
 * The Ed25519 signature covers
 *   "SSHSIG" || string namespace || string reserved || string hash_algorithm
 *   || string H(message)
 * and the file is the blob in base64 (70 columns) between
 * "-----BEGIN SSH SIGNATURE-----" and "-----END SSH SIGNATURE-----".
 *
 * allowed_signers (ssh-keygen(1), ALLOWED SIGNERS), one key a line:
 *   principals [options] keytype base64-key [comment]
 * principals is a comma-separated pattern-list (* and ? wildcards, ! negates;
 * may be double-quoted); options are comma-separated: cert-authority,
 * namespaces="pattern-list", valid-after="YYYYMMDD[HHMM[SS]][Z]",
 * valid-before="...".  '#' starts a comment line.
 */
#ifndef LORA_SSHSIG_H
#define LORA_SSHSIG_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "libadapter/base/err.h"
#include "libadapter/store/sshkey.h"

#define LORA_SIG_NAMESPACE "lora-adapter"
#define LORA_SIG_MAX 16384           /* bytes of an armored signature we accept */

struct lora_sshsig {
	unsigned char pk[32];         /* the signing key */
	char ns[128];                 /* namespace */
	char hashalg[16];             /* "sha256" or "sha512" */
	unsigned char sig[64];
};

/* Sign msg in namespace ns; *armored is malloc'd text ending in a newline. */
int lora_sshsig_sign(const struct lora_sshkey *key, const char *ns, const void *msg, size_t len,
		     char **armored, struct lora_err *err);
/* Parse an armored signature (strictly; ssh-ed25519 keys only). */
int lora_sshsig_parse(const char *armored, size_t len, struct lora_sshsig *out, struct lora_err *err);
/*
 * Parse and check: the namespace is ns and the signature is valid for msg.
 * pk_out (may be NULL) gets the signing key.  Failures are LORA_EVERIFY.
 */
int lora_sshsig_verify(const char *armored, size_t len, const char *ns, const void *msg,
		       size_t msglen, unsigned char pk_out[32], struct lora_err *err);

/* ---- allowed_signers ---- */

struct lora_signer {
	size_t line;                  /* 1-based line number */
	char *principals;             /* pattern-list, quotes removed */
	char *namespaces;             /* the namespaces="..." value, or NULL (any namespace) */
	int cert_authority;
	int64_t valid_after;          /* seconds since the epoch, or INT64_MIN */
	int64_t valid_before;         /* or INT64_MAX */
	char keytype[48];
	int ed25519;                  /* keytype is ssh-ed25519 and pk holds the key */
	unsigned char pk[32];
	char fingerprint[LORA_SSH_FP_MAX];  /* "SHA256:..." of any key type, "" when undecodable */
	char *comment;                /* may be NULL */
	char *error;                  /* why the line is invalid, or NULL */
};

struct lora_signers {
	struct lora_signer *v;        /* valid and invalid lines, in file order */
	size_t n;
};

/*
 * Parse one line (no newline).  Returns 1 for a key line (out->error set
 * when it is malformed), 0 for a blank or comment line (out untouched).
 */
int lora_signer_parse_line(const char *line, size_t lineno, struct lora_signer *out);
void lora_signer_free(struct lora_signer *s);
int lora_signers_parse(const char *text, size_t len, struct lora_signers *out, struct lora_err *err);
/* Load a file; a missing file is an empty list. */
int lora_signers_load(const char *path, struct lora_signers *out, struct lora_err *err);
void lora_signers_free(struct lora_signers *s);

/*
 * Is pk trusted to sign as `identity` in namespace ns at time now?  As
 * `ssh-keygen -Y verify -I identity` decides: some valid line with this key,
 * not cert-authority, principals matching identity, namespaces (if given)
 * matching ns, now inside the validity window.  Returns 1 and *match, or 0
 * with `why` (may be NULL) saying what was missing.
 */
int lora_signers_trusts(const struct lora_signers *s, const unsigned char pk[32],
			const char *identity, const char *ns, time_t now,
			const struct lora_signer **match, char why[256]);

/* OpenSSH match_pattern_list: 1 when s matches a pattern of the comma list, 0 else (a '!' match: 0). */
int lora_pattern_list_match(const char *s, const char *list);

#endif
