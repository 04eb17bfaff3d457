/* sshsig.c - SSHSIG signatures and allowed_signers (see sshsig.h). */
#define _GNU_SOURCE
#include "libadapter/store/sshsig.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "libadapter/base/buf.h"
#include "libadapter/base/fsutil.h"

#define SIG_BEGIN "-----BEGIN SSH SIGNATURE-----"
#define SIG_END "-----END SSH SIGNATURE-----"
#define SIG_MAGIC "SSHSIG"
#define SIG_VERSION 1

/* ------------------------------------------------------------- signatures */

static int hash_msg(const char *alg, const void *msg, size_t len, unsigned char *md, unsigned *mdlen)
{
	const EVP_MD *m = !strcmp(alg, "sha512") ? EVP_sha512() : !strcmp(alg, "sha256") ? EVP_sha256() : NULL;

	return m && EVP_Digest(msg, len, md, mdlen, m, NULL) == 1 ? 0 : -1;
}

/* The bytes the Ed25519 signature covers. */
static void signed_data(struct lora_buf *b, const char *ns, const char *alg, const unsigned char *md,
			unsigned mdlen)
{
	lora_buf_add(b, SIG_MAGIC, 6);
	lora_sshwr_cstr(b, ns);
	lora_sshwr_cstr(b, "");
	lora_sshwr_cstr(b, alg);
	lora_sshwr_str(b, md, mdlen);
}

int lora_sshsig_sign(const struct lora_sshkey *key, const char *ns, const void *msg, size_t len,
		     char **armored, struct lora_err *err)
{
	struct lora_buf sd = LORA_BUF_INIT, blob = LORA_BUF_INIT, sig = LORA_BUF_INIT, pub = LORA_BUF_INIT;
	struct lora_buf out = LORA_BUF_INIT;
	unsigned char md[64], s[64];
	unsigned mdlen = sizeof(md);
	char *b64 = NULL;
	int rc = -1;

	*armored = NULL;
	if (hash_msg("sha512", msg, len, md, &mdlen) < 0) {
		lora_errf(err, "sha512 failed (openssl)");
		goto out;
	}
	signed_data(&sd, ns, "sha512", md, mdlen);
	if (sd.oom || lora_ed25519_sign(key, sd.data, sd.len, s, err) < 0)
		goto out;
	lora_sshwr_cstr(&sig, LORA_ED25519_TYPE);
	lora_sshwr_str(&sig, s, 64);
	lora_sshwr_pubblob(&pub, key->pk);
	lora_buf_add(&blob, SIG_MAGIC, 6);
	lora_sshwr_u32(&blob, SIG_VERSION);
	lora_sshwr_str(&blob, pub.data, pub.len);
	lora_sshwr_cstr(&blob, ns);
	lora_sshwr_cstr(&blob, "");
	lora_sshwr_cstr(&blob, "sha512");
	lora_sshwr_str(&blob, sig.data, sig.len);
	if (!blob.oom && !sig.oom && !pub.oom)
		b64 = lora_b64_encode(blob.data, blob.len, 70, 1);
	if (b64)
		lora_buf_printf(&out, "%s\n%s\n%s\n", SIG_BEGIN, b64, SIG_END);
	if (!b64 || out.oom) {
		lora_errf(err, "out of memory");
		lora_buf_free(&out);
		goto out;
	}
	*armored = lora_buf_take(&out);
	rc = 0;
out:
	free(b64);
	lora_buf_free(&sd);
	lora_buf_free(&blob);
	lora_buf_free(&sig);
	lora_buf_free(&pub);
	return rc;
}

/* Copy an SSH string into a NUL-terminated buffer; -1 when too long or holding a NUL. */
static int str_to_c(const unsigned char *s, size_t n, char *out, size_t cap)
{
	if (n >= cap || memchr(s, 0, n))
		return -1;
	memcpy(out, s, n);
	out[n] = 0;
	return 0;
}

int lora_sshsig_parse(const char *armored, size_t len, struct lora_sshsig *out, struct lora_err *err)
{
	const char *b, *e;
	unsigned char *blob = NULL;
	size_t n, sn, pn, kn;
	const unsigned char *s, *pb, *k;
	struct lora_sshrd r, sr;
	uint32_t ver;

	memset(out, 0, sizeof(*out));
	if (len > LORA_SIG_MAX)
		return lora_errc(err, LORA_EVERIFY, "signature is larger than %d bytes", LORA_SIG_MAX);
	b = memmem(armored, len, SIG_BEGIN, strlen(SIG_BEGIN));
	if (!b)
		return lora_errc(err, LORA_EVERIFY, "not an SSH signature (no '%s' line)", SIG_BEGIN);
	b += strlen(SIG_BEGIN);
	e = memmem(b, len - (size_t)(b - armored), SIG_END, strlen(SIG_END));
	if (!e)
		return lora_errc(err, LORA_EVERIFY, "SSH signature lacks its '%s' line", SIG_END);
	if (lora_b64_decode(b, (size_t)(e - b), &blob, &n) < 0)
		return lora_errc(err, LORA_EVERIFY, "SSH signature has bad base64");
	r.p = blob;
	r.left = n;
	if (n < 6 || memcmp(blob, SIG_MAGIC, 6))
		goto bad;
	r.p += 6;
	r.left -= 6;
	if (lora_sshrd_u32(&r, &ver) < 0)
		goto bad;
	if (ver != SIG_VERSION) {
		free(blob);
		return lora_errc(err, LORA_EVERIFY, "SSH signature version %u is not supported", ver);
	}
	if (lora_sshrd_str(&r, &pb, &pn) < 0)
		goto bad;
	if (lora_sshkey_parse_pubblob(pb, pn, out->pk) < 0) {
		free(blob);
		return lora_errc(err, LORA_EVERIFY, "SSH signature is not made with an ssh-ed25519 key");
	}
	if (lora_sshrd_str(&r, &s, &sn) < 0 || str_to_c(s, sn, out->ns, sizeof(out->ns)) < 0)
		goto bad;
	if (lora_sshrd_str(&r, &s, &sn) < 0)  /* reserved */
		goto bad;
	if (lora_sshrd_str(&r, &s, &sn) < 0 || str_to_c(s, sn, out->hashalg, sizeof(out->hashalg)) < 0)
		goto bad;
	if (strcmp(out->hashalg, "sha512") && strcmp(out->hashalg, "sha256")) {
		free(blob);
		return lora_errc(err, LORA_EVERIFY, "SSH signature uses unsupported hash '%s'", out->hashalg);
	}
	if (lora_sshrd_str(&r, &s, &sn) < 0 || r.left)
		goto bad;
	sr.p = s;
	sr.left = sn;
	if (lora_sshrd_expect(&sr, LORA_ED25519_TYPE) < 0 || lora_sshrd_str(&sr, &k, &kn) < 0 ||
	    kn != 64 || sr.left)
		goto bad;
	memcpy(out->sig, k, 64);
	free(blob);
	return 0;
bad:
	free(blob);
	return lora_errc(err, LORA_EVERIFY, "malformed SSH signature");
}

int lora_sshsig_verify(const char *armored, size_t len, const char *ns, const void *msg,
		       size_t msglen, unsigned char pk_out[32], struct lora_err *err)
{
	struct lora_sshsig sig;
	struct lora_buf sd = LORA_BUF_INIT;
	unsigned char md[64];
	unsigned mdlen = sizeof(md);
	int ok;

	if (lora_sshsig_parse(armored, len, &sig, err) < 0)
		return -1;
	if (strcmp(sig.ns, ns))
		return lora_errc(err, LORA_EVERIFY, "signature is for namespace '%s', not '%s'", sig.ns, ns);
	if (hash_msg(sig.hashalg, msg, msglen, md, &mdlen) < 0)
		return lora_errf(err, "%s failed (openssl)", sig.hashalg);
	signed_data(&sd, sig.ns, sig.hashalg, md, mdlen);
	if (sd.oom) {
		lora_buf_free(&sd);
		return lora_errf(err, "out of memory");
	}
	ok = lora_ed25519_verify(sig.pk, sd.data, sd.len, sig.sig);
	lora_buf_free(&sd);
	if (pk_out)
		memcpy(pk_out, sig.pk, 32);
	if (!ok) {
		char fp[LORA_SSH_FP_MAX];
		lora_sshkey_fingerprint(sig.pk, fp);
		return lora_errc(err, LORA_EVERIFY, "bad signature: it does not match the signed data "
				 "(key %s)", fp);
	}
	return 0;
}

/* -------------------------------------------------------- pattern lists */

/* Shell-style match of * and ?, as OpenSSH match_pattern. */
static int match_pattern(const char *s, const char *p, size_t plen)
{
	if (!plen)
		return !*s;
	if (*p == '*') {
		while (plen && *p == '*') {
			p++;
			plen--;
		}
		if (!plen)
			return 1;
		for (; *s; s++)
			if (match_pattern(s, p, plen))
				return 1;
		return match_pattern(s, p, plen);
	}
	if (!*s)
		return 0;
	if (*p != '?' && *p != *s)
		return 0;
	return match_pattern(s + 1, p + 1, plen - 1);
}

int lora_pattern_list_match(const char *s, const char *list)
{
	int got = 0;

	while (*list) {
		size_t n = strcspn(list, ",");
		int neg = *list == '!';
		const char *p = list + neg;
		size_t pn = n - (size_t)neg;

		if (match_pattern(s, p, pn)) {
			if (neg)
				return 0;
			got = 1;
		}
		list += n;
		if (*list == ',')
			list++;
	}
	return got;
}

/* ------------------------------------------------------ allowed_signers */

void lora_signer_free(struct lora_signer *s)
{
	free(s->principals);
	free(s->namespaces);
	free(s->comment);
	free(s->error);
	memset(s, 0, sizeof(*s));
}

/* Next whitespace-delimited token, double quotes grouping; *tok malloc'd with quotes kept. */
static const char *next_token(const char *p, char **tok)
{
	const char *b;
	int inq = 0;

	*tok = NULL;
	while (*p == ' ' || *p == '\t')
		p++;
	if (!*p)
		return p;
	b = p;
	for (; *p; p++) {
		if (*p == '"')
			inq = !inq;
		else if (!inq && (*p == ' ' || *p == '\t'))
			break;
	}
	if (inq)
		return NULL;  /* unterminated quote */
	*tok = strndup(b, (size_t)(p - b));
	return p;
}

static int is_keytype(const char *t)
{
	static const char *const types[] = { "ssh-ed25519", "ssh-rsa", "ssh-dss", "ecdsa-sha2-",
					     "sk-ssh-ed25519", "sk-ecdsa-sha2-", "rsa-sha2-" };
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
		if (!strncmp(t, types[i], strlen(types[i])))
			return 1;
	return 0;
}

/* "YYYYMMDD[HHMM[SS]][Z]" as OpenSSH reads it: UTC with Z, local time without. */
static int parse_time(const char *s, int64_t *out)
{
	char d[16];
	size_t n = strlen(s);
	int utc = 0;
	struct tm tm = { 0 };
	time_t t;

	if (n && (s[n - 1] == 'Z' || s[n - 1] == 'z')) {
		utc = 1;
		n--;
	}
	if ((n != 8 && n != 12 && n != 14) || n >= sizeof(d))
		return -1;
	memcpy(d, s, n);
	d[n] = 0;
	for (size_t i = 0; i < n; i++)
		if (!isdigit((unsigned char)d[i]))
			return -1;
	if (sscanf(d, "%4d%2d%2d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday) != 3)
		return -1;
	if (n >= 12 && sscanf(d + 8, "%2d%2d", &tm.tm_hour, &tm.tm_min) != 2)
		return -1;
	if (n == 14 && sscanf(d + 12, "%2d", &tm.tm_sec) != 1)
		return -1;
	if (tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 ||
	    tm.tm_min > 59 || tm.tm_sec > 59)
		return -1;
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	tm.tm_isdst = -1;
	t = utc ? timegm(&tm) : mktime(&tm);
	if (t == (time_t)-1)
		return -1;
	*out = (int64_t)t;
	return 0;
}

/* The value of opt="..." (quotes required), malloc'd. */
static char *opt_value(const char *v, size_t n)
{
	if (n < 2 || v[0] != '"' || v[n - 1] != '"')
		return NULL;
	return strndup(v + 1, n - 2);
}

static int parse_options(const char *opts, struct lora_signer *s)
{
	const char *p = opts;

	while (*p) {
		const char *b = p;
		int inq = 0;
		size_t n;

		for (; *p && (inq || *p != ','); p++)
			if (*p == '"')
				inq = !inq;
		n = (size_t)(p - b);
		if (n == 14 && !strncasecmp(b, "cert-authority", 14)) {
			s->cert_authority = 1;
		} else if (n > 11 && !strncasecmp(b, "namespaces=", 11)) {
			free(s->namespaces);
			s->namespaces = opt_value(b + 11, n - 11);
			if (!s->namespaces)
				return -1;
		} else if ((n > 12 && !strncasecmp(b, "valid-after=", 12)) ||
			   (n > 13 && !strncasecmp(b, "valid-before=", 13))) {
			int after = b[6] == 'a' || b[6] == 'A';
			size_t k = after ? 12 : 13;
			char *v = opt_value(b + k, n - k);
			int64_t t;
			int bad = !v || parse_time(v, &t) < 0;
			free(v);
			if (bad)
				return -1;
			if (after)
				s->valid_after = t;
			else
				s->valid_before = t;
		} else {
			return -1;
		}
		if (*p == ',')
			p++;
	}
	return 0;
}

static void set_error(struct lora_signer *s, const char *msg)
{
	if (!s->error)
		s->error = strdup(msg);
}

int lora_signer_parse_line(const char *line, size_t lineno, struct lora_signer *out)
{
	const char *p = line;
	char *princ = NULL, *tok = NULL, *opts = NULL, *b64 = NULL;
	unsigned char *blob = NULL;
	size_t bn;

	while (*p == ' ' || *p == '\t')
		p++;
	if (!*p || *p == '#' || *p == '\r')
		return 0;
	memset(out, 0, sizeof(*out));
	out->line = lineno;
	out->valid_after = INT64_MIN;
	out->valid_before = INT64_MAX;
	p = next_token(p, &princ);
	if (!p || !princ) {
		set_error(out, "unterminated quote");
		goto done;
	}
	if (princ[0] == '"') {
		size_t n = strlen(princ);
		if (n < 2 || princ[n - 1] != '"') {
			set_error(out, "bad quoting of principals");
			goto done;
		}
		out->principals = strndup(princ + 1, n - 2);
	} else {
		out->principals = strdup(princ);
	}
	p = next_token(p, &tok);
	if (!p || !tok) {
		set_error(out, "no key");
		goto done;
	}
	if (!is_keytype(tok)) {
		opts = tok;
		tok = NULL;
		p = next_token(p, &tok);
		if (!p || !tok) {
			set_error(out, "no key");
			goto done;
		}
		if (parse_options(opts, out) < 0) {
			set_error(out, "bad options");
			goto done;
		}
	}
	snprintf(out->keytype, sizeof(out->keytype), "%s", tok);
	p = next_token(p, &b64);
	if (!p || !b64) {
		set_error(out, "no base64 key");
		goto done;
	}
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p) {
		size_t n = strcspn(p, "\r\n");
		if (n)
			out->comment = strndup(p, n);
	}
	if (lora_b64_decode(b64, strlen(b64), &blob, &bn) < 0) {
		set_error(out, "bad base64 in the key");
		goto done;
	}
	lora_ssh_fingerprint_blob(blob, bn, out->fingerprint);
	if (!strcmp(out->keytype, LORA_ED25519_TYPE)) {
		if (lora_sshkey_parse_pubblob(blob, bn, out->pk) < 0)
			set_error(out, "malformed ssh-ed25519 key");
		else
			out->ed25519 = 1;
	}
done:
	if (!out->principals && !out->error)
		set_error(out, "out of memory");
	free(princ);
	free(tok);
	free(opts);
	free(b64);
	free(blob);
	return 1;
}

void lora_signers_free(struct lora_signers *s)
{
	for (size_t i = 0; i < s->n; i++)
		lora_signer_free(&s->v[i]);
	free(s->v);
	s->v = NULL;
	s->n = 0;
}

int lora_signers_parse(const char *text, size_t len, struct lora_signers *out, struct lora_err *err)
{
	size_t lineno = 0, cap = 0;
	const char *p = text, *end = text + len;

	out->v = NULL;
	out->n = 0;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
		char *line = strndup(p, n);
		struct lora_signer s;

		lineno++;
		p += n + (nl ? 1 : 0);
		if (!line)
			goto oom;
		if (memchr(p - n - (nl ? 1 : 0), 0, n)) {  /* a NUL inside the line */
			free(line);
			continue;
		}
		if (lora_signer_parse_line(line, lineno, &s) == 1) {
			if (out->n == cap) {
				size_t nc = cap ? cap * 2 : 8;
				struct lora_signer *v = realloc(out->v, nc * sizeof(*v));
				if (!v) {
					lora_signer_free(&s);
					free(line);
					goto oom;
				}
				out->v = v;
				cap = nc;
			}
			out->v[out->n++] = s;
		}
		free(line);
	}
	return 0;
oom:
	lora_signers_free(out);
	return lora_errf(err, "out of memory");
}

int lora_signers_load(const char *path, struct lora_signers *out, struct lora_err *err)
{
	char *text;
	size_t len;
	int rc;

	out->v = NULL;
	out->n = 0;
	if (!lora_is_file(path) && access(path, F_OK) != 0 && errno == ENOENT)
		return 0;
	if (lora_read_file(path, 16u << 20, &text, &len, err) < 0)
		return -1;
	rc = lora_signers_parse(text, len, out, err);
	free(text);
	if (rc < 0)
		lora_err_prefix(err, "%s", path);
	return rc;
}

int lora_signers_trusts(const struct lora_signers *s, const unsigned char pk[32],
			const char *identity, const char *ns, time_t now,
			const struct lora_signer **match, char why[256])
{
	const struct lora_signer *other = NULL;
	const char *reason = NULL;
	char fp[LORA_SSH_FP_MAX];

	if (match)
		*match = NULL;
	for (size_t i = 0; i < s->n; i++) {
		const struct lora_signer *l = &s->v[i];

		if (l->error || !l->ed25519 || l->cert_authority || memcmp(l->pk, pk, 32))
			continue;
		if (!lora_pattern_list_match(identity, l->principals)) {
			other = l;
			continue;
		}
		if (l->namespaces && !lora_pattern_list_match(ns, l->namespaces)) {
			reason = "its allowed_signers line does not list the namespace";
			continue;
		}
		if ((int64_t)now < l->valid_after) {
			reason = "its allowed_signers line is not valid yet (valid-after)";
			continue;
		}
		if ((int64_t)now > l->valid_before) {
			reason = "its allowed_signers line has expired (valid-before)";
			continue;
		}
		if (match)
			*match = l;
		return 1;
	}
	if (why) {
		lora_sshkey_fingerprint(pk, fp);
		if (reason)
			snprintf(why, 256, "key %s of '%s' is not trusted: %s '%s'", fp, identity, reason,
				 strstr(reason, "namespace") ? ns : "");
		else if (other)
			snprintf(why, 256, "key %s is trusted as '%.80s', not as '%.80s'", fp, other->principals,
				 identity);
		else
			snprintf(why, 256, "signed by a key that is not trusted: %s ('%.80s'); see 'lora trust add'",
				 fp, identity);
		/* drop the trailing " ''" of reasons that take no argument */
		size_t n = strlen(why);
		if (n > 3 && !strcmp(why + n - 3, " ''"))
			why[n - 3] = 0;
	}
	return 0;
}
