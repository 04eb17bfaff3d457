/*
 * blas_dev.h - every matrix product of the kernels goes through this one
 * wrapper (declared in kernels/kernels.h, in the table as abi.h's gemm):
 *
 *     C [m, n] = alpha · op(A) [m, k] · op(B) [k, n] + beta · C     (row-major, as cblas_sgemm)
 *
 * A and B are fp32 or bf16 (a_bf16, b_bf16), C is fp32, and the sums are
 * fp32.  On a GPU (blas_dev.cu) this is cublasGemmEx with
 * CUBLAS_COMPUTE_32F: bf16 operands go to the tensor cores, whose products
 * of two bf16 values are exact in fp32; fp32 operands are plain SGEMM (no
 * TF32: CUBLAS_DEFAULT_MATH).  On the CPU execution layer
 * (tests/simt/blas_simt.cc) bf16 operands are widened to fp32 (exactly) and
 * OpenBLAS's sgemm runs, so both differ only in the order of the fp32 sums.
 */
#ifndef LORA_KERNELS_BLAS_DEV_H
#define LORA_KERNELS_BLAS_DEV_H

#include "kernels/kernels.h"

#endif
