// rmsnorm.cu - twins of rmsnorm_part and rmsnorm_bwd_part (train/model_cpu.c):
// transformers' LlamaRMSNorm in fp32 and its backward.
//
//   forward:  rstd[n] = 1 / sqrt(mean(x[n]²) + eps),  y[n, i] = w[i] · (x[n, i] · rstd[n])
//   backward: kk = mean(w·dy·x) · r³,  dx[n, i] (+)= r·(w[i]·dy[n, i]) - x[n, i]·kk
// One block of 256 threads per row (token).  The sums are fp32 (each thread
// strides over the row, then a warp butterfly and a sum of the 8 warps); the
// CPU sums in double, so the two differ by the fp32 rounding of the sums,
// about (C/256 + 8)·2^-24 relative to the sum of the magnitudes of the terms.
// x and y (dy and dx) may not alias.
#include "kernels/cuda_common.cuh"
#include "kernels/kernels.h"

#define NORM_THREADS 256

__global__ void __launch_bounds__(NORM_THREADS) rmsnorm_fwd_kernel(const float *__restrict__ x,
								   const float *__restrict__ w, int C, float eps,
								   float *__restrict__ y, float *__restrict__ rstd)
{
	__shared__ float scratch[32];
	const size_t n = blockIdx.x;
	const float *xn = x + n * C;
	float *yn = y + n * C;
	float ss = 0.0f, r;

	for (int i = threadIdx.x; i < C; i += blockDim.x)
		ss = __fadd_rn(ss, __fmul_rn(xn[i], xn[i]));
	ss = lora_block_sum(ss, scratch);
	r = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, (float)C), eps)));
	if (threadIdx.x == 0)
		rstd[n] = r;
	for (int i = threadIdx.x; i < C; i += blockDim.x)
		yn[i] = __fmul_rn(w[i], __fmul_rn(xn[i], r));
}

__global__ void __launch_bounds__(NORM_THREADS) rmsnorm_bwd_kernel(const float *__restrict__ x,
								   const float *__restrict__ w,
								   const float *__restrict__ rstd,
								   const float *__restrict__ dy, int C,
								   float *__restrict__ dx, int accumulate)
{
	__shared__ float scratch[32];
	const size_t n = blockIdx.x;
	const float *xn = x + n * C, *dyn = dy + n * C;
	float *dxn = dx + n * C;
	const float r = rstd[n];
	float dot = 0.0f, kk;

	for (int i = threadIdx.x; i < C; i += blockDim.x)
		dot = __fadd_rn(dot, __fmul_rn(__fmul_rn(w[i], dyn[i]), xn[i]));
	dot = lora_block_sum(dot, scratch);
	kk = __fmul_rn(__fmul_rn(__fmul_rn(__fdiv_rn(dot, (float)C), r), r), r);
	for (int i = threadIdx.x; i < C; i += blockDim.x) {
		const float g = __fsub_rn(__fmul_rn(r, __fmul_rn(w[i], dyn[i])), __fmul_rn(xn[i], kk));
		dxn[i] = accumulate ? __fadd_rn(dxn[i], g) : g;
	}
}

extern "C" int lora_k_rmsnorm_fwd(const float *x, const float *w, int N, int C, float eps, float *y,
				  float *rstd, lora_stream s)
{
	if (N <= 0)
		return 0;
	LAUNCH(rmsnorm_fwd_kernel, (unsigned)N, NORM_THREADS, 0, (cudaStream_t)s)(x, w, C, eps, y, rstd);
	KCHECK();
	return 0;
}

extern "C" int lora_k_rmsnorm_bwd(const float *x, const float *w, const float *rstd, const float *dy, int N,
				  int C, float *dx, int accumulate, lora_stream s)
{
	if (N <= 0)
		return 0;
	LAUNCH(rmsnorm_bwd_kernel, (unsigned)N, NORM_THREADS, 0, (cudaStream_t)s)(x, w, rstd, dy, C, dx,
										 accumulate);
	KCHECK();
	return 0;
}
