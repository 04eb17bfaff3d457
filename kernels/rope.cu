// rope.cu - twins of rope_tables, to_heads_part and from_heads_part
// (train/model_cpu.c): the rotary tables, and token-major projections to
// head-major q/k/v rotated as transformers' apply_rotary_pos_emb, and back.
//
//   table:    cos[t, i] = cos(inv_freq[i]·t), sin likewise        [T, D/2]
//   forward:  src [N, ld] (head h at columns h·D..) -> dst [B, nh, T, D]
//             d[i] = s[i]·cos - s[i+D/2]·sin,  d[i+D/2] = s[i+D/2]·cos + s[i]·sin
//   backward: the transpose, head-major src -> token-major dst [N, ld]
//             d[i] = s[i]·cos + s[i+D/2]·sin,  d[i+D/2] = s[i+D/2]·cos - s[i]·sin
// rope = 0: a plain copy (v).  The products and sums are rounded as the CPU
// rounds them (no contraction), so with the same tables the output is equal
// bit for bit.  One thread per (token, head, i < D/2).
#include "kernels/cuda_common.cuh"
#include "kernels/kernels.h"

__global__ void rope_table_kernel(const float *__restrict__ inv_freq, int T, int half, float *__restrict__ cosb,
				  float *__restrict__ sinb)
{
	const size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x;

	if (j >= (size_t)T * half)
		return;
	const int t = (int)(j / half), i = (int)(j % half);
	const float a = __fmul_rn(inv_freq[i], (float)t);
	cosb[j] = cosf(a);
	sinb[j] = sinf(a);
}

template <int BACKWARD>
__global__ void rope_kernel(const float *__restrict__ src, float *__restrict__ dst, int ld, int T, int nh, int D,
			    const float *__restrict__ cosb, const float *__restrict__ sinb, int rope, size_t total)
{
	const size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	const int half = D / 2;

	if (j >= total)
		return;
	const int i = (int)(j % half), h = (int)(j / half % nh);
	const size_t n = j / half / nh;
	const int b = (int)(n / T), t = (int)(n % T);
	const size_t tok = n * ld + (size_t)h * D, head = (((size_t)b * nh + h) * T + t) * D;
	const float *s = src + (BACKWARD ? head : tok);
	float *d = dst + (BACKWARD ? tok : head);

	if (!rope) {
		d[i] = s[i];
		d[i + half] = s[i + half];
		return;
	}
	const float c = cosb[(size_t)t * half + i], sn = sinb[(size_t)t * half + i];
	if (BACKWARD) {
		d[i] = __fadd_rn(__fmul_rn(s[i], c), __fmul_rn(s[i + half], sn));
		d[i + half] = __fsub_rn(__fmul_rn(s[i + half], c), __fmul_rn(s[i], sn));
	} else {
		d[i] = __fsub_rn(__fmul_rn(s[i], c), __fmul_rn(s[i + half], sn));
		d[i + half] = __fadd_rn(__fmul_rn(s[i + half], c), __fmul_rn(s[i], sn));
	}
}

extern "C" int lora_k_rope_table(const float *inv_freq, int T, int half, float *cosb, float *sinb, lora_stream s)
{
	const size_t total = (size_t)T * half;

	if (total == 0)
		return 0;
	LAUNCH(rope_table_kernel, lora_cdiv(total, 256), 256, 0, (cudaStream_t)s)(inv_freq, T, half, cosb, sinb);
	KCHECK();
	return 0;
}

static int rope_run(int backward, const float *src, float *dst, int ld, int B, int T, int nh, int D,
		    const float *cosb, const float *sinb, int rope, lora_stream s)
{
	const size_t total = (size_t)B * T * nh * (D / 2);

	if (D % 2)
		return (int)cudaErrorInvalidValue;
	if (total == 0)
		return 0;
	if (backward)
		LAUNCH(rope_kernel<1>, lora_cdiv(total, 256), 256, 0, (cudaStream_t)s)(src, dst, ld, T, nh, D, cosb,
										       sinb, rope, total);
	else
		LAUNCH(rope_kernel<0>, lora_cdiv(total, 256), 256, 0, (cudaStream_t)s)(src, dst, ld, T, nh, D, cosb,
										       sinb, rope, total);
	KCHECK();
	return 0;
}

extern "C" int lora_k_rope_fwd(const float *src, int ld, float *dst, int B, int T, int nh, int D,
			       const float *cosb, const float *sinb, int rope, lora_stream s)
{
	return rope_run(0, src, dst, ld, B, T, nh, D, cosb, sinb, rope, s);
}

extern "C" int lora_k_rope_bwd(const float *src, float *dst, int ld, int B, int T, int nh, int D,
			       const float *cosb, const float *sinb, int rope, lora_stream s)
{
	return rope_run(1, src, dst, ld, B, T, nh, D, cosb, sinb, rope, s);
}
