/*
 * dtype.h - the element types of safetensors files, and fp32 conversion.
 *
 * Every dtype the safetensors format names is recognised with its width in
 * bits, so that any tensor can be validated, located and copied byte for byte.
 * Only F32, F16 and BF16 (and F64 on input) carry arithmetic here: they convert
 * to and from fp32 with round-to-nearest-even, and a NaN stays a NaN.
 */
#ifndef LORA_DTYPE_H
#define LORA_DTYPE_H

#include <stddef.h>
#include <stdint.h>

enum lora_dtype {
	LORA_DT_INVALID = 0,
	LORA_DT_BOOL,
	LORA_DT_U8,
	LORA_DT_I8,
	LORA_DT_F8_E5M2,
	LORA_DT_F8_E4M3,
	LORA_DT_F8_E8M0,
	LORA_DT_I16,
	LORA_DT_U16,
	LORA_DT_F16,
	LORA_DT_BF16,
	LORA_DT_I32,
	LORA_DT_U32,
	LORA_DT_F32,
	LORA_DT_F64,
	LORA_DT_I64,
	LORA_DT_U64,
	LORA_DT_C64,
	LORA_DT_F4,      /* sub-byte: 4 bits, packed */
	LORA_DT_F6_E2M3, /* sub-byte: 6 bits, packed */
	LORA_DT_F6_E3M2,
	LORA_DT_F8_E4M3FNUZ,  /* AMD-style fp8: no -0, one NaN */
	LORA_DT_F8_E5M2FNUZ,
	LORA_DT_COUNT
};

/* "F32" -> LORA_DT_F32; LORA_DT_INVALID when unknown.  len < 0: NUL-terminated. */
enum lora_dtype lora_dtype_parse(const char *s, long len);
const char *lora_dtype_name(enum lora_dtype dt);
/* Width of one element in bits (4, 6, 8, 16, 32, 64); 0 for INVALID. */
unsigned lora_dtype_bits(enum lora_dtype dt);
/* True for the dtypes that convert to fp32 here: F16, BF16, F32, F64. */
int lora_dtype_is_float(enum lora_dtype dt);

/* Scalar conversions, round to nearest even; NaN stays NaN (quiet). */
float lora_bf16_to_f32(uint16_t h);
uint16_t lora_f32_to_bf16(float f);
float lora_f16_to_f32(uint16_t h);
uint16_t lora_f32_to_f16(float f);

/*
 * Convert n elements of type `dt` at `src` (any alignment, little-endian) to
 * fp32 `dst`.  Returns -1 when dt is not a float type.
 */
int lora_to_f32(float *dst, const void *src, enum lora_dtype dt, size_t n);
/* Convert n fp32 values to `dt` (F32, F16, BF16, F64) at `dst`.  -1 otherwise. */
int lora_from_f32(void *dst, const float *src, enum lora_dtype dt, size_t n);

#endif
