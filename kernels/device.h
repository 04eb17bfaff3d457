/*
 * device.h - the CUDA device as the host code sees it (C linkage).
 *
 * Built only when nvcc exists (LORA_HAVE_CUDA).  Every call is checked; a
 * failure comes back as a message, never an abort, so the CPU path can take
 * over or cmd/ can say why.
 */
#ifndef LORA_KERNELS_DEVICE_H
#define LORA_KERNELS_DEVICE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

struct lora_cuda_info {
	int count;               /* devices visible; 0 when none or no driver */
	char name[256];          /* device 0 */
	size_t total_mem, free_mem;
	int cc_major, cc_minor;
};

/* Fill info; returns 0 with count 0 when there is no usable device. msg gets the reason. */
int lora_cuda_query(struct lora_cuda_info *info, char *msg, size_t msglen);

#ifdef __cplusplus
}
#endif

#endif
