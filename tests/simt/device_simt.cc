// device_simt.cc - the device side of the table (kernels/kernels.h) on the CPU
// execution layer: device memory is host memory, streams are synchronous
// (a launch has finished when it returns), and the merge hook, which needs
// cuBLAS on a real device, says it is not here.
#include "tests/simt/simt.h"

#include <cstdio>
#include <cstdlib>

#include "kernels/kernels.h"

extern "C" int lora_cuda_query(struct lora_cuda_info *info, char *msg, size_t msglen)
{
	memset(info, 0, sizeof(*info));
	info->count = 1;
	snprintf(info->name, sizeof(info->name), "the CPU execution layer (tests/simt)");
	info->total_mem = info->free_mem = (size_t)1 << 30;
	info->cc_major = 9;
	msg[0] = msglen ? '\0' : msg[0];
	return 0;
}

extern "C" const char *lora_dev_strerror(int status)
{
	return cudaGetErrorString((cudaError_t)status);
}

extern "C" int lora_dev_mem_info(size_t *free_bytes, size_t *total_bytes)
{
	*free_bytes = *total_bytes = (size_t)1 << 30;
	return 0;
}

extern "C" int lora_dev_malloc(void **p, size_t bytes)
{
	*p = aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
	return *p ? 0 : (int)cudaErrorMemoryAllocation;
}

extern "C" int lora_dev_free(void *p)
{
	free(p);
	return 0;
}

extern "C" int lora_dev_host_alloc(void **p, size_t bytes) { return lora_dev_malloc(p, bytes); }
extern "C" int lora_dev_host_free(void *p) { return lora_dev_free(p); }

extern "C" int lora_dev_memcpy(void *dst, const void *src, size_t bytes, lora_stream)
{
	memmove(dst, src, bytes);
	return 0;
}

extern "C" int lora_dev_memset(void *p, int byte, size_t bytes, lora_stream)
{
	memset(p, byte, bytes);
	return 0;
}

extern "C" int lora_dev_stream_create(lora_stream *s)
{
	*s = nullptr;
	return 0;
}

extern "C" int lora_dev_stream_destroy(lora_stream) { return 0; }
extern "C" int lora_dev_stream_sync(lora_stream) { return (int)cudaGetLastError(); }

extern "C" int lora_cuda_merge_init(void **ctx, char *msg, size_t msglen)
{
	*ctx = nullptr;
	snprintf(msg, msglen, "the CPU execution layer has no cuBLAS merge");
	return -1;
}
extern "C" void lora_cuda_merge_reset(void *) {}
extern "C" int lora_cuda_merge_delta(void *, int, int, int, int, int, double, const void *, size_t, size_t,
				     int, const void *, size_t, int, int, void *, char *msg, size_t msglen)
{
	snprintf(msg, msglen, "the CPU execution layer has no cuBLAS merge");
	return -1;
}
extern "C" void lora_cuda_merge_free(void *) {}
