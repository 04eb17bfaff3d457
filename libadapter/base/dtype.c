/* dtype.c - safetensors element types and fp16/bf16 <-> fp32 conversion. */
#include "libadapter/base/dtype.h"

#include <string.h>

static const struct {
	const char *name;
	unsigned bits;
} dtypes[LORA_DT_COUNT] = {
	[LORA_DT_INVALID] = { "INVALID", 0 },
	[LORA_DT_BOOL] = { "BOOL", 8 },
	[LORA_DT_U8] = { "U8", 8 },
	[LORA_DT_I8] = { "I8", 8 },
	[LORA_DT_F8_E5M2] = { "F8_E5M2", 8 },
	[LORA_DT_F8_E4M3] = { "F8_E4M3", 8 },
	[LORA_DT_F8_E8M0] = { "F8_E8M0", 8 },
	[LORA_DT_I16] = { "I16", 16 },
	[LORA_DT_U16] = { "U16", 16 },
	[LORA_DT_F16] = { "F16", 16 },
	[LORA_DT_BF16] = { "BF16", 16 },
	[LORA_DT_I32] = { "I32", 32 },
	[LORA_DT_U32] = { "U32", 32 },
	[LORA_DT_F32] = { "F32", 32 },
	[LORA_DT_F64] = { "F64", 64 },
	[LORA_DT_I64] = { "I64", 64 },
	[LORA_DT_U64] = { "U64", 64 },
	[LORA_DT_C64] = { "C64", 64 },
	[LORA_DT_F4] = { "F4", 4 },
	[LORA_DT_F6_E2M3] = { "F6_E2M3", 6 },
	[LORA_DT_F6_E3M2] = { "F6_E3M2", 6 },
	[LORA_DT_F8_E4M3FNUZ] = { "F8_E4M3FNUZ", 8 },
	[LORA_DT_F8_E5M2FNUZ] = { "F8_E5M2FNUZ", 8 },
};

enum lora_dtype lora_dtype_parse(const char *s, long len)
{
	size_t n = len < 0 ? strlen(s) : (size_t)len;

	for (int i = 1; i < LORA_DT_COUNT; i++)
		if (strlen(dtypes[i].name) == n && memcmp(dtypes[i].name, s, n) == 0)
			return (enum lora_dtype)i;
	return LORA_DT_INVALID;
}

const char *lora_dtype_name(enum lora_dtype dt)
{
	return (dt > 0 && dt < LORA_DT_COUNT) ? dtypes[dt].name : "INVALID";
}

unsigned lora_dtype_bits(enum lora_dtype dt)
{
	return (dt > 0 && dt < LORA_DT_COUNT) ? dtypes[dt].bits : 0;
}

int lora_dtype_is_float(enum lora_dtype dt)
{
	return dt == LORA_DT_F16 || dt == LORA_DT_BF16 || dt == LORA_DT_F32 || dt == LORA_DT_F64;
}

static inline uint32_t f2u(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return u;
}

static inline float u2f(uint32_t u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}

float lora_bf16_to_f32(uint16_t h)
{
	return u2f((uint32_t)h << 16);
}

uint16_t lora_f32_to_bf16(float f)
{
	uint32_t u = f2u(f);

	if ((u & 0x7fffffffu) > 0x7f800000u)  /* NaN: keep sign, force quiet */
		return (uint16_t)((u >> 16) | 0x0040u);
	/* Round to nearest even: add 0x7fff plus the lowest kept bit. */
	u += 0x7fffu + ((u >> 16) & 1u);
	return (uint16_t)(u >> 16);
}

float lora_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	uint32_t exp = (h >> 10) & 0x1fu;
	uint32_t man = h & 0x3ffu;

	if (exp == 0x1f)  /* inf or NaN */
		return u2f(sign | 0x7f800000u | (man << 13) | (man ? 0x00400000u : 0));
	if (exp == 0) {
		if (man == 0)
			return u2f(sign);
		/* Subnormal: value = man * 2^-24, exact in fp32. */
		float v = (float)man * 0x1p-24f;
		return sign ? -v : v;
	}
	return u2f(sign | ((exp + 112u) << 23) | (man << 13));
}

uint16_t lora_f32_to_f16(float f)
{
	uint32_t u = f2u(f);
	uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
	uint32_t a = u & 0x7fffffffu;

	if (a > 0x7f800000u)  /* NaN */
		return sign | 0x7e00u | (uint16_t)((a >> 13) & 0x3ffu);
	if (a >= 0x477ff000u)  /* rounds to >= 65520: overflow to inf */
		return sign | 0x7c00u;
	if (a < 0x38800000u) {  /* below 2^-14: subnormal or zero in f16 */
		/* Exact: half subnormal unit is 2^-24; let fp32 round to nearest even. */
		float v = u2f(a) * 0x1p24f;         /* scale so one unit = 1.0 */
		/* Adding and subtracting 2^23 rounds to an integer, nearest even. */
		float r = (v + 0x1p23f) - 0x1p23f;
		return sign | (uint16_t)r;
	}
	/* Normal: drop 13 mantissa bits with round to nearest even. */
	uint32_t e = ((a >> 23) - 112u) << 10;
	uint32_t m = a & 0x7fffffu;
	uint32_t h = e | (m >> 13);
	uint32_t rest = m & 0x1fffu;
	if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
		h++;  /* may carry into the exponent, which is right */
	return sign | (uint16_t)h;
}

int lora_to_f32(float *dst, const void *src, enum lora_dtype dt, size_t n)
{
	const unsigned char *p = src;
	uint16_t h;
	double d;

	switch (dt) {
	case LORA_DT_F32:
		memcpy(dst, src, n * 4);
		return 0;
	case LORA_DT_BF16:
		for (size_t i = 0; i < n; i++) {
			memcpy(&h, p + 2 * i, 2);
			dst[i] = lora_bf16_to_f32(h);
		}
		return 0;
	case LORA_DT_F16:
		for (size_t i = 0; i < n; i++) {
			memcpy(&h, p + 2 * i, 2);
			dst[i] = lora_f16_to_f32(h);
		}
		return 0;
	case LORA_DT_F64:
		for (size_t i = 0; i < n; i++) {
			memcpy(&d, p + 8 * i, 8);
			dst[i] = (float)d;
		}
		return 0;
	default:
		return -1;
	}
}

int lora_from_f32(void *dst, const float *src, enum lora_dtype dt, size_t n)
{
	unsigned char *p = dst;
	uint16_t h;
	double d;

	switch (dt) {
	case LORA_DT_F32:
		memcpy(dst, src, n * 4);
		return 0;
	case LORA_DT_BF16:
		for (size_t i = 0; i < n; i++) {
			h = lora_f32_to_bf16(src[i]);
			memcpy(p + 2 * i, &h, 2);
		}
		return 0;
	case LORA_DT_F16:
		for (size_t i = 0; i < n; i++) {
			h = lora_f32_to_f16(src[i]);
			memcpy(p + 2 * i, &h, 2);
		}
		return 0;
	case LORA_DT_F64:
		for (size_t i = 0; i < n; i++) {
			d = src[i];
			memcpy(p + 8 * i, &d, 8);
		}
		return 0;
	default:
		return -1;
	}
}
