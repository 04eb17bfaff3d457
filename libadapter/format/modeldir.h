/*
 * modeldir.h - a Hugging Face model folder: config.json plus safetensors
 * weights in one file (model.safetensors) or shards listed by
 * model.safetensors.index.json ({"weight_map": {"tensor.name": "shard file"}}).
 *
 * Pickle weights (pytorch_model.bin, *.pt) are refused: loading them runs
 * arbitrary code.  Tensors are found by name across shards; data stays in the
 * mmap'd shard files until used.
 */
#ifndef LORA_MODEL_H
#define LORA_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "libadapter/base/err.h"
#include "libadapter/format/safetensors.h"

enum lora_rope_type { LORA_ROPE_DEFAULT = 0, LORA_ROPE_LINEAR, LORA_ROPE_LLAMA3 };

/* The Llama-family fields of config.json (0 / defaults where absent). */
struct lora_model_config {
	char architecture[64];        /* architectures[0], e.g. "LlamaForCausalLM" */
	char model_type[32];          /* "llama", "mistral", "qwen2", ... */
	char torch_dtype[16];         /* "bfloat16", "float16", "float32" or "" */
	int hidden_size;
	int intermediate_size;
	int num_hidden_layers;
	int num_attention_heads;
	int num_key_value_heads;      /* = num_attention_heads when absent */
	int head_dim;                 /* = hidden_size / num_attention_heads when absent */
	int vocab_size;
	int max_position_embeddings;
	double rms_norm_eps;          /* default 1e-6 */
	double rope_theta;            /* default 10000 */
	enum lora_rope_type rope_type;
	double rope_factor;           /* linear and llama3 */
	double rope_low_freq_factor;  /* llama3 */
	double rope_high_freq_factor; /* llama3 */
	int rope_original_max_pos;    /* llama3 */
	double rope_local_theta;      /* Gemma 3: rope_theta of the sliding layers (rope_parameters'
					 sliding_attention, or rope_local_base_freq); 0 when absent */
	int tie_word_embeddings;
	int attention_bias;           /* q/k/v/o biases (Qwen2 forces q/k/v) */
	int mlp_bias;
	int bos_token_id, eos_token_id;  /* -1 when absent */
};

/* Parse config.json text.  `label` names the file in errors.  Usable on a buffer (fuzzing). */
int lora_model_config_parse(const char *json, size_t len, const char *label,
			    struct lora_model_config *cfg, struct lora_err *err);

struct lora_model_tensor {
	const struct lora_st_tensor *t;
	size_t shard;                 /* index into shards[] */
};

struct lora_model {
	char *dir;
	struct lora_model_config cfg;
	int has_config;
	size_t n_shards;
	char **shard_names;           /* file names relative to dir, in index order */
	struct lora_st **shards;
	size_t n_tensors;
	struct lora_model_tensor *tensors;  /* sorted by name */
	uint64_t total_bytes;         /* sum of shard file sizes */
	uint64_t n_params;            /* sum of tensor element counts */
};

/*
 * A `lora swap` writes its redo journal here (see libadapter/merge/swap.h).
 * The .new file is an uncommitted journal: the shards are untouched.  The
 * committed one means the shards may hold a mix of the old and new set.
 */
#define LORA_SWAP_JOURNAL ".lora-swap.journal"
#define LORA_SWAP_JOURNAL_NEW ".lora-swap.journal.new"

/*
 * Open a model folder.  `need_config`: fail when config.json is missing.
 * Opening never writes: a folder whose swap was interrupted after its commit
 * (a LORA_SWAP_JOURNAL is there) is refused with a message that names the
 * journal and the command that finishes it (`lora swap DIR --recover`); the
 * commands that write (merge, swap) call lora_merged_recover() first.  An
 * uncommitted journal (.new) changes nothing that is read, so it is ignored.
 */
int lora_model_open(const char *dir, int need_config, struct lora_model **out, struct lora_err *err);
void lora_model_close(struct lora_model *m);
/* Find a tensor by full name ("model.layers.0.self_attn.q_proj.weight"). */
const struct lora_model_tensor *lora_model_find(const struct lora_model *m, const char *name);
/* The dtype most of the weights have (by bytes). */
enum lora_dtype lora_model_dtype(const struct lora_model *m);

/*
 * Fingerprint of the base tensors an adapter targets: "sha256:<hex>" of, for
 * each module name in sorted order, the line
 *     "<module>.weight <DTYPE> <d0>x<d1> <sha256 of the tensor bytes>\n".
 * Modules missing from the model are an error.  out must hold 72 bytes.
 */
int lora_model_fingerprint(const struct lora_model *m, const char *const *modules, size_t n,
			   char out[72], struct lora_err *err);

#endif
