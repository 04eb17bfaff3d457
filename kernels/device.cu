// device.cu - device discovery, memory and streams (kernels.h, abi.h) on a GPU.
// The CPU execution layer has its own (tests/simt/device_simt.cc).
#include <cstdio>
#include <cstring>

#include <cuda_runtime.h>

#include "kernels/kernels.h"

extern "C" int lora_cuda_query(struct lora_cuda_info *info, char *msg, size_t msglen)
{
	cudaDeviceProp prop;
	cudaError_t e;

	memset(info, 0, sizeof(*info));
	e = cudaGetDeviceCount(&info->count);
	if (e != cudaSuccess) {
		info->count = 0;
		snprintf(msg, msglen, "no CUDA device: %s", cudaGetErrorString(e));
		cudaGetLastError();  // clear the sticky error
		return 0;
	}
	if (info->count == 0) {
		snprintf(msg, msglen, "no CUDA device");
		return 0;
	}
	if ((e = cudaGetDeviceProperties(&prop, 0)) != cudaSuccess ||
	    (e = cudaMemGetInfo(&info->free_mem, &info->total_mem)) != cudaSuccess) {
		snprintf(msg, msglen, "cannot query CUDA device 0: %s", cudaGetErrorString(e));
		info->count = 0;
		return -1;
	}
	snprintf(info->name, sizeof(info->name), "%s", prop.name);
	info->cc_major = prop.major;
	info->cc_minor = prop.minor;
	msg[0] = '\0';
	return 0;
}

// ------------------------------------------------------------ memory and streams (abi.h)

extern "C" const char *lora_dev_strerror(int status)
{
	return cudaGetErrorString((cudaError_t)status);
}

extern "C" int lora_dev_mem_info(size_t *free_bytes, size_t *total_bytes)
{
	return (int)cudaMemGetInfo(free_bytes, total_bytes);
}

extern "C" int lora_dev_malloc(void **p, size_t bytes)
{
	return (int)cudaMalloc(p, bytes ? bytes : 1);
}

extern "C" int lora_dev_free(void *p)
{
	return (int)cudaFree(p);
}

extern "C" int lora_dev_host_alloc(void **p, size_t bytes)
{
	return (int)cudaMallocHost(p, bytes ? bytes : 1);
}

extern "C" int lora_dev_host_free(void *p)
{
	return (int)cudaFreeHost(p);
}

extern "C" int lora_dev_memcpy(void *dst, const void *src, size_t bytes, lora_stream s)
{
	return (int)cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, (cudaStream_t)s);
}

extern "C" int lora_dev_memset(void *p, int byte, size_t bytes, lora_stream s)
{
	return (int)cudaMemsetAsync(p, byte, bytes, (cudaStream_t)s);
}

extern "C" int lora_dev_stream_create(lora_stream *s)
{
	return (int)cudaStreamCreateWithFlags((cudaStream_t *)s, cudaStreamNonBlocking);
}

extern "C" int lora_dev_stream_destroy(lora_stream s)
{
	return (int)cudaStreamDestroy((cudaStream_t)s);
}

extern "C" int lora_dev_stream_sync(lora_stream s)
{
	return (int)cudaStreamSynchronize((cudaStream_t)s);
}
