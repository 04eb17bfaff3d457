/*
 * test_lowrank_oracle.c - diff, spectrum, combine and extract against what
 * numpy and peft computed on the same inputs (tests/oracle/diff_oracle.py
 * wrote tests/fixtures/diff/).
 *
 * Tolerance: the 1e-4 relative for every figure.  Both sides work
 * in fp64 from the same fp32 (or bf16) values, so a correct implementation
 * agrees to ~1e-12 (summation order; the overlap's Gram route loses at most
 * ε·κ(B)² ≈ 1e-13 here); the combined adapters are written in fp32, which
 * adds ≈ 6e-8.  A wrong index, scale or sign gives errors of order 1.
 * Exact cases (self-diff, negation) are checked at 1e-12.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "libadapter/algebra/combine.h"
#include "libadapter/algebra/diff.h"
#include "libadapter/algebra/extract.h"
#include "libadapter/base/fsutil.h"
#include "libadapter/algebra/lowrank.h"
#include "libadapter/format/modeldir.h"
#include "libadapter/format/peft.h"
#include "tests/t.h"
#include "tests/unit/t_json.h"

#define REL 1e-4

static char tmpdir[256];

static struct lora_peft *open_fixture(const char *name)
{
	struct lora_err err;
	struct lora_peft *p = NULL;
	char rel[128], *path;

	snprintf(rel, sizeof(rel), "diff/adapters/%s", name);
	path = t_fixture(rel);
	if (lora_peft_open(path, &p, &err) < 0)
		fprintf(stderr, "  %s\n", err.msg);
	free(path);
	return p;
}

/* expected null <-> NAN; else relative check */
static void check_fig(const char *what, const char *mod, double got, const cJSON *exp)
{
	if (cJSON_IsNull(exp)) {
		CHECKF(isnan(got), "%s %s: expected null, got %.9g", mod, what, got);
		return;
	}
	CHECKF(cJSON_IsNumber(exp) && fabs(got - exp->valuedouble) <= REL * fabs(exp->valuedouble) + 1e-12,
	       "%s %s: got %.12g, numpy %.12g", mod, what, got, cJSON_IsNumber(exp) ? exp->valuedouble : NAN);
}

static const struct lora_diff_module *find_mod(const struct lora_diff *d, const char *name)
{
	for (size_t i = 0; i < d->n_modules; i++)
		if (!strcmp(d->modules[i].name, name))
			return &d->modules[i];
	return NULL;
}

/* Run a diff of two fixtures and compare every figure with the numpy file. */
static int diff_pair(const char *x, const char *y, struct lora_diff *d, struct lora_peft **pa,
		     struct lora_peft **pb)
{
	struct lora_err err;
	struct lora_diff_side a = { 0 }, b = { 0 };
	char rel[128];
	cJSON *e, *m, *s;

	*pa = open_fixture(x);
	*pb = open_fixture(y);
	snprintf(rel, sizeof(rel), "diff/expected/diff_%s_%s.json", x, y);
	e = t_read_json_fixture(rel);
	CHECK(*pa && *pb && e);
	if (!*pa || !*pb || !e)
		return -1;
	a.peft = *pa;
	a.label = x;
	b.peft = *pb;
	b.label = y;
	if (lora_diff_run(&a, &b, 2, d, &err) < 0) {
		CHECKF(0, "%s", err.msg);
		cJSON_Delete(e);
		return -1;
	}
	CHECK((size_t)cJSON_GetArraySize(cJSON_GetObjectItem(e, "modules")) == d->n_modules);
	cJSON_ArrayForEach(m, cJSON_GetObjectItem(e, "modules")) {
		const char *name = cJSON_GetObjectItem(m, "name")->valuestring;
		const char *in = cJSON_GetObjectItem(m, "in")->valuestring;
		const struct lora_diff_module *dm = find_mod(d, name);
		CHECKF(dm != NULL, "module %s missing", name);
		if (!dm)
			continue;
		CHECK(dm->where == (!strcmp(in, "both") ? LORA_DIFF_BOTH :
				    !strcmp(in, "a") ? LORA_DIFF_ONLY_A : LORA_DIFF_ONLY_B));
		check_fig("norm_a", name, dm->cmp.norm_a, cJSON_GetObjectItem(m, "norm_a"));
		check_fig("norm_b", name, dm->cmp.norm_b, cJSON_GetObjectItem(m, "norm_b"));
		check_fig("cosine", name, dm->cmp.cosine, cJSON_GetObjectItem(m, "cosine"));
		check_fig("overlap", name, dm->cmp.overlap, cJSON_GetObjectItem(m, "overlap"));
		/* a distance of 0 (self-diff): relative to the norm */
		if (cJSON_GetObjectItem(m, "distance")->valuedouble == 0)
			CHECK(dm->cmp.distance <= 1e-12 * dm->cmp.norm_a);
		else
			check_fig("distance", name, dm->cmp.distance, cJSON_GetObjectItem(m, "distance"));
	}
	s = cJSON_GetObjectItem(e, "summary");
	check_fig("summary norm_a", "-", d->norm_a, cJSON_GetObjectItem(s, "norm_a"));
	check_fig("summary norm_b", "-", d->norm_b, cJSON_GetObjectItem(s, "norm_b"));
	if (cJSON_GetObjectItem(s, "distance")->valuedouble > 0)
		check_fig("summary distance", "-", d->distance, cJSON_GetObjectItem(s, "distance"));
	check_fig("summary cosine", "-", d->cosine, cJSON_GetObjectItem(s, "cosine"));
	check_fig("summary weighted_cosine", "-", d->weighted_cosine, cJSON_GetObjectItem(s, "weighted_cosine"));
	check_fig("summary mean_overlap", "-", d->mean_overlap, cJSON_GetObjectItem(s, "mean_overlap"));
	CHECK((size_t)cJSON_GetArraySize(cJSON_GetObjectItem(s, "only_a")) == d->n_only_a);
	CHECK((size_t)cJSON_GetArraySize(cJSON_GetObjectItem(s, "only_b")) == d->n_only_b);
	cJSON_Delete(e);
	return 0;
}

static void close_pair(struct lora_diff *d, struct lora_peft *a, struct lora_peft *b)
{
	lora_diff_free(d);
	lora_peft_close(a);
	lora_peft_close(b);
}

TEST(diff_figures_match_numpy)
{
	const char *pairs[][2] = { { "a", "b" }, { "a", "d" }, { "b16", "a" }, { "a", "zero" } };

	for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
		struct lora_diff d;
		struct lora_peft *a = NULL, *b = NULL;
		if (diff_pair(pairs[i][0], pairs[i][1], &d, &a, &b) == 0) {
			CHECK(d.n_identical == 0);
			lora_diff_free(&d);
		}
		lora_peft_close(a);
		lora_peft_close(b);
	}
}

TEST(self_diff_is_exact)
{
	struct lora_diff d;
	struct lora_peft *a = NULL, *b = NULL;

	if (diff_pair("a", "a", &d, &a, &b) < 0)
		return;
	CHECK(d.n_identical == d.n_modules && d.n_common == d.n_modules);
	for (size_t i = 0; i < d.n_modules; i++) {
		CHECK(d.modules[i].cmp.distance == 0);
		CHECK(d.modules[i].cmp.cosine == 1);
	}
	CHECK(d.distance == 0);
	CHECK_NEAR(d.cosine, 1, 1e-12, 0);
	for (size_t i = 0; i < d.n_settings; i++)
		CHECK(d.settings[i].same);
	close_pair(&d, a, b);
}

/* The same ΔW with alpha doubled and B halved, stored as F64: not the same bytes. */
TEST(same_update_other_factorisation)
{
	struct lora_diff d;
	struct lora_peft *a = NULL, *b = NULL;
	int alpha_differs = 0;

	if (diff_pair("a", "refac", &d, &a, &b) < 0)
		return;
	CHECK(d.n_identical == 0);
	for (size_t i = 0; i < d.n_modules; i++) {
		CHECK(d.modules[i].cmp.distance <= 1e-12 * d.modules[i].cmp.norm_a);
		CHECK_NEAR(d.modules[i].cmp.cosine, 1, 1e-12, 0);
		CHECK_NEAR(d.modules[i].cmp.overlap, 1, 1e-9, 0);
	}
	for (size_t i = 0; i < d.n_settings; i++)
		if (!strcmp(d.settings[i].key, "lora_alpha"))
			alpha_differs = !d.settings[i].same;
	CHECK(alpha_differs);
	close_pair(&d, a, b);
}

TEST(negation_has_cosine_minus_one)
{
	struct lora_diff d;
	struct lora_peft *a = NULL, *b = NULL;

	if (diff_pair("a", "neg", &d, &a, &b) < 0)
		return;
	for (size_t i = 0; i < d.n_modules; i++) {
		CHECK_NEAR(d.modules[i].cmp.cosine, -1, 1e-12, 0);
		CHECK_NEAR(d.modules[i].cmp.distance, 2 * d.modules[i].cmp.norm_a, 0, 1e-12);
		CHECK_NEAR(d.modules[i].cmp.overlap, 1, 1e-9, 0);
	}
	CHECK_NEAR(d.cosine, -1, 1e-12, 0);
	close_pair(&d, a, b);
}

TEST(other_modules_are_listed_only_in_one)
{
	struct lora_diff d;
	struct lora_peft *a = NULL, *c = NULL;

	if (diff_pair("a", "c", &d, &a, &c) < 0)
		return;
	/* a: 7 projections × 2 layers; c: q, v × 2 layers + lm_head */
	CHECK(d.n_common == 4 && d.n_only_a == 10 && d.n_only_b == 1);
	CHECK(find_mod(&d, "lm_head") && find_mod(&d, "lm_head")->where == LORA_DIFF_ONLY_B);
	CHECK(find_mod(&d, "model.layers.1.mlp.down_proj")->where == LORA_DIFF_ONLY_A);
	close_pair(&d, a, c);
}

TEST(spectrum_matches_numpy)
{
	const char *names[] = { "a", "b", "b16" };

	for (int n = 0; n < 3; n++) {
		struct lora_err err;
		struct lora_peft *p = open_fixture(names[n]);
		char rel[64];
		cJSON *e;
		snprintf(rel, sizeof(rel), "diff/expected/spectrum_%s.json", names[n]);
		e = t_read_json_fixture(rel);
		CHECK(p && e);
		for (size_t i = 0; p && e && i < p->n_modules; i++) {
			const struct lora_peft_module *m = &p->modules[i];
			cJSON *em = cJSON_GetObjectItem(e, m->name), *sv = cJSON_GetObjectItem(em, "sv");
			double *s = calloc((size_t)m->r, sizeof(double));
			CHECK(lora_module_spectrum(m, s, &err) == 0);
			for (int k = 0; k < m->r; k++) {
				double ref = cJSON_GetArrayItem(sv, k)->valuedouble;
				/* past the rank numpy finds rounding noise, we report 0 */
				CHECKF(fabs(s[k] - ref) <= REL * fabs(ref) + 1e-9 * s[0], "%s σ%d %.9g vs %.9g",
				       m->name, k, s[k], ref);
			}
			CHECK_NEAR(lora_effective_rank(s, m->r),
				   cJSON_GetObjectItem(em, "effective_rank")->valuedouble, 0, REL);
			free(s);
		}
		cJSON_Delete(e);
		lora_peft_close(p);
	}
}

/* ------------------------------------------------------------ combine */

static double *load64(const struct lora_st_tensor *t)
{
	struct lora_err err;
	return t ? lora_tensor_f64(t, &err) : NULL;
}

/* dense B [o, r] · A [r, i] */
static double *prod(const double *B, const double *A, uint64_t o, uint64_t r, uint64_t in)
{
	double *W = calloc(o * in, sizeof(double));
	for (uint64_t x = 0; x < o; x++)
		for (uint64_t k = 0; k < r; k++)
			for (uint64_t y = 0; y < in; y++)
				W[x * in + y] += B[x * r + k] * A[k * in + y];
	return W;
}

static double rel_err(const double *x, const double *ref, size_t n)
{
	double d = 0, s = 0;
	for (size_t i = 0; i < n; i++) {
		d += (x[i] - ref[i]) * (x[i] - ref[i]);
		s += ref[i] * ref[i];
	}
	return s > 0 ? sqrt(d / s) : sqrt(d);
}

static void combine_case(const char *cname, const char *x, const char *y, double wx, double wy,
			 int method, int rank)
{
	struct lora_err err;
	struct lora_peft *px = open_fixture(x), *py = open_fixture(y), *got = NULL;
	struct lora_combine_input in[2] = { { px, wx, x, NULL, NULL }, { py, wy, y, NULL, NULL } };
	struct lora_combine_params p = { method, rank, LORA_DT_F32, NULL };
	struct lora_st *exp = NULL;
	char out[320], rel[128], *ep;
	cJSON *meta;
	size_t n_exp_pairs = 0;

	snprintf(out, sizeof(out), "%s/%s", tmpdir, cname);
	snprintf(rel, sizeof(rel), "diff/expected/combine_%s.safetensors", cname);
	ep = t_fixture(rel);
	snprintf(rel, sizeof(rel), "diff/expected/combine_%s.json", cname);
	meta = t_read_json_fixture(rel);
	CHECK(px && py && meta && lora_st_open(ep, &exp, &err) == 0);
	if (!px || !py || !meta || !exp)
		goto out;
	if (lora_combine(in, 2, &p, out, NULL, &err) < 0) {
		CHECKF(0, "%s", err.msg);
		goto out;
	}
	if (lora_peft_open(out, &got, &err) < 0) {
		CHECKF(0, "%s", err.msg);
		goto out;
	}
	CHECK(got->cfg.r == (int)cJSON_GetObjectItem(meta, "r")->valuedouble);
	CHECK(got->cfg.lora_alpha == cJSON_GetObjectItem(meta, "lora_alpha")->valuedouble);
	CHECK(lora_st_meta(got->st, "lora.provenance") != NULL);
	for (size_t i = 0; i < exp->n_tensors; i++) {
		const struct lora_st_tensor *ea = &exp->tensors[i], *eb, *ga, *gb;
		char key[512];
		size_t kl = strlen(ea->name);
		double *EA, *EB, *GA, *GB, *WE, *WG;
		cJSON *sv;
		const struct lora_peft_module *gm;
		if (kl < 31 || strcmp(ea->name + kl - 14, ".lora_A.weight"))
			continue;
		n_exp_pairs++;
		snprintf(key, sizeof(key), "%.*slora_B.weight", (int)(kl - 13), ea->name);
		eb = lora_st_find(exp, key);
		snprintf(key, sizeof(key), "%.*s", (int)(kl - 31), ea->name + 17);  /* "base_model.model." 17, ".lora_A.weight" 14 */
		gm = lora_peft_find(got, key);
		CHECKF(gm != NULL, "%s: no module %s", cname, key);
		if (!gm || !eb)
			continue;
		ga = gm->A;
		gb = gm->B;
		CHECK(gm->scale == 1.0);
		CHECK(ga->shape[0] == ea->shape[0] && gb->shape[1] == eb->shape[1]);
		EA = load64(ea), EB = load64(eb), GA = load64(ga), GB = load64(gb);
		if (method != LORA_COMBINE_SVD) {
			/* same layout as peft: the factors themselves agree */
			CHECKF(rel_err(GA, EA, ea->nelem) <= REL, "%s %s lora_A", cname, key);
			CHECKF(rel_err(GB, EB, eb->nelem) <= REL, "%s %s lora_B", cname, key);
		}
		WE = prod(EB, EA, gm->out, ea->shape[0], gm->in);
		WG = prod(GB, GA, gm->out, ga->shape[0], gm->in);
		CHECKF(rel_err(WG, WE, gm->out * gm->in) <= REL, "%s %s ΔW", cname, key);
		if (method != LORA_COMBINE_LINEAR) {
			/* cat and svd: the exact (truncated) sum: the same singular values */
			struct lora_lowrank f = { (int)ga->shape[0], (int)gm->out, (int)gm->in, 1.0, GB, GA };
			double s[16] = { 0 };
			int k = lora_lowrank_svals(&f, s, &err);
			sv = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(meta, "modules"), key), "sv");
			for (int j = 0; j < k && j < cJSON_GetArraySize(sv); j++) {
				double ref = cJSON_GetArrayItem(sv, j)->valuedouble;
				CHECKF(fabs(s[j] - ref) <= REL * ref + 1e-9 * s[0], "%s %s σ%d %.9g vs %.9g",
				       cname, key, j, s[j], ref);
			}
		}
		free(EA), free(EB), free(GA), free(GB), free(WE), free(WG);
	}
	CHECK(n_exp_pairs > 0 && n_exp_pairs == got->n_modules);
out:
	free(ep);
	cJSON_Delete(meta);
	lora_st_close(exp);
	lora_peft_close(got);
	lora_peft_close(px);
	lora_peft_close(py);
}

TEST(combine_cat_equals_peft)
{
	combine_case("cat_ab", "a", "b", 0.7, -0.4, LORA_COMBINE_CAT, 0);
}

TEST(combine_svd_equals_peft)
{
	combine_case("svd_ab", "a", "b", 0.7, -0.4, LORA_COMBINE_SVD, 5);
}

TEST(combine_linear_equals_peft)
{
	combine_case("linear_ad", "a", "d", 0.6, -0.5, LORA_COMBINE_LINEAR, 0);
}

/* disjoint modules: the union, zero-padded like peft, lm_head's saved base layer copied */
TEST(combine_cat_disjoint_equals_peft)
{
	struct lora_err err;
	struct lora_peft *got = NULL;
	char out[320];

	combine_case("cat_ac", "a", "c", 1.0, 1.0, LORA_COMBINE_CAT, 0);
	snprintf(out, sizeof(out), "%s/cat_ac", tmpdir);
	CHECK(lora_peft_open(out, &got, &err) == 0);
	if (got) {
		CHECK(got->n_modules == 15);
		CHECK(got->n_extra == 1 && !strcmp(got->extra[0]->name, "base_model.model.lm_head.base_layer.weight"));
	}
	lora_peft_close(got);
}

TEST(combine_linear_refuses_unequal_ranks)
{
	struct lora_err err = { 0 };
	struct lora_peft *a = open_fixture("a"), *b = open_fixture("b");
	struct lora_combine_input in[2] = { { a, 1, "a", NULL, NULL }, { b, 1, "b", NULL, NULL } };
	struct lora_combine_params p = { LORA_COMBINE_LINEAR, 0, LORA_DT_F32, NULL };
	char out[320];

	snprintf(out, sizeof(out), "%s/linear_ab", tmpdir);
	CHECK(lora_combine(in, 2, &p, out, NULL, &err) == -1);
	CHECK(strstr(err.msg, "equal rank") != NULL);
	CHECK(!lora_is_dir(out));
	lora_peft_close(a);
	lora_peft_close(b);
}

/* ------------------------------------------------------------ extract */

static void extract_case(int R)
{
	struct lora_err err;
	struct lora_extract_params p = { .rank = R, .oversample = -1, .iters = -1, .seed = 3 };
	struct lora_extract_result res = { 0 };
	struct lora_peft *got = NULL;
	struct lora_st *fac = NULL;
	struct lora_model *base = NULL;
	char *bdir = t_fixture("diff/extract/base"), *tdir = t_fixture("diff/extract/tuned");
	char *fp = t_fixture("diff/expected/extract.safetensors"), out[320], key[256], fpr[72];
	cJSON *e = t_read_json_fixture("diff/expected/extract.json"), *m, *u;
	const char *written[8];
	size_t nw = 0;

	snprintf(out, sizeof(out), "%s/extract_r%d", tmpdir, R);
	CHECK(e && lora_st_open(fp, &fac, &err) == 0);
	if (!e || !fac)
		goto out;
	if (lora_extract(bdir, tdir, &p, out, &res, &err) < 0 || lora_peft_open(out, &got, &err) < 0) {
		CHECKF(0, "%s", err.msg);
		goto out;
	}
	CHECK(res.n_written == 4 && got->n_modules == 4 && got->cfg.r == R);
	cJSON_ArrayForEach(m, cJSON_GetObjectItem(e, "modules")) {
		const struct lora_peft_module *gm = lora_peft_find(got, m->string);
		double *A, *B, *EA, *EB, *W, *WE, energy = NAN;
		CHECKF(gm != NULL, "no module %s", m->string);
		if (!gm)
			continue;
		written[nw++] = gm->name;
		snprintf(key, sizeof(key), "%s.r%d.B", m->string, R);
		EB = load64(lora_st_find(fac, key));
		snprintf(key, sizeof(key), "%s.r%d.A", m->string, R);
		EA = load64(lora_st_find(fac, key));
		A = load64(gm->A);
		B = load64(gm->B);
		W = prod(B, A, gm->out, (uint64_t)R, gm->in);
		WE = prod(EB, EA, gm->out, (uint64_t)R, gm->in);
		CHECKF(rel_err(W, WE, gm->out * gm->in) <= REL, "%s: rank-%d truncation", m->string, R);
		if (R == 3) {
			/* the planted difference itself (stored fp32 weights: ≈1e-7 off) */
			double *P = load64(lora_st_find(fac, (snprintf(key, sizeof(key), "%s.planted", m->string), key)));
			CHECKF(rel_err(W, P, gm->out * gm->in) <= REL, "%s: planted", m->string);
			free(P);
		}
		for (size_t i = 0; i < res.n_modules; i++)
			if (!strcmp(res.modules[i].name, m->string))
				energy = res.modules[i].energy;
		snprintf(key, sizeof(key), "energy_r%d", R);
		CHECK_NEAR(energy, cJSON_GetObjectItem(m, key)->valuedouble, 0, REL);
		if (R == 3)
			CHECK(energy > 0.9999);
		free(A), free(B), free(EA), free(EB), free(W), free(WE);
	}
	cJSON_ArrayForEach(u, cJSON_GetObjectItem(e, "unchanged"))
		CHECKF(lora_peft_find(got, u->valuestring) == NULL, "%s should be left out", u->valuestring);
	/* the streamed fingerprint is the one model.h defines */
	CHECK(lora_model_open(bdir, 0, &base, &err) == 0);
	if (base && lora_model_fingerprint(base, written, nw, fpr, &err) == 0)
		CHECK(!strcmp(fpr, res.base_fingerprint));
out:
	lora_model_close(base);
	lora_extract_result_free(&res);
	lora_peft_close(got);
	lora_st_close(fac);
	cJSON_Delete(e);
	free(bdir);
	free(tdir);
	free(fp);
}

TEST(extract_recovers_planted_rank)
{
	extract_case(3);
}

TEST(extract_truncates_below_planted_rank)
{
	extract_case(2);
}

TEST(extract_targets_and_refusals)
{
	struct lora_err err = { 0 };
	const char *only_k[] = { "k_proj" }, *only_q[] = { "self_attn.q_proj" };
	struct lora_extract_params p = { .rank = 2, .oversample = -1, .iters = -1, .targets = only_k, .n_targets = 1 };
	char *bdir = t_fixture("diff/extract/base"), *tdir = t_fixture("diff/extract/tuned"), out[320];
	struct lora_extract_result res = { 0 };

	/* k_proj did not change: nothing to write, no folder */
	snprintf(out, sizeof(out), "%s/extract_k", tmpdir);
	CHECK(lora_extract(bdir, tdir, &p, out, NULL, &err) == -1);
	CHECK(strstr(err.msg, "same values") != NULL);
	CHECK(!lora_is_dir(out));
	p.targets = only_q;
	snprintf(out, sizeof(out), "%s/extract_q", tmpdir);
	CHECK(lora_extract(bdir, tdir, &p, out, &res, &err) == 0);
	CHECK(res.n_modules == 1 && res.n_written == 1);
	lora_extract_result_free(&res);
	/* the folder exists now: refused, left as it was */
	CHECK(lora_extract(bdir, tdir, &p, out, NULL, &err) == -1);
	CHECK(strstr(err.msg, "already exists") != NULL);
	free(bdir);
	free(tdir);
}

int main(void)
{
	snprintf(tmpdir, sizeof(tmpdir), "%s/lora-lowrank-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (!mkdtemp(tmpdir))
		return 1;
	RUN(diff_figures_match_numpy);
	RUN(self_diff_is_exact);
	RUN(same_update_other_factorisation);
	RUN(negation_has_cosine_minus_one);
	RUN(other_modules_are_listed_only_in_one);
	RUN(spectrum_matches_numpy);
	RUN(combine_cat_equals_peft);
	RUN(combine_svd_equals_peft);
	RUN(combine_linear_equals_peft);
	RUN(combine_cat_disjoint_equals_peft);
	RUN(combine_linear_refuses_unequal_ranks);
	RUN(extract_recovers_planted_rank);
	RUN(extract_truncates_below_planted_rank);
	RUN(extract_targets_and_refusals);
	lora_rm_rf(tmpdir, NULL);
	return t_done();
}
