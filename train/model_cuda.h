/*
 * model_cuda.h - the CUDA backend (train/model_cuda.c): the forward and
 * backward of train/model_cpu.c on a device reached only through the plugin
 * table of kernels/abi.h.
 *
 *     const struct lora_cuda_abi *K = lora_cuda_api(plugin, why, sizeof(why));
 *     lora_net_open(&net, dir, &o, err);
 *     if (lora_cuda_attach(net, K, err) < 0) ...   // net->be = &lora_backend_cuda
 *     ... lora_net_forward_backward(net, ...) as on the CPU
 */
#ifndef LORA_TRAIN_MODEL_CUDA_H
#define LORA_TRAIN_MODEL_CUDA_H

#include "kernels/abi.h"
#include "libadapter/base/err.h"
#include "train/net.h"

extern const struct lora_backend lora_backend_cuda;

/*
 * Whether the CUDA backend computes this model as the CPU one does: 0, or
 * -1 with the feature it lacks named in err (Qwen3/Gemma 3 q_norm/k_norm,
 * Gemma 2, Phi-3's fused linears, GELU, soft-capping, a second RoPE base,
 * head_dim over 128).
 */
int lora_cuda_supports(const struct lora_net *net, struct lora_err *err);

/*
 * Run net on the device behind K from now on (its weights are uploaded on
 * the first run): releases any state of the previous backend and sets
 * net->be.  K must outlive net (the loader keeps its table for the process).
 */
int lora_cuda_attach(struct lora_net *net, const struct lora_cuda_abi *K, struct lora_err *err);

#endif
