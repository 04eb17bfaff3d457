/*
 * data.h - training data: JSONL rows -> (ids, labels) -> [B, T] batches.
 *
 * One JSON object per line; blank lines are ignored.  A row has one of
 * these shapes (other keys, e.g. "id" or "source", are ignored):
 *
 *   {"text": "..."}                       loss on every token
 *   {"prompt": "...", "completion": "..."}  text = prompt + completion,
 *                                         loss on the completion's tokens only
 *   {"messages": [{"role": "user", "content": "..."}, ...]}
 *                                         rendered with the chat template
 *                                         (chat.h), loss on assistant turns
 *                                         (their content + end-of-turn token)
 *   {"input_ids": [...], "labels": [...]}  pre-tokenized; labels optional
 *                                         (default: the ids); -100 = no loss
 *
 * Labels are aligned with ids as in transformers: labels[t] is ids[t] or
 * LORA_IGNORE (-100), and the loss at position t is the cross-entropy of the
 * logits at t - 1 against labels[t] (the model shifts).  Tokens the tokenizer
 * adds in front (BOS) get no loss; text and prompt/completion rows end with
 * EOS, which does (so the model learns to stop), unless opts.no_eos.  A token
 * of a prompt/completion or chat row has a loss when the byte where it begins
 * lies inside the completion / an assistant turn.
 *
 * A bad row is an error "FILE:LINE: reason"; with skip_bad_rows it is counted
 * and skipped instead (the first reason is kept for a warning).
 *
 * Batches.  Rows are taken in an order that is a permutation of the rows,
 * new for each epoch (or file order when shuffle is 0):
 *
 *   order = identity; state = seed ^ (0x6A09E667F3BCC909 * (epoch + 1))   (mod 2^64)
 *   for i = n-1 down to 1:  j = next_below(i + 1); swap(order[i], order[j])
 *   next_below(m): r = splitmix64(&state), repeated while r >= 2^64 - (2^64 mod m); return r mod m
 *   splitmix64(&s): s += 0x9E3779B97F4A7C15; z = s;
 *                   z = (z ^ z >> 30) * 0xBF58476D1CE4E5B9; z = (z ^ z >> 27) * 0x94D049BB133111EB;
 *                   return z ^ z >> 31
 *
 * Packed (the default): the rows of the order are laid end to end and cut
 * into sequences of T tokens; batch b takes the next B sequences.  A row can
 * span two sequences; the last sequence of an epoch continues with the next
 * epoch.  --no-pack: one row per sequence, cut to T tokens and padded with
 * pad_id (labels LORA_IGNORE, len[b] says how many tokens are real).
 *
 * The batcher's position (epoch, row, token within row) is three integers:
 * save them in a checkpoint and set them back to resume bit for bit.
 *
 *     struct lora_chat chat;
 *     struct lora_err cerr = { 0 };
 *     struct lora_data_opts o = { .tok = tok, .vocab_size = cfg.vocab_size };
 *     if (lora_chat_detect(lora_tok_chat_template(tok), lora_tok_bos_str(tok), &chat, &cerr) == 0)
 *             o.chat = &chat;               // else messages rows fail with cerr.msg:
 *     else
 *             o.chat_error = cerr.msg;
 *     if (lora_data_load("train.jsonl", &o, &d, err) < 0) return -1;
 *     struct lora_batcher_opts bo = { .batch = B, .seq_len = T, .shuffle = 1, .seed = seed,
 *                                     .pad_id = lora_tok_pad(tok) >= 0 ? lora_tok_pad(tok) : lora_tok_eos(tok) };
 *     lora_batcher_new(d, &bo, &bt, err); lora_data_batch_init(&batch, B, T, err);
 *     while (step < steps) { lora_batcher_next(bt, &batch, err); ... }
 *     lora_batcher_get_pos(bt, &pos);       // into the checkpoint
 */
#ifndef LORA_DATA_H
#define LORA_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "libadapter/base/err.h"
#include "train/chat.h"
#include "train/tokenizer.h"

#define LORA_IGNORE (-100)

enum lora_row_kind { LORA_ROW_TEXT, LORA_ROW_PROMPT, LORA_ROW_CHAT, LORA_ROW_TOKENS, LORA_ROW_KINDS };

struct lora_data_opts {
	const struct lora_tok *tok;     /* NULL: only {"input_ids"} rows can be read */
	const struct lora_chat *chat;   /* NULL: {"messages"} rows are bad rows ... */
	const char *chat_error;         /* ... and this says why (e.g. lora_chat_detect's message) */
	int32_t vocab_size;             /* every id must be below it (the model's); 0: no check beyond
					   the tokenizer's own vocab for input_ids rows */
	int skip_bad_rows;              /* count and skip bad rows instead of failing */
	int no_eos;                     /* do not append EOS to text / prompt-completion rows */
	int keep_unlabelled;            /* keep rows with no label to learn (evaluation reads them all) */
	int line_words;                 /* messages begin "'FILE' line N: ", not "FILE:N: " (lora eval) */
};

struct lora_dataset {
	size_t n_rows;
	size_t *off;                    /* (n_rows + 1) row r is ids[off[r] .. off[r+1]) */
	int32_t *ids;                   /* (off[n_rows]) */
	int32_t *labels;                /* (off[n_rows]) LORA_IGNORE where no loss */
	size_t *line;                   /* (n_rows) the row's line in the file (1-based) */
	size_t n_lines;                 /* lines read, blank ones included */
	size_t n_skipped;               /* bad rows skipped (skip_bad_rows) */
	char first_skip[512];           /* "FILE:LINE: reason" of the first skipped row */
	size_t n_kind[LORA_ROW_KINDS];  /* rows of each shape */
	uint64_t n_tokens, n_loss_tokens;   /* all ids; labels != LORA_IGNORE */
};

/* Read a JSONL file. */
int lora_data_load(const char *path, const struct lora_data_opts *o, struct lora_dataset **out,
		   struct lora_err *err);
/* The same from memory; `label` stands for the file name in messages. */
int lora_data_parse(const char *buf, size_t len, const char *label, const struct lora_data_opts *o,
		    struct lora_dataset **out, struct lora_err *err);
void lora_data_free(struct lora_dataset *d);

/*
 * Move a fraction of the rows, chosen by the seed (the order of "epoch"
 * UINT64_MAX), into a new dataset *eval; both keep file order.  At least one
 * row goes to each side.
 */
int lora_data_split(struct lora_dataset *d, double frac, uint64_t seed, struct lora_dataset **eval,
		    struct lora_err *err);

/* The row order of an epoch (the permutation above) into order[0..n). */
void lora_data_order(size_t n, uint64_t seed, uint64_t epoch, size_t *order);

/* ---------------------------------------------------------------- batches */

struct lora_batcher_opts {
	int batch;          /* B */
	int seq_len;        /* T */
	int no_pack;        /* one row per sequence, truncated / padded */
	int shuffle;        /* a new order each epoch; 0: file order */
	int one_pass;       /* stop after one epoch (evaluation); the last batch is padded */
	int32_t pad_id;     /* padding id (its labels are LORA_IGNORE) */
	uint64_t seed;
};

struct lora_data_pos {
	uint64_t epoch;     /* epochs completed */
	uint64_t row;       /* index into this epoch's order of the next row */
	uint64_t tok;       /* tokens of that row already used (packing) */
};

struct lora_data_batch {
	int B, T;
	int32_t *ids;       /* (B, T) */
	int32_t *labels;    /* (B, T) */
	int32_t *len;       /* (B) real tokens in each sequence (the rest is padding) */
	int64_t n_targets;  /* positions t >= 1 with labels != LORA_IGNORE: terms of the loss */
};

int lora_data_batch_init(struct lora_data_batch *b, int B, int T, struct lora_err *err);
void lora_data_batch_free(struct lora_data_batch *b);

struct lora_batcher;
int lora_batcher_new(const struct lora_dataset *d, const struct lora_batcher_opts *o,
		     struct lora_batcher **out, struct lora_err *err);
void lora_batcher_free(struct lora_batcher *b);
/*
 * Fill the next batch (b must be initialised with the same B and T).
 * Returns 1, or 0 when a one-pass batcher has nothing left; -1 on error.
 */
int lora_batcher_next(struct lora_batcher *bt, struct lora_data_batch *b, struct lora_err *err);
void lora_batcher_get_pos(const struct lora_batcher *bt, struct lora_data_pos *pos);
int lora_batcher_set_pos(struct lora_batcher *bt, const struct lora_data_pos *pos, struct lora_err *err);
/* Batches in one epoch: ceil(tokens / (B*T)) packed, ceil(rows / B) otherwise. */
uint64_t lora_batcher_epoch_batches(const struct lora_batcher *bt);
/* Rows cut to T tokens so far (--no-pack). */
uint64_t lora_batcher_truncated(const struct lora_batcher *bt);

#endif
