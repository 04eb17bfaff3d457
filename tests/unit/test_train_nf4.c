/*
 * test_train_nf4.c - NF4 + double quantization against bitsandbytes.
 * Fixture: tests/fixtures/train/nf4.safetensors (tests/oracle/train_nf4.py).
 * Every comparison is exact: the same bytes and the same fp32 bits.
 */
#include <stdint.h>
#include <string.h>

#include "libadapter/format/safetensors.h"
#include "train/nf4.h"
#include "tests/t.h"

static struct lora_st *fx;

static const struct lora_st_tensor *get(const char *c, const char *what)
{
	char name[128];

	snprintf(name, sizeof(name), "%s.%s", c, what);
	return lora_st_find(fx, name);
}

static int same_bytes(const void *a, const struct lora_st_tensor *t, size_t len)
{
	return t && t->end - t->begin == len && memcmp(a, t->data, len) == 0;
}

static void check_case(const char *c)
{
	const struct lora_st_tensor *in = get(c, "input"), *dq = get(c, "dequant");
	const struct lora_st_tensor *am = get(c, "absmax");
	struct lora_nf4 q;
	struct lora_err err;
	float *out;

	CHECKF(in != NULL, "case %s missing", c);
	if (!in)
		return;
	CHECKF(lora_nf4_quantize(&q, in->data, in->dtype, in->nelem, &err) == 0, "%s", err.msg);
	CHECKF(same_bytes(q.packed, get(c, "packed"), (q.n + 1) / 2), "%s: packed codes differ", c);
	CHECKF(same_bytes(q.qabsmax, get(c, "qabsmax"), q.nb), "%s: quantized absmax differs", c);
	CHECKF(same_bytes(q.absmax2, get(c, "absmax2"), q.ng * 4), "%s: nested absmax differs", c);
	CHECKF(same_bytes(&q.offset, get(c, "offset"), 4), "%s: offset differs", c);
	out = malloc(q.n * sizeof(float));
	lora_nf4_absmax(&q, 0, q.nb, out);
	CHECKF(same_bytes(out, am, q.nb * 4), "%s: dequantized absmax differs", c);
	if (dq) {
		/* whole tensor, then an unaligned window that crosses blocks */
		lora_nf4_dequant(&q, 0, q.n, out);
		CHECKF(same_bytes(out, dq, q.n * 4), "%s: dequantized values differ", c);
		if (q.n > 200) {
			lora_nf4_dequant(&q, 37, 150, out);
			CHECKF(memcmp(out, (const float *)dq->data + 37, 150 * 4) == 0,
			       "%s: window dequant differs", c);
		}
	}
	free(out);
	lora_nf4_free(&q);
}

TEST(code_tables)
{
	const struct lora_st_tensor *c = lora_st_find(fx, "code8");

	CHECK(c && c->nelem == 256 && memcmp(c->data, lora_code8, 1024) == 0);
	for (int i = 0; i < 15; i++)
		CHECK(lora_nf4_levels[i] < lora_nf4_levels[i + 1]);
}

TEST(normal_weights)
{
	const struct lora_st_tensor *d2 = get("normal", "dequant2d"), *dq = get("normal", "dequant");

	check_case("normal");
	/* rows of 64: bitsandbytes' 2-D CPU kernel gives the same values as the flat one */
	CHECK(d2 && dq && d2->nelem == dq->nelem && memcmp(d2->data, dq->data, dq->nelem * 4) == 0);
}
TEST(heavy_tailed_weights) { check_case("heavy"); }
TEST(odd_length_partial_block) { check_case("odd"); }
TEST(bf16_weights) { check_case("bf16"); }
TEST(many_groups_vectorised_mean) { check_case("big"); }
TEST(zero_and_constant_blocks) { check_case("edge"); }

TEST(bits_per_parameter)
{
	/* 4 + 8/64 + 32/16384 bits, plus a fixed 4 bytes */
	double bits = 8.0 * (double)lora_nf4_bytes(4096ull * 4096) / (4096.0 * 4096);
	CHECK_NEAR(bits, 4.127, 0.001, 0);
}

TEST(refuses_int_weights)
{
	struct lora_nf4 q;
	struct lora_err err;
	int32_t x[4] = {0};

	CHECK(lora_nf4_quantize(&q, x, LORA_DT_I32, 4, &err) < 0);
	CHECK(strstr(err.msg, "I32") != NULL);
}

int main(void)
{
	struct lora_err err;
	char *path = t_fixture("train/nf4.safetensors");

	if (lora_st_open(path, &fx, &err) < 0) {
		printf("FAIL open_fixture (%s)\n", err.msg);
		return 1;
	}
	RUN(code_tables);
	RUN(normal_weights);
	RUN(heavy_tailed_weights);
	RUN(odd_length_partial_block);
	RUN(bf16_weights);
	RUN(many_groups_vectorised_mean);
	RUN(zero_and_constant_blocks);
	RUN(bits_per_parameter);
	RUN(refuses_int_weights);
	lora_st_close(fx);
	free(path);
	return t_done();
}
