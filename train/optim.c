/* optim.c - AdamW, clipping and schedules as torch and transformers do them (see optim.h). */
#include "train/optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* torch rounds each tensor operation on its own; keep the compiler from fusing. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#else
#pragma GCC optimize("fp-contract=off")
#endif

void lora_optim_defaults(struct lora_optim_cfg *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->lr = 2e-4;
	cfg->beta1 = 0.9;
	cfg->beta2 = 0.999;
	cfg->eps = 1e-8;
	cfg->weight_decay = 0.0;
	cfg->max_grad_norm = 1.0;
	cfg->sched = LORA_SCHED_CONSTANT;
}

static const char *const sched_names[] = {"constant", "linear", "cosine"};

int lora_sched_parse(const char *s, enum lora_sched *out)
{
	for (int i = 0; i < 3; i++)
		if (!strcmp(s, sched_names[i])) {
			*out = (enum lora_sched)i;
			return 0;
		}
	return -1;
}

const char *lora_sched_name(enum lora_sched s)
{
	return (unsigned)s < 3 ? sched_names[s] : "?";
}

double lora_sched_lr(const struct lora_optim_cfg *cfg, long step)
{
	const double w = (double)cfg->warmup_steps;
	const double decay = (double)(cfg->total_steps - cfg->warmup_steps > 1
					      ? cfg->total_steps - cfg->warmup_steps : 1);
	double f;

	if (step < cfg->warmup_steps)
		return cfg->lr * ((double)step / (w > 1.0 ? w : 1.0));
	switch (cfg->sched) {
	case LORA_SCHED_LINEAR:
		f = (double)(cfg->total_steps - step) / decay;
		break;
	case LORA_SCHED_COSINE:
		f = 0.5 * (1.0 + cos(M_PI * 0.5 * 2.0 * ((double)(step - cfg->warmup_steps) / decay)));
		break;
	default:
		f = 1.0;
	}
	return cfg->lr * (f > 0.0 ? f : 0.0);
}

double lora_grad_norm(const float *g, size_t n)
{
	double s = 0.0;

	for (size_t i = 0; i < n; i++)
		s += (double)g[i] * g[i];
	return sqrt(s);
}

double lora_clip_grad_norm(float *g, size_t n, double max_norm)
{
	const double norm = lora_grad_norm(g, n);
	float coef;

	if (!(max_norm > 0.0))
		return norm;
	/* torch: clip_coef = max_norm / (total_norm + 1e-6), clamped to 1, all fp32 */
	coef = (float)max_norm / ((float)norm + 1e-6f);
	if (coef < 1.0f)
		for (size_t i = 0; i < n; i++)
			g[i] = g[i] * coef;
	return norm;
}

int lora_adamw_init(struct lora_adamw *opt, size_t n, struct lora_err *err)
{
	memset(opt, 0, sizeof(*opt));
	opt->m = calloc(n ? n : 1, sizeof(float));
	opt->v = calloc(n ? n : 1, sizeof(float));
	if (!opt->m || !opt->v) {
		lora_adamw_free(opt);
		return lora_errf(err, "adamw: out of memory for %zu parameters", n);
	}
	opt->n = n;
	return 0;
}

void lora_adamw_free(struct lora_adamw *opt)
{
	free(opt->m);
	free(opt->v);
	memset(opt, 0, sizeof(*opt));
}

void lora_adamw_consts(const struct lora_optim_cfg *cfg, long t, double lr, struct lora_cuda_adamw *k)
{
	/* Python scalars (double), cast to fp32 where they meet a tensor */
	const double bc1 = 1.0 - pow(cfg->beta1, (double)t);
	const double bc2 = 1.0 - pow(cfg->beta2, (double)t);

	k->decay = (float)(1.0 - lr * cfg->weight_decay);
	k->decay_on = cfg->weight_decay != 0.0;
	k->w1 = (float)(1.0 - cfg->beta1);
	k->b2 = (float)cfg->beta2;
	k->w2 = (float)(1.0 - cfg->beta2);
	k->neg_step = (float)-(lr / bc1);
	k->bc2_sqrt = (float)pow(bc2, 0.5);
	k->eps = (float)cfg->eps;
}

void lora_adamw_step(struct lora_adamw *opt, const struct lora_optim_cfg *cfg, float *param,
		     const float *grad, double lr)
{
	struct lora_cuda_adamw k;
	float *m = opt->m, *v = opt->v;

	lora_adamw_consts(cfg, ++opt->step, lr, &k);
	for (size_t i = 0; i < opt->n; i++) {
		const float g = grad[i];
		float p = param[i], d;

		if (k.decay_on)
			p = p * k.decay;
		m[i] = fmaf(k.w1, g - m[i], m[i]);
		v[i] = v[i] * k.b2;
		v[i] = v[i] + k.w2 * g * g;
		d = sqrtf(v[i]) / k.bc2_sqrt;
		d = d + k.eps;
		param[i] = p + k.neg_step * m[i] / d;
	}
}
