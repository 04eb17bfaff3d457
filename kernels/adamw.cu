// adamw.cu - twins of lora_grad_norm, lora_clip_grad_norm and lora_adamw_step
// (train/optim.c): the global-norm gradient clipping and the fused AdamW update.
//
// grad_norm: sum of g² in double, as the CPU (fp64 costs nothing here: the
// kernel is memory-bound), in LORA_CUDA_NORM_BLOCKS fixed blocks of 256
// threads striding over g, then one block adds the block sums in order: the
// result depends on n only, not on the device.  Then torch's coefficient in
// fp32: coef = max / (norm + 1e-6), stored as is (the update applies it only
// when < 1, as clip_grad_norm_ does; 1 when max <= 0).  Nothing goes back to
// the host, so clipping needs no synchronisation.
//
// adamw: per element, each operation rounded as train/optim.c rounds it
// (the scalars come from the host, made by lora_adamw_consts):
//     g = grad·coef (coef < 1),  p = p·(1 - lr·wd),  m = fma(1 - b1, g - m, m),
//     v = v·b2 + (1 - b2)·g·g,  p = p + (-lr/bc1)·m / (sqrt(v)/sqrt(bc2) + eps)
// so with the same coef the parameters and moments equal the CPU's bit for bit.
#include "kernels/cuda_common.cuh"
#include "kernels/kernels.h"

#define NORM_THREADS 256

__device__ __forceinline__ double block_sum_d(double v, double *scratch)
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
	return v;
}

__global__ void __launch_bounds__(NORM_THREADS) sumsq_kernel(const float *__restrict__ g, size_t n,
							     double *__restrict__ partial)
{
	__shared__ double scratch[32];
	const size_t stride = (size_t)gridDim.x * blockDim.x;
	double s = 0.0;

	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
		s += (double)g[i] * g[i];
	s = block_sum_d(s, scratch);
	if (threadIdx.x == 0)
		partial[blockIdx.x] = s;
}

__global__ void __launch_bounds__(NORM_THREADS) norm_finish_kernel(const double *__restrict__ partial, int nb,
								   float max_norm, double *__restrict__ norm,
								   float *__restrict__ coef)
{
	__shared__ double scratch[32];
	double s = 0.0;

	for (int i = threadIdx.x; i < nb; i += blockDim.x)
		s += partial[i];
	s = block_sum_d(s, scratch);
	if (threadIdx.x == 0) {
		const double nr = sqrt(s);
		if (norm)
			*norm = nr;
		if (coef)
			*coef = max_norm > 0.0f ? __fdiv_rn(max_norm, __fadd_rn((float)nr, 1e-6f)) : 1.0f;
	}
}

__global__ void adamw_kernel(float *__restrict__ p, const float *__restrict__ grad, float *__restrict__ m,
			     float *__restrict__ v, size_t n, struct lora_cuda_adamw k, const float *__restrict__ coef)
{
	const size_t stride = (size_t)gridDim.x * blockDim.x;
	const float c = coef ? *coef : 1.0f;

	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
		float g = grad[i], pi = p[i], mi = m[i], vi = v[i], d;

		if (c < 1.0f)
			g = __fmul_rn(g, c);
		if (k.decay_on)
			pi = __fmul_rn(pi, k.decay);
		mi = __fmaf_rn(k.w1, __fsub_rn(g, mi), mi);
		vi = __fmul_rn(vi, k.b2);
		vi = __fadd_rn(vi, __fmul_rn(__fmul_rn(k.w2, g), g));
		d = __fdiv_rn(__fsqrt_rn(vi), k.bc2_sqrt);
		d = __fadd_rn(d, k.eps);
		p[i] = __fadd_rn(pi, __fdiv_rn(__fmul_rn(k.neg_step, mi), d));
		m[i] = mi;
		v[i] = vi;
	}
}

extern "C" int lora_k_grad_norm(const float *g, size_t n, float max_norm, double *scratch, double *norm,
				float *coef, lora_stream s)
{
	LAUNCH(sumsq_kernel, LORA_CUDA_NORM_BLOCKS, NORM_THREADS, 0, (cudaStream_t)s)(g, n, scratch);
	KCHECK();
	LAUNCH(norm_finish_kernel, 1, NORM_THREADS, 0, (cudaStream_t)s)(scratch, LORA_CUDA_NORM_BLOCKS, max_norm,
									 norm, coef);
	KCHECK();
	return 0;
}

extern "C" int lora_k_adamw(float *p, const float *g, float *m, float *v, size_t n, struct lora_cuda_adamw k,
			    const float *coef, lora_stream s)
{
	const unsigned long long want = (n + 255) / 256;
	const unsigned blocks = want < 65535 ? (unsigned)want : 65535;

	if (n == 0)
		return 0;
	LAUNCH(adamw_kernel, blocks, 256, 0, (cudaStream_t)s)(p, g, m, v, n, k, coef);
	KCHECK();
	return 0;
}
