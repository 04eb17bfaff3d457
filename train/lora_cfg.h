/*
 * lora_cfg.h - LoRA settings, target modules, PEFT initialization and dropout.
 *
 * A LoRA module on a frozen linear W [out, in] adds scale · B·A·x with
 *     A [r, in]   Kaiming-uniform with a = √5, i.e. U(-1/√in, 1/√in) (PEFT's default)
 *     B [out, r]  zero
 *     scale = alpha / r, or alpha / √r with rsLoRA;
 * dropout (probability p) applies to x on the LoRA path only, scaled by 1/(1-p)
 * as torch.nn.Dropout does.  Random numbers come from a counter-based hash of
 * (seed, purpose, indices), so a value never depends on the order in which
 * modules are built or on how a computation is split (recomputation in
 * backward sees the same dropout mask).
 */
#ifndef LORA_TRAIN_LORA_H
#define LORA_TRAIN_LORA_H

#include <stddef.h>
#include <stdint.h>

#include "libadapter/base/err.h"

/* The seven linear layers of a Llama decoder block, in PEFT's naming. */
enum lora_target {
	LORA_T_Q = 0, LORA_T_K, LORA_T_V, LORA_T_O, LORA_T_GATE, LORA_T_UP, LORA_T_DOWN,
	LORA_NTARGET
};
#define LORA_TARGETS_ALL ((1u << LORA_NTARGET) - 1)

extern const char *const lora_target_names[LORA_NTARGET];   /* "q_proj", ... "down_proj" */

/*
 * Parse a comma-separated target list: short names (q,k,v,o,gate,up,down),
 * PEFT names (q_proj, ...), Phi-3's fused qkv_proj (= q,k,v) and gate_up_proj
 * (= gate,up), or "all-linear".  Fills a bit mask of lora_target; a model maps
 * it onto its own linears with lora_net_targets (train/net.h).
 */
int lora_targets_parse(const char *s, unsigned *mask, struct lora_err *err);
/* "q_proj,v_proj" style list into buf (for messages and manifests). */
void lora_targets_format(unsigned mask, char *buf, size_t len);

/* Full module name, e.g. "model.layers.3.self_attn.q_proj"; returns snprintf's count. */
int lora_module_name(char *buf, size_t len, int layer, enum lora_target t);
/* Inverse of lora_module_name: 0 and layer/target, or -1 when not a decoder linear. */
int lora_module_parse(const char *name, int *layer, enum lora_target *t);

struct lora_cfg {
	int rank;            /* r */
	double alpha;        /* lora_alpha */
	int rslora;          /* scale alpha/sqrt(r) */
	double dropout;      /* lora_dropout, [0, 1) */
	unsigned targets;    /* mask of lora_target */
	uint64_t seed;       /* initialization and dropout */
};

/* r 16, alpha 32, no rsLoRA, dropout 0, all linear layers, seed 42. */
void lora_cfg_defaults(struct lora_cfg *c);
double lora_scale(int r, double alpha, int rslora);

/* Fill A [r, in] with PEFT's initialization for module (layer, t) under seed. */
void lora_init_A(float *A, int r, int in, uint64_t seed, int layer, enum lora_target t);

/*
 * Dropout keep-mask values for elements [first, first + n) of one (step,
 * layer, target) activation: 0 or 1/(1-p).  Deterministic in its arguments;
 * element i's value does not depend on first or n.
 */
void lora_dropout_mask(float *out, size_t first, size_t n, double p, uint64_t seed, uint64_t step,
		       int layer, enum lora_target t);

/* The counter-based generator: 64 random bits for (key, counter). */
uint64_t lora_rand64(uint64_t key, uint64_t counter);

#endif
