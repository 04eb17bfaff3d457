// blas_simt.cc - the matrix-product wrapper (kernels/blas_dev.h) on the CPU
// execution layer: bf16 operands widened to fp32 (exact), then OpenBLAS sgemm.
#include "tests/simt/simt.h"

#include <cblas.h>
#include <cstdlib>
#include <vector>

#include "kernels/blas_dev.h"

extern "C" int lora_blas_create(void **h, lora_stream)
{
	static int handle;
	*h = &handle;
	return 0;
}

extern "C" void lora_blas_destroy(void *) {}

// The rows x cols matrix at p (leading dimension ld) as fp32 with the same layout.
static const float *widen(const void *p, int bf16, int rows, int cols, int ld, std::vector<float> &buf)
{
	if (!bf16)
		return static_cast<const float *>(p);
	const __nv_bfloat16 *h = static_cast<const __nv_bfloat16 *>(p);
	buf.assign((size_t)rows * ld, 0.0f);
	for (int r = 0; r < rows; r++)
		for (int c = 0; c < cols; c++)
			buf[(size_t)r * ld + c] = __bfloat162float(h[(size_t)r * ld + c]);
	return buf.data();
}

extern "C" int lora_blas_gemm(void *, int ta, int tb, int m, int n, int k, float alpha, const void *A,
			      int a_bf16, int lda, const void *B, int b_bf16, int ldb, float beta, float *C,
			      int ldc)
{
	std::vector<float> wa, wb;

	if (m < 0 || n < 0 || k < 0 || lda < (ta ? m : k) || ldb < (tb ? k : n) || ldc < n)
		return (int)cudaErrorInvalidValue;
	if (m == 0 || n == 0)
		return 0;
	const float *a = widen(A, a_bf16, ta ? k : m, ta ? m : k, lda, wa);
	const float *b = widen(B, b_bf16, tb ? n : k, tb ? k : n, ldb, wb);
	cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k, alpha,
		    a, lda, b, ldb, beta, C, ldc);
	return 0;
}
