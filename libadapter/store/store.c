/*
 * store.c - the OCI-layout adapter store (see store.h for the layout, the
 * locking rules and the REF syntax).
 *
 * Sections: paths and locks, blobs, index.json, OCI manifests, refs,
 * verification (shared by .lora files and stored adapters), import, export,
 * list/describe, rm/tag/gc, keys and trust, adapter_open.
 */
#define _GNU_SOURCE
#include "libadapter/store/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "libadapter/base/buf.h"
#include "libadapter/base/fsutil.h"
#include "libadapter/store/manifest.h"
#include "libadapter/store/package.h"
#include "libadapter/store/sshkey.h"
#include "libadapter/store/sshsig.h"

#define MT_OCI_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define MT_OCI_INDEX "application/vnd.oci.image.index.v1+json"
#define ANN_REF "org.opencontainers.image.ref.name"
#define ANN_TITLE "org.opencontainers.image.title"
#define ANN_CREATED "org.opencontainers.image.created"
#define OCI_JSON_MAX (4u << 20)     /* an OCI manifest or index.json we read */
#define INDEX_MAX (256u << 20)
#define MAX_LAYERS 63

/* ------------------------------------------------------ paths and locks */

static char *spath(const char *store, const char *rel)
{
	return lora_path_join(store, rel);
}

static char *blob_path(const char *store, const char *digest)
{
	/* digest is "sha256:<64 hex>", validated by the caller */
	size_t n = strlen(store) + 96;
	char *p = malloc(n);

	if (p)
		snprintf(p, n, "%s/blobs/sha256/%s", store, digest + 7);
	return p;
}

static int is_hex(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
	return 1;
}

static int digest_ok(const char *d)
{
	return d && strlen(d) == 71 && !strncmp(d, "sha256:", 7) && is_hex(d + 7, 64);
}

/* flock(2) one of the lock files; returns the fd (close it to unlock) or -1. */
static int lock_take(const char *store, const char *name, int op, struct lora_err *err)
{
	char *p = spath(store, name);
	int fd;

	if (!p)
		return lora_errf(err, "out of memory");
	fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0) {
		lora_errf(err, "cannot open lock file '%s': %s", p, strerror(errno));
		free(p);
		return -1;
	}
	while (flock(fd, op) < 0) {
		if (errno == EINTR)
			continue;
		if (errno != EWOULDBLOCK)
			lora_errf(err, "cannot lock '%s': %s", p, strerror(errno));
		else
			lora_errf(err, "'%s' is locked by another lora process", p);
		close(fd);
		free(p);
		return -1;
	}
	free(p);
	return fd;
}

static void lock_drop(int fd)
{
	if (fd >= 0)
		close(fd);
}

static const char empty_index[] =
	"{\"schemaVersion\":2,\"mediaType\":\"" MT_OCI_INDEX "\",\"manifests\":[]}";

/* Create the layout if it is missing (writers only). */
static int store_init(const char *store, struct lora_err *err)
{
	char *p = NULL;
	int rc = -1, fd;

	if (lora_mkdir_p(store, 0755, err) < 0)
		return -1;
	if (!(p = spath(store, "blobs/sha256")) || lora_mkdir_p(p, 0755, err) < 0)
		goto out;
	free(p);
	if (!(p = spath(store, "tmp")) || lora_mkdir_p(p, 0755, err) < 0)
		goto out;
	free(p);
	if (!(p = spath(store, "oci-layout")))
		goto out;
	if (!lora_is_file(p) &&
	    lora_write_file_atomic(p, "{\"imageLayoutVersion\":\"1.0.0\"}", 30, 0644, err) < 0)
		goto out;
	free(p);
	if (!(p = spath(store, "index.json")))
		goto out;
	if (!lora_is_file(p)) {
		fd = lock_take(store, ".lock-index", LOCK_EX, err);
		if (fd < 0)
			goto out;
		if (!lora_is_file(p) && lora_write_file_atomic(p, empty_index, sizeof(empty_index) - 1, 0644, err) < 0) {
			lock_drop(fd);
			goto out;
		}
		lock_drop(fd);
	}
	rc = 0;
out:
	if (!p && rc < 0 && (!err || !err->msg[0]))
		lora_errf(err, "out of memory");
	free(p);
	return rc;
}

/* ----------------------------------------------------------------- blobs */

static void hex_of(const unsigned char *md, char hex[65])
{
	for (int i = 0; i < 32; i++)
		sprintf(hex + 2 * i, "%02x", md[i]);
}

/* Read a small blob and check it against its digest. */
static int blob_read(const char *store, const char *digest, size_t max, char **out, size_t *len,
		     struct lora_err *err)
{
	char *p = blob_path(store, digest), hex[65];
	int rc;

	*out = NULL;
	if (!p)
		return lora_errf(err, "out of memory");
	if (!lora_is_file(p)) {
		rc = lora_errc(err, LORA_EVERIFY, "blob %.19s... is missing from the store", digest);
		free(p);
		return rc;
	}
	rc = lora_read_file(p, max, out, len, err);
	free(p);
	if (rc < 0)
		return -1;
	lora_sha256_hex(*out, *len, hex);
	if (strcmp(hex, digest + 7)) {
		free(*out);
		*out = NULL;
		return lora_errc(err, LORA_EVERIFY, "blob %.19s... does not match its digest (changed on disk)",
				 digest);
	}
	return 0;
}

/* Move a staged file (sha256 known) into blobs/ unless an identical blob is there. */
static int blob_put_path(const char *store, const char *hex, const char *src, struct lora_err *err)
{
	char d[72], *p;
	int rc = 0;

	snprintf(d, sizeof(d), "sha256:%s", hex);
	p = blob_path(store, d);
	if (!p)
		return lora_errf(err, "out of memory");
	if (!strcmp(p, src))
		;             /* already the store's own blob (a pull that reuses it) */
	else if (lora_is_file(p))
		unlink(src);  /* stored once */
	else if (rename(src, p) < 0)
		rc = lora_errf(err, "cannot move '%s' into the store: %s", src, strerror(errno));
	free(p);
	return rc;
}

static int blob_put_mem(const char *store, const void *data, size_t len, char digest[72],
			struct lora_err *err)
{
	char hex[65], *p;
	int rc = 0;

	lora_sha256_hex(data, len, hex);
	snprintf(digest, 72, "sha256:%s", hex);
	p = blob_path(store, digest);
	if (!p)
		return lora_errf(err, "out of memory");
	if (!lora_is_file(p))
		rc = lora_write_file_atomic(p, data, len, 0644, err);
	free(p);
	return rc;
}

/* ------------------------------------------------------------ index.json */

/* The parsed index.json; a missing file is an empty index. */
static int index_load(const char *store, cJSON **out, struct lora_err *err)
{
	char *p = spath(store, "index.json"), *text = NULL;
	size_t len;
	cJSON *m;

	*out = NULL;
	if (!p)
		return lora_errf(err, "out of memory");
	if (access(p, F_OK) < 0 && errno == ENOENT) {
		free(p);
		*out = cJSON_Parse(empty_index);
		return *out ? 0 : lora_errf(err, "out of memory");
	}
	if (lora_read_file(p, INDEX_MAX, &text, &len, err) < 0) {
		free(p);
		return -1;
	}
	*out = cJSON_ParseWithLength(text, len);
	free(text);
	m = *out ? cJSON_GetObjectItemCaseSensitive(*out, "manifests") : NULL;
	if (!*out || !cJSON_IsObject(*out) || (m && !cJSON_IsArray(m))) {
		cJSON_Delete(*out);
		*out = NULL;
		lora_errf(err, "'%s' is not a valid OCI index", p);
		free(p);
		return -1;
	}
	if (!m)
		cJSON_AddItemToObject(*out, "manifests", cJSON_CreateArray());
	free(p);
	return 0;
}

static int index_save(const char *store, const cJSON *idx, struct lora_err *err)
{
	char *p = spath(store, "index.json"), *text = cJSON_PrintUnformatted(idx);
	int rc;

	if (!p || !text)
		rc = lora_errf(err, "out of memory");
	else
		rc = lora_write_file_atomic(p, text, strlen(text), 0644, err);
	free(p);
	cJSON_free(text);
	return rc;
}

static const char *entry_ref(const cJSON *e)
{
	const cJSON *a = cJSON_GetObjectItemCaseSensitive(e, "annotations");
	const cJSON *r = a ? cJSON_GetObjectItemCaseSensitive(a, ANN_REF) : NULL;

	return cJSON_IsString(r) ? r->valuestring : NULL;
}

static const char *entry_digest(const cJSON *e)
{
	const cJSON *d = cJSON_GetObjectItemCaseSensitive(e, "digest");

	return cJSON_IsString(d) && digest_ok(d->valuestring) ? d->valuestring : NULL;
}

static cJSON *index_manifests(cJSON *idx)
{
	return cJSON_GetObjectItemCaseSensitive(idx, "manifests");
}

/* ---------------------------------------------------------- OCI manifests */

struct oci_desc {
	char media[128];
	char digest[72];
	uint64_t size;
	char title[104];
};

struct oci_man {
	struct oci_desc config;
	size_t n_layers;
	struct oci_desc layers[MAX_LAYERS];
	int is_lora;                  /* artifactType or config mediaType says lora */
};

static int desc_parse(const cJSON *j, struct oci_desc *d)
{
	const cJSON *mt = cJSON_GetObjectItemCaseSensitive(j, "mediaType");
	const cJSON *dg = cJSON_GetObjectItemCaseSensitive(j, "digest");
	const cJSON *sz = cJSON_GetObjectItemCaseSensitive(j, "size");
	const cJSON *an = cJSON_GetObjectItemCaseSensitive(j, "annotations");
	const cJSON *ti = an ? cJSON_GetObjectItemCaseSensitive(an, ANN_TITLE) : NULL;

	memset(d, 0, sizeof(*d));
	if (!cJSON_IsObject(j) || !cJSON_IsString(dg) || !digest_ok(dg->valuestring) || !cJSON_IsNumber(sz) ||
	    sz->valuedouble < 0 || sz->valuedouble > 9007199254740992.0)
		return -1;
	snprintf(d->digest, sizeof(d->digest), "%s", dg->valuestring);
	d->size = (uint64_t)sz->valuedouble;
	if (cJSON_IsString(mt))
		snprintf(d->media, sizeof(d->media), "%s", mt->valuestring);
	if (cJSON_IsString(ti) && strlen(ti->valuestring) < sizeof(d->title))
		snprintf(d->title, sizeof(d->title), "%s", ti->valuestring);
	return 0;
}

static int oci_parse(const char *json, size_t len, struct oci_man *m, struct lora_err *err)
{
	cJSON *r = cJSON_ParseWithLength(json, len);
	const cJSON *cfg, *layers, *l, *at;
	int rc = -1;

	memset(m, 0, sizeof(*m));
	if (!r || !cJSON_IsObject(r))
		goto bad;
	cfg = cJSON_GetObjectItemCaseSensitive(r, "config");
	layers = cJSON_GetObjectItemCaseSensitive(r, "layers");
	if (!cfg || desc_parse(cfg, &m->config) < 0 || !cJSON_IsArray(layers))
		goto bad;
	if (cJSON_GetArraySize(layers) > MAX_LAYERS)
		goto bad;
	cJSON_ArrayForEach(l, layers) {
		if (desc_parse(l, &m->layers[m->n_layers]) < 0)
			goto bad;
		m->n_layers++;
	}
	at = cJSON_GetObjectItemCaseSensitive(r, "artifactType");
	m->is_lora = (cJSON_IsString(at) && !strcmp(at->valuestring, LORA_ARTIFACT_TYPE)) ||
		     !strcmp(m->config.media, LORA_MEDIA_MANIFEST);
	rc = 0;
	goto out;
bad:
	lora_errc(err, LORA_EVERIFY, "the OCI manifest is malformed or not a lora adapter");
out:
	cJSON_Delete(r);
	return rc;
}

static const char *layer_media_type(const char *name)
{
	const char *dot = strrchr(name, '.');

	if (!strcmp(name, LORA_PKG_SIG))
		return "application/vnd.lora.adapter.signature.v1+sshsig";
	if (!dot)
		return "application/octet-stream";
	if (!strcmp(dot, ".json"))
		return "application/json";
	if (!strcmp(dot, ".jsonl"))
		return "application/jsonl";
	if (!strcmp(dot, ".md"))
		return "text/markdown";
	if (!strcmp(dot, ".svg"))
		return "image/svg+xml";
	if (!strcmp(dot, ".safetensors"))
		return "application/vnd.lora.adapter.safetensors";
	return "application/octet-stream";
}

static void add_desc(struct lora_buf *b, const char *media, const char *digest, uint64_t size,
		     const char *title)
{
	lora_buf_puts(b, "{\"mediaType\":");
	lora_buf_json_str(b, media);
	lora_buf_printf(b, ",\"digest\":\"%s\",\"size\":%llu", digest, (unsigned long long)size);
	if (title) {
		lora_buf_puts(b, ",\"annotations\":{\"" ANN_TITLE "\":");
		lora_buf_json_str(b, title);
		lora_buf_puts(b, "}");
	}
	lora_buf_puts(b, "}");
}

/* ------------------------------------------------------------------ refs */

int lora_ref_parse(const char *s, struct lora_ref *out, struct lora_err *err)
{
	const char *colon;

	memset(out, 0, sizeof(*out));
	if (!strncmp(s, "sha256:", 7)) {
		size_t n = strlen(s + 7);
		if (n < 8 || n > 64 || !is_hex(s + 7, n))
			return lora_errc(err, LORA_EUSAGE, "bad digest '%s': give sha256: and 8 to 64 "
					 "lowercase hex digits", s);
		out->is_digest = 1;
		snprintf(out->digest_prefix, sizeof(out->digest_prefix), "%s", s);
		return 0;
	}
	colon = strchr(s, ':');
	if (colon) {
		if ((size_t)(colon - s) >= sizeof(out->name))
			return lora_errc(err, LORA_EUSAGE, "bad adapter name in '%s'", s);
		memcpy(out->name, s, (size_t)(colon - s));
		if (strlen(colon + 1) >= sizeof(out->tag))
			return lora_errc(err, LORA_EUSAGE, "bad tag in '%s'", s);
		strcpy(out->tag, colon + 1);
	} else {
		if (strlen(s) >= sizeof(out->name))
			return lora_errc(err, LORA_EUSAGE, "bad adapter name '%s'", s);
		strcpy(out->name, s);
		strcpy(out->tag, "latest");
	}
	if (!lora_name_ok(out->name))
		return lora_errc(err, LORA_EUSAGE, "bad adapter name '%s': use letters, digits, '.', '_' and "
				 "'-' (starting with a letter or digit), or a path that exists", out->name);
	if (!lora_tag_ok(out->tag))
		return lora_errc(err, LORA_EUSAGE, "bad tag '%s': use letters, digits, '.', '_' and '-'",
				 out->tag);
	return 0;
}

static void ref_str(const struct lora_ref *r, char out[LORA_REF_MAX])
{
	snprintf(out, LORA_REF_MAX, "%s:%s", r->name, r->tag);
}

/* Find the index entry for a REF in a loaded index; error lists candidates or near names. */
static const cJSON *resolve_in(const char *store, cJSON *idx, const char *spec, char digest[72],
			       char ref_out[LORA_REF_MAX], struct lora_err *err)
{
	struct lora_ref r;
	cJSON *ms = index_manifests(idx), *e;
	const cJSON *hit = NULL;
	char want[LORA_REF_MAX];

	if (lora_ref_parse(spec, &r, err) < 0)
		return NULL;
	if (!r.is_digest) {
		ref_str(&r, want);
		cJSON_ArrayForEach(e, ms) {
			const char *n = entry_ref(e);
			if (n && !strcmp(n, want) && entry_digest(e)) {
				hit = e;
				break;
			}
		}
		if (!hit) {
			struct lora_buf tags = LORA_BUF_INIT;
			size_t nl = strlen(r.name);
			cJSON_ArrayForEach(e, ms) {
				const char *n = entry_ref(e);
				if (n && !strncmp(n, r.name, nl) && n[nl] == ':')
					lora_buf_printf(&tags, "%s%s", tags.len ? ", " : "", n);
			}
			if (tags.len)
				lora_errf(err, "no adapter '%s' in the store '%s' (it has %s)", want, store, tags.data);
			else
				lora_errf(err, "no adapter '%s' in the store '%s'", want, store);
			lora_buf_free(&tags);
			return NULL;
		}
		snprintf(digest, 72, "%s", entry_digest(hit));
		if (ref_out)
			snprintf(ref_out, LORA_REF_MAX, "%s", want);
		return hit;
	}
	/* a digest prefix: distinct digests that start with it */
	{
		struct lora_buf cand = LORA_BUF_INIT;
		const char *first = NULL;
		size_t nd = 0, pl = strlen(r.digest_prefix);

		cJSON_ArrayForEach(e, ms) {
			const char *d = entry_digest(e);
			int dup = 0;
			if (!d || strncmp(d, r.digest_prefix, pl))
				continue;
			for (const cJSON *p = ms->child; p != e; p = p->next)
				if (entry_digest(p) && !strcmp(entry_digest(p), d))
					dup = 1;
			if (dup)
				continue;
			if (!nd++) {
				first = d;
				hit = e;
			}
			lora_buf_printf(&cand, "%s%s (%s)", cand.len ? ", " : "", d,
					entry_ref(e) ? entry_ref(e) : "unnamed");
		}
		if (nd == 0) {
			lora_errf(err, "no adapter with digest %s in the store '%s'", r.digest_prefix, store);
			hit = NULL;
		} else if (nd > 1) {
			lora_errf(err, "digest prefix %s is ambiguous: %s", r.digest_prefix,
				  cand.data ? cand.data : "");
			hit = NULL;
		} else {
			snprintf(digest, 72, "%s", first);
			if (ref_out)
				snprintf(ref_out, LORA_REF_MAX, "%s", entry_ref(hit) ? entry_ref(hit) : first);
		}
		lora_buf_free(&cand);
		return hit;
	}
}

int lora_store_resolve(const char *store_dir, const char *spec, char digest_out[72],
		       char ref_out[LORA_REF_MAX], struct lora_err *err)
{
	cJSON *idx;
	const cJSON *hit;

	if (index_load(store_dir, &idx, err) < 0)
		return -1;
	hit = resolve_in(store_dir, idx, spec, digest_out, ref_out, err);
	cJSON_Delete(idx);
	return hit ? 0 : -1;
}

/* --------------------------------------------------------- verification */

/* A package as the checks see it: from a .lora file or from the store's blobs. */
struct view {
	struct lora_pkg pkg;          /* manifest, sig, entries (name, size, sha256, path) */
	struct oci_man oci;           /* stored adapters only */
	int stored;
};

static void view_free(struct view *v)
{
	lora_pkg_free(&v->pkg);
}

static const char *const check_names[LORA_N_CHECKS] = { "package", "manifest", "files", "signature",
							 "signer" };

const char *lora_check_name(enum lora_check c)
{
	return (unsigned)c < LORA_N_CHECKS ? check_names[c] : "?";
}

static void rep_set(struct lora_verify_report *rep, enum lora_check c, enum lora_check_state s,
		    const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void rep_set(struct lora_verify_report *rep, enum lora_check c, enum lora_check_state s,
		    const char *fmt, ...)
{
	va_list ap;

	rep->state[c] = s;
	va_start(ap, fmt);
	vsnprintf(rep->detail[c], sizeof(rep->detail[c]), fmt, ap);
	va_end(ap);
}

/* err = "<label>: <check> check failed: <detail>" with LORA_EVERIFY. */
static int rep_fail(struct lora_verify_report *rep, enum lora_check c, const char *label,
		    struct lora_err *err)
{
	rep->state[c] = LORA_CHECK_FAIL;
	rep->valid = 0;
	return lora_errc(err, LORA_EVERIFY, "%s: %s check failed: %s", label, check_names[c], rep->detail[c]);
}

/* Strip a "'label': " prefix so details do not repeat the label. */
static const char *unlabel(const char *msg)
{
	if (msg[0] == '\'') {
		const char *e = strstr(msg, "': ");
		if (e)
			return e + 3;
	}
	return msg;
}

/*
 * The checks after "package": manifest, files, signature, signer.  With
 * allow_untrusted an unsigned package or an unknown signer passes (the
 * states still say FAIL/SKIP); a bad signature never does.  m is filled
 * (free it) when the manifest parsed.
 */
static int check_view(const char *store, struct view *v, const char *label, int allow_untrusted,
		      struct lora_verify_report *rep, struct lora_manifest *m, struct lora_err *err)
{
	struct lora_err e2 = { 0 };
	unsigned char pk[32];
	struct lora_signers signers;
	char *asp, why[256], fp[LORA_SSH_FP_MAX];
	int trusted;

	memset(m, 0, sizeof(*m));
	if (lora_manifest_parse(v->pkg.manifest, v->pkg.manifest_len, m, &e2) < 0) {
		rep_set(rep, LORA_CHK_MANIFEST, LORA_CHECK_FAIL, "%s", e2.msg);
		return rep_fail(rep, LORA_CHK_MANIFEST, label, err);
	}
	rep_set(rep, LORA_CHK_MANIFEST, LORA_CHECK_OK, "%s:%s, %zu files listed", m->name, m->tag, m->n_files);
	if (m->signer_identity)
		snprintf(rep->identity, sizeof(rep->identity), "%s", m->signer_identity);
	rep->n_files = v->pkg.n_entries;
	if (lora_pkg_match_files(m, v->pkg.entries, v->pkg.n_entries, &e2) < 0) {
		rep_set(rep, LORA_CHK_FILES, LORA_CHECK_FAIL, "%s", e2.msg);
		return rep_fail(rep, LORA_CHK_FILES, label, err);
	}
	rep_set(rep, LORA_CHK_FILES, LORA_CHECK_OK, "%zu files match their size and sha256", m->n_files);

	if (!v->pkg.sig) {
		rep_set(rep, LORA_CHK_SIGNATURE, LORA_CHECK_FAIL, "the package is unsigned (no manifest.json.sig)");
		if (allow_untrusted)
			return 0;
		return rep_fail(rep, LORA_CHK_SIGNATURE, label, err);
	}
	if (lora_sshsig_verify(v->pkg.sig, v->pkg.sig_len, LORA_SIG_NAMESPACE, v->pkg.manifest,
			       v->pkg.manifest_len, pk, &e2) < 0) {
		rep_set(rep, LORA_CHK_SIGNATURE, LORA_CHECK_FAIL, "manifest.json.sig: %s", e2.msg);
		return rep_fail(rep, LORA_CHK_SIGNATURE, label, err);
	}
	lora_sshkey_fingerprint(pk, fp);
	snprintf(rep->key_fingerprint, sizeof(rep->key_fingerprint), "%s", fp);
	if (!m->signer_identity) {
		rep_set(rep, LORA_CHK_SIGNATURE, LORA_CHECK_FAIL, "the manifest names no signer");
		return rep_fail(rep, LORA_CHK_SIGNATURE, label, err);
	}
	if (strcmp(m->signer_fp, fp)) {
		rep_set(rep, LORA_CHK_SIGNATURE, LORA_CHECK_FAIL,
			"the manifest names key %s but the signature was made with %s", m->signer_fp, fp);
		return rep_fail(rep, LORA_CHK_SIGNATURE, label, err);
	}
	rep_set(rep, LORA_CHK_SIGNATURE, LORA_CHECK_OK, "good SSHSIG signature (namespace %s) by key %s",
		LORA_SIG_NAMESPACE, fp);

	asp = lora_store_allowed_signers_path(store);
	if (!asp)
		return lora_errf(err, "out of memory");
	if (lora_signers_load(asp, &signers, &e2) < 0) {
		free(asp);
		rep_set(rep, LORA_CHK_SIGNER, LORA_CHECK_FAIL, "%s", e2.msg);
		return rep_fail(rep, LORA_CHK_SIGNER, label, err);
	}
	trusted = lora_signers_trusts(&signers, pk, m->signer_identity, LORA_SIG_NAMESPACE, time(NULL), NULL, why);
	lora_signers_free(&signers);
	if (!trusted) {
		rep_set(rep, LORA_CHK_SIGNER, LORA_CHECK_FAIL, "%s (%s)", why, asp);
		free(asp);
		if (allow_untrusted)
			return 0;
		return rep_fail(rep, LORA_CHK_SIGNER, label, err);
	}
	free(asp);
	rep_set(rep, LORA_CHK_SIGNER, LORA_CHECK_OK, "'%s' is trusted in allowed_signers", m->signer_identity);
	rep->valid = 1;
	for (int c = 0; c < LORA_N_CHECKS; c++)
		if (rep->state[c] != LORA_CHECK_OK)
			rep->valid = 0;
	return 0;
}

/* Load a stored adapter into a view: every blob re-hashed against its descriptor. */
static int view_from_store(const char *store, const char *digest, struct view *v, int rehash,
			   struct lora_verify_report *rep, struct lora_err *err)
{
	char *oci = NULL;
	size_t ol;
	struct lora_err e2 = { 0 };
	int have_sig = 0;

	memset(v, 0, sizeof(*v));
	v->stored = 1;
	if (blob_read(store, digest, OCI_JSON_MAX, &oci, &ol, &e2) < 0 ||
	    oci_parse(oci, ol, &v->oci, &e2) < 0)
		goto fail;
	free(oci);
	oci = NULL;
	if (!v->oci.is_lora) {
		lora_errc(&e2, LORA_EVERIFY, "%.19s... is not a lora adapter (artifactType)", digest);
		goto fail;
	}
	if (v->oci.config.size > LORA_MANIFEST_MAX) {
		lora_errc(&e2, LORA_EVERIFY, "the manifest blob is larger than 1 MiB");
		goto fail;
	}
	if (blob_read(store, v->oci.config.digest, LORA_MANIFEST_MAX, &v->pkg.manifest, &v->pkg.manifest_len,
		      &e2) < 0)
		goto fail;
	if (v->pkg.manifest_len != v->oci.config.size) {
		lora_errc(&e2, LORA_EVERIFY, "the manifest blob size differs from the OCI manifest");
		goto fail;
	}
	v->pkg.entries = calloc(MAX_LAYERS, sizeof(*v->pkg.entries));
	if (!v->pkg.entries) {
		lora_errf(&e2, "out of memory");
		goto fail;
	}
	for (size_t i = 0; i < v->oci.n_layers; i++) {
		const struct oci_desc *d = &v->oci.layers[i];
		struct lora_pkg_entry *pe;
		char hex[65];
		uint64_t size;

		if (!lora_pkg_name_ok(d->title) || !strcmp(d->title, LORA_PKG_MANIFEST)) {
			lora_errc(&e2, LORA_EVERIFY, "layer %zu has no valid title annotation", i);
			goto fail;
		}
		if (!strcmp(d->title, LORA_PKG_SIG)) {
			if (have_sig++ || d->size > LORA_PKG_MAX_SIG ||
			    blob_read(store, d->digest, LORA_PKG_MAX_SIG, &v->pkg.sig, &v->pkg.sig_len, &e2) < 0) {
				if (!e2.msg[0])
					lora_errc(&e2, LORA_EVERIFY, "bad signature layer");
				goto fail;
			}
			continue;
		}
		for (size_t k = 0; k < v->pkg.n_entries; k++)
			if (!strcmp(v->pkg.entries[k].name, d->title)) {
				lora_errc(&e2, LORA_EVERIFY, "two layers are titled '%s'", d->title);
				goto fail;
			}
		pe = &v->pkg.entries[v->pkg.n_entries++];
		snprintf(pe->name, sizeof(pe->name), "%s", d->title);
		pe->path = blob_path(store, d->digest);
		if (!pe->path) {
			lora_errf(&e2, "out of memory");
			goto fail;
		}
		if (!lora_is_file(pe->path)) {
			lora_errc(&e2, LORA_EVERIFY, "blob of '%s' (%.19s...) is missing from the store", d->title,
				  d->digest);
			goto fail;
		}
		if (rehash) {
			if (lora_sha256_file(pe->path, hex, &size, &e2) < 0)
				goto fail;
			if (strcmp(hex, d->digest + 7) || size != d->size) {
				lora_errc(&e2, LORA_EVERIFY, "blob of '%s' (%.19s...) does not match its digest "
					  "(changed on disk)", d->title, d->digest);
				goto fail;
			}
		} else {
			struct stat st;
			if (stat(pe->path, &st) < 0 || (uint64_t)st.st_size != d->size) {
				lora_errc(&e2, LORA_EVERIFY, "blob of '%s' has the wrong size", d->title);
				goto fail;
			}
			size = d->size;
		}
		pe->size = size;
		memcpy(pe->sha256, d->digest + 7, 65);
	}
	if (rep)
		rep_set(rep, LORA_CHK_PACKAGE, LORA_CHECK_OK, "OCI manifest %.19s... and its %zu blobs match "
			"their digests", digest, v->oci.n_layers + 1);
	return 0;
fail:
	free(oci);
	if (rep)
		rep_set(rep, LORA_CHK_PACKAGE, LORA_CHECK_FAIL, "%s", e2.msg);
	if (err)
		*err = e2;
	view_free(v);
	return -1;
}

static int view_from_file_progress(const char *path, const char *extract_dir, struct view *v,
				   struct lora_verify_report *rep, lora_progress_fn progress, void *pctx,
				   struct lora_err *err)
{
	struct lora_err e2 = { 0 };

	memset(v, 0, sizeof(*v));
	if (lora_pkg_read_progress(path, extract_dir, &v->pkg, progress, pctx, &e2) < 0) {
		if (rep)
			rep_set(rep, LORA_CHK_PACKAGE, LORA_CHECK_FAIL, "%s", unlabel(e2.msg));
		if (err)
			*err = e2;
		return -1;
	}
	if (rep)
		rep_set(rep, LORA_CHK_PACKAGE, LORA_CHECK_OK, "tar archive with %zu entries, all regular files",
			v->pkg.n_entries + 1 + (v->pkg.sig != NULL));
	return 0;
}

static int view_from_file(const char *path, const char *extract_dir, struct view *v,
			  struct lora_verify_report *rep, struct lora_err *err)
{
	return view_from_file_progress(path, extract_dir, v, rep, NULL, NULL, err);
}

static int spec_is_file(const char *spec)
{
	struct stat st;
	return stat(spec, &st) == 0 && S_ISREG(st.st_mode);
}

/* Verify spec into rep; keeps the view and manifest for describe when asked. */
static int verify_spec(const char *store, const char *spec, struct lora_verify_report *rep,
		       struct view *vout, struct lora_manifest *mout, struct lora_err *err)
{
	struct view v;
	struct lora_manifest m = { 0 };
	const char *label = spec;
	int rc;

	memset(rep, 0, sizeof(*rep));
	if (spec_is_file(spec)) {
		if (view_from_file(spec, NULL, &v, rep, err) < 0) {
			if (err->code != LORA_EVERIFY)
				return -1;
			rep_fail(rep, LORA_CHK_PACKAGE, spec, err);
			return 0;
		}
	} else {
		if (lora_store_resolve(store, spec, rep->digest, rep->ref, err) < 0)
			return -1;
		label = rep->ref;
		if (view_from_store(store, rep->digest, &v, 1, rep, err) < 0) {
			rep_fail(rep, LORA_CHK_PACKAGE, label, err);
			return 0;
		}
	}
	rc = check_view(store, &v, label, 0, rep, &m, err);
	(void)rc;
	if (vout)
		*vout = v;
	else
		view_free(&v);
	if (mout)
		*mout = m;
	else
		lora_manifest_free(&m);
	return 0;
}

int lora_store_verify(const char *store_dir, const char *spec, struct lora_verify_report *rep,
		      struct lora_err *err)
{
	return verify_spec(store_dir, spec, rep, NULL, NULL, err);
}

/* ---------------------------------------------------------------- import */

/* A fresh <store>/tmp/import-XXXXXX (removed by the caller or by gc). */
static char *stage_dir(const char *store, struct lora_err *err)
{
	size_t n = strlen(store) + 32;
	char *p = malloc(n);

	if (!p) {
		lora_errf(err, "out of memory");
		return NULL;
	}
	snprintf(p, n, "%s/tmp/import-XXXXXX", store);
	if (!mkdtemp(p)) {
		lora_errf(err, "cannot create a work folder in '%s/tmp': %s", store, strerror(errno));
		free(p);
		return NULL;
	}
	return p;
}

static void store_gc(const char *store, int blocking);

/*
 * Put a checked package into the store as ref: blobs (moved from the stage
 * folder), manifest.json, the OCI manifest, then index.json.  The caller
 * holds .lock-gc shared.  *replaced is set when ref pointed elsewhere.
 */
static int commit_adapter_oci(const char *store, const char *ref, const struct lora_pkg *p, const char *created,
			      const char *oci, size_t oci_len, char digest_out[72], int *replaced,
			      struct lora_err *err);

static int commit_adapter(const char *store, const char *ref, const struct lora_pkg *p, const char *created,
			  char digest_out[72], int *replaced, struct lora_err *err)
{
	return commit_adapter_oci(store, ref, p, created, NULL, 0, digest_out, replaced, err);
}

/* The same; oci (may be NULL) is an OCI manifest already describing p, stored as it is. */
static int commit_adapter_oci(const char *store, const char *ref, const struct lora_pkg *p, const char *created,
			      const char *oci, size_t oci_len, char digest_out[72], int *replaced,
			      struct lora_err *err)
{
	struct lora_buf b = LORA_BUF_INIT;
	char cfg_digest[72], sig_digest[72] = "", man_digest[72], d[72];
	cJSON *idx = NULL, *ms, *e, *ne = NULL;
	int fd = -1, rc = -1;

	*replaced = 0;
	for (size_t i = 0; i < p->n_entries; i++)
		if (blob_put_path(store, p->entries[i].sha256, p->entries[i].path, err) < 0)
			return -1;
	if (blob_put_mem(store, p->manifest, p->manifest_len, cfg_digest, err) < 0)
		return -1;
	if (p->sig && blob_put_mem(store, p->sig, p->sig_len, sig_digest, err) < 0)
		return -1;
	{
		char *bd = spath(store, "blobs/sha256");
		int r = bd ? lora_fsync_dir(bd, err) : lora_errf(err, "out of memory");
		free(bd);
		if (r < 0)
			return -1;
	}
	if (oci) {
		lora_buf_add(&b, oci, oci_len);
		goto built;
	}
	lora_buf_puts(&b, "{\"schemaVersion\":2,\"mediaType\":\"" MT_OCI_MANIFEST "\",\"artifactType\":\""
			  LORA_ARTIFACT_TYPE "\",\"config\":");
	add_desc(&b, LORA_MEDIA_MANIFEST, cfg_digest, p->manifest_len, NULL);
	lora_buf_puts(&b, ",\"layers\":[");
	if (p->sig)
		add_desc(&b, layer_media_type(LORA_PKG_SIG), sig_digest, p->sig_len, LORA_PKG_SIG);
	for (size_t i = 0; i < p->n_entries; i++) {
		if (i || p->sig)
			lora_buf_puts(&b, ",");
		snprintf(d, sizeof(d), "sha256:%s", p->entries[i].sha256);
		add_desc(&b, layer_media_type(p->entries[i].name), d, p->entries[i].size, p->entries[i].name);
	}
	lora_buf_puts(&b, "],\"annotations\":{\"" ANN_CREATED "\":");
	lora_buf_json_str(&b, created ? created : "");
	lora_buf_puts(&b, "}}");
built:
	if (b.oom) {
		lora_buf_free(&b);
		return lora_errf(err, "out of memory");
	}
	rc = blob_put_mem(store, b.data, b.len, man_digest, err);
	if (rc < 0)
		goto out;
	rc = -1;

	/* index.json: read, change, write aside and rename, all under the index lock */
	fd = lock_take(store, ".lock-index", LOCK_EX, err);
	if (fd < 0)
		goto out;
	if (index_load(store, &idx, err) < 0)
		goto out;
	ms = index_manifests(idx);
	for (e = ms->child; e;) {
		cJSON *next = e->next;
		const char *n = entry_ref(e);
		if (n && !strcmp(n, ref)) {
			const char *od = entry_digest(e);
			if (!od || strcmp(od, man_digest))
				*replaced = 1;
			cJSON_Delete(cJSON_DetachItemViaPointer(ms, e));
		}
		e = next;
	}
	ne = cJSON_CreateObject();
	if (!ne)
		goto oom;
	cJSON_AddStringToObject(ne, "mediaType", MT_OCI_MANIFEST);
	cJSON_AddStringToObject(ne, "digest", man_digest);
	cJSON_AddNumberToObject(ne, "size", (double)b.len);
	cJSON_AddStringToObject(ne, "artifactType", LORA_ARTIFACT_TYPE);
	{
		cJSON *an = cJSON_AddObjectToObject(ne, "annotations");
		if (!an || !cJSON_AddStringToObject(an, ANN_REF, ref))
			goto oom;
	}
	cJSON_AddItemToArray(ms, ne);
	if (index_save(store, idx, err) < 0)
		goto out;
	if (digest_out)
		snprintf(digest_out, 72, "%s", man_digest);
	rc = 0;
	goto out;
oom:
	lora_errf(err, "out of memory");
out:
	lock_drop(fd);
	cJSON_Delete(idx);
	lora_buf_free(&b);
	return rc;
}

/* Open the PEFT files of a staged package, to refuse a broken adapter before it is stored. */
static int check_adapter_files(const struct lora_pkg *p, const char *label, struct lora_err *err)
{
	const char *cfg = NULL, *w = NULL;
	struct lora_peft *peft;

	for (size_t i = 0; i < p->n_entries; i++) {
		if (!strcmp(p->entries[i].name, LORA_PKG_CONFIG))
			cfg = p->entries[i].path;
		if (!strcmp(p->entries[i].name, LORA_PKG_WEIGHTS))
			w = p->entries[i].path;
	}
	if (!cfg || !w)
		return lora_errc(err, LORA_EVERIFY, "%s: the package lacks adapter files", label);
	if (lora_peft_open_files(cfg, w, &peft, err) < 0)
		return lora_err_prefix(err, "%s: not a usable adapter", label);
	lora_peft_close(peft);
	return 0;
}

int lora_store_import_package(const char *store_dir, const char *pkg_path, const char *ref,
			      int allow_untrusted, char ref_out[LORA_REF_MAX], char digest_out[72],
			      struct lora_err *err)
{
	return lora_store_import_package_progress(store_dir, pkg_path, ref, allow_untrusted, ref_out,
						  digest_out, NULL, NULL, err);
}

int lora_store_import_package_progress(const char *store_dir, const char *pkg_path, const char *ref,
				       int allow_untrusted, char ref_out[LORA_REF_MAX], char digest_out[72],
				       void (*progress)(void *ctx, double done, double total), void *progress_ctx,
				       struct lora_err *err)
{
	struct lora_verify_report rep;
	struct lora_manifest m = { 0 };
	struct lora_ref r;
	struct view v = { 0 };
	char want[LORA_REF_MAX], *stage = NULL;
	int gfd = -1, rc = -1, replaced = 0;

	memset(&rep, 0, sizeof(rep));
	if (ref && (lora_ref_parse(ref, &r, err) < 0 || r.is_digest))
		return r.is_digest ? lora_errc(err, LORA_EUSAGE, "--name wants NAME[:TAG], not a digest") : -1;
	if (!spec_is_file(pkg_path))
		return lora_errf(err, "cannot import '%s': not a .lora file or a folder", pkg_path);
	if (store_init(store_dir, err) < 0)
		return -1;
	gfd = lock_take(store_dir, ".lock-gc", LOCK_SH, err);
	if (gfd < 0)
		return -1;
	stage = stage_dir(store_dir, err);
	if (!stage)
		goto out;
	if (view_from_file_progress(pkg_path, stage, &v, &rep, progress, progress_ctx, err) < 0) {
		if (err && err->code == LORA_EVERIFY)
			rep_fail(&rep, LORA_CHK_PACKAGE, pkg_path, err);
		goto out;
	}
	if (check_view(store_dir, &v, pkg_path, allow_untrusted, &rep, &m, err) < 0)
		goto out;
	if (check_adapter_files(&v.pkg, pkg_path, err) < 0)
		goto out;
	if (ref)
		ref_str(&r, want);
	else
		snprintf(want, sizeof(want), "%s:%s", m.name, m.tag);
	if (commit_adapter(store_dir, want, &v.pkg, m.created, digest_out, &replaced, err) < 0)
		goto out;
	if (ref_out)
		snprintf(ref_out, LORA_REF_MAX, "%s", want);
	rc = 0;
out:
	lora_manifest_free(&m);
	view_free(&v);
	if (stage) {
		lora_rm_rf(stage, NULL);
		free(stage);
	}
	lock_drop(gfd);
	if (rc == 0 && replaced)
		store_gc(store_dir, 0);
	return rc;
}

/* Copy src into dir/name, hashing it; fills e. */
struct copy_progress {
	const struct lora_import_opts *o;
	double done, total;
};

static int stage_copy(const char *src, const char *dir, const char *name, struct lora_pkg_entry *e,
		      struct copy_progress *cp, struct lora_err *err)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char *chunk = malloc(1 << 20), dig[32];
	int in = -1, out = -1, rc = -1;
	struct stat st;

	memset(e, 0, sizeof(*e));
	snprintf(e->name, sizeof(e->name), "%s", name);
	e->path = lora_path_join(dir, name);
	if (!md || !chunk || !e->path) {
		lora_errf(err, "out of memory");
		goto out;
	}
	in = open(src, O_RDONLY | O_CLOEXEC);
	if (in < 0 || fstat(in, &st) < 0 || !S_ISREG(st.st_mode)) {
		lora_errf(err, "cannot read '%s': %s", src, in < 0 ? strerror(errno) : "not a regular file");
		goto out;
	}
	if ((uint64_t)st.st_size > LORA_PKG_MAX_FILE) {
		lora_errf(err, "'%s' is larger than the package limit of 32 GiB", src);
		goto out;
	}
	out = open(e->path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (out < 0) {
		lora_errf(err, "cannot create '%s': %s", e->path, strerror(errno));
		goto out;
	}
	EVP_DigestInit_ex(md, EVP_sha256(), NULL);
	for (;;) {
		ssize_t n = read(in, chunk, 1 << 20);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			lora_errf(err, "cannot read '%s': %s", src, strerror(errno));
			goto out;
		}
		if (n == 0)
			break;
		EVP_DigestUpdate(md, chunk, (size_t)n);
		if (lora_write_all(out, chunk, (size_t)n, e->path, err) < 0)
			goto out;
		e->size += (uint64_t)n;
		if (cp && cp->o->progress) {
			cp->done += (double)n;
			cp->o->progress(cp->o->progress_ctx, cp->done, cp->total);
		}
	}
	if (fsync(out) < 0) {
		lora_errf(err, "cannot write '%s': %s", e->path, strerror(errno));
		goto out;
	}
	EVP_DigestFinal_ex(md, dig, NULL);
	hex_of(dig, e->sha256);
	rc = 0;
out:
	if (in >= 0)
		close(in);
	if (out >= 0)
		close(out);
	EVP_MD_CTX_free(md);
	free(chunk);
	return rc;
}

static char *default_key_path(const char *store)
{
	return spath(store, "keys/id_ed25519");
}

void lora_store_default_identity(const char *user, char out[256])
{
	const char *u = user;
	char host[128] = "localhost";
	struct passwd *pw;

	if (!u || !*u) {
		pw = getpwuid(getuid());
		u = pw && pw->pw_name ? pw->pw_name : "lora";
	}
	gethostname(host, sizeof(host) - 1);
	host[sizeof(host) - 1] = 0;
	snprintf(out, 256, "%s@%s", u, host);
	for (char *c = out; *c; c++)
		if (*c == ' ' || *c == '\t' || *c == ',' || *c == '"' || (unsigned char)*c < 0x20)
			*c = '_';
}

static int load_signing_key(const char *store, const char *key_path, const char *user,
			    struct lora_sshkey *key, struct lora_err *err)
{
	char *p = key_path ? strdup(key_path) : default_key_path(store);
	int rc;

	if (!p)
		return lora_errf(err, "out of memory");
	if (!key_path && access(p, F_OK) < 0) {
		rc = lora_errf(err, "no signing key in '%s': run 'lora keygen' or give --key FILE", store);
		free(p);
		return rc;
	}
	rc = lora_sshkey_load_private(p, key, err);
	free(p);
	if (rc == 0 && !key->comment[0])
		lora_store_default_identity(user, key->comment);
	return rc;
}

int lora_store_check_signing_key(const char *store_dir, const char *key_path, struct lora_err *err)
{
	struct lora_sshkey k;
	int rc = load_signing_key(store_dir, key_path, NULL, &k, err);

	lora_sshkey_wipe(&k);
	return rc;
}

static cJSON *lora_settings(const struct lora_peft *p)
{
	const struct lora_peft_config *c = &p->cfg;
	cJSON *o = cJSON_CreateObject(), *t;

	if (!o)
		return NULL;
	cJSON_AddStringToObject(o, "peft_type", c->peft_type ? c->peft_type : "LORA");
	cJSON_AddNumberToObject(o, "r", c->r);
	cJSON_AddNumberToObject(o, "lora_alpha", c->lora_alpha);
	cJSON_AddBoolToObject(o, "use_rslora", c->use_rslora);
	if (c->target_regex) {
		cJSON_AddStringToObject(o, "target_modules", c->target_regex);
	} else {
		t = cJSON_AddArrayToObject(o, "target_modules");
		for (size_t i = 0; t && i < c->n_target_modules; i++)
			cJSON_AddItemToArray(t, cJSON_CreateString(c->target_modules[i]));
	}
	if (c->n_rank_pattern || c->n_alpha_pattern) {
		cJSON *rp = cJSON_AddObjectToObject(o, "rank_pattern");
		cJSON *ap = cJSON_AddObjectToObject(o, "alpha_pattern");
		for (size_t i = 0; rp && i < c->n_rank_pattern; i++)
			cJSON_AddNumberToObject(rp, c->rank_pattern[i].key, c->rank_pattern[i].value);
		for (size_t i = 0; ap && i < c->n_alpha_pattern; i++)
			cJSON_AddNumberToObject(ap, c->alpha_pattern[i].key, c->alpha_pattern[i].value);
	}
	cJSON_AddNumberToObject(o, "modules", (double)p->n_modules);
	cJSON_AddNumberToObject(o, "params", (double)p->n_params);
	cJSON_AddStringToObject(o, "dtype", lora_dtype_name(p->dtype));
	return o;
}

static const char *base_name_of(const char *path)
{
	const char *s = strrchr(path, '/');
	return s ? s + 1 : path;
}

int lora_store_add_peft_dir(const char *store_dir, const char *peft_dir, const char *ref,
			    const struct lora_import_opts *opts, char digest_out[72], struct lora_err *err)
{
	static const char *const optional[] = { "README.md", "training_log.jsonl", "loss.svg" };
	static const struct lora_import_opts no_opts = { 0 };
	struct lora_sshkey key;
	struct lora_peft *peft = NULL;
	struct lora_ref r;
	struct lora_pkg pkg = { 0 };
	struct lora_manifest_file *mf = NULL;
	struct lora_manifest_spec spec = { 0 };
	cJSON *settings = NULL, *prov = NULL;
	char want[LORA_REF_MAX], fp[LORA_SSH_FP_MAX], *stage = NULL, *src = NULL;
	int gfd = -1, rc = -1, replaced = 0;
	struct copy_progress cp = { 0 };

	memset(&key, 0, sizeof(key));
	if (!opts)
		opts = &no_opts;
	cp.o = opts;
	if (lora_ref_parse(ref, &r, err) < 0)
		return -1;
	if (r.is_digest)
		return lora_errc(err, LORA_EUSAGE, "an adapter name is NAME[:TAG], not a digest");
	ref_str(&r, want);
	if (opts->provenance_json) {
		prov = cJSON_Parse(opts->provenance_json);
		if (!cJSON_IsObject(prov)) {
			cJSON_Delete(prov);
			return lora_errf(err, "provenance is not a JSON object");
		}
	}
	if (opts->base_fingerprint && (strncmp(opts->base_fingerprint, "sha256:", 7) ||
				       strlen(opts->base_fingerprint) != 71 || !is_hex(opts->base_fingerprint + 7, 64))) {
		cJSON_Delete(prov);
		return lora_errf(err, "bad base fingerprint '%s'", opts->base_fingerprint);
	}
	if (load_signing_key(store_dir, opts->key_path, opts->user, &key, err) < 0)
		goto out;
	if (lora_peft_open(peft_dir, &peft, err) < 0)
		goto out;
	settings = lora_settings(peft);
	cp.total = (double)peft->st->size;
	if (store_init(store_dir, err) < 0)
		goto out;
	gfd = lock_take(store_dir, ".lock-gc", LOCK_SH, err);
	if (gfd < 0)
		goto out;
	stage = stage_dir(store_dir, err);
	pkg.entries = calloc(LORA_MANIFEST_MAX_FILES, sizeof(*pkg.entries));
	mf = calloc(LORA_MANIFEST_MAX_FILES, sizeof(*mf));
	if (!stage || !pkg.entries || !mf) {
		if (stage)
			lora_errf(err, "out of memory");
		goto out;
	}
	/* the two PEFT files, the optional files found beside them, then the caller's extras */
	for (size_t i = 0; i < 2 + 3 + opts->n_extra; i++) {
		const char *name;
		free(src);
		src = NULL;
		if (i < 2) {
			name = i == 0 ? LORA_PKG_CONFIG : LORA_PKG_WEIGHTS;
			src = lora_path_join(peft_dir, name);
		} else if (i < 5) {
			name = optional[i - 2];
			src = lora_path_join(peft_dir, name);
			if (src && !lora_is_file(src))
				continue;
		} else {
			src = strdup(opts->extra_files[i - 5]);
			name = src ? base_name_of(opts->extra_files[i - 5]) : "";
		}
		if (!src) {
			lora_errf(err, "out of memory");
			goto out;
		}
		if (!lora_pkg_name_ok(name) || !strcmp(name, LORA_PKG_MANIFEST) || !strcmp(name, LORA_PKG_SIG)) {
			lora_errf(err, "cannot package '%s': the file name is not allowed in a package", src);
			goto out;
		}
		{
			int dup = 0;
			for (size_t k = 0; k < pkg.n_entries; k++)
				if (!strcmp(pkg.entries[k].name, name))
					dup = 1;
			if (dup && i >= 5) {
				lora_errf(err, "cannot package '%s': a file named '%s' is already in the package", src,
					  name);
				goto out;
			}
			if (dup)
				continue;
		}
		if (pkg.n_entries == LORA_MANIFEST_MAX_FILES) {
			lora_errf(err, "too many files for one package");
			goto out;
		}
		if (stage_copy(src, stage, name, &pkg.entries[pkg.n_entries], &cp, err) < 0)
			goto out;
		mf[pkg.n_entries].name = pkg.entries[pkg.n_entries].name;
		mf[pkg.n_entries].size = pkg.entries[pkg.n_entries].size;
		memcpy(mf[pkg.n_entries].sha256, pkg.entries[pkg.n_entries].sha256, 65);
		pkg.n_entries++;
	}
	lora_sshkey_fingerprint(key.pk, fp);
	spec.name = r.name;
	spec.tag = r.tag;
	spec.description = opts->description;
	spec.created = opts->created;
	spec.base_name = peft->cfg.base_model;
	spec.base_fingerprint = opts->base_fingerprint;
	spec.lora = settings;
	spec.provenance = prov;
	spec.files = mf;
	spec.n_files = pkg.n_entries;
	spec.signer_identity = key.comment;
	spec.signer_fp = fp;
	pkg.manifest = lora_manifest_build(&spec, err);
	if (!pkg.manifest)
		goto out;
	pkg.manifest_len = strlen(pkg.manifest);
	if (lora_sshsig_sign(&key, LORA_SIG_NAMESPACE, pkg.manifest, pkg.manifest_len, &pkg.sig, err) < 0)
		goto out;
	pkg.sig_len = strlen(pkg.sig);
	{
		/* what we just wrote must read back as a valid manifest */
		struct lora_manifest m;
		if (lora_manifest_parse(pkg.manifest, pkg.manifest_len, &m, err) < 0)
			goto out;
		rc = commit_adapter(store_dir, want, &pkg, m.created, digest_out, &replaced, err);
		lora_manifest_free(&m);
	}
out:
	lora_sshkey_wipe(&key);
	lora_peft_close(peft);
	cJSON_Delete(settings);
	cJSON_Delete(prov);
	free(src);
	free(mf);
	lora_pkg_free(&pkg);
	if (stage) {
		lora_rm_rf(stage, NULL);
		free(stage);
	}
	lock_drop(gfd);
	if (rc == 0 && replaced)
		store_gc(store_dir, 0);
	return rc;
}

/* ---------------------------------------------------------------- export */

static int open_stored(const char *store, const char *spec, struct view *v, char ref[LORA_REF_MAX],
		       struct lora_err *err)
{
	char digest[72];

	if (lora_store_resolve(store, spec, digest, ref, err) < 0)
		return -1;
	if (view_from_store(store, digest, v, 0, NULL, err) < 0)
		return lora_err_prefix(err, "%s", ref);
	return 0;
}

int lora_store_export_lora(const char *store_dir, const char *spec, const char *out_path,
			   struct lora_err *err)
{
	struct view v;
	struct lora_manifest m;
	struct lora_tmpfile t;
	char ref[LORA_REF_MAX];
	int64_t mtime = 0;
	int rc;

	if (open_stored(store_dir, spec, &v, ref, err) < 0)
		return -1;
	if (lora_manifest_parse(v.pkg.manifest, v.pkg.manifest_len, &m, NULL) == 0) {
		mtime = lora_pkg_mtime(m.created);
		lora_manifest_free(&m);
	}
	if (!strcmp(out_path, "-")) {
		rc = lora_pkg_write_fd(1, "standard output", v.pkg.manifest, v.pkg.manifest_len, v.pkg.sig,
				       v.pkg.sig_len, v.pkg.entries, v.pkg.n_entries, mtime, err);
	} else if (lora_tmp_open(&t, out_path, 0644, err) < 0) {
		rc = -1;
	} else {
		rc = lora_pkg_write_fd(t.fd, out_path, v.pkg.manifest, v.pkg.manifest_len, v.pkg.sig,
				       v.pkg.sig_len, v.pkg.entries, v.pkg.n_entries, mtime, err);
		if (rc == 0)
			rc = lora_tmp_commit(&t, err);
		else
			lora_tmp_abort(&t);
	}
	view_free(&v);
	return rc;
}

static int write_mem_file(const char *dir, const char *name, const char *data, size_t len,
			  struct lora_err *err)
{
	char *p = lora_path_join(dir, name);
	int fd, rc;

	if (!p)
		return lora_errf(err, "out of memory");
	fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0) {
		rc = lora_errf(err, "cannot create '%s': %s", p, strerror(errno));
		free(p);
		return rc;
	}
	rc = lora_write_all(fd, data, len, p, err);
	if (rc == 0 && fsync(fd) < 0)
		rc = lora_errf(err, "cannot write '%s': %s", p, strerror(errno));
	close(fd);
	free(p);
	return rc;
}

static int copy_file_to(const char *src, uint64_t size, const char *dir, const char *name,
			struct lora_err *err)
{
	char *p = lora_path_join(dir, name);
	int in, out, rc;

	if (!p)
		return lora_errf(err, "out of memory");
	in = open(src, O_RDONLY | O_CLOEXEC);
	out = open(p, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (in < 0 || out < 0)
		rc = lora_errf(err, "cannot copy into '%s': %s", p, strerror(errno));
	else
		rc = lora_copy_range(out, in, 0, size, p, err);
	if (rc == 0 && fsync(out) < 0)
		rc = lora_errf(err, "cannot write '%s': %s", p, strerror(errno));
	if (in >= 0)
		close(in);
	if (out >= 0)
		close(out);
	free(p);
	return rc;
}

static int dir_is_empty(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	int empty = 1;

	if (!d)
		return 0;
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			empty = 0;
	closedir(d);
	return empty;
}

int lora_store_export_peft(const char *store_dir, const char *spec, const char *out_dir,
			   struct lora_err *err)
{
	struct view v;
	char ref[LORA_REF_MAX], *tmp = NULL, *parent = NULL;
	size_t n;
	int rc = -1;

	if (lora_is_dir(out_dir) && !dir_is_empty(out_dir))
		return lora_errf(err, "cannot export into '%s': the folder is not empty", out_dir);
	if (!lora_is_dir(out_dir) && access(out_dir, F_OK) == 0)
		return lora_errf(err, "cannot export into '%s': a file is in the way", out_dir);
	if (open_stored(store_dir, spec, &v, ref, err) < 0)
		return -1;
	/* build the folder aside, then rename it into place */
	n = strlen(out_dir) + 32;
	tmp = malloc(n);
	parent = lora_dirname(out_dir);
	if (!tmp || !parent) {
		lora_errf(err, "out of memory");
		goto out;
	}
	while (n > 1 && out_dir[strlen(out_dir) - 1] == '/')
		break;
	snprintf(tmp, n, "%s.tmp-XXXXXX", out_dir);
	{
		size_t l = strlen(out_dir);
		while (l > 1 && out_dir[l - 1] == '/')
			l--;
		snprintf(tmp, n, "%.*s.tmp-XXXXXX", (int)l, out_dir);
	}
	if (!mkdtemp(tmp)) {
		lora_errf(err, "cannot create a folder beside '%s': %s", out_dir, strerror(errno));
		free(tmp);
		tmp = NULL;
		goto out;
	}
	chmod(tmp, 0755);
	if (write_mem_file(tmp, LORA_PKG_MANIFEST, v.pkg.manifest, v.pkg.manifest_len, err) < 0)
		goto out;
	if (v.pkg.sig && write_mem_file(tmp, LORA_PKG_SIG, v.pkg.sig, v.pkg.sig_len, err) < 0)
		goto out;
	for (size_t i = 0; i < v.pkg.n_entries; i++)
		if (copy_file_to(v.pkg.entries[i].path, v.pkg.entries[i].size, tmp, v.pkg.entries[i].name, err) < 0)
			goto out;
	if (lora_fsync_dir(tmp, err) < 0)
		goto out;
	if (lora_is_dir(out_dir))
		rmdir(out_dir);  /* empty: checked above */
	if (rename(tmp, out_dir) < 0) {
		lora_errf(err, "cannot rename '%s' to '%s': %s", tmp, out_dir, strerror(errno));
		goto out;
	}
	free(tmp);
	tmp = NULL;
	rc = lora_fsync_dir(parent, err);
out:
	if (tmp) {
		lora_rm_rf(tmp, NULL);
		free(tmp);
	}
	free(parent);
	view_free(&v);
	return rc;
}

/* ------------------------------------------------------- list, describe */

static int cmp_items(const void *a, const void *b)
{
	return strcmp(((const struct lora_store_item *)a)->ref, ((const struct lora_store_item *)b)->ref);
}

/* Read a blob without re-hashing (list is read-only and fast). */
static char *blob_slurp(const char *store, const char *digest, size_t max, size_t *len)
{
	char *p = blob_path(store, digest), *out = NULL;

	if (p && lora_read_file(p, max, &out, len, NULL) < 0)
		out = NULL;
	free(p);
	return out;
}

int lora_store_list(const char *store_dir, struct lora_store_item **items, size_t *n,
		    struct lora_err *err)
{
	cJSON *idx, *e;
	struct lora_store_item *v;
	size_t cap, k = 0;

	*items = NULL;
	*n = 0;
	if (index_load(store_dir, &idx, err) < 0)
		return -1;
	cap = (size_t)cJSON_GetArraySize(index_manifests(idx));
	v = calloc(cap ? cap : 1, sizeof(*v));
	if (!v) {
		cJSON_Delete(idx);
		return lora_errf(err, "out of memory");
	}
	cJSON_ArrayForEach(e, index_manifests(idx)) {
		const char *ref = entry_ref(e), *dg = entry_digest(e);
		struct lora_store_item *it = &v[k];
		struct oci_man om;
		char *oci, *man;
		size_t ol, ml;

		if (!ref || !dg || strlen(ref) >= LORA_REF_MAX)
			continue;
		snprintf(it->ref, sizeof(it->ref), "%s", ref);
		snprintf(it->digest, sizeof(it->digest), "%s", dg);
		oci = blob_slurp(store_dir, dg, OCI_JSON_MAX, &ol);
		if (oci && oci_parse(oci, ol, &om, NULL) == 0) {
			it->size = om.config.size;
			for (size_t i = 0; i < om.n_layers; i++) {
				it->size += om.layers[i].size;
				if (!strcmp(om.layers[i].title, LORA_PKG_SIG))
					it->has_signature = 1;
			}
			man = blob_slurp(store_dir, om.config.digest, LORA_MANIFEST_MAX, &ml);
			if (man)
				it->manifest = cJSON_ParseWithLength(man, ml);
			free(man);
		}
		free(oci);
		k++;
	}
	cJSON_Delete(idx);
	qsort(v, k, sizeof(*v), cmp_items);
	*items = v;
	*n = k;
	return 0;
}

void lora_store_items_free(struct lora_store_item *items, size_t n)
{
	for (size_t i = 0; i < n; i++)
		cJSON_Delete(items[i].manifest);
	free(items);
}

int lora_store_describe(const char *store_dir, const char *spec, cJSON **out_json,
			struct lora_err *err)
{
	struct lora_verify_report rep;
	struct view v;
	struct lora_manifest m;
	struct lora_err e2 = { 0 };
	cJSON *o, *files, *signer;
	int c;

	*out_json = NULL;
	memset(&v, 0, sizeof(v));
	memset(&m, 0, sizeof(m));
	if (verify_spec(store_dir, spec, &rep, &v, &m, &e2) < 0) {
		if (err)
			*err = e2;
		return -1;
	}
	o = cJSON_CreateObject();
	if (!o) {
		view_free(&v);
		lora_manifest_free(&m);
		return lora_errf(err, "out of memory");
	}
	cJSON_AddStringToObject(o, "ref", rep.ref[0] ? rep.ref : spec);
	if (rep.digest[0])
		cJSON_AddStringToObject(o, "digest", rep.digest);
	else
		cJSON_AddNullToObject(o, "digest");
	if (m.root)
		cJSON_AddItemToObject(o, "manifest", cJSON_Duplicate(m.root, 1));
	else if (v.pkg.manifest) {
		cJSON *raw = cJSON_ParseWithLength(v.pkg.manifest, v.pkg.manifest_len);
		cJSON_AddItemToObject(o, "manifest", raw ? raw : cJSON_CreateNull());
	} else
		cJSON_AddNullToObject(o, "manifest");
	if (m.signer_identity || rep.key_fingerprint[0]) {
		signer = cJSON_AddObjectToObject(o, "signer");
		cJSON_AddStringToObject(signer, "identity", m.signer_identity ? m.signer_identity : "");
		cJSON_AddStringToObject(signer, "key_fingerprint",
					rep.key_fingerprint[0] ? rep.key_fingerprint : (m.signer_fp ? m.signer_fp : ""));
		cJSON_AddBoolToObject(signer, "trusted", rep.state[LORA_CHK_SIGNER] == LORA_CHECK_OK);
	} else {
		cJSON_AddNullToObject(o, "signer");
	}
	cJSON_AddBoolToObject(o, "verified", rep.valid);
	if (rep.valid)
		cJSON_AddNullToObject(o, "verify_error");
	else
		cJSON_AddStringToObject(o, "verify_error", e2.msg);
	{
		cJSON *checks = cJSON_AddObjectToObject(o, "checks");
		for (c = 0; checks && c < LORA_N_CHECKS; c++) {
			static const char *const st[] = { "skipped", "ok", "failed" };
			cJSON_AddStringToObject(checks, check_names[c], st[rep.state[c]]);
		}
	}
	files = cJSON_AddArrayToObject(o, "files");
	{
		cJSON *f = cJSON_CreateObject();
		char hex[65];
		lora_sha256_hex(v.pkg.manifest ? v.pkg.manifest : "", v.pkg.manifest_len, hex);
		if (v.pkg.manifest && f) {
			cJSON_AddStringToObject(f, "name", LORA_PKG_MANIFEST);
			cJSON_AddNumberToObject(f, "size", (double)v.pkg.manifest_len);
			cJSON_AddStringToObject(f, "sha256", hex);
			cJSON_AddItemToArray(files, f);
		} else {
			cJSON_Delete(f);
		}
		if (v.pkg.sig && (f = cJSON_CreateObject())) {
			lora_sha256_hex(v.pkg.sig, v.pkg.sig_len, hex);
			cJSON_AddStringToObject(f, "name", LORA_PKG_SIG);
			cJSON_AddNumberToObject(f, "size", (double)v.pkg.sig_len);
			cJSON_AddStringToObject(f, "sha256", hex);
			cJSON_AddItemToArray(files, f);
		}
	}
	for (size_t i = 0; i < v.pkg.n_entries; i++) {
		cJSON *f = cJSON_CreateObject();
		if (!f)
			break;
		cJSON_AddStringToObject(f, "name", v.pkg.entries[i].name);
		cJSON_AddNumberToObject(f, "size", (double)v.pkg.entries[i].size);
		cJSON_AddStringToObject(f, "sha256", v.pkg.entries[i].sha256);
		cJSON_AddItemToArray(files, f);
	}
	view_free(&v);
	lora_manifest_free(&m);
	*out_json = o;
	return 0;
}

/* ------------------------------------------------------- rm, tag, gc */

static int cmp_hex(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Add a digest's hex to the referenced set. */
static int set_add(char ***set, size_t *n, size_t *cap, const char *digest)
{
	if (*n == *cap) {
		size_t nc = *cap ? *cap * 2 : 64;
		char **s = realloc(*set, nc * sizeof(**set));
		if (!s)
			return -1;
		*set = s;
		*cap = nc;
	}
	(*set)[*n] = strdup(digest + 7);
	return (*set)[(*n)++] ? 0 : -1;
}

/*
 * Remove every blob no named adapter refers to, and leftovers in tmp/.
 * Runs only when nothing writes (.lock-gc exclusive); blocking=0 gives up
 * at once when an import holds it.  Any unreadable manifest stops it:
 * when unsure, keep.
 */
static void store_gc(const char *store, int blocking)
{
	int gfd, ifd = -1;
	cJSON *idx = NULL, *e;
	char **set = NULL, *bd = NULL, *td = NULL;
	size_t n = 0, cap = 0;
	DIR *d = NULL;
	struct dirent *de;

	gfd = lock_take(store, ".lock-gc", LOCK_EX | (blocking ? 0 : LOCK_NB), NULL);
	if (gfd < 0)
		return;
	ifd = lock_take(store, ".lock-index", LOCK_EX, NULL);
	if (ifd < 0 || index_load(store, &idx, NULL) < 0)
		goto out;
	cJSON_ArrayForEach(e, index_manifests(idx)) {
		const char *dg = entry_digest(e);
		struct oci_man om;
		char *oci;
		size_t ol;

		if (!dg)
			goto out;
		if (set_add(&set, &n, &cap, dg) < 0)
			goto out;
		oci = blob_slurp(store, dg, OCI_JSON_MAX, &ol);
		if (!oci)
			continue;  /* already missing: nothing of it to keep */
		if (oci_parse(oci, ol, &om, NULL) < 0) {
			free(oci);
			goto out;
		}
		free(oci);
		if (set_add(&set, &n, &cap, om.config.digest) < 0)
			goto out;
		for (size_t i = 0; i < om.n_layers; i++)
			if (set_add(&set, &n, &cap, om.layers[i].digest) < 0)
				goto out;
	}
	if (n)
		qsort(set, n, sizeof(*set), cmp_hex);
	bd = spath(store, "blobs/sha256");
	if (!bd || !(d = opendir(bd)))
		goto out;
	while ((de = readdir(d))) {
		const char *name = de->d_name;
		char *p;
		if (!strcmp(name, ".") || !strcmp(name, ".."))
			continue;
		if (n && strlen(name) == 64 && is_hex(name, 64) && bsearch(&name, set, n, sizeof(*set), cmp_hex))
			continue;
		p = lora_path_join(bd, name);
		if (p)
			unlink(p);
		free(p);
	}
	closedir(d);
	d = NULL;
	/* index.json written aside by a process killed before its rename (we hold the index lock) */
	if ((d = opendir(store))) {
		while ((de = readdir(d))) {
			char *p;
			if (strncmp(de->d_name, ".index.json.tmp.", 16))
				continue;
			p = lora_path_join(store, de->d_name);
			if (p)
				unlink(p);
			free(p);
		}
		closedir(d);
		d = NULL;
	}
	td = spath(store, "tmp");
	if (td && (d = opendir(td))) {
		while ((de = readdir(d))) {
			char *p;
			if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
				continue;
			p = lora_path_join(td, de->d_name);
			if (p)
				lora_rm_rf(p, NULL);
			free(p);
		}
	}
out:
	if (d)
		closedir(d);
	for (size_t i = 0; i < n; i++)
		free(set[i]);
	free(set);
	free(bd);
	free(td);
	cJSON_Delete(idx);
	lock_drop(ifd);
	lock_drop(gfd);
}

int lora_store_rm(const char *store_dir, const char *spec, char **removed, struct lora_err *err)
{
	cJSON *idx = NULL, *ms, *e;
	char digest[72], ref[LORA_REF_MAX];
	struct lora_ref r;
	struct lora_buf names = LORA_BUF_INIT;
	int fd, count = 0, rc = -1;

	if (removed)
		*removed = NULL;
	if (lora_ref_parse(spec, &r, err) < 0)
		return -1;
	fd = lock_take(store_dir, ".lock-index", LOCK_EX, err);
	if (fd < 0)
		return -1;
	if (index_load(store_dir, &idx, err) < 0)
		goto out;
	if (!resolve_in(store_dir, idx, spec, digest, ref, err))
		goto out;
	ms = index_manifests(idx);
	for (e = ms->child; e;) {
		cJSON *next = e->next;
		const char *n = entry_ref(e), *d = entry_digest(e);
		if (n && d && (r.is_digest ? !strcmp(d, digest) : !strcmp(n, ref))) {
			lora_buf_printf(&names, "%s%s", names.len ? "\n" : "", n);
			cJSON_Delete(cJSON_DetachItemViaPointer(ms, e));
			count++;
		}
		e = next;
	}
	if (index_save(store_dir, idx, err) < 0)
		goto out;
	rc = count;
out:
	lock_drop(fd);
	cJSON_Delete(idx);
	if (rc >= 0) {
		store_gc(store_dir, 0);
		if (removed)
			*removed = names.data ? lora_buf_take(&names) : strdup("");
	}
	lora_buf_free(&names);
	return rc;
}

int lora_store_tag(const char *store_dir, const char *spec, const char *new_ref, struct lora_err *err)
{
	cJSON *idx = NULL, *ms, *e, *ne;
	const cJSON *src;
	char digest[72], want[LORA_REF_MAX];
	struct lora_ref r;
	int fd, rc = -1, replaced = 0;

	if (lora_ref_parse(new_ref, &r, err) < 0)
		return -1;
	if (r.is_digest)
		return lora_errc(err, LORA_EUSAGE, "a new name is NAME[:TAG], not a digest");
	ref_str(&r, want);
	if (store_init(store_dir, err) < 0)
		return -1;
	fd = lock_take(store_dir, ".lock-index", LOCK_EX, err);
	if (fd < 0)
		return -1;
	if (index_load(store_dir, &idx, err) < 0)
		goto out;
	src = resolve_in(store_dir, idx, spec, digest, NULL, err);
	if (!src)
		goto out;
	ne = cJSON_Duplicate(src, 1);
	if (!ne) {
		lora_errf(err, "out of memory");
		goto out;
	}
	{
		cJSON *an = cJSON_GetObjectItemCaseSensitive(ne, "annotations");
		if (!cJSON_IsObject(an)) {
			cJSON_DeleteItemFromObjectCaseSensitive(ne, "annotations");
			an = cJSON_AddObjectToObject(ne, "annotations");
		}
		cJSON_DeleteItemFromObjectCaseSensitive(an, ANN_REF);
		cJSON_AddStringToObject(an, ANN_REF, want);
	}
	ms = index_manifests(idx);
	for (e = ms->child; e;) {
		cJSON *next = e->next;
		const char *n = entry_ref(e);
		if (n && !strcmp(n, want)) {
			if (!entry_digest(e) || strcmp(entry_digest(e), digest))
				replaced = 1;
			cJSON_Delete(cJSON_DetachItemViaPointer(ms, e));
		}
		e = next;
	}
	cJSON_AddItemToArray(ms, ne);
	rc = index_save(store_dir, idx, err);
out:
	lock_drop(fd);
	cJSON_Delete(idx);
	if (rc == 0 && replaced)
		store_gc(store_dir, 0);
	return rc;
}

/* ---------------------------------------------------------- keys, trust */

char *lora_store_allowed_signers_path(const char *store_dir)
{
	return spath(store_dir, "allowed_signers");
}

static int id_ok(const char *id)
{
	size_t n = strlen(id);

	if (n < 1 || n > 200 || id[0] == '#')
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)id[i];
		if (c <= 0x20 || c == 0x7f || c == '"' || c == ',' || c == '*' || c == '?' || c == '!' || c == '\'')
			return 0;
	}
	return 1;
}

/* Split text into lines (without newlines); *lines malloc'd, pointing into text (modified). */
static size_t split_lines(char *text, char ***lines)
{
	size_t n = 0, cap = 16;
	char **v = malloc(cap * sizeof(*v)), *p = text;

	*lines = NULL;
	if (!v)
		return 0;
	while (*p) {
		char *nl = strchr(p, '\n');
		if (n == cap) {
			char **nv = realloc(v, (cap *= 2) * sizeof(*v));
			if (!nv) {
				free(v);
				return 0;
			}
			v = nv;
		}
		v[n++] = p;
		if (!nl)
			break;
		*nl = 0;
		p = nl + 1;
	}
	*lines = v;
	return n;
}

int lora_store_trust_add(const char *store_dir, const char *id, const char *pubkey_text,
			 struct lora_err *err)
{
	unsigned char pk[32];
	char *line = NULL, *asp = NULL, *text = NULL;
	struct lora_signers s = { 0 };
	struct lora_buf out = LORA_BUF_INIT;
	size_t len = 0;
	int fd = -1, rc = -1;

	if (!id_ok(id))
		return lora_errc(err, LORA_EUSAGE, "bad signer id '%s': no spaces, quotes, commas or wildcards", id);
	if (lora_sshkey_parse_pub_line(pubkey_text, pk, NULL, err) < 0)
		return -1;
	if (store_init(store_dir, err) < 0)
		return -1;
	asp = lora_store_allowed_signers_path(store_dir);
	line = lora_sshkey_pub_line(pk, NULL);
	if (!asp || !line) {
		lora_errf(err, "out of memory");
		goto out;
	}
	fd = lock_take(store_dir, ".lock-index", LOCK_EX, err);
	if (fd < 0)
		goto out;
	if (access(asp, F_OK) == 0 && lora_read_file(asp, 16u << 20, &text, &len, err) < 0)
		goto out;
	if (text && lora_signers_parse(text, len, &s, err) < 0)
		goto out;
	for (size_t i = 0; i < s.n; i++)
		if (!s.v[i].error && s.v[i].ed25519 && !memcmp(s.v[i].pk, pk, 32) && !strcmp(s.v[i].principals, id)) {
			rc = 0;  /* already there */
			goto out;
		}
	if (text)
		lora_buf_add(&out, text, len);
	if (out.len && out.data[out.len - 1] != '\n')
		lora_buf_puts(&out, "\n");
	lora_buf_printf(&out, "%s namespaces=\"%s\" %s\n", id, LORA_SIG_NAMESPACE, line);
	if (out.oom) {
		lora_errf(err, "out of memory");
		goto out;
	}
	rc = lora_write_file_atomic(asp, out.data, out.len, 0644, err);
out:
	lock_drop(fd);
	lora_signers_free(&s);
	lora_buf_free(&out);
	free(text);
	free(line);
	free(asp);
	return rc;
}

int lora_store_trust_rm(const char *store_dir, const char *id, struct lora_err *err)
{
	char *asp = lora_store_allowed_signers_path(store_dir), *text = NULL, **lines = NULL;
	struct lora_buf out = LORA_BUF_INIT;
	size_t len, nl;
	int fd = -1, rc = -1, removed = 0;

	if (!asp)
		return lora_errf(err, "out of memory");
	if (access(asp, F_OK) < 0) {
		rc = lora_errf(err, "no signer '%s': '%s' does not exist", id, asp);
		free(asp);
		return rc;
	}
	fd = lock_take(store_dir, ".lock-index", LOCK_EX, err);
	if (fd < 0)
		goto out;
	if (lora_read_file(asp, 16u << 20, &text, &len, err) < 0)
		goto out;
	nl = split_lines(text, &lines);
	for (size_t i = 0; i < nl; i++) {
		struct lora_signer s;
		int keep = 1;

		if (lora_signer_parse_line(lines[i], i + 1, &s) == 1) {
			if (!s.error) {
				/* the principals field: drop id from its comma list */
				const char *p = lines[i];
				while (*p == ' ' || *p == '\t')
					p++;
				if (*p != '"') {
					size_t fl = strcspn(p, " \t");
					struct lora_buf np = LORA_BUF_INIT;
					char *f = strndup(p, fl), *tok, *save = NULL;
					int hit = 0;
					for (tok = f ? strtok_r(f, ",", &save) : NULL; tok; tok = strtok_r(NULL, ",", &save)) {
						if (!strcmp(tok, id)) {
							hit = 1;
							continue;
						}
						lora_buf_printf(&np, "%s%s", np.len ? "," : "", tok);
					}
					if (hit) {
						removed++;
						keep = 0;
						if (np.len)
							lora_buf_printf(&out, "%s%s\n", np.data, p + fl);
					}
					free(f);
					lora_buf_free(&np);
				} else if (!strcmp(s.principals, id)) {
					removed++;
					keep = 0;
				}
			}
			lora_signer_free(&s);
		}
		if (keep)
			lora_buf_printf(&out, "%s\n", lines[i]);
	}
	if (!removed) {
		lora_errf(err, "no signer '%s' in '%s'", id, asp);
		goto out;
	}
	if (out.oom) {
		lora_errf(err, "out of memory");
		goto out;
	}
	if (lora_write_file_atomic(asp, out.data ? out.data : "", out.len, 0644, err) < 0)
		goto out;
	rc = removed;
out:
	lock_drop(fd);
	free(lines);
	free(text);
	free(asp);
	lora_buf_free(&out);
	return rc;
}

int lora_store_keygen(const char *store_dir, const char *id, int force, char **publine_out,
		      struct lora_err *err)
{
	struct lora_sshkey key;
	char ident[256], *kd = NULL, *kp = NULL, *pp = NULL, *line = NULL;
	int rc = -1;

	if (publine_out)
		*publine_out = NULL;
	if (id && !id_ok(id))
		return lora_errc(err, LORA_EUSAGE, "bad signer id '%s': no spaces, quotes, commas or wildcards", id);
	if (id)
		snprintf(ident, sizeof(ident), "%s", id);
	else
		lora_store_default_identity(NULL, ident);
	if (store_init(store_dir, err) < 0)
		return -1;
	kd = spath(store_dir, "keys");
	kp = default_key_path(store_dir);
	pp = spath(store_dir, "keys/id_ed25519.pub");
	if (!kd || !kp || !pp) {
		lora_errf(err, "out of memory");
		goto out;
	}
	if (lora_mkdir_p(kd, 0700, err) < 0)
		goto out;
	if (!force && access(kp, F_OK) == 0) {
		lora_errf(err, "a signing key already exists: '%s' (use --force to replace it)", kp);
		goto out;
	}
	if (lora_sshkey_generate(&key, ident, err) < 0)
		goto out;
	line = lora_sshkey_pub_line(key.pk, ident);
	if (!line) {
		lora_errf(err, "out of memory");
	} else if (lora_sshkey_write_private(kp, &key, force, err) == 0) {
		struct lora_buf b = LORA_BUF_INIT;
		lora_buf_printf(&b, "%s\n", line);
		if (!b.oom && lora_write_file_atomic(pp, b.data, b.len, 0644, err) == 0 &&
		    lora_store_trust_add(store_dir, ident, line, err) == 0)
			rc = 0;
		lora_buf_free(&b);
	}
	lora_sshkey_wipe(&key);
	if (rc == 0 && publine_out) {
		*publine_out = line;
		line = NULL;
	}
out:
	free(line);
	free(kd);
	free(kp);
	free(pp);
	return rc;
}

/* --------------------------------------------------------- adapter_open */

static char *xstrdup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

void lora_adapter_close(struct lora_adapter_src *a)
{
	if (!a)
		return;
	lora_peft_close(a->peft);
	free(a->base_name);
	free(a->base_fingerprint);
	if (a->tmpdir) {
		lora_rm_rf(a->tmpdir, NULL);
		free(a->tmpdir);
	}
	memset(a, 0, sizeof(*a));
}

static int find_entry(const struct lora_pkg *p, const char *name)
{
	for (size_t i = 0; i < p->n_entries; i++)
		if (!strcmp(p->entries[i].name, name))
			return (int)i;
	return -1;
}

/* Open the PEFT files named in a view and take the base model facts from the manifest. */
static int open_from_view(struct view *v, const struct lora_manifest *m, struct lora_adapter_src *out,
			  struct lora_err *err)
{
	int ci = find_entry(&v->pkg, LORA_PKG_CONFIG), wi = find_entry(&v->pkg, LORA_PKG_WEIGHTS);

	if (ci < 0 || wi < 0)
		return lora_errc(err, LORA_EVERIFY, "'%s': no adapter files", out->ref);
	if (lora_peft_open_files(v->pkg.entries[ci].path, v->pkg.entries[wi].path, &out->peft, err) < 0)
		return -1;
	out->base_name = xstrdup_or_null(m && m->base_name ? m->base_name : out->peft->cfg.base_model);
	out->base_fingerprint = xstrdup_or_null(m ? m->base_fingerprint : NULL);
	return 0;
}

int lora_adapter_open(const char *store_dir, const char *tmp_dir, const char *spec,
		      struct lora_adapter_src *out, struct lora_err *err)
{
	struct view v = { 0 };
	struct lora_manifest m = { 0 };
	struct lora_verify_report rep;
	int rc = -1;

	memset(out, 0, sizeof(*out));
	if (lora_is_dir(spec)) {
		char *mp = lora_path_join(spec, LORA_PKG_MANIFEST), *text = NULL;
		size_t len;
		snprintf(out->ref, sizeof(out->ref), "%s", spec);
		if (lora_peft_open(spec, &out->peft, err) < 0) {
			free(mp);
			return -1;
		}
		/* an exported package folder still knows its base fingerprint */
		if (mp && lora_is_file(mp) && lora_read_file(mp, LORA_MANIFEST_MAX, &text, &len, NULL) == 0 &&
		    lora_manifest_parse(text, len, &m, NULL) == 0) {
			out->base_fingerprint = xstrdup_or_null(m.base_fingerprint);
			out->base_name = xstrdup_or_null(m.base_name);
		}
		if (!out->base_name)
			out->base_name = xstrdup_or_null(out->peft->cfg.base_model);
		lora_manifest_free(&m);
		free(text);
		free(mp);
		return 0;
	}
	if (spec_is_file(spec)) {
		const char *td = tmp_dir && *tmp_dir ? tmp_dir : "/tmp";
		size_t n = strlen(td) + 32;
		snprintf(out->ref, sizeof(out->ref), "%s", spec);
		out->tmpdir = malloc(n);
		if (!out->tmpdir)
			return lora_errf(err, "out of memory");
		snprintf(out->tmpdir, n, "%s/lora-open-XXXXXX", td);
		if (!mkdtemp(out->tmpdir)) {
			lora_errf(err, "cannot create a temporary folder: %s", strerror(errno));
			free(out->tmpdir);
			out->tmpdir = NULL;
			return -1;
		}
		memset(&rep, 0, sizeof(rep));
		if (view_from_file(spec, out->tmpdir, &v, &rep, err) < 0 ||
		    check_view(store_dir, &v, spec, 0, &rep, &m, err) < 0 || open_from_view(&v, &m, out, err) < 0)
			goto fail;
		rc = 0;
		goto done;
	}
	{
		char ref[LORA_REF_MAX];
		if (lora_store_resolve(store_dir, spec, out->digest, ref, err) < 0) {
			if (!strchr(spec, '/'))
				return -1;
			return lora_errf(err, "no adapter folder, .lora file or stored adapter '%s'", spec);
		}
		snprintf(out->ref, sizeof(out->ref), "%.255s", ref);
	}
	if (view_from_store(store_dir, out->digest, &v, 0, NULL, err) < 0) {
		lora_err_prefix(err, "%s", out->ref);
		goto fail;
	}
	if (lora_manifest_parse(v.pkg.manifest, v.pkg.manifest_len, &m, err) < 0 ||
	    open_from_view(&v, &m, out, err) < 0) {
		lora_err_prefix(err, "%s", out->ref);
		goto fail;
	}
	rc = 0;
	goto done;
fail:
	lora_adapter_close(out);
done:
	view_free(&v);
	lora_manifest_free(&m);
	return rc;
}

/* ------------------------------------------------- registry support */

char *lora_store_blob_path(const char *store_dir, const char *digest)
{
	return digest_ok(digest) ? blob_path(store_dir, digest) : NULL;
}

int lora_store_oci_read(const char *store_dir, const char *spec, char **json, size_t *len, char digest[72],
			char ref_out[LORA_REF_MAX], struct lora_err *err)
{
	struct oci_man om;

	*json = NULL;
	if (lora_store_resolve(store_dir, spec, digest, ref_out, err) < 0)
		return -1;
	if (blob_read(store_dir, digest, OCI_JSON_MAX, json, len, err) < 0)
		return -1;
	if (oci_parse(*json, *len, &om, err) < 0 || !om.is_lora) {
		free(*json);
		*json = NULL;
		return err && err->msg[0] ? -1 : lora_errc(err, LORA_EVERIFY, "%s is not a lora adapter", spec);
	}
	return 0;
}

int lora_store_stage_begin(const char *store_dir, struct lora_store_stage *s, struct lora_err *err)
{
	s->dir = NULL;
	s->gfd = -1;
	if (store_init(store_dir, err) < 0)
		return -1;
	store_gc(store_dir, 0);  /* leftovers of a killed pull or import, when nobody writes */
	s->gfd = lock_take(store_dir, ".lock-gc", LOCK_SH, err);
	if (s->gfd < 0)
		return -1;
	s->dir = stage_dir(store_dir, err);
	if (!s->dir) {
		lock_drop(s->gfd);
		s->gfd = -1;
		return -1;
	}
	return 0;
}

void lora_store_stage_end(struct lora_store_stage *s)
{
	if (s->dir) {
		lora_rm_rf(s->dir, NULL);
		free(s->dir);
		s->dir = NULL;
	}
	lock_drop(s->gfd);
	s->gfd = -1;
}

/* The staged file of a blob, or the store's own copy; NULL when neither exists. */
static char *staged_blob(const char *store, const struct lora_store_stage *s, const char *digest)
{
	char *p = lora_path_join(s->dir, digest + 7);

	if (p && lora_is_file(p))
		return p;
	free(p);
	p = blob_path(store, digest);
	if (p && lora_is_file(p))
		return p;
	free(p);
	return NULL;
}

/* Read a small staged blob, re-hashed against its descriptor. */
static int staged_read(const char *store, const struct lora_store_stage *s, const struct oci_desc *d, size_t max,
		       char **out, size_t *len, struct lora_err *err)
{
	char *p = staged_blob(store, s, d->digest), hex[65];
	int rc;

	*out = NULL;
	if (!p)
		return lora_errc(err, LORA_EVERIFY, "blob %.19s... was not downloaded", d->digest);
	rc = lora_read_file(p, max, out, len, err);
	free(p);
	if (rc < 0)
		return -1;
	lora_sha256_hex(*out, *len, hex);
	if (strcmp(hex, d->digest + 7) || *len != d->size) {
		free(*out);
		*out = NULL;
		return lora_errc(err, LORA_EVERIFY, "blob %.19s... does not match its digest", d->digest);
	}
	return 0;
}

/* A view of the staged artifact: the manifest and signature read, the files by path. */
static int view_from_stage(const char *store, const struct lora_store_stage *s, const char *oci, size_t len,
			   struct view *v, struct lora_err *err)
{
	int have_sig = 0;

	memset(v, 0, sizeof(*v));
	v->stored = 1;
	if (oci_parse(oci, len, &v->oci, err) < 0)
		return -1;
	if (!v->oci.is_lora)
		return lora_errc(err, LORA_EVERIFY, "the OCI manifest is not a lora adapter (artifactType)");
	if (v->oci.config.size > LORA_MANIFEST_MAX)
		return lora_errc(err, LORA_EVERIFY, "the manifest blob is larger than 1 MiB");
	if (staged_read(store, s, &v->oci.config, LORA_MANIFEST_MAX, &v->pkg.manifest, &v->pkg.manifest_len,
			err) < 0)
		return -1;
	v->pkg.entries = calloc(MAX_LAYERS, sizeof(*v->pkg.entries));
	if (!v->pkg.entries)
		return lora_errf(err, "out of memory");
	for (size_t i = 0; i < v->oci.n_layers; i++) {
		const struct oci_desc *d = &v->oci.layers[i];
		struct lora_pkg_entry *pe;
		struct stat st;

		if (!lora_pkg_name_ok(d->title) || !strcmp(d->title, LORA_PKG_MANIFEST))
			return lora_errc(err, LORA_EVERIFY, "layer %zu has no valid title annotation", i);
		if (!strcmp(d->title, LORA_PKG_SIG)) {
			if (have_sig++ || d->size > LORA_PKG_MAX_SIG)
				return lora_errc(err, LORA_EVERIFY, "bad signature layer");
			if (staged_read(store, s, d, LORA_PKG_MAX_SIG, &v->pkg.sig, &v->pkg.sig_len, err) < 0)
				return -1;
			continue;
		}
		for (size_t k = 0; k < v->pkg.n_entries; k++)
			if (!strcmp(v->pkg.entries[k].name, d->title))
				return lora_errc(err, LORA_EVERIFY, "two layers are titled '%s'", d->title);
		if (d->size > LORA_PKG_MAX_FILE)
			return lora_errc(err, LORA_EVERIFY, "layer '%s' is larger than 32 GiB", d->title);
		pe = &v->pkg.entries[v->pkg.n_entries++];
		snprintf(pe->name, sizeof(pe->name), "%s", d->title);
		pe->path = staged_blob(store, s, d->digest);
		if (!pe->path)
			return lora_errc(err, LORA_EVERIFY, "blob of '%s' (%.19s...) was not downloaded", d->title,
					 d->digest);
		/* the caller hashed each download; a size change since then is a failure */
		if (stat(pe->path, &st) < 0 || (uint64_t)st.st_size != d->size)
			return lora_errc(err, LORA_EVERIFY, "blob of '%s' has the wrong size", d->title);
		pe->size = d->size;
		memcpy(pe->sha256, d->digest + 7, 65);
	}
	return 0;
}

int lora_store_stage_commit(const char *store_dir, struct lora_store_stage *s, const char *oci, size_t len,
			    const char *label, const char *ref, int allow_untrusted, char ref_out[LORA_REF_MAX],
			    char digest_out[72], struct lora_err *err)
{
	struct lora_verify_report rep;
	struct lora_manifest m = { 0 };
	struct lora_ref r;
	struct view v = { 0 };
	char want[LORA_REF_MAX];
	int rc = -1, replaced = 0;

	memset(&rep, 0, sizeof(rep));
	if (ref && (lora_ref_parse(ref, &r, err) < 0 || r.is_digest))
		return r.is_digest ? lora_errc(err, LORA_EUSAGE, "--name wants NAME[:TAG], not a digest") : -1;
	if (view_from_stage(store_dir, s, oci, len, &v, err) < 0) {
		lora_err_prefix(err, "%s: package check failed", label);
		goto out;
	}
	if (check_view(store_dir, &v, label, allow_untrusted, &rep, &m, err) < 0)
		goto out;
	if (check_adapter_files(&v.pkg, label, err) < 0)
		goto out;
	if (ref)
		ref_str(&r, want);
	else
		snprintf(want, sizeof(want), "%s:%s", m.name, m.tag);
	if (commit_adapter_oci(store_dir, want, &v.pkg, m.created, oci, len, digest_out, &replaced, err) < 0)
		goto out;
	if (ref_out)
		snprintf(ref_out, LORA_REF_MAX, "%s", want);
	rc = 0;
out:
	lora_manifest_free(&m);
	view_free(&v);
	if (rc == 0 && replaced) {
		/* gc needs .lock-gc exclusive: let go of ours first, the stage is done */
		lock_drop(s->gfd);
		s->gfd = -1;
		store_gc(store_dir, 0);
	}
	return rc;
}
