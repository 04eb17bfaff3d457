/*
 * test_merge_unit.c - the pieces of merge.c/swap.c: REF@WEIGHT parsing,
 * records, padded shard headers, fingerprint refusal and --force,
 * fan_in_fan_out, --dtype conversion (and a swap on a converted folder),
 * modules_to_save refusal.  Expected values are computed here in double,
 * independently of the code under test.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "libadapter/base/dtype.h"
#include "libadapter/base/fsutil.h"
#include "libadapter/merge/merge.h"
#include "libadapter/format/modeldir.h"
#include "libadapter/format/safetensors.h"
#include "libadapter/merge/swap.h"
#include "tests/t.h"

static char tmp[256];

static char *tpath(const char *rel)
{
	char *p;
	if (asprintf(&p, "%s/%s", tmp, rel) < 0)
		abort();
	return p;
}

static uint64_t rng = 88172645463325252ull;
static float frand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (float)((rng >> 11) * 0x1p-53 * 2 - 1);
}

/* Write one safetensors file of F32 tensors. */
static void write_f32(const char *path, const char **names, const int (*shapes)[2], float **data,
		      size_t n, const char *meta_k, const char *meta_v)
{
	struct lora_st_spec specs[8] = { 0 };
	struct lora_st_writer w;
	struct lora_err err = { 0 };
	const char *mk[1] = { meta_k }, *mv[1] = { meta_v };

	for (size_t i = 0; i < n; i++) {
		specs[i].name = names[i];
		specs[i].dtype = LORA_DT_F32;
		specs[i].ndim = 2;
		specs[i].shape[0] = (uint64_t)shapes[i][0];
		specs[i].shape[1] = (uint64_t)shapes[i][1];
	}
	CHECKF(lora_st_writer_open(&w, path, specs, n, mk, mv, meta_k ? 1 : 0, &err) == 0, "%s", err.msg);
	for (size_t i = 0; i < n; i++)
		CHECK(lora_st_writer_write(&w, data[i], (size_t)shapes[i][0] * shapes[i][1] * 4, &err) == 0);
	CHECKF(lora_st_writer_commit(&w, &err) == 0, "%s", err.msg);
}

TEST(parse_arg)
{
	struct lora_err err = { 0 };
	char *s = NULL;
	double w = 0;

	CHECK(lora_merge_parse_arg("sql:v2@0.7", &s, &w, &err) == 0 && !strcmp(s, "sql:v2") && w == 0.7);
	free(s);
	CHECK(lora_merge_parse_arg("dir/ad", &s, &w, &err) == 0 && !strcmp(s, "dir/ad") && w == 1.0);
	free(s);
	CHECK(lora_merge_parse_arg("a@b/c", &s, &w, &err) == 0 && !strcmp(s, "a@b/c") && w == 1.0);
	free(s);
	CHECK(lora_merge_parse_arg("x@-1e-1", &s, &w, &err) == 0 && !strcmp(s, "x") && w == -0.1);
	free(s);
	CHECK(lora_merge_parse_arg("x@nan", &s, &w, &err) == 0 && !strcmp(s, "x@nan") && w == 1.0);
	free(s);
	CHECK(lora_merge_parse_arg("@0.5", &s, &w, &err) == 0 && !strcmp(s, "@0.5"));
	free(s);
}

TEST(fmt_double_round_trips)
{
	const double v[] = { 0.7, 0.3, 1, -0.1, 1.0 / 3, 1e-300, 123456789.123 };
	char buf[32];

	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		lora_merge_fmt_double(v[i], buf);
		CHECKF(strtod(buf, NULL) == v[i], "%s", buf);
	}
	lora_merge_fmt_double(0.7, buf);
	CHECK(!strcmp(buf, "0.7"));
}

TEST(record_round_trip)
{
	struct lora_merge_record r = { 0 }, r2;
	struct lora_buf a = LORA_BUF_INIT, b = LORA_BUF_INIT;
	struct lora_err err = { 0 };
	char *dir = tpath("rec"), *f;
	char *mods[2] = { "m.a", "m.b" }, *lines[2];

	lines[0] = "BF16 4x4 0000000000000000000000000000000000000000000000000000000000000000";
	lines[1] = "F32 2x8 1111111111111111111111111111111111111111111111111111111111111111";
	r.base_path = "/base \"quoted\"";
	memcpy(r.fingerprint, "sha256:", 7);
	memset(r.fingerprint + 7, 'a', 64);
	r.dtype = LORA_DT_F16;
	r.drift = 2;
	r.n_adapters = 1;
	r.adapters = &(struct lora_merge_rec_adapter){ "x:latest", "sha256:"
		"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", 0.3 };
	r.n_tensors = 2;
	r.modules = mods;
	r.lines = lines;
	CHECK(lora_merge_record_json(&r, 0, &a, &err) == 0);
	CHECK(lora_mkdir_p(dir, 0755, &err) == 0);
	f = lora_path_join(dir, LORA_MERGE_JSON);
	CHECK(lora_write_file_atomic(f, a.data, a.len, 0644, &err) == 0);
	CHECKF(lora_merge_record_read(dir, &r2, &err) == 0, "%s", err.msg);
	CHECK(lora_merge_record_json(&r2, 0, &b, &err) == 0);
	CHECKF(a.len == b.len && !memcmp(a.data, b.data, a.len), "%s\nvs\n%s", a.data, b.data);
	CHECK(r2.dtype == LORA_DT_F16 && r2.drift == 2 && r2.n_tensors == 2 && r2.adapters[0].weight == 0.3);
	lora_merge_record_free(&r2);
	/* A hostile record is refused. */
	CHECK(lora_write_file_atomic(f, "{\"format\":\"lora-merge/1\",\"base\":{\"path\":1}}", 43, 0644,
				     &err) == 0);
	CHECK(lora_merge_record_read(dir, &r2, &err) < 0 && strstr(err.msg, "base.path"));
	lora_buf_free(&a);
	lora_buf_free(&b);
	free(f);
	free(dir);
}

TEST(shard_header_padding)
{
	const char *names[2] = { "b.weight", "a.weight" };
	const int shapes[2][2] = { { 2, 3 }, { 4, 1 } };
	float d0[6] = { 1, 2, 3, 4, 5, 6 }, d1[4] = { 7, 8, 9, 10 }, *data[2] = { d0, d1 };
	char *p = tpath("hdr.safetensors"), *big;
	struct lora_st *st = NULL, *st2 = NULL;
	struct lora_err err = { 0 };
	unsigned char *h = NULL, *h2 = NULL;
	size_t hl = 0, hl2 = 0, nat;

	write_f32(p, names, shapes, data, 2, "format", "pt");
	CHECKF(lora_st_open(p, &st, &err) == 0, "%s", err.msg);
	if (!st)
		return;
	nat = st->data_start;
	CHECK(lora_merge_shard_header(st, NULL, "{\"x\":1}", 0, &h, &hl, &err) == 0);
	/* Size: natural header + 16 KiB, rounded to 8; the data offsets do not move. */
	CHECK(hl == ((nat + LORA_MERGE_RESERVE + 7) & ~(size_t)7));
	CHECK(lora_st_open_mem(h, hl, "h", &st2, &err) < 0);   /* no data after it: invalid alone */
	{
		unsigned char *whole = malloc(hl + 40);
		memcpy(whole, h, hl);
		memcpy(whole + hl, st->base + st->data_start, 40);
		CHECKF(lora_st_open_mem(whole, hl + 40, "whole", &st2, &err) == 0, "%s", err.msg);
		if (st2) {
			CHECK(!strcmp(lora_st_meta(st2, "format"), "pt"));
			CHECK(!strcmp(lora_st_meta(st2, LORA_MERGE_META_KEY), "{\"x\":1}"));
			CHECK(lora_st_find(st2, "a.weight")->begin == lora_st_find(st, "a.weight")->begin);
			/* Same header at the same size from the padded one (what swap does). */
			CHECK(lora_merge_shard_header(st2, NULL, "{\"x\":1}", hl, &h2, &hl2, &err) == 0);
			CHECK(hl2 == hl && !memcmp(h, h2, hl));
			free(h2);
			lora_st_close(st2);
		}
		free(whole);
	}
	/* A record larger than the space kept is refused. */
	big = malloc(LORA_MERGE_RESERVE + 100);
	memset(big, 'x', LORA_MERGE_RESERVE + 99);
	big[LORA_MERGE_RESERVE + 99] = 0;
	CHECK(lora_merge_shard_header(st, NULL, big, hl, &h2, &hl2, &err) < 0);
	CHECK(strstr(err.msg, "does not fit") != NULL);
	free(big);
	free(h);
	lora_st_close(st);
	free(p);
}

/* A GPT-2 style model: c_attn stored [in, out], adapter with fan_in_fan_out. */
static void make_fifo(const char *bdir, const char *adir, int modules_to_save, float **W, float **A,
		      float **B)
{
	enum { IN = 8, OUT = 12, R = 2 };
	const char *bn[2] = { "h.0.attn.c_attn.weight", "wte.weight" };
	const int bs[2][2] = { { IN, OUT }, { 5, IN } };
	const char *an[3] = { "base_model.model.h.0.attn.c_attn.lora_A.weight",
			      "base_model.model.h.0.attn.c_attn.lora_B.weight",
			      "base_model.model.wte.modules_to_save.weight" };
	const int as[3][2] = { { R, IN }, { OUT, R }, { 5, IN } };
	float *wte = malloc(5 * IN * 4), *d[3];
	struct lora_err err = { 0 };
	char *p;
	const char *cfg = "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":6,\"target_modules\":[\"c_attn\"],"
			  "\"fan_in_fan_out\":true}";

	*W = malloc(IN * OUT * 4);
	*A = malloc(R * IN * 4);
	*B = malloc(OUT * R * 4);
	for (int i = 0; i < IN * OUT; i++)
		(*W)[i] = frand();
	for (int i = 0; i < R * IN; i++)
		(*A)[i] = frand();
	for (int i = 0; i < OUT * R; i++)
		(*B)[i] = frand();
	for (int i = 0; i < 5 * IN; i++)
		wte[i] = frand();
	lora_mkdir_p(bdir, 0755, &err);
	lora_mkdir_p(adir, 0755, &err);
	p = lora_path_join(bdir, "model.safetensors");
	d[0] = *W;
	d[1] = wte;
	write_f32(p, bn, bs, d, 2, "format", "pt");
	free(p);
	p = lora_path_join(adir, "adapter_model.safetensors");
	d[0] = *A;
	d[1] = *B;
	d[2] = wte;
	write_f32(p, an, as, d, modules_to_save ? 3 : 2, NULL, NULL);
	free(p);
	p = lora_path_join(adir, "adapter_config.json");
	CHECK(lora_write_file_atomic(p, cfg, strlen(cfg), 0644, &err) == 0);
	free(p);
	free(wte);
}

TEST(fan_in_fan_out)
{
	char *bdir = tpath("fifo_base"), *adir = tpath("fifo_ad"), *out = tpath("fifo_out");
	struct lora_merge_set set = { 0 };
	struct lora_merge_opts o = { 0 };
	struct lora_merge_stats st;
	struct lora_err err = { 0 };
	struct lora_model *m = NULL;
	float *W, *A, *B;

	make_fifo(bdir, adir, 0, &W, &A, &B);
	CHECKF(lora_merge_set_add(&set, NULL, adir, 0.5, &err) == 0, "%s", err.msg);
	o.base_dir = bdir;
	o.out_dir = out;
	CHECKF(lora_merge(&o, &set, &st, &err) == 0, "%s", err.msg);
	CHECK(st.n_merged == 1 && st.n_copied == 1);
	CHECKF(lora_model_open(out, 0, &m, &err) == 0, "%s", err.msg);
	if (m) {
		const float *got = (const float *)lora_model_find(m, "h.0.attn.c_attn.weight")->t->data;
		double scale = 0.5 * 6.0 / 2;   /* weight · alpha / r */
		int bad = 0;
		/* Stored [in, out]: W'[j][i] = W[j][i] + scale · Σₖ B[i][k] A[k][j]. */
		for (int j = 0; j < 8; j++)
			for (int i = 0; i < 12; i++) {
				double e = W[j * 12 + i];
				for (int k = 0; k < 2; k++)
					e += scale * (double)B[i * 2 + k] * A[k * 8 + j];
				bad += fabs(got[j * 12 + i] - e) > 1e-6 * fabs(e);
			}
		CHECK(bad == 0);
		lora_model_close(m);
	}
	lora_merge_set_free(&set);
	free(W);
	free(A);
	free(B);
	free(bdir);
	free(adir);
	free(out);
}

TEST(modules_to_save_refused)
{
	char *bdir = tpath("mts_base"), *adir = tpath("mts_ad"), *out = tpath("mts_out");
	struct lora_merge_set set = { 0 };
	struct lora_merge_opts o = { 0 };
	struct lora_merge_stats st;
	struct lora_err err = { 0 };
	float *W, *A, *B;

	make_fifo(bdir, adir, 1, &W, &A, &B);
	if (lora_merge_set_add(&set, NULL, adir, 1, &err) == 0) {
		o.base_dir = bdir;
		o.out_dir = out;
		CHECK(lora_merge(&o, &set, &st, &err) < 0);
		CHECKF(strstr(err.msg, "merge does not support them") != NULL, "%s", err.msg);
		CHECK(!lora_is_dir(out));
	} else {
		CHECKF(strstr(err.msg, "modules_to_save") || strstr(err.msg, "wte"), "%s", err.msg);
	}
	lora_merge_set_free(&set);
	free(W);
	free(A);
	free(B);
	free(bdir);
	free(adir);
	free(out);
}

TEST(fingerprint_refused_unless_forced)
{
	char *base = t_fixture("merge/base_bf16"), *ad = t_fixture("merge/ad_plain");
	char *o1 = tpath("fp1"), *o2 = tpath("fp2"), *o3 = tpath("fp3");
	struct lora_merge_set set = { 0 };
	struct lora_merge_opts o = { 0 };
	struct lora_merge_stats st;
	struct lora_err err = { 0 };
	struct lora_model *m = NULL;
	const char **mods;
	char fp[72];

	CHECK(lora_merge_set_add(&set, NULL, ad, 1, &err) == 0);
	CHECK(lora_model_open(base, 0, &m, &err) == 0);
	if (!m || !set.n)
		return;
	mods = calloc(set.a[0].peft->n_modules, sizeof(char *));
	for (size_t i = 0; i < set.a[0].peft->n_modules; i++)
		mods[i] = set.a[0].peft->modules[i].name;
	CHECK(lora_model_fingerprint(m, mods, set.a[0].peft->n_modules, fp, &err) == 0);
	free(mods);
	lora_model_close(m);
	o.base_dir = base;
	/* Another base's fingerprint: refused with exit status 3, nothing written. */
	set.a[0].base_fingerprint = strdup("sha256:0000000000000000000000000000000000000000000000000000000000000000");
	o.out_dir = o1;
	CHECK(lora_merge(&o, &set, &st, &err) < 0);
	CHECK(err.code == LORA_EVERIFY);
	CHECKF(strstr(err.msg, "was made for another base") && strstr(err.msg, "--force"), "%s", err.msg);
	CHECK(!lora_is_dir(o1));
	o.force = 1;
	CHECKF(lora_merge(&o, &set, &st, &err) == 0, "%s", err.msg);
	CHECK(st.n_forced == 1 && lora_is_dir(o1));
	/* The right fingerprint: merged without --force. */
	free(set.a[0].base_fingerprint);
	set.a[0].base_fingerprint = strdup(fp);
	o.force = 0;
	o.out_dir = o2;
	CHECKF(lora_merge(&o, &set, &st, &err) == 0, "%s", err.msg);
	CHECK(st.n_forced == 0 && !strcmp(st.fingerprint, fp));
	(void)o3;
	lora_merge_set_free(&set);
	free(base);
	free(ad);
	free(o1);
	free(o2);
	free(o3);
}

TEST(dtype_fp32_output_and_swap)
{
	char *base = t_fixture("merge/base_bf16"), *a1 = t_fixture("merge/ad_plain");
	char *a2 = t_fixture("merge/ad_pattern");
	char *out = tpath("f32"), *ref = tpath("f32ref"), *cfg, *text = NULL;
	struct lora_merge_set s1 = { 0 }, s2 = { 0 };
	struct lora_merge_opts o = { 0 };
	struct lora_merge_stats st;
	struct lora_swap_opts so = { 0 };
	struct lora_swap_stats ss;
	struct lora_err err = { 0 };
	struct lora_model *bm = NULL, *om = NULL;
	size_t len;

	CHECK(lora_merge_set_add(&s1, NULL, a1, 1, &err) == 0);
	CHECK(lora_merge_set_add(&s2, NULL, a2, 1, &err) == 0);
	o.base_dir = base;
	o.out_dir = out;
	o.dtype = LORA_DT_F32;
	CHECKF(lora_merge(&o, &s1, &st, &err) == 0, "%s", err.msg);
	CHECK(st.n_converted > 0 && st.n_copied == 0);
	CHECK(lora_model_open(base, 0, &bm, &err) == 0);
	CHECK(lora_model_open(out, 0, &om, &err) == 0);
	if (bm && om) {
		/* Untargeted tensors: exactly the bf16 values widened. */
		const struct lora_st_tensor *bt = lora_model_find(bm, "model.embed_tokens.weight")->t;
		const struct lora_st_tensor *ot = lora_model_find(om, "model.embed_tokens.weight")->t;
		int bad = 0;
		CHECK(ot->dtype == LORA_DT_F32);
		for (uint64_t i = 0; i < bt->nelem; i++) {
			uint16_t h;
			float f;
			memcpy(&h, bt->data + 2 * i, 2);
			memcpy(&f, ot->data + 4 * i, 4);
			bad += f != lora_bf16_to_f32(h);
		}
		CHECK(bad == 0);
	}
	if (om)
		lora_model_close(om);
	if (bm)
		lora_model_close(bm);
	cfg = lora_path_join(out, "config.json");
	CHECK(lora_read_file(cfg, 1 << 20, &text, &len, &err) == 0);
	CHECK(text && strstr(text, "\"float32\"") && !strstr(text, "bfloat16"));
	free(text);
	free(cfg);
	/* Swap on the converted folder, bit-identical to a fresh fp32 merge. */
	so.model_dir = out;
	CHECKF(lora_swap(&so, &s2, &ss, &err) == 0, "%s", err.msg);
	CHECK(ss.exact);
	o.out_dir = ref;
	CHECKF(lora_merge(&o, &s2, &st, &err) == 0, "%s", err.msg);
	{
		const char *files[] = { "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
					"lora-merge.json", "model.safetensors.index.json", "config.json" };
		for (size_t i = 0; i < 5; i++) {
			char *x = lora_path_join(out, files[i]), *y = lora_path_join(ref, files[i]);
			char hx[65], hy[65];
			CHECK(lora_sha256_file(x, hx, NULL, &err) == 0 && lora_sha256_file(y, hy, NULL, &err) == 0);
			CHECKF(!strcmp(hx, hy), "%s differs", files[i]);
			free(x);
			free(y);
		}
	}
	lora_merge_set_free(&s1);
	lora_merge_set_free(&s2);
	free(base);
	free(a1);
	free(a2);
	free(out);
	free(ref);
}

/* The fingerprint cache: used when the file is unchanged, ignored once it changes. */
TEST(fingerprint_cache)
{
	char *base0 = t_fixture("merge/base_bf16"), *ad = t_fixture("merge/ad_plain");
	char *base = tpath("cbase"), *o1 = tpath("c1"), *o2 = tpath("c2"), *o3 = tpath("c3"), *cmd;
	struct lora_merge_set set = { 0 };
	struct lora_merge_opts o = { 0 };
	struct lora_merge_stats st1, st2, st3;
	struct lora_err err = { 0 };
	char *cdir, *files = NULL, *p, *cache = NULL;
	size_t len;

	CHECK(asprintf(&cmd, "cp -r '%s' '%s'", base0, base) > 0 && system(cmd) == 0);
	free(cmd);
	CHECK(lora_merge_set_add(&set, NULL, ad, 1, &err) == 0);
	/* the library is told where its cache is (the program reads $XDG_CACHE_HOME) */
	CHECK(asprintf(&cache, "%s/lora/tensor-lines", getenv("XDG_CACHE_HOME")) > 0);
	o.cache_dir = cache;
	o.base_dir = base;
	o.out_dir = o1;
	CHECKF(lora_merge(&o, &set, &st1, &err) == 0, "%s", err.msg);
	o.out_dir = o2;
	CHECKF(lora_merge(&o, &set, &st2, &err) == 0, "%s", err.msg);
	CHECK(!strcmp(st1.fingerprint, st2.fingerprint));
	/* Poison every cached line, then change the shards' ctime: the cache must miss. */
	cdir = t_fixture("");
	free(cdir);
	CHECK(asprintf(&cmd, "for f in \"$XDG_CACHE_HOME\"/lora/tensor-lines/*; do "
			     "sed -i 's/ [0-9a-f]\\{64\\}$/ %064d/' \"$f\"; done; "
			     "grep -c . \"$XDG_CACHE_HOME\"/lora/tensor-lines/* >/dev/null", 0) > 0);
	CHECK(system(cmd) == 0);
	free(cmd);
	CHECK(asprintf(&cmd, "touch '%s'/*.safetensors", base) > 0 && system(cmd) == 0);
	free(cmd);
	o.out_dir = o3;
	CHECKF(lora_merge(&o, &set, &st3, &err) == 0, "%s", err.msg);
	CHECKF(!strcmp(st1.fingerprint, st3.fingerprint), "%s vs %s", st1.fingerprint, st3.fingerprint);
	p = lora_path_join(o3, LORA_MERGE_JSON);
	CHECK(lora_read_file(p, 1 << 20, &files, &len, &err) == 0);
	CHECK(files && !strstr(files, "000000000000000000000000000000000000000000000000000000000000000"));
	free(files);
	free(p);
	lora_merge_set_free(&set);
	free(base0);
	free(ad);
	free(base);
	free(o1);
	free(o2);
	free(o3);
	free(cache);
}

/*
 * Swap without the base: W_merged − ΔA + ΔB.  W_merged was rounded once
 * (≤ ½ ulp of |W + ΔA|) and the result is rounded again (≤ ½ ulp of
 * |W + ΔB|), so it differs from a fresh merge of B by at most about one ulp
 * of the larger of |W + ΔA| and |W + ΔB| (bf16 ulp of v: 2^(exponent(v) − 7)).
 */
static double bf16_val(const unsigned char *p, uint64_t k)
{
	return lora_bf16_to_f32((uint16_t)(p[2 * k] | p[2 * k + 1] << 8));
}

static double bf16_ulp(double v)
{
	int e;
	frexp(fabs(v), &e);   /* |v| = f · 2^e, f in [0.5, 1) */
	return ldexp(1.0, e - 8);
}

TEST(drift_is_about_one_ulp)
{
	char *base0 = t_fixture("merge/base_bf16"), *a1 = t_fixture("merge/ad_plain");
	char *a2 = t_fixture("merge/ad_pattern");
	char *base = tpath("dbase"), *m = tpath("dm"), *ma = tpath("dma"), *ref = tpath("dref"), *cmd;
	struct lora_merge_set s1 = { 0 }, s2 = { 0 };
	struct lora_merge_opts o = { 0 };
	struct lora_merge_stats st;
	struct lora_swap_opts so = { 0 };
	struct lora_swap_stats ss;
	struct lora_err err = { 0 };
	struct lora_model *mm = NULL, *rm = NULL, *am = NULL;
	uint64_t total = 0, differ = 0, over = 0;
	double worst = 0;

	CHECK(asprintf(&cmd, "cp -r '%s' '%s'", base0, base) > 0 && system(cmd) == 0);
	free(cmd);
	CHECK(lora_merge_set_add(&s1, NULL, a1, 1, &err) == 0);
	CHECK(lora_merge_set_add(&s2, NULL, a2, 1, &err) == 0);
	o.base_dir = base;
	o.out_dir = m;
	CHECKF(lora_merge(&o, &s1, &st, &err) == 0, "%s", err.msg);
	o.base_dir = base0;
	o.out_dir = ma;
	CHECKF(lora_merge(&o, &s1, &st, &err) == 0, "%s", err.msg);
	o.out_dir = ref;
	CHECKF(lora_merge(&o, &s2, &st, &err) == 0, "%s", err.msg);
	lora_rm_rf(base, NULL);
	so.model_dir = m;
	CHECKF(lora_swap(&so, &s2, &ss, &err) == 0, "%s", err.msg);
	CHECK(!ss.exact && strstr(ss.note, "not bit-exact"));
	CHECK(lora_model_open(m, 0, &mm, &err) == 0 && lora_model_open(ref, 0, &rm, &err) == 0 &&
	      lora_model_open(ma, 0, &am, &err) == 0);
	for (size_t i = 0; mm && rm && am && i < rm->n_tensors; i++) {
		const struct lora_st_tensor *r = rm->tensors[i].t, *t = lora_model_find(mm, r->name)->t;
		const struct lora_st_tensor *a = lora_model_find(am, r->name)->t;
		for (uint64_t k = 0; r->dtype == LORA_DT_BF16 && k < r->nelem; k++) {
			double x = bf16_val(t->data, k), y = bf16_val(r->data, k), w = bf16_val(a->data, k);
			double u = bf16_ulp(fabs(w) > fabs(y) ? w : y), d = fabs(x - y) / u;
			total++;
			differ += x != y;
			over += d > 1;
			if (d > worst)
				worst = d;
		}
	}
	printf("  drift after one swap without the base: %llu of %llu values differ from a fresh merge; "
	       "worst %.2f ulp of max(|W+dA|, |W+dB|), %llu over 1 ulp\n", (unsigned long long)differ,
	       (unsigned long long)total, worst, (unsigned long long)over);
	CHECK(total > 0 && differ > 0 && worst <= 1.0);
	if (mm)
		lora_model_close(mm);
	if (rm)
		lora_model_close(rm);
	if (am)
		lora_model_close(am);
	lora_merge_set_free(&s1);
	lora_merge_set_free(&s2);
	free(base0);
	free(a1);
	free(a2);
	free(base);
	free(m);
	free(ma);
	free(ref);
}

int main(void)
{
	snprintf(tmp, sizeof(tmp), "%s/lora-test-mergeu.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (!mkdtemp(tmp)) {
		perror("mkdtemp");
		return 1;
	}
	{
		/* Keep the fingerprint cache inside the test folder. */
		char c[300];
		snprintf(c, sizeof(c), "%s/cache", tmp);
		setenv("XDG_CACHE_HOME", c, 1);
	}
	RUN(parse_arg);
	RUN(fmt_double_round_trips);
	RUN(record_round_trip);
	RUN(shard_header_padding);
	RUN(fan_in_fan_out);
	RUN(modules_to_save_refused);
	RUN(fingerprint_refused_unless_forced);
	RUN(dtype_fp32_output_and_swap);
	RUN(fingerprint_cache);
	RUN(drift_is_about_one_ulp);
	lora_rm_rf(tmp, NULL);
	return t_done();
}
