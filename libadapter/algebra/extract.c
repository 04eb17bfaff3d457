/* extract.c - low-rank adapters from full fine-tunes (see extract.h). */
#include "libadapter/algebra/extract.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <openssl/evp.h>

#include "libadapter/base/buf.h"
#include "libadapter/algebra/combine.h"
#include "libadapter/base/fsutil.h"
#include "libadapter/algebra/lowrank.h"
#include "libadapter/format/modeldir.h"

/* ------------------------------------------------------------ targeting */

/* A module inside a numbered layer: some ".<digits>." component. */
static int in_numbered_layer(const char *name)
{
	for (const char *p = strchr(name, '.'); p; p = strchr(p + 1, '.')) {
		const char *q = p + 1;
		while (isdigit((unsigned char)*q))
			q++;
		if (q > p + 1 && *q == '.')
			return 1;
	}
	return 0;
}

static int targeted(const struct lora_extract_params *p, const char *module)
{
	size_t ml = strlen(module);

	if (!p->targets)
		return in_numbered_layer(module);
	for (size_t i = 0; i < p->n_targets; i++) {
		const char *t = p->targets[i];
		size_t tl = strlen(t);
		if (!strcmp(module, t) || (ml > tl && module[ml - tl - 1] == '.' && !strcmp(module + ml - tl, t)))
			return 1;
	}
	return 0;
}

/* ------------------------------------------------------------ row source */

struct fds {
	const struct lora_model *m;
	int *fd;                      /* per shard, -1 until opened */
};

static int shard_fd(struct fds *f, size_t shard, struct lora_err *err)
{
	if (f->fd[shard] < 0) {
		const char *path = f->m->shards[shard]->path;
		f->fd[shard] = open(path, O_RDONLY | O_CLOEXEC);
		if (f->fd[shard] < 0)
			return lora_errf(err, "cannot open '%s': %s", path, strerror(errno));
	}
	return f->fd[shard];
}

static int read_at(int fd, void *buf, size_t len, uint64_t off, const char *what, struct lora_err *err)
{
	unsigned char *p = buf;

	while (len) {
		ssize_t k = pread(fd, p, len, (off_t)off);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return lora_errf(err, "cannot read '%s': %s", what, k < 0 ? strerror(errno) : "file is short");
		p += k;
		len -= (size_t)k;
		off += (uint64_t)k;
	}
	return 0;
}

struct rows {
	const struct lora_model_tensor *tb, *tt;
	int fd_b, fd_t;
	uint64_t in;
	unsigned char *raw;           /* [nb, in] raw bytes, the wider of the two dtypes */
	double *tmp;                  /* [nb, in] */
	EVP_MD_CTX *sha;              /* hashes the base bytes on the first pass */
	uint64_t hashed_rows;
	const struct lora_extract_params *p;
	double done, total;
};

/* dst [n, in] = rows [row0, row0 + n) of W_tuned − W_base, in fp64 */
static int get_rows(void *ctx, uint64_t row0, uint64_t n, double *dst, struct lora_err *err)
{
	struct rows *r = ctx;
	const struct lora_st_tensor *b = r->tb->t, *t = r->tt->t;
	size_t cnt = (size_t)(n * r->in), esb = lora_dtype_bits(b->dtype) / 8, est = lora_dtype_bits(t->dtype) / 8;

	if (read_at(r->fd_t, r->raw, cnt * est, t->file_offset + row0 * r->in * est, t->name, err) < 0)
		return -1;
	lora_to_f64(dst, r->raw, t->dtype, cnt);
	if (read_at(r->fd_b, r->raw, cnt * esb, b->file_offset + row0 * r->in * esb, b->name, err) < 0)
		return -1;
	if (r->sha && row0 == r->hashed_rows) {
		EVP_DigestUpdate(r->sha, r->raw, cnt * esb);
		r->hashed_rows += n;
	}
	lora_to_f64(r->tmp, r->raw, b->dtype, cnt);
	for (size_t i = 0; i < cnt; i++)
		dst[i] -= r->tmp[i];
	if (r->p->progress) {
		r->done += (double)cnt;
		r->p->progress(r->p->progress_ctx, r->done, r->total);
	}
	return 0;
}

/* ------------------------------------------------------------ one module */

struct scratch_entry {
	uint64_t off, len;            /* of A then B, back to back */
};

static int write_doubles(int fd, const double *v, size_t n, enum lora_dtype dt, struct lora_err *err)
{
	float f[1024];
	unsigned char bytes[1024 * 4];
	size_t es = lora_dtype_bits(dt) / 8;

	while (n) {
		size_t k = n < 1024 ? n : 1024;
		for (size_t i = 0; i < k; i++)
			f[i] = (float)v[i];
		lora_from_f32(bytes, f, dt, k);
		if (lora_write_all(fd, bytes, k * es, "scratch file", err) < 0)
			return -1;
		v += k;
		n -= k;
	}
	return 0;
}

static int extract_module(struct rows *rs, struct lora_extract_module *em, int R, int scratch,
			  uint64_t *scratch_off, struct scratch_entry *se, enum lora_dtype dt,
			  unsigned char hash[32], struct lora_err *err)
{
	const struct lora_extract_params *p = rs->p;
	struct lora_rsvd_params rp = { 0 };
	uint64_t out = em->out, in = em->in, mn = out < in ? out : in;
	size_t nb, es_max;
	double *A = NULL, *B = NULL, *Bp = NULL, *sv = NULL, total = 0, kept = 0;
	unsigned int hl = 0;
	int k = R < (int)mn ? R : (int)mn, rc = -1;

	rp.rank = k;
	rp.oversample = p->oversample < 0 ? 10 : p->oversample;
	rp.iters = p->iters < 0 ? 2 : p->iters;
	rp.seed = p->seed;
	rp.block_bytes = p->block_bytes ? p->block_bytes : (8u << 20);
	nb = rp.block_bytes / (in * sizeof(double));
	nb = nb < 1 ? 1 : nb > out ? (size_t)out : nb;
	es_max = 8;
	rs->in = in;
	rs->hashed_rows = 0;
	if (!(rs->raw = malloc(nb * in * es_max)) || !(rs->tmp = calloc(nb * in, sizeof(double))) ||
	    !(A = calloc((size_t)R * in, sizeof(double))) || !(B = calloc(out * R, sizeof(double))) ||
	    !(Bp = calloc(out * k, sizeof(double))) || !(sv = calloc((size_t)k, sizeof(double))) ||
	    !(rs->sha = EVP_MD_CTX_new())) {
		lora_errf(err, "out of memory");
		goto out;
	}
	EVP_DigestInit_ex(rs->sha, EVP_sha256(), NULL);
	/* A is [k, in] in the first rows of A [R, in]: the same layout. */
	if (lora_rsvd(out, in, &rp, get_rows, rs, Bp, A, sv, &total, err) < 0)
		goto out;
	EVP_DigestFinal_ex(rs->sha, hash, &hl);
	if (rs->hashed_rows != out) {
		lora_errf(err, "internal error: base rows were not read in order");
		goto out;
	}
	em->norm = sqrt(total);
	em->r = k;
	em->unchanged = total == 0;
	for (int j = 0; j < k; j++)
		kept += sv[j] * sv[j];
	em->energy = total > 0 ? fmin(kept / total, 1.0) : NAN;
	em->sv_max = sv[0];
	if (em->unchanged) {
		rc = 0;
		goto out;
	}
	/* B [out, R] with B' [out, k] in its first columns, zero beyond */
	for (uint64_t o = 0; o < out; o++)
		memcpy(B + o * R, Bp + o * k, (size_t)k * sizeof(double));
	se->off = *scratch_off;
	se->len = ((uint64_t)R * in + out * R) * (lora_dtype_bits(dt) / 8);
	if (write_doubles(scratch, A, (size_t)R * in, dt, err) < 0 ||
	    write_doubles(scratch, B, out * R, dt, err) < 0)
		goto out;
	*scratch_off += se->len;
	rc = 0;
out:
	EVP_MD_CTX_free(rs->sha);
	rs->sha = NULL;
	free(rs->raw);
	free(rs->tmp);
	rs->raw = NULL;
	rs->tmp = NULL;
	free(A);
	free(B);
	free(Bp);
	free(sv);
	return rc;
}

/* ------------------------------------------------------------ assembly */

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* "q_proj" from "model.layers.0.self_attn.q_proj" */
static const char *last_part(const char *name)
{
	const char *d = strrchr(name, '.');
	return d ? d + 1 : name;
}

/*
 * target_modules: the list of last name parts when that selects exactly
 * the written modules in the base, else a regular expression of their
 * full names (PEFT matches a string target in full).
 */
static cJSON *targets_json(const struct lora_model *base, const struct lora_extract_result *r)
{
	const char **parts = calloc(r->n_modules + 1, sizeof(*parts));
	size_t np = 0, selected = 0;
	cJSON *a = NULL;

	if (!parts)
		return NULL;
	for (size_t i = 0; i < r->n_modules; i++)
		if (!r->modules[i].unchanged)
			parts[np++] = last_part(r->modules[i].name);
	qsort(parts, np, sizeof(*parts), cmp_str);
	/* how many 2-d weights of the base those parts would select */
	for (size_t i = 0; i < base->n_tensors; i++) {
		const struct lora_st_tensor *t = base->tensors[i].t;
		size_t len = strlen(t->name);
		char *mod;
		if (t->ndim != 2 || len < 8 || strcmp(t->name + len - 7, ".weight"))
			continue;
		if (!(mod = strndup(t->name, len - 7)))
			goto out;
		if (bsearch(&(const char *){ last_part(mod) }, parts, np, sizeof(*parts), cmp_str))
			selected++;
		free(mod);
	}
	if (selected == r->n_written) {
		a = cJSON_CreateArray();
		for (size_t i = 0; a && i < np; i++)
			if (!i || strcmp(parts[i], parts[i - 1]))
				cJSON_AddItemToArray(a, cJSON_CreateString(parts[i]));
	} else {
		struct lora_buf b = LORA_BUF_INIT;
		size_t k = 0;
		lora_buf_puts(&b, "(");
		for (size_t i = 0; i < r->n_modules; i++) {
			if (r->modules[i].unchanged)
				continue;
			if (k++)
				lora_buf_puts(&b, "|");
			for (const char *c = r->modules[i].name; *c; c++) {
				if (!isalnum((unsigned char)*c) && *c != '_')
					lora_buf_puts(&b, "\\");
				lora_buf_add(&b, c, 1);
			}
		}
		lora_buf_puts(&b, ")");
		if (!b.oom)
			a = cJSON_CreateString(b.data);
		lora_buf_free(&b);
	}
out:
	free(parts);
	return a;
}

static char *config_json(const struct lora_model *base, const char *base_name,
			 const struct lora_extract_result *r)
{
	cJSON *o = cJSON_CreateObject(), *t = targets_json(base, r);
	char *s;

	if (!o || !t) {
		cJSON_Delete(o);
		cJSON_Delete(t);
		return NULL;
	}
	cJSON_AddStringToObject(o, "peft_type", "LORA");
	cJSON_AddNullToObject(o, "task_type");
	cJSON_AddStringToObject(o, "base_model_name_or_path", base_name);
	cJSON_AddNumberToObject(o, "r", r->r);
	cJSON_AddNumberToObject(o, "lora_alpha", r->r);
	cJSON_AddNumberToObject(o, "lora_dropout", 0);
	cJSON_AddStringToObject(o, "bias", "none");
	cJSON_AddBoolToObject(o, "fan_in_fan_out", 0);
	cJSON_AddBoolToObject(o, "use_rslora", 0);
	cJSON_AddItemToObject(o, "target_modules", t);
	cJSON_AddObjectToObject(o, "rank_pattern");
	cJSON_AddObjectToObject(o, "alpha_pattern");
	cJSON_AddNullToObject(o, "modules_to_save");
	cJSON_AddBoolToObject(o, "init_lora_weights", 1);
	cJSON_AddBoolToObject(o, "inference_mode", 1);
	s = cJSON_Print(o);
	cJSON_Delete(o);
	return s;
}

static char *provenance(const char *base_dir, const char *tuned_dir, const struct lora_extract_params *p,
			const struct lora_extract_result *r)
{
	cJSON *o = cJSON_CreateObject();
	char *s;

	cJSON_AddStringToObject(o, "tool", "lora extract");
	cJSON_AddStringToObject(o, "base", base_dir);
	cJSON_AddStringToObject(o, "tuned", tuned_dir);
	cJSON_AddStringToObject(o, "base_fingerprint", r->base_fingerprint);
	cJSON_AddNumberToObject(o, "rank", r->r);
	cJSON_AddNumberToObject(o, "oversample", p->oversample < 0 ? 10 : p->oversample);
	cJSON_AddNumberToObject(o, "iters", p->iters < 0 ? 2 : p->iters);
	cJSON_AddNumberToObject(o, "seed", (double)p->seed);
	s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	return s;
}

/* The fingerprint of model.h from the per-module hashes (modules sorted by name). */
static int fingerprint(const struct lora_extract_result *r, const struct lora_model_tensor *const *tb,
		       unsigned char (*hash)[32], char out[72])
{
	struct lora_buf b = LORA_BUF_INIT;
	char hex[65];

	for (size_t i = 0; i < r->n_modules; i++) {
		const struct lora_st_tensor *t = tb[i]->t;
		if (r->modules[i].unchanged)
			continue;
		for (int k = 0; k < 32; k++)
			snprintf(hex + 2 * k, 3, "%02x", hash[i][k]);
		lora_buf_printf(&b, "%s %s %llux%llu %s\n", t->name, lora_dtype_name(t->dtype),
				(unsigned long long)t->shape[0], (unsigned long long)t->shape[1], hex);
	}
	if (b.oom)
		return -1;
	lora_sha256_hex(b.data ? b.data : "", b.len, hex);
	snprintf(out, 72, "sha256:%s", hex);
	lora_buf_free(&b);
	return 0;
}

/* Targeted modules of the base, checked against the tuned model. */
static int select_modules(const struct lora_model *base, const struct lora_model *tuned,
			  const struct lora_extract_params *p, struct lora_extract_result *r,
			  const struct lora_model_tensor ***tb, const struct lora_model_tensor ***ttu,
			  struct lora_err *err)
{
	if (!(r->modules = calloc(base->n_tensors + 1, sizeof(*r->modules))) ||
	    !(*tb = calloc(base->n_tensors + 1, sizeof(**tb))) ||
	    !(*ttu = calloc(base->n_tensors + 1, sizeof(**ttu))))
		return lora_errf(err, "out of memory");
	for (size_t i = 0; i < base->n_tensors; i++) {
		const struct lora_st_tensor *t = base->tensors[i].t;
		const struct lora_model_tensor *tt;
		size_t len = strlen(t->name);
		struct lora_extract_module *em = &r->modules[r->n_modules];
		char *mod;

		if (len < 8 || strcmp(t->name + len - 7, ".weight"))
			continue;
		if (!(mod = strndup(t->name, len - 7)))
			return lora_errf(err, "out of memory");
		if (t->ndim != 2 || !targeted(p, mod)) {
			free(mod);
			continue;
		}
		em->name = mod;
		(*tb)[r->n_modules] = &base->tensors[i];
		r->n_modules++;
		if (!lora_dtype_is_float(t->dtype))
			return lora_errf(err, "'%s': '%s' has dtype %s, not a float type", base->dir,
					 t->name, lora_dtype_name(t->dtype));
		tt = lora_model_find(tuned, t->name);
		if (!tt)
			return lora_errf(err, "'%s' has no tensor '%s'", tuned->dir, t->name);
		if (tt->t->ndim != 2 || tt->t->shape[0] != t->shape[0] || tt->t->shape[1] != t->shape[1])
			return lora_errf(err, "'%s' is [%llu, %llu] in the base but not in '%s'", t->name,
					 (unsigned long long)t->shape[0], (unsigned long long)t->shape[1],
					 tuned->dir);
		if (!lora_dtype_is_float(tt->t->dtype))
			return lora_errf(err, "'%s': '%s' has dtype %s, not a float type", tuned->dir,
					 t->name, lora_dtype_name(tt->t->dtype));
		(*ttu)[r->n_modules - 1] = tt;
		if (t->shape[0] == 0 || t->shape[1] == 0 || t->shape[0] > INT32_MAX ||
		    t->shape[1] > INT32_MAX)
			return lora_errf(err, "'%s' has an unusable shape", t->name);
		em->out = t->shape[0];
		em->in = t->shape[1];
	}
	if (!r->n_modules)
		return lora_errf(err, "no targeted 2-d weight in '%s'%s", base->dir,
				 p->targets ? " (check --targets)" : "");
	return 0;
}

int lora_extract(const char *base_dir, const char *tuned_dir, const struct lora_extract_params *p,
		 const char *out_dir, struct lora_extract_result *res, struct lora_err *err)
{
	struct lora_model *base = NULL, *tuned = NULL;
	struct lora_extract_result r = { 0 };
	struct fds fb = { 0 }, ft = { 0 };
	struct scratch_entry *se = NULL;
	struct lora_peft_out_module *om = NULL;
	struct lora_peft_out o = { 0 };
	struct rows rs = { 0 };
	const struct lora_model_tensor **tb = NULL, **tt = NULL;
	unsigned char (*hash)[32] = NULL;
	enum lora_dtype dt = p->dtype ? p->dtype : LORA_DT_F32;
	char *scratch_path = NULL, *cfg = NULL;
	uint64_t soff = 0;
	int scratch = -1, rc = -1, begun = 0;
	size_t k;

	if (p->rank < 1)
		return lora_errc(err, LORA_EUSAGE, "the rank must be at least 1");
	if (dt != LORA_DT_F32 && dt != LORA_DT_BF16 && dt != LORA_DT_F16)
		return lora_errc(err, LORA_EUSAGE, "output dtype must be F32, BF16 or F16");
	if (access(out_dir, F_OK) == 0)
		return lora_errf(err, "'%s' already exists", out_dir);
	if (lora_model_open(base_dir, 0, &base, err) < 0 || lora_model_open(tuned_dir, 0, &tuned, err) < 0 ||
	    select_modules(base, tuned, p, &r, &tb, &tt, err) < 0)
		goto out;
	r.r = p->rank;
	fb.m = base;
	ft.m = tuned;
	if (!(fb.fd = malloc((base->n_shards + 1) * sizeof(int))) ||
	    !(ft.fd = malloc((tuned->n_shards + 1) * sizeof(int))) ||
	    !(se = calloc(r.n_modules, sizeof(*se))) || !(hash = calloc(r.n_modules, sizeof(*hash))) ||
	    !(om = calloc(r.n_modules, sizeof(*om))) ||
	    !(scratch_path = malloc(strlen(out_dir) + 24))) {
		lora_errf(err, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < base->n_shards; i++)
		fb.fd[i] = -1;
	for (size_t i = 0; i < tuned->n_shards; i++)
		ft.fd[i] = -1;
	/* factors wait in an unlinked file beside the output until all are known */
	sprintf(scratch_path, "%s.scratch-XXXXXX", out_dir);
	if ((scratch = mkstemp(scratch_path)) < 0) {
		lora_errf(err, "cannot create a scratch file beside '%s': %s", out_dir, strerror(errno));
		goto out;
	}
	unlink(scratch_path);

	rs.p = p;
	for (size_t i = 0; i < r.n_modules; i++)
		rs.total += (double)r.modules[i].out * (double)r.modules[i].in *
			    (2 + 2 * (p->iters < 0 ? 2 : p->iters));
	for (size_t i = 0; i < r.n_modules; i++) {
		struct lora_extract_module *em = &r.modules[i];
		rs.tb = tb[i];
		rs.tt = tt[i];
		if ((rs.fd_b = shard_fd(&fb, rs.tb->shard, err)) < 0 ||
		    (rs.fd_t = shard_fd(&ft, rs.tt->shard, err)) < 0)
			goto out;
		if (extract_module(&rs, em, p->rank, scratch, &soff, &se[i], dt, hash[i], err) < 0) {
			lora_err_prefix(err, "module '%s'", em->name);
			goto out;
		}
		if (!em->unchanged)
			r.n_written++;
	}
	if (!r.n_written) {
		lora_errf(err, "'%s' and '%s' hold the same values in every targeted module", base_dir,
			  tuned_dir);
		goto out;
	}
	if (fingerprint(&r, tb, hash, r.base_fingerprint) < 0 ||
	    !(r.provenance_json = provenance(base_dir, tuned_dir, p, &r)) ||
	    !(cfg = config_json(base, p->base_name ? p->base_name : base_dir, &r))) {
		lora_errf(err, "out of memory");
		goto out;
	}
	k = 0;
	for (size_t i = 0; i < r.n_modules; i++)
		if (!r.modules[i].unchanged)
			om[k++] = (struct lora_peft_out_module){ r.modules[i].name, r.modules[i].out,
								 r.modules[i].in };
	if (lora_peft_out_begin(&o, out_dir, cfg, om, k, r.r, dt, NULL, 0, r.provenance_json, err) < 0)
		goto out;
	begun = 1;
	for (size_t i = 0; i < r.n_modules; i++)
		if (!r.modules[i].unchanged &&
		    lora_st_writer_copy(&o.w, scratch, se[i].off, se[i].len, err) < 0)
			goto out;
	begun = 0;
	if (lora_peft_out_commit(&o, err) < 0)
		goto out;
	rc = 0;
out:
	if (begun)
		lora_peft_out_abort(&o);
	if (scratch >= 0)
		close(scratch);
	for (size_t i = 0; fb.fd && i < base->n_shards; i++)
		if (fb.fd[i] >= 0)
			close(fb.fd[i]);
	for (size_t i = 0; ft.fd && i < tuned->n_shards; i++)
		if (ft.fd[i] >= 0)
			close(ft.fd[i]);
	free(fb.fd);
	free(ft.fd);
	free(tb);
	free(tt);
	free(se);
	free(hash);
	free(om);
	free(scratch_path);
	cJSON_free(cfg);
	lora_model_close(base);
	lora_model_close(tuned);
	if (rc == 0 && res)
		*res = r;
	else
		lora_extract_result_free(&r);
	return rc;
}

void lora_extract_result_free(struct lora_extract_result *r)
{
	for (size_t i = 0; i < r->n_modules; i++)
		free(r->modules[i].name);
	free(r->modules);
	free(r->provenance_json);
	memset(r, 0, sizeof(*r));
}
