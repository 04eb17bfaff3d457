/*
 * gguf_lora.h - a PEFT LoRA adapter as the GGUF file llama.cpp loads with --lora.
 *
 * What llama.cpp's loader (src/llama-adapter.cpp) reads, and what its
 * converter (convert_lora_to_gguf.py) writes:
 *   KVs      general.architecture  "llama" (Llama, Mistral), "qwen2", "qwen3"
 *            general.type          "adapter"
 *            adapter.type          "lora"
 *            adapter.lora.alpha    FLOAT32, one for the whole file
 *   tensors  "<base tensor>.lora_a" and ".lora_b" for each module, the base
 *            tensor named as llama.cpp names it: model.layers.N.self_attn.q_proj
 *            -> blk.N.attn_q.weight (k, v: attn_k, attn_v; o_proj: attn_output;
 *            mlp.gate_proj/up_proj/down_proj: ffn_gate/ffn_up/ffn_down;
 *            lm_head: output.weight).  PEFT's A [r, in] is lora_a with ggml
 *            ne {in, r}; B [out, r] is lora_b with ne {r, out} (ggml lists
 *            the innermost dimension first, so the row-major bytes are the
 *            same).  Written as F32 (exact for F32/F16/BF16 factors).
 *   Llama's converter permutes the rows of q_proj and k_proj (rotary layout:
 *   per head, rows [0, hd/2) and [hd/2, hd) are interleaved); since
 *   ΔW = B·A, that permutes the rows of B:  new[h·hd + 2j + k] =
 *   old[h·hd + k·hd/2 + j], with n_kv_heads heads for k_proj.
 *
 * One alpha.  llama.cpp applies scale = alpha_g / r_m with r_m = lora_b's
 * ne[0] (or 1 when alpha_g is 0), while PEFT's per-module scale is
 * s_m = alpha_m / r_m, or alpha_m / sqrt(r_m) with use_rslora, alpha_m and
 * r_m from alpha_pattern / rank_pattern.  We write alpha_g = lora_alpha
 * (rounded to fp32, as the file holds it) and multiply B by
 *     f_m = s_m · r_m / alpha_g       (f_m = s_m when alpha_g = 0)
 * so that llama.cpp's (alpha_g / r_m)·(f_m·B)·A = s_m·B·A.  f_m is 1 for a
 * plain adapter (then B is copied bit for bit), alpha_m / alpha_g with an
 * alpha_pattern, and alpha_m·sqrt(r_m) / alpha_g with rsLoRA.  f_m·B is
 * rounded once to fp32 (relative error ≤ 2^-24 per element).
 *
 * Refused, with the module named: DoRA and embeddings (peft.h refuses them on
 * open), fan_in_fan_out, modules_to_save / bias tensors (llama.cpp takes only
 * lora_a/lora_b pairs), modules llama.cpp has no tensor for (lm_head of a
 * base with tied embeddings, anything outside the projections above), and
 * architectures other than those listed.
 */
#ifndef LORA_GGUF_LORA_H
#define LORA_GGUF_LORA_H

#include "libadapter/base/err.h"
#include "libadapter/format/modeldir.h"
#include "libadapter/format/peft.h"

/*
 * The llama.cpp name of the base tensor a module changes ("blk.0.attn_q.weight")
 * into out (64 bytes), and its row permutation: 0 none, else the head count
 * whose rotary halves are interleaved.  -1 + err saying why not.
 */
int lora_gguf_module_name(const struct lora_model_config *cfg, const char *module, char out[64],
			  int *permute_heads, struct lora_err *err);

/* Write the adapter as a llama.cpp LoRA GGUF file (atomically).  name: general.name (may be NULL). */
int lora_gguf_export_peft(const struct lora_peft *p, const struct lora_model_config *cfg, const char *name,
			  const char *out_path, struct lora_err *err);

/*
 * The inverse: a llama.cpp LoRA GGUF file as a PEFT folder (adapter_config.json
 * and adapter_model.safetensors written into the existing folder out_dir).
 * The base model gives the architecture (checked against the file), head
 * counts and the shapes each pair must have.  ΔW per module is kept:
 * lora_alpha = alpha_g, r and rank_pattern from each lora_b, B un-permuted.
 */
int lora_gguf_to_peft(const char *gguf_path, const struct lora_model *base, const char *out_dir,
		      struct lora_err *err);

#endif
