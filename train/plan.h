/*
 * plan.h - how much memory a training run needs, before it starts: the table
 * users know from QLoRA write-ups, for full fine-tuning, LoRA (frozen 16-bit
 * base) and QLoRA (frozen NF4 base) side by side, from a model's config alone.
 *
 *     struct lora_plan_shape s;  struct lora_plan_opts o;  struct lora_plan p;
 *     lora_plan_shape_from_config(&cfg, &s, err);      // or _from_model (actual dtypes)
 *     lora_plan_opts_defaults(&o);  o.seq_len = 1024;
 *     lora_plan_compute(&s, &o, &p);
 *     p.col[LORA_PLAN_QLORA].total ...
 *
 * Two devices, two kinds of figure:
 *
 *   cpu   a model of OUR CPU trainer (train/model_cpu.c): every buffer it
 *         allocates, counted as the pages it touches, plus the pages of the
 *         mapped model file it reads.  This is the peak resident set of a
 *         training step, which tests/unit/test_plan.c measures.  The full
 *         fine-tuning column is the textbook count (no trainer here does it).
 *   cuda  an estimate for a CUDA trainer built like the CPU one: bf16
 *         activations, fp32 LoRA parameters and AdamW states, NF4 weights
 *         dequantized one matrix at a time, flash attention (no T x T
 *         scores), the loss head chunked, a fixed allowance for the CUDA
 *         context.  No GPU has checked it yet.
 *
 * Dimensions as in model.h: B batch rows, T positions, N = B·T, C hidden, F
 * intermediate, L layers, H heads, KV key/value heads, D head dim, V vocab,
 * r rank.  Sizes are bytes.
 */
#ifndef LORA_TRAIN_PLAN_H
#define LORA_TRAIN_PLAN_H

#include <stdint.h>

#include "libadapter/base/dtype.h"
#include "libadapter/base/err.h"
#include "libadapter/format/modeldir.h"

/* A model's shape, as far as memory is concerned. */
struct lora_plan_shape {
	char architecture[64];
	int C, F, L, H, KV, D, V;
	int max_pos;               /* max_position_embeddings, 0 when unknown */
	int tied;                  /* lm_head is the embedding */
	int qkv_bias, o_bias, mlp_bias;
	int qk_norm;               /* per-head RMSNorm of q and k (Qwen3) */
	int fused;                 /* q|k|v and gate|up are one linear each (Phi-3) */
	int gemma;                 /* Gemma 2 and 3: two more norms a layer, kept before them */
	int attn_cap;              /* Gemma 2: attention soft-capping's d/d score scratch (its
				      checkpoints all cap) */
	int local_rope;            /* Gemma 3: a second RoPE table for the sliding layers */
	enum lora_dtype dtype;     /* of the stored weights (bf16 when the config says nothing) */
	uint64_t n_params;         /* every weight of the model */
	uint64_t n_linear;         /* the decoder linears' weights (what NF4 quantizes) */
};

enum lora_plan_device { LORA_PLAN_CPU = 0, LORA_PLAN_CUDA };

/* What the lora program itself keeps resident (binary and shared libraries'
 * pages: `/usr/bin/time lora --version` shows ~9.5 MiB); part of the cpu
 * runtime row, so that a cpu total is the peak RSS of the whole process. */
#define LORA_PLAN_CPU_PROGRAM ((uint64_t)9 << 20)

struct lora_plan_opts {
	enum lora_plan_device device;
	int rank;                  /* r of every targeted linear */
	unsigned targets;          /* mask of enum lora_target */
	int batch, seq_len;        /* B, T (T 0: 512, or the model's limit when lower) */
	int grad_accum;            /* does not change memory; carried for the report */
	int checkpoint;            /* activation checkpointing */
	int paged;                 /* paged AdamW (cuda): states may spill to host memory */
	uint64_t program_bytes;    /* cpu: what the lora process keeps resident before any work
				      (binary and libraries: more when CUDA libraries are linked);
				      0: LORA_PLAN_CPU_PROGRAM.  `lora plan` measures its own. */
	double dropout;            /* LoRA dropout > 0 keeps the dropped input (cpu) */
	int quant_nf4;             /* the column the run would use: QLoRA (1) or LoRA (0) */
	int threads;               /* cpu: worker threads (per-thread attention and loss buffers) */
};
/* As lora train: r 16 on all linears, batch 4, grad-accum 4, 512 tokens, no
 * checkpointing, dropout 0.05, NF4; and paged AdamW, device cuda. */
void lora_plan_opts_defaults(struct lora_plan_opts *o);

enum lora_plan_method { LORA_PLAN_FULL = 0, LORA_PLAN_LORA, LORA_PLAN_QLORA, LORA_PLAN_NMETHOD };
extern const char *const lora_plan_method_names[LORA_PLAN_NMETHOD];   /* "full", "lora", "qlora" */

/* One column of the table. */
struct lora_plan_col {
	uint64_t weights;          /* frozen base as held (full: the weights being trained) */
	uint64_t lora;             /* LoRA A and B (fp32) */
	uint64_t grads;            /* gradients of what is trained */
	uint64_t optim;            /* AdamW m and v (full: + fp32 master weights) */
	uint64_t acts;             /* activations kept for backward, as the run is set (checkpointing or not) */
	uint64_t acts_ckpt;        /* ... with activation checkpointing */
	uint64_t acts_full;        /* ... without */
	uint64_t logits;           /* loss head: logits of one chunk of tokens (fp32) */
	uint64_t workspace;        /* backward scratch, attention scores, dequantized weights */
	uint64_t file_pages;       /* cpu: pages of the mapped model file read while quantizing */
	uint64_t runtime;          /* cuda: context and cuBLAS; cpu: code and BLAS buffers (typical figures) */
	uint64_t total;            /* sum of the rows above (acts as set) */
	uint64_t total_min;        /* total less paged optimizer states (= total unless paged) */
	uint64_t heap;             /* cpu: bytes the trainer allocates (touched or not), for tests */
};

struct lora_plan {
	struct lora_plan_opts opts;
	uint64_t n_lora;           /* LoRA parameters */
	struct lora_plan_col col[LORA_PLAN_NMETHOD];
};

/* From a parsed config.json; refuses architectures the trainer refuses. */
int lora_plan_shape_from_config(const struct lora_model_config *cfg, struct lora_plan_shape *s,
				struct lora_err *err);
/* From an open model folder: the config plus the weights' real dtype and biases. */
int lora_plan_shape_from_model(const struct lora_model *m, struct lora_plan_shape *s,
			       struct lora_err *err);

/* Fill p for s and o (o->batch, o->seq_len >= 1, o->rank >= 1). */
void lora_plan_compute(const struct lora_plan_shape *s, const struct lora_plan_opts *o,
		       struct lora_plan *p);

/*
 * The largest seq_len (at o->batch) and the largest batch (at o->seq_len)
 * whose total for method fits in `limit` bytes (everything resident, paged
 * states too); 0 when not even 1 fits.
 * seq_len is capped at s->max_pos (when known), batch at 65536.
 */
void lora_plan_fit(const struct lora_plan_shape *s, const struct lora_plan_opts *o,
		   enum lora_plan_method method, uint64_t limit, int *max_seq_len, int *max_batch);

#endif
