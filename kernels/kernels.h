/*
 * kernels.h - what each file of kernels/ gives kernels/plugin.cu for the
 * table (abi.h has the contracts).  Internal to the plugin: the host side
 * sees only struct lora_cuda_abi.  The device functions (memory, streams)
 * come from device.cu on a GPU, from tests/simt/device_simt.cc on the CPU
 * execution layer; the products from blas_dev.cu or tests/simt/blas_simt.cc.
 */
#ifndef LORA_KERNELS_KERNELS_H
#define LORA_KERNELS_KERNELS_H

#include "kernels/abi.h"
#include "kernels/merge.h"

#ifdef __cplusplus
extern "C" {
#endif

/* device.cu: query fills info; 0 with count 0 when there is no usable device, msg says why.
 * Every call is checked; a failure comes back as a status, never an abort. */
int lora_cuda_query(struct lora_cuda_info *info, char *msg, size_t msglen);
const char *lora_dev_strerror(int status);
int lora_dev_mem_info(size_t *free_bytes, size_t *total_bytes);
int lora_dev_malloc(void **p, size_t bytes);
int lora_dev_free(void *p);
int lora_dev_host_alloc(void **p, size_t bytes);
int lora_dev_host_free(void *p);
int lora_dev_memcpy(void *dst, const void *src, size_t bytes, lora_stream s);
int lora_dev_memset(void *p, int byte, size_t bytes, lora_stream s);
int lora_dev_stream_create(lora_stream *s);
int lora_dev_stream_destroy(lora_stream s);
int lora_dev_stream_sync(lora_stream s);

/* blas_dev.cu */
int lora_blas_create(void **h, lora_stream s);
void lora_blas_destroy(void *h);
int lora_blas_gemm(void *h, int ta, int tb, int m, int n, int k, float alpha, const void *A, int a_bf16,
		   int lda, const void *B, int b_bf16, int ldb, float beta, float *C, int ldc);

/* one file each */
int lora_k_nf4_dequant(const uint8_t *packed, const uint8_t *qabsmax, const float *absmax2, float offset,
		       const float *code8, uint64_t start, uint64_t count, void *out, int out_bf16,
		       lora_stream s);
int lora_k_rmsnorm_fwd(const float *x, const float *w, int N, int C, float eps, float *y, float *rstd,
		       lora_stream s);
int lora_k_rmsnorm_bwd(const float *x, const float *w, const float *rstd, const float *dy, int N, int C,
		       float *dx, int accumulate, lora_stream s);
int lora_k_rope_table(const float *inv_freq, int T, int half, float *cosb, float *sinb, lora_stream s);
int lora_k_rope_fwd(const float *src, int ld, float *dst, int B, int T, int nh, int D, const float *cosb,
		    const float *sinb, int rope, lora_stream s);
int lora_k_rope_bwd(const float *src, float *dst, int ld, int B, int T, int nh, int D, const float *cosb,
		    const float *sinb, int rope, lora_stream s);
int lora_k_swiglu_fwd(const float *gu, int N, int F, float *act, lora_stream s);
int lora_k_swiglu_bwd(const float *gu, const float *dact, int N, int F, float *dgu, lora_stream s);
int lora_k_geglu_fwd(const float *gu, int N, int F, float *act, lora_stream s);
int lora_k_geglu_bwd(const float *gu, const float *dact, int N, int F, float *dgu, lora_stream s);
int lora_k_headnorm_fwd(float *y, int ld, int N, int H, int KV, int D, const float *wq, const float *wk, float eps,
			float *raw, float *rstd, lora_stream s);
int lora_k_headnorm_bwd(float *dy, int ld, int N, int H, int KV, int D, const float *wq, const float *wk,
			const float *raw, const float *rstd, lora_stream s);
int lora_k_add(const float *a, const float *b, float *y, size_t n, lora_stream s);
int lora_k_addmul(const float *a, const float *b, float *y, size_t n, lora_stream s);
int lora_k_grad_norm(const float *g, size_t n, float max_norm, double *scratch, double *norm, float *coef,
		     lora_stream s);
int lora_k_adamw(float *p, const float *g, float *m, float *v, size_t n, struct lora_cuda_adamw k,
		 const float *coef, lora_stream s);

int lora_k_lora_fwd(void *h, const float *xa, int N, int in, int out, int r, const float *A, const float *B,
		    float scale, float *u, float *y, int ldy, lora_stream s);
int lora_k_lora_bwd(void *h, const float *xa, const float *dy, int lddy, const float *u, int N, int in, int out,
		    int r, const float *A, const float *B, float scale, float *gA, float *gB, float *du, float *dx,
		    const float *mask, float *xd, lora_stream s);
int lora_k_xent_stats(const float *z, int ld, int nc, int v0, int vc, const int32_t *tgt, float *m, double *s,
		      float *zt, int first, lora_stream st);
int lora_k_xent_loss(const float *m, const double *s, const float *zt, const int32_t *tgt, int nc, double *loss,
		     lora_stream st);
int lora_k_xent_grad(float *z, int ld, int nc, int v0, int vc, const int32_t *tgt, const float *m, const double *s,
		     float scale, lora_stream st);
int lora_k_attn_fwd(const float *q, const float *k, const float *v, int B, int H, int KV, int T, int D,
		    float scaling, int window, float *att, float *lse, lora_stream s);
int lora_k_attn_bwd(const float *q, const float *k, const float *v, const float *lse, const float *datt, int B, int H,
		    int KV, int T, int D, float scaling, int window, float *delta, float *dq, float *dk, float *dv,
		    lora_stream s);
int lora_k_attn_fwd_softcap(const float *q, const float *k, const float *v, int B, int H, int KV, int T, int D,
			    float scaling, int window, float cap, float *att, float *lse, lora_stream s);
int lora_k_attn_bwd_softcap(const float *q, const float *k, const float *v, const float *lse, const float *datt, int B,
			    int H, int KV, int T, int D, float scaling, int window, float cap, float *delta, float *dq,
			    float *dk, float *dv, lora_stream s);
int lora_k_softcap(float *z, int ld, int rows, int cols, float cap, lora_stream st);
int lora_k_xent_grad_softcap(float *z, int ld, int nc, int v0, int vc, const int32_t *tgt, const float *m,
			     const double *s, float scale, float cap, lora_stream st);

#ifdef __cplusplus
}
#endif

#endif
