/*
 * eval.h - the evaluation loop: the token-weighted mean loss of a network
 * over a dataset (train/data.h), one pass in file order, forward only.  Used
 * by `lora eval` (every row whole, one a sequence) and by training's
 * evaluation rows (--eval-data / --eval-split, batched as training is).
 *
 *     struct lora_eval_opts eo = { .no_pack = 1, .pad_id = 0 };
 *     lora_eval_shape(d, 2048, &eo.batch, &eo.seq_len);   // rows whole, ~2048 positions a pass
 *     if (lora_eval_run(net, d, &eo, &res, err) < 0) return -1;
 *     if (!res.tokens) ...nothing to predict...; else printf("%f\n", res.loss);
 *
 * Labels as in transformers: position t predicts labels[t]; LORA_IGNORE
 * (-100) positions and the first position of each sequence carry no loss.
 */
#ifndef LORA_EVAL_H
#define LORA_EVAL_H

#include <stdint.h>

#include "libadapter/base/err.h"
#include "train/data.h"
#include "train/net.h"

struct lora_eval_opts {
	int batch;              /* B sequences per forward pass */
	int seq_len;            /* T positions per sequence */
	int no_pack;            /* one row per sequence (cut to T, padded) instead of packing */
	int32_t pad_id;         /* id of padding positions (never attended to, no loss) */
	const char *dump_path;  /* or NULL: write row i's logits [len_i, V] as F32 tensor "logits.i" of
				   this safetensors file (needs no_pack, batch 1 and T >= every row) */
	void (*progress)(void *ud, uint64_t done, uint64_t total);   /* forward passes */
	void *progress_ud;
};

struct lora_eval_result {
	double loss_sum;        /* sum of token cross-entropies (nats) */
	long tokens;            /* predicted tokens; 0: nothing to predict (loss is NaN) */
	double loss;            /* loss_sum / tokens */
	uint64_t passes;        /* forward passes run */
};

/*
 * The batch and T that keep every row whole, one row a sequence, about
 * tokens_per_pass positions a pass: T = the longest row (at least 2),
 * batch = max(1, tokens_per_pass / T), at most the number of rows.
 */
void lora_eval_shape(const struct lora_dataset *d, int tokens_per_pass, int *batch, int *seq_len);

int lora_eval_run(struct lora_net *net, const struct lora_dataset *d, const struct lora_eval_opts *o,
		  struct lora_eval_result *res, struct lora_err *err);

#endif
