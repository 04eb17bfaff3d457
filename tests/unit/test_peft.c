/*
 * test_peft.c - PEFT adapter folders.
 *
 * tests/fixtures/peft/<variant>/ were saved by peft itself and expected.json
 * holds what the live peft model and torch said (tests/oracle/peft_adapters.py);
 * broken adapters are built here at test time, one per way to be wrong.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "libadapter/base/fsutil.h"
#include "libadapter/format/peft.h"
#include "tests/t.h"
#include "tests/unit/t_json.h"
#include "tests/unit/run_lora.h"

static char tmpdir[256];

/* ‖B·A‖_F by forming B·A in double: slow, plain, independent of lora_peft_delta_norm. */
static double naive_norm(const struct lora_peft_module *m)
{
	struct lora_err err;
	float *A = lora_peft_load_f32(m->A, &err), *B = lora_peft_load_f32(m->B, &err);
	uint64_t r = m->A->shape[0], in = m->A->shape[1], out = m->B->shape[0];
	double s = 0;

	for (uint64_t o = 0; A && B && o < out; o++)
		for (uint64_t i = 0; i < in; i++) {
			double d = 0;
			for (uint64_t k = 0; k < r; k++)
				d += (double)B[o * r + k] * A[k * in + i];
			s += d * d;
		}
	free(A);
	free(B);
	return m->scale * sqrt(s);
}

static void check_variant(const char *variant)
{
	char rel[128], *dir, *ep;
	cJSON *e, *mod, *tm;
	struct lora_peft *p = NULL;
	struct lora_err err = { 0 };
	size_t i = 0;

	snprintf(rel, sizeof(rel), "peft/%s", variant);
	dir = t_fixture(rel);
	ep = lora_path_join(dir, "expected.json");
	e = t_read_json(ep);
	CHECK(e != NULL);
	if (!e)
		goto out;
	CHECKF(lora_peft_open(dir, &p, &err) == 0, "%s: %s", variant, err.msg);
	if (!p)
		goto out;
	CHECK(!strcmp(p->cfg.peft_type, "LORA"));
	CHECK(p->cfg.base_model && !strcmp(p->cfg.base_model, cJSON_GetObjectItem(e, "base")->valuestring));
	CHECK(p->cfg.r == t_num(e, "r"));
	CHECK(p->cfg.lora_alpha == t_num(e, "alpha"));
	CHECKF(p->n_params == (uint64_t)t_num(e, "parameters"), "%llu", (unsigned long long)p->n_params);
	CHECKF(p->bytes == (uint64_t)t_num(e, "bytes"), "%llu", (unsigned long long)p->bytes);
	CHECK(!strcmp(lora_dtype_name(p->dtype), cJSON_GetObjectItem(e, "dtype")->valuestring));
	tm = cJSON_GetObjectItem(e, "target_modules");
	if (cJSON_IsString(tm)) {
		CHECK(p->cfg.target_regex && !strcmp(p->cfg.target_regex, tm->valuestring));
	} else {
		CHECK(p->cfg.n_target_modules == (size_t)cJSON_GetArraySize(tm));
		for (size_t k = 0; k < p->cfg.n_target_modules && k < (size_t)cJSON_GetArraySize(tm); k++)
			CHECK(!strcmp(p->cfg.target_modules[k], cJSON_GetArrayItem(tm, (int)k)->valuestring));
	}
	CHECKF(p->n_modules == (size_t)cJSON_GetArraySize(cJSON_GetObjectItem(e, "modules")), "%zu modules",
	       p->n_modules);
	cJSON_ArrayForEach(mod, cJSON_GetObjectItem(e, "modules")) {
		const char *name = cJSON_GetObjectItem(mod, "name")->valuestring;
		const struct lora_peft_module *m = lora_peft_find(p, name);
		double norm = -1;
		CHECKF(m != NULL, "%s: module %s not found", variant, name);
		if (!m)
			continue;
		CHECK(m == &p->modules[i]);  /* sorted by name, as expected.json is */
		i++;
		CHECKF(m->r == t_num(mod, "r"), "%s %s: r %d, peft %g", variant, name, m->r, t_num(mod, "r"));
		CHECK_NEAR(m->alpha, t_num(mod, "alpha"), 0, 1e-15);
		/* scale is alpha/r or alpha/sqrt(r): one or two fp64 roundings, as in Python */
		CHECK_NEAR(m->scale, t_num(mod, "scale"), 0, 1e-15);
		CHECK(m->in == (uint64_t)t_num(mod, "in") && m->out == (uint64_t)t_num(mod, "out"));
		CHECK(lora_peft_targets(&p->cfg, name));
		CHECKF(lora_peft_delta_norm(m, &norm, &err) == 0, "%s", err.msg);
		/*
		 * torch: ‖scale·B·A‖_F in fp64 from the same (fp32 or bf16) weights.
		 * lora: scale·sqrt(tr((BᵀB)(AAᵀ))) in fp64.  Both are fp64 sums of at
		 * most r·(in+out) ≈ 10^3 products of exact values: rounding error is
		 * ~10^3 · 2^-53 ≈ 1e-13 relative, far inside the 1e-5 asked for.
		 */
		CHECK_NEAR(norm, t_num(mod, "delta_norm"), 0, 1e-5);
		CHECK_NEAR(norm, t_num(mod, "delta_norm"), 0, 1e-12);
		CHECK_NEAR(naive_norm(m), t_num(mod, "delta_norm"), 0, 1e-12);
	}
	CHECK(lora_peft_find(p, "model.layers.9.self_attn.q_proj") == NULL);
out:
	lora_peft_close(p);
	cJSON_Delete(e);
	free(ep);
	free(dir);
}

/*
 * `lora inspect --json DIR` against the same expected.json: the shape scripts
 * rely on (base, r, alpha, target_modules, parameters, bytes, modules[] of
 * name, r, alpha, scale, delta_norm), one JSON document, nothing on stderr.
 */
static void check_inspect_json(const char *variant)
{
	char rel[128], *dir, *ep, *args;
	cJSON *e = NULL, *j = NULL, *mod, *got;
	const char *end = NULL;
	struct lora_run r;
	size_t i = 0;

	snprintf(rel, sizeof(rel), "peft/%s", variant);
	dir = t_fixture(rel);
	ep = lora_path_join(dir, "expected.json");
	args = malloc(strlen(dir) + 32);
	sprintf(args, "inspect --json '%s'", dir);
	CHECK(run_lora(args, &r) == 0);
	CHECKF(r.rc == 0, "%s: exit %d: %s", variant, r.rc, r.err ? r.err : "");
	CHECKF(r.err && !r.err[0], "%s: stderr: %s", variant, r.err);
	e = t_read_json(ep);
	j = r.out ? cJSON_ParseWithOpts(r.out, &end, 0) : NULL;
	CHECKF(j && cJSON_IsObject(j), "%s: not a JSON object: %s", variant, r.out ? r.out : "");
	if (!e || !j)
		goto out;
	CHECK(end && strspn(end, " \n") == strlen(end));  /* one document, nothing after */
	CHECK(cJSON_IsString(cJSON_GetObjectItem(j, "base")) &&
	      !strcmp(cJSON_GetObjectItem(j, "base")->valuestring, cJSON_GetObjectItem(e, "base")->valuestring));
	CHECK(t_num(j, "r") == t_num(e, "r"));
	CHECK(t_num(j, "alpha") == t_num(e, "alpha"));
	CHECK(t_num(j, "parameters") == t_num(e, "parameters"));
	CHECK(t_num(j, "bytes") == t_num(e, "bytes"));
	CHECKF(cJSON_Compare(cJSON_GetObjectItem(j, "target_modules"), cJSON_GetObjectItem(e, "target_modules"), 1),
	       "%s: target_modules differ", variant);
	got = cJSON_GetObjectItem(j, "modules");
	CHECK(cJSON_IsArray(got) && cJSON_GetArraySize(got) == cJSON_GetArraySize(cJSON_GetObjectItem(e, "modules")));
	cJSON_ArrayForEach(mod, cJSON_GetObjectItem(e, "modules")) {
		const cJSON *g = cJSON_GetArrayItem(got, (int)i++);
		const char *name = cJSON_GetObjectItem(mod, "name")->valuestring;
		CHECKF(g && cJSON_IsString(cJSON_GetObjectItem(g, "name")) &&
			       !strcmp(cJSON_GetObjectItem(g, "name")->valuestring, name),
		       "%s: module %zu is not %s", variant, i - 1, name);
		if (!g)
			continue;
		CHECK(t_num(g, "r") == t_num(mod, "r"));
		CHECK_NEAR(t_num(g, "alpha"), t_num(mod, "alpha"), 0, 1e-15);
		CHECK_NEAR(t_num(g, "scale"), t_num(mod, "scale"), 0, 1e-15);
		/* the acceptance tolerance; see check_variant for why it is loose */
		CHECK_NEAR(t_num(g, "delta_norm"), t_num(mod, "delta_norm"), 0, 1e-5);
	}
out:
	cJSON_Delete(j);
	cJSON_Delete(e);
	run_free(&r);
	free(args);
	free(ep);
	free(dir);
}

TEST(inspect_json_matches_peft_and_torch)
{
	static const char *const v[] = { "plain", "rslora", "rank_pattern", "alpha_pattern", "bf16" };
	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
		check_inspect_json(v[i]);
}

TEST(peft_plain) { check_variant("plain"); }
TEST(peft_use_rslora) { check_variant("rslora"); }
TEST(peft_rank_pattern) { check_variant("rank_pattern"); }
TEST(peft_alpha_pattern_and_regex_targets) { check_variant("alpha_pattern"); }
TEST(peft_bf16_all_linear) { check_variant("bf16"); }

/* -------------------------------------------------- config on its own */

static int parse(const char *json, struct lora_peft_config *c, struct lora_err *err)
{
	return lora_peft_config_parse(json, strlen(json), "adapter_config.json", c, err);
}

TEST(patterns_follow_peft_rule)
{
	/* PEFT: the first key K (in file order) such that the module matches "(.*\.)?(K)$" */
	struct lora_peft_config c;
	struct lora_err err = { 0 };
	int r;
	double a, s;
	const char *cfg = "{\"peft_type\":\"LORA\",\"r\":8,\"lora_alpha\":16,\"use_rslora\":false,"
			  "\"target_modules\":[\"q_proj\",\"v_proj\"],"
			  "\"rank_pattern\":{\"q_proj\":2,\"layers\\\\.1\\\\..*\":4,\"v_proj\":6},"
			  "\"alpha_pattern\":{\"model.layers.0.self_attn.v_proj\":3}}";

	CHECKF(parse(cfg, &c, &err) == 0, "%s", err.msg);
	lora_peft_module_params(&c, "model.layers.0.self_attn.q_proj", &r, &a, &s);
	CHECK(r == 2 && a == 16 && s == 8);
	lora_peft_module_params(&c, "model.layers.1.self_attn.q_proj", &r, &a, &s);
	CHECK(r == 2);  /* q_proj comes first */
	lora_peft_module_params(&c, "model.layers.1.self_attn.v_proj", &r, &a, &s);
	CHECK(r == 4);  /* layers\.1\..* before v_proj */
	lora_peft_module_params(&c, "model.layers.0.self_attn.v_proj", &r, &a, &s);
	CHECK(r == 6 && a == 3 && s == 0.5);
	lora_peft_module_params(&c, "model.layers.0.self_attn.xq_proj", &r, &a, &s);
	CHECK(r == 8);  /* "q_proj" must follow a dot or start the name */
	lora_peft_module_params(&c, "model.layers.0.self_attn.q_proj.base", &r, &a, &s);
	CHECK(r == 8);  /* and end it */
	CHECK(lora_peft_targets(&c, "model.layers.3.self_attn.q_proj"));
	CHECK(lora_peft_targets(&c, "q_proj"));
	CHECK(!lora_peft_targets(&c, "model.layers.3.self_attn.xq_proj"));
	CHECK(!lora_peft_targets(&c, "model.layers.3.self_attn.k_proj"));
	lora_peft_config_free(&c);

	cfg = "{\"peft_type\":\"LORA\",\"r\":9,\"lora_alpha\":6,\"use_rslora\":true,"
	      "\"target_modules\":\".*(q|v)_proj\"}";
	CHECKF(parse(cfg, &c, &err) == 0, "%s", err.msg);
	lora_peft_module_params(&c, "m.q_proj", &r, &a, &s);
	CHECK(r == 9 && s == 2.0);  /* 6 / sqrt(9) */
	CHECK(lora_peft_targets(&c, "model.layers.0.self_attn.q_proj"));
	CHECK(!lora_peft_targets(&c, "model.layers.0.self_attn.q_proj_x"));  /* full match */
	CHECK(!lora_peft_targets(&c, "model.layers.0.self_attn.k_proj"));
	lora_peft_config_free(&c);
}

TEST(config_refusals)
{
	static const struct { const char *json, *want; } bad[] = {
		{ "{\"peft_type\":\"LORA\",\"r\":8", "not valid JSON" },
		{ "[1]", "" },
		{ "{\"peft_type\":\"LORA\",\"r\":0,\"lora_alpha\":8}", "r" },
		{ "{\"peft_type\":\"LORA\",\"r\":-4,\"lora_alpha\":8}", "r" },
		{ "{\"peft_type\":\"LORA\",\"r\":2.5,\"lora_alpha\":8}", "r" },
		{ "{\"peft_type\":\"LORA\",\"r\":\"8\",\"lora_alpha\":8}", "r" },
		{ "{\"peft_type\":\"LORA\",\"lora_alpha\":8}", "r" },
		{ "{\"peft_type\":\"LORA\",\"r\":1e300,\"lora_alpha\":8}", "r" },
		{ "{\"peft_type\":\"IA3\",\"r\":8}", "IA3" },
		{ "{\"peft_type\":\"LOHA\",\"r\":8}", "LOHA" },
		{ "{\"r\":8,\"lora_alpha\":8}", "peft_type" },
		{ "{\"peft_type\":\"LORA\",\"r\":8,\"lora_alpha\":8,\"use_dora\":true}", "DoRA" },
		{ "{\"peft_type\":\"LORA\",\"r\":8,\"lora_alpha\":8,\"rank_pattern\":{\"q\":0}}", "rank_pattern" },
		{ "{\"peft_type\":\"LORA\",\"r\":8,\"lora_alpha\":8,\"rank_pattern\":{\"(\":2}}", "rank_pattern" },
		{ "{\"peft_type\":\"LORA\",\"r\":8,\"lora_alpha\":8,\"target_modules\":\"(\"}", "target_modules" },
		{ "{\"peft_type\":\"LORA\",\"r\":8,\"lora_alpha\":8,\"target_modules\":[1]}", "target_modules" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct lora_peft_config c;
		struct lora_err err = { 0 };
		CHECKF(parse(bad[i].json, &c, &err) == -1, "accepted: %s", bad[i].json);
		CHECKF(strstr(err.msg, bad[i].want) && strstr(err.msg, "adapter_config.json"), "%s -> %s",
		       bad[i].json, err.msg);
	}
}

/* ------------------------------------------------- broken adapter folders */

struct t_tensor {
	const char *name;
	uint64_t d0, d1;
};

static char *make_adapter(const char *name, const char *config, const struct t_tensor *ts, size_t n)
{
	char *d = lora_path_join(tmpdir, name), *p;
	struct lora_st_spec specs[8];
	struct lora_st_writer w;
	struct lora_err err;

	mkdir(d, 0755);
	if (config) {
		p = lora_path_join(d, "adapter_config.json");
		lora_write_file_atomic(p, config, strlen(config), 0644, &err);
		free(p);
	}
	if (!ts)
		return d;
	for (size_t i = 0; i < n; i++)
		specs[i] = (struct lora_st_spec){ ts[i].name, LORA_DT_F32, 2, { ts[i].d0, ts[i].d1 } };
	p = lora_path_join(d, "adapter_model.safetensors");
	if (lora_st_writer_open(&w, p, specs, n, NULL, NULL, 0, &err) < 0)
		fprintf(stderr, "  %s\n", err.msg);
	for (size_t i = 0; i < n; i++)
		for (uint64_t k = 0; k < ts[i].d0 * ts[i].d1; k++) {
			float v = (float)((k * 7 + i) % 13) / 13.0f - 0.4f;
			lora_st_writer_write(&w, &v, 4, &err);
		}
	lora_st_writer_commit(&w, &err);
	free(p);
	return d;
}

static void expect_fail(const char *dir, const char *want1, const char *want2)
{
	struct lora_peft *p = (struct lora_peft *)1;
	struct lora_err err = { 0 };

	CHECKF(lora_peft_open(dir, &p, &err) == -1, "%s opened", dir);
	CHECK(p == NULL);
	CHECKF(strstr(err.msg, want1) != NULL, "lacks '%s': %s", want1, err.msg);
	CHECKF(!want2 || strstr(err.msg, want2) != NULL, "lacks '%s': %s", want2, err.msg);
	CHECK(strchr(err.msg, '\n') == NULL);
}

#define CFG(r) "{\"peft_type\":\"LORA\",\"r\":" #r ",\"lora_alpha\":8,\"target_modules\":[\"q_proj\"]}"
#define QA "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
#define QB "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
#define VA "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight"
#define VB "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"

TEST(good_built_adapter_opens)
{
	const struct t_tensor t[] = { { QA, 4, 16 }, { QB, 16, 4 } };
	char *d = make_adapter("good", CFG(4), t, 2);
	struct lora_peft *p = NULL;
	struct lora_err err = { 0 };
	double norm;

	CHECKF(lora_peft_open(d, &p, &err) == 0, "%s", err.msg);
	if (p) {
		CHECK(p->n_modules == 1 && !strcmp(p->modules[0].name, "model.layers.0.self_attn.q_proj"));
		CHECK(p->modules[0].scale == 2.0 && p->n_params == 128 && p->bytes == 512);
		CHECK(lora_peft_delta_norm(&p->modules[0], &norm, &err) == 0);
		CHECK_NEAR(norm, naive_norm(&p->modules[0]), 0, 1e-12);
		lora_peft_close(p);
	}
	free(d);
}

TEST(adapter_config_missing)
{
	const struct t_tensor t[] = { { QA, 4, 16 }, { QB, 16, 4 } };
	char *d = make_adapter("no_config", NULL, t, 2);
	expect_fail(d, "adapter_config.json", NULL);
	free(d);
}

TEST(adapter_config_not_json)
{
	const struct t_tensor t[] = { { QA, 4, 16 }, { QB, 16, 4 } };
	char *d = make_adapter("config_not_json", "{\"peft_type\": \"LORA\", \"r\": ", t, 2);
	expect_fail(d, "adapter_config.json", "JSON");
	free(d);
}

TEST(adapter_config_r_zero_or_negative)
{
	const struct t_tensor t[] = { { QA, 4, 16 }, { QB, 16, 4 } };
	char *d = make_adapter("r_zero", CFG(0), t, 2);
	expect_fail(d, "adapter_config.json", "r");
	free(d);
	d = make_adapter("r_negative", CFG(-4), t, 2);
	expect_fail(d, "adapter_config.json", "r");
	free(d);
}

TEST(lora_A_without_lora_B)
{
	const struct t_tensor t[] = { { QA, 4, 16 }, { QB, 16, 4 }, { VA, 4, 16 } };
	char *d = make_adapter("a_without_b", CFG(4), t, 3);
	expect_fail(d, "model.layers.0.self_attn.v_proj", "lora_B");
	free(d);
}

TEST(lora_B_without_lora_A)
{
	const struct t_tensor t[] = { { QB, 16, 4 } };
	char *d = make_adapter("b_without_a", CFG(4), t, 1);
	expect_fail(d, "model.layers.0.self_attn.q_proj", "lora_A");
	free(d);
}

TEST(ranks_of_A_and_B_disagree)
{
	const struct t_tensor t[] = { { QA, 4, 16 }, { QB, 16, 3 } };
	char *d = make_adapter("ranks_disagree", CFG(4), t, 2);
	expect_fail(d, "model.layers.0.self_attn.q_proj", "rank");
	free(d);
}

TEST(rank_disagrees_with_config)
{
	const struct t_tensor t[] = { { QA, 4, 16 }, { QB, 16, 4 } };
	char *d = make_adapter("rank_vs_config", CFG(8), t, 2);
	expect_fail(d, "model.layers.0.self_attn.q_proj", "r=8");
	free(d);
}

TEST(dora_and_pickle_refused_by_name)
{
	const struct t_tensor t[] = { { QA, 4, 16 }, { QB, 16, 4 },
				      { "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector", 1, 16 } };
	char *d = make_adapter("dora_key", CFG(4), t, 3), *p;
	struct lora_err err;

	expect_fail(d, "DoRA", NULL);
	free(d);
	d = make_adapter("pickle", CFG(4), NULL, 0);
	p = lora_path_join(d, "adapter_model.bin");
	lora_write_file_atomic(p, "PK", 2, 0644, &err);
	expect_fail(d, "adapter_model.bin", "pickle");
	free(p);
	free(d);
	d = make_adapter("no_weights", CFG(4), NULL, 0);
	expect_fail(d, "adapter_model.safetensors", NULL);
	free(d);
}

TEST(lora_tensor_not_2d_or_not_float)
{
	char *d = lora_path_join(tmpdir, "one_d"), *p;
	struct lora_st_spec s[] = { { QA, LORA_DT_F32, 1, { 64 } }, { QB, LORA_DT_F32, 2, { 16, 4 } } };
	struct lora_st_writer w;
	struct lora_err err;
	static float zero[64];

	mkdir(d, 0755);
	p = lora_path_join(d, "adapter_config.json");
	lora_write_file_atomic(p, CFG(4), strlen(CFG(4)), 0644, &err);
	free(p);
	p = lora_path_join(d, "adapter_model.safetensors");
	lora_st_writer_open(&w, p, s, 2, NULL, NULL, 0, &err);
	lora_st_writer_write(&w, zero, sizeof(zero), &err);
	lora_st_writer_write(&w, zero, sizeof(zero), &err);
	CHECK(lora_st_writer_commit(&w, &err) == 0);
	expect_fail(d, QA, NULL);
	s[0] = (struct lora_st_spec){ QA, LORA_DT_I32, 2, { 4, 16 } };
	lora_st_writer_open(&w, p, s, 2, NULL, NULL, 0, &err);
	lora_st_writer_write(&w, zero, sizeof(zero), &err);
	lora_st_writer_write(&w, zero, sizeof(zero), &err);
	CHECK(lora_st_writer_commit(&w, &err) == 0);
	expect_fail(d, QA, NULL);
	free(p);
	free(d);
}

int main(void)
{
	const char *base = getenv("TMPDIR");
	struct lora_err err;

	snprintf(tmpdir, sizeof(tmpdir), "%s/lora-peft.XXXXXX", base && *base ? base : "/tmp");
	if (!mkdtemp(tmpdir))
		return 1;
	RUN(peft_plain);
	RUN(peft_use_rslora);
	RUN(peft_rank_pattern);
	RUN(peft_alpha_pattern_and_regex_targets);
	RUN(peft_bf16_all_linear);
	RUN(inspect_json_matches_peft_and_torch);
	RUN(patterns_follow_peft_rule);
	RUN(config_refusals);
	RUN(good_built_adapter_opens);
	RUN(adapter_config_missing);
	RUN(adapter_config_not_json);
	RUN(adapter_config_r_zero_or_negative);
	RUN(lora_A_without_lora_B);
	RUN(lora_B_without_lora_A);
	RUN(ranks_of_A_and_B_disagree);
	RUN(rank_disagrees_with_config);
	RUN(dora_and_pickle_refused_by_name);
	RUN(lora_tensor_not_2d_or_not_float);
	lora_rm_rf(tmpdir, &err);
	return t_done();
}
