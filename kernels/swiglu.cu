// swiglu.cu - twins of swiglu_part and swiglu_bwd_part (train/model_cpu.c):
// the gated MLP activation and its backward, per token, from gu = [gate | up]:
// SiLU (Llama: swiglu_fwd/bwd) or GELU-tanh (Gemma: geglu_fwd/bwd, the
// CPU's glu_job.gelu).
//
//   SiLU forward:  act[n, i] = g / (1 + e^-g) · up              gu [N, 2F] -> act [N, F]
//   SiLU backward: s = 1 / (1 + e^-g)
//                  d up   = dact · (g·s)
//                  d gate = dact · up · (s · (1 + g·(1 - s)))     -> dgu [N, 2F]
//   GELU-tanh (torch's gelu(approximate="tanh"), gelu_tanh in model_cpu.c):
//                  t = tanh(β·(g + κ·g³)),  β = √2·(2/√π)·0.5, κ = 0.044715
//                  gelu(g) = 0.5·g·(1 + t),  act = gelu(g)·up
//                  gelu'(g) = 0.5·(1 + t) + 0.5·g·(1 - t²)·β·(1 + 3κ·g²)
//                  d up = dact · gelu(g),  d gate = dact · up · gelu'(g)
// e^x is expf (2 ulp on a GPU); the CPU uses its vexpf (1e-7 relative), so
// results differ by a few fp32 ulps; tanhf is 2 ulp on a GPU and in glibc.
// The operations are otherwise in the CPU's order, not contracted (the
// argument of tanh is the same number on both).  One thread per (token, i).
#include "kernels/cuda_common.cuh"
#include "kernels/kernels.h"

#define GELU_BETA 0.7978845608028654f
#define GELU_KAPPA 0.044715f

__device__ __forceinline__ float gelu_tanh_t(float x)
{
	return tanhf(__fmul_rn(GELU_BETA, __fadd_rn(x, __fmul_rn(GELU_KAPPA, __fmul_rn(__fmul_rn(x, x), x)))));
}

__device__ __forceinline__ float gelu_of(float x, float t)
{
	return __fmul_rn(__fmul_rn(0.5f, x), __fadd_rn(1.0f, t));
}

template <int GELU>
__global__ void glu_fwd_kernel(const float *__restrict__ gu, int F, size_t total, float *__restrict__ act)
{
	const size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x;

	if (j >= total)
		return;
	const size_t n = j / F, i = j % F;
	const float g = gu[n * 2 * F + i], up = gu[n * 2 * F + F + i];
	if (GELU)
		act[j] = __fmul_rn(gelu_of(g, gelu_tanh_t(g)), up);
	else
		act[j] = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), up);
}

template <int GELU>
__global__ void glu_bwd_kernel(const float *__restrict__ gu, const float *__restrict__ dact, int F, size_t total,
			       float *__restrict__ dgu)
{
	const size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x;

	if (j >= total)
		return;
	const size_t n = j / F, i = j % F;
	const float g = gu[n * 2 * F + i], up = gu[n * 2 * F + F + i], da = dact[j];
	if (GELU) {
		const float x2 = __fmul_rn(g, g), t = gelu_tanh_t(g);
		const float lin = __fmul_rn(0.5f, __fadd_rn(1.0f, t));
		const float curv = __fmul_rn(__fmul_rn(__fmul_rn(__fmul_rn(0.5f, g), __fsub_rn(1.0f, __fmul_rn(t, t))),
						       GELU_BETA),
					     __fadd_rn(1.0f, __fmul_rn(__fmul_rn(3.0f, GELU_KAPPA), x2)));
		dgu[n * 2 * F + F + i] = __fmul_rn(da, gelu_of(g, t));
		dgu[n * 2 * F + i] = __fmul_rn(__fmul_rn(da, up), __fadd_rn(lin, curv));
		return;
	}
	const float s = __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-g)));
	dgu[n * 2 * F + F + i] = __fmul_rn(da, __fmul_rn(g, s));
	dgu[n * 2 * F + i] = __fmul_rn(__fmul_rn(da, up),
				       __fmul_rn(s, __fadd_rn(1.0f, __fmul_rn(g, __fsub_rn(1.0f, s)))));
}

static int glu_fwd(int gelu, const float *gu, int N, int F, float *act, lora_stream s)
{
	const size_t total = (size_t)N * F;

	if (total == 0)
		return 0;
	if (gelu)
		LAUNCH(glu_fwd_kernel<1>, lora_cdiv(total, 256), 256, 0, (cudaStream_t)s)(gu, F, total, act);
	else
		LAUNCH(glu_fwd_kernel<0>, lora_cdiv(total, 256), 256, 0, (cudaStream_t)s)(gu, F, total, act);
	KCHECK();
	return 0;
}

static int glu_bwd(int gelu, const float *gu, const float *dact, int N, int F, float *dgu, lora_stream s)
{
	const size_t total = (size_t)N * F;

	if (total == 0)
		return 0;
	if (gelu)
		LAUNCH(glu_bwd_kernel<1>, lora_cdiv(total, 256), 256, 0, (cudaStream_t)s)(gu, dact, F, total, dgu);
	else
		LAUNCH(glu_bwd_kernel<0>, lora_cdiv(total, 256), 256, 0, (cudaStream_t)s)(gu, dact, F, total, dgu);
	KCHECK();
	return 0;
}

extern "C" int lora_k_swiglu_fwd(const float *gu, int N, int F, float *act, lora_stream s)
{
	return glu_fwd(0, gu, N, F, act, s);
}

extern "C" int lora_k_swiglu_bwd(const float *gu, const float *dact, int N, int F, float *dgu, lora_stream s)
{
	return glu_bwd(0, gu, dact, N, F, dgu, s);
}

extern "C" int lora_k_geglu_fwd(const float *gu, int N, int F, float *act, lora_stream s)
{
	return glu_fwd(1, gu, N, F, act, s);
}

extern "C" int lora_k_geglu_bwd(const float *gu, const float *dact, int N, int F, float *dgu, lora_stream s)
{
	return glu_bwd(1, gu, dact, N, F, dgu, s);
}
