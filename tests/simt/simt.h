/*
 * simt.h - the CPU execution layer: the kernel sources in kernels/ compiled
 * by the host C++ compiler and run without a GPU.  A test harness only; no
 * user ever gets it as a device.
 *
 *     g++ -std=c++17 -x c++ -include tests/simt/simt.h -DLORA_SIMT kernels/rmsnorm.cu
 *
 * What it provides is the subset of CUDA the kernels may use (DESIGN.md,
 * "CUDA without a GPU"):
 *   - __global__/__device__/__host__/__forceinline__/__restrict__, dim3, uint3,
 *     gridDim/blockDim/blockIdx/threadIdx, warpSize;
 *   - launches through LAUNCH(kernel, grid, block, shmem, stream)(args...)
 *     (kernels/cuda_common.cuh; <<<>>> under nvcc): blocks run one after the
 *     other on the calling thread, and every thread of a block is a fiber
 *     (ucontext) that runs until it reaches a barrier, a warp operation or
 *     its end;
 *   - static __shared__ (a static variable: one copy, shared by the fibers of
 *     the block that runs) and dynamic shared memory through
 *     DYN_SHARED(T, name) (filled with 0xff bytes, a NaN in every float,
 *     before each block, so reading what no thread wrote shows);
 *   - __syncthreads(): a fiber waits until every thread of its block that has
 *     not returned is waiting too (sm_70+ semantics: returned threads count as
 *     arrived);
 *   - warp shuffles and votes: the lanes named in the mask meet at a
 *     rendezvous; the last to arrive computes every lane's result.  A lane
 *     outside its own mask, a mask naming lanes the block lacks, two
 *     different operations or masks pending in one warp, or a shuffle from a
 *     lane outside the mask abort with a message (on a GPU they are
 *     undefined);
 *   - atomics (plain read-modify-write: only one fiber runs at a time);
 *   - __nv_bfloat16 with round-to-nearest-even conversion (as
 *     libadapter/base/dtype's lora_f32_to_bf16), the float intrinsics the
 *     kernels use (__fmul_rn etc. are the plain IEEE operations, which this
 *     layer is compiled not to contract, -ffp-contract=off).
 * A deadlock (every fiber waiting, nothing can proceed) aborts with the state
 * of each warp.  What this layer cannot show (speed, races between warps
 * under real concurrency, coalescing) is for `make check-cuda`.
 */
#ifndef LORA_TESTS_SIMT_H
#define LORA_TESTS_SIMT_H

#ifdef __CUDACC__
#error "tests/simt/simt.h is for the host compiler; nvcc has the real thing"
#endif

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <utility>

#define LORA_SIMT 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static
#define __constant__ static
#define __align__(n) alignas(n)

/* ------------------------------------------------------------ indices */

struct uint3 {
	unsigned x, y, z;
};
struct dim3 {
	unsigned x, y, z;
	constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

/* Set by the scheduler each time it switches to a fiber. */
extern thread_local uint3 threadIdx, blockIdx;
extern thread_local dim3 blockDim, gridDim;
constexpr int warpSize = 32;

/* ------------------------------------------------------------ runtime subset */

enum cudaError_t {
	cudaSuccess = 0,
	cudaErrorInvalidValue = 1,
	cudaErrorMemoryAllocation = 2,
	cudaErrorInvalidConfiguration = 9,
	cudaErrorLaunchFailure = 719,
};
typedef struct CUstream_st *cudaStream_t;
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char *cudaGetErrorString(cudaError_t e);

namespace simt {

/* Run body once per thread of every block of the grid (see the file comment). */
void run_grid(dim3 grid, dim3 block, size_t shmem, void (*body)(void *), void *arg);
void *dyn_smem();
void set_error(cudaError_t e);

/* Scheduling order of the fibers of each block: 0 in index order, 1 reversed
 * on every other block (shakes out code that leans on one order). */
void set_order(int order);

/* Statistics of the last launch (tests of the layer itself). */
struct stats {
	unsigned long long switches, barriers, warp_ops;
};
stats last_stats();

/* Warp operations: every lane in mask meets; returns this lane's result. */
enum warp_op { W_SHFL, W_SHFL_XOR, W_SHFL_DOWN, W_SHFL_UP, W_BALLOT, W_ANY, W_ALL, W_SYNC };
uint64_t warp_meet(unsigned mask, warp_op op, uint64_t v, int arg, int width);
void barrier();

template <class... P>
struct Launcher {
	void (*k)(P...);
	dim3 grid, block;
	size_t shmem;

	template <class... A>
	void operator()(A &&...a) const
	{
		struct Call {
			void (*k)(P...);
			std::tuple<P...> args;
		} call{k, std::tuple<P...>(std::forward<A>(a)...)};
		/* each fiber calls k with its own copies of the parameters */
		run_grid(grid, block, shmem, [](void *c) {
			Call *cl = static_cast<Call *>(c);
			std::apply(cl->k, cl->args);
		}, &call);
	}
};

template <class... P>
Launcher<P...> launch(void (*k)(P...), dim3 grid, dim3 block, size_t shmem, cudaStream_t)
{
	return Launcher<P...>{k, grid, block, shmem};
}

template <class T>
inline uint64_t to_bits(T v)
{
	static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
	uint64_t u = 0;
	memcpy(&u, &v, sizeof(T));
	return u;
}
template <class T>
inline T from_bits(uint64_t u)
{
	T v;
	memcpy(&v, &u, sizeof(T));
	return v;
}

}  // namespace simt

#define LAUNCH(k, grid, block, shmem, stream) simt::launch(k, grid, block, shmem, stream)
#define DYN_SHARED(T, name) T *name = reinterpret_cast<T *>(simt::dyn_smem())

inline void __syncthreads(void) { simt::barrier(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { simt::warp_meet(mask, simt::W_SYNC, 0, 0, 32); }

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32)
{
	return simt::from_bits<T>(simt::warp_meet(mask, simt::W_SHFL, simt::to_bits(v), src, width));
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32)
{
	return simt::from_bits<T>(simt::warp_meet(mask, simt::W_SHFL_XOR, simt::to_bits(v), lane_mask, width));
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32)
{
	return simt::from_bits<T>(simt::warp_meet(mask, simt::W_SHFL_DOWN, simt::to_bits(v), (int)delta, width));
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32)
{
	return simt::from_bits<T>(simt::warp_meet(mask, simt::W_SHFL_UP, simt::to_bits(v), (int)delta, width));
}
inline unsigned __ballot_sync(unsigned mask, int pred)
{
	return (unsigned)simt::warp_meet(mask, simt::W_BALLOT, pred != 0, 0, 32);
}
inline int __any_sync(unsigned mask, int pred) { return (int)simt::warp_meet(mask, simt::W_ANY, pred != 0, 0, 32); }
inline int __all_sync(unsigned mask, int pred) { return (int)simt::warp_meet(mask, simt::W_ALL, pred != 0, 0, 32); }

/* ------------------------------------------------------------ atomics */

/* Only one fiber runs at a time and blocks run one after the other. */
template <class T>
inline T atomicAdd(T *p, T v)
{
	T old = *p;
	*p = old + v;
	return old;
}
template <class T>
inline T atomicMax(T *p, T v)
{
	T old = *p;
	*p = old > v ? old : v;
	return old;
}
template <class T>
inline T atomicMin(T *p, T v)
{
	T old = *p;
	*p = old < v ? old : v;
	return old;
}
template <class T>
inline T atomicExch(T *p, T v)
{
	T old = *p;
	*p = v;
	return old;
}
template <class T>
inline T atomicCAS(T *p, T cmp, T v)
{
	T old = *p;
	if (old == cmp)
		*p = v;
	return old;
}

/* ------------------------------------------------------------ bf16 */

struct __nv_bfloat16 {
	unsigned short x;
};
static_assert(sizeof(__nv_bfloat16) == 2, "bf16 is two bytes");

inline __nv_bfloat16 __float2bfloat16(float f)
{
	uint32_t u;
	__nv_bfloat16 h;

	memcpy(&u, &f, 4);
	if ((u & 0x7fffffffu) > 0x7f800000u)   /* NaN: keep sign, force quiet */
		h.x = (unsigned short)((u >> 16) | 0x0040u);
	else
		h.x = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
	return h;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 h)
{
	uint32_t u = (uint32_t)h.x << 16;
	float f;
	memcpy(&f, &u, 4);
	return f;
}

/* ------------------------------------------------------------ math */

/* IEEE operations, never contracted here (-ffp-contract=off). */
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
/* The fast intrinsics: on the GPU a few ulp away; here the accurate functions. */
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline void sincosf_(float x, float *s, float *c) { *s = sinf(x); *c = cosf(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
template <class T>
inline T __ldg(const T *p) { return *p; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }

#endif
