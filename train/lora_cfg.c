/* lora_cfg.c - LoRA settings, targets, initialization and dropout masks (see lora_cfg.h). */
#include "train/lora_cfg.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const lora_target_names[LORA_NTARGET] = {
	"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
};

static const char *const short_names[LORA_NTARGET] = {"q", "k", "v", "o", "gate", "up", "down"};

int lora_targets_parse(const char *s, unsigned *mask, struct lora_err *err)
{
	const char *p = s;

	*mask = 0;
	if (!strcmp(s, "all-linear") || !strcmp(s, "all")) {
		*mask = LORA_TARGETS_ALL;
		return 0;
	}
	while (*p) {
		size_t n = strcspn(p, ",");
		int found = -1;

		for (int t = 0; t < LORA_NTARGET; t++)
			if ((strlen(short_names[t]) == n && !strncmp(p, short_names[t], n)) ||
			    (strlen(lora_target_names[t]) == n && !strncmp(p, lora_target_names[t], n)))
				found = t;
		/* Phi-3's fused linears (train/net.h: lora_net_targets) */
		if (found < 0 && n == 8 && !strncmp(p, "qkv_proj", 8)) {
			*mask |= (1u << LORA_T_Q) | (1u << LORA_T_K) | (1u << LORA_T_V);
			found = LORA_T_Q;
		} else if (found < 0 && n == 12 && !strncmp(p, "gate_up_proj", 12)) {
			*mask |= (1u << LORA_T_GATE) | (1u << LORA_T_UP);
			found = LORA_T_GATE;
		}
		if (found < 0)
			return lora_errc(err, LORA_EUSAGE,
					 "unknown LoRA target '%.*s' (q,k,v,o,gate,up,down, qkv_proj, gate_up_proj or all-linear)",
					 (int)n, p);
		*mask |= 1u << found;
		p += n;
		if (*p == ',')
			p++;
	}
	if (!*mask)
		return lora_errc(err, LORA_EUSAGE, "no LoRA targets given");
	return 0;
}

void lora_targets_format(unsigned mask, char *buf, size_t len)
{
	size_t used = 0;

	if (len)
		buf[0] = 0;
	for (int t = 0; t < LORA_NTARGET; t++) {
		int n;

		if (!(mask & (1u << t)))
			continue;
		n = snprintf(buf + used, len - used, "%s%s", used ? "," : "", lora_target_names[t]);
		if (n < 0 || (size_t)n >= len - used)
			return;
		used += (size_t)n;
	}
}

int lora_module_name(char *buf, size_t len, int layer, enum lora_target t)
{
	return snprintf(buf, len, "model.layers.%d.%s.%s", layer, t <= LORA_T_O ? "self_attn" : "mlp",
			lora_target_names[t]);
}

int lora_module_parse(const char *name, int *layer, enum lora_target *t)
{
	const char *p;
	char *end;
	long l;

	if (strncmp(name, "model.layers.", 13))
		return -1;
	l = strtol(name + 13, &end, 10);
	if (end == name + 13 || l < 0 || l > 100000 || *end != '.')
		return -1;
	p = end + 1;
	for (int i = 0; i < LORA_NTARGET; i++) {
		char want[64];

		snprintf(want, sizeof(want), "%s.%s", i <= LORA_T_O ? "self_attn" : "mlp",
			 lora_target_names[i]);
		if (!strcmp(p, want)) {
			*layer = (int)l;
			*t = (enum lora_target)i;
			return 0;
		}
	}
	return -1;
}

void lora_cfg_defaults(struct lora_cfg *c)
{
	memset(c, 0, sizeof(*c));
	c->rank = 16;
	c->alpha = 32.0;
	c->targets = LORA_TARGETS_ALL;
	c->seed = 42;
}

double lora_scale(int r, double alpha, int rslora)
{
	return rslora ? alpha / sqrt((double)r) : alpha / (double)r;
}

/* ------------------------------------------------------------ random */

static uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

uint64_t lora_rand64(uint64_t key, uint64_t counter)
{
	return mix64(mix64(key) + (counter + 1) * 0x9e3779b97f4a7c15ull);
}

enum { PURPOSE_INIT = 1, PURPOSE_DROPOUT = 2 };

static uint64_t module_key(uint64_t seed, int purpose, uint64_t step, int layer, enum lora_target t)
{
	uint64_t k = mix64(seed ^ 0x6c6f7261ull);   /* "lora" */

	k = mix64(k + (uint64_t)purpose);
	k = mix64(k + step);
	return mix64(k + (uint64_t)layer * LORA_NTARGET + (uint64_t)t);
}

void lora_init_A(float *A, int r, int in, uint64_t seed, int layer, enum lora_target t)
{
	const uint64_t key = module_key(seed, PURPOSE_INIT, 0, layer, t);
	const double bound = 1.0 / sqrt((double)in);   /* gain √(2/(1+5)) · √(3/in) */

	for (size_t i = 0; i < (size_t)r * in; i++) {
		double u = (double)(lora_rand64(key, i) >> 11) * 0x1p-53;   /* [0, 1) */
		A[i] = (float)((2.0 * u - 1.0) * bound);
	}
}

void lora_dropout_mask(float *out, size_t first, size_t n, double p, uint64_t seed, uint64_t step,
		       int layer, enum lora_target t)
{
	const uint64_t key = module_key(seed, PURPOSE_DROPOUT, step, layer, t);
	const float keep = (float)(1.0 / (1.0 - p));
	/* drop when a 32-bit uniform falls below p */
	const uint64_t thresh = (uint64_t)(p * 4294967296.0);

	for (size_t i = 0; i < n; i++)
		out[i] = (lora_rand64(key, first + i) >> 32) < thresh ? 0.0f : keep;
}
