/* peft.c - PEFT LoRA adapter folders: config, key mapping, ranks, ‖ΔW‖. */
#include "libadapter/format/peft.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cblas.h>
#include <cjson/cJSON.h>
#include <pcre2.h>

#include "libadapter/base/fsutil.h"

#define MAX_CONFIG (16u << 20)
#define KEY_PREFIX "base_model.model."

/* -------------------------------------------------------------- regexes */

/* Python-compatible enough for PEFT's patterns; NULL when the pattern is invalid. */
static pcre2_code *compile_re(const char *pat, int full)
{
	int ec;
	PCRE2_SIZE eo;
	uint32_t opts = PCRE2_UTF | PCRE2_ANCHORED | (full ? PCRE2_ENDANCHORED : 0);

	return pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, opts, &ec, &eo, NULL);
}

static int re_matches(pcre2_code *re, const char *s)
{
	pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
	int rc;

	if (!md)
		return 0;
	rc = pcre2_match(re, (PCRE2_SPTR)s, strlen(s), 0, 0, md, NULL);
	pcre2_match_data_free(md);
	return rc >= 0;
}

/* PEFT's get_pattern_key: re.match(rf"(.*\.)?({key})$", module). */
static pcre2_code *compile_pattern_key(const char *key)
{
	size_t n = strlen(key) + 16;
	char *pat = malloc(n);
	pcre2_code *re;

	if (!pat)
		return NULL;
	snprintf(pat, n, "(.*\\.)?(%s)$", key);
	re = compile_re(pat, 0);
	free(pat);
	return re;
}

/* --------------------------------------------------------------- config */

void lora_peft_config_free(struct lora_peft_config *c)
{
	free(c->peft_type);
	free(c->task_type);
	free(c->base_model);
	free(c->bias);
	free(c->target_regex);
	for (size_t i = 0; i < c->n_target_modules; i++)
		free(c->target_modules[i]);
	free(c->target_modules);
	for (size_t i = 0; i < c->n_modules_to_save; i++)
		free(c->modules_to_save[i]);
	free(c->modules_to_save);
	for (size_t i = 0; i < c->n_rank_pattern; i++)
		free(c->rank_pattern[i].key);
	free(c->rank_pattern);
	for (size_t i = 0; i < c->n_alpha_pattern; i++)
		free(c->alpha_pattern[i].key);
	free(c->alpha_pattern);
	memset(c, 0, sizeof(*c));
}

static char *dup_str(const cJSON *v)
{
	return cJSON_IsString(v) ? strdup(v->valuestring) : NULL;
}

static int str_list(const cJSON *v, char ***out, size_t *n, const char *label, const char *key,
		    struct lora_err *err)
{
	const cJSON *it;
	size_t k = 0;

	*out = NULL;
	*n = 0;
	if (!v || cJSON_IsNull(v))
		return 0;
	if (!cJSON_IsArray(v))
		return lora_errf(err, "'%s': %s is not a list", label, key);
	*out = calloc((size_t)cJSON_GetArraySize(v) + 1, sizeof(char *));
	if (!*out)
		return lora_errf(err, "out of memory");
	cJSON_ArrayForEach(it, v) {
		if (!cJSON_IsString(it))
			return lora_errf(err, "'%s': %s holds a non-string", label, key);
		if (!((*out)[k++] = strdup(it->valuestring)))
			return lora_errf(err, "out of memory");
		*n = k;
	}
	return 0;
}

static int patterns(const cJSON *v, struct lora_pattern **out, size_t *n, int want_int,
		    const char *label, const char *key, struct lora_err *err)
{
	const cJSON *it;
	size_t k = 0;

	*out = NULL;
	*n = 0;
	if (!v || cJSON_IsNull(v))
		return 0;
	if (!cJSON_IsObject(v))
		return lora_errf(err, "'%s': %s is not an object", label, key);
	*out = calloc((size_t)cJSON_GetArraySize(v) + 1, sizeof(**out));
	if (!*out)
		return lora_errf(err, "out of memory");
	cJSON_ArrayForEach(it, v) {
		pcre2_code *re;
		if (!cJSON_IsNumber(it) || !(it->valuedouble > 0) ||
		    (want_int && (it->valuedouble != floor(it->valuedouble) || it->valuedouble > 1e6)))
			return lora_errf(err, "'%s': %s value for '%s' must be a positive %s", label, key,
					 it->string, want_int ? "integer" : "number");
		re = compile_pattern_key(it->string);
		if (!re)
			return lora_errf(err, "'%s': %s key '%s' is not a valid regular expression", label,
					 key, it->string);
		pcre2_code_free(re);
		if (!((*out)[k].key = strdup(it->string)))
			return lora_errf(err, "out of memory");
		(*out)[k].value = it->valuedouble;
		*n = ++k;
	}
	return 0;
}

static int parse_fields(const cJSON *root, struct lora_peft_config *c, const char *label,
			struct lora_err *err)
{
	const cJSON *v;

	if (!cJSON_IsObject(root))
		return lora_errf(err, "'%s' is not a JSON object", label);
	c->peft_type = dup_str(cJSON_GetObjectItemCaseSensitive(root, "peft_type"));
	if (!c->peft_type)
		return lora_errf(err, "'%s' has no peft_type", label);
	if (strcmp(c->peft_type, "LORA"))
		return lora_errf(err, "'%s': peft_type '%s' is not supported (only LORA adapters)", label,
				 c->peft_type);
	if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "use_dora")))
		return lora_errf(err, "'%s': DoRA adapters (use_dora) are not supported", label);
	if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "lora_bias")))
		return lora_errf(err, "'%s': lora_bias is not supported", label);
	c->task_type = dup_str(cJSON_GetObjectItemCaseSensitive(root, "task_type"));
	c->base_model = dup_str(cJSON_GetObjectItemCaseSensitive(root, "base_model_name_or_path"));
	c->bias = dup_str(cJSON_GetObjectItemCaseSensitive(root, "bias"));
	if (!c->bias && !(c->bias = strdup("none")))
		return lora_errf(err, "out of memory");
	if (strcmp(c->bias, "none") && strcmp(c->bias, "all") && strcmp(c->bias, "lora_only"))
		return lora_errf(err, "'%s': bias '%s' is not one of none, all, lora_only", label, c->bias);
	v = cJSON_GetObjectItemCaseSensitive(root, "r");
	if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < 1 ||
	    v->valuedouble > 1e6)
		return lora_errf(err, "'%s': r must be a positive integer", label);
	c->r = (int)v->valuedouble;
	v = cJSON_GetObjectItemCaseSensitive(root, "lora_alpha");
	if (v && !cJSON_IsNull(v) && (!cJSON_IsNumber(v) || !(v->valuedouble > 0)))
		return lora_errf(err, "'%s': lora_alpha must be a positive number", label);
	c->lora_alpha = v && cJSON_IsNumber(v) ? v->valuedouble : 8.0;
	v = cJSON_GetObjectItemCaseSensitive(root, "lora_dropout");
	c->lora_dropout = cJSON_IsNumber(v) ? v->valuedouble : 0.0;
	c->use_rslora = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "use_rslora"));
	c->fan_in_fan_out = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "fan_in_fan_out"));
	v = cJSON_GetObjectItemCaseSensitive(root, "target_modules");
	if (cJSON_IsString(v)) {
		pcre2_code *re = compile_re(v->valuestring, 1);
		if (!re)
			return lora_errf(err, "'%s': target_modules '%s' is not a valid regular expression",
					 label, v->valuestring);
		pcre2_code_free(re);
		if (!(c->target_regex = strdup(v->valuestring)))
			return lora_errf(err, "out of memory");
	} else if (str_list(v, &c->target_modules, &c->n_target_modules, label, "target_modules",
			    err) < 0) {
		return -1;
	}
	if (str_list(cJSON_GetObjectItemCaseSensitive(root, "modules_to_save"), &c->modules_to_save,
		     &c->n_modules_to_save, label, "modules_to_save", err) < 0 ||
	    patterns(cJSON_GetObjectItemCaseSensitive(root, "rank_pattern"), &c->rank_pattern,
		     &c->n_rank_pattern, 1, label, "rank_pattern", err) < 0 ||
	    patterns(cJSON_GetObjectItemCaseSensitive(root, "alpha_pattern"), &c->alpha_pattern,
		     &c->n_alpha_pattern, 0, label, "alpha_pattern", err) < 0)
		return -1;
	return 0;
}

int lora_peft_config_parse(const char *json, size_t len, const char *label,
			   struct lora_peft_config *c, struct lora_err *err)
{
	cJSON *root;
	int rc;

	memset(c, 0, sizeof(*c));
	root = cJSON_ParseWithLength(json, len);
	if (!root)
		return lora_errf(err, "'%s' is not valid JSON", label);
	rc = parse_fields(root, c, label, err);
	cJSON_Delete(root);
	if (rc < 0)
		lora_peft_config_free(c);
	return rc;
}

static const struct lora_pattern *match_pattern(const struct lora_pattern *p, size_t n,
						const char *module)
{
	for (size_t i = 0; i < n; i++) {
		pcre2_code *re = compile_pattern_key(p[i].key);
		int hit = re && re_matches(re, module);
		pcre2_code_free(re);
		if (hit)
			return &p[i];
	}
	return NULL;
}

void lora_peft_module_params(const struct lora_peft_config *c, const char *module, int *r,
			     double *alpha, double *scale)
{
	const struct lora_pattern *rp = match_pattern(c->rank_pattern, c->n_rank_pattern, module);
	const struct lora_pattern *ap = match_pattern(c->alpha_pattern, c->n_alpha_pattern, module);

	*r = rp ? (int)rp->value : c->r;
	*alpha = ap ? ap->value : c->lora_alpha;
	*scale = c->use_rslora ? *alpha / sqrt((double)*r) : *alpha / *r;
}

int lora_peft_targets(const struct lora_peft_config *c, const char *module)
{
	size_t ml = strlen(module);

	if (c->target_regex) {
		pcre2_code *re = compile_re(c->target_regex, 1);
		int hit = re && re_matches(re, module);
		pcre2_code_free(re);
		return hit;
	}
	for (size_t i = 0; i < c->n_target_modules; i++) {
		const char *t = c->target_modules[i];
		size_t tl = strlen(t);
		if (!strcmp(module, t) ||
		    (ml > tl && module[ml - tl - 1] == '.' && !strcmp(module + ml - tl, t)))
			return 1;
		if (!strcmp(t, "all-linear"))
			return 1;
	}
	return 0;
}

/* -------------------------------------------------------------- adapter */

void lora_peft_close(struct lora_peft *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->n_modules; i++)
		free(p->modules[i].name);
	free(p->modules);
	free(p->extra);
	lora_st_close(p->st);
	lora_peft_config_free(&p->cfg);
	free(p->dir);
	free(p);
}

static int cmp_module(const void *a, const void *b)
{
	return strcmp(((const struct lora_peft_module *)a)->name,
		      ((const struct lora_peft_module *)b)->name);
}

/* "base_model.model.X.lora_A.weight" -> module "X", which = 'A'/'B'; 0 when not a LoRA key. */
static char *split_key(const char *key, char *which)
{
	static const char *suff[] = { ".lora_A.weight", ".lora_B.weight" };
	size_t kl = strlen(key), pl = strlen(KEY_PREFIX);
	const char *start = strncmp(key, KEY_PREFIX, pl) ? key : key + pl;

	for (int i = 0; i < 2; i++) {
		size_t sl = strlen(suff[i]);
		if (kl > sl && !strcmp(key + kl - sl, suff[i]) && (size_t)(key + kl - sl - start) > 0) {
			*which = i ? 'B' : 'A';
			return strndup(start, (size_t)(key + kl - sl - start));
		}
	}
	return NULL;
}

static struct lora_peft_module *get_module(struct lora_peft *p, const char *name)
{
	for (size_t i = 0; i < p->n_modules; i++)
		if (!strcmp(p->modules[i].name, name))
			return &p->modules[i];
	return NULL;
}

static int collect_modules(struct lora_peft *p, const char *label, struct lora_err *err)
{
	struct lora_st *st = p->st;

	p->modules = calloc(st->n_tensors + 1, sizeof(*p->modules));
	p->extra = calloc(st->n_tensors + 1, sizeof(*p->extra));
	if (!p->modules || !p->extra)
		return lora_errf(err, "out of memory");
	for (size_t i = 0; i < st->n_tensors; i++) {
		const struct lora_st_tensor *t = &st->tensors[i];
		struct lora_peft_module *m;
		char which = 0;
		char *name;

		p->n_params += t->nelem;
		p->bytes += t->end - t->begin;
		if (strstr(t->name, "lora_magnitude_vector"))
			return lora_errf(err, "'%s': DoRA adapters (lora_magnitude_vector) are not supported",
					 label);
		if (strstr(t->name, "lora_embedding_"))
			return lora_errf(err, "'%s': LoRA on embeddings (%s) is not supported", label, t->name);
		name = split_key(t->name, &which);
		if (!name) {
			p->extra[p->n_extra++] = t;
			continue;
		}
		if (!lora_dtype_is_float(t->dtype) || t->ndim != 2) {
			free(name);
			return lora_errf(err, "'%s': '%s' must be a 2-d float tensor", label, t->name);
		}
		m = get_module(p, name);
		if (!m) {
			m = &p->modules[p->n_modules++];
			m->name = name;
		} else {
			free(name);
		}
		if ((which == 'A' && m->A) || (which == 'B' && m->B))
			return lora_errf(err, "'%s': two lora_%c tensors for '%s'", label, which, m->name);
		if (which == 'A')
			m->A = t;
		else
			m->B = t;
		if (!p->dtype)
			p->dtype = t->dtype;
	}
	return 0;
}

static int check_modules(struct lora_peft *p, const char *label, struct lora_err *err)
{
	for (size_t i = 0; i < p->n_modules; i++) {
		struct lora_peft_module *m = &p->modules[i];
		if (!m->A || !m->B)
			return lora_errf(err, "'%s': module '%s' has lora_%c without lora_%c", label, m->name,
					 m->A ? 'A' : 'B', m->A ? 'B' : 'A');
		if (m->A->shape[0] != m->B->shape[1])
			return lora_errf(err,
					 "'%s': module '%s' ranks disagree: lora_A has %llu rows, lora_B %llu columns",
					 label, m->name, (unsigned long long)m->A->shape[0],
					 (unsigned long long)m->B->shape[1]);
		lora_peft_module_params(&p->cfg, m->name, &m->r, &m->alpha, &m->scale);
		if ((uint64_t)m->r != m->A->shape[0])
			return lora_errf(err, "'%s': module '%s' has rank %llu but the config says r=%d",
					 label, m->name, (unsigned long long)m->A->shape[0], m->r);
		m->in = m->A->shape[1];
		m->out = m->B->shape[0];
	}
	qsort(p->modules, p->n_modules, sizeof(*p->modules), cmp_module);
	if (p->n_modules == 0)
		return lora_errf(err, "'%s' holds no lora_A/lora_B tensors", label);
	return 0;
}

int lora_peft_open_files(const char *config_path, const char *weights_path, struct lora_peft **out,
			 struct lora_err *err)
{
	struct lora_peft *p = calloc(1, sizeof(*p));
	char *txt = NULL;
	size_t len;

	*out = NULL;
	if (!p)
		return lora_errf(err, "out of memory");
	if (lora_read_file(config_path, MAX_CONFIG, &txt, &len, err) < 0 ||
	    lora_peft_config_parse(txt, len, config_path, &p->cfg, err) < 0 ||
	    lora_st_open(weights_path, &p->st, err) < 0 ||
	    collect_modules(p, weights_path, err) < 0 || check_modules(p, weights_path, err) < 0) {
		free(txt);
		lora_peft_close(p);
		return -1;
	}
	free(txt);
	*out = p;
	return 0;
}

int lora_peft_open(const char *dir, struct lora_peft **out, struct lora_err *err)
{
	char *cfg = lora_path_join(dir, "adapter_config.json");
	char *w = lora_path_join(dir, "adapter_model.safetensors");
	char *bin = lora_path_join(dir, "adapter_model.bin");
	int rc = -1;

	*out = NULL;
	if (!cfg || !w || !bin) {
		lora_errf(err, "out of memory");
		goto out;
	}
	if (!lora_is_dir(dir)) {
		lora_errf(err, "'%s' is not an adapter folder", dir);
		goto out;
	}
	if (!lora_is_file(cfg)) {
		lora_errf(err, "no adapter_config.json in '%s'", dir);
		goto out;
	}
	if (!lora_is_file(w)) {
		if (lora_is_file(bin))
			lora_errf(err, "'%s' is a pickle file, which lora refuses (loading pickle runs "
				       "arbitrary code); save the adapter with safe_serialization=True", bin);
		else
			lora_errf(err, "no adapter_model.safetensors in '%s'", dir);
		goto out;
	}
	rc = lora_peft_open_files(cfg, w, out, err);
	if (rc == 0 && !((*out)->dir = strdup(dir))) {
		lora_peft_close(*out);
		*out = NULL;
		rc = lora_errf(err, "out of memory");
	}
out:
	free(cfg);
	free(w);
	free(bin);
	return rc;
}

const struct lora_peft_module *lora_peft_find(const struct lora_peft *p, const char *module)
{
	size_t lo = 0, hi = p->n_modules;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(module, p->modules[mid].name);
		if (c == 0)
			return &p->modules[mid];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

float *lora_peft_load_f32(const struct lora_st_tensor *t, struct lora_err *err)
{
	return lora_st_to_f32(t, err);
}

double *lora_peft_load_f64(const struct lora_st_tensor *t, struct lora_err *err)
{
	float *f = lora_st_to_f32(t, err);
	double *d;

	if (!f)
		return NULL;
	d = malloc((t->nelem ? t->nelem : 1) * sizeof(double));
	if (!d) {
		free(f);
		lora_errf(err, "out of memory");
		return NULL;
	}
	for (uint64_t i = 0; i < t->nelem; i++)
		d[i] = f[i];
	free(f);
	return d;
}

int lora_peft_delta_norm(const struct lora_peft_module *m, double *out, struct lora_err *err)
{
	int r = (int)m->A->shape[0], in = (int)m->in, o = (int)m->out;
	double *A = lora_peft_load_f64(m->A, err), *B = A ? lora_peft_load_f64(m->B, err) : NULL;
	double *g1 = NULL, *g2 = NULL, s = 0;

	if (!A || !B)
		goto fail;
	g1 = calloc((size_t)r * r, sizeof(double));
	g2 = calloc((size_t)r * r, sizeof(double));
	if (!g1 || !g2) {
		lora_errf(err, "out of memory");
		goto fail;
	}
	/* g1 = BᵀB (r×r) from B [out, r]; g2 = A·Aᵀ (r×r) from A [r, in]. */
	cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, r, o, 1.0, B, r, B, r, 0.0, g1, r);
	cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r, r, in, 1.0, A, in, A, in, 0.0, g2, r);
	/* tr(g1·g2) = Σ g1_ij g2_ji, and g2 is symmetric. */
	for (int i = 0; i < r * r; i++)
		s += g1[i] * g2[i];
	*out = fabs(m->scale) * sqrt(s > 0 ? s : 0);
	free(A);
	free(B);
	free(g1);
	free(g2);
	return 0;
fail:
	free(A);
	free(B);
	free(g1);
	free(g2);
	return -1;
}
