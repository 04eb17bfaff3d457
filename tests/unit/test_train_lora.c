/* test_train_lora.c - LoRA targets, module names, scales, initialization and dropout masks. */
#include <math.h>
#include <string.h>

#include "train/lora_cfg.h"
#include "tests/t.h"

TEST(targets_parse_and_format)
{
	unsigned m;
	char buf[128];
	struct lora_err err;

	CHECK(lora_targets_parse("all-linear", &m, &err) == 0 && m == LORA_TARGETS_ALL);
	CHECK(lora_targets_parse("q,v", &m, &err) == 0 && m == ((1u << LORA_T_Q) | (1u << LORA_T_V)));
	CHECK(lora_targets_parse("q_proj,down_proj,gate", &m, &err) == 0 &&
	      m == ((1u << LORA_T_Q) | (1u << LORA_T_DOWN) | (1u << LORA_T_GATE)));
	lora_targets_format(m, buf, sizeof(buf));
	CHECK(!strcmp(buf, "q_proj,gate_proj,down_proj"));
	CHECK(lora_targets_parse("q,lm_head", &m, &err) < 0 && err.code == LORA_EUSAGE &&
	      strstr(err.msg, "lm_head"));
	CHECK(lora_targets_parse("", &m, &err) < 0);
	CHECK(lora_targets_parse("qq", &m, &err) < 0);
}

TEST(module_names_round_trip)
{
	char name[96];
	int l;
	enum lora_target t;

	lora_module_name(name, sizeof(name), 12, LORA_T_UP);
	CHECK(!strcmp(name, "model.layers.12.mlp.up_proj"));
	CHECK(lora_module_parse(name, &l, &t) == 0 && l == 12 && t == LORA_T_UP);
	CHECK(lora_module_parse("model.layers.0.self_attn.o_proj", &l, &t) == 0 && l == 0 && t == LORA_T_O);
	CHECK(lora_module_parse("model.layers.0.mlp.q_proj", &l, &t) < 0);
	CHECK(lora_module_parse("model.layers.x.self_attn.q_proj", &l, &t) < 0);
	CHECK(lora_module_parse("lm_head", &l, &t) < 0);
	CHECK(lora_module_parse("model.layers.-1.self_attn.q_proj", &l, &t) < 0);
}

TEST(scales)
{
	CHECK(lora_scale(16, 32, 0) == 2.0);
	CHECK_NEAR(lora_scale(16, 32, 1), 8.0, 1e-12, 0);
}

TEST(init_is_seeded_uniform_in_peft_bound)
{
	enum { R = 8, IN = 300 };
	static float a[R * IN], b[R * IN], c[R * IN];
	const double bound = 1.0 / sqrt(IN);
	double mean = 0, var = 0, mx = 0;

	lora_init_A(a, R, IN, 1, 3, LORA_T_K);
	lora_init_A(b, R, IN, 1, 3, LORA_T_K);
	lora_init_A(c, R, IN, 1, 3, LORA_T_V);
	CHECK(memcmp(a, b, sizeof(a)) == 0);
	CHECK(memcmp(a, c, sizeof(a)) != 0);
	for (int i = 0; i < R * IN; i++) {
		mean += a[i];
		var += (double)a[i] * a[i];
		mx = fabs(a[i]) > mx ? fabs(a[i]) : mx;
	}
	mean /= R * IN;
	var /= R * IN;
	CHECK(mx <= bound && mx > 0.99 * bound);
	/* U(-b, b): mean 0 (sd b/sqrt(3n)), variance b²/3 (sd b²·sqrt(4/45/n)); 4-sigma bands */
	CHECK_NEAR(mean, 0.0, 4 * bound / sqrt(3.0 * R * IN), 0);
	CHECK_NEAR(var, bound * bound / 3, 4 * bound * bound * sqrt(4.0 / 45 / (R * IN)), 0);
}

TEST(dropout_masks)
{
	enum { N = 100000 };
	static float m[N], m2[N], part[N];
	const double p = 0.1;
	long dropped = 0;
	double sum = 0;

	lora_dropout_mask(m, 0, N, p, 9, 4, 2, LORA_T_Q);
	lora_dropout_mask(m2, 0, N, p, 9, 5, 2, LORA_T_Q);
	/* pieces give the same values as the whole */
	lora_dropout_mask(part, 0, 1000, p, 9, 4, 2, LORA_T_Q);
	lora_dropout_mask(part + 1000, 1000, N - 1000, p, 9, 4, 2, LORA_T_Q);
	CHECK(memcmp(m, part, sizeof(m)) == 0);
	CHECK(memcmp(m, m2, sizeof(m)) != 0);
	for (int i = 0; i < N; i++) {
		CHECK(m[i] == 0.0f || m[i] == (float)(1.0 / (1.0 - p)));
		dropped += m[i] == 0.0f;
		sum += m[i];
	}
	/* binomial(N, p): sd = sqrt(N p (1-p)) = 95; keep within 5 sd */
	CHECK(labs(dropped - (long)(N * p)) < 5 * 95);
	/* inverted dropout keeps the mean at 1 */
	CHECK_NEAR(sum / N, 1.0, 0.01, 0);
	lora_dropout_mask(m, 0, 100, 0.0, 9, 4, 2, LORA_T_Q);
	for (int i = 0; i < 100; i++)
		CHECK(m[i] == 1.0f);
}

int main(void)
{
	RUN(targets_parse_and_format);
	RUN(module_names_round_trip);
	RUN(scales);
	RUN(init_is_seeded_uniform_in_peft_bound);
	RUN(dropout_masks);
	return t_done();
}
