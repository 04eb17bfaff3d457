/*
 * combine.h - one adapter from several: Σ w_i·ΔW_i, written as a PEFT folder.
 *
 * Tensors that are not LoRA pairs (modules_to_save, the base layers PEFT
 * saves with an adapter on lm_head) are copied; inputs that share one must
 * hold it byte for byte the same.
 *
 * Methods, per module (inputs missing the module count as ΔW_i = 0), with
 * s_i each input's scale; the output has lora_alpha = r, so its scale is 1:
 *
 *   cat     exact.  A = [w_1 s_1 A_1; w_2 s_2 A_2; …], B = [B_1 B_2 …];
 *           rank Σ r_i (zero rows/columns pad modules that some inputs lack).
 *   svd     the exact sum truncated to rank R: QR of the stacked factors and an
 *           SVD of the small core, B = U·diag(σ), A = Vᵀ (never forms ΔW).
 *   linear  PEFT's "linear": A = Σ sign_i √|w_i s_i| A_i, B = Σ √|w_i s_i| B_i
 *           (sign_i = the sign of w_i s_i).  Equal ranks only.  NOT the sum
 *           of the updates: B·A has cross terms B_i·A_j.
 *
 * These are PEFT's add_weighted_adapter with combination_type cat, svd and
 * linear; tests/oracle/diff_oracle.py checks them against it.
 */
#ifndef LORA_COMBINE_H
#define LORA_COMBINE_H

#include <stddef.h>

#include "libadapter/base/dtype.h"
#include "libadapter/base/err.h"
#include "libadapter/format/peft.h"

enum lora_combine_method { LORA_COMBINE_CAT = 0, LORA_COMBINE_SVD, LORA_COMBINE_LINEAR };

/* "cat", "svd", "linear" -> method; -1 when unknown. */
int lora_combine_method_parse(const char *s);
const char *lora_combine_method_name(int method);

struct lora_combine_input {
	const struct lora_peft *peft;
	double weight;
	const char *label;            /* what the user typed */
	const char *ref;              /* NAME:TAG, or NULL */
	const char *digest;           /* "sha256:...", or NULL */
};

struct lora_combine_params {
	int method;                   /* enum lora_combine_method */
	int rank;                     /* svd: R; 0 = the largest input rank */
	enum lora_dtype dtype;        /* of the written tensors: F32 (default), BF16, F16 */
	const char *provenance_json;  /* stored in the safetensors __metadata__ as "lora.provenance" */
};

/* What was written, per module and overall. */
struct lora_combine_module {
	const char *name;             /* owned by an input adapter */
	int n_inputs;                 /* inputs that have the module */
	double norm;                  /* ‖ΔW‖_F of the written module */
	double kept;                  /* svd: ‖kept‖²/‖exact sum‖² (1 for cat); NAN for linear */
};

struct lora_combine_result {
	int r;                        /* rank written (and lora_alpha) */
	size_t n_modules;
	struct lora_combine_module *modules;
};

/*
 * Combine and write adapter_config.json + adapter_model.safetensors into the
 * new folder out_dir (which must not exist; it appears complete or not at
 * all).  res may be NULL; free it with lora_combine_result_free.
 */
int lora_combine(const struct lora_combine_input *in, size_t n, const struct lora_combine_params *p,
		 const char *out_dir, struct lora_combine_result *res, struct lora_err *err);
void lora_combine_result_free(struct lora_combine_result *res);

/*
 * The provenance record of a combination, as malloc'd JSON:
 *   {"tool": "lora combine", "method": "svd", "rank": 16,
 *    "inputs": [{"ref": ..., "digest": ..., "label": ..., "weight": 0.7}, ...]}
 */
char *lora_combine_provenance(const struct lora_combine_input *in, size_t n,
			      const struct lora_combine_params *p, int rank_written);

/*
 * Shared by combine and extract: write a PEFT folder atomically.  The
 * tensors are the LoRA pairs of `names` (lora_A [r, in] then lora_B [out, r]
 * per module, in that order), their data streamed by the caller through
 * the writer between begin and commit.
 */
struct lora_peft_out {
	char *dir;                    /* final folder */
	char *tmp_dir;                /* "<dir>.tmp-XXXXXX" while writing */
	struct lora_st_writer w;
	int writer_open;
};

struct lora_peft_out_module {
	const char *name;
	uint64_t out, in;
};

/*
 * extra: other tensors (modules_to_save, saved embedding layers) copied as
 * they are after the LoRA pairs; the caller writes their bytes last.
 */
int lora_peft_out_begin(struct lora_peft_out *o, const char *dir, const char *config_json,
			const struct lora_peft_out_module *mods, size_t n, int r,
			enum lora_dtype dtype, const struct lora_st_tensor *const *extra,
			size_t n_extra, const char *provenance_json, struct lora_err *err);
/* Append n fp64 values converted to the output dtype. */
int lora_peft_out_write(struct lora_peft_out *o, const double *v, size_t n, enum lora_dtype dtype,
			struct lora_err *err);
int lora_peft_out_commit(struct lora_peft_out *o, struct lora_err *err);
void lora_peft_out_abort(struct lora_peft_out *o);

#endif
