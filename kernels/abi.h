/*
 * abi.h - the one door into the CUDA plugin, liblora_cuda.so.
 *
 * The plugin exports a single symbol,
 *
 *     const struct lora_cuda_abi *lora_cuda_plugin(int abi_version);
 *
 * which returns its table of functions.  The loader (train/cuda.c) asks for
 * LORA_CUDA_ABI_VERSION and refuses a table whose `version` or `size`
 * differs, naming both versions: a plugin from another build never gets
 * called with arguments it does not expect.  A plugin that cannot serve the
 * version asked for returns its own table anyway, so the loader can say which
 * one it has.  Change the version whenever a signature or a field changes;
 * append new functions at the end.
 *
 * The table speaks in raw device pointers, element counts and a stream: no
 * struct of train/ (no struct lora_net) crosses it, so the host code in
 * train/ owns every decision and the plugin only computes.  Every function
 * returns 0 or a nonzero status that strerror() turns into text; launches
 * are asynchronous on the stream given (NULL: the default stream), so a
 * fault inside a kernel may surface at the next stream_sync.
 *
 * Layouts are row-major, as on the CPU path (train/model_cpu.c), with the
 * same names: N = B·T tokens, C hidden, F intermediate, H/KV heads, D head
 * dim.  Each kernel's file in kernels/ opens with the CPU function it is the
 * twin of; tests/simt/test_kernels.c runs each against that twin.
 */
#ifndef LORA_KERNELS_ABI_H
#define LORA_KERNELS_ABI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The device as `query` reports it. */
struct lora_cuda_info {
	int count;               /* devices visible; 0 when none or no driver */
	char name[256];          /* device 0 */
	size_t total_mem, free_mem;
	int cc_major, cc_minor;
};

#define LORA_CUDA_ABI_VERSION 1

typedef void *lora_stream;         /* a cudaStream_t */

/* AdamW's per-step scalars, made on the host exactly as train/optim.c makes them. */
struct lora_cuda_adamw {
	float decay;               /* 1 - lr·wd (used when decay_on) */
	int decay_on;              /* weight decay != 0 */
	float w1;                  /* 1 - beta1 */
	float b2, w2;              /* beta2, 1 - beta2 */
	float neg_step;            /* -lr / (1 - beta1^t) */
	float bc2_sqrt;            /* sqrt(1 - beta2^t) */
	float eps;
};

/* Blocks (and so scratch doubles) the gradient norm uses: a fixed count, so its result
 * does not depend on the device. */
#define LORA_CUDA_NORM_BLOCKS 256

struct lora_cuda_abi {
	int version;               /* LORA_CUDA_ABI_VERSION of the plugin */
	unsigned size;             /* sizeof(struct lora_cuda_abi) of the plugin */
	const char *build;         /* how it was built, e.g. "cuda 13.0 sm_80 sm_86 ..." */

	/* ---- the device */
	int (*query)(struct lora_cuda_info *info, char *msg, size_t msglen);
	const char *(*strerror)(int status);
	int (*mem_info)(size_t *free_bytes, size_t *total_bytes);
	int (*malloc)(void **p, size_t bytes);
	int (*free)(void *p);
	int (*host_alloc)(void **p, size_t bytes);   /* pinned host memory (paged optimizer state) */
	int (*host_free)(void *p);
	int (*memcpy)(void *dst, const void *src, size_t bytes, lora_stream s);   /* any direction */
	int (*memset)(void *p, int byte, size_t bytes, lora_stream s);
	int (*stream_create)(lora_stream *s);
	int (*stream_destroy)(lora_stream s);
	int (*stream_sync)(lora_stream s);

	/* ---- lora merge --device cuda (kernels/merge.h: the ΔW row blocks, from host arrays) */
	int (*merge_init)(void **ctx, char *msg, size_t msglen);
	void (*merge_reset)(void *ctx);
	int (*merge_delta)(void *ctx, int f64, int trans, int M, int N, int K, double coef, const void *m1,
			   size_t m1_elems, size_t off1, int ld1, const void *m2, size_t m2_elems, int ld2,
			   int accumulate, void *host_out, char *msg, size_t msglen);
	void (*merge_free)(void *ctx);

	/* ---- matrix products (kernels/blas_dev.h): cuBLAS, one handle per stream */
	int (*blas_create)(void **h, lora_stream s);
	void (*blas_destroy)(void *h);
	/* C [m, n] = alpha·op(A)·op(B) + beta·C, row-major as cblas_sgemm; A and B fp32 or bf16
	 * (a_bf16, b_bf16), C fp32, fp32 accumulation. */
	int (*gemm)(void *h, int ta, int tb, int m, int n, int k, float alpha, const void *A, int a_bf16,
		    int lda, const void *B, int b_bf16, int ldb, float beta, float *C, int ldc);

	/* ---- kernels (one file each in kernels/) */
	/* nf4_dequant.cu: elements [start, start + count) of an NF4 tensor (train/nf4.h layout);
	 * code8 [256] is lora_code8 on the device; out fp32, or bf16 when out_bf16. */
	int (*nf4_dequant)(const uint8_t *packed, const uint8_t *qabsmax, const float *absmax2,
			   float offset, const float *code8, uint64_t start, uint64_t count, void *out,
			   int out_bf16, lora_stream s);
	/* rmsnorm.cu: y [N, C] = w · x · rstd, rstd [N]; backward dx (+)= d x given dy. */
	int (*rmsnorm_fwd)(const float *x, const float *w, int N, int C, float eps, float *y, float *rstd,
			   lora_stream s);
	int (*rmsnorm_bwd)(const float *x, const float *w, const float *rstd, const float *dy, int N, int C,
			   float *dx, int accumulate, lora_stream s);
	/* rope.cu: cos/sin [T, D/2] from inv_freq [D/2]; token-major src [N, ld] <-> head-major
	 * dst [B, nh, T, D], rotated when rope (fwd), or the transpose of that (bwd). */
	int (*rope_table)(const float *inv_freq, int T, int half, float *cosb, float *sinb, lora_stream s);
	int (*rope_fwd)(const float *src, int ld, float *dst, int B, int T, int nh, int D, const float *cosb,
			const float *sinb, int rope, lora_stream s);
	int (*rope_bwd)(const float *src, float *dst, int ld, int B, int T, int nh, int D, const float *cosb,
			const float *sinb, int rope, lora_stream s);
	/* swiglu.cu: act [N, F] = silu(gate)·up from gu [N, 2F]; dgu [N, 2F] from dact. */
	int (*swiglu_fwd)(const float *gu, int N, int F, float *act, lora_stream s);
	int (*swiglu_bwd)(const float *gu, const float *dact, int N, int F, float *dgu, lora_stream s);
	/* residual.cu: y = a + b (add), y += a·b (addmul), over n elements. */
	int (*add)(const float *a, const float *b, float *y, size_t n, lora_stream s);
	int (*addmul)(const float *a, const float *b, float *y, size_t n, lora_stream s);
	/* adamw.cu: the global L2 norm of g [n] (norm, a device double) and the clip
	 * coefficient (coef, a device float: min(1, max/(norm+1e-6)) as torch; 1 when
	 * max_norm <= 0); scratch: LORA_CUDA_NORM_BLOCKS doubles of device memory.  Then
	 * one AdamW update of p, m, v [n] with the gradient g·coef (coef NULL: g). */
	int (*grad_norm)(const float *g, size_t n, float max_norm, double *scratch, double *norm, float *coef,
			 lora_stream s);
	int (*adamw)(float *p, const float *g, float *m, float *v, size_t n, struct lora_cuda_adamw k,
		     const float *coef, lora_stream s);
	/* lora.cu: the LoRA term of a linear through gemm (h made for stream s), fp32:
	 * forward   u [N, r] = xa·Aᵀ,  y [N, ldy] += scale·u·Bᵀ      (A [r, in], B [out, r])
	 * backward  gB += scale·dyᵀ·u,  du [N, r] = scale·dy·B,  gA += duᵀ·xa,
	 *           dx [N, in] += du·A, or with dropout (mask not NULL) xd = du·A, dx += xd·mask.
	 * xa is the LoRA input (x, or x·mask); dx NULL: no input gradient. */
	int (*lora_fwd)(void *h, const float *xa, int N, int in, int out, int r, const float *A,
			const float *B, float scale, float *u, float *y, int ldy, lora_stream s);
	int (*lora_bwd)(void *h, const float *xa, const float *dy, int lddy, const float *u, int N, int in,
			int out, int r, const float *A, const float *B, float scale, float *gA, float *gB,
			float *du, float *dx, const float *mask, float *xd, lora_stream s);
	/* xent.cu: cross-entropy over vocabulary chunks of logits z [nc, ld] (the chunk's
	 * columns v0..v0+vc-1 of each row at z), targets tgt [nc] (< 0: unlabelled).
	 * xent_stats per chunk (first: the first chunk) keeps m [nc] (fp32 max), s [nc]
	 * (double sum of e^(z - m)) and zt [nc] (the target's logit); xent_loss then
	 * gives loss [nc] (double; -1 unlabelled); xent_grad per chunk turns z into
	 * d logits = (softmax - onehot)·scale (0 for unlabelled rows). */
	int (*xent_stats)(const float *z, int ld, int nc, int v0, int vc, const int32_t *tgt, float *m,
			  double *s, float *zt, int first, lora_stream st);
	int (*xent_loss)(const float *m, const double *s, const float *zt, const int32_t *tgt, int nc,
			 double *loss, lora_stream st);
	int (*xent_grad)(float *z, int ld, int nc, int v0, int vc, const int32_t *tgt, const float *m,
			 const double *s, float scale, lora_stream st);
	/* attn_fwd.cu: causal GQA attention, q [B, H, T, D], k, v [B, KV, T, D] -> att [B·T, H·D],
	 * lse [B, H, T]; window 0 or the sliding window in positions; D <= 128. */
	int (*attn_fwd)(const float *q, const float *k, const float *v, int B, int H, int KV, int T, int D,
			float scaling, int window, float *att, float *lse, lora_stream s);
	/* attn_bwd.cu: its gradients from datt [B·T, H·D] (d of att) and attn_fwd's lse:
	 * dq [B, H, T, D], dk, dv [B, KV, T, D] (summed over each group's heads; overwritten);
	 * delta: scratch of B·H·T floats (the rows' Σ p·dp); D <= 128. */
	int (*attn_bwd)(const float *q, const float *k, const float *v, const float *lse, const float *datt,
			int B, int H, int KV, int T, int D, float scaling, int window, float *delta, float *dq,
			float *dk, float *dv, lora_stream s);

	/* ---- appended for the other model families (same version: the table only grew) */
	/* swiglu.cu: Gemma's GELU-tanh gate, act [N, F] = gelu_tanh(gate)·up from gu [N, 2F],
	 * and dgu [N, 2F] from dact, as swiglu_fwd/bwd. */
	int (*geglu_fwd)(const float *gu, int N, int F, float *act, lora_stream s);
	int (*geglu_bwd)(const float *gu, const float *dact, int N, int F, float *dgu, lora_stream s);
	/* headnorm.cu: Qwen3's / Gemma 3's per-head RMSNorm of q and k, in place on y [N, ld]
	 * whose first (H + KV)·D columns are H query heads (weight wq [D]) then KV key heads
	 * (wk [D]); keeps raw [N, H+KV, D] (the input) and rstd [N, H+KV].  Backward turns
	 * d normed in y into d raw, in place.  ld >= (H + KV)·D. */
	int (*headnorm_fwd)(float *y, int ld, int N, int H, int KV, int D, const float *wq, const float *wk,
			    float eps, float *raw, float *rstd, lora_stream s);
	int (*headnorm_bwd)(float *dy, int ld, int N, int H, int KV, int D, const float *wq, const float *wk,
			    const float *raw, const float *rstd, lora_stream s);
	/* attn_fwd.cu / attn_bwd.cu: attn_fwd and attn_bwd with Gemma 2's score soft-capping,
	 * s = cap·tanh(s·scaling / cap) (cap <= 0: none, the same as attn_fwd / attn_bwd). */
	int (*attn_fwd_softcap)(const float *q, const float *k, const float *v, int B, int H, int KV, int T, int D,
				float scaling, int window, float cap, float *att, float *lse, lora_stream s);
	int (*attn_bwd_softcap)(const float *q, const float *k, const float *v, const float *lse, const float *datt,
				int B, int H, int KV, int T, int D, float scaling, int window, float cap, float *delta,
				float *dq, float *dk, float *dv, lora_stream s);
	/* xent.cu: Gemma 2's final logit soft-capping: z [rows, ld] (cols of each row) becomes
	 * cap·tanh(z / cap) in place (cap <= 0: untouched), on each chunk before xent_stats and
	 * before xent_grad_softcap, which is xent_grad times d capped / d logit = 1 - (z/cap)²
	 * (cap <= 0: xent_grad). */
	int (*softcap)(float *z, int ld, int rows, int cols, float cap, lora_stream st);
	int (*xent_grad_softcap)(float *z, int ld, int nc, int v0, int vc, const int32_t *tgt, const float *m,
				 const double *s, float scale, float cap, lora_stream st);
};

typedef const struct lora_cuda_abi *(*lora_cuda_plugin_fn)(int abi_version);

/* The plugin's one export (kernels/plugin.cu). */
const struct lora_cuda_abi *lora_cuda_plugin(int abi_version);

#ifdef __cplusplus
}
#endif

#endif
