/*
 * test_merge_oracle.c - lora_merge() against fixtures written by
 * tests/oracle/merge_oracle.py (numpy fp64 reference and peft merge_and_unload).
 *
 * For every case in tests/fixtures/merge/cases.json: merge with the library,
 * then compare each targeted tensor with the expected values, and every other
 * tensor with the base byte for byte.
 *
 * Tolerances (u = 2^-24, the fp32 unit roundoff; ulp = one bf16 ulp of the result):
 *   bf16 vs the correctly rounded fp64 result: we compute ΔW with r ≤ 16 fp32
 *   products and sums (error ≲ r·u·Σ|B||A|·scale), add W exactly representable
 *   in fp32, and round once.  The fp32 value lies within a few u of the exact
 *   one, so rounding it to bf16 (8 significant bits) can differ from the
 *   correctly rounded value only when the exact value sits within a few·2^-24
 *   relative of a bf16 rounding boundary: probability about few·2^-16 ≈ 1e-4
 *   at most, and then by exactly one ulp.  Hence: ≥ 99.99% equal over all bf16
 *   values, none more than 1 ulp away.
 *   bf16 vs peft's fp32 merge rounded to bf16: both are fp32 results of the
 *   same sum with different summation order, each within a few u; rounded once
 *   they can differ by at most 1 ulp.
 *   fp32 vs fp64 reference: within 1e-6 relative to |W'|.  merge computes an
 *   fp32 output through fp64 (dgemm): the fp64 error is about r·2⁻⁵³ of the
 *   terms' magnitudes, then one rounding to fp32 (2⁻²⁴ relative).  We also
 *   report how far off fp32 accumulation would be, as the error relative to
 *   the largest magnitude in play, max(|W'|, |W|, Σ|coef|·Σₖ|Bᵢₖ||Aₖⱼ|):
 *   the fixtures hold values where ΔW ≈ 1e-7 comes from terms of 1e-3, where
 *   fp32 accumulation (peft's) misses 1e-6 of |W'| by far.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "libadapter/base/fsutil.h"
#include "libadapter/merge/merge.h"
#include "libadapter/format/modeldir.h"
#include "libadapter/format/safetensors.h"
#include "train/cuda.h"
#include "tests/t.h"

static char tmpdir[256];
static uint64_t bf16_total, bf16_exact, bf16_over1, peft_over1, peft_total, f32_total, f32_plain_over;
static double f32_worst;

static int ulp_dist16(uint16_t a, uint16_t b)
{
	int ka = (a & 0x8000) ? -(int)(a & 0x7fff) : (int)a;
	int kb = (b & 0x8000) ? -(int)(b & 0x7fff) : (int)b;
	return abs(ka - kb);
}

static uint16_t get16(const unsigned char *p, uint64_t i)
{
	return (uint16_t)(p[2 * i] | p[2 * i + 1] << 8);
}

static float getf(const unsigned char *p, uint64_t i)
{
	float f;
	memcpy(&f, p + 4 * i, 4);
	return f;
}

/* Σ over the set of |weight·scale|·Σₖ|B[i,k]|·|A[k,j]| for one base tensor (fp64), or NULL. */
static double *term_bound(const struct lora_merge_set *set, const char *tensor, uint64_t nelem)
{
	size_t l = strlen(tensor);
	char *mod = strndup(tensor, l - 7);
	double *b = calloc(nelem, sizeof(double));
	struct lora_err err = { 0 };
	int any = 0;

	for (size_t i = 0; i < set->n && b; i++) {
		const struct lora_peft_module *m = lora_peft_find(set->a[i].peft, mod);
		float *A, *B;
		uint64_t r, in, out;
		if (!m)
			continue;
		A = lora_peft_load_f32(m->A, &err);
		B = lora_peft_load_f32(m->B, &err);
		r = m->A->shape[0];
		in = m->A->shape[1];
		out = m->B->shape[0];
		CHECK(A && B && in * out == nelem);
		if (A && B && in * out == nelem)
			for (uint64_t o = 0; o < out; o++)
				for (uint64_t j = 0; j < in; j++) {
					double s = 0;
					for (uint64_t k = 0; k < r; k++)
						s += fabs((double)B[o * r + k]) * fabs((double)A[k * in + j]);
					b[o * in + j] += fabs(set->a[i].weight * m->scale) * s;
				}
		any = 1;
		free(A);
		free(B);
	}
	free(mod);
	if (!any) {
		free(b);
		return NULL;
	}
	return b;
}

/* Fixture room of the cases and where their expectations lie. */
static const char *room = "merge", *expect_dir = "merge/expect";

/* Compare one merged model with the expectations of a case. */
static void check_case(const char *name, const char *base_dir, const char *out_dir,
		       const struct lora_merge_set *set)
{
	char rel[256];
	struct lora_err err = { 0 };
	struct lora_model *base = NULL, *out = NULL;
	struct lora_st *ex = NULL;
	char *exp_path;
	size_t n_ref = 0;

	snprintf(rel, sizeof(rel), "%s/%s.safetensors", expect_dir, name);
	exp_path = t_fixture(rel);
	CHECKF(lora_st_open(exp_path, &ex, &err) == 0, "%s", err.msg);
	CHECKF(lora_model_open(base_dir, 1, &base, &err) == 0, "%s", err.msg);
	CHECKF(lora_model_open(out_dir, 1, &out, &err) == 0, "%s", err.msg);
	free(exp_path);
	if (!ex || !base || !out)
		goto done;
	CHECK(out->n_shards == base->n_shards && out->n_tensors == base->n_tensors);
	for (size_t i = 0; i < base->n_tensors; i++) {
		const struct lora_st_tensor *bt = base->tensors[i].t, *ot, *rt, *pt;
		const struct lora_model_tensor *omt = lora_model_find(out, bt->name);
		char key[512];

		CHECKF(omt != NULL, "%s: tensor %s missing from the output", name, bt->name);
		if (!omt)
			continue;
		ot = omt->t;
		CHECK(ot->dtype == bt->dtype && ot->ndim == bt->ndim && ot->begin == bt->begin &&
		      !memcmp(ot->shape, bt->shape, sizeof(ot->shape)));
		CHECK(!strcmp(out->shard_names[omt->shard], base->shard_names[base->tensors[i].shard]));
		snprintf(key, sizeof(key), "ref.%s", bt->name);
		rt = lora_st_find(ex, key);
		snprintf(key, sizeof(key), "peft.%s", bt->name);
		pt = lora_st_find(ex, key);
		if (!rt) {
			/* Not targeted: byte for byte the base. */
			CHECKF(!memcmp(ot->data, bt->data, bt->end - bt->begin), "%s: %s changed", name,
			       bt->name);
			continue;
		}
		n_ref++;
		CHECK(rt->dtype == ot->dtype && rt->nelem == ot->nelem);
		if (rt->dtype != ot->dtype || rt->nelem != ot->nelem)
			continue;
		if (ot->dtype == LORA_DT_BF16) {
			for (uint64_t k = 0; k < ot->nelem; k++) {
				uint16_t o = get16(ot->data, k), r = get16(rt->data, k);
				int d = ulp_dist16(o, r);
				bf16_total++;
				bf16_exact += d == 0;
				bf16_over1 += d > 1;
				if (pt) {
					peft_total++;
					peft_over1 += ulp_dist16(o, get16(pt->data, k)) > 1;
				}
			}
		} else {
			uint64_t bad = 0;
			double *tb = term_bound(set, bt->name, ot->nelem);
			CHECKF(tb != NULL, "%s: no adapter targets %s", name, bt->name);
			for (uint64_t k = 0; k < ot->nelem && tb; k++) {
				double o = getf(ot->data, k), r = getf(rt->data, k), w = getf(bt->data, k);
				double mag = fabs(r);
				if (fabs(w) > mag)
					mag = fabs(w);
				if (tb[k] > mag)
					mag = tb[k];
				if (fabs(o - r) > 1e-6 * fabs(r))
					fprintf(stderr, "  %s[%llu]: ours %.9g ref %.9g base %.9g\n", bt->name,
						(unsigned long long)k, o, r, w);
				bad += fabs(o - r) > 1e-6 * fabs(r);
				f32_total++;
				f32_plain_over += fabs(o - r) > 1e-6 * fabs(r);
				if (fabs(o - r) / mag > f32_worst)
					f32_worst = fabs(o - r) / mag;
			}
			free(tb);
			CHECKF(bad == 0, "%s: %s: %llu fp32 values off by more than 1e-6 relative", name,
			       bt->name, (unsigned long long)bad);
		}
	}
	CHECKF(n_ref > 0, "%s: no expectations found", name);
done:
	if (ex)
		lora_st_close(ex);
	if (base)
		lora_model_close(base);
	if (out)
		lora_model_close(out);
}

static enum lora_device device = LORA_DEVICE_CPU;

static void run_case(const cJSON *c)
{
	const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
	const cJSON *ads = cJSON_GetObjectItem(c, "adapters"), *a;
	char rel[256], out_dir[512];
	struct lora_merge_set set = { 0 };
	struct lora_merge_opts o = { 0 };
	struct lora_merge_stats st;
	struct lora_err err = { 0 };
	struct lora_cuda_merge_hook hook;
	char *base;

	snprintf(rel, sizeof(rel), "%s/%s", room, cJSON_GetObjectItem(c, "base")->valuestring);
	base = t_fixture(rel);
	cJSON_ArrayForEach(a, ads) {
		char *p;
		snprintf(rel, sizeof(rel), "%s/%s", room, cJSON_GetObjectItem(a, "path")->valuestring);
		p = t_fixture(rel);
		CHECKF(lora_merge_set_add(&set, NULL, p, cJSON_GetObjectItem(a, "weight")->valuedouble,
					  &err) == 0, "%s", err.msg);
		free(p);
	}
	snprintf(out_dir, sizeof(out_dir), "%s/%s%s", tmpdir, name, device ? "-cuda" : "");
	o.device = device;
	o.gpu = lora_cuda_merge_hook(&hook, getenv("LORA_CUDA_PLUGIN"));
	o.base_dir = base;
	o.out_dir = out_dir;
	o.dtype = LORA_DT_INVALID;
	CHECKF(lora_merge(&o, &set, &st, &err) == 0, "%s: %s", name, err.msg);
	if (!err.msg[0])
		check_case(name, base, out_dir, &set);
	lora_merge_set_free(&set);
	free(base);
}

TEST(oracle_cases)
{
	bf16_total = bf16_exact = bf16_over1 = peft_over1 = peft_total = f32_total = f32_plain_over = 0;
	f32_worst = 0;
	char *path = t_fixture("merge/cases.json"), *text = NULL;
	struct lora_err err = { 0 };
	cJSON *root, *c;
	size_t len;

	CHECKF(lora_read_file(path, 1 << 20, &text, &len, &err) == 0, "%s", err.msg);
	free(path);
	if (!text)
		return;
	root = cJSON_Parse(text);
	free(text);
	CHECK(root != NULL);
	cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases"))
		run_case(c);
	cJSON_Delete(root);
	printf("  bf16: %llu values, %llu equal to the correctly rounded result (%.4f%%), %llu more "
	       "than 1 ulp away; vs peft fp32 merge: %llu of %llu more than 1 ulp away\n",
	       (unsigned long long)bf16_total, (unsigned long long)bf16_exact,
	       bf16_total ? 100.0 * bf16_exact / bf16_total : 0, (unsigned long long)bf16_over1,
	       (unsigned long long)peft_over1, (unsigned long long)peft_total);
	printf("  fp32: %llu values, %llu off by more than 1e-6 of |W'|; worst error %.3g of the "
	       "largest magnitude in play\n", (unsigned long long)f32_total,
	       (unsigned long long)f32_plain_over, f32_worst);
	CHECK(f32_total > 50000 && f32_plain_over == 0);
	CHECK(bf16_total > 100000);
	CHECKF(bf16_exact * 10000 >= bf16_total * 9999, "%llu of %llu exact",
	       (unsigned long long)bf16_exact, (unsigned long long)bf16_total);
	CHECK(bf16_over1 == 0);
	CHECK(peft_total > 100000 && peft_over1 == 0);
}

/*
 * tests/oracle/families.py: each family's adapter merged into its bf16 model
 * (Qwen3: q_norm/k_norm beside the targets stay byte for byte; Llama 3.2 tied
 * embeddings; Phi-3: LoRA on the fused qkv_proj and gate_up_proj, merged by
 * module name like any other linear), under the same bounds as above.
 */
TEST(family_cases)
{
	char *path = t_fixture("families/merge_cases.json"), *text = NULL;
	struct lora_err err = { 0 };
	cJSON *root, *c;
	size_t len;
	int n = 0;

	bf16_total = bf16_exact = bf16_over1 = peft_over1 = peft_total = 0;
	room = "families";
	expect_dir = "families/merge_expect";
	CHECKF(lora_read_file(path, 1 << 20, &text, &len, &err) == 0, "%s", err.msg);
	free(path);
	root = text ? cJSON_Parse(text) : NULL;
	free(text);
	CHECK(root != NULL);
	cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
		run_case(c);
		n++;
	}
	cJSON_Delete(root);
	room = "merge";
	expect_dir = "merge/expect";
	printf("  families: %d cases, bf16 %llu values, %llu correctly rounded, %llu more than 1 ulp away; "
	       "vs peft: %llu of %llu more than 1 ulp away\n", n, (unsigned long long)bf16_total,
	       (unsigned long long)bf16_exact, (unsigned long long)bf16_over1,
	       (unsigned long long)peft_over1, (unsigned long long)peft_total);
	CHECK(n >= 5 && bf16_total > 10000);
	CHECKF(bf16_exact * 10000 >= bf16_total * 9999, "%llu of %llu exact",
	       (unsigned long long)bf16_exact, (unsigned long long)bf16_total);
	CHECK(bf16_over1 == 0);
	CHECK(peft_total == bf16_total && peft_over1 == 0);
}

/* The fingerprint merge records equals lora_model_fingerprint over the same modules. */
TEST(fingerprint_matches_model)
{
	char *base = t_fixture("merge/base_bf16"), *ad = t_fixture("merge/ad_pattern");
	char out_dir[512], fp[72];
	struct lora_merge_set set = { 0 };
	struct lora_merge_opts o = { 0 };
	struct lora_merge_stats st;
	struct lora_merge_record rec;
	struct lora_model *m = NULL;
	struct lora_err err = { 0 };
	const char **mods;

	snprintf(out_dir, sizeof(out_dir), "%s/fp", tmpdir);
	CHECKF(lora_merge_set_add(&set, NULL, ad, 1.0, &err) == 0, "%s", err.msg);
	o.base_dir = base;
	o.out_dir = out_dir;
	CHECKF(lora_merge(&o, &set, &st, &err) == 0, "%s", err.msg);
	CHECKF(lora_merge_record_read(out_dir, &rec, &err) == 0, "%s", err.msg);
	CHECKF(lora_model_open(base, 1, &m, &err) == 0, "%s", err.msg);
	if (m && rec.n_tensors) {
		mods = calloc(rec.n_tensors, sizeof(char *));
		for (size_t i = 0; i < rec.n_tensors; i++)
			mods[i] = rec.modules[i];
		CHECKF(lora_model_fingerprint(m, mods, rec.n_tensors, fp, &err) == 0, "%s", err.msg);
		CHECKF(!strcmp(fp, rec.fingerprint), "%s vs %s", fp, rec.fingerprint);
		CHECK(!strcmp(fp, st.fingerprint));
		CHECK(rec.n_tensors == set.a[0].peft->n_modules);
		free(mods);
	}
	CHECK(rec.n_adapters == 1 && rec.adapters[0].weight == 1.0);
	lora_merge_record_free(&rec);
	if (m)
		lora_model_close(m);
	lora_merge_set_free(&set);
	free(base);
	free(ad);
}

int main(void)
{
	snprintf(tmpdir, sizeof(tmpdir), "%s/lora-test-merge.XXXXXX",
		 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	{
		/* Keep the fingerprint cache inside the test folder. */
		char c[300];
		snprintf(c, sizeof(c), "%s/cache", tmpdir);
		setenv("XDG_CACHE_HOME", c, 1);
	}
	RUN(oracle_cases);
	RUN(family_cases);
	RUN(fingerprint_matches_model);
	/* make check-cuda: the same cases and tolerances through cuBLAS. */
	if (getenv("LORA_TEST_CUDA")) {
		device = LORA_DEVICE_CUDA;
		printf("  with --device cuda:\n");
		RUN(oracle_cases);
	}
	lora_rm_rf(tmpdir, NULL);
	return t_done();
}
