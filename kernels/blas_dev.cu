// blas_dev.cu - the matrix-product wrapper on cuBLAS (see blas_dev.h).
#include "kernels/blas_dev.h"

#include <new>

#include <cublas_v2.h>
#include <cuda_runtime.h>

extern "C" int lora_blas_create(void **h, lora_stream s)
{
	cublasHandle_t c = nullptr;

	*h = nullptr;
	if (cublasCreate(&c) != CUBLAS_STATUS_SUCCESS)
		return (int)cudaErrorNotReady;
	if (cublasSetStream(c, (cudaStream_t)s) != CUBLAS_STATUS_SUCCESS ||
	    cublasSetMathMode(c, CUBLAS_DEFAULT_MATH) != CUBLAS_STATUS_SUCCESS) {
		cublasDestroy(c);
		return (int)cudaErrorNotReady;
	}
	*h = c;
	return 0;
}

extern "C" void lora_blas_destroy(void *h)
{
	if (h)
		cublasDestroy((cublasHandle_t)h);
}

// Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: swap the operands.
extern "C" int lora_blas_gemm(void *h, int ta, int tb, int m, int n, int k, float alpha, const void *A,
			      int a_bf16, int lda, const void *B, int b_bf16, int ldb, float beta, float *C,
			      int ldc)
{
	cublasStatus_t st = cublasGemmEx((cublasHandle_t)h, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
					 ta ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha, B,
					 b_bf16 ? CUDA_R_16BF : CUDA_R_32F, ldb, A,
					 a_bf16 ? CUDA_R_16BF : CUDA_R_32F, lda, &beta, C, CUDA_R_32F, ldc,
					 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
	if (st != CUBLAS_STATUS_SUCCESS)
		return st == CUBLAS_STATUS_INVALID_VALUE ? (int)cudaErrorInvalidValue : (int)cudaErrorUnknown;
	return (int)cudaGetLastError();
}
