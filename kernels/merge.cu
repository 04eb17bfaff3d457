// kernels/merge.cu - cuBLAS GEMMs for the merge's ΔW row blocks (see merge.h).
//
// No custom kernel: ΔW = coef·B·A is one GEMM of inner size r per row block;
// cuBLAS does it, in fp32 (Sgemm) or fp64 (Dgemm, for fp32 outputs).  Factors
// are uploaded once per target tensor and cached; the block result goes back
// to the host, which adds W and rounds exactly as the CPU path does.
#include "kernels/merge.h"

#include <cstdio>
#include <cstring>
#include <new>

#include <cublas_v2.h>
#include <cuda_runtime.h>

namespace {

constexpr int kSlots = 16;

struct Slot {
	const void *host = nullptr;
	size_t bytes = 0;
	void *dev = nullptr;
	size_t cap = 0;
	unsigned long long used = 0;
};

}  // namespace

struct lora_cuda_merge {
	cublasHandle_t handle = nullptr;
	Slot slots[kSlots];
	unsigned long long tick = 0;
	void *c = nullptr;        // the block's C
	size_t c_cap = 0;
};

#define CUDA_TRY(call)                                                                      \
	do {                                                                                \
		cudaError_t e_ = (call);                                                    \
		if (e_ != cudaSuccess) {                                                    \
			snprintf(msg, msglen, "%s failed at %s:%d: %s", #call, __FILE__, __LINE__, \
				 cudaGetErrorString(e_));                                   \
			return -1;                                                          \
		}                                                                           \
	} while (0)

#define CUBLAS_TRY(call)                                                                    \
	do {                                                                                \
		cublasStatus_t s_ = (call);                                                 \
		if (s_ != CUBLAS_STATUS_SUCCESS) {                                          \
			snprintf(msg, msglen, "%s failed at %s:%d: status %d", #call, __FILE__,    \
				 __LINE__, (int)s_);                                        \
			return -1;                                                          \
		}                                                                           \
	} while (0)

static int grow(void **p, size_t *cap, size_t bytes, char *msg, size_t msglen)
{
	if (bytes <= *cap)
		return 0;
	if (*p)
		cudaFree(*p);
	*p = nullptr;
	*cap = 0;
	CUDA_TRY(cudaMalloc(p, bytes));
	*cap = bytes;
	return 0;
}

// The device copy of a host factor: cached by host pointer and size.
static const void *upload(lora_cuda_merge *ctx, const void *host, size_t bytes, char *msg, size_t msglen)
{
	Slot *victim = &ctx->slots[0];

	for (Slot &s : ctx->slots) {
		if (s.host == host && s.bytes == bytes) {
			s.used = ++ctx->tick;
			return s.dev;
		}
		if (s.used < victim->used)
			victim = &s;
	}
	if (grow(&victim->dev, &victim->cap, bytes, msg, msglen) < 0)
		return nullptr;
	cudaError_t e = cudaMemcpy(victim->dev, host, bytes, cudaMemcpyHostToDevice);
	if (e != cudaSuccess) {
		snprintf(msg, msglen, "cudaMemcpy of a LoRA factor failed: %s", cudaGetErrorString(e));
		victim->host = nullptr;
		return nullptr;
	}
	victim->host = host;
	victim->bytes = bytes;
	victim->used = ++ctx->tick;
	return victim->dev;
}

extern "C" int lora_cuda_merge_init(void **out_, char *msg, size_t msglen)
{
	lora_cuda_merge **out = (lora_cuda_merge **)out_;
	int n = 0;
	cudaError_t e = cudaGetDeviceCount(&n);

	*out = nullptr;
	if (e != cudaSuccess || n == 0) {
		snprintf(msg, msglen, "no CUDA device found (%s); use --device cpu",
			 e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
		return -1;
	}
	lora_cuda_merge *ctx = new (std::nothrow) lora_cuda_merge();
	if (!ctx) {
		snprintf(msg, msglen, "out of memory");
		return -1;
	}
	if (cudaSetDevice(0) != cudaSuccess || cublasCreate(&ctx->handle) != CUBLAS_STATUS_SUCCESS) {
		snprintf(msg, msglen, "cannot start cuBLAS on CUDA device 0");
		delete ctx;
		return -1;
	}
	*out = ctx;
	return 0;
}

extern "C" void lora_cuda_merge_reset(void *ctx_)
{
	lora_cuda_merge *ctx = (lora_cuda_merge *)ctx_;
	for (Slot &s : ctx->slots) {
		s.host = nullptr;
		s.bytes = 0;
	}
}

extern "C" int lora_cuda_merge_delta(void *ctx_, int f64, int trans, int M, int N, int K,
				     double coef, const void *m1, size_t m1_elems, size_t off1, int ld1,
				     const void *m2, size_t m2_elems, int ld2, int accumulate,
				     void *host_out, char *msg, size_t msglen)
{
	lora_cuda_merge *ctx = (lora_cuda_merge *)ctx_;
	size_t es = f64 ? sizeof(double) : sizeof(float);
	size_t cbytes = (size_t)M * (size_t)N * es;
	const char *d1 = static_cast<const char *>(upload(ctx, m1, m1_elems * es, msg, msglen));
	const void *d2 = d1 ? upload(ctx, m2, m2_elems * es, msg, msglen) : nullptr;
	cublasOperation_t op = trans ? CUBLAS_OP_T : CUBLAS_OP_N;

	if (!d1 || !d2)
		return -1;
	if (grow(&ctx->c, &ctx->c_cap, cbytes, msg, msglen) < 0)
		return -1;
	// Row-major C = op(m1)·op(m2) is column-major Cᵀ = op(m2)ᵀ·op(m1)ᵀ: swap the operands.
	if (f64) {
		double a = coef, b = accumulate ? 1.0 : 0.0;
		CUBLAS_TRY(cublasDgemm(ctx->handle, op, op, N, M, K, &a, static_cast<const double *>(d2), ld2,
				       reinterpret_cast<const double *>(d1) + off1, ld1, &b,
				       static_cast<double *>(ctx->c), N));
	} else {
		float a = (float)coef, b = accumulate ? 1.0f : 0.0f;
		CUBLAS_TRY(cublasSgemm(ctx->handle, op, op, N, M, K, &a, static_cast<const float *>(d2), ld2,
				       reinterpret_cast<const float *>(d1) + off1, ld1, &b,
				       static_cast<float *>(ctx->c), N));
	}
	CUDA_TRY(cudaGetLastError());
	CUDA_TRY(cudaMemcpy(host_out, ctx->c, cbytes, cudaMemcpyDeviceToHost));
	return 0;
}

extern "C" void lora_cuda_merge_free(void *ctx_)
{
	lora_cuda_merge *ctx = (lora_cuda_merge *)ctx_;
	if (!ctx)
		return;
	for (Slot &s : ctx->slots)
		if (s.dev)
			cudaFree(s.dev);
	if (ctx->c)
		cudaFree(ctx->c);
	if (ctx->handle)
		cublasDestroy(ctx->handle);
	delete ctx;
}
