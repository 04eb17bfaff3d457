/*
 * optim.h - AdamW, gradient clipping and learning-rate schedules with the
 * semantics of torch.optim.AdamW and transformers' schedule helpers.
 *
 * All trainable parameters live in one flat fp32 array (the LoRA arena), so
 * the optimizer state is two more arrays of the same length:
 *
 *     struct lora_adamw opt;
 *     lora_adamw_init(&opt, n, err);
 *     for (step = 0; step < total; step++) {
 *             ... accumulate grad[0..n) ...
 *             norm = lora_clip_grad_norm(grad, n, cfg.max_grad_norm);
 *             lora_adamw_step(&opt, &cfg, param, grad, n, lora_sched_lr(&cfg, step));
 *     }
 *
 * AdamW per element, in fp32 with each operation rounded as torch rounds it
 * (scalars are computed in double, then cast to fp32 where torch casts them):
 *     p = p * (1 - lr * wd)
 *     m = m + (1 - b1) * (g - m)                  (torch.lerp, fused as torch's vector path)
 *     v = v * b2 + (1 - b2) * g * g
 *     p = p + (-lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 */
#ifndef LORA_TRAIN_OPTIM_H
#define LORA_TRAIN_OPTIM_H

#include <stddef.h>

#include "kernels/abi.h"
#include "libadapter/base/err.h"

enum lora_sched {
	LORA_SCHED_CONSTANT = 0,  /* get_constant_schedule_with_warmup */
	LORA_SCHED_LINEAR,        /* get_linear_schedule_with_warmup */
	LORA_SCHED_COSINE,        /* get_cosine_schedule_with_warmup (half a cycle) */
};

struct lora_optim_cfg {
	double lr;                /* peak learning rate, e.g. 2e-4 */
	double beta1, beta2;      /* 0.9, 0.999 */
	double eps;               /* 1e-8 */
	double weight_decay;      /* decoupled, e.g. 0.0 or 0.01 */
	double max_grad_norm;     /* clip the global L2 norm to this; <= 0: no clipping */
	enum lora_sched sched;
	long warmup_steps;
	long total_steps;
};

/* torch / transformers defaults: lr 2e-4, betas (0.9, 0.999), eps 1e-8, clip 1.0, constant. */
void lora_optim_defaults(struct lora_optim_cfg *cfg);

/* Parse "constant", "linear", "cosine"; -1 when unknown. */
int lora_sched_parse(const char *s, enum lora_sched *out);
const char *lora_sched_name(enum lora_sched s);

/*
 * Learning rate of the update that follows `step` completed updates (0-based,
 * as transformers' LambdaLR: the first update uses step 0, so with warmup it
 * has learning rate 0).
 */
double lora_sched_lr(const struct lora_optim_cfg *cfg, long step);

/* Global L2 norm of g[0..n), accumulated in double. */
double lora_grad_norm(const float *g, size_t n);

/*
 * torch.nn.utils.clip_grad_norm_: scale g by min(1, max / (norm + 1e-6)) in
 * fp32.  Returns the norm before clipping.  max <= 0: only the norm.
 */
double lora_clip_grad_norm(float *g, size_t n, double max_norm);

struct lora_adamw {
	size_t n;
	long step;                /* updates done */
	float *m;                 /* [n] first moment */
	float *v;                 /* [n] second moment */
};

int lora_adamw_init(struct lora_adamw *opt, size_t n, struct lora_err *err);
void lora_adamw_free(struct lora_adamw *opt);
/* One update of param[0..n) with grad at learning rate lr; increments opt->step. */
void lora_adamw_step(struct lora_adamw *opt, const struct lora_optim_cfg *cfg, float *param,
		     const float *grad, double lr);
/* The per-step scalars of update number t (1-based) at learning rate lr, as lora_adamw_step
 * uses them; the CUDA update (kernels/adamw.cu) gets the same values. */
void lora_adamw_consts(const struct lora_optim_cfg *cfg, long t, double lr, struct lora_cuda_adamw *k);

#endif
