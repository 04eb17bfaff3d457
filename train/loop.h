/*
 * loop.h - the training loop: from a base model and a JSONL data file to a
 * trained LoRA adapter, with metrics, checkpoints, resume, and the package
 * added to the store.  Library code: it returns errors and reports progress
 * through a callback; cmd/train.c decides what the user sees.
 *
 *     struct lora_train_opts o;
 *     lora_train_opts_defaults(&o);
 *     o.base_dir = "SmolLM2-135M"; o.data_path = "train.jsonl"; o.work_dir = wd;
 *     struct lora_trainer *tr;
 *     if (lora_trainer_open(&tr, &o, err) < 0) ...
 *     rc = lora_trainer_run(tr, on_progress, ud, &stop_flag, err);   // 0 done, 1 stopped, -1
 *     if (rc == 0) lora_trainer_publish(tr, store_dir, "sql:v1", NULL, digest, err);
 *     lora_trainer_close(tr);
 *
 * One optimizer step takes G (--grad-accum) micro-batches of B rows of T
 * tokens from the data batcher (train/data.h).  Its loss is the mean token
 * cross-entropy over all G micro-batches together (the sum of every labelled
 * token's loss divided by their count, as transformers' Trainer computes it
 * with num_items_in_batch), the gradient is that loss's, clipped to
 * max_grad_norm, and AdamW updates at the learning rate of the schedule:
 *
 *     step s = 0 .. total-1:  lr = lora_sched_lr(cfg, s)   (warmup, then cosine/linear/constant)
 *
 * Warmup W < 1 is a fraction: ceil(W · total) steps (transformers'
 * warmup_ratio); W >= 1 is a count.  With --epochs, total = ceil(E · batches
 * per epoch / G).
 *
 * Determinism: the initialization and dropout are counter-based (lora_cfg.h), the
 * data order a seeded permutation per epoch (data.h), so the state after step
 * s is a function of (options, data, s).  A checkpoint holds that state;
 * resuming from it gives bit-identical weights on the CPU backend with the
 * same thread count.
 *
 * Stopping: *stop (set by a signal handler) is looked at between
 * micro-batches; the loop then drops the unfinished step, writes a checkpoint
 * of the last finished one and returns 1.  A non-finite loss or gradient norm
 * is an error naming the step; the checkpoint on disk (the last good one) is
 * left as it is.
 */
#ifndef LORA_TRAIN_LOOP_H
#define LORA_TRAIN_LOOP_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "libadapter/base/err.h"
#include "train/lora_cfg.h"
#include "train/net.h"
#include "train/optim.h"

struct lora_trainer;

struct lora_train_opts {
	/* inputs */
	const char *base_dir;         /* Hugging Face model folder */
	const char *data_path;        /* JSONL rows (data.h) */
	const char *eval_path;        /* JSONL rows for evaluation, or NULL */
	double eval_split;            /* (0, 0.5]: hold out this fraction of data_path; 0: none */
	int skip_bad_rows;            /* count and skip bad rows instead of failing */
	int no_pack;                  /* one row per sequence, padded (default: packed) */
	const char *chat_template;    /* "chatml" / "llama3" for {"messages"} rows; NULL: the model's own */
	/* shape of a step */
	int seq_len;                  /* T; 0: min(512, the model's max positions) */
	int batch;                    /* B rows per micro-batch */
	int grad_accum;               /* G micro-batches per optimizer step */
	long steps;                   /* optimizer steps; 0: from epochs */
	double epochs;                /* passes over the data when steps is 0 */
	/* LoRA and optimizer */
	struct lora_cfg lora;         /* rank, alpha, rslora, dropout, targets; lora.seed = seed */
	struct lora_optim_cfg optim;  /* lr, betas, eps, weight_decay, max_grad_norm, sched */
	double warmup;                /* < 1: fraction of the steps; >= 1: steps */
	uint64_t seed;                /* initialization, dropout, data order and split */
	enum lora_quant quant;        /* frozen weights: NF4 (QLoRA) or as stored */
	int grad_checkpoint;          /* recompute activations in backward */
	/* running */
	long eval_every;              /* steps between evaluations; 0: about 10 per run */
	long save_every;              /* steps between checkpoints; 0: 100 */
	int threads;                  /* 0: as the BLAS library decides */
	const char *device;           /* "auto", "cpu" or "cuda" */
	const char *work_dir;         /* checkpoint and log (ckpt.h); must be set */
	int resume;                   /* continue from work_dir's checkpoint */
	const char *base_name;        /* for adapter_config / manifest; NULL: base_dir's last part */
	/* told by the program (not saved in checkpoints) */
	const char *user;             /* signer identity of a key without one (lora_import_opts) */
	const char *created;          /* the manifest's "created" time (RFC 3339); NULL: now */
	const char *cuda_plugin;      /* liblora_cuda.so to load (train/cuda.h); NULL: beside lora */
};

/* The QLoRA recipe: r 16, alpha 32, dropout 0.05, all-linear, nf4, lr 2e-4, cosine,
 * warmup 0.03, max-grad-norm 0.3, weight decay 0, batch 4, grad-accum 4, 1 epoch, seed 42. */
void lora_train_opts_defaults(struct lora_train_opts *o);

/*
 * Fill o with the options a checkpoint in work_dir was made with (paths
 * included), so `--resume` needs nothing but the name; the caller then applies
 * what the user gave on top.  Strings point into *keep (free() it after the
 * run).  -1 with "no checkpoint ..." when there is none.
 */
int lora_train_opts_from_checkpoint(const char *work_dir, struct lora_train_opts *o, char **keep,
				    struct lora_err *err);

/* What the loop knows once it is open (for the caller's messages). */
struct lora_train_info {
	const char *device;           /* "cpu" */
	const char *device_note;      /* why auto chose it, or NULL */
	long total_steps, warmup_steps, start_step;   /* start_step > 0 after --resume */
	int seq_len;
	size_t train_rows, eval_rows, skipped_rows;
	const char *first_skipped;    /* "FILE:LINE: reason" of the first skipped row, or "" */
	uint64_t train_tokens;        /* tokens of the training rows */
	size_t n_params;              /* trainable */
	double tokens_per_step;       /* B · G · T */
	double epochs;                /* the steps expressed in passes over the data */
};
const struct lora_train_info *lora_trainer_info(const struct lora_trainer *tr);

enum lora_train_event {
	LORA_EV_STEP = 0,             /* an optimizer step finished */
	LORA_EV_EVAL,                 /* an evaluation finished */
	LORA_EV_SAVE,                 /* a checkpoint was written */
};

struct lora_train_progress {
	enum lora_train_event ev;
	long step, total_steps;       /* steps done (1-based after the first step) */
	double loss;                  /* LORA_EV_STEP: the step's train loss */
	double lr, grad_norm;         /* the step's learning rate and norm before clipping */
	double eval_loss;             /* LORA_EV_EVAL */
	uint64_t tokens;              /* tokens processed in this session */
	double tokens_per_s;          /* over this session */
	double elapsed_s;             /* wall time of the run, earlier sessions included */
	double eta_s;                 /* to the last step, at this session's pace */
};
typedef void (*lora_train_cb)(const struct lora_train_progress *p, void *ud);

/*
 * Open the model, tokenizer and data, pick the device, and either make fresh
 * adapters or (o->resume) restore the checkpoint of o->work_dir, refusing one
 * made with other options or other data.  Without resume, an existing
 * checkpoint is an error (its step is in the message): nothing is thrown away
 * unasked.  Takes the work area's lock until close.
 */
int lora_trainer_open(struct lora_trainer **out, const struct lora_train_opts *o, struct lora_err *err);
void lora_trainer_close(struct lora_trainer *tr);

/*
 * Train to the last step: 0 when done, 1 when *stop was set (a checkpoint of
 * the last finished step is written), -1 on error (a non-finite loss
 * included).  Appends to training_log.jsonl in the work area.  cb may be NULL.
 */
int lora_trainer_run(struct lora_trainer *tr, lora_train_cb cb, void *ud, volatile sig_atomic_t *stop,
		     struct lora_err *err);

/* Mean loss over the evaluation rows with the current adapter; -1 when there are none. */
int lora_trainer_eval(struct lora_trainer *tr, double *loss, struct lora_err *err);

/*
 * The finished run into the store: the PEFT adapter, training_log.jsonl and
 * loss.svg staged in <work>/out/, the manifest's provenance and base
 * fingerprint, signed with key_path (NULL: the store's default key), added as
 * ref.  Then the work area is removed.  digest_out gets "sha256:<hex>".
 */
int lora_trainer_publish(struct lora_trainer *tr, const char *store_dir, const char *ref,
			 const char *key_path, const char *description, char digest_out[72],
			 struct lora_err *err);

/* The provenance object (malloc'd JSON text) publish puts in the manifest. */
char *lora_trainer_provenance(const struct lora_trainer *tr, struct lora_err *err);

/* Final figures, for the caller's summary (NaN where not measured). */
struct lora_train_result {
	long steps;
	uint64_t tokens;              /* over the whole run */
	double train_loss;            /* the last step's */
	double eval_loss_first, eval_loss;   /* at step 0 and at the end */
	double wall_s;
};
void lora_trainer_result(const struct lora_trainer *tr, struct lora_train_result *r);

/* Direct access for tests and backends. */
struct lora_net *lora_trainer_net(struct lora_trainer *tr);

#endif
