/*
 * test_gguf.c - the GGUF reader/writer and the llama.cpp LoRA mapping against
 * llama.cpp's own converter (fixtures by tests/oracle/gguf_oracle.py):
 *
 *   - plain (r 4 on all 7 projections): our export has the converter's
 *     adapter KVs, tensor names, order, dims, types, and the same tensor bytes
 *     (the converter widens f32 to f32 and permutes q/k rows: no rounding);
 *   - patterns (rsLoRA, rank_pattern, alpha_pattern): lora_a bytes equal;
 *     lora_b = converter's lora_b times peft's factor scale·r/alpha, within
 *     one fp32 rounding (the converter ignores those settings, see the oracle);
 *   - export -> import round trip keeps ΔW per module;
 *   - refusals name the module; hostile files (every truncation, flipped
 *     bytes, crafted headers) fail cleanly.
 */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <unistd.h>

#include "libadapter/algebra/lowrank.h"
#include "libadapter/base/fsutil.h"
#include "libadapter/format/gguf.h"
#include "libadapter/format/gguf_lora.h"
#include "libadapter/format/modeldir.h"
#include "libadapter/format/peft.h"
#include "tests/t.h"

static char tmpdir[] = "/tmp/test_gguf.XXXXXX";

/* the base of a variant: Llama, or Qwen2 for "qwen2" */
static const char *base_of(const char *variant)
{
	return strcmp(variant, "qwen2") ? "gguf/base" : "gguf/base-qwen2";
}

static struct lora_model *open_base_rel(const char *rel)
{
	struct lora_err err = { 0 };
	struct lora_model *m = NULL;
	char *p = t_fixture(rel);
	if (lora_model_open(p, 1, &m, &err) < 0)
		fprintf(stderr, "  %s\n", err.msg);
	free(p);
	return m;
}

static struct lora_model *open_base(void)
{
	return open_base_rel("gguf/base");
}

static struct lora_peft *open_adapter(const char *v)
{
	struct lora_err err = { 0 };
	struct lora_peft *a = NULL;
	char rel[64], *p;
	snprintf(rel, sizeof(rel), "gguf/%s", v);
	p = t_fixture(rel);
	if (lora_peft_open(p, &a, &err) < 0)
		fprintf(stderr, "  %s\n", err.msg);
	free(p);
	return a;
}

static struct lora_gguf *open_gguf(const char *path)
{
	struct lora_err err = { 0 };
	struct lora_gguf *g = NULL;
	if (lora_gguf_open(path, &g, &err) < 0)
		fprintf(stderr, "  %s\n", err.msg);
	return g;
}

static char *export_to(const char *variant)
{
	struct lora_err err = { 0 };
	struct lora_model *m = open_base_rel(base_of(variant));
	struct lora_peft *a = open_adapter(variant);
	char *out = malloc(strlen(tmpdir) + 32);
	sprintf(out, "%s/%s.gguf", tmpdir, variant);
	if (!m || !a || lora_gguf_export_peft(a, &m->cfg, variant, out, &err) < 0) {
		fprintf(stderr, "  export %s: %s\n", variant, err.msg);
		free(out);
		out = NULL;
	}
	lora_peft_close(a);
	lora_model_close(m);
	return out;
}

static cJSON *expected(void)
{
	char *p = t_fixture("gguf/expected.json"), *txt = NULL;
	size_t len;
	cJSON *j;
	if (lora_read_file(p, 1 << 20, &txt, &len, NULL) < 0)
		abort();
	j = cJSON_Parse(txt);
	free(txt);
	free(p);
	return j;
}

/* the KVs llama.cpp reads: same type and value as the converter wrote */
static void check_kvs(const struct lora_gguf *ours, const cJSON *want)
{
	const cJSON *kv;
	cJSON_ArrayForEach(kv, want) {
		const char *key = cJSON_GetObjectItem(kv, "key")->valuestring;
		int type = cJSON_GetObjectItem(kv, "type")->valueint;
		const cJSON *val = cJSON_GetObjectItem(kv, "value");
		const struct lora_gguf_kv *k = lora_gguf_find_kv(ours, key);
		CHECKF(k != NULL, "key %s missing", key);
		if (!k)
			continue;
		CHECKF((int)k->type == type, "key %s type %u, want %d", key, k->type, type);
		if (cJSON_IsString(val))
			CHECKF(k->str && !strcmp(k->str, val->valuestring), "key %s = %s, want %s", key, k->str,
			       val->valuestring);
		else
			CHECKF(k->v.f == val->valuedouble, "key %s = %g, want %g", key, k->v.f, val->valuedouble);
	}
}

/* blk.N.attn_q.weight.lora_b -> model.layers.N.self_attn.q_proj */
static void hf_name(const char *g, char out[96])
{
	static const char *map[][2] = { { "attn_q", "self_attn.q_proj" }, { "attn_k", "self_attn.k_proj" },
		{ "attn_v", "self_attn.v_proj" }, { "attn_output", "self_attn.o_proj" }, { "ffn_gate", "mlp.gate_proj" },
		{ "ffn_up", "mlp.up_proj" }, { "ffn_down", "mlp.down_proj" } };
	int n;
	char mid[32];
	out[0] = 0;
	if (sscanf(g, "blk.%d.%31[a-z_].weight", &n, mid) != 2)
		return;
	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (!strcmp(mid, map[i][0]))
			snprintf(out, 96, "model.layers.%d.%s", n, map[i][1]);
}

static void compare_to_converter(const char *variant, int exact)
{
	char rel[64], *conv_path, *ours_path = export_to(variant);
	struct lora_gguf *ours, *conv;
	cJSON *e = expected(), *v = cJSON_GetObjectItem(cJSON_GetObjectItem(e, "variants"), variant);

	snprintf(rel, sizeof(rel), "gguf/%s.gguf", variant);
	conv_path = t_fixture(rel);
	CHECK(ours_path && v);
	if (!ours_path || !v)
		goto out;
	ours = open_gguf(ours_path);
	conv = open_gguf(conv_path);
	CHECK(ours && conv);
	if (!ours || !conv)
		goto out2;
	check_kvs(ours, cJSON_GetObjectItem(v, "kv"));
	CHECKF(ours->n_tensors == conv->n_tensors, "%zu tensors, converter %zu", ours->n_tensors, conv->n_tensors);
	for (size_t i = 0; i < ours->n_tensors && i < conv->n_tensors; i++) {
		const struct lora_gguf_tensor *a = &ours->tensors[i], *b = &conv->tensors[i];
		int is_b = strstr(a->name, ".lora_b") != NULL;
		CHECKF(!strcmp(a->name, b->name), "tensor %zu is %s, converter %s", i, a->name, b->name);
		CHECKF(a->n_dims == b->n_dims && !memcmp(a->ne, b->ne, sizeof(a->ne)) && a->type == b->type,
		       "%s: dims or type differ", a->name);
		if (strcmp(a->name, b->name) || a->nbytes != b->nbytes)
			continue;
		if (exact || !is_b) {
			CHECKF(!memcmp(a->data, b->data, (size_t)a->nbytes), "%s: bytes differ from the converter's",
			       a->name);
		} else {
			char mod[96];
			const cJSON *mj;
			double f;
			float x, y;
			hf_name(a->name, mod);
			mj = cJSON_GetObjectItem(cJSON_GetObjectItem(v, "modules"), mod);
			CHECKF(mj != NULL, "%s: no module %s in expected.json", a->name, mod);
			if (!mj)
				continue;
			f = cJSON_GetObjectItem(mj, "factor")->valuedouble;
			for (uint64_t k = 0; k < a->nbytes / 4; k++) {
				memcpy(&x, a->data + 4 * k, 4);
				memcpy(&y, b->data + 4 * k, 4);
				/* ours is fl32(B·f): one fp32 rounding, relative 2^-24, plus f's own last bit */
				CHECK_NEAR(x, y * f, 1e-30, 1.2e-7);
			}
		}
	}
	lora_gguf_close(ours);
	lora_gguf_close(conv);
out2:
	unlink(ours_path);
out:
	free(ours_path);
	free(conv_path);
	cJSON_Delete(e);
}

TEST(plain_matches_converter_bytes) { compare_to_converter("plain", 1); }
TEST(patterns_fold_scale_into_b) { compare_to_converter("patterns", 0); }
/* Qwen2: architecture "qwen2", and no q/k row permutation (bytes equal only if we do not permute) */
TEST(qwen2_matches_converter_bytes) { compare_to_converter("qwen2", 1); }

/* the converter's own file parses, and says what llama.cpp checks */
TEST(reads_converter_file)
{
	char *p = t_fixture("gguf/plain.gguf");
	struct lora_gguf *g = open_gguf(p);
	double alpha = 0;
	CHECK(g != NULL);
	if (g) {
		CHECK(g->version == 3 && g->alignment == 32);
		CHECK(lora_gguf_get_str(g, "general.type") && !strcmp(lora_gguf_get_str(g, "general.type"), "adapter"));
		CHECK(lora_gguf_get_num(g, "adapter.lora.alpha", &alpha) == 0 && alpha == 8.0);
		CHECK(g->n_tensors == 28);
		CHECK(lora_gguf_find_tensor(g, "blk.1.attn_q.weight.lora_b") != NULL);
	}
	lora_gguf_close(g);
	free(p);
}

static void round_trip(const char *variant, double tol)
{
	struct lora_err err = { 0 };
	struct lora_model *m = open_base_rel(base_of(variant));
	struct lora_peft *a = open_adapter(variant), *b = NULL;
	char *g = export_to(variant), dir[256];

	snprintf(dir, sizeof(dir), "%s/rt-%s", tmpdir, variant);
	CHECK(m && a && g);
	if (!m || !a || !g)
		goto out;
	CHECK(lora_mkdir_p(dir, 0755, &err) == 0);
	CHECKF(lora_gguf_to_peft(g, m, dir, &err) == 0, "%s", err.msg);
	CHECKF(lora_peft_open(dir, &b, &err) == 0, "%s", err.msg);
	if (!b)
		goto out;
	CHECKF(a->n_modules == b->n_modules, "%zu modules back, %zu out", b->n_modules, a->n_modules);
	for (size_t i = 0; i < a->n_modules && i < b->n_modules; i++) {
		struct lora_lowrank x = { 0 }, y = { 0 };
		struct lora_lowrank_cmp c;
		CHECK(!strcmp(a->modules[i].name, b->modules[i].name));
		CHECK(a->modules[i].r == b->modules[i].r);
		if (lora_lowrank_load(&a->modules[i], &x, &err) == 0 && lora_lowrank_load(&b->modules[i], &y, &err) == 0 &&
		    lora_lowrank_compare(&x, &y, &c, &err) == 0) {
			double d = 0;
			CHECK(lora_lowrank_distance_qr(&x, &y, &d, &err) == 0);
			/* tol: 0 when B travels unscaled; else one fp32 rounding of f·B (2^-24 relative per element) */
			CHECKF(d <= tol * c.norm_a, "%s: ‖ΔW - ΔW'‖ = %g, ‖ΔW‖ = %g", a->modules[i].name, d, c.norm_a);
		} else {
			CHECKF(0, "%s", err.msg);
		}
		lora_lowrank_free(&x);
		lora_lowrank_free(&y);
	}
out:
	if (g)
		unlink(g);
	free(g);
	lora_peft_close(a);
	lora_peft_close(b);
	lora_model_close(m);
}

TEST(round_trip_plain_exact) { round_trip("plain", 1e-15); }
TEST(round_trip_patterns_delta_w) { round_trip("patterns", 2e-7); }
TEST(round_trip_qwen2_exact) { round_trip("qwen2", 1e-15); }

TEST(converter_file_imports)
{
	struct lora_err err = { 0 };
	struct lora_model *m = open_base();
	struct lora_peft *a = open_adapter("plain"), *b = NULL;
	char *g = t_fixture("gguf/plain.gguf"), dir[256];

	snprintf(dir, sizeof(dir), "%s/conv", tmpdir);
	CHECK(m && a && lora_mkdir_p(dir, 0755, &err) == 0);
	CHECKF(m && lora_gguf_to_peft(g, m, dir, &err) == 0, "%s", err.msg);
	CHECKF(lora_peft_open(dir, &b, &err) == 0, "%s", err.msg);
	if (a && b) {
		CHECK(a->n_modules == b->n_modules);
		for (size_t i = 0; i < a->n_modules && i < b->n_modules; i++) {
			/* f32 both ways, rows un-permuted: the PEFT bytes come back */
			CHECK(!memcmp(a->modules[i].B->data, b->modules[i].B->data, a->modules[i].B->end - a->modules[i].B->begin));
			CHECK(!memcmp(a->modules[i].A->data, b->modules[i].A->data, a->modules[i].A->end - a->modules[i].A->begin));
			CHECK(a->modules[i].scale == b->modules[i].scale);
		}
	}
	lora_peft_close(a);
	lora_peft_close(b);
	lora_model_close(m);
	free(g);
}

TEST(refusals_name_the_module)
{
	struct lora_err err = { 0 };
	struct lora_model *m = open_base();
	struct lora_peft *a = open_adapter("plain");
	char out[64], path[256];
	int h;

	CHECK(m && a);
	if (!m || !a)
		goto out;
	CHECK(lora_gguf_module_name(&m->cfg, "model.layers.1.self_attn.q_proj", out, &h, &err) == 0 &&
	      !strcmp(out, "blk.1.attn_q.weight") && h == 4);
	CHECK(lora_gguf_module_name(&m->cfg, "model.layers.1.self_attn.k_proj", out, &h, &err) == 0 && h == 2);
	CHECK(lora_gguf_module_name(&m->cfg, "model.layers.0.mlp.up_proj", out, &h, &err) == 0 && h == 0);
	CHECK(lora_gguf_module_name(&m->cfg, "lm_head", out, &h, &err) < 0 && strstr(err.msg, "'lm_head'") &&
	      strstr(err.msg, "ties"));
	CHECK(lora_gguf_module_name(&m->cfg, "model.embed_tokens", out, &h, &err) < 0 &&
	      strstr(err.msg, "embed_tokens"));
	CHECK(lora_gguf_module_name(&m->cfg, "model.layers.2.self_attn.q_proj", out, &h, &err) < 0);
	CHECK(lora_gguf_module_name(&m->cfg, "model.layers.0.self_attn.q_proj.x", out, &h, &err) < 0);
	snprintf(path, sizeof(path), "%s/refused.gguf", tmpdir);
	a->cfg.fan_in_fan_out = 1;
	CHECK(lora_gguf_export_peft(a, &m->cfg, "x", path, &err) < 0 && strstr(err.msg, "fan_in_fan_out"));
	a->cfg.fan_in_fan_out = 0;
	snprintf(m->cfg.model_type, sizeof(m->cfg.model_type), "gpt2");
	CHECK(lora_gguf_export_peft(a, &m->cfg, "x", path, &err) < 0 && strstr(err.msg, "gpt2"));
	CHECK(access(path, F_OK) != 0);
out:
	lora_peft_close(a);
	lora_model_close(m);
}

/* every prefix of a valid file, and single flipped bytes: clean errors or a valid parse, never a crash */
TEST(hostile_truncations_and_flips)
{
	char *p = t_fixture("gguf/patterns.gguf"), *buf = NULL;
	size_t len;
	int bad = 0;

	CHECK(lora_read_file(p, 1 << 20, &buf, &len, NULL) == 0);
	for (size_t n = 0; buf && n < len; n++) {
		struct lora_err err = { 0 };
		struct lora_gguf *g = NULL;
		/* the last tensor's padding may be missing; anything shorter cuts real bytes */
		int rc = lora_gguf_open_mem(buf, n, "cut", &g, &err);
		if (rc == 0 && n < len - 31)
			bad++;
		if (rc < 0 && strncmp(err.msg, "'cut'", 5))
			bad++;
		lora_gguf_close(g);
	}
	CHECKF(bad == 0, "%d truncations accepted or badly reported", bad);
	for (size_t i = 0; buf && i < 1200 && i < len; i++) {
		unsigned char *u = (unsigned char *)buf;
		struct lora_gguf *g = NULL;
		u[i] ^= 0xa5;
		lora_gguf_open_mem(buf, len, "flip", &g, NULL);
		lora_gguf_close(g);
		u[i] ^= 0xa5;
	}
	free(buf);
	free(p);
}

static int parse(const unsigned char *b, size_t n, const char *want)
{
	struct lora_err err = { 0 };
	struct lora_gguf *g = NULL;
	int rc = lora_gguf_open_mem(b, n, "x", &g, &err);
	lora_gguf_close(g);
	if (rc == 0)
		return !want;
	if (!want || !strstr(err.msg, want)) {
		fprintf(stderr, "  got: %s (want %s)\n", err.msg, want ? want : "success");
		return 0;
	}
	return 1;
}

TEST(hostile_headers)
{
	/* magic, version 3, 0 tensors, n_kv as given */
	unsigned char h[64] = { 'G', 'G', 'U', 'F', 3, 0, 0, 0 };
	CHECK(parse(h, 24, NULL));                                  /* empty file: valid */
	h[0] = 'X';
	CHECK(parse(h, 24, "not a GGUF"));
	h[0] = 'G';
	h[4] = 1;
	CHECK(parse(h, 24, "version 1"));
	h[4] = 3;
	memset(h + 16, 0xff, 8);                                    /* n_kv = 2^64 - 1 */
	CHECK(parse(h, 24, "cannot fit"));
	memset(h + 8, 0xff, 8);                                     /* n_tensors = 2^64 - 1 */
	memset(h + 16, 0, 8);
	CHECK(parse(h, 24, "cannot fit"));
	memset(h + 8, 0, 8);
	h[16] = 1;                                                  /* one kv: key length 2^63 */
	memset(h + 24, 0, 8);
	h[31] = 0x80;
	memset(h + 32, 0, 32);
	CHECK(parse(h, 64, "truncated"));
	/* key "a", type ARRAY of UINT64 with 2^61 elements */
	memset(h + 24, 0, 40);
	h[24] = 1; h[32] = 'a'; h[33] = LORA_GGUF_ARRAY; h[37] = LORA_GGUF_UINT64;
	h[48] = 0x20;                                               /* count byte 7 (bits 56..63) at 41+7 */
	CHECK(parse(h, 64, "truncated"));
	/* key "a", BOOL 2 */
	memset(h + 33, 0, 31);
	h[33] = LORA_GGUF_BOOL; h[37] = 2;
	CHECK(parse(h, 38, "bool"));
	h[33] = 99; h[37] = 0;
	CHECK(parse(h, 38, "unknown value type"));
	/* general.alignment must be a uint32 power of two */
	{
		unsigned char a[64] = { 'G', 'G', 'U', 'F', 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 };
		const char *k = "general.alignment";
		a[24] = (unsigned char)strlen(k);
		memcpy(a + 32, k, strlen(k));
		a[32 + 17] = LORA_GGUF_UINT32;
		a[32 + 21] = 3;
		CHECK(parse(a, 32 + 25, "power of two"));
		a[32 + 21] = 0; a[32 + 22] = 1;                      /* 256 */
		CHECK(parse(a, 32 + 25, NULL));
	}
}

/* crafted tensor infos via the writer's output, edited */
TEST(hostile_tensor_infos)
{
	struct lora_err err = { 0 };
	struct lora_gguf_writer w;
	struct lora_gguf_tensor_spec t[2] = { { "a", 2, { 4, 3, 1, 1 }, LORA_GGML_F32 },
					      { "b", 1, { 5, 1, 1, 1 }, LORA_GGML_F16 } };
	float d[12] = { 0 };
	char path[256], *buf = NULL;
	size_t len;
	unsigned char *u;

	snprintf(path, sizeof(path), "%s/w.gguf", tmpdir);
	CHECK(lora_gguf_writer_open(&w, path, NULL, 0, t, 2, &err) == 0);
	CHECK(lora_gguf_writer_write(&w, d, 48, &err) == 0);
	CHECK(lora_gguf_writer_write(&w, d, 9, &err) == 0);
	/* one byte short: refused, nothing at path */
	CHECK(lora_gguf_writer_commit(&w, &err) < 0 && strstr(err.msg, "ended early"));
	CHECK(access(path, F_OK) != 0);
	CHECK(lora_gguf_writer_open(&w, path, NULL, 0, t, 2, &err) == 0);
	CHECK(lora_gguf_writer_write(&w, d, 48, &err) == 0 && lora_gguf_writer_write(&w, d, 10, &err) == 0);
	CHECK(lora_gguf_writer_write(&w, d, 1, &err) < 0);
	CHECK(lora_gguf_writer_commit(&w, &err) == 0);
	CHECK(lora_read_file(path, 1 << 20, &buf, &len, NULL) == 0);
	if (!buf)
		return;
	u = (unsigned char *)buf;
	/* header 24 + infos 41 + 33 = 98, padded to 128; data 48 -> 64, 10 -> 32 */
	CHECKF(len == 128 + 96 && parse(u, len, NULL), "len %zu", len);
	/* tensor "a": name at 24 (8 + 1), n_dims at 33, ne at 37, 45, type at 53, offset at 57 */
	u[33] = 5;
	CHECK(parse(u, len, "dimensions"));
	u[33] = 2;
	u[44] = 0x80;                                                /* ne[0] negative */
	CHECK(parse(u, len, "negative"));
	u[44] = 0;
	memset(u + 37, 0xff, 7);
	u[44] = 0x7f;
	CHECK(parse(u, len, "overflow"));                            /* ne[0] = 2^63 - 1, times 3 */
	u[44] = 0;
	u[37] = 4; memset(u + 38, 0, 6);
	u[53] = 77;
	CHECK(parse(u, len, "unsupported"));
	u[53] = LORA_GGML_Q8_0;                                      /* ne[0] = 4 is no multiple of 32 */
	CHECK(parse(u, len, "block"));
	u[53] = 0;
	u[57] = 32;                                                  /* offset not the running sum */
	CHECK(parse(u, len, "expected 0"));
	u[57] = 1;
	CHECK(parse(u, len, "multiple"));
	u[57] = 0;
	u[45] = 30;                                                  /* 4 x 30 f32 runs past the end */
	CHECK(parse(u, len, "past the end"));
	u[45] = 3;
	CHECK(parse(u, len - 33, "past the end"));
	u[24 + 8] = 'b';                                             /* duplicate name */
	CHECK(parse(u, len, "duplicate"));
	free(buf);
	unlink(path);
}

int main(void)
{
	if (!mkdtemp(tmpdir))
		return 1;
	RUN(reads_converter_file);
	RUN(plain_matches_converter_bytes);
	RUN(patterns_fold_scale_into_b);
	RUN(qwen2_matches_converter_bytes);
	RUN(round_trip_plain_exact);
	RUN(round_trip_patterns_delta_w);
	RUN(round_trip_qwen2_exact);
	RUN(converter_file_imports);
	RUN(refusals_name_the_module);
	RUN(hostile_truncations_and_flips);
	RUN(hostile_headers);
	RUN(hostile_tensor_infos);
	lora_rm_rf(tmpdir, NULL);
	return t_done();
}
