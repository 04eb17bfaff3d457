/*
 * plan.c - the plan: which base tensors change, and by which terms.
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
/* -------------------------------------------------------------------- plan */

static int target_cmp(const void *a, const void *b)
{
	return strcmp(((const struct lora_merge_target *)a)->module,
		      ((const struct lora_merge_target *)b)->module);
}

struct lora_merge_target *lora_merge_plan_find(const struct lora_merge_plan *p, const char *module)
{
	struct lora_merge_target key = { .module = (char *)module };

	if (!p->n)
		return NULL;
	return bsearch(&key, p->t, p->n, sizeof(*p->t), target_cmp);
}

static struct lora_merge_target *plan_get(struct lora_merge_plan *p, const char *module,
					  const struct lora_st_tensor *bt, struct lora_err *err)
{
	struct lora_merge_target *t = lora_merge_plan_find(p, module), *nt;
	size_t at = 0;

	if (t)
		return t;
	while (at < p->n && strcmp(p->t[at].module, module) < 0)
		at++;
	nt = realloc(p->t, (p->n + 1) * sizeof(*nt));
	if (!nt) {
		lora_errf(err, "out of memory");
		return NULL;
	}
	p->t = nt;
	memmove(&p->t[at + 1], &p->t[at], (p->n - at) * sizeof(*nt));
	t = &p->t[at];
	memset(t, 0, sizeof(*t));
	p->n++;
	t->module = strdup(module);
	t->name = t->module ? malloc(strlen(module) + 8) : NULL;
	if (!t->name) {
		lora_errf(err, "out of memory");
		return NULL;   /* freed with the plan */
	}
	sprintf(t->name, "%s.weight", module);
	t->rows = bt->shape[0];
	t->cols = bt->shape[1];
	return t;
}

static void fmt_shape(const struct lora_st_tensor *t, char *buf, size_t n)
{
	size_t k = 0;

	k += (size_t)snprintf(buf + k, n - k, "[");
	for (int d = 0; d < t->ndim && k < n; d++)
		k += (size_t)snprintf(buf + k, n - k, "%s%llu", d ? ", " : "",
				      (unsigned long long)t->shape[d]);
	if (k < n)
		snprintf(buf + k, n - k, "]");
}

static int check_module(const struct lora_merge_adapter *a, const struct lora_peft_module *mod,
			const struct lora_model *m, const char *label, const char *name,
			const struct lora_st_tensor **out, struct lora_err *err)
{
	const struct lora_model_tensor *mt = lora_model_find(m, name);
	const struct lora_st_tensor *T, *A = mod->A, *B = mod->B;
	uint64_t r, in, outd, e0, e1;
	char s1[96], s2[96];
	int fifo = a->peft->cfg.fan_in_fan_out;

	if (!mt)
		return lora_errf(err, "adapter '%s' targets '%s', which base '%s' does not have",
				 a->ref, mod->name, label);
	T = mt->t;
	if (!A || !B || A->ndim != 2 || B->ndim != 2 || A->shape[0] != B->shape[1] ||
	    !lora_dtype_is_float(A->dtype) || !lora_dtype_is_float(B->dtype) ||
	    A->dtype == LORA_DT_F64 || B->dtype == LORA_DT_F64)
		return lora_errf(err, "adapter '%s': module '%s' has malformed lora_A/lora_B tensors",
				 a->ref, mod->name);
	r = A->shape[0];
	in = A->shape[1];
	outd = B->shape[0];
	if (r == 0 || r > 65536)
		return lora_errf(err, "adapter '%s': module '%s' has rank %llu", a->ref, mod->name,
				 (unsigned long long)r);
	if (T->ndim != 2 || !lora_merge_is_float(T->dtype)) {
		fmt_shape(T, s1, sizeof(s1));
		return lora_errf(err, "adapter '%s' targets '%s', but base tensor '%s' is %s %s, not a "
				      "2-d F16/BF16/F32 weight", a->ref, mod->name, name,
				 lora_dtype_name(T->dtype), s1);
	}
	e0 = fifo ? in : outd;
	e1 = fifo ? outd : in;
	if (T->shape[0] != e0 || T->shape[1] != e1) {
		fmt_shape(T, s1, sizeof(s1));
		snprintf(s2, sizeof(s2), "[%llu, %llu]", (unsigned long long)e0, (unsigned long long)e1);
		return lora_errf(err, "shape mismatch: adapter '%s' makes a %s update for '%s', but "
				      "base '%s' has it as %s", a->ref, s2, name, label, s1);
	}
	if (T->shape[0] > INT_MAX || T->shape[1] > INT_MAX)
		return lora_errf(err, "tensor '%s' is too large for BLAS", name);
	*out = T;
	return 0;
}

int lora_merge_plan_add(struct lora_merge_plan *p, const struct lora_model *m, const char *label,
			const struct lora_merge_set *set, double sign, struct lora_err *err)
{
	for (size_t i = 0; i < set->n; i++) {
		const struct lora_merge_adapter *a = &set->a[i];
		const struct lora_peft *P = a->peft;

		if (P->n_extra)
			return lora_errf(err, "adapter '%s' holds %zu tensors besides lora_A/lora_B "
					      "(modules_to_save or biases, e.g. '%s'); merge does not "
					      "support them", a->ref, P->n_extra, P->extra[0]->name);
		if (P->n_modules == 0)
			return lora_errf(err, "adapter '%s' has no LoRA modules", a->ref);
		for (size_t j = 0; j < P->n_modules; j++) {
			const struct lora_peft_module *mod = &P->modules[j];
			const struct lora_st_tensor *T = NULL;
			struct lora_merge_target *t;
			struct lora_merge_term *nt;
			char *name = malloc(strlen(mod->name) + 8);

			if (!name)
				return lora_errf(err, "out of memory");
			sprintf(name, "%s.weight", mod->name);
			if (check_module(a, mod, m, label, name, &T, err) < 0) {
				free(name);
				return -1;
			}
			free(name);
			if (!(t = plan_get(p, mod->name, T, err)))
				return -1;
			nt = realloc(t->terms, (t->n_terms + 1) * sizeof(*nt));
			if (!nt)
				return lora_errf(err, "out of memory");
			t->terms = nt;
			nt[t->n_terms].mod = mod;
			nt[t->n_terms].coef = sign * a->weight * mod->scale;
			nt[t->n_terms].fifo = P->cfg.fan_in_fan_out;
			t->n_terms++;
		}
	}
	return 0;
}

void lora_merge_plan_free(struct lora_merge_plan *p)
{
	for (size_t i = 0; i < p->n; i++) {
		free(p->t[i].module);
		free(p->t[i].name);
		free(p->t[i].terms);
	}
	free(p->t);
	p->t = NULL;
	p->n = 0;
}

