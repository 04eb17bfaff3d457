// nf4_dequant.cu - twin of lora_nf4_dequant (train/nf4.c): NF4 codes with
// double-quantized block scales (bitsandbytes' bytes, train/nf4.h) to fp32 or bf16.
//
// Element e of the flattened weight: nibble = high half of packed[e/2] when
// e is even, low half when odd; block b = e/64, group g = b/256;
//     absmax = code8[qabsmax[b]] · absmax2[g] + offset
//     w      = NF4[nibble] · absmax
// each product and sum rounded to fp32 in that order (__fmul_rn/__fadd_rn,
// so nvcc cannot contract them), which makes the fp32 result equal to the
// CPU's bit for bit; bf16 output is that value rounded to nearest even.
// One thread per element, grid-stride; 64-bit indices (a weight may pass 2^32 elements).
#include "kernels/cuda_common.cuh"
#include "kernels/kernels.h"

__constant__ float k_nf4_levels[16] = {
	-0x1p+0f,        -0x1.647362p-1f, -0x1.0cd660p-1f, -0x1.946540p-2f,
	-0x1.23449ap-2f, -0x1.7a6a7ep-3f, -0x1.74f0e2p-4f, 0x0p+0f,
	0x1.45f5fep-4f,  0x1.4995c6p-3f,  0x1.f809bap-3f,  0x1.5a0674p-2f,
	0x1.c34970p-2f,  0x1.200f56p-1f,  0x1.722766p-1f,  0x1p+0f,
};

template <int BF16>
__global__ void nf4_dequant_kernel(const uint8_t *__restrict__ packed, const uint8_t *__restrict__ qabsmax,
				   const float *__restrict__ absmax2, float offset, const float *__restrict__ code8,
				   uint64_t start, uint64_t count, void *__restrict__ out)
{
	const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;

	for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += stride) {
		const uint64_t e = start + i, b = e / 64;
		const uint8_t byte = packed[e / 2];
		const int c = (e & 1) ? (byte & 15) : (byte >> 4);
		const float a = __fadd_rn(__fmul_rn(code8[qabsmax[b]], absmax2[b / 256]), offset);
		const float w = __fmul_rn(k_nf4_levels[c], a);

		if (BF16)
			static_cast<__nv_bfloat16 *>(out)[i] = __float2bfloat16(w);
		else
			static_cast<float *>(out)[i] = w;
	}
}

extern "C" int lora_k_nf4_dequant(const uint8_t *packed, const uint8_t *qabsmax, const float *absmax2,
				  float offset, const float *code8, uint64_t start, uint64_t count, void *out,
				  int out_bf16, lora_stream s)
{
	const unsigned threads = 256;
	const unsigned long long want = (count + threads - 1) / threads;
	const unsigned blocks = want < 65535 ? (unsigned)want : 65535;

	if (count == 0)
		return 0;
	if (out_bf16)
		LAUNCH(nf4_dequant_kernel<1>, blocks, threads, 0, (cudaStream_t)s)(packed, qabsmax, absmax2, offset,
										   code8, start, count, out);
	else
		LAUNCH(nf4_dequant_kernel<0>, blocks, threads, 0, (cudaStream_t)s)(packed, qabsmax, absmax2, offset,
										   code8, start, count, out);
	KCHECK();
	return 0;
}
