/*
 * swap.c - in-place swap of the adapters merged into a model folder: what is
 * rewritten, from what, and the journal written before anything changes (see
 * swap.h for the format; journal.c replays it).
 */
#define _GNU_SOURCE
#include "libadapter/merge/swap.h"
#include "libadapter/merge/swap_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <openssl/evp.h>

#include "libadapter/base/fsutil.h"
#include "libadapter/format/modeldir.h"
#include "libadapter/format/safetensors.h"

/* ------------------------------------------------------------------- swap */

/* One tensor the swap rewrites. */
struct urow {
	const char *module;
	char *name;                        /* "<module>.weight" */
	const struct lora_st_tensor *ft;   /* in the merged folder */
	size_t shard;
	const struct lora_st_tensor *src;  /* what the new bytes are computed from */
	struct lora_merge_target *t;       /* terms, or NULL: a copy of src */
	int in_old, in_new;
	char line[128];                    /* base fingerprint line */
};

struct swap_job {
	const struct lora_swap_opts *o;
	const struct lora_merge_set *set;
	struct lora_merge_record old, rec;
	struct lora_model *m, *base;
	struct lora_merge_set old_set;
	struct lora_merge_plan plan;
	char **new_mods;                   /* modules of the new set, sorted */
	size_t n_new;
	struct urow *u;
	size_t n_u;
	unsigned char **hdr;               /* new shard headers */
	struct lora_buf json;              /* new lora-merge.json */
	int jfd;
	char *jnew;
	uint64_t jwritten;
};

static int str_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int in_sorted(char *const *v, size_t n, const char *s)
{
	return n && bsearch(&s, v, n, sizeof(char *), str_cmp) != NULL;
}

/* The shards must carry the same record as lora-merge.json. */
static int check_consistent(struct swap_job *j, struct lora_err *err)
{
	struct lora_buf b = LORA_BUF_INIT;
	int rc = 0;

	if (lora_merge_record_json(&j->old, 1, &b, err) < 0)
		return -1;
	for (size_t s = 0; s < j->m->n_shards && rc == 0; s++) {
		const char *v = lora_st_meta(j->m->shards[s], LORA_MERGE_META_KEY);
		if (!v || strcmp(v, b.data))
			rc = lora_errf(err, "'%s' is not a folder lora merge wrote as it is now: shard '%s' "
					    "records %s adapter set than %s", j->o->model_dir,
				       j->m->shard_names[s], v ? "another" : "no", LORA_MERGE_JSON);
	}
	lora_buf_free(&b);
	return rc;
}

/*
 * U = the tensors whose bytes may differ from the base (the old record's
 * targets and drifted tensors: their base lines are known) ∪ the targets of
 * the plan, each with its folder tensor.
 */
static int build_union(struct swap_job *j, struct lora_err *err)
{
	size_t na = j->old.n_tensors, nd = j->old.n_drifted, nk = 0, a = 0, d = 0, b = 0;
	const char **km = calloc(na + nd + 1, sizeof(char *)), **kl = calloc(na + nd + 1, sizeof(char *));
	int rc = -1;

	j->u = calloc(na + nd + j->plan.n + 1, sizeof(*j->u));
	if (!j->u || !km || !kl) {
		lora_errf(err, "out of memory");
		goto out;
	}
	while (a < na || d < nd) {   /* known lines: both lists are sorted */
		int c = a == na ? 1 : d == nd ? -1 : strcmp(j->old.modules[a], j->old.drifted_modules[d]);
		if (c <= 0) {
			km[nk] = j->old.modules[a];
			kl[nk++] = j->old.lines[a++];
			d += c == 0;
		} else {
			km[nk] = j->old.drifted_modules[d];
			kl[nk++] = j->old.drifted_lines[d++];
		}
	}
	for (a = 0; a < nk || b < j->plan.n;) {
		struct urow *u = &j->u[j->n_u];
		const struct lora_model_tensor *mt;
		int c = a == nk ? 1 : b == j->plan.n ? -1 : strcmp(km[a], j->plan.t[b].module);
		if (c <= 0) {
			u->module = km[a];
			u->in_old = 1;
			snprintf(u->line, sizeof(u->line), "%s", kl[a]);
			a++;
		}
		if (c >= 0) {
			u->module = j->plan.t[b].module;
			u->t = &j->plan.t[b];
			b++;
		}
		u->in_new = in_sorted(j->new_mods, j->n_new, u->module);
		j->n_u++;
		u->name = malloc(strlen(u->module) + 8);
		if (!u->name) {
			lora_errf(err, "out of memory");
			goto out;
		}
		sprintf(u->name, "%s.weight", u->module);
		mt = lora_model_find(j->m, u->name);
		if (!mt) {
			lora_errf(err, "'%s' records '%s' as merged, but has no such tensor",
				  j->o->model_dir, u->name);
			goto out;
		}
		u->ft = mt->t;
		u->shard = mt->shard;
	}
	rc = 0;
out:
	free(km);
	free(kl);
	return rc;
}

/* Compare base tensor bt, converted to ft's dtype, with the folder's bytes. */
static int same_as_base(const struct lora_st_tensor *bt, const struct lora_st_tensor *ft)
{
	enum { N = 1 << 16 };
	static float w[N];
	static unsigned char o[N * 4];
	unsigned ob = lora_dtype_bits(ft->dtype) / 8, ib = lora_dtype_bits(bt->dtype) / 8;
	int same = 1;

	if (bt->dtype == ft->dtype) {
		uint64_t n = bt->end - bt->begin;
		for (uint64_t off = 0; off < n && same; off += 4u << 20) {
			size_t k = n - off < (4u << 20) ? (size_t)(n - off) : (4u << 20);
			same = !memcmp(bt->data + off, ft->data + off, k);
			lora_merge_drop_pages(bt->data + off, k);
			lora_merge_drop_pages(ft->data + off, k);
		}
		return same;
	}
	for (uint64_t i = 0; i < bt->nelem && same; i += N) {
		size_t k = bt->nelem - i < N ? (size_t)(bt->nelem - i) : N;
		lora_to_f32(w, bt->data + i * ib, bt->dtype, k);
		lora_from_f32(o, w, ft->dtype, k);
		same = !memcmp(o, ft->data + i * ob, k * ob);
	}
	return same;
}

static int base_mismatch(struct swap_job *j, const char *bdir, const char *name, const char *why,
			 struct lora_err *err)
{
	return lora_errf(err, "base '%s' is not the base '%s' was merged from: tensor '%s' %s%s",
			 bdir, j->o->model_dir, name, why,
			 j->o->base_dir ? "" : " (give the right one with --base)");
}

static int prepare_exact_rows(struct swap_job *j, const char *bdir, struct lora_linecache *cache,
			      struct lora_err *err)
{
	const struct lora_st_tensor **miss = calloc(j->n_u + 1, sizeof(*miss));
	char (*lines)[128] = calloc(j->n_u + 1, sizeof(*lines));
	char **missl = calloc(j->n_u + 1, sizeof(*missl));
	const struct lora_model_tensor **mts = calloc(j->n_u + 1, sizeof(*mts));
	size_t nm = 0;
	int rc = -1;

	if (!miss || !lines || !missl || !mts) {
		lora_errf(err, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < j->n_u; i++) {
		struct urow *u = &j->u[i];
		const struct lora_st_tensor *bt;
		const char *cached;

		if (!(mts[i] = lora_model_find(j->base, u->name))) {
			base_mismatch(j, bdir, u->name, "is missing", err);
			goto out;
		}
		bt = mts[i]->t;
		if (bt->ndim != u->ft->ndim || memcmp(bt->shape, u->ft->shape, sizeof(bt->shape)) ||
		    lora_merge_out_dtype(bt->dtype, j->old.dtype) != u->ft->dtype) {
			base_mismatch(j, bdir, u->name, "has another shape or dtype", err);
			goto out;
		}
		if ((cached = lora_linecache_get(cache, mts[i]))) {
			snprintf(lines[i], sizeof(lines[i]), "%s", cached);
		} else {
			miss[nm] = bt;
			missl[nm++] = lines[i];
		}
	}
	/* Lines the cache lacks: hashed by worker threads. */
	if (lora_merge_tensor_lines(miss, missl, nm, err) < 0)
		goto out;
	for (size_t i = 0; i < j->n_u; i++) {
		struct urow *u = &j->u[i];
		const struct lora_st_tensor *bt = mts[i]->t;

		lora_linecache_put(cache, mts[i], lines[i]);
		if (u->in_old && strcmp(lines[i], u->line)) {
			base_mismatch(j, bdir, u->name, "differs from the recorded fingerprint", err);
			goto out;
		}
		if (!u->in_old && !same_as_base(bt, u->ft)) {
			base_mismatch(j, bdir, u->name, "differs from the folder's copy", err);
			goto out;
		}
		memcpy(u->line, lines[i], sizeof(u->line));
		u->src = bt;
	}
	rc = 0;
out:
	free(miss);
	free(lines);
	free(missl);
	free(mts);
	return rc;
}

/* Exact mode: every rewritten tensor comes from the base, checked first. */
static int prepare_exact(struct swap_job *j, const char *bdir, struct lora_err *err)
{
	struct lora_linecache *cache = lora_linecache_open(j->base, j->o->cache_dir);
	int rc = prepare_exact_rows(j, bdir, cache, err);

	lora_linecache_close(cache, rc == 0);
	return rc;
}

/* Drift mode: open the old adapters again (digests checked) and take them out. */
static int prepare_drift(struct swap_job *j, const char *why, struct lora_err *err)
{
	if (j->old.dtype != LORA_DT_INVALID)
		return lora_errf(err, "cannot swap '%s' without its base (%s): it was merged with "
				      "--dtype %s; give the base with --base", j->o->model_dir, why,
				 lora_merge_dtype_label(j->old.dtype));
	j->old_set.tmp_dir = j->o->tmp_dir;
	for (size_t i = 0; i < j->old.n_adapters; i++) {
		const struct lora_merge_rec_adapter *ra = &j->old.adapters[i];
		struct lora_err e2 = { 0 };
		/* A stored adapter is found again by its digest (its tag may have moved). */
		const char *spec = ra->ref[0] == '/' ? ra->ref : ra->digest;
		if (lora_merge_set_add(&j->old_set, j->o->store_dir, spec, ra->weight, &e2) < 0)
			return lora_errf(err, "cannot swap '%s' without its base (%s): cannot open the "
					      "merged adapter '%s' to take it out: %s", j->o->model_dir,
					 why, ra->ref, e2.msg);
		if (strcmp(j->old_set.a[i].digest, ra->digest))
			return lora_errf(err, "cannot swap '%s' without its base (%s): adapter '%s' has "
					      "changed since it was merged", j->o->model_dir, why, ra->ref);
	}
	if (lora_merge_plan_add(&j->plan, j->m, j->o->model_dir, &j->old_set, -1.0, err) < 0)
		return -1;
	return 0;
}

static int finish_drift_rows(struct swap_job *j, struct lora_err *err)
{
	for (size_t i = 0; i < j->n_u; i++) {
		struct urow *u = &j->u[i];
		u->src = u->ft;
		if (!u->in_old && lora_merge_tensor_line(u->ft, u->line, err) < 0)
			return -1;
	}
	return 0;
}

/* The new record, lora-merge.json and the shard headers. */
static int build_outputs(struct swap_job *j, const char *base_abs, int exact, struct lora_err *err)
{
	struct lora_buf meta = LORA_BUF_INIT;
	size_t k = 0;
	int rc = -1;

	j->rec.base_path = strdup(exact ? base_abs : j->old.base_path);
	j->rec.dtype = j->old.dtype;
	j->rec.drift = exact ? 0 : j->old.drift + 1;
	j->rec.modules = calloc(j->n_new ? j->n_new : 1, sizeof(char *));
	j->rec.lines = calloc(j->n_new ? j->n_new : 1, sizeof(char *));
	if (!j->rec.base_path || !j->rec.modules || !j->rec.lines)
		return lora_errf(err, "out of memory");
	if (lora_merge_record_set_adapters(&j->rec, j->set, err) < 0)
		return -1;
	for (size_t i = 0; i < j->n_u; i++) {
		if (!j->u[i].in_new)
			continue;
		j->rec.modules[k] = strdup(j->u[i].module);
		j->rec.lines[k] = strdup(j->u[i].line);
		j->rec.n_tensors = ++k;
		if (!j->rec.modules[k - 1] || !j->rec.lines[k - 1])
			return lora_errf(err, "out of memory");
	}
	lora_merge_fingerprint_lines((const char *const *)j->rec.modules,
				     (const char *const *)j->rec.lines, k, j->rec.fingerprint);
	if (!exact) {
		/* Rewritten from merged weights and no longer targeted: may differ from the base. */
		j->rec.drifted_modules = calloc(j->n_u + 1, sizeof(char *));
		j->rec.drifted_lines = calloc(j->n_u + 1, sizeof(char *));
		if (!j->rec.drifted_modules || !j->rec.drifted_lines)
			return lora_errf(err, "out of memory");
		for (size_t i = 0; i < j->n_u; i++) {
			size_t n = j->rec.n_drifted;
			if (j->u[i].in_new)
				continue;
			j->rec.drifted_modules[n] = strdup(j->u[i].module);
			j->rec.drifted_lines[n] = strdup(j->u[i].line);
			j->rec.n_drifted = n + 1;
			if (!j->rec.drifted_modules[n] || !j->rec.drifted_lines[n])
				return lora_errf(err, "out of memory");
		}
	}
	if (lora_merge_record_json(&j->rec, 1, &meta, err) < 0 ||
	    lora_merge_record_json(&j->rec, 0, &j->json, err) < 0)
		goto out;
	j->hdr = calloc(j->m->n_shards, sizeof(*j->hdr));
	if (!j->hdr) {
		lora_errf(err, "out of memory");
		goto out;
	}
	for (size_t s = 0; s < j->m->n_shards; s++) {
		const struct lora_st *st = j->m->shards[s];
		size_t hl;
		if (lora_merge_shard_header(st, NULL, meta.data, st->data_start, &j->hdr[s], &hl, err) < 0)
			goto out;
		if (hl != st->data_start) {
			lora_errf(err, "internal error: new header of '%s' has another size", st->path);
			goto out;
		}
	}
	rc = 0;
out:
	lora_buf_free(&meta);
	return rc;
}

static int jsink(void *ctx, const void *data, size_t len, struct lora_err *err)
{
	struct swap_job *j = ctx;

	if (lora_write_all(j->jfd, data, len, j->jnew, err) < 0)
		return -1;
	j->jwritten += len;
	return 0;
}

static void add_entry(unsigned char *tab, size_t *pos, int kind, const char *name, uint64_t target_off,
		      uint64_t len, uint64_t src_off)
{
	size_t nl = strlen(name);

	memset(tab + *pos, 0, J_ENTRY + ((nl + 7) & ~(size_t)7));
	tab[*pos] = (unsigned char)kind;
	put32(tab + *pos + 4, (uint32_t)nl);
	put64(tab + *pos + 8, target_off);
	put64(tab + *pos + 16, len);
	put64(tab + *pos + 24, src_off);
	memcpy(tab + *pos + J_ENTRY, name, nl);
	*pos += J_ENTRY + ((nl + 7) & ~(size_t)7);
}

/* A term's factor in the plan blob: "<row>.<term>.A" or ".B". */
static void factor_name(char out[48], size_t i, size_t k, char which)
{
	snprintf(out, 48, "%zu.%zu.%c", i, k, which);
}

static int json_raw_num(cJSON *o, const char *key, const char *text)
{
	cJSON *v = cJSON_CreateRaw(text);
	return v && cJSON_AddItemToObject(o, key, v) ? 0 : (cJSON_Delete(v), -1);
}

/*
 * The J_PLAN blob of an exact swap (see apply_plan): a safetensors header
 * with the factors of every term and the plan as "lora.swap"; the factor
 * bytes follow in spec order (written by write_plan_data).
 */
static int build_plan(struct swap_job *j, const char *base_abs, unsigned char **hdr, size_t *hdr_len,
		      uint64_t *data_len, struct lora_err *err)
{
	cJSON *root = cJSON_CreateObject(), *arr = cJSON_CreateArray();
	struct lora_st_spec *specs = NULL;
	size_t ns = 0, nspec = 0;
	char *text = NULL;
	int rc = -1;

	for (size_t i = 0; i < j->n_u; i++)
		nspec += j->u[i].t ? 2 * j->u[i].t->n_terms : 0;
	specs = calloc(nspec + 1, sizeof(*specs));
	if (!root || !arr || !specs || !cJSON_AddItemToObject(root, "tensors", arr) ||
	    !cJSON_AddStringToObject(root, "base", base_abs)) {
		if (!cJSON_IsArray(cJSON_GetObjectItem(root, "tensors")))
			cJSON_Delete(arr);
		goto oom;
	}
	for (size_t i = 0; i < j->n_u; i++) {
		const struct urow *u = &j->u[i];
		cJSON *o = cJSON_CreateObject(), *terms = cJSON_CreateArray();
		char num[32];
		if (!o || !terms || !cJSON_AddItemToArray(arr, o) || !cJSON_AddItemToObject(o, "terms", terms)) {
			cJSON_Delete(o);
			cJSON_Delete(terms);
			goto oom;
		}
		snprintf(num, sizeof(num), "%llu", (unsigned long long)u->ft->file_offset);
		if (!cJSON_AddStringToObject(o, "name", u->name) || !cJSON_AddStringToObject(o, "line", u->line) ||
		    !cJSON_AddStringToObject(o, "file", j->m->shard_names[u->shard]) ||
		    json_raw_num(o, "offset", num) < 0 ||
		    !cJSON_AddStringToObject(o, "dtype", lora_dtype_name(u->ft->dtype)))
			goto oom;
		for (size_t k = 0; u->t && k < u->t->n_terms; k++) {
			const struct lora_merge_term *tm = &u->t->terms[k];
			cJSON *to = cJSON_CreateObject();
			char an[48], bn[48];
			if (!to || !cJSON_AddItemToArray(terms, to)) {
				cJSON_Delete(to);
				goto oom;
			}
			/* The coefficient must read back as the same double: printed here, not by cJSON. */
			lora_merge_fmt_double(tm->coef, num);
			factor_name(an, i, k, 'A');
			factor_name(bn, i, k, 'B');
			if (json_raw_num(to, "coef", num) < 0 || !cJSON_AddBoolToObject(to, "fifo", tm->fifo) ||
			    !cJSON_AddStringToObject(to, "A", an) || !cJSON_AddStringToObject(to, "B", bn))
				goto oom;
			for (int f = 0; f < 2; f++) {
				const struct lora_st_tensor *t = f ? tm->mod->B : tm->mod->A;
				struct lora_st_spec *sp = &specs[ns++];
				sp->name = strdup(f ? bn : an);
				sp->dtype = t->dtype;
				sp->ndim = t->ndim;
				memcpy(sp->shape, t->shape, sizeof(sp->shape));
				if (!sp->name)
					goto oom;
			}
		}
	}
	text = cJSON_PrintUnformatted(root);
	if (!text)
		goto oom;
	{
		const char *keys[] = { "lora.swap" }, *vals[] = { text };
		if (lora_st_build_header(specs, ns, keys, vals, 1, hdr, hdr_len, data_len, err) < 0)
			goto out;
	}
	rc = 0;
	goto out;
oom:
	lora_errf(err, "out of memory");
out:
	for (size_t k = 0; k < ns; k++)
		free((char *)specs[k].name);
	free(specs);
	free(text);
	cJSON_Delete(root);
	return rc;
}

/*
 * The plan blob after its digest: the header, then the factor bytes in
 * build_plan's order.  With h, they are hashed instead of written.
 */
static int write_plan_data(struct swap_job *j, const unsigned char *hdr, size_t hdr_len, EVP_MD_CTX *h,
			   struct lora_err *err)
{
	if (h ? !EVP_DigestUpdate(h, hdr, hdr_len) : jsink(j, hdr, hdr_len, err) < 0)
		return h ? lora_errf(err, "out of memory") : -1;
	for (size_t i = 0; i < j->n_u; i++)
		for (size_t k = 0; j->u[i].t && k < j->u[i].t->n_terms; k++) {
			const struct lora_peft_module *mod = j->u[i].t->terms[k].mod;
			for (int f = 0; f < 2; f++) {
				const struct lora_st_tensor *t = f ? mod->B : mod->A;
				if (h ? !EVP_DigestUpdate(h, t->data, t->end - t->begin)
				      : jsink(j, t->data, t->end - t->begin, err) < 0)
					return h ? lora_errf(err, "out of memory") : -1;
			}
		}
	return 0;
}

/* The whole plan blob: SHA-256 of the rest, then the rest. */
static int write_plan(struct swap_job *j, const unsigned char *hdr, size_t hdr_len, struct lora_err *err)
{
	EVP_MD_CTX *h = EVP_MD_CTX_new();
	unsigned char md[32];
	unsigned int mdlen = 0;
	int rc = -1;

	if (!h || !EVP_DigestInit_ex(h, EVP_sha256(), NULL)) {
		EVP_MD_CTX_free(h);
		return lora_errf(err, "out of memory");
	}
	if (write_plan_data(j, hdr, hdr_len, h, err) == 0 && EVP_DigestFinal_ex(h, md, &mdlen) &&
	    jsink(j, md, 32, err) == 0 && write_plan_data(j, hdr, hdr_len, NULL, err) == 0)
		rc = 0;
	EVP_MD_CTX_free(h);
	return rc;
}

/*
 * Drift: the new bytes of every rewritten tensor, W - old + new computed
 * from the folder's own tensors by worker threads, written into the journal
 * from offset `at` on (in table order); the journal's position ends after
 * them.  With the test pause, one tensor at a time.
 */
static int drift_tensors(struct swap_job *j, uint64_t at, struct lora_err *err)
{
	const struct lora_model *m = j->m;
	int *fds = malloc((m->n_shards + 1) * sizeof(int));
	char **paths = calloc(m->n_shards + 1, sizeof(char *));
	int rc = -1;

	if (!fds || !paths) {
		lora_errf(err, "out of memory");
		goto out;
	}
	for (size_t s = 0; s < m->n_shards; s++)
		fds[s] = -1;
	for (size_t s = 0; s < m->n_shards; s++) {
		paths[s] = lora_path_join(m->dir, m->shard_names[s]);
		if (!paths[s] || (fds[s] = open(paths[s], O_RDONLY | O_CLOEXEC)) < 0) {
			lora_errf(err, "cannot open '%s': %s", paths[s] ? paths[s] : m->shard_names[s],
				  strerror(errno));
			goto out;
		}
	}
	for (size_t i = 0; i < j->n_u;) {
		struct lora_merge_batch *b = lora_merge_batch_new();
		size_t end = j->o->pause_us ? i + 1 : j->n_u;
		int brc = b ? 0 : lora_errf(err, "out of memory");
		for (; brc == 0 && i < end; i++) {
			const struct urow *u = &j->u[i];
			brc = lora_merge_batch_add(b, u->src, fds[u->shard], paths[u->shard], u->t,
						   u->ft->dtype, j->jfd, at, j->jnew, err);
			at += u->ft->end - u->ft->begin;
			j->jwritten += u->ft->end - u->ft->begin;
		}
		if (brc == 0)
			brc = lora_merge_batch_run(b, 0, NULL, j->o->progress, j->o->progress_ctx, err);
		lora_merge_batch_free(b);
		if (brc < 0)
			goto out;
		pause_us(j->o->pause_us);
	}
	if (lseek(j->jfd, (off_t)at, SEEK_SET) < 0) {
		lora_errf(err, "cannot seek in '%s': %s", j->jnew, strerror(errno));
		goto out;
	}
	rc = 0;
out:
	for (size_t s = 0; fds && s < m->n_shards; s++)
		if (fds[s] >= 0)
			close(fds[s]);
	for (size_t s = 0; paths && s < m->n_shards; s++)
		free(paths[s]);
	free(fds);
	free(paths);
	return rc;
}

/*
 * Write the journal aside, fsync it, and commit it by renaming.  Exact swaps
 * (base_abs set) journal the plan; drift swaps journal the new tensor bytes.
 */
static int write_journal(struct swap_job *j, const char *base_abs, struct lora_err *err)
{
	const struct lora_model *m = j->m;
	int plan = base_abs != NULL && j->n_u > 0;
	size_t n = (plan ? 1 : j->n_u) + m->n_shards + 1, tl = 0, pos = 0, plan_hlen = 0;
	unsigned char head[J_HEAD] = { 0 }, *tab, *plan_hdr = NULL;
	uint64_t off, plan_dlen = 0;
	unsigned int mdlen = 0;
	char *jfinal;
	int rc = -1;

	if (plan && build_plan(j, base_abs, &plan_hdr, &plan_hlen, &plan_dlen, err) < 0)
		return -1;
	if (plan)
		tl += J_ENTRY + ((strlen(J_PLAN_NAME) + 7) & ~(size_t)7);
	for (size_t i = 0; !plan && i < j->n_u; i++)
		tl += J_ENTRY + ((strlen(m->shard_names[j->u[i].shard]) + 7) & ~(size_t)7);
	for (size_t s = 0; s < m->n_shards; s++)
		tl += J_ENTRY + ((strlen(m->shard_names[s]) + 7) & ~(size_t)7);
	tl += J_ENTRY + ((strlen(LORA_MERGE_JSON) + 7) & ~(size_t)7);
	tab = malloc(tl);
	if (!tab) {
		free(plan_hdr);
		return lora_errf(err, "out of memory");
	}
	off = J_HEAD + tl;
	if (plan) {
		add_entry(tab, &pos, J_PLAN, J_PLAN_NAME, 0, 32 + plan_hlen + plan_dlen, off);
		off += 32 + plan_hlen + plan_dlen;
	}
	for (size_t i = 0; !plan && i < j->n_u; i++) {
		const struct lora_st_tensor *ft = j->u[i].ft;
		add_entry(tab, &pos, J_RANGE, m->shard_names[j->u[i].shard], ft->file_offset,
			  ft->end - ft->begin, off);
		off += ft->end - ft->begin;
	}
	for (size_t s = 0; s < m->n_shards; s++) {
		add_entry(tab, &pos, J_RANGE, m->shard_names[s], 0, m->shards[s]->data_start, off);
		off += m->shards[s]->data_start;
	}
	add_entry(tab, &pos, J_FILE, LORA_MERGE_JSON, 0, j->json.len, off);
	memcpy(head, J_MAGIC, 8);
	put32(head + 8, (uint32_t)n);
	put64(head + 16, tl);
	put64(head + 24, J_HEAD + tl);
	EVP_Digest(tab, tl, head + 32, &mdlen, EVP_sha256(), NULL);

	j->jnew = lora_path_join(j->o->model_dir, LORA_SWAP_JOURNAL_NEW);
	jfinal = lora_path_join(j->o->model_dir, LORA_SWAP_JOURNAL);
	if (!j->jnew || !jfinal) {
		free(tab);
		free(jfinal);
		return lora_errf(err, "out of memory");
	}
	j->jfd = open(j->jnew, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (j->jfd < 0) {
		lora_errf(err, "cannot create '%s': %s", j->jnew, strerror(errno));
		goto out;
	}
	pause_us(j->o->pause_us);
	if (lora_write_all(j->jfd, head, J_HEAD, j->jnew, err) < 0 ||
	    lora_write_all(j->jfd, tab, tl, j->jnew, err) < 0)
		goto out;
	j->jwritten = 0;
	if (plan && write_plan(j, plan_hdr, plan_hlen, err) < 0)
		goto out;
	if (!plan && drift_tensors(j, J_HEAD + tl, err) < 0)
		goto out;
	for (size_t s = 0; s < m->n_shards; s++)
		if (jsink(j, j->hdr[s], m->shards[s]->data_start, err) < 0)
			goto out;
	if (jsink(j, j->json.data, j->json.len, err) < 0 ||
	    lora_write_all(j->jfd, J_TRAILER, 8, j->jnew, err) < 0)
		goto out;
	if (J_HEAD + tl + j->jwritten != off + j->json.len) {
		lora_errf(err, "internal error: journal size");
		goto out;
	}
	if (fsync(j->jfd) < 0) {
		lora_errf(err, "cannot write '%s': %s", j->jnew,
			  errno == ENOSPC ? "no space left on device" : strerror(errno));
		goto out;
	}
	close(j->jfd);
	j->jfd = -1;
	if (rename(j->jnew, jfinal) < 0) {
		lora_errf(err, "cannot commit '%s': %s", jfinal, strerror(errno));
		goto out;
	}
	free(j->jnew);
	j->jnew = NULL;
	rc = lora_fsync_dir(j->o->model_dir, err);
out:
	if (j->jfd >= 0) {
		close(j->jfd);
		j->jfd = -1;
	}
	if (j->jnew)
		unlink(j->jnew);   /* not committed: the folder is unchanged */
	free(plan_hdr);
	free(tab);
	free(jfinal);
	return rc;
}

static void job_free(struct swap_job *j)
{
	for (size_t i = 0; i < j->n_u; i++)
		free(j->u[i].name);
	free(j->u);
	if (j->hdr && j->m)
		for (size_t s = 0; s < j->m->n_shards; s++)
			free(j->hdr[s]);
	free(j->hdr);
	for (size_t i = 0; i < j->n_new; i++)
		free(j->new_mods[i]);
	free(j->new_mods);
	lora_buf_free(&j->json);
	lora_merge_plan_free(&j->plan);
	lora_merge_set_free(&j->old_set);
	lora_merge_record_free(&j->old);
	lora_merge_record_free(&j->rec);
	if (j->base)
		lora_model_close(j->base);
	if (j->m)
		lora_model_close(j->m);
	free(j->jnew);
}

/* Decide exact or drift; open and check the base when there is one. */
static int choose_base(struct swap_job *j, struct lora_swap_stats *stats, char **base_abs,
		       struct lora_err *err)
{
	const char *bdir = j->o->base_dir ? j->o->base_dir : j->old.base_path;
	char *mreal;

	*base_abs = NULL;
	if (!lora_is_dir(bdir)) {
		if (j->o->base_dir)
			return lora_errf(err, "base '%s' is not a folder", bdir);
		snprintf(stats->note, sizeof(stats->note),
			 "base '%s' is gone; the swap was applied to the merged weights (not bit-exact, "
			 "see lora-swap(1))", bdir);
		return 0;
	}
	*base_abs = realpath(bdir, NULL);
	mreal = realpath(j->o->model_dir, NULL);
	if (!*base_abs || !mreal) {
		free(mreal);
		return lora_errf(err, "cannot resolve '%s': %s", bdir, strerror(errno));
	}
	if (!strcmp(*base_abs, mreal)) {
		free(mreal);
		return lora_errf(err, "the base '%s' is the merged folder itself", bdir);
	}
	free(mreal);
	if (lora_merged_recover(bdir, err) < 0 || lora_model_open(bdir, 0, &j->base, err) < 0)
		return -1;
	stats->exact = 1;
	return prepare_exact(j, bdir, err);
}

int lora_swap(const struct lora_swap_opts *o, const struct lora_merge_set *set,
	      struct lora_swap_stats *stats, struct lora_err *err)
{
	struct swap_job j = { .o = o, .set = set, .jfd = -1 };
	char *base_abs = NULL;
	int lockfd = -1, rc = -1;

	memset(stats, 0, sizeof(*stats));
	if (!lora_is_dir(o->model_dir))
		return lora_errf(err, "'%s' is not a folder", o->model_dir);
	if (lora_swap_lock_dir(o->model_dir, &lockfd, err) < 0)
		return -1;
	if (lora_swap_recover_locked(o->model_dir, err) < 0 ||
	    lora_merge_record_read(o->model_dir, &j.old, err) < 0 ||
	    lora_model_open(o->model_dir, 0, &j.m, err) < 0 || check_consistent(&j, err) < 0)
		goto out;
	if (lora_merge_plan_add(&j.plan, j.m, o->model_dir, set, 1.0, err) < 0)
		goto out;
	j.new_mods = calloc(j.plan.n ? j.plan.n : 1, sizeof(char *));
	if (!j.new_mods) {
		lora_errf(err, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < j.plan.n; i++)
		if (!(j.new_mods[j.n_new++] = strdup(j.plan.t[i].module))) {
			lora_errf(err, "out of memory");
			goto out;
		}
	if (!o->base_dir && !lora_is_dir(j.old.base_path)) {
		/* Drift: the old terms go into the plan before the union is built. */
		snprintf(stats->note, sizeof(stats->note),
			 "base '%s' is gone; the swap was applied to the merged weights (not bit-exact, "
			 "see lora-swap(1))", j.old.base_path);
		if (prepare_drift(&j, "the recorded base is gone", err) < 0 ||
		    build_union(&j, err) < 0 || finish_drift_rows(&j, err) < 0)
			goto out;
	} else {
		if (build_union(&j, err) < 0 || choose_base(&j, stats, &base_abs, err) < 0)
			goto out;
	}
	if (build_outputs(&j, base_abs, stats->exact, err) < 0)
		goto out;
	memcpy(stats->fingerprint, j.rec.fingerprint, 72);
	if (write_journal(&j, stats->exact ? base_abs : NULL, err) < 0)
		goto out;
	pause_us(o->pause_us);
	if (lora_swap_journal_apply(o->model_dir, o->pause_us, 0, o->progress, o->progress_ctx, err) < 0)
		goto out;
	for (size_t i = 0; i < j.n_u; i++) {
		stats->n_rewritten++;
		stats->bytes_rewritten += j.u[i].ft->end - j.u[i].ft->begin;
	}
	rc = 0;
out:
	free(base_abs);
	job_free(&j);
	lora_swap_unlock_dir(lockfd);
	return rc;
}

