/*
 * ops_cpu.h - single operations of the CPU reference (train/model_cpu.c),
 * one call each on whole arrays, on the calling thread.  They are the twins
 * the CUDA kernels (one .cu file each in kernels/) are tested against in
 * tests/simt/test_kernels.c; each runs the very loop the CPU trainer runs,
 * so a kernel that matches them matches the trainer.  Layouts and names as
 * in model_cpu.c (N tokens, C hidden, F intermediate, D head dim).
 */
#ifndef LORA_TRAIN_OPS_CPU_H
#define LORA_TRAIN_OPS_CPU_H

#include <stddef.h>
#include <stdint.h>

/* rmsnorm_part: y [N, C] = w · x · rstd, rstd [N] */
void lora_cpu_rmsnorm(const float *x, const float *w, int N, int C, float eps, float *y, float *rstd);
/* rmsnorm_bwd_part: dx (+= when accumulate) the gradient through the norm given dy */
void lora_cpu_rmsnorm_bwd(const float *x, const float *w, const float *rstd, const float *dy, int N, int C,
			  float *dx, int accumulate);
/* headnorm_part: per-head RMSNorm in place on the first (H + KV)·D columns of each row of
 * y [N, ld] (H heads with wq [D], then KV with wk [D]); raw [N, H+KV, D] keeps the input, rstd
 * [N, H+KV] its 1/rms.  headnorm_bwd_part: d normed in y -> d raw, in place */
void lora_cpu_headnorm(float *y, int ld, int N, int H, int KV, int D, const float *wq, const float *wk, float eps,
		       float *raw, float *rstd);
void lora_cpu_headnorm_bwd(float *dy, int ld, int N, int H, int KV, int D, const float *wq, const float *wk,
			   const float *raw, const float *rstd);
/* rope_tables: cos/sin [T, D/2] of inv_freq [D/2] */
void lora_cpu_rope_tables(const float *inv_freq, int D, int T, float *cosb, float *sinb);
/* to_heads_part: token-major src [B·T, ld] -> head-major dst [B, nh, T, D], rotated when rope */
void lora_cpu_to_heads(const float *src, int ld, float *dst, int B, int T, int nh, int D, const float *cosb,
		       const float *sinb, int rope);
/* from_heads_part: the transpose (gradients), head-major src -> token-major dst [B·T, ld] */
void lora_cpu_from_heads(const float *src, float *dst, int ld, int B, int T, int nh, int D,
			 const float *cosb, const float *sinb, int rope);
/* swiglu_part / swiglu_bwd_part: act [N, F] from gu [N, 2F]; dgu [N, 2F] from dact (silu) */
void lora_cpu_swiglu(const float *gu, int N, int F, float *act);
void lora_cpu_swiglu_bwd(const float *gu, const float *dact, int N, int F, float *dgu);
/* the same with Gemma's gelu_pytorch_tanh gate (glu_job.gelu) */
void lora_cpu_geglu(const float *gu, int N, int F, float *act);
void lora_cpu_geglu_bwd(const float *gu, const float *dact, int N, int F, float *dgu);
/* ew_part: y = a + b (EW_ADD), y += a·b (EW_ADDMUL) */
void lora_cpu_add(const float *a, const float *b, float *y, size_t n);
void lora_cpu_addmul(const float *a, const float *b, float *y, size_t n);
/* head_part: the cross-entropy of each of nc rows of logits z [nc, V] against tgt [nc] (< 0:
 * unlabelled, loss -1) into tok_loss [nc]; with backward, z becomes (softmax - onehot)·scale */
void lora_cpu_xent(float *z, const int32_t *tgt, int nc, int V, float scale, int backward, double *tok_loss);
/* attn_fwd_part: causal GQA attention of q [B, H, T, D] over k, v [B, KV, T, D], scores times
 * scaling (sliding window when window > 0; no soft-capping) into att [B·T, H·D] and lse [B, H, T];
 * -1 when out of memory */
int lora_cpu_attn_fwd(const float *q, const float *k, const float *v, int B, int H, int KV, int T, int D,
		      float scaling, int window, float *att, float *lse);
/* attn_bwd_part: from datt [B·T, H·D] (d of att) and the forward's lse, the gradients dq
 * [B, H, T, D] and dk, dv [B, KV, T, D] (summed over each group's heads; overwritten); the
 * probabilities are recomputed from q, k and lse; -1 when out of memory */
int lora_cpu_attn_bwd(const float *q, const float *k, const float *v, const float *lse, const float *datt, int B,
		      int H, int KV, int T, int D, float scaling, int window, float *dq, float *dk, float *dv);
/* the two above with Gemma 2's score soft-capping cap·tanh(scaled / cap) (cap <= 0: none) */
int lora_cpu_attn_fwd_softcap(const float *q, const float *k, const float *v, int B, int H, int KV, int T, int D,
			      float scaling, int window, float cap, float *att, float *lse);
int lora_cpu_attn_bwd_softcap(const float *q, const float *k, const float *v, const float *lse, const float *datt,
			      int B, int H, int KV, int T, int D, float scaling, int window, float cap, float *dq,
			      float *dk, float *dv);
/* loss_head's final soft-capping (Gemma 2): z [n] = cap·tanh(z / cap) in place */
void lora_cpu_softcap(float *z, size_t n, float cap);
/* head_part with final_softcap = cap: z holds capped logits; with backward, d logits through the cap */
void lora_cpu_xent_softcap(float *z, const int32_t *tgt, int nc, int V, float scale, int backward, float cap,
			   double *tok_loss);

#endif
