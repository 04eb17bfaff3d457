/*
 * decode_cpu.h - the CPU backend's generation hooks (decode_cpu.c), which
 * lora_backend_cpu (model_cpu.c) points at.  Callers go through net->be.
 */
#ifndef LORA_TRAIN_DECODE_CPU_H
#define LORA_TRAIN_DECODE_CPU_H

#include "train/net.h"

int lora_cpu_kv_new(struct lora_net *net, int max_pos, struct lora_kv **out, struct lora_err *err);
int lora_cpu_decode(struct lora_net *net, struct lora_kv *kv, int pos, const int32_t *ids, int n,
		    float *logits, float *all, struct lora_err *err);
void lora_cpu_kv_free(struct lora_net *net, struct lora_kv *kv);

#endif
