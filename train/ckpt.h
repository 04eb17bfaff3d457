/*
 * ckpt.h - the work area of a training run and its checkpoint file.
 *
 * Each NAME:TAG being trained has a work area in the store:
 *
 *   $LORA_HOME/work/<NAME>/<TAG>/
 *       .lock                    flock(2)ed by the `lora train` using it
 *       checkpoint.safetensors   the latest checkpoint (one file, replaced atomically)
 *       training_log.jsonl       metrics of the run so far, one JSON object a line
 *       out/                     the finished PEFT folder, staged for the store import
 *
 * `lora train --resume` finds it from the name alone, from any directory.  The
 * work area is removed when the adapter is in the store; an interrupted run
 * leaves it for --resume.  `lora rm NAME[:TAG]` removes it too:
 *
 *     lora_work_remove(store_dir, "sql:v1", &err);   // 1 removed, 0 none, -1 error
 *
 * checkpoint.safetensors (the safetensors format, so any reader can look in):
 *   tensors   params   F32 [n]   every LoRA A and B, in the trainer's arena order
 *             adam.m   F32 [n]   AdamW first moments
 *             adam.v   F32 [n]   AdamW second moments
 *   __metadata__
 *             "format"           "lora-checkpoint"
 *             "version"          "1"
 *             "state"            a JSON object written and read by the loop (train/loop.c):
 *                                step, optimizer and dropout counters, data position,
 *                                run configuration, data digests, log length
 */
#ifndef LORA_TRAIN_CKPT_H
#define LORA_TRAIN_CKPT_H

#include <stddef.h>

#include "libadapter/base/err.h"

#define LORA_CKPT_FILE "checkpoint.safetensors"
#define LORA_CKPT_LOG "training_log.jsonl"

/*
 * malloc'd "<store_dir>/work/<NAME>/<TAG>" of ref (NAME[:TAG], tag "latest"
 * when absent).  A digest or a malformed ref is LORA_EUSAGE.  Creates nothing.
 */
char *lora_work_dir(const char *store_dir, const char *ref, struct lora_err *err);
/*
 * Remove the work area of ref (and <store>/work/<NAME> when it is left
 * empty).  Returns 1 when there was one, 0 when not, -1 on error (a run
 * holding its lock is an error: "a training run of NAME:TAG is in progress").
 */
int lora_work_remove(const char *store_dir, const char *ref, struct lora_err *err);
/*
 * Create the work area and take its lock (exclusive, not waiting).  Returns
 * the lock's file descriptor (close it to release), -1 when another run holds it.
 */
int lora_work_lock(const char *work_dir, struct lora_err *err);

struct lora_ckpt {
	char *state;      /* the "state" JSON text (malloc'd) */
	size_t n;         /* parameters */
	float *params;    /* [n] */
	float *m, *v;     /* [n] each */
};

/* Write path atomically (tmp file, fsync, rename). */
int lora_ckpt_write(const char *path, const char *state, const float *params, const float *m,
		    const float *v, size_t n, struct lora_err *err);
/*
 * Read and check a checkpoint: format and version, three F32 tensors of one
 * length, a state text that is valid UTF-8.  Fills *c (free with lora_ckpt_free).
 */
int lora_ckpt_read(const char *path, struct lora_ckpt *c, struct lora_err *err);
void lora_ckpt_free(struct lora_ckpt *c);

#endif
