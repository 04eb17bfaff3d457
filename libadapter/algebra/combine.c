/* combine.c - weighted combinations of adapters (see combine.h). */
#include "libadapter/algebra/combine.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "libadapter/base/buf.h"
#include "libadapter/base/fsutil.h"
#include "libadapter/algebra/lowrank.h"
#include "libadapter/format/safetensors.h"

static const char *const method_names[] = { "cat", "svd", "linear" };

int lora_combine_method_parse(const char *s)
{
	for (int i = 0; i < 3; i++)
		if (!strcmp(s, method_names[i]))
			return i;
	return -1;
}

const char *lora_combine_method_name(int m)
{
	return m >= 0 && m < 3 ? method_names[m] : "?";
}

/* ------------------------------------------------------ writing a folder */

int lora_peft_out_begin(struct lora_peft_out *o, const char *dir, const char *config_json,
			const struct lora_peft_out_module *mods, size_t n, int r,
			enum lora_dtype dtype, const struct lora_st_tensor *const *extra,
			size_t n_extra, const char *provenance_json, struct lora_err *err)
{
	struct lora_st_spec *specs = NULL;
	char **names = NULL, *cfg_path = NULL, *st_path = NULL;
	const char *mk[2] = { "format", "lora.provenance" }, *mv[2] = { "pt", provenance_json };
	struct stat sb;
	int rc = -1;

	memset(o, 0, sizeof(*o));
	if (lstat(dir, &sb) == 0)
		return lora_errf(err, "'%s' already exists", dir);
	if (!(o->dir = strdup(dir)) || !(o->tmp_dir = malloc(strlen(dir) + 16)))
		goto oom;
	/* "out/" names the folder "out": the work folder goes beside it, not inside */
	for (size_t l = strlen(o->dir); l > 1 && o->dir[l - 1] == '/'; l--)
		o->dir[l - 1] = 0;
	snprintf(o->tmp_dir, strlen(dir) + 16, "%s.tmp-XXXXXX", o->dir);
	if (!mkdtemp(o->tmp_dir)) {
		lora_errf(err, "cannot create a folder beside '%s': %s", dir, strerror(errno));
		free(o->tmp_dir);
		o->tmp_dir = NULL;
		goto out;
	}
	{
		/* mkdtemp makes it 0700; a folder lora writes is as readable as any other */
		mode_t mask = umask(0);
		umask(mask);
		chmod(o->tmp_dir, 0777 & ~mask);
	}
	specs = calloc(2 * n + n_extra + 1, sizeof(*specs));
	names = calloc(2 * n + 1, sizeof(*names));
	if (!specs || !names)
		goto oom;
	for (size_t i = 0; i < n; i++) {
		size_t len = strlen(mods[i].name) + 40;
		if (!(names[2 * i] = malloc(len)) || !(names[2 * i + 1] = malloc(len)))
			goto oom;
		snprintf(names[2 * i], len, "base_model.model.%s.lora_A.weight", mods[i].name);
		snprintf(names[2 * i + 1], len, "base_model.model.%s.lora_B.weight", mods[i].name);
		specs[2 * i] = (struct lora_st_spec){ names[2 * i], dtype, 2, { (uint64_t)r, mods[i].in } };
		specs[2 * i + 1] = (struct lora_st_spec){ names[2 * i + 1], dtype, 2, { mods[i].out, (uint64_t)r } };
	}
	for (size_t i = 0; i < n_extra; i++) {
		struct lora_st_spec *sp = &specs[2 * n + i];
		sp->name = extra[i]->name;
		sp->dtype = extra[i]->dtype;
		sp->ndim = extra[i]->ndim;
		memcpy(sp->shape, extra[i]->shape, sizeof(sp->shape));
	}
	if (!(cfg_path = lora_path_join(o->tmp_dir, "adapter_config.json")) ||
	    !(st_path = lora_path_join(o->tmp_dir, "adapter_model.safetensors")))
		goto oom;
	if (lora_write_file_atomic(cfg_path, config_json, strlen(config_json), 0644, err) < 0 ||
	    lora_st_writer_open(&o->w, st_path, specs, 2 * n + n_extra, mk, mv, provenance_json ? 2 : 1, err) < 0)
		goto out;
	o->writer_open = 1;
	rc = 0;
	goto out;
oom:
	lora_errf(err, "out of memory");
out:
	for (size_t i = 0; names && i < 2 * n; i++)
		free(names[i]);
	free(names);
	free(specs);
	free(cfg_path);
	free(st_path);
	if (rc)
		lora_peft_out_abort(o);
	return rc;
}

int lora_peft_out_write(struct lora_peft_out *o, const double *v, size_t n, enum lora_dtype dtype,
			struct lora_err *err)
{
	float f[1024];
	unsigned char bytes[1024 * 4];
	size_t es = lora_dtype_bits(dtype) / 8;

	while (n) {
		size_t k = n < 1024 ? n : 1024;
		for (size_t i = 0; i < k; i++)
			f[i] = (float)v[i];
		if (lora_from_f32(bytes, f, dtype, k) < 0)
			return lora_errf(err, "cannot write dtype %s", lora_dtype_name(dtype));
		if (lora_st_writer_write(&o->w, bytes, k * es, err) < 0)
			return -1;
		v += k;
		n -= k;
	}
	return 0;
}

int lora_peft_out_commit(struct lora_peft_out *o, struct lora_err *err)
{
	char *parent;
	int rc;

	o->writer_open = 0;
	if (lora_st_writer_commit(&o->w, err) < 0 || lora_fsync_dir(o->tmp_dir, err) < 0) {
		lora_peft_out_abort(o);
		return -1;
	}
	if (rename(o->tmp_dir, o->dir) < 0) {
		lora_errf(err, "cannot rename '%s' to '%s': %s", o->tmp_dir, o->dir, strerror(errno));
		lora_peft_out_abort(o);
		return -1;
	}
	parent = lora_dirname(o->dir);
	rc = parent ? lora_fsync_dir(parent, err) : lora_errf(err, "out of memory");
	free(parent);
	free(o->tmp_dir);
	free(o->dir);
	o->tmp_dir = o->dir = NULL;
	return rc;
}

void lora_peft_out_abort(struct lora_peft_out *o)
{
	if (o->writer_open)
		lora_st_writer_abort(&o->w);
	o->writer_open = 0;
	if (o->tmp_dir)
		lora_rm_rf(o->tmp_dir, NULL);
	free(o->tmp_dir);
	free(o->dir);
	o->tmp_dir = o->dir = NULL;
}

/* --------------------------------------------------------------- config */

/* The largest rank an adapter can have (PEFT: max(r, rank_pattern values)). */
static int max_rank(const struct lora_peft *p)
{
	int r = p->cfg.r;

	for (size_t i = 0; i < p->cfg.n_rank_pattern; i++)
		if (p->cfg.rank_pattern[i].value > r)
			r = (int)p->cfg.rank_pattern[i].value;
	for (size_t i = 0; i < p->n_modules; i++)
		if (p->modules[i].r > r)
			r = p->modules[i].r;
	return r;
}

/* target_modules as PEFT's add_weighted_adapter makes it: union of the lists, or "(re1)|(re2)". */
static cJSON *union_targets(const struct lora_combine_input *in, size_t n, struct lora_err *err)
{
	int regex = in[0].peft->cfg.target_regex != NULL;
	cJSON *a;

	for (size_t i = 1; i < n; i++)
		if ((in[i].peft->cfg.target_regex != NULL) != regex) {
			lora_errf(err, "'%s' and '%s' give target_modules in different forms (list and "
				       "regular expression)", in[0].label, in[i].label);
			return NULL;
		}
	if (regex) {
		struct lora_buf b = LORA_BUF_INIT;
		cJSON *s;
		for (size_t i = 0; i < n; i++)
			lora_buf_printf(&b, "%s(%s)", i ? "|" : "", in[i].peft->cfg.target_regex);
		s = b.oom ? NULL : cJSON_CreateString(b.data);
		lora_buf_free(&b);
		return s;
	}
	a = cJSON_CreateArray();
	for (size_t i = 0; a && i < n; i++) {
		const struct lora_peft_config *c = &in[i].peft->cfg;
		for (size_t k = 0; k < c->n_target_modules; k++) {
			int dup = 0;
			const cJSON *it;
			cJSON_ArrayForEach(it, a) dup |= !strcmp(it->valuestring, c->target_modules[k]);
			if (!dup)
				cJSON_AddItemToArray(a, cJSON_CreateString(c->target_modules[k]));
		}
	}
	return a;
}

/* modules_to_save: the union of the inputs' lists, or null. */
static cJSON *union_saved(const struct lora_combine_input *in, size_t n)
{
	cJSON *a = NULL;

	for (size_t i = 0; i < n; i++) {
		const struct lora_peft_config *c = &in[i].peft->cfg;
		for (size_t k = 0; k < c->n_modules_to_save; k++) {
			int dup = 0;
			const cJSON *it;
			if (!a && !(a = cJSON_CreateArray()))
				return NULL;
			cJSON_ArrayForEach(it, a) dup |= !strcmp(it->valuestring, c->modules_to_save[k]);
			if (!dup)
				cJSON_AddItemToArray(a, cJSON_CreateString(c->modules_to_save[k]));
		}
	}
	return a ? a : cJSON_CreateNull();
}

static int same_bytes(const struct lora_st_tensor *x, const struct lora_st_tensor *y)
{
	if (x->dtype != y->dtype || x->ndim != y->ndim || x->end - x->begin != y->end - y->begin)
		return 0;
	for (int d = 0; d < x->ndim; d++)
		if (x->shape[d] != y->shape[d])
			return 0;
	return !memcmp(x->data, y->data, x->end - x->begin);
}

/* The non-LoRA tensors of all inputs, by name; a name in several inputs must hold the same bytes. */
static const struct lora_st_tensor **union_extra(const struct lora_combine_input *in, size_t n,
						 size_t *count, struct lora_err *err)
{
	size_t cap = 0;
	const struct lora_st_tensor **e;

	*count = 0;
	for (size_t i = 0; i < n; i++)
		cap += in[i].peft->n_extra;
	if (!(e = calloc(cap + 1, sizeof(*e)))) {
		lora_errf(err, "out of memory");
		return NULL;
	}
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < in[i].peft->n_extra; j++) {
			const struct lora_st_tensor *t = in[i].peft->extra[j];
			size_t k = 0;
			while (k < *count && strcmp(e[k]->name, t->name))
				k++;
			if (k == *count) {
				e[(*count)++] = t;
			} else if (!same_bytes(e[k], t)) {
				lora_errf(err, "'%s' and an earlier input both hold '%s' with different "
					       "values; such tensors (modules_to_save) cannot be combined",
					  in[i].label, t->name);
				free(e);
				return NULL;
			}
		}
	return e;
}

static char *config_json(const struct lora_combine_input *in, size_t n, int r, struct lora_err *err)
{
	const struct lora_peft_config *c0 = &in[0].peft->cfg;
	cJSON *o = cJSON_CreateObject(), *t = union_targets(in, n, err);
	char *s;

	if (!t) {
		cJSON_Delete(o);
		return NULL;
	}
	cJSON_AddStringToObject(o, "peft_type", "LORA");
	if (c0->task_type)
		cJSON_AddStringToObject(o, "task_type", c0->task_type);
	else
		cJSON_AddNullToObject(o, "task_type");
	if (c0->base_model)
		cJSON_AddStringToObject(o, "base_model_name_or_path", c0->base_model);
	else
		cJSON_AddNullToObject(o, "base_model_name_or_path");
	cJSON_AddNumberToObject(o, "r", r);
	cJSON_AddNumberToObject(o, "lora_alpha", r);
	cJSON_AddNumberToObject(o, "lora_dropout", c0->lora_dropout);
	cJSON_AddStringToObject(o, "bias", "none");
	cJSON_AddBoolToObject(o, "fan_in_fan_out", c0->fan_in_fan_out);
	cJSON_AddBoolToObject(o, "use_rslora", 0);
	cJSON_AddItemToObject(o, "target_modules", t);
	cJSON_AddObjectToObject(o, "rank_pattern");
	cJSON_AddObjectToObject(o, "alpha_pattern");
	cJSON_AddItemToObject(o, "modules_to_save", union_saved(in, n));
	cJSON_AddBoolToObject(o, "init_lora_weights", 1);
	cJSON_AddBoolToObject(o, "inference_mode", 1);
	s = cJSON_Print(o);
	cJSON_Delete(o);
	if (!s)
		lora_errf(err, "out of memory");
	return s;
}

char *lora_combine_provenance(const struct lora_combine_input *in, size_t n,
			      const struct lora_combine_params *p, int rank_written)
{
	cJSON *o = cJSON_CreateObject(), *a;
	char *s;

	cJSON_AddStringToObject(o, "tool", "lora combine");
	cJSON_AddStringToObject(o, "method", lora_combine_method_name(p->method));
	cJSON_AddNumberToObject(o, "rank", rank_written);
	a = cJSON_AddArrayToObject(o, "inputs");
	for (size_t i = 0; i < n; i++) {
		cJSON *e = cJSON_CreateObject();
		if (in[i].ref)
			cJSON_AddStringToObject(e, "ref", in[i].ref);
		else
			cJSON_AddNullToObject(e, "ref");
		if (in[i].digest)
			cJSON_AddStringToObject(e, "digest", in[i].digest);
		else
			cJSON_AddNullToObject(e, "digest");
		cJSON_AddStringToObject(e, "label", in[i].label ? in[i].label : "");
		cJSON_AddNumberToObject(e, "weight", in[i].weight);
		cJSON_AddStringToObject(e, "method", lora_combine_method_name(p->method));
		cJSON_AddItemToArray(a, e);
	}
	s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	return s;
}

/* ------------------------------------------------------------- modules */

struct term {
	const struct lora_peft_module *m;
	double w;                     /* weight × scale of the input */
};

/* Output factors of one module into A [r, in], B [out, r] (zeroed by the caller). */
static int combine_module(const struct term *t, int k, int method, int r, double *A, double *B,
			  double *sv, double *kept, struct lora_err *err)
{
	uint64_t out = t[0].m->out, in = t[0].m->in;
	struct lora_lowrank *f = calloc((size_t)k, sizeof(*f));
	int K = 0, loaded = 0, rc = -1;
	double *Bs = NULL, *As = NULL, total = 0;

	if (!f)
		return lora_errf(err, "out of memory");
	for (int i = 0; i < k; i++) {
		if (lora_lowrank_load(t[i].m, &f[i], err) < 0)
			goto out;
		loaded++;
		K += f[i].r;
	}
	*kept = 1;
	if (method == LORA_COMBINE_CAT) {
		int off = 0;
		for (int i = 0; i < k; off += f[i].r, i++) {
			for (size_t j = 0; j < (size_t)f[i].r * in; j++)
				A[(size_t)off * in + j] = t[i].w * f[i].A[j];
			for (uint64_t o = 0; o < out; o++)
				for (int j = 0; j < f[i].r; j++)
					B[o * r + off + j] = f[i].B[o * f[i].r + j];
		}
	} else if (method == LORA_COMBINE_LINEAR) {
		*kept = NAN;
		for (int i = 0; i < k; i++) {
			double sb = sqrt(fabs(t[i].w)), sa = t[i].w >= 0 ? sb : -sb;
			if (f[i].r != r) {
				lora_errf(err, "the linear method needs equal ranks, but one input has rank "
					       "%d here and the output %d; use cat or svd", f[i].r, r);
				goto out;
			}
			for (size_t j = 0; j < (size_t)r * in; j++)
				A[j] += sa * f[i].A[j];
			for (size_t j = 0; j < out * (uint64_t)r; j++)
				B[j] += sb * f[i].B[j];
		}
	} else {
		int off = 0;
		if (!(Bs = calloc(out * K + 1, sizeof(double))) || !(As = calloc((size_t)K * in + 1, sizeof(double)))) {
			lora_errf(err, "out of memory");
			goto out;
		}
		for (int i = 0; i < k; off += f[i].r, i++) {
			for (size_t j = 0; j < (size_t)f[i].r * in; j++)
				As[(size_t)off * in + j] = t[i].w * f[i].A[j];
			for (uint64_t o = 0; o < out; o++)
				memcpy(Bs + o * K + off, f[i].B + o * f[i].r, (size_t)f[i].r * sizeof(double));
		}
		if (lora_lowrank_truncate(Bs, As, (int)out, K, (int)in, r, B, A, sv, &total, err) < 0)
			goto out;
		if (total > 0) {
			double s = 0;
			for (int j = 0; j < r; j++)
				s += sv[j] * sv[j];
			*kept = fmin(s / total, 1.0);  /* rounding can push a full rank sum past 1 */
		}
	}
	rc = 0;
out:
	for (int i = 0; i < loaded; i++)
		lora_lowrank_free(&f[i]);
	free(f);
	free(Bs);
	free(As);
	return rc;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The union of module names over the inputs, sorted. */
static const char **module_union(const struct lora_combine_input *in, size_t n, size_t *count)
{
	size_t cap = 0, k = 0;
	const char **names;

	for (size_t i = 0; i < n; i++)
		cap += in[i].peft->n_modules;
	names = calloc(cap + 1, sizeof(*names));
	if (!names)
		return NULL;
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < in[i].peft->n_modules; j++)
			names[k++] = in[i].peft->modules[j].name;
	qsort(names, k, sizeof(*names), cmp_str);
	*count = 0;
	for (size_t j = 0; j < k; j++)
		if (!*count || strcmp(names[*count - 1], names[j]))
			names[(*count)++] = names[j];
	return names;
}

/* Checks that need every input: ranks for linear, shapes, no extra tensors. */
static int check_inputs(const struct lora_combine_input *in, size_t n, const struct lora_combine_params *p,
			int *r_out, struct lora_err *err)
{
	int sum = 0, mx = 0;

	if (n == 0)
		return lora_errc(err, LORA_EUSAGE, "combine needs at least one adapter");
	for (size_t i = 0; i < n; i++) {
		const struct lora_peft *a = in[i].peft;
		int r = max_rank(a);
		if (!isfinite(in[i].weight))
			return lora_errc(err, LORA_EUSAGE, "weight of '%s' is not a finite number", in[i].label);
		if (a->cfg.fan_in_fan_out != in[0].peft->cfg.fan_in_fan_out)
			return lora_errf(err, "'%s' and '%s' disagree on fan_in_fan_out", in[0].label,
					 in[i].label);
		if (p->method == LORA_COMBINE_LINEAR && i && r != max_rank(in[0].peft))
			return lora_errf(err, "the linear method needs inputs of equal rank ('%s' has %d, "
					      "'%s' %d); use cat or svd", in[0].label, max_rank(in[0].peft),
					 in[i].label, r);
		sum += r;
		mx = r > mx ? r : mx;
	}
	/* PEFT: a single adapter is always combined linearly; cat and svd give the same ΔW then. */
	*r_out = p->method == LORA_COMBINE_CAT ? sum : p->method == LORA_COMBINE_SVD ?
		 (p->rank > 0 ? p->rank : mx) : mx;
	return 0;
}

int lora_combine(const struct lora_combine_input *in, size_t n, const struct lora_combine_params *p,
		 const char *out_dir, struct lora_combine_result *res, struct lora_err *err)
{
	struct lora_peft_out o = { 0 };
	struct lora_peft_out_module *om = NULL;
	struct lora_combine_result rr = { 0 };
	struct term *t = NULL;
	const char **names = NULL;
	const struct lora_st_tensor **extra = NULL;
	char *cfg = NULL, *prov = NULL;
	double *A = NULL, *B = NULL, *sv = NULL;
	enum lora_dtype dt = p->dtype ? p->dtype : LORA_DT_F32;
	size_t nm = 0, ne = 0;
	int r = 0, rc = -1, begun = 0;

	if (check_inputs(in, n, p, &r, err) < 0)
		return -1;
	if (dt != LORA_DT_F32 && dt != LORA_DT_BF16 && dt != LORA_DT_F16)
		return lora_errc(err, LORA_EUSAGE, "output dtype must be F32, BF16 or F16");
	if (!(names = module_union(in, n, &nm)) || !(om = calloc(nm + 1, sizeof(*om))) ||
	    !(t = calloc(n + 1, sizeof(*t))) || !(rr.modules = calloc(nm + 1, sizeof(*rr.modules))) ||
	    !(sv = calloc((size_t)r + 1, sizeof(double)))) {
		lora_errf(err, "out of memory");
		goto out;
	}
	/* every input that has a module must agree on its shape */
	for (size_t j = 0; j < nm; j++) {
		om[j].name = names[j];
		for (size_t i = 0; i < n; i++) {
			const struct lora_peft_module *m = lora_peft_find(in[i].peft, names[j]);
			if (!m)
				continue;
			if (!om[j].out) {
				om[j].out = m->out;
				om[j].in = m->in;
			} else if (m->out != om[j].out || m->in != om[j].in) {
				lora_errf(err, "module '%s' is [%llu, %llu] in '%s' but [%llu, %llu] in an "
					       "earlier input", names[j], (unsigned long long)m->out,
					  (unsigned long long)m->in, in[i].label,
					  (unsigned long long)om[j].out, (unsigned long long)om[j].in);
				goto out;
			}
		}
	}
	if (!(extra = union_extra(in, n, &ne, err)) || !(cfg = config_json(in, n, r, err)))
		goto out;
	prov = p->provenance_json ? NULL : lora_combine_provenance(in, n, p, r);
	if (lora_peft_out_begin(&o, out_dir, cfg, om, nm, r, dt, extra, ne,
				p->provenance_json ? p->provenance_json : prov, err) < 0)
		goto out;
	begun = 1;
	rr.r = r;
	for (size_t j = 0; j < nm; j++) {
		struct lora_combine_module *cm = &rr.modules[rr.n_modules++];
		uint64_t out = om[j].out, inn = om[j].in;
		int k = 0;

		for (size_t i = 0; i < n; i++) {
			const struct lora_peft_module *m = lora_peft_find(in[i].peft, names[j]);
			if (m)
				t[k++] = (struct term){ m, in[i].weight * m->scale };
		}
		cm->name = names[j];
		cm->n_inputs = k;
		A = calloc((size_t)r * inn + 1, sizeof(double));
		B = calloc(out * (uint64_t)r + 1, sizeof(double));
		if (!A || !B) {
			lora_errf(err, "out of memory");
			goto out;
		}
		if (combine_module(t, k, p->method, r, A, B, sv, &cm->kept, err) < 0) {
			lora_err_prefix(err, "module '%s'", names[j]);
			goto out;
		}
		{
			struct lora_lowrank f = { r, (int)out, (int)inn, 1.0, B, A };
			if (lora_lowrank_norm(&f, &cm->norm, err) < 0)
				goto out;
		}
		if (lora_peft_out_write(&o, A, (size_t)r * inn, dt, err) < 0 ||
		    lora_peft_out_write(&o, B, out * (uint64_t)r, dt, err) < 0)
			goto out;
		free(A);
		free(B);
		A = B = NULL;
	}
	for (size_t i = 0; i < ne; i++)
		if (lora_st_writer_write(&o.w, extra[i]->data, extra[i]->end - extra[i]->begin, err) < 0)
			goto out;
	begun = 0;
	if (lora_peft_out_commit(&o, err) < 0)
		goto out;
	rc = 0;
out:
	if (begun)
		lora_peft_out_abort(&o);
	free(A);
	free(B);
	free(sv);
	free(t);
	free(om);
	free(names);
	free(extra);
	free(prov);
	cJSON_free(cfg);
	if (rc == 0 && res)
		*res = rr;
	else
		lora_combine_result_free(&rr);
	return rc;
}

void lora_combine_result_free(struct lora_combine_result *res)
{
	free(res->modules);
	memset(res, 0, sizeof(*res));
}
