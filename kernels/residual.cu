// residual.cu - twin of ew_part (train/model_cpu.c): the residual adds
// (EW_ADD, y = a + b) and the masked LoRA-dropout accumulation (EW_ADDMUL,
// y += a·b), elementwise and exact (one rounding each, as on the CPU).
// Grid-stride over n elements; y may alias a or b for add.
#include "kernels/cuda_common.cuh"
#include "kernels/kernels.h"

template <int ADDMUL>
__global__ void ew_kernel(const float *a, const float *b, float *y, size_t n)
{
	const size_t stride = (size_t)gridDim.x * blockDim.x;

	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
		y[i] = ADDMUL ? __fadd_rn(y[i], __fmul_rn(a[i], b[i])) : __fadd_rn(a[i], b[i]);
}

static int ew_run(int addmul, const float *a, const float *b, float *y, size_t n, lora_stream s)
{
	const unsigned long long want = (n + 255) / 256;
	const unsigned blocks = want < 65535 ? (unsigned)want : 65535;

	if (n == 0)
		return 0;
	if (addmul)
		LAUNCH(ew_kernel<1>, blocks, 256, 0, (cudaStream_t)s)(a, b, y, n);
	else
		LAUNCH(ew_kernel<0>, blocks, 256, 0, (cudaStream_t)s)(a, b, y, n);
	KCHECK();
	return 0;
}

extern "C" int lora_k_add(const float *a, const float *b, float *y, size_t n, lora_stream s)
{
	return ew_run(0, a, b, y, n, s);
}

extern "C" int lora_k_addmul(const float *a, const float *b, float *y, size_t n, lora_stream s)
{
	return ew_run(1, a, b, y, n, s);
}
