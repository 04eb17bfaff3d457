/*
 * diff.h - compare two LoRA adapters module by module, in factored space.
 *
 * For every module present in either adapter: ‖ΔW_A‖_F, ‖ΔW_B‖_F,
 * ‖ΔW_A − ΔW_B‖_F, the cosine ⟨ΔW_A, ΔW_B⟩_F / (‖ΔW_A‖‖ΔW_B‖) and the
 * subspace overlap of lowrank.h; plus the settings that differ and a summary.
 * A module present in one adapter only counts as ΔW = 0 in the other.
 *
 *     struct lora_diff_side a = { .peft = pa, .label = "ad1" }, b = { .peft = pb, .label = "ad2" };
 *     struct lora_diff d;
 *     if (lora_diff_run(&a, &b, 0, &d, &err) < 0) return cmd_fail(&err);
 *     ... d.modules[i].cmp.cosine ...
 *     lora_diff_free(&d);
 */
#ifndef LORA_DIFF_H
#define LORA_DIFF_H

#include <stddef.h>

#include "libadapter/base/err.h"
#include "libadapter/algebra/lowrank.h"
#include "libadapter/format/peft.h"

/* One adapter being compared, and what the store knows about it (NULL when unknown). */
struct lora_diff_side {
	const struct lora_peft *peft;
	const char *label;            /* what the user typed */
	const char *ref;              /* NAME:TAG */
	const char *digest;           /* "sha256:..." */
	const char *base_name;        /* the base model's name; NULL: the config's base_model_name_or_path */
	const char *base_fingerprint; /* "sha256:..." */
	const char *provenance_json;  /* a JSON value */
};

enum lora_diff_where { LORA_DIFF_BOTH = 0, LORA_DIFF_ONLY_A, LORA_DIFF_ONLY_B };

struct lora_diff_module {
	const char *name;             /* owned by the adapters */
	enum lora_diff_where where;
	int identical;                /* same factors byte for byte and the same scale */
	int shape_differs;            /* in both, but ΔW shapes differ: only norms are given */
	int r_a, r_b;                 /* 0 where absent */
	uint64_t out, in;
	struct lora_lowrank_cmp cmp;  /* only in A: norm_b = 0, distance = norm_a, cosine/overlap NAN */
};

/* One setting; values are JSON text ("8", "\"q_proj\"", "null"). */
struct lora_diff_setting {
	const char *key;
	char *a, *b;
	int same;
};

struct lora_diff {
	size_t n_modules;
	struct lora_diff_module *modules;  /* union of both, sorted by name */
	size_t n_settings;
	struct lora_diff_setting *settings;
	size_t n_common, n_only_a, n_only_b, n_identical;
	/* the whole adapter as one vector of all its ΔW */
	double norm_a, norm_b, distance, cosine;
	/* Σ⟨ΔW_A,ΔW_B⟩ / Σ‖ΔW_A‖‖ΔW_B‖ over common modules: the cosines weighted by ‖ΔW_A‖‖ΔW_B‖ */
	double weighted_cosine;
	double mean_overlap;          /* over common modules where it is defined; NAN if none */
};

/*
 * Compare a and b.  threads: worker threads for the modules (0 = one per
 * CPU); OpenBLAS is set to one thread while they run (its own threads would
 * compete with them on calls this small) and restored after.  On failure
 * the error names the module.
 */
int lora_diff_run(const struct lora_diff_side *a, const struct lora_diff_side *b, int threads,
		  struct lora_diff *d, struct lora_err *err);
void lora_diff_free(struct lora_diff *d);

/*
 * Per-layer sums over the modules of d, the layer being the first all-digit
 * component of a module's name ("model.layers.12.mlp.up_proj" -> 12; -1: not
 * in a numbered layer).  Sorted by layer, the -1 group last.  A module in one
 * adapter only, or whose shapes differ, adds ‖ΔW_A‖² + ‖ΔW_B‖² to d2 and
 * nothing to inner/den.  NULL when out of memory; free() it.
 */
struct lora_diff_layer {
	long idx;                     /* -1: modules outside numbered layers */
	double inner;                 /* Σ⟨ΔW_A, ΔW_B⟩ */
	double den;                   /* Σ‖ΔW_A‖‖ΔW_B‖ */
	double d2;                    /* Σ‖ΔW_A − ΔW_B‖² */
	double na2, nb2;              /* Σ‖ΔW_A‖², Σ‖ΔW_B‖² */
	size_t n;                     /* modules */
};
struct lora_diff_layer *lora_diff_layers(const struct lora_diff *d, size_t *n_out);
/* Cosine of a layer, all its ΔW as one vector, in [-1, 1]; NAN when one side is 0. */
double lora_diff_layer_cosine(const struct lora_diff_layer *l);

#endif
