/*
 * peft.h - a PEFT LoRA adapter: adapter_config.json + adapter_model.safetensors.
 *
 * Keys look like "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":
 * the module name is what lies between "base_model.model." and ".lora_A.weight"
 * ("model.layers.0.self_attn.q_proj"), and the base tensor it changes is
 * "<module>.weight".  lora_A is [r, in], lora_B is [out, r]; the update is
 * ΔW = scale · B·A with scale = alpha / r (alpha / sqrt(r) with use_rslora),
 * where r and alpha come from rank_pattern / alpha_pattern when a pattern
 * matches the module (PEFT's rule: the first key K for which the module name
 * matches the regex "(.*\.)?K$"), else from "r" / "lora_alpha".  With
 * fan_in_fan_out the base weight is stored [in, out] and ΔW is transposed.
 *
 * DoRA (use_dora or lora_magnitude_vector keys), non-LoRA PEFT types and
 * adapter_model.bin are refused by name.
 */
#ifndef LORA_PEFT_H
#define LORA_PEFT_H

#include <stddef.h>

#include "libadapter/base/err.h"
#include "libadapter/format/safetensors.h"

struct lora_pattern {
	char *key;
	double value;
};

struct lora_peft_config {
	char *peft_type;              /* "LORA" */
	char *task_type;              /* may be NULL */
	char *base_model;             /* base_model_name_or_path, may be NULL */
	char *bias;                   /* "none", "all", "lora_only" */
	int r;
	double lora_alpha;
	double lora_dropout;
	int use_rslora;
	int fan_in_fan_out;
	char **target_modules;        /* list form, or NULL */
	size_t n_target_modules;
	char *target_regex;           /* string form (a regex matched in full), or NULL */
	char **modules_to_save;
	size_t n_modules_to_save;
	struct lora_pattern *rank_pattern;
	size_t n_rank_pattern;
	struct lora_pattern *alpha_pattern;
	size_t n_alpha_pattern;
};

int lora_peft_config_parse(const char *json, size_t len, const char *label,
			   struct lora_peft_config *cfg, struct lora_err *err);
void lora_peft_config_free(struct lora_peft_config *cfg);
/* r and alpha for one module with the patterns applied; scale from them. */
void lora_peft_module_params(const struct lora_peft_config *cfg, const char *module, int *r,
			     double *alpha, double *scale);
/* Does `module` match target_modules (list: name or last component; string: full regex)? */
int lora_peft_targets(const struct lora_peft_config *cfg, const char *module);

struct lora_peft_module {
	char *name;                   /* "model.layers.0.self_attn.q_proj" */
	const struct lora_st_tensor *A;  /* [r, in] */
	const struct lora_st_tensor *B;  /* [out, r] */
	int r;
	double alpha;
	double scale;
	uint64_t in, out;             /* in = A cols, out = B rows; the base weight is [out, in], or [in, out] with fan_in_fan_out */
};

struct lora_peft {
	char *dir;                    /* or NULL when opened from two paths */
	struct lora_peft_config cfg;
	struct lora_st *st;
	size_t n_modules;
	struct lora_peft_module *modules;  /* sorted by name */
	size_t n_extra;               /* tensors that are not lora_A/lora_B (modules_to_save) */
	const struct lora_st_tensor **extra;
	uint64_t n_params;            /* elements of all tensors */
	uint64_t bytes;               /* tensor data bytes */
	enum lora_dtype dtype;        /* of the lora tensors (the first one's) */
};

int lora_peft_open(const char *dir, struct lora_peft **out, struct lora_err *err);
int lora_peft_open_files(const char *config_path, const char *weights_path, struct lora_peft **out,
			 struct lora_err *err);
void lora_peft_close(struct lora_peft *p);
const struct lora_peft_module *lora_peft_find(const struct lora_peft *p, const char *module);

/*
 * ‖ΔW‖_F = scale · sqrt(tr((BᵀB)(AAᵀ))), computed in fp64 from the r×r Gram
 * matrices, never forming ΔW.
 */
int lora_peft_delta_norm(const struct lora_peft_module *m, double *out, struct lora_err *err);

/* Load A or B of a module as malloc'd fp32 (row-major, shape as stored). */
float *lora_peft_load_f32(const struct lora_st_tensor *t, struct lora_err *err);
/* The same widened to fp64 (exactly). */
double *lora_peft_load_f64(const struct lora_st_tensor *t, struct lora_err *err);

#endif
