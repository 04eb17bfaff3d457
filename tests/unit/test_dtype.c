/*
 * test_dtype.c - bf16/f16 <-> fp32 against numpy and torch, and the dtype table
 * against what the reference safetensors parser accepts.
 *
 * Fixtures (tests/oracle/st_dtype.py, tests/oracle/st_files.py):
 *   st/dtype_decode.txt  SHA-256 of all 65536 decoded values per type + samples
 *   st/dtype_encode.txt  tricky fp32 inputs and their f16 / bf16 encodings
 *   st/dtypes.txt        every dtype name the reference accepts, with its bits
 */
#include <stdint.h>

#include "libadapter/base/dtype.h"
#include "libadapter/base/fsutil.h"
#include "tests/t.h"

static uint32_t f2u(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return u;
}

static float u2f(uint32_t u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static int is_nan32(uint32_t u) { return (u & 0x7fffffffu) > 0x7f800000u; }
static int is_nan16(uint16_t h) { return (h & 0x7fffu) > 0x7c00u; }
static int is_nanbf(uint16_t h) { return (h & 0x7fffu) > 0x7f80u; }

static FILE *open_fixture(const char *rel)
{
	char *p = t_fixture(rel);
	FILE *f = fopen(p, "r");
	if (!f)
		fprintf(stderr, "  cannot open fixture %s\n", p);
	free(p);
	return f;
}

/* The decoded table of one 16-bit type, NaN canonicalised as the oracle does. */
static void decoded_digest(int bf, char hex[65])
{
	unsigned char *b = malloc(65536 * 4);
	for (uint32_t h = 0; h < 65536; h++) {
		uint32_t u = f2u(bf ? lora_bf16_to_f32((uint16_t)h) : lora_f16_to_f32((uint16_t)h));
		if (is_nan32(u))
			u = (u & 0x80000000u) | 0x7fc00000u;
		for (int k = 0; k < 4; k++)
			b[4 * h + k] = (unsigned char)(u >> (8 * k));
	}
	lora_sha256_hex(b, 65536 * 4, hex);
	free(b);
}

TEST(decode_all_65536_f16_and_bf16_match_numpy_torch)
{
	FILE *f = open_fixture("st/dtype_decode.txt");
	char line[256], kind[16], want[80], ours[65];
	unsigned h, u;
	int digests = 0, samples = 0;

	CHECK(f != NULL);
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		if (line[0] == '#')
			continue;
		if (sscanf(line, "sha256 %15s %79s", kind, want) == 2) {
			decoded_digest(!strcmp(kind, "bf16"), ours);
			CHECKF(!strcmp(ours, want), "%s: decoded table digest %s, oracle %s", kind, ours, want);
			digests++;
		} else if (sscanf(line, "%15s %x %x", kind, &h, &u) == 3) {
			uint32_t got = f2u(!strcmp(kind, "bf16") ? lora_bf16_to_f32((uint16_t)h)
							      : lora_f16_to_f32((uint16_t)h));
			if (is_nan32(u))
				CHECKF(is_nan32(got) && (got >> 31) == (u >> 31), "%s %04x: %08x, want NaN %08x",
				       kind, h, got, u);
			else
				CHECKF(got == u, "%s %04x: %08x, want %08x", kind, h, got, u);
			samples++;
		}
	}
	fclose(f);
	CHECK(digests == 2);
	CHECK(samples > 1000);
}

TEST(encode_tricky_fp32_matches_numpy_f16_and_torch_bf16)
{
	FILE *f = open_fixture("st/dtype_encode.txt");
	char line[128];
	unsigned x, h, b;
	int n = 0, bad = 0;

	CHECK(f != NULL);
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		if (line[0] == '#' || sscanf(line, "%x %x %x", &x, &h, &b) != 3)
			continue;
		float v = u2f(x);
		uint16_t gh = lora_f32_to_f16(v), gb = lora_f32_to_bf16(v);
		n++;
		if (is_nan32(x)) {
			/* NaN stays NaN, sign kept; payload is not promised */
			if (!is_nan16(gh) || !is_nanbf(gb) || (gh >> 15) != (x >> 31) || (gb >> 15) != (x >> 31)) {
				if (bad++ < 10)
					fprintf(stderr, "  NaN %08x -> f16 %04x bf16 %04x\n", x, gh, gb);
			}
			continue;
		}
		if (gh != h || gb != b) {
			if (bad++ < 10)
				fprintf(stderr, "  %08x (%.9g): f16 %04x want %04x, bf16 %04x want %04x\n", x,
					(double)v, gh, h, gb, b);
		}
	}
	fclose(f);
	CHECKF(bad == 0, "%d of %d encodings differ", bad, n);
	CHECK(n > 5000);
}

/* Facts checked without the fixture (so a broken fixture cannot hide them). */
TEST(round_trip_and_named_cases)
{
	int bad = 0;

	/* Every non-NaN 16-bit value survives decode + encode exactly. */
	for (uint32_t i = 0; i < 65536; i++) {
		uint16_t h = (uint16_t)i;
		if (!is_nan16(h) && lora_f32_to_f16(lora_f16_to_f32(h)) != h)
			bad++;
		if (!is_nanbf(h) && lora_f32_to_bf16(lora_bf16_to_f32(h)) != h)
			bad++;
		if (is_nan16(h) && !isnan(lora_f16_to_f32(h)))
			bad++;
		if (is_nanbf(h) && !isnan(lora_bf16_to_f32(h)))
			bad++;
	}
	CHECKF(bad == 0, "%d 16-bit values do not round-trip", bad);
	/* Ties to even: 1 + 2^-11 is halfway between 1 and 1 + 2^-10 in f16. */
	CHECK(lora_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00);
	CHECK(lora_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02);
	CHECK(lora_f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80);
	CHECK(lora_f32_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3f82);
	/* Overflow: 65520 is halfway past the largest f16 (65504) and goes to inf. */
	CHECK(lora_f32_to_f16(65519.99f) == 0x7bff);
	CHECK(lora_f32_to_f16(65520.0f) == 0x7c00);
	CHECK(lora_f32_to_f16(-1e30f) == 0xfc00);
	CHECK(lora_f32_to_bf16(u2f(0x7f7fffffu)) == 0x7f80);
	/* Subnormals: the smallest f16 is 2^-24; half of it is a tie that goes to 0. */
	CHECK(lora_f32_to_f16(0x1p-24f) == 0x0001);
	CHECK(lora_f32_to_f16(0x1p-25f) == 0x0000);
	CHECK(lora_f32_to_f16(0x1.8p-24f) == 0x0002);
	CHECK(lora_f16_to_f32(0x0001) == 0x1p-24f);
	CHECK(lora_f16_to_f32(0x03ff) == 1023 * 0x1p-24f);
	CHECK(lora_f32_to_bf16(u2f(0x00000001u)) == 0x0000);
	CHECK(lora_f32_to_bf16(u2f(0x00008000u)) == 0x0000);  /* tie, even */
	CHECK(lora_f32_to_bf16(u2f(0x00018000u)) == 0x0002);  /* tie, odd below */
	CHECK(isnan(lora_f16_to_f32(lora_f32_to_f16(NAN))));
	CHECK(isnan(lora_bf16_to_f32(lora_f32_to_bf16(u2f(0x7f800001u)))));  /* payload lost in truncation */
	CHECK(isnan(lora_f16_to_f32(lora_f32_to_f16(u2f(0xff800001u)))));
	CHECK(lora_f32_to_f16(-0.0f) == 0x8000);
}

TEST(array_conversions_any_alignment)
{
	float src[7] = { 1.0f, -2.5f, 0x1p-24f, 65504.0f, 3.140625f, -0.0f, 1e-3f }, back[7];
	unsigned char raw[1 + 7 * 8];
	const enum lora_dtype dts[] = { LORA_DT_F32, LORA_DT_F16, LORA_DT_BF16, LORA_DT_F64 };

	for (size_t k = 0; k < sizeof(dts) / sizeof(dts[0]); k++) {
		CHECK(lora_from_f32(raw + 1, src, dts[k], 7) == 0);  /* deliberately misaligned */
		CHECK(lora_to_f32(back, raw + 1, dts[k], 7) == 0);
		for (int i = 0; i < 7; i++) {
			float want = dts[k] == LORA_DT_F16 ? lora_f16_to_f32(lora_f32_to_f16(src[i]))
				   : dts[k] == LORA_DT_BF16 ? lora_bf16_to_f32(lora_f32_to_bf16(src[i]))
							    : src[i];
			CHECKF(f2u(back[i]) == f2u(want), "%s [%d]: %g want %g", lora_dtype_name(dts[k]), i,
			       (double)back[i], (double)want);
		}
	}
	/* The stored bytes are little-endian: 1.0 in f16 is 00 3c. */
	CHECK(lora_from_f32(raw, src, LORA_DT_F16, 1) == 0 && raw[0] == 0x00 && raw[1] == 0x3c);
	CHECK(lora_to_f32(back, raw, LORA_DT_I32, 1) == -1);
	CHECK(lora_from_f32(raw, src, LORA_DT_U8, 1) == -1);
}

TEST(dtype_table_matches_reference_parser)
{
	FILE *f = open_fixture("st/dtypes.txt");
	char line[128], name[64], verdict[16];
	unsigned bits;
	int accepted = 0;

	CHECK(f != NULL);
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		if (line[0] == '#')
			continue;
		if (sscanf(line, "%63s %15s %u", name, verdict, &bits) == 3 && !strcmp(verdict, "accept")) {
			enum lora_dtype dt = lora_dtype_parse(name, -1);
			CHECKF(dt != LORA_DT_INVALID, "dtype %s is not recognised", name);
			CHECKF(lora_dtype_bits(dt) == bits, "dtype %s: %u bits, reference %u", name,
			       lora_dtype_bits(dt), bits);
			CHECKF(!strcmp(lora_dtype_name(dt), name), "dtype %s named %s", name, lora_dtype_name(dt));
			CHECK(lora_dtype_parse(name, (long)strlen(name)) == dt);
			accepted++;
		} else if (sscanf(line, "%63s %15s", name, verdict) == 2 && !strcmp(verdict, "reject")) {
			CHECKF(lora_dtype_parse(name, -1) == LORA_DT_INVALID, "dtype %s should be unknown", name);
		}
	}
	fclose(f);
	CHECKF(accepted == LORA_DT_COUNT - 1, "reference accepts %d dtypes, lora knows %d", accepted,
	       LORA_DT_COUNT - 1);
	CHECK(lora_dtype_parse("F32x", 3) == LORA_DT_F32);  /* explicit length */
	CHECK(lora_dtype_parse("F3", 2) == LORA_DT_INVALID);
	CHECK(lora_dtype_is_float(LORA_DT_BF16) && !lora_dtype_is_float(LORA_DT_F8_E4M3));
}

int main(void)
{
	RUN(decode_all_65536_f16_and_bf16_match_numpy_torch);
	RUN(encode_tricky_fp32_matches_numpy_f16_and_torch_bf16);
	RUN(round_trip_and_named_cases);
	RUN(array_conversions_any_alignment);
	RUN(dtype_table_matches_reference_parser);
	return t_done();
}
