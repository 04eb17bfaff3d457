// headnorm.cu - twins of headnorm_part and headnorm_bwd_part (train/model_cpu.c):
// the per-head RMSNorm of q and k before RoPE (Qwen3's and Gemma 3's q_norm /
// k_norm; Gemma's (1 + w) is in the weights as stored, train/net.c), in place
// on the q|k|v rows of the projections.
//
//   y [N, ld]: per token, H query heads then KV key heads of D columns (the
//   first (H + KV)·D of each row; v after them is not touched), head h scaled
//   by wq [D] when h < H, else wk [D]:
//   forward:  raw [N, H+KV, D] = x (the input, kept),  rstd [N, H+KV] = 1 / sqrt(mean(x²) + eps),
//             y = w · (x · rstd)                                       (in place)
//   backward: y holds d normed; with kk = mean(w·dy·x)·r³, r = rstd:
//             y = r·(w·dy) - x·kk = d raw                              (in place)
// The arithmetic of rmsnorm.cu over rows of D; one warp per (token, head),
// four heads a block.  The sums are fp32 (each lane strides over the head,
// then a butterfly over the warp); the CPU sums in double, so the two differ
// by about (D/32 + 5)·2^-24 relative to the sum of the magnitudes.
#include "kernels/cuda_common.cuh"
#include "kernels/kernels.h"

#define HN_WARPS 4

__global__ void __launch_bounds__(32 * HN_WARPS) headnorm_fwd_kernel(float *__restrict__ y, int ld, size_t rows,
								     int H, int nh, int D,
								     const float *__restrict__ wq,
								     const float *__restrict__ wk, float eps,
								     float *__restrict__ raw,
								     float *__restrict__ rstd)
{
	const size_t row = (size_t)blockIdx.x * HN_WARPS + threadIdx.x / 32;
	const int lane = threadIdx.x % 32;

	if (row >= rows)
		return;   // the whole warp alike
	const size_t n = row / nh;
	const int h = (int)(row % nh);
	float *yr = y + n * ld + (size_t)h * D, *xr = raw + row * D;
	const float *w = h < H ? wq : wk;
	float ss = 0.0f, r;

	for (int i = lane; i < D; i += 32) {
		const float x = yr[i];
		xr[i] = x;
		ss = __fadd_rn(ss, __fmul_rn(x, x));
	}
	ss = lora_warp_sum(ss);
	r = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, (float)D), eps)));
	if (lane == 0)
		rstd[row] = r;
	for (int i = lane; i < D; i += 32)
		yr[i] = __fmul_rn(w[i], __fmul_rn(xr[i], r));
}

__global__ void __launch_bounds__(32 * HN_WARPS) headnorm_bwd_kernel(float *__restrict__ y, int ld, size_t rows,
								     int H, int nh, int D,
								     const float *__restrict__ wq,
								     const float *__restrict__ wk,
								     const float *__restrict__ raw,
								     const float *__restrict__ rstd)
{
	const size_t row = (size_t)blockIdx.x * HN_WARPS + threadIdx.x / 32;
	const int lane = threadIdx.x % 32;

	if (row >= rows)
		return;
	const size_t n = row / nh;
	const int h = (int)(row % nh);
	float *dy = y + n * ld + (size_t)h * D;
	const float *xr = raw + row * D, *w = h < H ? wq : wk;
	const float r = rstd[row];
	float dot = 0.0f, kk;

	for (int i = lane; i < D; i += 32)
		dot = __fadd_rn(dot, __fmul_rn(__fmul_rn(w[i], dy[i]), xr[i]));
	dot = lora_warp_sum(dot);
	kk = __fmul_rn(__fmul_rn(__fmul_rn(__fdiv_rn(dot, (float)D), r), r), r);
	for (int i = lane; i < D; i += 32)
		dy[i] = __fsub_rn(__fmul_rn(r, __fmul_rn(w[i], dy[i])), __fmul_rn(xr[i], kk));
}

static int headnorm_shape(int N, int H, int KV, int D, int ld, size_t *rows)
{
	if (N < 0 || H < 0 || KV < 0 || D < 1 || ld < (H + KV) * D)
		return (int)cudaErrorInvalidValue;
	*rows = (size_t)N * (H + KV);
	return 0;
}

extern "C" int lora_k_headnorm_fwd(float *y, int ld, int N, int H, int KV, int D, const float *wq, const float *wk,
				   float eps, float *raw, float *rstd, lora_stream s)
{
	size_t rows;
	const int st = headnorm_shape(N, H, KV, D, ld, &rows);

	if (st || rows == 0)
		return st;
	LAUNCH(headnorm_fwd_kernel, lora_cdiv(rows, HN_WARPS), 32 * HN_WARPS, 0, (cudaStream_t)s)(
		y, ld, rows, H, H + KV, D, wq, wk, eps, raw, rstd);
	KCHECK();
	return 0;
}

extern "C" int lora_k_headnorm_bwd(float *dy, int ld, int N, int H, int KV, int D, const float *wq, const float *wk,
				   const float *raw, const float *rstd, lora_stream s)
{
	size_t rows;
	const int st = headnorm_shape(N, H, KV, D, ld, &rows);

	if (st || rows == 0)
		return st;
	LAUNCH(headnorm_bwd_kernel, lora_cdiv(rows, HN_WARPS), 32 * HN_WARPS, 0, (cudaStream_t)s)(
		dy, ld, rows, H, H + KV, D, wq, wk, raw, rstd);
	KCHECK();
	return 0;
}
