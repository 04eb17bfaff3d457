// cuda_common.cuh - what every kernel file includes: the CUDA subset the
// kernels are written in, from nvcc or from the CPU execution layer.
//
// Under nvcc this is the CUDA runtime and bf16 headers plus two macros; on
// the host compiler the build force-includes tests/simt/simt.h (which defines
// LORA_SIMT) and the same sources run on the CPU (DESIGN.md, "CUDA without a
// GPU").  Kernels stay inside that subset: thread/block indices, __shared__
// (dynamic shared memory through DYN_SHARED), __syncthreads, warp shuffles
// and votes, atomics, bf16 conversions and the float intrinsics.
//
//   LAUNCH(kernel, grid, block, shmem, stream)(args...)   a kernel launch
//   DYN_SHARED(T, name);                                  T *name = the dynamic shared memory
//   KCHECK()   after a launch: returns the launch error (as an int) from the host wrapper
#ifndef LORA_KERNELS_CUDA_COMMON_CUH
#define LORA_KERNELS_CUDA_COMMON_CUH

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#define LAUNCH(k, grid, block, shmem, stream) k<<<grid, block, shmem, stream>>>
#define DYN_SHARED(T, name)                                  \
	extern __shared__ __align__(16) unsigned char name##_raw_[]; \
	T *name = reinterpret_cast<T *>(name##_raw_)
#elif !defined(LORA_SIMT)
#error "kernels/*.cu compile with nvcc, or with the host compiler and -include tests/simt/simt.h"
#endif

#define KCHECK()                                   \
	do {                                       \
		cudaError_t e_ = cudaGetLastError(); \
		if (e_ != cudaSuccess)             \
			return (int)e_;            \
	} while (0)

// Grid-size helper: ceil(n / d) as a launch dimension.
static inline unsigned lora_cdiv(unsigned long long n, unsigned long long d)
{
	return (unsigned)((n + d - 1) / d);
}

// Sum over a warp (all 32 lanes); every lane gets the total.  The order is a
// butterfly, the same on the GPU and on the CPU layer.
__device__ __forceinline__ float lora_warp_sum(float v)
{
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

__device__ __forceinline__ float lora_warp_max(float v)
{
	for (int o = 16; o > 0; o >>= 1)
		v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
	return v;
}

// Sum over a block of blockDim.x threads (a multiple of 32, at most 1024);
// every thread gets the total.  scratch: 32 floats of shared memory, free on
// entry and on return.
__device__ __forceinline__ float lora_block_sum(float v, float *scratch)
{
	const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;

	v = lora_warp_sum(v);
	if (lane == 0)
		scratch[warp] = v;
	__syncthreads();
	v = lane < nw ? scratch[lane] : 0.0f;
	v = lora_warp_sum(v);
	__syncthreads();
	return v;
}

#endif
