// lora.cu - twin of the LoRA terms of lin_fwd and lin_bwd (train/model_cpu.c):
// the same products, in the same order, through the gemm wrapper
// (blas_dev.h: cuBLAS on a GPU, OpenBLAS on the CPU execution layer), fp32.
//
//   forward   u = xa·Aᵀ                    [N, r]   (kept for backward)
//             y += scale·u·Bᵀ              [N, out], row stride ldy (into the frozen output)
//   backward  gB += scale·dyᵀ·u            [out, r]
//             du = scale·dy·B              [N, r]
//             gA += duᵀ·xa                 [r, in]
//             dx += du·A                   [N, in]   (no dropout)
//             xd = du·A, dx += xd·mask               (dropout: residual.cu's addmul)
// No kernel of its own: r is small (8..64), so these are thin products that
// cuBLAS does well; what differs from the CPU is only the order of fp32 sums.
#include "kernels/cuda_common.cuh"
#include "kernels/blas_dev.h"

#define TRY(call)                       \
	do {                            \
		int st_ = (call);       \
		if (st_)                \
			return st_;     \
	} while (0)

extern "C" int lora_k_lora_fwd(void *h, const float *xa, int N, int in, int out, int r, const float *A,
			       const float *B, float scale, float *u, float *y, int ldy, lora_stream s)
{
	(void)s;   // the handle is bound to the stream
	if (N <= 0)
		return 0;
	TRY(lora_blas_gemm(h, 0, 1, N, r, in, 1.0f, xa, 0, in, A, 0, in, 0.0f, u, r));
	TRY(lora_blas_gemm(h, 0, 1, N, out, r, scale, u, 0, r, B, 0, r, 1.0f, y, ldy));
	return 0;
}

extern "C" int lora_k_lora_bwd(void *h, const float *xa, const float *dy, int lddy, const float *u, int N, int in,
			       int out, int r, const float *A, const float *B, float scale, float *gA, float *gB,
			       float *du, float *dx, const float *mask, float *xd, lora_stream s)
{
	if (N <= 0)
		return 0;
	TRY(lora_blas_gemm(h, 1, 0, out, r, N, scale, dy, 0, lddy, u, 0, r, 1.0f, gB, r));
	TRY(lora_blas_gemm(h, 0, 0, N, r, out, scale, dy, 0, lddy, B, 0, r, 0.0f, du, r));
	TRY(lora_blas_gemm(h, 1, 0, r, in, N, 1.0f, du, 0, r, xa, 0, in, 1.0f, gA, in));
	if (!dx)
		return 0;
	if (!mask)
		return lora_blas_gemm(h, 0, 0, N, in, r, 1.0f, du, 0, r, A, 0, in, 1.0f, dx, in);
	TRY(lora_blas_gemm(h, 0, 0, N, in, r, 1.0f, du, 0, r, A, 0, in, 0.0f, xd, in));
	return lora_k_addmul(xd, mask, dx, (size_t)N * in, s);
}
