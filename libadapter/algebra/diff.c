/* diff.c - module-by-module comparison of two adapters (see diff.h). */
#include "libadapter/algebra/diff.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cblas.h>
#include <cjson/cJSON.h>

#include "libadapter/base/blas.h"
#include "libadapter/base/par.h"

/* ------------------------------------------------------------ settings */

static char *json_text(cJSON *v)
{
	char *s = v ? cJSON_PrintUnformatted(v) : NULL;

	cJSON_Delete(v);
	return s;
}

static cJSON *str_or_null(const char *s)
{
	return s ? cJSON_CreateString(s) : cJSON_CreateNull();
}

static cJSON *targets(const struct lora_peft_config *c)
{
	cJSON *a;

	if (c->target_regex)
		return cJSON_CreateString(c->target_regex);
	a = cJSON_CreateArray();
	for (size_t i = 0; a && i < c->n_target_modules; i++)
		cJSON_AddItemToArray(a, cJSON_CreateString(c->target_modules[i]));
	return a;
}

static cJSON *strings(char **v, size_t n)
{
	cJSON *a;

	if (!v)
		return cJSON_CreateNull();
	a = cJSON_CreateArray();
	for (size_t i = 0; a && i < n; i++)
		cJSON_AddItemToArray(a, cJSON_CreateString(v[i]));
	return a;
}

static cJSON *patterns(const struct lora_pattern *p, size_t n)
{
	cJSON *o = cJSON_CreateObject();

	for (size_t i = 0; o && i < n; i++)
		cJSON_AddNumberToObject(o, p[i].key, p[i].value);
	return o;
}

static cJSON *raw_or_null(const char *json)
{
	cJSON *v = json ? cJSON_Parse(json) : NULL;

	return v ? v : cJSON_CreateNull();
}

enum { N_SETTINGS = 16 };

/* The JSON value of setting i for one side; the key in *key. */
static char *setting(const struct lora_diff_side *s, int i, const char **key)
{
	const struct lora_peft *p = s->peft;
	const struct lora_peft_config *c = &p->cfg;

	switch (i) {
	case 0: *key = "base_model";
		return json_text(str_or_null(s->base_name ? s->base_name : c->base_model));
	case 1: *key = "base_fingerprint"; return json_text(str_or_null(s->base_fingerprint));
	case 2: *key = "r"; return json_text(cJSON_CreateNumber(c->r));
	case 3: *key = "lora_alpha"; return json_text(cJSON_CreateNumber(c->lora_alpha));
	case 4: *key = "use_rslora"; return json_text(cJSON_CreateBool(c->use_rslora));
	case 5: *key = "fan_in_fan_out"; return json_text(cJSON_CreateBool(c->fan_in_fan_out));
	case 6: *key = "target_modules"; return json_text(targets(c));
	case 7: *key = "rank_pattern"; return json_text(patterns(c->rank_pattern, c->n_rank_pattern));
	case 8: *key = "alpha_pattern"; return json_text(patterns(c->alpha_pattern, c->n_alpha_pattern));
	case 9: *key = "modules_to_save";
		return json_text(strings(c->modules_to_save, c->n_modules_to_save));
	case 10: *key = "bias"; return json_text(str_or_null(c->bias));
	case 11: *key = "task_type"; return json_text(str_or_null(c->task_type));
	case 12: *key = "dtype"; return json_text(cJSON_CreateString(lora_dtype_name(p->dtype)));
	case 13: *key = "modules"; return json_text(cJSON_CreateNumber((double)p->n_modules));
	case 14: *key = "parameters"; return json_text(cJSON_CreateNumber((double)p->n_params));
	default: *key = "provenance"; return json_text(raw_or_null(s->provenance_json));
	}
}

static int settings(const struct lora_diff_side *a, const struct lora_diff_side *b, struct lora_diff *d,
		    struct lora_err *err)
{
	d->settings = calloc(N_SETTINGS, sizeof(*d->settings));
	if (!d->settings)
		return lora_errf(err, "out of memory");
	for (int i = 0; i < N_SETTINGS; i++) {
		struct lora_diff_setting *s = &d->settings[i];
		s->a = setting(a, i, &s->key);
		s->b = setting(b, i, &s->key);
		d->n_settings = (size_t)i + 1;
		if (!s->a || !s->b)
			return lora_errf(err, "out of memory");
		s->same = !strcmp(s->a, s->b);
	}
	return 0;
}

/* ------------------------------------------------------------- modules */

static int same_tensor(const struct lora_st_tensor *x, const struct lora_st_tensor *y)
{
	if (x->dtype != y->dtype || x->ndim != y->ndim || x->end - x->begin != y->end - y->begin)
		return 0;
	for (int i = 0; i < x->ndim; i++)
		if (x->shape[i] != y->shape[i])
			return 0;
	return x->data == y->data || !memcmp(x->data, y->data, x->end - x->begin);
}

static int compare_module(const struct lora_peft_module *ma, const struct lora_peft_module *mb,
			  struct lora_diff_module *dm, struct lora_err *err)
{
	struct lora_lowrank_cmp *c = &dm->cmp;
	const struct lora_peft_module *pair[2] = { ma, mb };
	struct lora_lowrank fa, fb;
	size_t K;
	double *GB, *GA;
	int need_qr = 0, rc = -1;

	memset(c, 0, sizeof(*c));
	c->cosine = c->overlap = NAN;
	if (!mb) {
		if (lora_module_norm(ma, &c->norm_a, err) < 0)
			return -1;
		c->distance = c->norm_a;
		return 0;
	}
	if (!ma) {
		if (lora_module_norm(mb, &c->norm_b, err) < 0)
			return -1;
		c->distance = c->norm_b;
		return 0;
	}
	if (ma->out != mb->out || ma->in != mb->in) {
		dm->shape_differs = 1;
		if (lora_module_norm(ma, &c->norm_a, err) < 0 || lora_module_norm(mb, &c->norm_b, err) < 0)
			return -1;
		c->distance = NAN;
		return 0;
	}
	if (ma->scale == mb->scale && same_tensor(ma->A, mb->A) && same_tensor(ma->B, mb->B)) {
		/* Same bytes: the figures are exact, no arithmetic needed. */
		dm->identical = 1;
		if (lora_module_norm(ma, &c->norm_a, err) < 0)
			return -1;
		c->norm_b = c->norm_a;
		c->inner = c->norm_a * c->norm_a;
		if (c->norm_a > 0) {
			c->cosine = 1;
			c->overlap = 1;
		}
		return 0;
	}
	K = (size_t)ma->r + (size_t)mb->r;
	GB = calloc(K * K, sizeof(double));
	GA = calloc(K * K, sizeof(double));
	if (!GB || !GA) {
		lora_errf(err, "out of memory");
		goto out;
	}
	if (lora_grams_tensors(pair, 2, GB, GA, err) < 0 ||
	    lora_lowrank_compare_grams(GB, GA, ma->r, mb->r, ma->scale, mb->scale, c, &need_qr, err) < 0)
		goto out;
	if (need_qr) {
		/* nearly equal: the accurate distance needs the factors themselves */
		if (lora_lowrank_load(ma, &fa, err) < 0)
			goto out;
		if (lora_lowrank_load(mb, &fb, err) < 0) {
			lora_lowrank_free(&fa);
			goto out;
		}
		rc = lora_lowrank_distance_qr(&fa, &fb, &c->distance, err);
		lora_lowrank_free(&fa);
		lora_lowrank_free(&fb);
		goto out;
	}
	rc = 0;
out:
	free(GB);
	free(GA);
	return rc;
}

/* The union of module names, both lists being sorted. */
static int pair_modules(const struct lora_peft *a, const struct lora_peft *b, struct lora_diff *d,
			const struct lora_peft_module ***pa, const struct lora_peft_module ***pb,
			struct lora_err *err)
{
	size_t i = 0, j = 0, n = 0, cap = a->n_modules + b->n_modules;

	d->modules = calloc(cap + 1, sizeof(*d->modules));
	*pa = calloc(cap + 1, sizeof(**pa));
	*pb = calloc(cap + 1, sizeof(**pb));
	if (!d->modules || !*pa || !*pb)
		return lora_errf(err, "out of memory");
	while (i < a->n_modules || j < b->n_modules) {
		const struct lora_peft_module *x = i < a->n_modules ? &a->modules[i] : NULL;
		const struct lora_peft_module *y = j < b->n_modules ? &b->modules[j] : NULL;
		int c = !x ? 1 : !y ? -1 : strcmp(x->name, y->name);
		struct lora_diff_module *m = &d->modules[n];

		(*pa)[n] = c <= 0 ? x : NULL;
		(*pb)[n] = c >= 0 ? y : NULL;
		i += c <= 0;
		j += c >= 0;
		m->name = c <= 0 ? x->name : y->name;
		m->where = c == 0 ? LORA_DIFF_BOTH : c < 0 ? LORA_DIFF_ONLY_A : LORA_DIFF_ONLY_B;
		m->r_a = c <= 0 ? x->r : 0;
		m->r_b = c >= 0 ? y->r : 0;
		m->out = c <= 0 ? x->out : y->out;
		m->in = c <= 0 ? x->in : y->in;
		n++;
	}
	d->n_modules = n;
	return 0;
}

/* --------------------------------------------------------------- workers */

struct pool {
	struct lora_diff *d;
	const struct lora_peft_module **pa, **pb;
};

static int diff_one(void *ctx, size_t i, struct lora_err *err)
{
	struct pool *p = ctx;

	if (compare_module(p->pa[i], p->pb[i], &p->d->modules[i], err) < 0) {
		lora_err_prefix(err, "module '%s'", p->d->modules[i].name);
		return -1;
	}
	return 0;
}

static int run_pool(struct pool *p, int threads, struct lora_err *err)
{
	int blas_threads, rc;

	/*
	 * The modules are small BLAS calls: one module per thread beats OpenBLAS
	 * splitting each call (its threads would also compete with ours).
	 */
	blas_threads = lora_blas_single();
	rc = lora_par_for(p->d->n_modules, threads, diff_one, p, err);
	lora_blas_restore(blas_threads);
	return rc;
}

/* --------------------------------------------------------------- summary */

/* A cosine from sums that rounding pushed just past ±1. */
static double clamp1(double c)
{
	return c > 1 ? 1 : c < -1 ? -1 : c;
}

static void summarise(struct lora_diff *d)
{
	double na2 = 0, nb2 = 0, d2 = 0, inner = 0, wden = 0, ov = 0;
	size_t n_ov = 0;

	for (size_t i = 0; i < d->n_modules; i++) {
		const struct lora_diff_module *m = &d->modules[i];
		const struct lora_lowrank_cmp *c = &m->cmp;

		na2 += c->norm_a * c->norm_a;
		nb2 += c->norm_b * c->norm_b;
		if (m->where == LORA_DIFF_ONLY_A) {
			d->n_only_a++;
			d2 += c->norm_a * c->norm_a;
			continue;
		}
		if (m->where == LORA_DIFF_ONLY_B) {
			d->n_only_b++;
			d2 += c->norm_b * c->norm_b;
			continue;
		}
		d->n_common++;
		d->n_identical += m->identical;
		if (m->shape_differs) {
			/* different weights entirely: no overlap between them */
			d2 += c->norm_a * c->norm_a + c->norm_b * c->norm_b;
			continue;
		}
		d2 += c->distance * c->distance;
		inner += c->inner;
		wden += c->norm_a * c->norm_b;
		if (!isnan(c->overlap)) {
			ov += c->overlap;
			n_ov++;
		}
	}
	d->norm_a = sqrt(na2);
	d->norm_b = sqrt(nb2);
	d->distance = sqrt(d2);
	d->cosine = d->norm_a > 0 && d->norm_b > 0 ? clamp1(inner / (d->norm_a * d->norm_b)) : NAN;
	d->weighted_cosine = wden > 0 ? clamp1(inner / wden) : NAN;
	d->mean_overlap = n_ov ? ov / (double)n_ov : NAN;
}

int lora_diff_run(const struct lora_diff_side *a, const struct lora_diff_side *b, int threads,
		  struct lora_diff *d, struct lora_err *err)
{
	struct pool p = { 0 };
	int rc = -1;

	memset(d, 0, sizeof(*d));
	if (settings(a, b, d, err) < 0 || pair_modules(a->peft, b->peft, d, &p.pa, &p.pb, err) < 0)
		goto out;
	p.d = d;
	if (run_pool(&p, threads, err) < 0)
		goto out;
	summarise(d);
	rc = 0;
out:
	free(p.pa);
	free(p.pb);
	if (rc)
		lora_diff_free(d);
	return rc;
}

void lora_diff_free(struct lora_diff *d)
{
	for (size_t i = 0; i < d->n_settings; i++) {
		cJSON_free(d->settings[i].a);
		cJSON_free(d->settings[i].b);
	}
	free(d->settings);
	free(d->modules);
	memset(d, 0, sizeof(*d));
}

/* -------------------------------------------------------------- layers */

/* The first all-digit component of a module name ("model.layers.12.mlp" -> 12), else -1. */
static long layer_of(const char *name)
{
	const char *p = name;

	while ((p = strchr(p, '.'))) {
		const char *q = ++p;
		while (isdigit((unsigned char)*q))
			q++;
		if (q > p && (*q == '.' || !*q))
			return strtol(p, NULL, 10);
	}
	return -1;
}

static int cmp_layer(const void *x, const void *y)
{
	long a = ((const struct lora_diff_layer *)x)->idx, b = ((const struct lora_diff_layer *)y)->idx;
	return (a > b) - (a < b);
}

struct lora_diff_layer *lora_diff_layers(const struct lora_diff *d, size_t *n_out)
{
	struct lora_diff_layer *L = calloc(d->n_modules + 1, sizeof(*L));
	size_t n = 0;

	if (!L)
		return NULL;
	for (size_t i = 0; i < d->n_modules; i++) {
		const struct lora_diff_module *m = &d->modules[i];
		long idx = layer_of(m->name);
		struct lora_diff_layer *l = NULL;
		for (size_t k = 0; k < n && !l; k++)
			if (L[k].idx == idx)
				l = &L[k];
		if (!l) {
			l = &L[n++];
			l->idx = idx;
		}
		l->n++;
		l->na2 += m->cmp.norm_a * m->cmp.norm_a;
		l->nb2 += m->cmp.norm_b * m->cmp.norm_b;
		if (m->shape_differs)
			l->d2 += m->cmp.norm_a * m->cmp.norm_a + m->cmp.norm_b * m->cmp.norm_b;
		else
			l->d2 += m->cmp.distance * m->cmp.distance;
		if (m->where == LORA_DIFF_BOTH && !m->shape_differs) {
			l->inner += m->cmp.inner;
			l->den += m->cmp.norm_a * m->cmp.norm_b;
		}
	}
	qsort(L, n, sizeof(*L), cmp_layer);
	/* numbered layers first, the rest last */
	if (n && L[0].idx == -1) {
		struct lora_diff_layer other = L[0];
		memmove(L, L + 1, (n - 1) * sizeof(*L));
		L[n - 1] = other;
	}
	*n_out = n;
	return L;
}

double lora_diff_layer_cosine(const struct lora_diff_layer *l)
{
	double c = l->na2 > 0 && l->nb2 > 0 ? l->inner / sqrt(l->na2 * l->nb2) : NAN;
	return c > 1 ? 1 : c < -1 ? -1 : c;
}
