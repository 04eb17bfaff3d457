// test_simt.cc - the CPU execution layer itself (tests/simt/simt.h): barriers,
// shared memory seen across fibers, warp shuffles and votes, atomics, bf16
// rounding, launch errors, and that misuse (a stuck barrier, a bad mask)
// aborts instead of passing quietly.
#include "kernels/cuda_common.cuh"

#include <csignal>
#include <cstdio>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

extern "C" {
#include "libadapter/base/dtype.h"
#include "tests/t.h"
}

// ------------------------------------------------------------ kernels under test

// out[i] = the value thread (i+1) % n of the block wrote, through dynamic shared memory.
__global__ void k_rotate(int *out, int skip_barrier)
{
	DYN_SHARED(int, s);
	const int t = threadIdx.x, n = blockDim.x;

	s[t] = 1000 * (int)blockIdx.x + t;
	if (!skip_barrier)
		__syncthreads();
	out[blockIdx.x * n + t] = s[(t + 1) % n];
}

// A tree sum over static shared memory: log2(n) barriers.
__global__ void k_tree(const float *x, float *out)
{
	__shared__ float s[256];
	const int t = threadIdx.x;

	s[t] = x[blockIdx.x * blockDim.x + t];
	__syncthreads();
	for (int h = blockDim.x / 2; h > 0; h /= 2) {
		if (t < h)
			s[t] += s[t + h];
		__syncthreads();
	}
	if (t == 0)
		out[blockIdx.x] = s[0];
}

__global__ void k_shuffles(const float *x, float *sum, float *bcast, float *down, float *up, float *xw)
{
	const int i = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x % 32;
	float v = x[i];

	sum[i] = lora_warp_sum(v);
	bcast[i] = __shfl_sync(0xffffffffu, v, 5);
	down[i] = __shfl_down_sync(0xffffffffu, v, 3, 8);
	up[i] = __shfl_up_sync(0xffffffffu, v, 2, 16);
	xw[i] = __shfl_xor_sync(0xffffffffu, v, lane & 1 ? 1 : 4, 4);
}

__global__ void k_votes(const int *pred, unsigned *ballot, int *any, int *all)
{
	const int i = blockIdx.x * blockDim.x + threadIdx.x;

	ballot[i] = __ballot_sync(0xffffffffu, pred[i]);
	any[i] = __any_sync(0xffffffffu, pred[i]);
	all[i] = __all_sync(0xffffffffu, pred[i]);
}

// Half a warp (mask 0x0000ffff) shuffles while the other half does not.
__global__ void k_half(const int *x, int *out)
{
	const int lane = threadIdx.x % 32;

	if (lane < 16)
		out[threadIdx.x] = __shfl_sync(0x0000ffffu, x[threadIdx.x], 15 - lane);
	else
		out[threadIdx.x] = -1;
}

__global__ void k_atomics(float *fsum, int *count, int n)
{
	const int i = blockIdx.x * blockDim.x + threadIdx.x;

	if (i >= n)
		return;
	atomicAdd(fsum, 0.5f);
	atomicAdd(count, 1);
}

// Each thread changes its own copy of the parameter.
__global__ void k_params(int *out, int base)
{
	base += (int)threadIdx.x;
	__syncthreads();
	out[threadIdx.x] = base;
}

__global__ void k_index(int *out)
{
	const unsigned bx = blockIdx.x + gridDim.x * blockIdx.y;
	const unsigned tx = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
	const unsigned nt = blockDim.x * blockDim.y * blockDim.z;

	out[bx * nt + tx] = (int)(bx * 10000 + tx);
}

// Half a warp waits at a barrier, the other half at a shuffle that needs the first half.
__global__ void k_stuck(float *out)
{
	if (threadIdx.x < 16)
		__syncthreads();
	else
		out[threadIdx.x] = __shfl_sync(0xffffffffu, 1.0f, 0);
}

__global__ void k_badmask(float *out)
{
	out[threadIdx.x] = __shfl_sync(0xffffffffu, 1.0f, 0);   // 16 threads: lanes 16..31 do not exist
}

__global__ void k_outside(float *out)
{
	out[threadIdx.x] = __shfl_sync(0x0000ffffu, 1.0f, 20);   // reads lane 20, outside the mask
}

// ------------------------------------------------------------ helpers

static unsigned long long rng = 88172645463325252ull;
static float frand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (float)((rng >> 40) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
}

// Run f in a child process; true when it died of SIGABRT.
template <class F>
static bool aborts(F f)
{
	fflush(stdout);
	fflush(stderr);
	pid_t p = fork();
	if (p == 0) {
		freopen("/dev/null", "w", stderr);
		f();
		_exit(0);
	}
	int st = 0;
	waitpid(p, &st, 0);
	return WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT;
}

// ------------------------------------------------------------ tests

TEST(barrier_orders_shared_memory)
{
	const int nb = 3, nt = 96;
	std::vector<int> out(nb * nt, -7);

	for (int order = 0; order < 2; order++) {
		simt::set_order(order);
		LAUNCH(k_rotate, nb, nt, nt * sizeof(int), 0)(out.data(), 0);
		CHECK(cudaGetLastError() == cudaSuccess);
		for (int b = 0; b < nb; b++)
			for (int t = 0; t < nt; t++)
				CHECKF(out[b * nt + t] == 1000 * b + (t + 1) % nt, "block %d thread %d: %d", b, t,
				       out[b * nt + t]);
	}
	simt::set_order(0);
	CHECK(simt::last_stats().barriers >= (unsigned long long)nb);
}

// Without the barrier, thread t reads thread t+1's slot before it is written:
// the layer shows the poison (0xffffffff = -1) instead of the value, in every
// block (not what the block before left there).
TEST(missing_barrier_shows)
{
	const int nt = 64, nb = 2;
	std::vector<int> out(nb * nt, 0);
	int wrong = 0;

	LAUNCH(k_rotate, nb, nt, nt * sizeof(int), 0)(out.data(), 1);
	for (int t = 0; t < nb * nt; t++)   /* block 1 too: shared memory is poisoned per block */
		wrong += out[t] == -1;
	CHECKF(wrong >= nb * (nt - 1), "%d of %d reads saw the poison", wrong, nb * nt);
}

TEST(tree_sum_static_shared)
{
	const int nb = 5, nt = 256;
	std::vector<float> x(nb * nt), out(nb, NAN);

	for (float &v : x)
		v = (float)(int)(frand() * 100.0f);   // integers: every order sums exactly
	LAUNCH(k_tree, nb, nt, 0, 0)(x.data(), out.data());
	for (int b = 0; b < nb; b++) {
		float want = 0.0f;
		for (int t = 0; t < nt; t++)
			want += x[b * nt + t];
		CHECK_NEAR(out[b], want, 0.0, 0.0);
	}
}

TEST(shuffles)
{
	const int n = 64;
	std::vector<float> x(n), sum(n, NAN), bc(n, NAN), dn(n, NAN), up(n, NAN), xw(n, NAN);

	for (int i = 0; i < n; i++)
		x[i] = (float)(i * 3 + 1);
	LAUNCH(k_shuffles, 1, n, 0, 0)(x.data(), sum.data(), bc.data(), dn.data(), up.data(), xw.data());
	CHECK(cudaGetLastError() == cudaSuccess);
	for (int i = 0; i < n; i++) {
		const int w = i / 32 * 32, lane = i % 32;
		float s = 0.0f;
		for (int l = 0; l < 32; l++)
			s += x[w + l];
		CHECK_NEAR(sum[i], s, 0.0, 0.0);   // small integers: exact in any order
		CHECK(bc[i] == x[w + 5]);
		CHECK(dn[i] == (lane % 8 + 3 < 8 ? x[i + 3] : x[i]));
		CHECK(up[i] == (lane % 16 >= 2 ? x[i - 2] : x[i]));
		CHECK(xw[i] == ((lane & 1) ? x[i ^ 1] : x[i]));   // xor 4 leaves a width-4 segment: own value
	}
}

TEST(votes)
{
	const int n = 64;
	std::vector<int> pred(n), any(n, -1), all(n, -1);
	std::vector<unsigned> bal(n, 0);

	for (int i = 0; i < n; i++)
		pred[i] = i < 32 ? (i % 3 == 0) : 1;
	LAUNCH(k_votes, 2, 32, 0, 0)(pred.data(), bal.data(), any.data(), all.data());
	for (int i = 0; i < 32; i++) {
		unsigned want = 0;
		for (int l = 0; l < 32; l++)
			want |= (unsigned)(l % 3 == 0) << l;
		CHECK(bal[i] == want);
		CHECK(any[i] == 1 && all[i] == 0);
		CHECK(bal[32 + i] == 0xffffffffu && any[32 + i] == 1 && all[32 + i] == 1);
	}
}

TEST(half_warp_mask)
{
	std::vector<int> x(32), out(32, 0);

	for (int i = 0; i < 32; i++)
		x[i] = 100 + i;
	LAUNCH(k_half, 1, 32, 0, 0)(x.data(), out.data());
	for (int i = 0; i < 32; i++)
		CHECK(out[i] == (i < 16 ? 100 + 15 - i : -1));
}

TEST(atomics)
{
	float f = 0.0f;
	int c = 0;

	LAUNCH(k_atomics, 7, 128, 0, 0)(&f, &c, 800);
	CHECK(c == 800);
	CHECK(f == 400.0f);
}

TEST(params_per_thread)
{
	std::vector<int> out(64, 0);

	LAUNCH(k_params, 1, 64, 0, 0)(out.data(), 10);
	for (int i = 0; i < 64; i++)
		CHECK(out[i] == 10 + i);
}

TEST(indices)
{
	const dim3 grid(3, 2), block(4, 3, 2);
	std::vector<int> out(6 * 24, -1);

	LAUNCH(k_index, grid, block, 0, 0)(out.data());
	for (int b = 0; b < 6; b++)
		for (int t = 0; t < 24; t++)
			CHECK(out[b * 24 + t] == b * 10000 + t);
}

TEST(launch_errors)
{
	std::vector<int> out(2048, 0);

	LAUNCH(k_params, 1, 1025, 0, 0)(out.data(), 0);
	CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
	CHECK(cudaGetLastError() == cudaSuccess);   // read once, then clear
	LAUNCH(k_params, 0, 32, 0, 0)(out.data(), 0);
	CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
}

TEST(misuse_aborts)
{
	static float out[64];

	CHECK(aborts([] { LAUNCH(k_stuck, 1, 32, 0, 0)(out); }));
	CHECK(aborts([] { LAUNCH(k_badmask, 1, 16, 0, 0)(out); }));
	CHECK(aborts([] { LAUNCH(k_outside, 1, 32, 0, 0)(out); }));
	CHECK(!aborts([] { LAUNCH(k_params, 1, 32, 0, 0)((int *)out, 0); }));
}

// Round to nearest even, as libadapter/base/dtype (the CPU side's bf16).
TEST(bf16_matches_dtype)
{
	const float special[] = {0.0f, -0.0f, 1.0f, 1.00390625f, 1.01171875f, 3.3895314e38f, INFINITY, -INFINITY,
				 NAN, 1e-40f, -1e-45f};
	int bad = 0;

	for (float f : special) {
		uint16_t a = __float2bfloat16(f).x, b = lora_f32_to_bf16(f);
		bad += a != b;
		bad += !(std::isnan(f) ? std::isnan(__bfloat162float(__float2bfloat16(f)))
				       : __bfloat162float(__float2bfloat16(f)) == lora_bf16_to_f32(b));
	}
	for (int i = 0; i < 1000000; i++) {
		uint32_t u = (uint32_t)(rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17);
		float f;
		memcpy(&f, &u, 4);
		bad += __float2bfloat16(f).x != lora_f32_to_bf16(f);
	}
	CHECKF(bad == 0, "%d conversions differ", bad);
}

int main(void)
{
	RUN(barrier_orders_shared_memory);
	RUN(missing_barrier_shows);
	RUN(tree_sum_static_shared);
	RUN(shuffles);
	RUN(votes);
	RUN(half_warp_mask);
	RUN(atomics);
	RUN(params_per_thread);
	RUN(indices);
	RUN(launch_errors);
	RUN(misuse_aborts);
	RUN(bf16_matches_dtype);
	return t_done();
}
