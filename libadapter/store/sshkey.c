/* sshkey.c - OpenSSH Ed25519 key files and the SSH wire encoding (see sshkey.h). */
#define _GNU_SOURCE
#include "libadapter/store/sshkey.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "libadapter/base/buf.h"
#include "libadapter/base/fsutil.h"

#define PRIV_BEGIN "-----BEGIN OPENSSH PRIVATE KEY-----"
#define PRIV_END "-----END OPENSSH PRIVATE KEY-----"
#define KEY_MAGIC "openssh-key-v1"   /* followed by a NUL */
#define KEY_FILE_MAX 65536

/* ------------------------------------------------------------ wire format */

int lora_sshrd_u32(struct lora_sshrd *r, uint32_t *v)
{
	if (r->left < 4)
		return -1;
	*v = (uint32_t)r->p[0] << 24 | (uint32_t)r->p[1] << 16 | (uint32_t)r->p[2] << 8 | r->p[3];
	r->p += 4;
	r->left -= 4;
	return 0;
}

int lora_sshrd_str(struct lora_sshrd *r, const unsigned char **s, size_t *n)
{
	uint32_t len;

	if (lora_sshrd_u32(r, &len) < 0 || len > r->left)
		return -1;
	*s = r->p;
	*n = len;
	r->p += len;
	r->left -= len;
	return 0;
}

int lora_sshrd_expect(struct lora_sshrd *r, const char *want)
{
	const unsigned char *s;
	size_t n;

	if (lora_sshrd_str(r, &s, &n) < 0 || n != strlen(want) || memcmp(s, want, n))
		return -1;
	return 0;
}

void lora_sshwr_u32(struct lora_buf *b, uint32_t v)
{
	unsigned char x[4] = { v >> 24, v >> 16, v >> 8, v };
	lora_buf_add(b, x, 4);
}

void lora_sshwr_str(struct lora_buf *b, const void *s, size_t n)
{
	lora_sshwr_u32(b, (uint32_t)n);
	lora_buf_add(b, s, n);
}

void lora_sshwr_cstr(struct lora_buf *b, const char *s)
{
	lora_sshwr_str(b, s, strlen(s));
}

void lora_sshwr_pubblob(struct lora_buf *b, const unsigned char pk[32])
{
	lora_sshwr_cstr(b, LORA_ED25519_TYPE);
	lora_sshwr_str(b, pk, 32);
}

/* ---------------------------------------------------------------- base64 */

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *lora_b64_encode(const void *buf, size_t len, int wrap, int pad)
{
	const unsigned char *p = buf;
	size_t nchars = len / 3 * 4 + (len % 3 ? 4 : 0), cap, o = 0;
	char *out;
	int col = 0;

	/* One allocation of the exact size: the text may encode a secret key, and a
	 * realloc would leave copies behind that nobody wipes. */
	cap = nchars + (wrap > 0 ? nchars / (size_t)wrap : 0) + 1;
	out = malloc(cap);
	if (!out)
		return NULL;
	for (size_t i = 0; i < len; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16;
		size_t k = len - i < 3 ? len - i : 3;
		char q[4];
		int nq = pad || k == 3 ? 4 : (int)k + 1;

		if (k > 1)
			v |= (uint32_t)p[i + 1] << 8;
		if (k > 2)
			v |= p[i + 2];
		q[0] = b64chars[(v >> 18) & 63];
		q[1] = b64chars[(v >> 12) & 63];
		q[2] = k > 1 ? b64chars[(v >> 6) & 63] : '=';
		q[3] = k > 2 ? b64chars[v & 63] : '=';
		for (int j = 0; j < nq; j++) {
			if (wrap > 0 && col == wrap) {
				out[o++] = '\n';
				col = 0;
			}
			out[o++] = q[j];
			col++;
		}
	}
	out[o] = 0;
	return out;
}

static int b64val(int c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

int lora_b64_decode(const char *s, size_t len, unsigned char **out, size_t *out_len)
{
	unsigned char *o = malloc(len / 4 * 3 + 3);
	uint32_t acc = 0;
	size_t n = 0, nq = 0, npad = 0;

	if (!o)
		return -1;
	for (size_t i = 0; i < len; i++) {
		int c = (unsigned char)s[i], v;

		if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
			continue;
		if (c == '=') {
			npad++;
			if (npad > 2)
				goto bad;
			continue;
		}
		if (npad)
			goto bad;  /* data after padding */
		v = b64val(c);
		if (v < 0)
			goto bad;
		acc = acc << 6 | (uint32_t)v;
		if (++nq == 4) {
			o[n++] = acc >> 16;
			o[n++] = acc >> 8;
			o[n++] = acc;
			acc = 0;
			nq = 0;
		}
	}
	if (nq == 1 || (npad && nq + npad != 4))
		goto bad;
	if (nq == 2) {
		if (acc & 0xf)
			goto bad;  /* non-canonical trailing bits */
		o[n++] = acc >> 4;
	} else if (nq == 3) {
		if (acc & 0x3)
			goto bad;
		o[n++] = acc >> 10;
		o[n++] = acc >> 2;
	}
	*out = o;
	*out_len = n;
	return 0;
bad:
	free(o);
	return -1;
}

/* ------------------------------------------------------------- ed25519 */

static EVP_PKEY *priv_pkey(const struct lora_sshkey *key)
{
	return EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, key->seed, 32);
}

int lora_ed25519_sign(const struct lora_sshkey *key, const void *msg, size_t len,
		      unsigned char sig[64], struct lora_err *err)
{
	EVP_PKEY *pk = priv_pkey(key);
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	size_t siglen = 64;
	int ok = 0;

	if (pk && md && EVP_DigestSignInit(md, NULL, NULL, NULL, pk) == 1 &&
	    EVP_DigestSign(md, sig, &siglen, msg, len) == 1 && siglen == 64)
		ok = 1;
	EVP_MD_CTX_free(md);
	EVP_PKEY_free(pk);
	return ok ? 0 : lora_errf(err, "ed25519 signing failed (openssl)");
}

int lora_ed25519_verify(const unsigned char pk[32], const void *msg, size_t len,
			const unsigned char sig[64])
{
	EVP_PKEY *k = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pk, 32);
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	int ok = 0;

	if (k && md && EVP_DigestVerifyInit(md, NULL, NULL, NULL, k) == 1)
		ok = EVP_DigestVerify(md, sig, 64, msg, len) == 1;
	EVP_MD_CTX_free(md);
	EVP_PKEY_free(k);
	return ok;
}

/* The public half of a seed, to check that a key file is consistent. */
static int derive_pk(const unsigned char seed[32], unsigned char pk[32])
{
	struct lora_sshkey tmp;
	EVP_PKEY *k;
	size_t n = 32;
	int ok;

	memcpy(tmp.seed, seed, 32);
	k = priv_pkey(&tmp);
	explicit_bzero(&tmp, sizeof(tmp));
	ok = k && EVP_PKEY_get_raw_public_key(k, pk, &n) == 1 && n == 32;
	EVP_PKEY_free(k);
	return ok ? 0 : -1;
}

/* ------------------------------------------------------------- keys */

void lora_sshkey_wipe(struct lora_sshkey *key)
{
	explicit_bzero(key, sizeof(*key));
}

int lora_sshkey_generate(struct lora_sshkey *key, const char *comment, struct lora_err *err)
{
	memset(key, 0, sizeof(*key));
	if (RAND_priv_bytes(key->seed, 32) != 1 || derive_pk(key->seed, key->pk) < 0) {
		lora_sshkey_wipe(key);
		return lora_errf(err, "cannot generate an ed25519 key (openssl)");
	}
	snprintf(key->comment, sizeof(key->comment), "%s", comment ? comment : "");
	return 0;
}

void lora_ssh_fingerprint_blob(const void *blob, size_t n, char out[LORA_SSH_FP_MAX])
{
	unsigned char md[32];
	unsigned int mdlen = 32;
	char *s;

	EVP_Digest(blob, n, md, &mdlen, EVP_sha256(), NULL);
	s = lora_b64_encode(md, 32, 0, 0);
	snprintf(out, LORA_SSH_FP_MAX, "SHA256:%s", s ? s : "?");
	free(s);
}

void lora_sshkey_fingerprint(const unsigned char pk[32], char out[LORA_SSH_FP_MAX])
{
	struct lora_buf b = LORA_BUF_INIT;

	lora_sshwr_pubblob(&b, pk);
	lora_ssh_fingerprint_blob(b.data, b.len, out);
	lora_buf_free(&b);
}

char *lora_sshkey_pub_line(const unsigned char pk[32], const char *comment)
{
	struct lora_buf b = LORA_BUF_INIT, line = LORA_BUF_INIT;
	char *s;

	lora_sshwr_pubblob(&b, pk);
	s = b.oom ? NULL : lora_b64_encode(b.data, b.len, 0, 1);
	lora_buf_free(&b);
	if (!s)
		return NULL;
	lora_buf_printf(&line, "%s %s", LORA_ED25519_TYPE, s);
	if (comment && *comment)
		lora_buf_printf(&line, " %s", comment);
	free(s);
	if (line.oom) {
		lora_buf_free(&line);
		return NULL;
	}
	return lora_buf_take(&line);
}

int lora_sshkey_parse_pubblob(const unsigned char *blob, size_t n, unsigned char pk[32])
{
	struct lora_sshrd r = { blob, n };
	const unsigned char *k;
	size_t kn;

	if (lora_sshrd_expect(&r, LORA_ED25519_TYPE) < 0 || lora_sshrd_str(&r, &k, &kn) < 0 ||
	    kn != 32 || r.left)
		return -1;
	memcpy(pk, k, 32);
	return 0;
}

int lora_sshkey_parse_pub_line(const char *line, unsigned char pk[32], char **comment,
			       struct lora_err *err)
{
	const char *p = line, *b64, *e;
	unsigned char *blob = NULL;
	size_t bn;
	int rc;

	if (comment)
		*comment = NULL;
	while (*p == ' ' || *p == '\t')
		p++;
	if (strncmp(p, LORA_ED25519_TYPE, strlen(LORA_ED25519_TYPE)) ||
	    (p[strlen(LORA_ED25519_TYPE)] != ' ' && p[strlen(LORA_ED25519_TYPE)] != '\t')) {
		char kt[32];
		size_t k = strcspn(p, " \t\r\n");
		snprintf(kt, sizeof(kt), "%.*s", (int)(k < 31 ? k : 31), p);
		if (!*kt)
			return lora_errf(err, "not a public key line: empty");
		return lora_errf(err, "unsupported key type '%s': lora uses ssh-ed25519 keys", kt);
	}
	p += strlen(LORA_ED25519_TYPE);
	while (*p == ' ' || *p == '\t')
		p++;
	b64 = p;
	e = b64 + strcspn(b64, " \t\r\n");
	if (e == b64 || lora_b64_decode(b64, (size_t)(e - b64), &blob, &bn) < 0)
		return lora_errf(err, "bad base64 in public key");
	rc = lora_sshkey_parse_pubblob(blob, bn, pk);
	free(blob);
	if (rc < 0)
		return lora_errf(err, "malformed ssh-ed25519 public key");
	p = e;
	while (*p == ' ' || *p == '\t')
		p++;
	if (comment && *p && *p != '\n' && *p != '\r') {
		size_t cn = strcspn(p, "\r\n");
		while (cn && (p[cn - 1] == ' ' || p[cn - 1] == '\t'))
			cn--;
		*comment = strndup(p, cn);
	}
	return 0;
}

/* Everything between the armor lines, or NULL. */
static const char *armor_body(const char *text, size_t len, const char *begin, const char *end,
			      size_t *body_len)
{
	const char *b = memmem(text, len, begin, strlen(begin)), *e;

	if (!b)
		return NULL;
	b += strlen(begin);
	e = memmem(b, len - (size_t)(b - text), end, strlen(end));
	if (!e)
		return NULL;
	*body_len = (size_t)(e - b);
	return b;
}

static int parse_private_blob(const unsigned char *blob, size_t n, const char *label,
			      struct lora_sshkey *key, struct lora_err *err)
{
	struct lora_sshrd r = { blob, n }, priv;
	const unsigned char *cipher, *s, *pkb, *sk, *cm;
	size_t cn, sn, pkn, skn, cmn;
	uint32_t nkeys, c1, c2;
	unsigned char pk[32], derived[32];

	if (n < sizeof(KEY_MAGIC) || memcmp(blob, KEY_MAGIC, sizeof(KEY_MAGIC)))
		return lora_errf(err, "'%s' is not an openssh-key-v1 private key", label);
	r.p += sizeof(KEY_MAGIC);
	r.left -= sizeof(KEY_MAGIC);
	if (lora_sshrd_str(&r, &cipher, &cn) < 0)
		goto bad;
	if (cn != 4 || memcmp(cipher, "none", 4))
		return lora_errf(err, "key '%s' is encrypted with a passphrase; lora needs an unencrypted "
				      "key (make one with 'lora keygen', or a copy with "
				      "'ssh-keygen -p -N \"\" -f COPY')", label);
	if (lora_sshrd_expect(&r, "none") < 0 || lora_sshrd_str(&r, &s, &sn) < 0 || sn ||
	    lora_sshrd_u32(&r, &nkeys) < 0)
		goto bad;
	if (nkeys != 1)
		return lora_errf(err, "'%s' holds %u keys; lora reads files with one key", label, nkeys);
	if (lora_sshrd_str(&r, &pkb, &pkn) < 0)
		goto bad;
	if (lora_sshkey_parse_pubblob(pkb, pkn, pk) < 0) {
		struct lora_sshrd t = { pkb, pkn };
		const unsigned char *kt;
		size_t ktn;
		if (lora_sshrd_str(&t, &kt, &ktn) == 0 && (ktn != 11 || memcmp(kt, LORA_ED25519_TYPE, 11)))
			return lora_errf(err, "key '%s' is of type '%.*s'; lora signs with ssh-ed25519 keys",
					 label, (int)(ktn < 40 ? ktn : 40), kt);
		goto bad;
	}
	if (lora_sshrd_str(&r, &s, &sn) < 0 || r.left || sn % 8)
		goto bad;
	priv.p = s;
	priv.left = sn;
	if (lora_sshrd_u32(&priv, &c1) < 0 || lora_sshrd_u32(&priv, &c2) < 0 || c1 != c2)
		goto bad;
	if (lora_sshrd_expect(&priv, LORA_ED25519_TYPE) < 0 || lora_sshrd_str(&priv, &pkb, &pkn) < 0 ||
	    pkn != 32 || memcmp(pkb, pk, 32) || lora_sshrd_str(&priv, &sk, &skn) < 0 || skn != 64 ||
	    memcmp(sk + 32, pk, 32) || lora_sshrd_str(&priv, &cm, &cmn) < 0)
		goto bad;
	for (size_t i = 0; i < priv.left; i++)
		if (priv.p[i] != (unsigned char)(i + 1))
			goto bad;
	if (derive_pk(sk, derived) < 0 || memcmp(derived, pk, 32))
		return lora_errf(err, "'%s': the private key does not match its public key", label);
	memset(key, 0, sizeof(*key));
	memcpy(key->seed, sk, 32);
	memcpy(key->pk, pk, 32);
	snprintf(key->comment, sizeof(key->comment), "%.*s", (int)(cmn < 255 ? cmn : 255), cm);
	for (char *c = key->comment; *c; c++)
		if ((unsigned char)*c < 0x20)
			*c = '_';
	return 0;
bad:
	return lora_errf(err, "'%s' is a malformed openssh private key", label);
}

int lora_sshkey_parse_private(const char *text, size_t len, const char *label,
			      struct lora_sshkey *key, struct lora_err *err)
{
	const char *body;
	size_t bl, n;
	unsigned char *blob;
	int rc;

	body = armor_body(text, len, PRIV_BEGIN, PRIV_END, &bl);
	if (!body) {
		if (memmem(text, len, "PRIVATE KEY-----", 16))
			return lora_errf(err, "'%s' is a PEM private key; lora reads OpenSSH-format "
					      "ssh-ed25519 keys (ssh-keygen -t ed25519)", label);
		return lora_errf(err, "'%s' is not an OpenSSH private key", label);
	}
	if (lora_b64_decode(body, bl, &blob, &n) < 0)
		return lora_errf(err, "'%s' has bad base64 in its private key", label);
	rc = parse_private_blob(blob, n, label, key, err);
	explicit_bzero(blob, n);
	free(blob);
	return rc;
}

int lora_sshkey_load_private(const char *path, struct lora_sshkey *key, struct lora_err *err)
{
	char *buf;
	struct stat st;
	ssize_t n;
	size_t got = 0;
	int fd, rc;

	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ELOOP)
			return lora_errf(err, "cannot read key '%s': it is a symbolic link", path);
		return lora_errf(err, "cannot read key '%s': %s", path, strerror(errno));
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > KEY_FILE_MAX) {
		close(fd);
		return lora_errf(err, "cannot read key '%s': not a regular file of at most 64 KiB", path);
	}
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		close(fd);
		return lora_errf(err, "out of memory");
	}
	while (got < (size_t)st.st_size && (n = read(fd, buf + got, (size_t)st.st_size - got)) > 0)
		got += (size_t)n;
	close(fd);
	buf[got] = 0;
	rc = lora_sshkey_parse_private(buf, got, path, key, err);
	explicit_bzero(buf, got);
	free(buf);
	return rc;
}

static void presize(struct lora_buf *b, size_t n)
{
	char *z = calloc(1, n);

	if (z)
		lora_buf_add(b, z, n);
	else
		b->oom = 1;
	free(z);
	b->len = 0;
}

char *lora_sshkey_format_private(const struct lora_sshkey *key)
{
	struct lora_buf blob = LORA_BUF_INIT, priv = LORA_BUF_INIT, out = LORA_BUF_INIT;
	unsigned char sk[64];
	uint32_t check;
	char *b64 = NULL;

	if (RAND_bytes((unsigned char *)&check, sizeof(check)) != 1)
		return NULL;
	/* Reserve room up front so that no realloc copies the secret around. */
	presize(&priv, 512);
	presize(&blob, 1024);
	presize(&out, 2048);
	memcpy(sk, key->seed, 32);
	memcpy(sk + 32, key->pk, 32);
	lora_sshwr_u32(&priv, check);
	lora_sshwr_u32(&priv, check);
	lora_sshwr_pubblob(&priv, key->pk);
	lora_sshwr_str(&priv, sk, 64);
	lora_sshwr_cstr(&priv, key->comment);
	for (unsigned char pad = 1; priv.len % 8; pad++)
		lora_buf_add(&priv, &pad, 1);
	explicit_bzero(sk, sizeof(sk));

	lora_buf_add(&blob, KEY_MAGIC, sizeof(KEY_MAGIC));
	lora_sshwr_cstr(&blob, "none");
	lora_sshwr_cstr(&blob, "none");
	lora_sshwr_cstr(&blob, "");
	lora_sshwr_u32(&blob, 1);
	{
		struct lora_buf pub = LORA_BUF_INIT;
		lora_sshwr_pubblob(&pub, key->pk);
		lora_sshwr_str(&blob, pub.data, pub.len);
		lora_buf_free(&pub);
	}
	lora_sshwr_str(&blob, priv.data, priv.len);
	if (!blob.oom && !priv.oom)
		b64 = lora_b64_encode(blob.data, blob.len, 70, 1);
	if (b64)
		lora_buf_printf(&out, "%s\n%s\n%s\n", PRIV_BEGIN, b64, PRIV_END);
	if (priv.data)
		explicit_bzero(priv.data, priv.cap);
	if (blob.data)
		explicit_bzero(blob.data, blob.cap);
	if (b64) {
		explicit_bzero(b64, strlen(b64));
		free(b64);
	}
	lora_buf_free(&priv);
	lora_buf_free(&blob);
	if (out.oom || !out.data) {
		if (out.data)
			explicit_bzero(out.data, out.cap);
		lora_buf_free(&out);
		return NULL;
	}
	return lora_buf_take(&out);
}

int lora_sshkey_write_private(const char *path, const struct lora_sshkey *key, int replace,
			      struct lora_err *err)
{
	char *text = lora_sshkey_format_private(key), *dir = lora_dirname(path), *tmp = NULL;
	int fd = -1, rc = -1;

	if (!text || !dir) {
		lora_errf(err, "out of memory");
		goto out;
	}
	tmp = malloc(strlen(path) + 16);
	if (!tmp) {
		lora_errf(err, "out of memory");
		goto out;
	}
	sprintf(tmp, "%s.tmp.XXXXXX", path);
	fd = mkostemp(tmp, O_CLOEXEC);  /* O_CREAT | O_EXCL, mode 0600 */
	if (fd < 0) {
		lora_errf(err, "cannot create key file '%s': %s", path, strerror(errno));
		free(tmp);
		tmp = NULL;
		goto out;
	}
	if (fchmod(fd, 0600) < 0 ||
	    lora_write_all(fd, text, strlen(text), path, err) < 0 || fsync(fd) < 0) {
		if (!err || !err->msg[0] || !strstr(err->msg, path))
			lora_errf(err, "cannot write key file '%s': %s", path, strerror(errno));
		goto out;
	}
	if (replace) {
		if (rename(tmp, path) < 0) {
			lora_errf(err, "cannot replace key file '%s': %s", path, strerror(errno));
			goto out;
		}
	} else {
		/* link(2) creates the final name exclusively: an existing key is never overwritten */
		if (link(tmp, path) < 0) {
			if (errno == EEXIST)
				lora_errf(err, "key file '%s' already exists", path);
			else
				lora_errf(err, "cannot create key file '%s': %s", path, strerror(errno));
			goto out;
		}
		unlink(tmp);
	}
	free(tmp);
	tmp = NULL;
	rc = lora_fsync_dir(dir, err);
out:
	if (fd >= 0)
		close(fd);
	if (tmp) {
		unlink(tmp);
		free(tmp);
	}
	if (text) {
		explicit_bzero(text, strlen(text));
		free(text);
	}
	free(dir);
	return rc;
}
