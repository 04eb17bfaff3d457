/*
 * merge_int.h - what the files of the merge room share and nobody else uses.
 */
#ifndef LORA_MERGE_INT_H
#define LORA_MERGE_INT_H

#define BLOCK_ELEMS (1u << 17)   /* elements per row block: 512 KB of fp32, stays in L2 */

#include <stdint.h>

#include "libadapter/base/dtype.h"
#include "libadapter/format/safetensors.h"

/* fpline.c: the fingerprint line of tensor t whose data hashes to md. */
void lora_merge_line_from_digest(const struct lora_st_tensor *t, const unsigned char md[32], char line[128]);
/* record.c: s is a well-formed fingerprint line ("<DTYPE> <d0>x<d1> <hex>"). */
int lora_merge_line_valid(const char *s);
/* set.c: a dtype merge computes in (bf16, fp16, fp32). */
int lora_merge_is_float(enum lora_dtype dt);

#endif
