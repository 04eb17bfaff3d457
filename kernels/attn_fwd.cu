// attn_fwd.cu - twin of attn_fwd_part (train/model_cpu.c): causal attention
// with grouped KV heads, an optional sliding window, in the flash-attention
// manner: online softmax over key tiles in shared memory, never a T×T matrix.
//
//   q [B, H, T, D], k, v [B, KV, T, D] (head-major, after RoPE);  query i of head h
//   sees keys [lo(i), i] of kv head h / (H/KV), lo(i) = max(0, i - window + 1)
//   (window 0: all of them).  out att [B·T, H·D] token-major, lse [B, H, T].
//   s_j = (q_i·k_j)·scaling, soft-capped (Gemma 2) when cap > 0: s_j = cap·tanh(s_j / cap);
//   running max m, sum l and acc rescaled by
//   e^(m_old - m_new) when the max grows;  out = acc / l,  lse = m + log(l).
// Right padding needs nothing more: padded positions come after the real
// ones, so causality already keeps them out of every real query.
// One thread per query row (BQ rows a block), key tiles of BK rows of K and V
// in dynamic shared memory (2·BK·D floats, 32 KiB at D = 128, within the
// 48 KiB every launch may have); D at most 128.  Plain fp32 on the
// CUDA cores: a tensor-core version (bf16 tiles, mma) is for a next step, and
// this one stays its reference on the GPU.
#include "kernels/cuda_common.cuh"
#include "kernels/kernels.h"

#define BQ 64
#define BK 32

__device__ __forceinline__ int attn_key_lo(int i, int window)
{
	return window > 0 && i - window + 1 > 0 ? i - window + 1 : 0;
}

template <int MAXD>
__global__ void __launch_bounds__(BQ) attn_fwd_kernel(const float *__restrict__ q, const float *__restrict__ k,
						      const float *__restrict__ v, float *__restrict__ att,
						      float *__restrict__ lse, int H, int KV, int T, int D,
						      float scaling, int window, float cap)
{
	DYN_SHARED(float, sm);
	float *Ks = sm, *Vs = sm + BK * D;
	const int b = blockIdx.z, h = blockIdx.y, kvh = h / (H / KV);
	const int q0 = blockIdx.x * BQ, i = q0 + threadIdx.x, q1 = min(q0 + BQ, T);
	const bool active = i < T;
	const float *kb = k + ((size_t)b * KV + kvh) * T * D, *vb = v + ((size_t)b * KV + kvh) * T * D;
	const int lo = attn_key_lo(i, window);
	float qr[MAXD], acc[MAXD], m = -INFINITY, l = 0.0f;

	for (int d = 0; d < D; d++) {
		qr[d] = active ? q[(((size_t)b * H + h) * T + i) * D + d] : 0.0f;
		acc[d] = 0.0f;
	}
	for (int j0 = attn_key_lo(q0, window); j0 < q1; j0 += BK) {
		const int nk = min(BK, q1 - j0);

		for (int e = threadIdx.x; e < nk * D; e += blockDim.x) {
			Ks[e] = kb[(size_t)j0 * D + e];
			Vs[e] = vb[(size_t)j0 * D + e];
		}
		__syncthreads();
		for (int jj = 0; active && jj < nk; jj++) {
			const int j = j0 + jj;
			float s = 0.0f, mn, corr, p;

			if (j < lo || j > i)
				continue;
			for (int d = 0; d < D; d++)
				s = __fadd_rn(s, __fmul_rn(qr[d], Ks[jj * D + d]));
			s = __fmul_rn(s, scaling);
			if (cap > 0.0f)
				s = __fmul_rn(tanhf(__fdiv_rn(s, cap)), cap);
			mn = fmaxf(m, s);
			corr = expf(__fsub_rn(m, mn));   // e^-inf = 0 on the first key
			p = expf(__fsub_rn(s, mn));
			l = __fadd_rn(__fmul_rn(l, corr), p);
			for (int d = 0; d < D; d++)
				acc[d] = __fadd_rn(__fmul_rn(acc[d], corr), __fmul_rn(p, Vs[jj * D + d]));
			m = mn;
		}
		__syncthreads();
	}
	if (!active)
		return;
	{
		float *o = att + ((size_t)b * T + i) * (size_t)H * D + (size_t)h * D;
		for (int d = 0; d < D; d++)
			o[d] = __fdiv_rn(acc[d], l);
		lse[((size_t)b * H + h) * T + i] = __fadd_rn(m, logf(l));
	}
}

extern "C" int lora_k_attn_fwd_softcap(const float *q, const float *k, const float *v, int B, int H, int KV, int T,
				       int D, float scaling, int window, float cap, float *att, float *lse,
				       lora_stream s)
{
	const dim3 grid(lora_cdiv(T, BQ), (unsigned)H, (unsigned)B);
	const size_t shmem = sizeof(float) * 2 * BK * (size_t)D;

	if (B <= 0 || T <= 0)
		return 0;
	if (D < 1 || D > 128 || KV < 1 || H % KV)
		return (int)cudaErrorInvalidValue;
	if (D <= 64)
		LAUNCH(attn_fwd_kernel<64>, grid, BQ, shmem, (cudaStream_t)s)(q, k, v, att, lse, H, KV, T, D, scaling,
									   window, cap);
	else
		LAUNCH(attn_fwd_kernel<128>, grid, BQ, shmem, (cudaStream_t)s)(q, k, v, att, lse, H, KV, T, D, scaling,
									    window, cap);
	KCHECK();
	return 0;
}

extern "C" int lora_k_attn_fwd(const float *q, const float *k, const float *v, int B, int H, int KV, int T, int D,
			       float scaling, int window, float *att, float *lse, lora_stream s)
{
	return lora_k_attn_fwd_softcap(q, k, v, B, H, KV, T, D, scaling, window, 0.0f, att, lse, s);
}
