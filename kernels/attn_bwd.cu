// attn_bwd.cu - twin of attn_bwd_part (train/model_cpu.c): the gradients of
// attn_fwd.cu's causal GQA attention (sliding window too), recomputing the
// probabilities from the forward's lse, so no T×T matrix is ever kept, and
// without atomics, so every result is the same from run to run.
//
//   q [B, H, T, D], k, v [B, KV, T, D] head-major; dO = datt [B·T, H·D] token-major;
//   query i of head h sees keys j in [lo(i), i] of kv head h / (H/KV).
//   s_ij = (q_i·k_j)·scaling,  p_ij = e^(s_ij - lse_i),  dp_ij = dO_i·v_j,
//   Δ_i = Σ_j p_ij·dp_ij  (the CPU's `dot`, in the same key order),
//   ds_ij = p_ij·(dp_ij - Δ_i),
//   soft-capped (Gemma 2, cap > 0): s_ij = cap·t, t = tanh(s_ij / cap), and ds_ij times 1 - t²,
//   dq_i = scaling·Σ_j ds_ij·k_j,
//   dk_j = scaling·Σ_h Σ_i ds_ij·q_i,  dv_j = Σ_h Σ_i p_ij·dO_i  (h over j's group,
//   i over the queries that see j: [j, hi(j)], hi(j) = min(T-1, j + window - 1)).
//
// Two kernels, in order on the stream:
//   attn_dq   one thread per query row (BQ rows a block), key tiles of K and V
//             in shared memory; two passes over its keys, Δ first, then dq;
//             it leaves Δ [B, H, T] in the caller's scratch for
//   attn_dkv  one thread per key row of a kv head (BK rows a block), holding
//             k_j, v_j and its dk, dv in registers, over tiles of BQ2 queries
//             of each head of the group (q, dO, lse, Δ in shared memory);
//             writes dk and dv once (they are overwritten, not accumulated).
// Both compute s_ij and p_ij with the same operations in the same order, so
// the p that dq and dk/dv use are the same numbers.  Shared memory at most
// 2·32·D floats (32 KiB at D = 128).  Plain fp32 on the CUDA cores, as
// attn_fwd.cu: the reference a tensor-core version would be tested against.
#include "kernels/cuda_common.cuh"
#include "kernels/kernels.h"

#define BQ 64    // query rows per attn_dq block
#define BK 32    // key rows per tile (attn_dq) and per attn_dkv block
#define BQ2 32   // query rows per tile (attn_dkv)

__device__ __forceinline__ int bwd_key_lo(int i, int window)
{
	return window > 0 && i - window + 1 > 0 ? i - window + 1 : 0;
}

template <int MAXD>
__global__ void __launch_bounds__(BQ) attn_dq_kernel(const float *__restrict__ q, const float *__restrict__ k,
						     const float *__restrict__ v, const float *__restrict__ datt,
						     const float *__restrict__ lse, float *__restrict__ delta,
						     float *__restrict__ dq, int H, int KV, int T, int D,
						     float scaling, int window, float cap)
{
	DYN_SHARED(float, sm);
	float *Ks = sm, *Vs = sm + BK * D;
	const int b = blockIdx.z, h = blockIdx.y, kvh = h / (H / KV);
	const int q0 = blockIdx.x * BQ, i = q0 + threadIdx.x, q1 = min(q0 + BQ, T);
	const bool active = i < T;
	const size_t row = ((size_t)b * H + h) * T + i;
	const float *kb = k + ((size_t)b * KV + kvh) * T * D, *vb = v + ((size_t)b * KV + kvh) * T * D;
	const float *dO = datt + ((size_t)b * T + i) * (size_t)H * D + (size_t)h * D;
	const int lo = bwd_key_lo(i, window);
	const float L = active ? lse[row] : 0.0f;
	float qr[MAXD], dor[MAXD], acc[MAXD], dlt = 0.0f;

	for (int d = 0; d < D; d++) {
		qr[d] = active ? q[row * D + d] : 0.0f;
		dor[d] = active ? dO[d] : 0.0f;
		acc[d] = 0.0f;
	}
	for (int pass = 0; pass < 2; pass++)
		for (int j0 = bwd_key_lo(q0, window); j0 < q1; j0 += BK) {
			const int nk = min(BK, q1 - j0);

			for (int e = threadIdx.x; e < nk * D; e += blockDim.x) {
				Ks[e] = kb[(size_t)j0 * D + e];
				Vs[e] = vb[(size_t)j0 * D + e];
			}
			__syncthreads();
			for (int jj = 0; active && jj < nk; jj++) {
				const int j = j0 + jj;
				float s = 0.0f, dp = 0.0f, p, g = 1.0f;

				if (j < lo || j > i)
					continue;
				for (int d = 0; d < D; d++)
					s = __fadd_rn(s, __fmul_rn(qr[d], Ks[jj * D + d]));
				s = __fmul_rn(s, scaling);
				if (cap > 0.0f) {
					const float t = tanhf(__fdiv_rn(s, cap));
					s = __fmul_rn(t, cap);
					g = __fsub_rn(1.0f, __fmul_rn(t, t));
				}
				p = expf(__fsub_rn(s, L));
				for (int d = 0; d < D; d++)
					dp = __fadd_rn(dp, __fmul_rn(dor[d], Vs[jj * D + d]));
				if (pass == 0) {
					dlt = __fadd_rn(dlt, __fmul_rn(p, dp));
				} else {
					float ds = __fmul_rn(p, __fsub_rn(dp, dlt));
					if (cap > 0.0f)
						ds = __fmul_rn(ds, g);
					for (int d = 0; d < D; d++)
						acc[d] = __fadd_rn(acc[d], __fmul_rn(ds, Ks[jj * D + d]));
				}
			}
			__syncthreads();
		}
	if (!active)
		return;
	delta[row] = dlt;
	for (int d = 0; d < D; d++)
		dq[row * D + d] = __fmul_rn(acc[d], scaling);
}

template <int MAXD>
__global__ void __launch_bounds__(BK) attn_dkv_kernel(const float *__restrict__ q, const float *__restrict__ k,
						      const float *__restrict__ v, const float *__restrict__ datt,
						      const float *__restrict__ lse, const float *__restrict__ delta,
						      float *__restrict__ dk, float *__restrict__ dv, int H, int KV,
						      int T, int D, float scaling, int window, float cap)
{
	DYN_SHARED(float, sm);
	float *Qs = sm, *Os = sm + BQ2 * D, *Ls = sm + 2 * BQ2 * D, *Ds = Ls + BQ2;
	const int b = blockIdx.z, kvh = blockIdx.y, grp = H / KV;
	const int j0 = blockIdx.x * BK, j = j0 + threadIdx.x, j1 = min(j0 + BK, T);
	const bool active = j < T;
	const size_t krow = ((size_t)b * KV + kvh) * T + j;
	// the last query that sees any key of the block
	const int ihi = window > 0 ? min(T - 1, j1 - 1 + window - 1) : T - 1;
	float kr[MAXD], vr[MAXD], gk[MAXD], gv[MAXD];

	for (int d = 0; d < D; d++) {
		kr[d] = active ? k[krow * D + d] : 0.0f;
		vr[d] = active ? v[krow * D + d] : 0.0f;
		gk[d] = 0.0f;
		gv[d] = 0.0f;
	}
	for (int h = kvh * grp; h < (kvh + 1) * grp; h++) {
		const float *qh = q + ((size_t)b * H + h) * T * D;
		const float *oh = datt + (size_t)b * T * H * D + (size_t)h * D;

		for (int i0 = j0; i0 <= ihi; i0 += BQ2) {
			const int ni = min(BQ2, ihi + 1 - i0);

			for (int e = threadIdx.x; e < ni * D; e += blockDim.x) {
				const int ii = e / D, d = e % D;
				Qs[e] = qh[(size_t)i0 * D + e];
				Os[e] = oh[(size_t)(i0 + ii) * H * D + d];
			}
			for (int ii = threadIdx.x; ii < ni; ii += blockDim.x) {
				Ls[ii] = lse[((size_t)b * H + h) * T + i0 + ii];
				Ds[ii] = delta[((size_t)b * H + h) * T + i0 + ii];
			}
			__syncthreads();
			for (int ii = 0; active && ii < ni; ii++) {
				const int i = i0 + ii;
				float s = 0.0f, dp = 0.0f, p, ds, g = 1.0f;

				if (i < j || bwd_key_lo(i, window) > j)
					continue;
				for (int d = 0; d < D; d++)
					s = __fadd_rn(s, __fmul_rn(Qs[ii * D + d], kr[d]));
				s = __fmul_rn(s, scaling);
				if (cap > 0.0f) {
					const float t = tanhf(__fdiv_rn(s, cap));
					s = __fmul_rn(t, cap);
					g = __fsub_rn(1.0f, __fmul_rn(t, t));
				}
				p = expf(__fsub_rn(s, Ls[ii]));
				for (int d = 0; d < D; d++)
					dp = __fadd_rn(dp, __fmul_rn(Os[ii * D + d], vr[d]));
				ds = __fmul_rn(p, __fsub_rn(dp, Ds[ii]));
				if (cap > 0.0f)
					ds = __fmul_rn(ds, g);
				for (int d = 0; d < D; d++) {
					gv[d] = __fadd_rn(gv[d], __fmul_rn(p, Os[ii * D + d]));
					gk[d] = __fadd_rn(gk[d], __fmul_rn(ds, Qs[ii * D + d]));
				}
			}
			__syncthreads();
		}
	}
	if (!active)
		return;
	for (int d = 0; d < D; d++) {
		dk[krow * D + d] = __fmul_rn(gk[d], scaling);
		dv[krow * D + d] = gv[d];
	}
}

extern "C" int lora_k_attn_bwd_softcap(const float *q, const float *k, const float *v, const float *lse,
				       const float *datt, int B, int H, int KV, int T, int D, float scaling, int window,
				       float cap, float *delta, float *dq, float *dk, float *dv, lora_stream s)
{
	const dim3 gq(lora_cdiv(T, BQ), (unsigned)H, (unsigned)B), gkv(lora_cdiv(T, BK), (unsigned)KV, (unsigned)B);
	const size_t shq = sizeof(float) * 2 * BK * (size_t)D, shkv = sizeof(float) * (2 * BQ2 * (size_t)D + 2 * BQ2);
	const cudaStream_t st = (cudaStream_t)s;

	if (B <= 0 || T <= 0)
		return 0;
	if (D < 1 || D > 128 || KV < 1 || H % KV)
		return (int)cudaErrorInvalidValue;
	if (D <= 64) {
		LAUNCH(attn_dq_kernel<64>, gq, BQ, shq, st)(q, k, v, datt, lse, delta, dq, H, KV, T, D, scaling, window, cap);
		KCHECK();
		LAUNCH(attn_dkv_kernel<64>, gkv, BK, shkv, st)(q, k, v, datt, lse, delta, dk, dv, H, KV, T, D, scaling,
							       window, cap);
	} else {
		LAUNCH(attn_dq_kernel<128>, gq, BQ, shq, st)(q, k, v, datt, lse, delta, dq, H, KV, T, D, scaling, window, cap);
		KCHECK();
		LAUNCH(attn_dkv_kernel<128>, gkv, BK, shkv, st)(q, k, v, datt, lse, delta, dk, dv, H, KV, T, D, scaling,
								window, cap);
	}
	KCHECK();
	return 0;
}

extern "C" int lora_k_attn_bwd(const float *q, const float *k, const float *v, const float *lse, const float *datt,
			       int B, int H, int KV, int T, int D, float scaling, int window, float *delta, float *dq,
			       float *dk, float *dv, lora_stream s)
{
	return lora_k_attn_bwd_softcap(q, k, v, lse, datt, B, H, KV, T, D, scaling, window, 0.0f, delta, dq, dk, dv, s);
}
