/*
 * cuda.h - the CUDA plugin, loaded only when a command asks for the GPU.
 *
 * Everything that links cuBLAS and the CUDA runtime (the .cu files under kernels/) is built
 * into one shared object, liblora_cuda.so, beside the lora binary (or in
 * <prefix>/lib/lora/, or where $LORA_CUDA_PLUGIN points).  The program itself
 * never links CUDA: those libraries map hundreds of megabytes, which every
 * `lora list` would otherwise pay, and a machine without them still runs
 * every command.  The plugin is dlopen()ed on the first call here.
 */
#ifndef LORA_TRAIN_CUDA_H
#define LORA_TRAIN_CUDA_H

#include <stddef.h>

#include "kernels/device.h"
#include "libadapter/merge/merge.h"

struct lora_cuda_api {
	int (*query)(struct lora_cuda_info *info, char *msg, size_t msglen);
	struct lora_merge_gpu merge;   /* kernels/merge.cu, for libadapter's GPU hook */
};

/* The plugin's functions, loading it once; NULL with the reason in msg when it cannot be had. */
const struct lora_cuda_api *lora_cuda_api(char *msg, size_t msglen);

/* Devices visible through the plugin (0 without plugin or device; msg says why). */
int lora_cuda_device(struct lora_cuda_info *info, char *msg, size_t msglen);

/* A GPU hook for libadapter's merge whose init loads the plugin on first use. */
extern const struct lora_merge_gpu lora_cuda_merge_lazy;

#endif
