/* manifest.c - parse, validate and build manifest.json (see manifest.h). */
#define _GNU_SOURCE
#include "libadapter/store/manifest.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "libadapter/base/buf.h"
#include "libadapter/format/safetensors.h"   /* lora_utf8_valid */

#define MAX_SIZE 9007199254740992.0  /* 2^53: larger integers do not survive a double */

static int bad(struct lora_err *err, const char *what)
{
	return lora_errc(err, LORA_EVERIFY, "manifest.json: %s", what);
}

int lora_pkg_name_ok(const char *name)
{
	size_t n = strlen(name);

	if (n < 1 || n > 100 || name[0] == '.')
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return 0;
	}
	return 1;
}

static int word_ok(const char *s, int first_underscore)
{
	size_t n = strlen(s);

	if (n < 1 || n > 128)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
		if (i == 0 ? !(alnum || (first_underscore && c == '_')) : !(alnum || c == '.' || c == '_' || c == '-'))
			return 0;
	}
	return 1;
}

int lora_name_ok(const char *name)
{
	return word_ok(name, 0) && strcmp(name, "sha256");
}

int lora_tag_ok(const char *tag)
{
	return word_ok(tag, 1);
}

/* ------------------------------------------------------------- parsing */

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* No object anywhere may repeat a key: other JSON readers would pick another value. */
static int no_duplicate_keys(const cJSON *j, int depth)
{
	const cJSON *c;
	size_t n = 0, i = 0;
	const char **names;
	int ok = 1;

	if (depth > 64)
		return 0;
	for (c = j->child; c; c = c->next) {
		n++;
		if ((cJSON_IsObject(c) || cJSON_IsArray(c)) && !no_duplicate_keys(c, depth + 1))
			return 0;
	}
	if (!cJSON_IsObject(j) || n < 2)
		return 1;
	names = malloc(n * sizeof(*names));
	if (!names)
		return 0;
	for (c = j->child; c; c = c->next)
		names[i++] = c->string ? c->string : "";
	qsort(names, n, sizeof(*names), cmp_str);
	for (i = 1; i < n; i++)
		if (!strcmp(names[i - 1], names[i]))
			ok = 0;
	free(names);
	return ok;
}

/* Optional string member: absent or null gives NULL; another type is an error (-1). */
static int opt_str(const cJSON *o, const char *key, const char **out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	*out = NULL;
	if (!v || cJSON_IsNull(v))
		return 0;
	if (!cJSON_IsString(v))
		return -1;
	*out = v->valuestring;
	return 0;
}

static int is_hex64(const char *s)
{
	if (strlen(s) != 64)
		return 0;
	for (int i = 0; i < 64; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
	return 1;
}

static int parse_size(const cJSON *v, uint64_t *out)
{
	double d;

	if (!cJSON_IsNumber(v))
		return -1;
	d = v->valuedouble;
	if (!(d >= 0 && d < MAX_SIZE) || floor(d) != d)
		return -1;
	*out = (uint64_t)d;
	return 0;
}

static int parse_files(const cJSON *files, struct lora_manifest *m, struct lora_err *err)
{
	const cJSON *f;
	size_t n = (size_t)cJSON_GetArraySize(files), i = 0;
	char msg[200];

	if (!cJSON_IsArray(files))
		return bad(err, "\"files\" is not an array");
	if (n > LORA_MANIFEST_MAX_FILES)
		return bad(err, "\"files\" lists too many files");
	m->files = calloc(n ? n : 1, sizeof(*m->files));
	if (!m->files)
		return lora_errf(err, "out of memory");
	cJSON_ArrayForEach(f, files) {
		struct lora_manifest_file *mf = &m->files[i];
		const char *name, *sha;

		if (!cJSON_IsObject(f) || opt_str(f, "name", &name) < 0 || !name ||
		    opt_str(f, "sha256", &sha) < 0 || !sha ||
		    parse_size(cJSON_GetObjectItemCaseSensitive(f, "size"), &mf->size) < 0)
			return bad(err, "a \"files\" entry lacks a valid name, size or sha256");
		if (!lora_pkg_name_ok(name) || !strcmp(name, LORA_PKG_MANIFEST) || !strcmp(name, LORA_PKG_SIG)) {
			snprintf(msg, sizeof(msg), "\"files\" names a file not allowed in a package: '%.100s'", name);
			return bad(err, msg);
		}
		if (!is_hex64(sha)) {
			snprintf(msg, sizeof(msg), "the sha256 of '%s' is not 64 lowercase hex digits", name);
			return bad(err, msg);
		}
		for (size_t k = 0; k < i; k++)
			if (!strcmp(m->files[k].name, name)) {
				snprintf(msg, sizeof(msg), "\"files\" lists '%s' twice", name);
				return bad(err, msg);
			}
		mf->name = name;
		memcpy(mf->sha256, sha, 65);
		m->n_files = ++i;
	}
	if (!lora_manifest_find(m, LORA_PKG_CONFIG) || !lora_manifest_find(m, LORA_PKG_WEIGHTS))
		return bad(err, "\"files\" must list adapter_config.json and adapter_model.safetensors");
	return 0;
}

int lora_manifest_parse(const char *json, size_t len, struct lora_manifest *m, struct lora_err *err)
{
	const cJSON *r, *v, *b, *s;
	const char *end = NULL;

	memset(m, 0, sizeof(*m));
	if (len > LORA_MANIFEST_MAX)
		return bad(err, "larger than 1 MiB");
	if (!lora_utf8_valid((const unsigned char *)json, len) || memchr(json, 0, len))
		return bad(err, "not valid UTF-8 text");
	m->root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
	if (!m->root)
		return bad(err, "not valid JSON");
	/* nothing but whitespace after the object */
	for (; end && end < json + len; end++)
		if (*end != ' ' && *end != '\n' && *end != '\r' && *end != '\t')
			goto fail_trailing;
	r = m->root;
	if (!cJSON_IsObject(r))
		return bad(err, "not a JSON object");
	if (!no_duplicate_keys(r, 0))
		return bad(err, "a key appears twice in one object (or nesting is too deep)");
	v = cJSON_GetObjectItemCaseSensitive(r, "lora_package");
	if (!cJSON_IsNumber(v) || v->valuedouble != 1)
		return bad(err, "\"lora_package\" is not 1 (not a lora package manifest, or a newer format)");
	if (opt_str(r, "name", &m->name) < 0 || !m->name || !lora_name_ok(m->name))
		return bad(err, "\"name\" is missing or not a valid adapter name");
	if (opt_str(r, "tag", &m->tag) < 0 || (m->tag && !lora_tag_ok(m->tag)))
		return bad(err, "\"tag\" is not a valid tag");
	if (!m->tag)
		m->tag = "latest";
	if (opt_str(r, "description", &m->description) < 0)
		return bad(err, "\"description\" is not a string");
	if (opt_str(r, "created", &m->created) < 0 || !m->created || strlen(m->created) > 40)
		return bad(err, "\"created\" is missing");
	b = cJSON_GetObjectItemCaseSensitive(r, "base_model");
	if (b && !cJSON_IsNull(b)) {
		if (!cJSON_IsObject(b) || opt_str(b, "name", &m->base_name) < 0 ||
		    opt_str(b, "fingerprint", &m->base_fingerprint) < 0)
			return bad(err, "\"base_model\" is not an object of strings");
		if (m->base_fingerprint &&
		    (strncmp(m->base_fingerprint, "sha256:", 7) || !is_hex64(m->base_fingerprint + 7)))
			return bad(err, "\"base_model.fingerprint\" is not sha256:<64 hex>");
	}
	v = cJSON_GetObjectItemCaseSensitive(r, "lora");
	if (v && !cJSON_IsNull(v)) {
		if (!cJSON_IsObject(v))
			return bad(err, "\"lora\" is not an object");
		m->lora = v;
	}
	v = cJSON_GetObjectItemCaseSensitive(r, "provenance");
	if (v && !cJSON_IsNull(v)) {
		if (!cJSON_IsObject(v))
			return bad(err, "\"provenance\" is not an object");
		m->provenance = v;
	}
	v = cJSON_GetObjectItemCaseSensitive(r, "files");
	if (!v)
		return bad(err, "\"files\" is missing");
	if (parse_files(v, m, err) < 0)
		return -1;
	s = cJSON_GetObjectItemCaseSensitive(r, "signer");
	if (s && !cJSON_IsNull(s)) {
		if (!cJSON_IsObject(s) || opt_str(s, "identity", &m->signer_identity) < 0 ||
		    !m->signer_identity || !*m->signer_identity || strlen(m->signer_identity) > 200 ||
		    opt_str(s, "key_fingerprint", &m->signer_fp) < 0 || !m->signer_fp ||
		    strncmp(m->signer_fp, "SHA256:", 7) || strlen(m->signer_fp) >= 64)
			return bad(err, "\"signer\" needs an identity and a key_fingerprint \"SHA256:...\"");
	}
	return 0;
fail_trailing:
	return bad(err, "text after the JSON object");
}

void lora_manifest_free(struct lora_manifest *m)
{
	cJSON_Delete(m->root);
	free(m->files);
	memset(m, 0, sizeof(*m));
}

const struct lora_manifest_file *lora_manifest_find(const struct lora_manifest *m, const char *name)
{
	for (size_t i = 0; i < m->n_files; i++)
		if (!strcmp(m->files[i].name, name))
			return &m->files[i];
	return NULL;
}

/* ------------------------------------------------------------- building */

void lora_rfc3339(int64_t t, char out[32])
{
	time_t tt = (time_t)t;
	struct tm tm;

	gmtime_r(&tt, &tm);
	strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* JSON with 2-space indentation; arrays of scalars stay on one line. */
static void pretty(struct lora_buf *b, const cJSON *j, int depth)
{
	const cJSON *c;
	int scalars = 1;

	if (!cJSON_IsObject(j) && !cJSON_IsArray(j)) {
		char *t = cJSON_PrintUnformatted(j);
		if (t)
			lora_buf_puts(b, t);
		else
			b->oom = 1;
		cJSON_free(t);
		return;
	}
	if (!j->child) {
		lora_buf_puts(b, cJSON_IsObject(j) ? "{}" : "[]");
		return;
	}
	for (c = j->child; c; c = c->next)
		if (cJSON_IsObject(c) || cJSON_IsArray(c))
			scalars = 0;
	if (cJSON_IsArray(j) && scalars) {
		lora_buf_puts(b, "[");
		for (c = j->child; c; c = c->next) {
			pretty(b, c, depth + 1);
			if (c->next)
				lora_buf_puts(b, ", ");
		}
		lora_buf_puts(b, "]");
		return;
	}
	lora_buf_puts(b, cJSON_IsObject(j) ? "{\n" : "[\n");
	for (c = j->child; c; c = c->next) {
		lora_buf_printf(b, "%*s", 2 * (depth + 1), "");
		if (cJSON_IsObject(j)) {
			lora_buf_json_str(b, c->string ? c->string : "");
			lora_buf_puts(b, ": ");
		}
		pretty(b, c, depth + 1);
		lora_buf_puts(b, c->next ? ",\n" : "\n");
	}
	lora_buf_printf(b, "%*s%s", 2 * depth, "", cJSON_IsObject(j) ? "}" : "]");
}

char *lora_json_pretty(const cJSON *j)
{
	struct lora_buf b = LORA_BUF_INIT;

	pretty(&b, j, 0);
	if (b.oom || !b.data) {
		lora_buf_free(&b);
		return NULL;
	}
	return lora_buf_take(&b);
}

static cJSON *str_or_null(const char *s)
{
	return s ? cJSON_CreateString(s) : cJSON_CreateNull();
}

char *lora_manifest_build(const struct lora_manifest_spec *s, struct lora_err *err)
{
	cJSON *r = cJSON_CreateObject(), *b, *files, *sg;
	char created[32];

	if (!r)
		goto oom;
	if (!s->created)
		lora_rfc3339((int64_t)time(NULL), created);
	cJSON_AddNumberToObject(r, "lora_package", 1);
	cJSON_AddStringToObject(r, "name", s->name);
	cJSON_AddStringToObject(r, "tag", s->tag ? s->tag : "latest");
	cJSON_AddItemToObject(r, "description", str_or_null(s->description));
	cJSON_AddStringToObject(r, "created", s->created ? s->created : created);
	b = cJSON_AddObjectToObject(r, "base_model");
	if (b) {
		cJSON_AddItemToObject(b, "name", str_or_null(s->base_name));
		cJSON_AddItemToObject(b, "fingerprint", str_or_null(s->base_fingerprint));
	}
	cJSON_AddItemToObject(r, "lora", s->lora ? cJSON_Duplicate(s->lora, 1) : cJSON_CreateObject());
	cJSON_AddItemToObject(r, "provenance",
			      s->provenance ? cJSON_Duplicate(s->provenance, 1) : cJSON_CreateObject());
	files = cJSON_AddArrayToObject(r, "files");
	for (size_t i = 0; files && i < s->n_files; i++) {
		cJSON *f = cJSON_CreateObject();
		if (!f)
			goto oom;
		cJSON_AddStringToObject(f, "name", s->files[i].name);
		cJSON_AddNumberToObject(f, "size", (double)s->files[i].size);
		cJSON_AddStringToObject(f, "sha256", s->files[i].sha256);
		cJSON_AddItemToArray(files, f);
	}
	if (s->signer_identity) {
		sg = cJSON_AddObjectToObject(r, "signer");
		if (sg) {
			cJSON_AddStringToObject(sg, "identity", s->signer_identity);
			cJSON_AddStringToObject(sg, "key_fingerprint", s->signer_fp ? s->signer_fp : "");
		}
	} else {
		cJSON_AddNullToObject(r, "signer");
	}
	{
		struct lora_buf b = LORA_BUF_INIT;
		pretty(&b, r, 0);
		lora_buf_puts(&b, "\n");
		cJSON_Delete(r);
		r = NULL;
		if (b.oom) {
			lora_buf_free(&b);
			goto oom;
		}
		return lora_buf_take(&b);
	}
oom:
	cJSON_Delete(r);
	lora_errf(err, "out of memory building manifest.json");
	return NULL;
}
