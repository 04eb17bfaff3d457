/*
 * sshkey.h - OpenSSH Ed25519 keys: the private key file, the public key
 * line, fingerprints, and the SSH wire encoding both keys and signatures use.
 *
 * Private key file ("openssh-key-v1", PROTOCOL.key in OpenSSH), PEM-like
 * armor around base64 (lines of 70 characters):
 *   -----BEGIN OPENSSH PRIVATE KEY-----
 *   1. "openssh-key-v1\0"            15 bytes of magic
 *   2. string ciphername            "none" (anything else: encrypted, refused)
 *   3. string kdfname               "none"
 *   4. string kdfoptions            ""
 *   5. uint32 N                     number of keys, 1
 *   6. string publickey             string "ssh-ed25519", string pk[32]
 *   7. string private section:
 *        uint32 check, uint32 check (equal)
 *        string "ssh-ed25519", string pk[32], string sk[64] (= seed[32] || pk[32])
 *        string comment
 *        padding 1, 2, 3, ... up to a multiple of 8
 *   -----END OPENSSH PRIVATE KEY-----
 * A "string" is a big-endian uint32 length and that many bytes.
 *
 * Public key line: "ssh-ed25519 <base64 of publickey blob> [comment]".
 * Fingerprint: "SHA256:" + unpadded base64 of sha256(publickey blob), as
 * `ssh-keygen -l` prints it.
 *
 * Secrets live only in struct lora_sshkey; lora_sshkey_wipe() clears it with
 * explicit_bzero.  Key files are read with O_NOFOLLOW.
 */
#ifndef LORA_SSHKEY_H
#define LORA_SSHKEY_H

#include <stddef.h>
#include <stdint.h>

#include "libadapter/base/err.h"

#define LORA_ED25519_TYPE "ssh-ed25519"
#define LORA_SSH_FP_MAX 64           /* "SHA256:" + 43 + NUL fits */

struct lora_sshkey {
	unsigned char seed[32];       /* the secret */
	unsigned char pk[32];
	char comment[256];
};

/* ---- SSH wire encoding (RFC 4251 strings and uint32s) ---- */

struct lora_sshrd {
	const unsigned char *p;
	size_t left;
};
int lora_sshrd_u32(struct lora_sshrd *r, uint32_t *v);
/* A string: *s points into the buffer (not NUL-terminated). */
int lora_sshrd_str(struct lora_sshrd *r, const unsigned char **s, size_t *n);
/* A string that must equal want. */
int lora_sshrd_expect(struct lora_sshrd *r, const char *want);

struct lora_buf;
void lora_sshwr_u32(struct lora_buf *b, uint32_t v);
void lora_sshwr_str(struct lora_buf *b, const void *s, size_t n);
void lora_sshwr_cstr(struct lora_buf *b, const char *s);
/* The public key blob: string "ssh-ed25519", string pk. */
void lora_sshwr_pubblob(struct lora_buf *b, const unsigned char pk[32]);

/* ---- base64 ---- */

/* malloc'd base64 of buf; wrap > 0 inserts '\n' every wrap characters (none at the end). */
char *lora_b64_encode(const void *buf, size_t len, int wrap, int pad);
/* Decode, skipping ASCII whitespace; strict otherwise (padding only at the end).  malloc'd. */
int lora_b64_decode(const char *s, size_t len, unsigned char **out, size_t *out_len);

/* ---- keys ---- */

/* Parse an armored private key.  `label` names it in errors. */
int lora_sshkey_parse_private(const char *text, size_t len, const char *label,
			      struct lora_sshkey *key, struct lora_err *err);
/* Read a private key file (O_NOFOLLOW, at most 64 KiB). */
int lora_sshkey_load_private(const char *path, struct lora_sshkey *key, struct lora_err *err);
/* A fresh key from the OpenSSL RNG. */
int lora_sshkey_generate(struct lora_sshkey *key, const char *comment, struct lora_err *err);
/* The armored private key text (malloc'd; the caller wipes and frees it). */
char *lora_sshkey_format_private(const struct lora_sshkey *key);
/*
 * Write the private key to path, mode 0600, never through a symlink.  Without
 * replace an existing file is an error (the final name is created O_EXCL by
 * link(2)); with replace it is renamed over.
 */
int lora_sshkey_write_private(const char *path, const struct lora_sshkey *key, int replace,
			      struct lora_err *err);
void lora_sshkey_wipe(struct lora_sshkey *key);

/* malloc'd "ssh-ed25519 AAAA...[ comment]" (no newline). */
char *lora_sshkey_pub_line(const unsigned char pk[32], const char *comment);
/*
 * Parse "ssh-ed25519 AAAA... [comment]" (leading blanks and a trailing
 * newline allowed).  comment (may be NULL) gets a malloc'd comment or NULL.
 */
int lora_sshkey_parse_pub_line(const char *line, unsigned char pk[32], char **comment,
			       struct lora_err *err);
/* Parse a public key blob (string "ssh-ed25519", string pk[32]), nothing after it. */
int lora_sshkey_parse_pubblob(const unsigned char *blob, size_t n, unsigned char pk[32]);
/* "SHA256:..." of the key, as ssh-keygen -l prints it. */
void lora_sshkey_fingerprint(const unsigned char pk[32], char out[LORA_SSH_FP_MAX]);
/* The same for any public key blob (any key type). */
void lora_ssh_fingerprint_blob(const void *blob, size_t n, char out[LORA_SSH_FP_MAX]);

/* ---- raw Ed25519 (OpenSSL EVP_PKEY_ED25519) ---- */

int lora_ed25519_sign(const struct lora_sshkey *key, const void *msg, size_t len,
		      unsigned char sig[64], struct lora_err *err);
/* 1 when sig is a valid signature of msg by pk, else 0. */
int lora_ed25519_verify(const unsigned char pk[32], const void *msg, size_t len,
			const unsigned char sig[64]);

#endif
