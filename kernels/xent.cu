// xent.cu - twin of head_part (train/model_cpu.c): cross-entropy of each
// token over the vocabulary, and with backward the logits turned into
// d logits = (softmax - onehot)·scale, computed over vocabulary chunks so that
// the logits of a whole row never need to exist at once (the LM head's
// product runs per chunk of W_lm rows through the gemm wrapper; the host
// code calls these kernels on each chunk it makes).
//
//   pass 1, each chunk [v0, v0 + vc) of each row n (xent_stats, first = first chunk):
//       m[n] = running max of z;  s[n] = Σ e^(z - m[n]) in double, rescaled
//       by e^(m_old - m_new) when the max grows;  zt[n] = z[tgt[n]] when in the chunk
//   then (xent_loss):  loss[n] = m + log(s) - zt, or -1 for tgt < 0 (unlabelled)
//   pass 2, each chunk again (xent_grad):  z = e^(z - m)·(scale / (float)s),
//       z[tgt] -= scale;  rows with tgt < 0 become 0
// The CPU takes the max over the whole row first and sums e^(z - max) in
// double; here the terms of early chunks are e^(z - m_chunk)·e^(m_chunk - max),
// which differ by the rounding of the fp32 arguments (|z - m|·2^-24
// relative) and expf's 2 ulp.  One block of 256 threads per row.
//
// Gemma 2's final soft-capping (the CPU's net->final_softcap in loss_head and
// head_part): softcap turns each chunk of logits into cap·tanh(z / cap) before
// xent_stats (and before xent_grad, on the recomputed chunk), and
// xent_grad_softcap multiplies the gradient by d capped / d logit = 1 - (z/cap)²
// of the capped z it overwrites.
#include "kernels/cuda_common.cuh"
#include "kernels/kernels.h"

#define XENT_THREADS 256

__device__ __forceinline__ double block_sum_dd(double v, double *scratch)
{
	const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;

	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	if (lane == 0)
		scratch[warp] = v;
	__syncthreads();
	v = lane < nw ? scratch[lane] : 0.0;
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	__syncthreads();
	return v;
}

__device__ __forceinline__ float block_max(float v, float *scratch)
{
	const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;

	v = lora_warp_max(v);
	if (lane == 0)
		scratch[warp] = v;
	__syncthreads();
	v = lane < nw ? scratch[lane] : -INFINITY;
	v = lora_warp_max(v);
	__syncthreads();
	return v;
}

__global__ void __launch_bounds__(XENT_THREADS) xent_stats_kernel(const float *__restrict__ z, int ld, int v0,
								  int vc, const int32_t *__restrict__ tgt,
								  float *__restrict__ m, double *__restrict__ s,
								  float *__restrict__ zt, int first)
{
	__shared__ float fs[32];
	__shared__ double ds[32];
	const int n = blockIdx.x, t = tgt[n];
	const float *zn = z + (size_t)n * ld;
	float mx = -INFINITY, mold, mnew;
	double sum = 0.0;

	if (t < 0)
		return;   // the whole block: unlabelled rows are skipped alike
	for (int v = threadIdx.x; v < vc; v += blockDim.x)
		mx = fmaxf(mx, zn[v]);
	mx = block_max(mx, fs);
	mold = first ? -INFINITY : m[n];
	mnew = fmaxf(mold, mx);
	for (int v = threadIdx.x; v < vc; v += blockDim.x)
		sum += (double)expf(__fsub_rn(zn[v], mnew));
	sum = block_sum_dd(sum, ds);
	if (threadIdx.x == 0) {
		const double prev = first ? 0.0 : s[n] * (double)expf(__fsub_rn(mold, mnew));
		m[n] = mnew;
		s[n] = prev + sum;
		if (t >= v0 && t < v0 + vc)
			zt[n] = zn[t - v0];
	}
}

__global__ void xent_loss_kernel(const float *__restrict__ m, const double *__restrict__ s,
				 const float *__restrict__ zt, const int32_t *__restrict__ tgt, int nc,
				 double *__restrict__ loss)
{
	const int n = blockIdx.x * blockDim.x + threadIdx.x;

	if (n >= nc)
		return;
	loss[n] = tgt[n] < 0 ? -1.0 : (double)m[n] + log(s[n]) - (double)zt[n];
}

__global__ void __launch_bounds__(XENT_THREADS) xent_grad_kernel(float *__restrict__ z, int ld, int v0, int vc,
								 const int32_t *__restrict__ tgt,
								 const float *__restrict__ m,
								 const double *__restrict__ s, float scale, float cap)
{
	const int n = blockIdx.x, t = tgt[n];
	float *zn = z + (size_t)n * ld;

	if (t < 0) {
		for (int v = threadIdx.x; v < vc; v += blockDim.x)
			zn[v] = 0.0f;
		return;
	}
	const float mn = m[n], f = __fdiv_rn(scale, (float)s[n]);
	for (int v = threadIdx.x; v < vc; v += blockDim.x) {
		const float zv = zn[v];
		float e = __fmul_rn(expf(__fsub_rn(zv, mn)), f);
		if (v0 + v == t)
			e = __fsub_rn(e, scale);
		if (cap > 0.0f) {
			const float tc = __fdiv_rn(zv, cap);
			e = __fmul_rn(e, __fsub_rn(1.0f, __fmul_rn(tc, tc)));
		}
		zn[v] = e;
	}
}

__global__ void softcap_kernel(float *__restrict__ z, int ld, int cols, size_t total, float cap)
{
	const size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x;

	if (j >= total)
		return;
	float *p = z + j / cols * ld + j % cols;
	*p = __fmul_rn(tanhf(__fdiv_rn(*p, cap)), cap);
}

extern "C" int lora_k_softcap(float *z, int ld, int rows, int cols, float cap, lora_stream st)
{
	const size_t total = (size_t)(rows > 0 ? rows : 0) * (cols > 0 ? cols : 0);

	if (total == 0 || !(cap > 0.0f))
		return 0;
	LAUNCH(softcap_kernel, lora_cdiv(total, 256), 256, 0, (cudaStream_t)st)(z, ld, cols, total, cap);
	KCHECK();
	return 0;
}

extern "C" int lora_k_xent_stats(const float *z, int ld, int nc, int v0, int vc, const int32_t *tgt, float *m,
				 double *s, float *zt, int first, lora_stream st)
{
	if (nc <= 0 || vc <= 0)
		return 0;
	LAUNCH(xent_stats_kernel, (unsigned)nc, XENT_THREADS, 0, (cudaStream_t)st)(z, ld, v0, vc, tgt, m, s, zt,
										  first);
	KCHECK();
	return 0;
}

extern "C" int lora_k_xent_loss(const float *m, const double *s, const float *zt, const int32_t *tgt, int nc,
				double *loss, lora_stream st)
{
	if (nc <= 0)
		return 0;
	LAUNCH(xent_loss_kernel, lora_cdiv(nc, 256), 256, 0, (cudaStream_t)st)(m, s, zt, tgt, nc, loss);
	KCHECK();
	return 0;
}

extern "C" int lora_k_xent_grad_softcap(float *z, int ld, int nc, int v0, int vc, const int32_t *tgt,
					const float *m, const double *s, float scale, float cap, lora_stream st)
{
	if (nc <= 0 || vc <= 0)
		return 0;
	LAUNCH(xent_grad_kernel, (unsigned)nc, XENT_THREADS, 0, (cudaStream_t)st)(z, ld, v0, vc, tgt, m, s, scale,
										 cap);
	KCHECK();
	return 0;
}

extern "C" int lora_k_xent_grad(float *z, int ld, int nc, int v0, int vc, const int32_t *tgt, const float *m,
				const double *s, float scale, lora_stream st)
{
	return lora_k_xent_grad_softcap(z, ld, nc, v0, vc, tgt, m, s, scale, 0.0f, st);
}
