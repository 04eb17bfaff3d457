// device.cu - device discovery for the host code (see device.h).
#include <cstdio>
#include <cstring>

#include <cuda_runtime.h>

#include "kernels/device.h"

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
