/*
 * extract.h - an adapter from a full fine-tune: ΔW = W_tuned − W_base per
 * targeted module, truncated to rank R by a randomized SVD.
 *
 * Streaming: each weight is read a block of rows at a time with pread (no
 * mapping, so the page cache does not count against this process), the
 * randomized SVD keeps O((out + in)·(R + oversample)) numbers per module,
 * and the factors go to an unlinked scratch file until the adapter is
 * assembled.  Memory stays far below one weight tensor.
 *
 * The adapter has lora_alpha = r = R (scale 1), B = U·diag(σ), A = Vᵀ.
 * Modules where the two models hold identical values are left out.
 */
#ifndef LORA_EXTRACT_H
#define LORA_EXTRACT_H

#include <stddef.h>
#include <stdint.h>

#include "libadapter/base/dtype.h"
#include "libadapter/base/err.h"

struct lora_extract_params {
	int rank;                     /* R */
	int oversample;               /* extra random directions; < 0: default 10 */
	int iters;                    /* power iterations; < 0: default 2 */
	uint64_t seed;
	/* PEFT list semantics: a module matches when its name is an entry or ends
	 * in "." + entry.  NULL: every 2-d ".weight" inside numbered layers
	 * (".layers.N.", ".h.N.", ...): all linear layers, no embeddings, no lm_head. */
	const char *const *targets;
	size_t n_targets;
	enum lora_dtype dtype;        /* of the written tensors: F32 (0 = F32), BF16, F16 */
	const char *base_name;        /* base_model_name_or_path to record; NULL: the base folder */
	size_t block_bytes;           /* rows read per step ≈ this many bytes of fp64; 0: 8 MiB */
	void (*progress)(void *ctx, double done, double total);
	void *progress_ctx;
};

struct lora_extract_module {
	char *name;                   /* "model.layers.0.self_attn.q_proj" */
	uint64_t out, in;
	int r;                        /* rank kept: min(R, out, in) */
	double norm;                  /* ‖ΔW‖_F */
	double energy;                /* Σ kept σ² / ‖ΔW‖_F²: the share captured */
	double sv_max;                /* largest singular value */
	int unchanged;                /* ΔW = 0: not in the adapter */
};

struct lora_extract_result {
	int r;
	size_t n_modules;             /* targeted modules, sorted by name */
	struct lora_extract_module *modules;
	size_t n_written;
	char base_fingerprint[72];    /* as lora_model_fingerprint, over the written modules */
	char *provenance_json;        /* what was recorded in the adapter */
};

/*
 * Extract into the new folder out_dir (must not exist; appears complete or
 * not at all).  res may be NULL; free it with lora_extract_result_free.
 */
int lora_extract(const char *base_dir, const char *tuned_dir, const struct lora_extract_params *p,
		 const char *out_dir, struct lora_extract_result *res, struct lora_err *err);
void lora_extract_result_free(struct lora_extract_result *res);

#endif
