/*
 * net.h - a Llama-family causal LM with frozen (NF4 or 16/32-bit) weights
 * and trainable LoRA adapters: the data every backend shares, and the API a
 * training loop uses.
 *
 *     struct lora_net_opts o;  lora_net_opts_defaults(&o);   o.quant = LORA_QUANT_NF4;
 *     struct lora_net *net;
 *     if (lora_net_open(&net, "base-dir", &o, err) < 0) ...
 *     lora_net_init_lora(net, &lcfg, err);            // fresh adapters (or lora_net_load_adapter)
 *     for each step:
 *             lora_net_zero_grad(net);
 *             lora_net_forward_backward(net, &batch, 0, &res, err);   // loss, grads += d loss
 *             lora_clip_grad_norm(net->grads, net->n_params, 1.0);
 *             lora_adamw_step(&opt, &ocfg, net->params, net->grads, lr);
 *     lora_net_save_adapter(net, "out-dir", "base-name", err);
 *
 * Dimensions, named once:  B batch rows, T positions per row, N = B·T tokens,
 * C hidden, F intermediate, L layers, H query heads, KV key/value heads
 * (H % KV == 0), D head dim, V vocab, r LoRA rank.
 *
 * Supported: LlamaForCausalLM (Llama 2/3/3.1/3.2 with llama3 rope scaling and
 * tied embeddings, SmolLM2), MistralForCausalLM (sliding window),
 * Qwen2ForCausalLM (q/k/v biases, per-layer sliding window), Qwen3ForCausalLM
 * (RMSNorm of each query and key head before RoPE, q_norm / k_norm; layer_types),
 * Phi3ForCausalLM (fused qkv_proj and gate_up_proj, the LoRA targets as they are:
 * see `fused` and lora_net_module_name), Gemma2ForCausalLM (see `gemma`: scaled
 * embeddings, (1 + w) norms stored as such, post_attn / post_ff norms, GELU-tanh,
 * attention and final soft-capping, query_pre_attn_scalar; fp32 throughout, the
 * embedding scale too, as transformers computes an fp32 model), Gemma3ForCausalLM
 * (Gemma 2's layout without caps, plus (1 + w) q_norm / k_norm and the sliding
 * layers' RoPE base: inv_freq_local, local_rope).
 * Any linear may carry a bias when the checkpoint has one.  Others are refused
 * by name (architecture, or the config field and value: hidden_act,
 * rope_scaling, partial_rotary_factor, hidden_activation).
 */
#ifndef LORA_TRAIN_MODEL_H
#define LORA_TRAIN_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "libadapter/base/err.h"
#include "libadapter/format/modeldir.h"
#include "libadapter/format/peft.h"
#include "train/lora_cfg.h"
#include "train/nf4.h"

enum lora_quant {
	LORA_QUANT_NONE = 0,   /* frozen linears as stored (bf16/fp16/fp32), converted on use */
	LORA_QUANT_NF4,        /* decoder linears quantized to NF4 (bitsandbytes-exact) */
};
int lora_quant_parse(const char *s, enum lora_quant *q);   /* "none" / "nf4" */

/* A frozen matrix W [rows, cols] = [out, in], row-major. */
enum lora_wfmt { LORA_WF_F32 = 0, LORA_WF_BF16, LORA_WF_F16, LORA_WF_NF4 };
struct lora_frozen {
	int rows, cols;
	enum lora_wfmt fmt;
	const void *data;          /* dense: [rows, cols] in fmt (inside the mmap'd shard) */
	struct lora_nf4 q;         /* LORA_WF_NF4 */
};
/* Rows [r0, r0 + nr) of W as fp32 into out [nr, cols]. */
void lora_frozen_rows(const struct lora_frozen *w, int r0, int nr, float *out);

/* LoRA on one linear: A [r, in] and B [out, r] inside the parameter arena. */
struct lora_mod {
	int r;
	float scale;
	size_t a_off, b_off;       /* offsets into params[] / grads[] */
};

struct lora_linear {
	struct lora_frozen w;      /* [out, in] */
	float *bias;               /* [out] fp32, or NULL */
	int has_lora;
	struct lora_mod lora;
};

struct lora_block {
	float *ln1, *ln2;          /* [C] input / post-attention RMSNorm weights, fp32 */
	float *q_norm, *k_norm;    /* [D] RMSNorm of each query / key head before RoPE (Qwen3), or NULL */
	float *post_attn, *post_ff;   /* [C] Gemma 2: RMSNorm of the attention output and of the MLP
					 output before each residual add (ln2 is then
					 pre_feedforward_layernorm), or NULL */
	struct lora_linear lin[LORA_NTARGET];   /* indexed by enum lora_target */
	int window;                /* sliding attention window in positions; 0 = full causal */
	int local_rope;            /* RoPE from net->inv_freq_local (Gemma 3's sliding layers) */
};

/* One batch: rows of token ids, right-padded to T. */
struct lora_batch {
	int B, T;
	const int32_t *ids;        /* [B, T] */
	const int32_t *labels;     /* [B, T] aligned with ids (position t predicts labels[t+1],
				      as transformers); -100 ignored; NULL: the ids themselves */
	const int32_t *len;        /* [B] real tokens per row (rest is padding); NULL: all T */
};

struct lora_fb_result {
	double loss_sum;           /* sum of token cross-entropies (nats) */
	long tokens;               /* tokens that carried a label */
	double loss;               /* loss_sum / tokens (0 when none) */
};

struct lora_net;
struct lora_kv;            /* a backend's key/value cache for generation */
struct lora_adamw;         /* train/optim.h */
struct lora_optim_cfg;

/* What a device backend implements; the CPU one is the reference. */
struct lora_backend {
	const char *name;
	/* Forward, and with `backward` the LoRA gradients of grad_scale · loss_sum
	 * added to net->grads.  `logits` (optional, [B, T, V]) receives the logits. */
	int (*run)(struct lora_net *net, const struct lora_batch *b, int backward, double grad_scale,
		   float *logits, struct lora_fb_result *res, struct lora_err *err);
	void (*release)(struct lora_net *net);   /* free backend state (net->be_state) */
	/*
	 * Generation (train/generate.h calls these; no dropout, no gradients):
	 * kv_new makes a key/value cache for positions 0 .. max_pos-1; decode
	 * runs n tokens at positions pos .. pos+n-1 over the cache of the
	 * positions before (prefill when n > 1, one step when n == 1), adds
	 * theirs to it, and writes the logits [V] of the last into `logits`
	 * and those [n, V] of each into `all` (either may be NULL).  The caller
	 * checks ids and capacity.  A cache belongs to the net that made it;
	 * make it after the adapters are loaded (decode refuses larger ranks).
	 */
	int (*kv_new)(struct lora_net *net, int max_pos, struct lora_kv **kv, struct lora_err *err);
	int (*decode)(struct lora_net *net, struct lora_kv *kv, int pos, const int32_t *ids, int n,
		      float *logits, float *all, struct lora_err *err);
	void (*kv_free)(struct lora_net *net, struct lora_kv *kv);
	/*
	 * Optional (NULL: the loop runs train/optim.h on the host): after the
	 * step's runs, the global norm of net->grads into *norm, and unless it
	 * is not finite, clipping to cfg->max_grad_norm and one AdamW update at
	 * learning rate lr of net->params and opt's moments (opt->step + 1),
	 * all left on the host as lora_clip_grad_norm + lora_adamw_step leave
	 * them (net->grads excepted).
	 */
	int (*optim_step)(struct lora_net *net, struct lora_adamw *opt, const struct lora_optim_cfg *cfg,
			  double lr, double *norm, struct lora_err *err);
};
extern const struct lora_backend lora_backend_cpu;

struct lora_net_opts {
	enum lora_quant quant;
	int threads;               /* BLAS and worker threads; 0: leave as is */
	int checkpoint;            /* recompute each layer in backward instead of keeping activations */
	int logit_tokens;          /* tokens per loss-head chunk (memory: this x V floats); 0: automatic */
};
void lora_net_opts_defaults(struct lora_net_opts *o);

struct lora_net {
	struct lora_model *base;   /* the open model folder; dense weights point into it */
	struct lora_model_config cfg;
	int C, F, L, H, KV, D, V;
	float eps;                 /* rms_norm_eps */
	int qk_norm;               /* blocks carry q_norm / k_norm (Qwen3) */
	int gemma;                 /* Gemma 2: the fields below, (1 + w) norms, post-attention/MLP norms */
	int gelu;                  /* MLP gate gelu_pytorch_tanh instead of SiLU (Gemma 2) */
	float embed_scale;         /* embeddings times this (Gemma 2: sqrt(C) in fp32), else 1 */
	float attn_scale;          /* attention scores times this: D^-0.5, or query_pre_attn_scalar^-0.5 */
	float attn_softcap;        /* scores -> cap·tanh(scores/cap) when > 0 (Gemma 2) */
	float final_softcap;       /* logits -> cap·tanh(logits/cap) when > 0 (Gemma 2) */
	int fused;                 /* Phi-3: q|k|v is one linear, qkv_proj, in lin[LORA_T_Q] (rows
				      H·D + 2·KV·D), gate|up one, gate_up_proj, in lin[LORA_T_GATE]
				      (rows 2F); lin[K], lin[V], lin[UP] have 0 rows and no LoRA */
	float *inv_freq;           /* [D/2] RoPE inverse frequencies after scaling */
	float *inv_freq_local;     /* [D/2] those of sliding layers when their base differs (Gemma 3), or NULL */
	struct lora_frozen embed;  /* [V, C] */
	struct lora_frozen lm_head;   /* [V, C]; the embedding when tied */
	float *norm_f;             /* [C] final RMSNorm weight */
	struct lora_block *blocks; /* [L] */
	struct lora_net_opts opts;

	/* LoRA: every A and B, flat, for the optimizer */
	int has_lora;
	struct lora_cfg lcfg;      /* rank/alpha of fresh adapters; dropout and seed */
	size_t n_params;
	float *params;             /* [n_params] */
	float *grads;              /* [n_params] */
	uint64_t step;             /* forward_backward calls so far (dropout stream) */

	const struct lora_backend *be;
	void *be_state;
};

/* Open base_dir, check the architecture, quantize (NF4) or map the frozen weights. */
int lora_net_open(struct lora_net **out, const char *base_dir, const struct lora_net_opts *o,
		  struct lora_err *err);
void lora_net_close(struct lora_net *net);
/* The largest LoRA rank of any module (1 when none): the width of the backends' rank buffers. */
size_t lora_net_max_rank(const struct lora_net *net);

/* Fresh adapters on cfg->targets of every layer (PEFT initialization, seeded). */
int lora_net_init_lora(struct lora_net *net, const struct lora_cfg *cfg, struct lora_err *err);
/* Adapters from a PEFT adapter (ranks, alphas and patterns per module, dropout); label names it in errors. */
int lora_net_load_peft(struct lora_net *net, const struct lora_peft *p, const char *label,
		       struct lora_err *err);
int lora_net_load_adapter(struct lora_net *net, const char *peft_dir, struct lora_err *err);
/*
 * Write dir/adapter_config.json and dir/adapter_model.safetensors (fp32) as
 * PEFT writes them; keys "base_model.model.<module>.lora_A.weight".  Each file
 * is written aside and renamed.  base_name goes to base_model_name_or_path.
 */
int lora_net_save_adapter(const struct lora_net *net, const char *dir, const char *base_name,
			  struct lora_err *err);
/*
 * Module names as this family spells them: PEFT's name of target t
 * ("qkv_proj" for Q on Phi-3), or NULL where the family has no such linear;
 * the full module name ("model.layers.3.self_attn.qkv_proj"; -1 when none);
 * its inverse (-1 when not a linear of this model); and a target mask as
 * the family applies it (Phi-3: any of q,k,v -> qkv_proj, gate/up -> gate_up_proj).
 */
const char *lora_net_target_name(const struct lora_net *net, enum lora_target t);
int lora_net_module_name(const struct lora_net *net, char *buf, size_t len, int layer, enum lora_target t);
int lora_net_module_parse(const struct lora_net *net, const char *name, int *layer, enum lora_target *t);
unsigned lora_net_targets(const struct lora_net *net, unsigned mask);

/* Adapter of a module, or NULL. */
const struct lora_mod *lora_net_mod(const struct lora_net *net, int layer, enum lora_target t);

void lora_net_zero_grad(struct lora_net *net);

/*
 * Forward and backward on a batch: res gets the loss, and the gradients of
 * grad_scale · loss_sum are added to net->grads (grad_scale <= 0: 1 / tokens,
 * the mean as transformers computes it).  Dropout is active here only.
 */
int lora_net_forward_backward(struct lora_net *net, const struct lora_batch *b, double grad_scale,
			      struct lora_fb_result *res, struct lora_err *err);
/* Forward only (no dropout): loss, and logits [B, T, V] when logits is not NULL. */
int lora_net_forward(struct lora_net *net, const struct lora_batch *b, float *logits,
		     struct lora_fb_result *res, struct lora_err *err);

/* Check a batch against the model (ids in range, labels in range or -100, lengths). */
int lora_batch_check(const struct lora_net *net, const struct lora_batch *b, struct lora_err *err);

/* Bytes the frozen weights take in memory as held (NF4 packed, or mapped). */
uint64_t lora_net_frozen_bytes(const struct lora_net *net);

#endif
