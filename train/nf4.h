/*
 * nf4.h - 4-bit NormalFloat weights with double-quantized block scales, byte
 * for byte as bitsandbytes stores them after
 *     quantize_4bit(w, quant_type="nf4", blocksize=64, compress_statistics=True)
 *
 * A quantized tensor of n elements (the weight flattened row-major) is:
 *   1. packed[ceil(n/2)]   element 2k in the HIGH nibble of byte k, 2k+1 in the
 *                          low nibble (an odd n pads with the code of 0.0, 7);
 *                          nibble = index of the NF4 level nearest w / absmax(b),
 *                          b = i / 64 (the last block may be partial);
 *   2. qabsmax[nb]         nb = ceil(n/64): absmax(b) - offset, coded with the
 *                          256-level 8-bit dynamic map relative to absmax2(g),
 *                          g = b / 256 (groups of 256 blocks, the last partial);
 *   3. absmax2[ng]         ng = ceil(nb/256): fp32 max |absmax(b) - offset| per group;
 *   4. offset              fp32 mean of the nb block absmax values.
 * Dequantized:  w[i] = NF4[nibble(i)] * (CODE8[qabsmax[b]] * absmax2[g] + offset),
 * every product and sum rounded to fp32 in that order.  Storage is
 * 4 + 8/64 + 32/(64*256) = 4.127 bits per parameter.
 *
 * The rounding follows bitsandbytes 0.50 on the CPU, which is what makes the
 * bytes equal: the NF4 step scales full blocks by x * (1/absmax) and the
 * partial last block by x / absmax, then takes the first level whose midpoint
 * with the next is >= the value (torch.bucketize).  The mean is torch's fp32
 * cascade sum divided by nb.  The 8-bit step maps v = x * (1/absmax2), clamped
 * to [-1, 1], to a 65536-entry table at index trunc(fma((v+1)/2, 65535, 0.5)),
 * the table holding for each grid point 2i/65535 - 1 the number of code
 * midpoints below it; a group whose absmax2 is 0 codes as 0.
 */
#ifndef LORA_TRAIN_NF4_H
#define LORA_TRAIN_NF4_H

#include <stddef.h>
#include <stdint.h>

#include "libadapter/base/dtype.h"
#include "libadapter/base/err.h"

#define LORA_NF4_BLOCK 64     /* elements per absmax */
#define LORA_NF4_BLOCK2 256   /* absmax values per nested scale */

extern const float lora_nf4_levels[16];   /* the NF4 code, ascending, [-1, 1] */
extern const float lora_code8[256];       /* bitsandbytes' signed 8-bit dynamic map, ascending */

struct lora_nf4 {
	uint64_t n;           /* elements */
	uint64_t nb;          /* ceil(n / 64) */
	uint64_t ng;          /* ceil(nb / 256) */
	uint8_t *packed;      /* [ceil(n/2)] */
	uint8_t *qabsmax;     /* [nb] */
	float *absmax2;       /* [ng] */
	float offset;
};

/*
 * Quantize n elements of type dt (F32, BF16 or F16) at src.  The source is
 * converted to fp32 a chunk at a time, so a large bf16 weight needs no fp32
 * copy.  On success q owns its arrays (lora_nf4_free).
 */
int lora_nf4_quantize(struct lora_nf4 *q, const void *src, enum lora_dtype dt, uint64_t n,
		      struct lora_err *err);
void lora_nf4_free(struct lora_nf4 *q);

/* Bytes the quantized form takes (packed + qabsmax + absmax2 + offset). */
uint64_t lora_nf4_bytes(uint64_t n);

/* The fp32 absmax values of blocks [b0, b0 + count), as dequantize_4bit uses them. */
void lora_nf4_absmax(const struct lora_nf4 *q, uint64_t b0, uint64_t count, float *out);

/* Dequantize elements [start, start + count) to fp32. */
void lora_nf4_dequant(const struct lora_nf4 *q, uint64_t start, uint64_t count, float *out);

/*
 * The two steps on their own (tests, and a device backend that quantizes
 * itself).  nf4_blocks: packed codes and fp32 absmax of n values.  dq8:
 * double quantization of nb absmax values into qabsmax/absmax2/offset.
 */
void lora_nf4_blocks(const float *x, uint64_t n, uint8_t *packed,
		     float *absmax);
void lora_nf4_dq8(const float *absmax, uint64_t nb, uint8_t *qabsmax, float *absmax2,
		  float *offset);

/* torch.sum of n fp32 values on the CPU, same additions in the same order (n <= 32768). */
float lora_torch_sum_f32(const float *x, uint64_t n);

#endif
