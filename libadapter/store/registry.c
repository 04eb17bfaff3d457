/*
 * registry.c - the OCI distribution client behind `lora push` and `lora pull`
 * (see registry.h for the requests, the authentication and the transport
 * rules).
 *
 * Sections: references, challenges, credentials, HTTP (one libcurl easy
 * handle per session, so connections are reused), authentication, push, pull.
 */
#define _GNU_SOURCE
#include "libadapter/store/registry.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <openssl/evp.h>

#include "libadapter/base/buf.h"
#include "libadapter/base/fsutil.h"
#include "libadapter/store/manifest.h"
#include "libadapter/store/package.h"

#define OCI_INDEX_TYPE "application/vnd.oci.image.index.v1+json"
#define DOCKER_MANIFEST_TYPE "application/vnd.docker.distribution.manifest.v2+json"
#define DOCKER_LIST_TYPE "application/vnd.docker.distribution.manifest.list.v2+json"
#define MANIFEST_MAX (4u << 20)      /* an OCI manifest we accept */
#define SMALL_BODY_MAX (1u << 20)    /* a token or any other small response */
#define ERR_BODY_MAX (64u << 10)     /* what we keep of an error response */
#define MAX_BLOBS 64
#define DEFAULT_CHUNK (64ull << 20)

/* ------------------------------------------------------------- references */

static int is_lower_alnum(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* One repository path component: [a-z0-9]+ separated by '.', '_', '__' or '-'+. */
static int repo_component_ok(const char *s, size_t n)
{
	size_t i = 0;

	if (n == 0 || !is_lower_alnum(s[0]) || !is_lower_alnum(s[n - 1]))
		return 0;
	while (i < n) {
		if (is_lower_alnum(s[i])) {
			i++;
			continue;
		}
		if (s[i] == '.' && is_lower_alnum(s[i + 1]))
			i++;
		else if (s[i] == '_' && s[i + 1] == '_' && is_lower_alnum(s[i + 2]))
			i += 2;
		else if (s[i] == '_' && is_lower_alnum(s[i + 1]))
			i++;
		else if (s[i] == '-') {
			while (i < n && s[i] == '-')
				i++;
			if (i >= n || !is_lower_alnum(s[i]))
				return 0;
		} else
			return 0;
	}
	return 1;
}

static int host_is_loopback(const char *host)
{
	char h[262];
	size_t n = strlen(host);
	const char *colon;
	struct in_addr a4;
	struct in6_addr a6;

	if (n >= sizeof(h))
		return 0;
	if (host[0] == '[') {
		const char *rb = strchr(host, ']');
		if (!rb)
			return 0;
		snprintf(h, sizeof(h), "%.*s", (int)(rb - host - 1), host + 1);
		return inet_pton(AF_INET6, h, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
	}
	colon = strchr(host, ':');
	snprintf(h, sizeof(h), "%.*s", (int)(colon ? (size_t)(colon - host) : n), host);
	if (!strcasecmp(h, "localhost"))
		return 1;
	return inet_pton(AF_INET, h, &a4) == 1 && (ntohl(a4.s_addr) >> 24) == 127;
}

static int host_ok(const char *h, size_t n)
{
	size_t i = 0;

	if (n == 0)
		return 0;
	if (h[0] == '[') {
		while (i < n && h[i] != ']')
			i++;
		if (i >= n || i < 3)
			return 0;
		for (size_t k = 1; k < i; k++)
			if (!isxdigit((unsigned char)h[k]) && h[k] != ':' && h[k] != '.')
				return 0;
		i++;
	} else {
		while (i < n && (isalnum((unsigned char)h[i]) || h[i] == '.' || h[i] == '-'))
			i++;
		if (i == 0 || h[0] == '-' || h[0] == '.')
			return 0;
	}
	if (i < n) {
		size_t p = i + 1, digits = 0;
		unsigned long port = 0;
		if (h[i] != ':')
			return 0;
		while (p < n && isdigit((unsigned char)h[p]) && digits < 6)
			port = port * 10 + (unsigned long)(h[p++] - '0'), digits++;
		if (p != n || digits == 0 || port == 0 || port > 65535)
			return 0;
	}
	return 1;
}

int lora_registry_ref_parse(const char *s, struct lora_registry_ref *out, struct lora_err *err)
{
	const char *slash = strchr(s, '/'), *at, *rest, *colon, *end;
	size_t hl;

	memset(out, 0, sizeof(*out));
	if (!slash)
		return lora_errc(err, LORA_EUSAGE, "bad registry reference '%s': give HOST[:PORT]/REPOSITORY[:TAG]", s);
	hl = (size_t)(slash - s);
	if (hl >= sizeof(out->host) || !host_ok(s, hl))
		return lora_errc(err, LORA_EUSAGE, "bad registry host in '%s'", s);
	memcpy(out->host, s, hl);
	if (!strchr(out->host, '.') && !strchr(out->host, ':') && strcasecmp(out->host, "localhost"))
		return lora_errc(err, LORA_EUSAGE, "'%s' does not start with a registry host (HOST[:PORT], with a '.' "
				 "or a port, or localhost)", s);
	out->loopback = host_is_loopback(out->host);
	rest = slash + 1;
	at = strchr(rest, '@');
	end = at ? at : rest + strlen(rest);
	colon = memrchr(rest, ':', (size_t)(end - rest));
	if (colon && memchr(colon, '/', (size_t)(end - colon)))
		colon = NULL;
	if (at) {
		if (colon)
			return lora_errc(err, LORA_EUSAGE, "give a tag or a digest in '%s', not both", s);
		if (strncmp(at + 1, "sha256:", 7) || strlen(at + 8) != 64)
			return lora_errc(err, LORA_EUSAGE, "bad digest in '%s': give @sha256: and 64 hex digits", s);
		for (const char *c = at + 8; *c; c++)
			if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'f')))
				return lora_errc(err, LORA_EUSAGE, "bad digest in '%s': lowercase hex digits", s);
		snprintf(out->digest, sizeof(out->digest), "%s", at + 1);
	} else if (colon) {
		const char *t = colon + 1;
		size_t tl = strlen(t);
		if (tl == 0 || tl > 128 || !(isalnum((unsigned char)t[0]) || t[0] == '_'))
			return lora_errc(err, LORA_EUSAGE, "bad tag in '%s'", s);
		for (size_t i = 0; i < tl; i++)
			if (!isalnum((unsigned char)t[i]) && t[i] != '_' && t[i] != '.' && t[i] != '-')
				return lora_errc(err, LORA_EUSAGE, "bad tag in '%s'", s);
		memcpy(out->tag, t, tl + 1);
		end = colon;
	} else {
		strcpy(out->tag, "latest");
	}
	if ((size_t)(end - rest) >= sizeof(out->repo) || end == rest)
		return lora_errc(err, LORA_EUSAGE, "bad repository in '%s'", s);
	for (const char *c = rest; c < end;) {
		const char *e = memchr(c, '/', (size_t)(end - c));
		size_t cl = e ? (size_t)(e - c) : (size_t)(end - c);
		if (!repo_component_ok(c, cl))
			return lora_errc(err, LORA_EUSAGE, "bad repository in '%s': lowercase letters and digits, "
					 "separated by '.', '_', '-' or '/'", s);
		c += cl + (e ? 1 : 0);
		if (e && c == end)
			return lora_errc(err, LORA_EUSAGE, "bad repository in '%s'", s);
	}
	memcpy(out->repo, rest, (size_t)(end - rest));
	return 0;
}

/* ------------------------------------------------------------- challenges */

static void copy_trunc(char *dst, size_t cap, const char *src)
{
	size_t n = strlen(src);

	if (n >= cap)
		n = cap - 1;
	memcpy(dst, src, n);
	dst[n] = 0;
}

int lora_auth_challenge_parse(const char *v, struct lora_auth_challenge *out)
{
	const char *p = v;
	size_t n = 0;

	memset(out, 0, sizeof(*out));
	while (*p == ' ' || *p == '\t')
		p++;
	while (isalpha((unsigned char)p[n]))
		n++;
	if (n == 0 || n >= sizeof(out->scheme))
		return -1;
	for (size_t i = 0; i < n; i++)
		out->scheme[i] = (char)tolower((unsigned char)p[i]);
	p += n;
	for (;;) {
		char key[32], val[1024];
		size_t kl = 0, vl = 0;

		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		if (!*p)
			break;
		while (*p && (isalnum((unsigned char)*p) || *p == '_' || *p == '-')) {
			if (kl + 1 < sizeof(key))
				key[kl++] = (char)tolower((unsigned char)*p);
			p++;
		}
		key[kl] = 0;
		while (*p == ' ')
			p++;
		if (*p != '=' || kl == 0)
			return -1;
		p++;
		while (*p == ' ')
			p++;
		if (*p == '"') {
			p++;
			while (*p && *p != '"') {
				if (*p == '\\' && p[1])
					p++;
				if (vl + 1 < sizeof(val))
					val[vl++] = *p;
				p++;
			}
			if (*p != '"')
				return -1;
			p++;
		} else {
			while (*p && *p != ',' && *p != ' ' && *p != '\t') {
				if (vl + 1 < sizeof(val))
					val[vl++] = *p;
				p++;
			}
		}
		val[vl] = 0;
		if (!strcmp(key, "realm"))
			copy_trunc(out->realm, sizeof(out->realm), val);
		else if (!strcmp(key, "service"))
			copy_trunc(out->service, sizeof(out->service), val);
		else if (!strcmp(key, "scope"))
			copy_trunc(out->scope, sizeof(out->scope), val);
		else if (!strcmp(key, "error"))
			copy_trunc(out->error, sizeof(out->error), val);
	}
	return 0;
}

/* ------------------------------------------------------------ credentials */

/* Decode base64 (whitespace ignored); returns malloc'd NUL-terminated bytes or NULL. */
static char *b64_decode(const char *s, size_t *outlen)
{
	size_t n = strlen(s), k = 0, pad = 0;
	char *clean = malloc(n + 4), *out;
	int len;

	if (!clean)
		return NULL;
	for (size_t i = 0; i < n; i++)
		if (!isspace((unsigned char)s[i]))
			clean[k++] = s[i];
	while (k % 4)
		clean[k++] = '=';
	clean[k] = 0;
	out = malloc(k / 4 * 3 + 1);
	if (!out) {
		free(clean);
		return NULL;
	}
	len = EVP_DecodeBlock((unsigned char *)out, (unsigned char *)clean, (int)k);
	if (k >= 1 && clean[k - 1] == '=')
		pad++;
	if (k >= 2 && clean[k - 2] == '=')
		pad++;
	explicit_bzero(clean, k);
	free(clean);
	if (len < 0 || (size_t)len < pad) {
		free(out);
		return NULL;
	}
	len -= (int)pad;
	out[len] = 0;
	*outlen = (size_t)len;
	return out;
}

static char *b64_encode(const char *s, size_t n)
{
	char *out = malloc((n + 2) / 3 * 4 + 1);

	if (out)
		EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)s, (int)n);
	return out;
}

static void wipe_free(char *s)
{
	if (s) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

/* Does an "auths" key name this host? ("host", "https://host", "http://host/v1/", ...) */
static int auth_key_matches(const char *key, const char *host)
{
	size_t hl = strlen(host);

	if (!strncmp(key, "https://", 8))
		key += 8;
	else if (!strncmp(key, "http://", 7))
		key += 7;
	return !strncasecmp(key, host, hl) && (key[hl] == 0 || key[hl] == '/');
}

/*
 * Credentials for host from a Docker config.json (a missing file: none).
 * *user and *pass are malloc'd (wipe_free them), or NULL.
 */
static int creds_load(const char *path, const char *host, char **user, char **pass, struct lora_err *err)
{
	char *text = NULL, *dec = NULL;
	size_t len = 0, dl = 0;
	cJSON *root = NULL, *auths, *au, *e;
	int rc = 0;

	*user = *pass = NULL;
	if (!path || access(path, F_OK) < 0)
		return 0;
	if (lora_read_file(path, 4u << 20, &text, &len, err) < 0)
		return -1;
	root = cJSON_ParseWithLength(text, len);
	explicit_bzero(text, len);
	free(text);
	if (!cJSON_IsObject(root)) {
		cJSON_Delete(root);
		return lora_errf(err, "'%s' is not a valid Docker config (JSON object)", path);
	}
	auths = cJSON_GetObjectItemCaseSensitive(root, "auths");
	au = cJSON_IsObject(auths) ? auths : NULL;
	cJSON_ArrayForEach(e, au) {
		const cJSON *a, *u, *p;
		if (!e->string || !auth_key_matches(e->string, host) || !cJSON_IsObject(e))
			continue;
		a = cJSON_GetObjectItemCaseSensitive(e, "auth");
		u = cJSON_GetObjectItemCaseSensitive(e, "username");
		p = cJSON_GetObjectItemCaseSensitive(e, "password");
		if (cJSON_IsString(a) && a->valuestring[0]) {
			char *colon;
			dec = b64_decode(a->valuestring, &dl);
			colon = dec ? memchr(dec, ':', dl) : NULL;
			if (!colon || memchr(dec, 0, dl)) {
				rc = lora_errf(err, "'%s': the \"auth\" of '%s' is not base64 of user:password", path,
					       e->string);
				break;
			}
			*colon = 0;
			*user = strdup(dec);
			*pass = strdup(colon + 1);
		} else if (cJSON_IsString(u) && cJSON_IsString(p)) {
			*user = strdup(u->valuestring);
			*pass = strdup(p->valuestring);
		} else {
			continue;
		}
		if (!*user || !*pass)
			rc = lora_errf(err, "out of memory");
		break;
	}
	if (dec) {
		explicit_bzero(dec, dl);
		free(dec);
	}
	/* the parsed tree holds the secrets too */
	cJSON_ArrayForEach(e, au) {
		cJSON *f;
		cJSON_ArrayForEach(f, e)
			if (cJSON_IsString(f))
				explicit_bzero(f->valuestring, strlen(f->valuestring));
	}
	cJSON_Delete(root);
	if (rc < 0) {
		wipe_free(*user);
		wipe_free(*pass);
		*user = *pass = NULL;
	}
	return rc;
}

/* ------------------------------------------------------------------- HTTP */

struct reg {
	CURL *h;
	const struct lora_registry_ref *ref;
	const struct lora_registry_opts *o;
	char base[300];             /* "https://host:port" */
	int plain;                  /* base is http:// */
	char *user, *pass;          /* credentials, or NULL */
	char *authz;                /* the Authorization header line to send, or NULL */
	char want_scope[300];       /* "repository:R:pull[,push]" */
	char cerr[CURL_ERROR_SIZE];
	double done, total;         /* progress */
	struct lora_err *err;
};

struct resp {
	long status;
	char www[2048];             /* WWW-Authenticate */
	char location[4096];
	char ctype[256];
	char dcd[128];              /* Docker-Content-Digest */
};

/* What a request sends: memory, or len bytes of fd from off. */
struct body {
	const char *mem;
	int fd;
	uint64_t off, len, pos;
	EVP_MD_CTX *md;             /* hashes file bytes past *hashed (may be NULL) */
	uint64_t *hashed;
	const char *expect_hex;     /* when the last byte of the blob is sent: check the hash */
	uint64_t blob_size;
	int mismatch;
	struct reg *r;
};

/* Where a response goes: a bounded memory buffer, or (2xx only) a file, hashed. */
struct sink {
	struct lora_buf mem;
	size_t max;
	int over;
	int fd;                     /* -1: memory only */
	uint64_t want, got;
	EVP_MD_CTX *md;
	int too_long, werr;
	long status;                /* of the response being received */
	struct reg *r;
};

static void sink_init(struct sink *s, struct reg *r, size_t max)
{
	memset(s, 0, sizeof(*s));
	s->max = max;
	s->fd = -1;
	s->r = r;
}

static void progress(struct reg *r, double n)
{
	r->done += n;
	if (r->o->progress)
		r->o->progress(r->o->progress_ctx, r->done, r->total);
}

static size_t on_header(char *buf, size_t size, size_t n, void *ctx)
{
	struct resp *rs = ctx;
	size_t len = size * n, kl;
	const char *colon;
	char *dst = NULL;
	size_t cap = 0;

	if (len >= 5 && !strncmp(buf, "HTTP/", 5)) {
		/* a new response (after a redirect or 100-continue): forget the last one's headers */
		long st = 0;
		const char *sp = memchr(buf, ' ', len);
		if (sp)
			st = strtol(sp + 1, NULL, 10);
		memset(rs, 0, sizeof(*rs));
		rs->status = st;
		return len;
	}
	colon = memchr(buf, ':', len);
	if (!colon)
		return len;
	kl = (size_t)(colon - buf);
#define HDR(name, field) if (kl == strlen(name) && !strncasecmp(buf, name, kl)) { dst = rs->field; cap = sizeof(rs->field); }
	HDR("www-authenticate", www)
	else HDR("location", location)
	else HDR("content-type", ctype)
	else HDR("docker-content-digest", dcd)
#undef HDR
	if (dst && !dst[0]) {  /* the first of repeated headers */
		const char *v = colon + 1, *e = buf + len;
		while (v < e && (*v == ' ' || *v == '\t'))
			v++;
		while (e > v && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' '))
			e--;
		if ((size_t)(e - v) < cap) {
			memcpy(dst, v, (size_t)(e - v));
			dst[e - v] = 0;
		}
	}
	return len;
}

static size_t on_write(char *buf, size_t size, size_t n, void *ctx)
{
	struct sink *s = ctx;
	size_t len = size * n;
	long st = 0;

	curl_easy_getinfo(s->r->h, CURLINFO_RESPONSE_CODE, &st);
	if (s->fd >= 0 && st >= 200 && st < 300) {
		if (s->got + len > s->want) {
			s->too_long = 1;  /* more bytes than the descriptor says: stop here */
			return 0;
		}
		if (lora_write_all(s->fd, buf, len, "blob", NULL) < 0) {
			s->werr = errno ? errno : EIO;
			return 0;
		}
		EVP_DigestUpdate(s->md, buf, len);
		s->got += len;
		progress(s->r, (double)len);
		return len;
	}
	if (s->mem.len + len > s->max) {
		s->over = 1;
		if (st >= 300)  /* an error body: what we have is enough */
			return s->mem.len < s->max ? (lora_buf_add(&s->mem, buf, s->max - s->mem.len), 0) : 0;
		return 0;
	}
	lora_buf_add(&s->mem, buf, len);
	return s->mem.oom ? 0 : len;
}

static size_t on_read(char *buf, size_t size, size_t n, void *ctx)
{
	struct body *b = ctx;
	size_t want = size * n;
	uint64_t left = b->len - b->pos;
	ssize_t got;

	if (want > left)
		want = (size_t)left;
	if (want == 0)
		return 0;
	if (b->mem) {
		memcpy(buf, b->mem + b->pos, want);
		b->pos += want;
		return want;
	}
	do
		got = pread(b->fd, buf, want, (off_t)(b->off + b->pos));
	while (got < 0 && errno == EINTR);
	if (got <= 0)
		return CURL_READFUNC_ABORT;  /* the blob shrank under us, or cannot be read */
	if (b->md) {
		uint64_t at = b->off + b->pos, end = at + (uint64_t)got;
		if (end > *b->hashed) {  /* a retried request resends bytes already hashed */
			uint64_t skip = *b->hashed > at ? *b->hashed - at : 0;
			EVP_DigestUpdate(b->md, buf + skip, (size_t)((uint64_t)got - skip));
			*b->hashed = end;
			progress(b->r, (double)((uint64_t)got - skip));
		}
		if (*b->hashed == b->blob_size && b->expect_hex) {
			unsigned char dg[32];
			char hex[65];
			EVP_MD_CTX *c = EVP_MD_CTX_new();
			if (!c || !EVP_MD_CTX_copy_ex(c, b->md) || !EVP_DigestFinal_ex(c, dg, NULL)) {
				EVP_MD_CTX_free(c);
				return CURL_READFUNC_ABORT;
			}
			EVP_MD_CTX_free(c);
			for (int i = 0; i < 32; i++)
				sprintf(hex + 2 * i, "%02x", dg[i]);
			if (strcmp(hex, b->expect_hex)) {
				b->mismatch = 1;
				return CURL_READFUNC_ABORT;  /* the registry never gets the whole wrong blob */
			}
		}
	}
	b->pos += (uint64_t)got;
	return (size_t)got;
}

/* Fill the session's err with "registry HOST: <msg>"; returns -1. */
static int reg_err(struct reg *r, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int reg_err(struct reg *r, int code, const char *fmt, ...)
{
	char msg[900];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return lora_errc(r->err, code, "registry %s: %s", r->ref->host, msg);
}

/* The message of a registry error body ({"errors":[{"code","message"}]}), or "". */
static void error_detail(const struct sink *s, char *out, size_t cap)
{
	cJSON *j = s->mem.len ? cJSON_ParseWithLength(s->mem.data, s->mem.len) : NULL;
	const cJSON *es = j ? cJSON_GetObjectItemCaseSensitive(j, "errors") : NULL;
	const cJSON *e0 = cJSON_IsArray(es) ? cJSON_GetArrayItem(es, 0) : NULL;
	const cJSON *c = e0 ? cJSON_GetObjectItemCaseSensitive(e0, "code") : NULL;
	const cJSON *m = e0 ? cJSON_GetObjectItemCaseSensitive(e0, "message") : NULL;

	out[0] = 0;
	if (cJSON_IsString(c))
		snprintf(out, cap, " %s%s%s", c->valuestring, cJSON_IsString(m) ? ": " : "",
			 cJSON_IsString(m) ? m->valuestring : "");
	/* keep it one printable line */
	for (char *p = out; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = ' ';
	cJSON_Delete(j);
}

enum { M_GET, M_HEAD, M_POST, M_PUT, M_PATCH };
static const char *const method_names[] = { "GET", "HEAD", "POST", "PUT", "PATCH" };

/*
 * One HTTP exchange (no authentication logic).  Returns 0 when a response
 * came (resp->status says which), -1 on a transport failure (err filled).
 */
static int http_once(struct reg *r, int method, const char *url, const char *const *hdrs, struct body *b,
		     struct sink *s, struct resp *rs)
{
	struct curl_slist *hl = NULL, *t;
	CURLcode cc;
	long timeout = r->o->timeout_s > 0 ? r->o->timeout_s : 60;
	int safe = !r->plain;

	memset(rs, 0, sizeof(*rs));
	curl_easy_reset(r->h);
	r->cerr[0] = 0;
	curl_easy_setopt(r->h, CURLOPT_URL, url);
	curl_easy_setopt(r->h, CURLOPT_ERRORBUFFER, r->cerr);
	curl_easy_setopt(r->h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(r->h, CURLOPT_PROTOCOLS_STR, safe && !r->o->insecure ? "https" : "http,https");
	curl_easy_setopt(r->h, CURLOPT_REDIR_PROTOCOLS_STR, safe && !r->o->insecure ? "https" : "http,https");
	curl_easy_setopt(r->h, CURLOPT_CONNECTTIMEOUT, 30L);
	curl_easy_setopt(r->h, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(r->h, CURLOPT_LOW_SPEED_TIME, timeout);
	curl_easy_setopt(r->h, CURLOPT_USERAGENT, "lora/" LORA_VERSION);
	/* large buffers: a blob moves in few callbacks (hash and write in big pieces) */
	curl_easy_setopt(r->h, CURLOPT_BUFFERSIZE, 1L << 20);
	curl_easy_setopt(r->h, CURLOPT_UPLOAD_BUFFERSIZE, 2L << 20);
	curl_easy_setopt(r->h, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(r->h, CURLOPT_HEADERDATA, rs);
	curl_easy_setopt(r->h, CURLOPT_WRITEFUNCTION, on_write);
	curl_easy_setopt(r->h, CURLOPT_WRITEDATA, s);
	if (method == M_GET || method == M_HEAD) {
		/* blobs are often served by a redirect to storage; curl drops Authorization off-host */
		curl_easy_setopt(r->h, CURLOPT_FOLLOWLOCATION, 1L);
		curl_easy_setopt(r->h, CURLOPT_MAXREDIRS, 5L);
	}
	if (method == M_HEAD)
		curl_easy_setopt(r->h, CURLOPT_NOBODY, 1L);
	if (method == M_POST) {
		curl_easy_setopt(r->h, CURLOPT_POST, 1L);
		curl_easy_setopt(r->h, CURLOPT_POSTFIELDS, "");
		curl_easy_setopt(r->h, CURLOPT_POSTFIELDSIZE, 0L);
	}
	if (method == M_PUT || method == M_PATCH) {
		curl_easy_setopt(r->h, CURLOPT_UPLOAD, 1L);
		curl_easy_setopt(r->h, CURLOPT_READFUNCTION, on_read);
		curl_easy_setopt(r->h, CURLOPT_READDATA, b);
		curl_easy_setopt(r->h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)(b ? b->len : 0));
		if (method == M_PATCH)
			curl_easy_setopt(r->h, CURLOPT_CUSTOMREQUEST, "PATCH");
		hl = curl_slist_append(hl, "Expect:");
	}
	if (r->o->insecure) {
		curl_easy_setopt(r->h, CURLOPT_SSL_VERIFYPEER, 0L);
		curl_easy_setopt(r->h, CURLOPT_SSL_VERIFYHOST, 0L);
	}
	if (r->authz)
		hl = curl_slist_append(hl, r->authz);
	for (size_t i = 0; hdrs && hdrs[i]; i++)
		if ((t = curl_slist_append(hl, hdrs[i])))
			hl = t;
	curl_easy_setopt(r->h, CURLOPT_HTTPHEADER, hl);
	if (b)
		b->pos = 0;
	cc = curl_easy_perform(r->h);
	curl_easy_setopt(r->h, CURLOPT_HTTPHEADER, NULL);
	curl_slist_free_all(hl);
	curl_easy_getinfo(r->h, CURLINFO_RESPONSE_CODE, &rs->status);
	if (cc == CURLE_OK)
		return 0;
	if (b && b->mismatch)
		return lora_errc(r->err, LORA_EVERIFY, "a blob changed in the store: its bytes do not match its "
				 "digest %.19s... (run 'lora verify')", b->expect_hex ? b->expect_hex : "");
	if (s->too_long)
		return reg_err(r, LORA_EVERIFY, "the blob is longer than its descriptor says (%llu bytes)",
			       (unsigned long long)s->want);
	if (s->werr)
		return lora_errf(r->err, "cannot write the download: %s", strerror(s->werr));
	if (s->over && rs->status >= 200 && rs->status < 300)
		return reg_err(r, LORA_EFAIL, "%s %s: the response is larger than %zu bytes", method_names[method],
			       url + strlen(r->base), s->max);
	if (s->over)
		return 0;  /* an error body cut short: the status is what matters */
	return reg_err(r, LORA_EFAIL, "%s: %s", r->plain ? "http" : "https",
		       r->cerr[0] ? r->cerr : curl_easy_strerror(cc));
}

static char *join_query(const char *url, const char *query);

/*
 * A Bearer token for scope from the challenge's realm.  The credentials go
 * as Basic to the token service; the token replaces r->authz.
 */
static int fetch_token(struct reg *r, const struct lora_auth_challenge *ch, const char *scope)
{
	struct sink s;
	struct resp rs;
	struct lora_buf q = LORA_BUF_INIT;
	char *url = NULL, *esc, *saved = r->authz, *tok = NULL;
	cJSON *j = NULL;
	const cJSON *t;
	int rc = -1, realm_plain = !strncmp(ch->realm, "http://", 7);

	if (strncmp(ch->realm, "https://", 8) && !realm_plain)
		return reg_err(r, LORA_EFAIL, "the token realm '%s' is not an http(s) URL", ch->realm);
	if (realm_plain && !r->plain && !r->o->insecure)
		return reg_err(r, LORA_EFAIL, "refusing the plain-http token realm '%s' (use --insecure)", ch->realm);
	if (ch->service[0] && (esc = curl_easy_escape(r->h, ch->service, 0))) {
		lora_buf_printf(&q, "service=%s", esc);
		curl_free(esc);
	}
	if (scope[0] && (esc = curl_easy_escape(r->h, scope, 0))) {
		lora_buf_printf(&q, "%sscope=%s", q.len ? "&" : "", esc);
		curl_free(esc);
	}
	url = join_query(ch->realm, q.data ? q.data : "");
	lora_buf_free(&q);
	if (!url)
		return lora_errf(r->err, "out of memory");
	r->authz = NULL;
	if (r->user) {
		struct lora_buf up = LORA_BUF_INIT;
		char *b64;
		lora_buf_printf(&up, "%s:%s", r->user, r->pass);
		b64 = up.data ? b64_encode(up.data, up.len) : NULL;
		if (up.data)
			explicit_bzero(up.data, up.len);
		lora_buf_free(&up);
		if (b64) {
			struct lora_buf h = LORA_BUF_INIT;
			lora_buf_printf(&h, "Authorization: Basic %s", b64);
			wipe_free(b64);
			r->authz = h.data;
		}
	}
	sink_init(&s, r, SMALL_BODY_MAX);
	if (http_once(r, M_GET, url, NULL, NULL, &s, &rs) < 0)
		goto out;
	if (rs.status == 401 || rs.status == 403) {
		if (r->user)
			reg_err(r, LORA_EFAIL, "the token service refused the credentials of '%s' (%ld)", r->user, rs.status);
		else
			reg_err(r, LORA_EFAIL, "the token service wants credentials (%ld); none for %s in the Docker "
				"config (docker login)", rs.status, r->ref->host);
		goto out;
	}
	if (rs.status != 200) {
		reg_err(r, LORA_EFAIL, "the token service answered %ld", rs.status);
		goto out;
	}
	j = cJSON_ParseWithLength(s.mem.data ? s.mem.data : "", s.mem.len);
	t = j ? cJSON_GetObjectItemCaseSensitive(j, "token") : NULL;
	if (!cJSON_IsString(t) || !t->valuestring[0])
		t = j ? cJSON_GetObjectItemCaseSensitive(j, "access_token") : NULL;
	if (!cJSON_IsString(t) || !t->valuestring[0]) {
		reg_err(r, LORA_EFAIL, "the token service sent no token");
		goto out;
	}
	for (const char *c = t->valuestring; *c; c++)
		if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7f) {
			reg_err(r, LORA_EFAIL, "the token service sent a malformed token");
			goto out;
		}
	{
		struct lora_buf h = LORA_BUF_INIT;
		lora_buf_printf(&h, "Authorization: Bearer %s", t->valuestring);
		tok = h.data;
	}
	if (!tok) {
		lora_errf(r->err, "out of memory");
		goto out;
	}
	rc = 0;
out:
	if (s.mem.data)
		explicit_bzero(s.mem.data, s.mem.len);
	lora_buf_free(&s.mem);
	if (j) {
		cJSON *f;
		cJSON_ArrayForEach(f, j)
			if (cJSON_IsString(f))
				explicit_bzero(f->valuestring, strlen(f->valuestring));
	}
	cJSON_Delete(j);
	free(url);
	wipe_free(r->authz);
	r->authz = rc == 0 ? tok : saved;
	if (rc == 0)
		wipe_free(saved);
	return rc;
}

/*
 * Answer a 401: Basic with the credentials, or a Bearer token.  Returns 0
 * when there is something new to try, -1 with the error to report.
 */
static int answer_challenge(struct reg *r, const struct resp *rs, int tried)
{
	struct lora_auth_challenge ch;

	if (!rs->www[0] || lora_auth_challenge_parse(rs->www, &ch) < 0)
		return reg_err(r, LORA_EFAIL, "401 unauthorized, without a usable WWW-Authenticate challenge");
	if (!strcmp(ch.scheme, "basic")) {
		struct lora_buf up = LORA_BUF_INIT, h = LORA_BUF_INIT;
		char *b64;
		if (!r->user)
			return reg_err(r, LORA_EFAIL, "authentication required, and no credentials for %s in the "
				       "Docker config (docker login, or $DOCKER_CONFIG)", r->ref->host);
		if (tried)
			return reg_err(r, LORA_EFAIL, "the credentials of '%s' were refused (401 unauthorized)", r->user);
		lora_buf_printf(&up, "%s:%s", r->user, r->pass);
		b64 = up.data ? b64_encode(up.data, up.len) : NULL;
		if (up.data)
			explicit_bzero(up.data, up.len);
		lora_buf_free(&up);
		if (!b64)
			return lora_errf(r->err, "out of memory");
		lora_buf_printf(&h, "Authorization: Basic %s", b64);
		wipe_free(b64);
		if (!h.data)
			return lora_errf(r->err, "out of memory");
		wipe_free(r->authz);
		r->authz = h.data;
		return 0;
	}
	if (!strcmp(ch.scheme, "bearer")) {
		if (!ch.realm[0])
			return reg_err(r, LORA_EFAIL, "a Bearer challenge without a realm");
		if (tried)
			return reg_err(r, LORA_EFAIL, "the token was refused (401 unauthorized%s%s)",
				       ch.error[0] ? ", " : "", ch.error);
		/* the scope we need; a challenge naming another one (a mount, a catalog) is taken as is */
		return fetch_token(r, &ch, ch.scope[0] ? ch.scope : r->want_scope);
	}
	return reg_err(r, LORA_EFAIL, "unsupported authentication scheme '%s'", ch.scheme);
}

/* An exchange with authentication: on 401, answer the challenge and try once more. */
static int request(struct reg *r, int method, const char *url, const char *const *hdrs, struct body *b,
		   struct sink *s, struct resp *rs)
{
	for (int tried = 0;; tried++) {
		lora_buf_free(&s->mem);
		s->over = 0;
		if (s->fd >= 0) {
			/* a retried download starts again */
			if (ftruncate(s->fd, 0) < 0 || lseek(s->fd, 0, SEEK_SET) < 0)
				return lora_errf(r->err, "cannot rewind the download: %s", strerror(errno));
			r->done -= (double)s->got;
			s->got = 0;
			EVP_DigestInit_ex(s->md, EVP_sha256(), NULL);
		}
		if (http_once(r, method, url, hdrs, b, s, rs) < 0)
			return -1;
		if (rs->status != 401)
			return 0;
		if (answer_challenge(r, rs, tried > 0) < 0)
			return -1;
	}
}

/* An unexpected status, with the registry's own error text. */
static int status_err(struct reg *r, const char *what, const struct resp *rs, const struct sink *s)
{
	char d[400];

	error_detail(s, d, sizeof(d));
	return reg_err(r, LORA_EFAIL, "%s: %ld%s", what, rs->status, d);
}

static char *url_of(struct reg *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static char *url_of(struct reg *r, const char *fmt, ...)
{
	struct lora_buf b = LORA_BUF_INIT;
	char tail[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(tail, sizeof(tail), fmt, ap);
	va_end(ap);
	lora_buf_printf(&b, "%s%s", r->base, tail);
	if (b.oom) {
		lora_buf_free(&b);
		return NULL;
	}
	return lora_buf_take(&b);
}

/* url with query appended (after '?' or '&'); malloc'd. */
static char *join_query(const char *url, const char *query)
{
	struct lora_buf b = LORA_BUF_INIT;

	lora_buf_printf(&b, "%s%s%s", url, !query[0] ? "" : strchr(url, '?') ? "&" : "?", query);
	if (b.oom) {
		lora_buf_free(&b);
		return NULL;
	}
	return lora_buf_take(&b);
}

/* Resolve a Location header (absolute, or relative to the registry) into a URL. */
static char *resolve_location(struct reg *r, const char *loc)
{
	CURLU *u = curl_url();
	char *out = NULL, *tmp = NULL;

	if (!u)
		return NULL;
	if (curl_url_set(u, CURLUPART_URL, r->base, 0) == CURLUE_OK &&
	    curl_url_set(u, CURLUPART_URL, loc, 0) == CURLUE_OK && curl_url_get(u, CURLUPART_URL, &tmp, 0) == CURLUE_OK)
		out = strdup(tmp);
	curl_free(tmp);
	curl_url_cleanup(u);
	return out;
}

/* Start a session: credentials, the transport, and GET /v2/ (which brings the challenge). */
static int reg_open(struct reg *r, const struct lora_registry_ref *ref, const struct lora_registry_opts *o,
		    const char *actions, struct lora_err *err)
{
	struct sink s;
	struct resp rs;
	char *url = NULL;
	int rc = -1;

	memset(r, 0, sizeof(*r));
	r->ref = ref;
	r->o = o;
	r->err = err;
	snprintf(r->want_scope, sizeof(r->want_scope), "repository:%s:%s", ref->repo, actions);
	if (creds_load(o->docker_config, ref->host, &r->user, &r->pass, err) < 0)
		return -1;
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || !(r->h = curl_easy_init()))
		return lora_errf(err, "cannot start libcurl");
	r->plain = o->insecure;
	for (int attempt = 0; attempt < 2; attempt++) {
		snprintf(r->base, sizeof(r->base), "%s://%s", r->plain ? "http" : "https", ref->host);
		free(url);
		url = url_of(r, "/v2/");
		if (!url)
			return lora_errf(err, "out of memory");
		sink_init(&s, r, ERR_BODY_MAX);
		rc = request(r, M_GET, url, NULL, NULL, &s, &rs);
		if (rc < 0 && rs.status == 0 && !r->plain && ref->loopback) {
			/* a loopback registry without TLS: plain http is allowed there */
			lora_buf_free(&s.mem);
			lora_err_clear(err);
			r->plain = 1;
			continue;
		}
		break;
	}
	if (rc == 0 && rs.status != 200) {
		rc = rs.status == 404 ? reg_err(r, LORA_EFAIL, "GET /v2/ gave 404: not an OCI registry")
				      : status_err(r, "GET /v2/", &rs, &s);
	}
	lora_buf_free(&s.mem);
	free(url);
	return rc;
}

static void reg_close(struct reg *r)
{
	if (r->h)
		curl_easy_cleanup(r->h);
	wipe_free(r->user);
	wipe_free(r->pass);
	wipe_free(r->authz);
	memset(r, 0, sizeof(*r));
}

/* ------------------------------------------------------------------ blobs */

struct desc {
	char digest[72];
	uint64_t size;
	char title[104];             /* "" for the config */
	int skip;                    /* pull: the store has it already */
};

static int hex64_ok(const char *s)
{
	if (strlen(s) != 64)
		return 0;
	for (; *s; s++)
		if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
			return 0;
	return 1;
}

static int desc_of(const cJSON *j, struct desc *d)
{
	const cJSON *dg = cJSON_GetObjectItemCaseSensitive(j, "digest");
	const cJSON *sz = cJSON_GetObjectItemCaseSensitive(j, "size");
	const cJSON *an = cJSON_GetObjectItemCaseSensitive(j, "annotations");
	const cJSON *ti = an ? cJSON_GetObjectItemCaseSensitive(an, "org.opencontainers.image.title") : NULL;

	memset(d, 0, sizeof(*d));
	if (!cJSON_IsString(dg) || strncmp(dg->valuestring, "sha256:", 7) || !hex64_ok(dg->valuestring + 7) ||
	    !cJSON_IsNumber(sz) || sz->valuedouble < 0 || sz->valuedouble > (double)LORA_PKG_MAX_FILE ||
	    sz->valuedouble != (double)(uint64_t)sz->valuedouble)
		return -1;
	snprintf(d->digest, sizeof(d->digest), "%s", dg->valuestring);
	d->size = (uint64_t)sz->valuedouble;
	if (cJSON_IsString(ti))
		snprintf(d->title, sizeof(d->title), "%s", ti->valuestring);
	return 0;
}

/* The config and layer descriptors of an OCI manifest (config first). */
static int descs_of(const char *json, size_t len, struct desc *v, size_t *n, uint64_t *total)
{
	cJSON *j = cJSON_ParseWithLength(json, len);
	const cJSON *l, *layers = j ? cJSON_GetObjectItemCaseSensitive(j, "layers") : NULL;
	int rc = -1;

	*n = 0;
	*total = 0;
	if (!cJSON_IsObject(j) || desc_of(cJSON_GetObjectItemCaseSensitive(j, "config"), &v[0]) < 0 ||
	    !cJSON_IsArray(layers) || cJSON_GetArraySize(layers) >= MAX_BLOBS)
		goto out;
	*n = 1;
	*total = v[0].size;
	cJSON_ArrayForEach(l, layers) {
		if (desc_of(l, &v[*n]) < 0)
			goto out;
		*total += v[(*n)++].size;
	}
	rc = *total <= LORA_PKG_MAX_TOTAL ? 0 : -1;
out:
	cJSON_Delete(j);
	return rc;
}

static const char *what_blob(const struct desc *d)
{
	return d->title[0] ? d->title : "manifest.json";
}

/* ------------------------------------------------------------------- push */

/* Does the registry have the blob already?  1 yes, 0 no, -1 error. */
static int blob_present(struct reg *r, const struct desc *d)
{
	struct sink s;
	struct resp rs;
	char *url = url_of(r, "/v2/%s/blobs/%s", r->ref->repo, d->digest);
	curl_off_t len = -1;
	int rc;

	if (!url)
		return lora_errf(r->err, "out of memory");
	sink_init(&s, r, ERR_BODY_MAX);
	rc = request(r, M_HEAD, url, NULL, NULL, &s, &rs);
	if (rc == 0) {
		curl_easy_getinfo(r->h, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &len);
		if (rs.status == 200)
			rc = len < 0 || (uint64_t)len == d->size;  /* a size that differs: upload it again */
		else if (rs.status == 404)
			rc = 0;
		else
			rc = status_err(r, "HEAD blob", &rs, &s);
	}
	lora_buf_free(&s.mem);
	free(url);
	return rc;
}

/* Upload one blob from path: POST, then one PUT, or PATCH chunks and an empty PUT. */
static int blob_upload(struct reg *r, const char *path, const struct desc *d)
{
	static const char *const octet[] = { "Content-Type: application/octet-stream", NULL };
	uint64_t chunk = r->o->chunk_size ? r->o->chunk_size : DEFAULT_CHUNK, hashed = 0, off = 0;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	struct sink s;
	struct resp rs;
	struct body b;
	char *url = NULL, *loc = NULL, q[96];
	struct stat st;
	int fd = -1, rc = -1;

	sink_init(&s, r, ERR_BODY_MAX);
	if (!md)
		return lora_errf(r->err, "out of memory");
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0 || (uint64_t)st.st_size != d->size) {
		lora_errc(r->err, LORA_EVERIFY, "blob of '%s' (%.19s...) is %s in the store (run 'lora verify')",
			  what_blob(d), d->digest, fd < 0 ? "missing" : "the wrong size");
		goto out;
	}
	EVP_DigestInit_ex(md, EVP_sha256(), NULL);
	url = url_of(r, "/v2/%s/blobs/uploads/", r->ref->repo);
	if (!url || request(r, M_POST, url, NULL, NULL, &s, &rs) < 0)
		goto out;
	if (rs.status != 202 || !rs.location[0]) {
		status_err(r, "start of an upload (POST blobs/uploads)", &rs, &s);
		goto out;
	}
	loc = resolve_location(r, rs.location);
	memset(&b, 0, sizeof(b));
	b.fd = fd;
	b.md = md;
	b.hashed = &hashed;
	b.expect_hex = d->digest + 7;
	b.blob_size = d->size;
	b.r = r;
	/* chunks for a large blob; a small one goes whole with the final PUT */
	while (loc && d->size > chunk && off < d->size) {
		uint64_t n = d->size - off < chunk ? d->size - off : chunk;
		char range[96];
		const char *h[] = { octet[0], range, NULL };
		snprintf(range, sizeof(range), "Content-Range: %llu-%llu", (unsigned long long)off,
			 (unsigned long long)(off + n - 1));
		b.off = off;
		b.len = n;
		if (request(r, M_PATCH, loc, h, &b, &s, &rs) < 0)
			goto out;
		if (rs.status != 202 && rs.status != 204) {
			status_err(r, "upload of a chunk (PATCH)", &rs, &s);
			goto out;
		}
		off += n;
		if (rs.location[0]) {
			free(loc);
			loc = resolve_location(r, rs.location);
		}
	}
	if (!loc) {
		lora_errf(r->err, "out of memory");
		goto out;
	}
	if (off < d->size) {
		b.off = 0;
		b.len = d->size;
	} else {
		b.len = 0;  /* chunks are in: check the whole hash before the final PUT */
		b.off = d->size;
		if (d->size == 0)
			hashed = 0;
		{
			unsigned char dg[32];
			char hex[65];
			EVP_DigestFinal_ex(md, dg, NULL);
			for (int i = 0; i < 32; i++)
				sprintf(hex + 2 * i, "%02x", dg[i]);
			if (strcmp(hex, d->digest + 7)) {
				lora_errc(r->err, LORA_EVERIFY, "blob of '%s' changed in the store: its bytes do not match "
					  "%.19s... (run 'lora verify')", what_blob(d), d->digest);
				goto out;
			}
		}
	}
	if (d->size == 0) {
		/* nothing to read: the hash of no bytes is checked by the registry against the digest */
		b.expect_hex = NULL;
	}
	snprintf(q, sizeof(q), "digest=%s", d->digest);
	{
		char *put = join_query(loc, q);
		if (!put) {
			lora_errf(r->err, "out of memory");
			goto out;
		}
		rc = request(r, M_PUT, put, octet, &b, &s, &rs);
		free(put);
	}
	if (rc < 0)
		goto out;
	rc = -1;
	if (rs.status != 201) {
		status_err(r, "end of an upload (PUT)", &rs, &s);
		goto out;
	}
	rc = 0;
out:
	if (fd >= 0)
		close(fd);
	EVP_MD_CTX_free(md);
	lora_buf_free(&s.mem);
	free(url);
	free(loc);
	return rc;
}

int lora_registry_push(const char *store_dir, const char *spec, const char *dest,
		       const struct lora_registry_opts *opts, struct lora_push_result *res, struct lora_err *err)
{
	static const struct lora_registry_opts no_opts = { 0 };
	struct lora_registry_ref ref;
	struct reg r = { 0 };
	struct desc *v = NULL;
	size_t n = 0;
	uint64_t total;
	char *json = NULL, *url = NULL;
	size_t len;
	int rc = -1;

	memset(res, 0, sizeof(*res));
	if (!opts)
		opts = &no_opts;
	if (lora_registry_ref_parse(dest, &ref, err) < 0)
		return -1;
	if (lora_store_oci_read(store_dir, spec, &json, &len, res->digest, res->ref, err) < 0)
		return -1;
	if (ref.digest[0] && strcmp(ref.digest, res->digest)) {
		lora_errc(err, LORA_EUSAGE, "'%s' is %s, not the digest in '%s'", res->ref, res->digest, dest);
		goto out;
	}
	v = calloc(MAX_BLOBS, sizeof(*v));
	if (!v) {
		lora_errf(err, "out of memory");
		goto out;
	}
	if (descs_of(json, len, v, &n, &total) < 0) {
		lora_errc(err, LORA_EVERIFY, "%s: the stored OCI manifest is malformed", res->ref);
		goto out;
	}
	res->n_blobs = n;
	if (reg_open(&r, &ref, opts, "pull,push", err) < 0)
		goto out;
	r.total = (double)total;
	for (size_t i = 0; i < n; i++) {
		int have = 0;
		char *path;
		for (size_t k = 0; k < i; k++)
			if (!strcmp(v[k].digest, v[i].digest))
				have = 1;  /* the same bytes twice in one adapter */
		if (!have && (have = blob_present(&r, &v[i])) < 0)
			goto out;
		if (have) {
			progress(&r, (double)v[i].size);
			continue;
		}
		path = lora_store_blob_path(store_dir, v[i].digest);
		if (!path) {
			lora_errf(err, "out of memory");
			goto out;
		}
		rc = blob_upload(&r, path, &v[i]);
		free(path);
		if (rc < 0)
			goto out;
		rc = -1;
		res->n_uploaded++;
		res->bytes_uploaded += v[i].size;
	}
	{
		static const char *const mt[] = { "Content-Type: " LORA_OCI_MANIFEST_TYPE, NULL };
		struct body b = { 0 };
		struct sink s;
		struct resp rs;

		b.mem = json;
		b.len = len;
		b.fd = -1;
		b.r = &r;
		sink_init(&s, &r, ERR_BODY_MAX);
		url = url_of(&r, "/v2/%s/manifests/%s", ref.repo, ref.digest[0] ? ref.digest : ref.tag);
		if (!url) {
			lora_errf(err, "out of memory");
			goto out;
		}
		if (request(&r, M_PUT, url, mt, &b, &s, &rs) < 0) {
			lora_buf_free(&s.mem);
			goto out;
		}
		if (rs.status != 201) {
			status_err(&r, "PUT manifest", &rs, &s);
			lora_buf_free(&s.mem);
			goto out;
		}
		lora_buf_free(&s.mem);
		if (rs.dcd[0] && strcmp(rs.dcd, res->digest)) {
			reg_err(&r, LORA_EVERIFY, "stored the manifest as %s, not %s", rs.dcd, res->digest);
			goto out;
		}
	}
	rc = 0;
out:
	reg_close(&r);
	free(url);
	free(json);
	free(v);
	return rc;
}

/* ------------------------------------------------------------------- pull */

/* GET the manifest: by digest it must hash to it; by tag it must hash to what the registry says. */
static int get_manifest(struct reg *r, char **json, size_t *len, char digest[72])
{
	static const char *const acc[] = {
		"Accept: " LORA_OCI_MANIFEST_TYPE ", " OCI_INDEX_TYPE ";q=0.5, " DOCKER_MANIFEST_TYPE ";q=0.4", NULL
	};
	struct sink s;
	struct resp rs;
	char *url = url_of(r, "/v2/%s/manifests/%s", r->ref->repo, r->ref->digest[0] ? r->ref->digest : r->ref->tag);
	char hex[65];
	cJSON *j = NULL;
	const cJSON *mt;
	int rc = -1;

	*json = NULL;
	if (!url)
		return lora_errf(r->err, "out of memory");
	sink_init(&s, r, MANIFEST_MAX);
	if (request(r, M_GET, url, acc, NULL, &s, &rs) < 0)
		goto out;
	if (rs.status == 404) {
		char d[400];
		error_detail(&s, d, sizeof(d));
		reg_err(r, LORA_EFAIL, "no %s:%s in the registry (404%s)", r->ref->repo,
			r->ref->digest[0] ? r->ref->digest : r->ref->tag, d);
		goto out;
	}
	if (rs.status != 200) {
		status_err(r, "GET manifest", &rs, &s);
		goto out;
	}
	lora_sha256_hex(s.mem.data ? s.mem.data : "", s.mem.len, hex);
	snprintf(digest, 72, "sha256:%s", hex);
	if (r->ref->digest[0] && strcmp(digest, r->ref->digest)) {
		reg_err(r, LORA_EVERIFY, "the manifest does not match the digest %s asked for", r->ref->digest);
		goto out;
	}
	if (rs.dcd[0] && strcmp(rs.dcd, digest)) {
		reg_err(r, LORA_EVERIFY, "the manifest does not match its Docker-Content-Digest %s", rs.dcd);
		goto out;
	}
	j = cJSON_ParseWithLength(s.mem.data ? s.mem.data : "", s.mem.len);
	mt = j ? cJSON_GetObjectItemCaseSensitive(j, "mediaType") : NULL;
	if (!cJSON_IsObject(j)) {
		reg_err(r, LORA_EVERIFY, "the manifest is not JSON");
		goto out;
	}
	if ((cJSON_IsString(mt) && strcmp(mt->valuestring, LORA_OCI_MANIFEST_TYPE)) ||
	    (!mt && rs.ctype[0] && strncmp(rs.ctype, LORA_OCI_MANIFEST_TYPE, strlen(LORA_OCI_MANIFEST_TYPE)))) {
		reg_err(r, LORA_EFAIL, "%s:%s is a %s, not a lora adapter", r->ref->repo,
			r->ref->digest[0] ? r->ref->digest : r->ref->tag,
			cJSON_IsString(mt) ? mt->valuestring : rs.ctype);
		goto out;
	}
	*len = s.mem.len;
	*json = lora_buf_take(&s.mem);
	rc = *json ? 0 : lora_errf(r->err, "out of memory");
out:
	cJSON_Delete(j);
	lora_buf_free(&s.mem);
	free(url);
	return rc;
}

/* Stream one blob into dir/<hex>.part, checking size and digest; renamed to dir/<hex> when right. */
static int blob_download(struct reg *r, const char *dir, const struct desc *d)
{
	struct sink s;
	struct resp rs;
	char *url = url_of(r, "/v2/%s/blobs/%s", r->ref->repo, d->digest), *part = NULL, *fin = NULL, hex[65];
	unsigned char dg[32];
	int rc = -1;

	sink_init(&s, r, ERR_BODY_MAX);
	s.md = EVP_MD_CTX_new();
	s.want = d->size;
	part = malloc(strlen(dir) + 80);
	fin = malloc(strlen(dir) + 80);
	if (!url || !s.md || !part || !fin) {
		lora_errf(r->err, "out of memory");
		goto out;
	}
	sprintf(part, "%s/%s.part", dir, d->digest + 7);
	sprintf(fin, "%s/%s", dir, d->digest + 7);
	s.fd = open(part, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (s.fd < 0) {
		lora_errf(r->err, "cannot create '%s': %s", part, strerror(errno));
		goto out;
	}
	EVP_DigestInit_ex(s.md, EVP_sha256(), NULL);
	if (request(r, M_GET, url, NULL, NULL, &s, &rs) < 0)
		goto out;
	if (rs.status != 200) {
		status_err(r, "GET blob", &rs, &s);
		goto out;
	}
	if (s.got != d->size) {
		reg_err(r, LORA_EVERIFY, "blob of '%s' (%.19s...) ended after %llu of %llu bytes", what_blob(d),
			d->digest, (unsigned long long)s.got, (unsigned long long)d->size);
		goto out;
	}
	EVP_DigestFinal_ex(s.md, dg, NULL);
	for (int i = 0; i < 32; i++)
		sprintf(hex + 2 * i, "%02x", dg[i]);
	if (strcmp(hex, d->digest + 7)) {
		reg_err(r, LORA_EVERIFY, "blob of '%s' does not match its digest %.19s... (changed in the registry)",
			what_blob(d), d->digest);
		goto out;
	}
	if (fsync(s.fd) < 0 || rename(part, fin) < 0) {
		lora_errf(r->err, "cannot write '%s': %s", fin, strerror(errno));
		goto out;
	}
	rc = 0;
out:
	if (s.fd >= 0)
		close(s.fd);
	if (rc < 0 && part)
		unlink(part);
	EVP_MD_CTX_free(s.md);
	lora_buf_free(&s.mem);
	free(url);
	free(part);
	free(fin);
	return rc;
}

int lora_registry_pull(const char *store_dir, const char *src, const char *name, int allow_untrusted,
		       const struct lora_registry_opts *opts, struct lora_pull_result *res, struct lora_err *err)
{
	static const struct lora_registry_opts no_opts = { 0 };
	struct lora_registry_ref ref;
	struct lora_store_stage st = { NULL, -1 };
	struct reg r = { 0 };
	struct desc *v = NULL;
	char *json = NULL, defname[LORA_REF_MAX];
	size_t len = 0, n = 0;
	uint64_t total, need = 0;
	int rc = -1;

	memset(res, 0, sizeof(*res));
	if (!opts)
		opts = &no_opts;
	if (lora_registry_ref_parse(src, &ref, err) < 0)
		return -1;
	if (name) {
		struct lora_ref lr;
		if (lora_ref_parse(name, &lr, err) < 0)
			return -1;
		if (lr.is_digest)
			return lora_errc(err, LORA_EUSAGE, "--name wants NAME[:TAG], not a digest");
	} else if (ref.tag[0]) {
		const char *last = strrchr(ref.repo, '/');
		struct lora_ref lr;
		snprintf(defname, sizeof(defname), "%.128s:%s", last ? last + 1 : ref.repo, ref.tag);
		if (lora_ref_parse(defname, &lr, NULL) < 0)
			return lora_errc(err, LORA_EUSAGE, "cannot name the adapter '%s' in the store; give --name "
					 "NAME[:TAG]", defname);
		name = defname;
	}
	if (reg_open(&r, &ref, opts, "pull", err) < 0)
		goto out;
	if (get_manifest(&r, &json, &len, res->digest) < 0)
		goto out;
	v = calloc(MAX_BLOBS, sizeof(*v));
	if (!v) {
		lora_errf(err, "out of memory");
		goto out;
	}
	if (descs_of(json, len, v, &n, &total) < 0) {
		reg_err(&r, LORA_EVERIFY, "the manifest of %s is malformed or too large for a lora adapter", src);
		goto out;
	}
	res->n_blobs = n;
	if (lora_store_stage_begin(store_dir, &st, err) < 0)
		goto out;
	/* what to fetch: blobs the store lacks, each once */
	for (size_t i = 0; i < n; i++) {
		char *p = lora_store_blob_path(store_dir, v[i].digest);
		struct stat sb;
		int skip = p && stat(p, &sb) == 0 && (uint64_t)sb.st_size == v[i].size;
		for (size_t k = 0; k < i; k++)
			if (!strcmp(v[k].digest, v[i].digest))
				skip = 1;
		free(p);
		v[i].skip = skip;
		if (!skip)
			need += v[i].size;
	}
	r.total = (double)need;
	for (size_t i = 0; i < n; i++) {
		if (v[i].skip)
			continue;
		if (blob_download(&r, st.dir, &v[i]) < 0)
			goto out;
		res->n_downloaded++;
		res->bytes_downloaded += v[i].size;
	}
	if (lora_store_stage_commit(store_dir, &st, json, len, src, name, allow_untrusted, res->ref, res->digest,
				    err) < 0)
		goto out;
	rc = 0;
out:
	lora_store_stage_end(&st);
	reg_close(&r);
	free(json);
	free(v);
	return rc;
}
