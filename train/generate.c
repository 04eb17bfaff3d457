/*
 * generate.c - text generation: the position bookkeeping over a backend's
 * key/value cache (net->be->kv_new / decode / kv_free; the CPU one is
 * decode_cpu.c), and the sampler.
 */
#include "train/generate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct lora_gen {
	struct lora_net *net;
	struct lora_kv *kv;       /* the backend's cache */
	int P;                    /* cache capacity in positions */
	int pos;                  /* positions cached */
};

int lora_gen_new(struct lora_gen **out, struct lora_net *net, int max_pos, struct lora_err *err)
{
	struct lora_gen *g;

	*out = NULL;
	if (!net->be->kv_new || !net->be->decode)
		return lora_errf(err, "the %s backend cannot generate", net->be->name);
	if (net->cfg.max_position_embeddings > 0 && max_pos > net->cfg.max_position_embeddings)
		max_pos = net->cfg.max_position_embeddings;
	if (max_pos < 1 || max_pos > (1 << 24))
		return lora_errf(err, "bad number of positions %d", max_pos);
	if (!(g = calloc(1, sizeof(*g))))
		return lora_errf(err, "out of memory");
	g->net = net;
	g->P = max_pos;
	if (net->be->kv_new(net, max_pos, &g->kv, err) < 0) {
		free(g);
		return -1;
	}
	*out = g;
	return 0;
}

void lora_gen_free(struct lora_gen *g)
{
	if (!g)
		return;
	if (g->kv && g->net->be->kv_free)
		g->net->be->kv_free(g->net, g->kv);
	free(g);
}

void lora_gen_reset(struct lora_gen *g)
{
	g->pos = 0;
}

int lora_gen_pos(const struct lora_gen *g)
{
	return g->pos;
}

int lora_gen_feed(struct lora_gen *g, const int32_t *ids, int n, float *logits, float *all,
		  struct lora_err *err)
{
	struct lora_net *net = g->net;

	if (n < 1)
		return lora_errf(err, "nothing to feed");
	if (n > g->P - g->pos)
		return lora_errf(err, "%d more tokens do not fit in the %d positions of the cache", n, g->P);
	for (int i = 0; i < n; i++)
		if (ids[i] < 0 || ids[i] >= net->V)
			return lora_errf(err, "token id %d outside the vocabulary (%d)", ids[i], net->V);
	if (net->be->decode(net, g->kv, g->pos, ids, n, logits, all, err) < 0)
		return -1;
	g->pos += n;
	return 0;
}

/* ------------------------------------------------------------ sampling */

int32_t lora_argmax(const float *logits, int V)
{
	int32_t best = 0;

	for (int i = 1; i < V; i++)
		if (logits[i] > logits[best])
			best = i;
	return best;
}

static int by_prob_desc(const void *a, const void *b)
{
	const float *x = a, *y = b;   /* pairs (prob, id) */

	if (x[0] != y[0])
		return x[0] < y[0] ? 1 : -1;
	return x[1] < y[1] ? -1 : x[1] > y[1];
}

int32_t lora_sample(const float *logits, int V, struct lora_sampler *s, float *scratch)
{
	float *pr = scratch;   /* [V] pairs (prob, id); ids < 2^24 are exact in a float */
	double m = -INFINITY, sum = 0.0, keep = 0.0, r, acc = 0.0;
	int n = V;

	if (!(s->temperature > 0))
		return lora_argmax(logits, V);
	for (int i = 0; i < V; i++)
		m = logits[i] > m ? logits[i] : m;
	for (int i = 0; i < V; i++) {
		double e = exp(((double)logits[i] - m) / s->temperature);
		pr[2 * i] = (float)e;
		pr[2 * i + 1] = (float)i;
		sum += e;
	}
	for (int i = 0; i < V; i++)
		pr[2 * i] = (float)(pr[2 * i] / sum);
	qsort(pr, (size_t)V, 2 * sizeof(float), by_prob_desc);
	if (s->top_p > 0 && s->top_p < 1) {
		for (n = 0; n < V; n++) {
			keep += pr[2 * n];
			if (keep >= s->top_p) {
				n++;
				break;
			}
		}
		n = n < 1 ? 1 : n > V ? V : n;
	} else {
		keep = 1.0;
	}
	if (n < V) {
		keep = 0.0;
		for (int i = 0; i < n; i++)
			keep += pr[2 * i];
	}
	/* uniform in [0, keep) from 53 random bits */
	r = (double)(lora_rand64(s->seed, s->n++) >> 11) * 0x1p-53 * keep;
	for (int i = 0; i < n; i++) {
		acc += pr[2 * i];
		if (r < acc)
			return (int32_t)pr[2 * i + 1];
	}
	return (int32_t)pr[2 * (n - 1) + 1];
}
