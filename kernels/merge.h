/*
 * kernels/merge.h - cuBLAS for `lora merge --device cuda`: the ΔW row blocks.
 *
 * C launch wrappers over cuBLAS (compiled only when nvcc exists; callers test
 * LORA_HAVE_CUDA).  The host keeps the final add and the single rounding, so
 * the CUDA and CPU paths round the same way; only the order of the r-term dot
 * products may differ (within the tolerances the CPU path is tested with).
 *
 * Matrices are row-major, as on the CPU path:
 *     C[M×N] = coef · op(m1)[M×K] · op(m2)[K×N]  (+ C when accumulate)
 * with op = transpose when `trans` (both factors together).  m1/m2 are host
 * arrays of m1_elems/m2_elems elements (fp32, or fp64 when f64); they are
 * uploaded once and cached until lora_cuda_merge_reset().  The result is
 * copied into host_out (M×N elements).
 *
 * Errors return -1 with a message in msg, naming the CUDA or cuBLAS call.
 */
#ifndef LORA_KERNELS_MERGE_H
#define LORA_KERNELS_MERGE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

struct lora_cuda_merge;

/* Pick device 0 and make a cuBLAS handle; fails clearly when there is no device. */
int lora_cuda_merge_init(void **ctx, char *msg, size_t msglen);
/* Forget cached factors (call when the host arrays change). */
void lora_cuda_merge_reset(void *ctx);
int lora_cuda_merge_delta(void *ctx, int f64, int trans, int M, int N, int K,
			  double coef, const void *m1, size_t m1_elems, size_t off1, int ld1,
			  const void *m2, size_t m2_elems, int ld2, int accumulate, void *host_out,
			  char *msg, size_t msglen);
void lora_cuda_merge_free(void *ctx);

#ifdef __cplusplus
}
#endif

#endif
