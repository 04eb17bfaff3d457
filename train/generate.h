/*
 * generate.h - text generation with a lora_net: an incremental forward
 * pass over a key/value cache (the backend's decode hook, net.h), and the
 * sampler.
 *
 *     struct lora_gen *g;
 *     float *logits = malloc(sizeof(float) * net->V);
 *     lora_gen_new(&g, net, max_positions, err);
 *     lora_gen_feed(g, prompt_ids, n_prompt, logits, err);      // prefill: logits of the last
 *     for (;;) {
 *             int32_t id = lora_sample(logits, net->V, &sp, scratch);
 *             if (id == eos || lora_gen_pos(g) == max_positions) break;
 *             lora_gen_feed(g, &id, 1, logits, err);            // one step
 *     }
 *     lora_gen_free(g);
 *
 * On the CPU backend (decode_cpu.c) the arithmetic is the reference's
 * (model_cpu.c): fp32, the frozen
 * weights dequantized a chunk of rows at a time, LoRA as x·Aᵀ·Bᵀ·scale, no
 * dropout.  Only the order of some sums differs (attention of one query at a
 * time), so the logits of a token equal those of a full forward pass over
 * the same prefix to a few ulps (tests/unit/test_generate.c).
 *
 * Cache layout per layer:  K, V  [KV, P, D]   (P = max positions), fp32.
 */
#ifndef LORA_TRAIN_GENERATE_H
#define LORA_TRAIN_GENERATE_H

#include <stdint.h>

#include "libadapter/base/err.h"
#include "train/net.h"

struct lora_gen;

/* A cache for up to max_pos positions (at most the model's max_position_embeddings when known). */
int lora_gen_new(struct lora_gen **out, struct lora_net *net, int max_pos, struct lora_err *err);
void lora_gen_free(struct lora_gen *g);
/* Forget every cached position (the next feed starts at position 0). */
void lora_gen_reset(struct lora_gen *g);
/* Positions cached so far. */
int lora_gen_pos(const struct lora_gen *g);

/*
 * Run n tokens at the next n positions, adding them to the cache.  `logits`
 * (may be NULL) receives the logits [V] of the last of them; `all` (may be
 * NULL) receives the logits [n, V] of each.  Fails when the cache is full or
 * an id is outside the vocabulary.
 */
int lora_gen_feed(struct lora_gen *g, const int32_t *ids, int n, float *logits, float *all,
		  struct lora_err *err);

/* ------------------------------------------------------------ sampling */

struct lora_sampler {
	double temperature;      /* 0: greedy (argmax, the lowest id on a tie) */
	double top_p;            /* nucleus: keep the most likely tokens whose mass reaches top_p; 1: all */
	uint64_t seed;
	uint64_t n;              /* draws so far (the counter of the random stream) */
};

/*
 * Pick the next token from logits [V].  With temperature > 0: softmax of
 * logits / temperature, restricted to the top_p nucleus (at least one
 * token), sampled with a counter-based generator of (seed, n), so a run is
 * reproducible.  `scratch` holds 2·V floats.
 */
int32_t lora_sample(const float *logits, int V, struct lora_sampler *s, float *scratch);

/* Index of the largest logit (the lowest on a tie). */
int32_t lora_argmax(const float *logits, int V);

#endif
