/*
 * cuda.h - the CUDA plugin, loaded only when a command asks for the GPU.
 *
 * Everything that links cuBLAS and the CUDA runtime (the .cu files under kernels/) is built
 * into one shared object, liblora_cuda.so, beside the lora binary (or in
 * <prefix>/lib/lora/, or at the path the caller names: the program passes
 * $LORA_CUDA_PLUGIN, train/ never reads the environment).  The program itself
 * never links CUDA: those libraries map hundreds of megabytes, which every
 * `lora list` would otherwise pay, and a machine without them still runs
 * every command.  The plugin is dlopen()ed on the first call here; its one
 * export, lora_cuda_plugin, hands over the versioned table of kernels/abi.h,
 * and a table of another ABI version is refused with both versions named.
 */
#ifndef LORA_TRAIN_CUDA_H
#define LORA_TRAIN_CUDA_H

#include <stddef.h>

#include "kernels/abi.h"
#include "libadapter/merge/merge.h"

/*
 * The plugin's table, loading it once; NULL with the reason in msg when it cannot be had.
 * plugin: the file to load; NULL or "": liblora_cuda.so beside the executable, in
 * ../lib/lora/ or in ../ (build trees).  The first call decides for the process (a
 * shared object is loaded once): later calls get that table, or its failure, whatever
 * they name.
 */
const struct lora_cuda_abi *lora_cuda_api(const char *plugin, char *msg, size_t msglen);

/*
 * Whether a table from the plugin at `path` can be used by this build: 0, or
 * -1 with the reason in msg (none, another ABI version, another size).
 */
int lora_cuda_check_table(const struct lora_cuda_abi *t, const char *path, char *msg, size_t msglen);

/* Devices visible through the plugin at plugin (as lora_cuda_api); 0 without plugin or
 * device, msg says why.  Without a plugin named and without an NVIDIA driver it says so
 * without loading anything. */
int lora_cuda_device(const char *plugin, struct lora_cuda_info *info, char *msg, size_t msglen);

/*
 * A GPU hook for libadapter's merge whose init loads the plugin at `plugin` (as
 * lora_cuda_api) on first use: lora_merge_opts.gpu = lora_cuda_merge_hook(&h, path).
 * h must outlive the merge; plugin is not copied.
 */
struct lora_cuda_merge_hook {
	struct lora_merge_gpu ops;    /* first, so that init finds the rest from its self */
	const char *plugin;
};
const struct lora_merge_gpu *lora_cuda_merge_hook(struct lora_cuda_merge_hook *h, const char *plugin);

#endif
