/*
 * record.c - records: lora-merge.json, the shard metadata, and shard headers.
 * Part of the merge room; the public API is in merge.h, shared internals in merge_int.h.
 */
#define _GNU_SOURCE
#include "libadapter/merge/merge.h"
#include "libadapter/merge/merge_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <pthread.h>

#include <cblas.h>
#include <cjson/cJSON.h>
#include <openssl/evp.h>

#include "libadapter/base/blas.h"
#include "libadapter/base/par.h"
#include "libadapter/base/fsutil.h"
#include "libadapter/store/store.h"
/* ----------------------------------------------------------------- records */

void lora_merge_fmt_double(double v, char out[32])
{
	for (int prec = 15; prec <= 17; prec++) {
		snprintf(out, 32, "%.*g", prec, v);
		if (strtod(out, NULL) == v)
			return;
	}
}

int lora_merge_record_set_adapters(struct lora_merge_record *r, const struct lora_merge_set *set,
				   struct lora_err *err)
{
	r->adapters = calloc(set->n ? set->n : 1, sizeof(*r->adapters));
	if (!r->adapters)
		return lora_errf(err, "out of memory");
	r->n_adapters = set->n;
	for (size_t i = 0; i < set->n; i++) {
		r->adapters[i].ref = strdup(set->a[i].ref);
		r->adapters[i].digest = strdup(set->a[i].digest);
		r->adapters[i].weight = set->a[i].weight;
		if (!r->adapters[i].ref || !r->adapters[i].digest)
			return lora_errf(err, "out of memory");
	}
	return 0;
}

int lora_merge_record_set_tensors(struct lora_merge_record *r, const struct lora_merge_plan *p,
				  struct lora_err *err)
{
	r->modules = calloc(p->n ? p->n : 1, sizeof(char *));
	r->lines = calloc(p->n ? p->n : 1, sizeof(char *));
	if (!r->modules || !r->lines)
		return lora_errf(err, "out of memory");
	r->n_tensors = p->n;
	for (size_t i = 0; i < p->n; i++) {
		if (!p->t[i].line[0])
			return lora_errf(err, "internal error: no fingerprint line for '%s'", p->t[i].name);
		r->modules[i] = strdup(p->t[i].module);
		r->lines[i] = strdup(p->t[i].line);
		if (!r->modules[i] || !r->lines[i])
			return lora_errf(err, "out of memory");
	}
	lora_merge_fingerprint_lines((const char *const *)r->modules, (const char *const *)r->lines,
				     r->n_tensors, r->fingerprint);
	return 0;
}

static void json_lines(struct lora_buf *b, const char *key, size_t n, char *const *mods,
		       char *const *lines)
{
	lora_buf_printf(b, ",\n  \"%s\": {", key);
	for (size_t i = 0; i < n; i++) {
		lora_buf_printf(b, "%s\n    ", i ? "," : "");
		/* Module names come from safetensors keys: valid UTF-8, escaped as JSON. */
		{
			struct lora_buf k = LORA_BUF_INIT;
			lora_buf_printf(&k, "%s.weight", mods[i]);
			lora_buf_json_str(b, k.oom ? "" : k.data);
			if (k.oom)
				b->oom = 1;
			lora_buf_free(&k);
		}
		lora_buf_puts(b, ": ");
		lora_buf_json_str(b, lines[i]);
	}
	lora_buf_printf(b, "%s}", n ? "\n  " : "");
}

int lora_merge_record_json(const struct lora_merge_record *r, int compact, struct lora_buf *b,
			   struct lora_err *err)
{
	const char *nl = compact ? "" : "\n", *i1 = compact ? "" : "  ", *i2 = compact ? "" : "    ";
	const char *sp = compact ? "" : " ";
	char w[32];

	lora_buf_printf(b, "{%s%s\"format\":%s\"lora-merge/1\",%s", nl, i1, sp, nl);
	lora_buf_printf(b, "%s\"base\":%s{%s%s\"path\":%s", i1, sp, nl, i2, sp);
	lora_buf_json_str(b, r->base_path);
	lora_buf_printf(b, ",%s%s\"fingerprint\":%s", nl, i2, sp);
	lora_buf_json_str(b, r->fingerprint);
	lora_buf_printf(b, "%s%s},%s", nl, i1, nl);
	lora_buf_printf(b, "%s\"dtype\":%s\"%s\",%s", i1, sp, lora_merge_dtype_label(r->dtype), nl);
	if (r->drift)
		lora_buf_printf(b, "%s\"drift\":%s%d,%s", i1, sp, r->drift, nl);
	lora_buf_printf(b, "%s\"adapters\":%s[", i1, sp);
	for (size_t i = 0; i < r->n_adapters; i++) {
		lora_buf_printf(b, "%s%s%s{\"ref\":%s", i ? "," : "", nl, i2, sp);
		lora_buf_json_str(b, r->adapters[i].ref);
		lora_buf_printf(b, ",%s\"digest\":%s", sp, sp);
		lora_buf_json_str(b, r->adapters[i].digest);
		lora_merge_fmt_double(r->adapters[i].weight, w);
		lora_buf_printf(b, ",%s\"weight\":%s%s}", sp, sp, w);
	}
	lora_buf_printf(b, "%s%s]", r->n_adapters ? nl : "", r->n_adapters ? i1 : "");
	if (!compact) {
		json_lines(b, "tensors", r->n_tensors, r->modules, r->lines);
		if (r->n_drifted)
			json_lines(b, "drifted", r->n_drifted, r->drifted_modules, r->drifted_lines);
	}
	lora_buf_printf(b, "%s}%s", nl, nl);
	if (b->oom)
		return lora_errf(err, "out of memory");
	return 0;
}

void lora_merge_record_free(struct lora_merge_record *r)
{
	free(r->base_path);
	for (size_t i = 0; i < r->n_adapters; i++) {
		free(r->adapters[i].ref);
		free(r->adapters[i].digest);
	}
	free(r->adapters);
	for (size_t i = 0; i < r->n_tensors; i++) {
		free(r->modules ? r->modules[i] : NULL);
		free(r->lines ? r->lines[i] : NULL);
	}
	free(r->modules);
	free(r->lines);
	for (size_t i = 0; i < r->n_drifted; i++) {
		free(r->drifted_modules ? r->drifted_modules[i] : NULL);
		free(r->drifted_lines ? r->drifted_lines[i] : NULL);
	}
	free(r->drifted_modules);
	free(r->drifted_lines);
	memset(r, 0, sizeof(*r));
}

static int valid_digest(const char *s)
{
	if (strncmp(s, "sha256:", 7) || strlen(s) != 71)
		return 0;
	for (const char *p = s + 7; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return 0;
	return 1;
}

/* "<DTYPE> <d0>x<d1> <64 hex>" */
int lora_merge_line_valid(const char *s)
{
	const char *sp1 = strchr(s, ' '), *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
	char tmp[80];

	if (!sp1 || !sp2 || strlen(sp2 + 1) != 64 || (size_t)(sp2 - sp1) > 60)
		return 0;
	memcpy(tmp, "sha256:", 7);
	memcpy(tmp + 7, sp2 + 1, 65);
	if (!valid_digest(tmp))
		return 0;
	return lora_dtype_parse(s, sp1 - s) != LORA_DT_INVALID;
}

struct mod_line {
	char *mod, *line;
};

static int mod_line_cmp(const void *a, const void *b)
{
	return strcmp(((const struct mod_line *)a)->mod, ((const struct mod_line *)b)->mod);
}

/* {"<module>.weight": "<line>", ...} into sorted module and line arrays. */
static int parse_lines(const cJSON *obj, const char *path, size_t *n_out, char ***mods, char ***lines,
		       struct lora_err *err)
{
	size_t n = (size_t)cJSON_GetArraySize(obj), k = 0;
	struct mod_line *v = calloc(n ? n : 1, sizeof(*v));
	const cJSON *it;
	int rc = -1;

	*mods = calloc(n ? n : 1, sizeof(char *));
	*lines = calloc(n ? n : 1, sizeof(char *));
	if (!v || !*mods || !*lines) {
		free(v);
		return lora_errf(err, "out of memory");
	}
	cJSON_ArrayForEach(it, obj) {
		size_t l = strlen(it->string);
		if (!cJSON_IsString(it) || l <= 7 || strcmp(it->string + l - 7, ".weight") ||
		    !lora_merge_line_valid(it->valuestring)) {
			lora_errf(err, "'%s': tensor entry '%s' is malformed", path, it->string);
			goto out;
		}
		v[k].mod = strndup(it->string, l - 7);
		v[k].line = strdup(it->valuestring);
		k++;
		if (!v[k - 1].mod || !v[k - 1].line) {
			lora_errf(err, "out of memory");
			goto out;
		}
	}
	qsort(v, k, sizeof(*v), mod_line_cmp);
	for (size_t i = 1; i < k; i++)
		if (!strcmp(v[i].mod, v[i - 1].mod)) {
			lora_errf(err, "'%s': tensor '%s.weight' is listed twice", path, v[i].mod);
			goto out;
		}
	rc = 0;
out:
	/* The arrays take every string, so that the record's free releases them. */
	for (size_t i = 0; i < k; i++) {
		(*mods)[i] = v[i].mod;
		(*lines)[i] = v[i].line;
	}
	*n_out = k;
	free(v);
	return rc;
}

static int record_parse(const char *text, size_t len, const char *path, struct lora_merge_record *r,
			struct lora_err *err)
{
	cJSON *root = cJSON_ParseWithLength(text, len), *it;
	const cJSON *base, *v, *ads, *ts;
	size_t n, k = 0;
	int rc = -1;

	memset(r, 0, sizeof(*r));
	if (!root || !cJSON_IsObject(root)) {
		lora_errf(err, "'%s' is not a JSON object", path);
		goto out;
	}
	v = cJSON_GetObjectItemCaseSensitive(root, "format");
	if (!cJSON_IsString(v) || strcmp(v->valuestring, "lora-merge/1")) {
		lora_errf(err, "'%s' is not a lora-merge/1 record", path);
		goto out;
	}
	base = cJSON_GetObjectItemCaseSensitive(root, "base");
	v = cJSON_GetObjectItemCaseSensitive(base, "path");
	if (!cJSON_IsString(v) || !(r->base_path = strdup(v->valuestring))) {
		lora_errf(err, "'%s': base.path is missing", path);
		goto out;
	}
	v = cJSON_GetObjectItemCaseSensitive(base, "fingerprint");
	if (!cJSON_IsString(v) || !valid_digest(v->valuestring)) {
		lora_errf(err, "'%s': base.fingerprint is missing or malformed", path);
		goto out;
	}
	memcpy(r->fingerprint, v->valuestring, 72);
	v = cJSON_GetObjectItemCaseSensitive(root, "dtype");
	if (!cJSON_IsString(v) || lora_merge_dtype_parse(v->valuestring, &r->dtype) < 0) {
		lora_errf(err, "'%s': dtype is missing or unknown", path);
		goto out;
	}
	v = cJSON_GetObjectItemCaseSensitive(root, "drift");
	if (v) {
		if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 1e9) {
			lora_errf(err, "'%s': drift is malformed", path);
			goto out;
		}
		r->drift = (int)v->valuedouble;
	}
	ads = cJSON_GetObjectItemCaseSensitive(root, "adapters");
	if (!cJSON_IsArray(ads)) {
		lora_errf(err, "'%s': adapters is missing", path);
		goto out;
	}
	n = (size_t)cJSON_GetArraySize(ads);
	r->adapters = calloc(n ? n : 1, sizeof(*r->adapters));
	if (!r->adapters) {
		lora_errf(err, "out of memory");
		goto out;
	}
	cJSON_ArrayForEach(it, ads) {
		const cJSON *ref = cJSON_GetObjectItemCaseSensitive(it, "ref");
		const cJSON *dg = cJSON_GetObjectItemCaseSensitive(it, "digest");
		const cJSON *w = cJSON_GetObjectItemCaseSensitive(it, "weight");
		if (!cJSON_IsString(ref) || !cJSON_IsString(dg) || !valid_digest(dg->valuestring) ||
		    !cJSON_IsNumber(w) || !isfinite(w->valuedouble)) {
			lora_errf(err, "'%s': adapter %zu is malformed", path, k);
			goto out;
		}
		r->adapters[k].ref = strdup(ref->valuestring);
		r->adapters[k].digest = strdup(dg->valuestring);
		r->adapters[k].weight = w->valuedouble;
		r->n_adapters = ++k;
		if (!r->adapters[k - 1].ref || !r->adapters[k - 1].digest) {
			lora_errf(err, "out of memory");
			goto out;
		}
	}
	ts = cJSON_GetObjectItemCaseSensitive(root, "tensors");
	if (!cJSON_IsObject(ts)) {
		lora_errf(err, "'%s': tensors is missing", path);
		goto out;
	}
	if (parse_lines(ts, path, &r->n_tensors, &r->modules, &r->lines, err) < 0)
		goto out;
	ts = cJSON_GetObjectItemCaseSensitive(root, "drifted");
	if (ts && (!cJSON_IsObject(ts) ||
		   parse_lines(ts, path, &r->n_drifted, &r->drifted_modules, &r->drifted_lines, err) < 0)) {
		if (!cJSON_IsObject(ts))
			lora_errf(err, "'%s': drifted is malformed", path);
		goto out;
	}
	rc = 0;
out:
	cJSON_Delete(root);
	if (rc < 0)
		lora_merge_record_free(r);
	return rc;
}

int lora_merge_record_read(const char *dir, struct lora_merge_record *r, struct lora_err *err)
{
	char *path = lora_path_join(dir, LORA_MERGE_JSON), *text = NULL;
	size_t len = 0;
	int rc;

	memset(r, 0, sizeof(*r));
	if (!path)
		return lora_errf(err, "out of memory");
	if (!lora_is_file(path)) {
		lora_errf(err, "'%s' was not written by lora merge (no %s)", dir, LORA_MERGE_JSON);
		free(path);
		return -1;
	}
	if (lora_read_file(path, 64u << 20, &text, &len, err) < 0) {
		free(path);
		return -1;
	}
	rc = record_parse(text, len, path, r, err);
	free(text);
	free(path);
	return rc;
}

/* ----------------------------------------------------------- shard headers */

int lora_merge_shard_header(const struct lora_st *shard, const enum lora_dtype *out_dt,
			    const char *rec, uint64_t target, unsigned char **out, size_t *out_len,
			    struct lora_err *err)
{
	struct lora_st_spec *specs = calloc(shard->n_tensors ? shard->n_tensors : 1, sizeof(*specs));
	const char **keys = calloc(shard->n_meta + 1, sizeof(char *));
	const char **vals = calloc(shard->n_meta + 1, sizeof(char *));
	unsigned char *h0 = NULL, *h1 = NULL, *p;
	size_t l0, l1, nm = 0;
	uint64_t dl0, dl1;
	int rc = -1;

	*out = NULL;
	if (!specs || !keys || !vals) {
		lora_errf(err, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < shard->n_tensors; i++) {
		const struct lora_st_tensor *t = &shard->tensors[i];
		specs[i].name = t->name;
		specs[i].dtype = out_dt ? out_dt[i] : t->dtype;
		specs[i].ndim = t->ndim;
		memcpy(specs[i].shape, t->shape, sizeof(t->shape));
	}
	for (size_t i = 0; i < shard->n_meta; i++)
		if (strcmp(shard->meta_keys[i], LORA_MERGE_META_KEY)) {
			keys[nm] = shard->meta_keys[i];
			vals[nm++] = shard->meta_vals[i];
		}
	if (lora_st_build_header(specs, shard->n_tensors, keys, vals, nm, &h0, &l0, &dl0, err) < 0)
		goto out;
	if (target == 0)
		target = ((uint64_t)l0 + LORA_MERGE_RESERVE + 7) & ~(uint64_t)7;
	keys[nm] = LORA_MERGE_META_KEY;
	vals[nm++] = rec;
	if (lora_st_build_header(specs, shard->n_tensors, keys, vals, nm, &h1, &l1, &dl1, err) < 0)
		goto out;
	if (l1 > target) {
		lora_errf(err, "'%s': the merge record (%zu bytes) does not fit the space kept for it "
			       "in the header; use fewer adapters or shorter paths", shard->path,
			  strlen(rec));
		goto out;
	}
	if (target > LORA_ST_MAX_HEADER) {
		lora_errf(err, "'%s': header would exceed the safetensors limit", shard->path);
		goto out;
	}
	p = realloc(h1, (size_t)target);
	if (!p) {
		lora_errf(err, "out of memory");
		goto out;
	}
	h1 = p;
	memset(h1 + l1, ' ', (size_t)target - l1);
	for (int i = 0; i < 8; i++)
		h1[i] = (unsigned char)(((target - 8) >> (8 * i)) & 0xff);
	*out = h1;
	*out_len = (size_t)target;
	h1 = NULL;
	rc = 0;
out:
	free(h0);
	free(h1);
	free(specs);
	free(keys);
	free(vals);
	return rc;
}

