// swiglu.cu - twins of swiglu_part and swiglu_bwd_part (train/model_cpu.c):
// the SwiGLU of Llama's MLP and its backward, per token, from gu = [gate | up].
//
//   forward:  act[n, i] = g / (1 + e^-g) · up                 gu [N, 2F] -> act [N, F]
//   backward: s = 1 / (1 + e^-g)
//             d up   = dact · (g·s)
//             d gate = dact · up · (s · (1 + g·(1 - s)))       -> dgu [N, 2F]
// e^x is expf (2 ulp on a GPU); the CPU uses its vexpf (1e-7 relative), so
// results differ by a few fp32 ulps; the operations are otherwise in the
// CPU's order, not contracted.  One thread per (token, i).
#include "kernels/cuda_common.cuh"
#include "kernels/kernels.h"

__global__ void swiglu_fwd_kernel(const float *__restrict__ gu, int F, size_t total, float *__restrict__ act)
{
	const size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x;

	if (j >= total)
		return;
	const size_t n = j / F, i = j % F;
	const float g = gu[n * 2 * F + i], up = gu[n * 2 * F + F + i];
	act[j] = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), up);
}

__global__ void swiglu_bwd_kernel(const float *__restrict__ gu, const float *__restrict__ dact, int F,
				  size_t total, float *__restrict__ dgu)
{
	const size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x;

	if (j >= total)
		return;
	const size_t n = j / F, i = j % F;
	const float g = gu[n * 2 * F + i], up = gu[n * 2 * F + F + i], da = dact[j];
	const float s = __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-g)));
	dgu[n * 2 * F + F + i] = __fmul_rn(da, __fmul_rn(g, s));
	dgu[n * 2 * F + i] = __fmul_rn(__fmul_rn(da, up),
				       __fmul_rn(s, __fadd_rn(1.0f, __fmul_rn(g, __fsub_rn(1.0f, s)))));
}

extern "C" int lora_k_swiglu_fwd(const float *gu, int N, int F, float *act, lora_stream s)
{
	const size_t total = (size_t)N * F;

	if (total == 0)
		return 0;
	LAUNCH(swiglu_fwd_kernel, lora_cdiv(total, 256), 256, 0, (cudaStream_t)s)(gu, F, total, act);
	KCHECK();
	return 0;
}

extern "C" int lora_k_swiglu_bwd(const float *gu, const float *dact, int N, int F, float *dgu, lora_stream s)
{
	const size_t total = (size_t)N * F;

	if (total == 0)
		return 0;
	LAUNCH(swiglu_bwd_kernel, lora_cdiv(total, 256), 256, 0, (cudaStream_t)s)(gu, dact, F, total, dgu);
	KCHECK();
	return 0;
}
