/*
 * test_lowrank.c - factored-space arithmetic (libadapter/algebra/lowrank.h) against
 * the plain dense computation: form ΔW = s·B·A with three nested loops in
 * long double and compare.  Dense singular values come from LAPACK's dgesvd
 * on the formed matrix (a different route from the QR + small-core SVD under
 * test).  Random inputs from a fixed seed.
 *
 * Tolerances: every quantity here is computed in fp64 from O(100)-term sums
 * of O(1) values, so a correct implementation agrees to ~1e-13 relative;
 * 1e-9 leaves room for conditioning and still catches any real mistake
 * (a wrong index or a missing scale gives O(1) errors).
 */
#define _GNU_SOURCE
#include <stdint.h>

#include <lapacke.h>

#include "libadapter/algebra/lowrank.h"
#include "tests/t.h"

static uint64_t rng = 12345;

static double rnd(void)
{
	rng = rng * 6364136223846793005ull + 1442695040888963407ull;
	return ((double)(rng >> 11) / 9007199254740992.0) * 2 - 1;
}

static double *rand_mat(size_t n)
{
	double *m = malloc(n * sizeof(double));
	for (size_t i = 0; i < n; i++)
		m[i] = rnd();
	return m;
}

static struct lora_lowrank make(int out, int in, int r, double scale)
{
	struct lora_lowrank f = { r, out, in, scale, rand_mat((size_t)out * r), rand_mat((size_t)r * in) };
	return f;
}

/* dense ΔW [out, in] = s·B·A, long double accumulation */
static double *dense(const struct lora_lowrank *f)
{
	double *W = calloc((size_t)f->out * f->in, sizeof(double));
	for (int o = 0; o < f->out; o++)
		for (int i = 0; i < f->in; i++) {
			long double s = 0;
			for (int k = 0; k < f->r; k++)
				s += (long double)f->B[(size_t)o * f->r + k] * f->A[(size_t)k * f->in + i];
			W[(size_t)o * f->in + i] = (double)(s * f->scale);
		}
	return W;
}

static double fro(const double *W, size_t n)
{
	long double s = 0;
	for (size_t i = 0; i < n; i++)
		s += (long double)W[i] * W[i];
	return sqrt((double)s);
}

static double fro_diff(const double *X, const double *Y, size_t n)
{
	long double s = 0;
	for (size_t i = 0; i < n; i++)
		s += (long double)(X[i] - Y[i]) * (X[i] - Y[i]);
	return sqrt((double)s);
}

/* singular values of a dense row-major m×n matrix (copied) by dgesvd */
static double *dense_sv(const double *W, int m, int n)
{
	int k = m < n ? m : n;
	double *c = malloc((size_t)m * n * sizeof(double)), *s = calloc((size_t)k, sizeof(double));
	double *sup = calloc((size_t)k, sizeof(double));
	memcpy(c, W, (size_t)m * n * sizeof(double));
	LAPACKE_dgesvd(LAPACK_ROW_MAJOR, 'N', 'N', m, n, c, n, s, NULL, 1, NULL, 1, sup);
	free(c);
	free(sup);
	return s;
}

TEST(norm_and_inner_match_dense)
{
	struct lora_err err;
	struct lora_lowrank a = make(37, 23, 5, 1.7), b = make(37, 23, 3, -0.4);
	double *Wa = dense(&a), *Wb = dense(&b), n, ip;
	long double ref = 0;

	for (size_t i = 0; i < 37 * 23; i++)
		ref += (long double)Wa[i] * Wb[i];
	CHECK(lora_lowrank_norm(&a, &n, &err) == 0);
	CHECK_NEAR(n, fro(Wa, 37 * 23), 0, 1e-9);
	CHECK(lora_lowrank_inner(&a, &b, &ip, &err) == 0);
	CHECK_NEAR(ip, (double)ref, 0, 1e-9);
	free(Wa);
	free(Wb);
	lora_lowrank_free(&a);
	lora_lowrank_free(&b);
}

TEST(compare_matches_dense)
{
	struct lora_err err;
	struct lora_lowrank a = make(40, 31, 6, 2.0), b = make(40, 31, 4, 0.5);
	struct lora_lowrank_cmp c;
	double *Wa, *Wb, na, nb;
	long double ip = 0;

	/* make b partly aligned with a so that the cosine is far from 0 */
	for (int o = 0; o < 40; o++)
		for (int k = 0; k < 3; k++)
			b.B[o * 4 + k] = a.B[o * 6 + k] * 3;
	for (int k = 0; k < 3; k++)
		memcpy(b.A + k * 31, a.A + k * 31, 31 * sizeof(double));
	Wa = dense(&a);
	Wb = dense(&b);
	na = fro(Wa, 40 * 31);
	nb = fro(Wb, 40 * 31);
	for (size_t i = 0; i < 40 * 31; i++)
		ip += (long double)Wa[i] * Wb[i];
	CHECK(lora_lowrank_compare(&a, &b, &c, &err) == 0);
	CHECK_NEAR(c.norm_a, na, 0, 1e-9);
	CHECK_NEAR(c.norm_b, nb, 0, 1e-9);
	CHECK_NEAR(c.inner, (double)ip, 0, 1e-9);
	CHECK_NEAR(c.distance, fro_diff(Wa, Wb, 40 * 31), 0, 1e-9);
	CHECK_NEAR(c.cosine, (double)ip / (na * nb), 1e-12, 1e-9);
	CHECK(c.cosine > 0.2 && c.cosine < 0.99);
	CHECK(c.overlap > 0 && c.overlap < 1);
	CHECK(c.overlap_k == 4);
	free(Wa);
	free(Wb);
	lora_lowrank_free(&a);
	lora_lowrank_free(&b);
}

/* Same column space, different singular values and row space: overlap 1, cosine not 1. */
TEST(overlap_same_and_orthogonal_subspaces)
{
	struct lora_err err;
	struct lora_lowrank a = make(20, 12, 3, 1.0), b = make(20, 12, 3, 1.0), z = make(20, 12, 2, 1.0);
	struct lora_lowrank_cmp c;

	/* b.B = a.B · M for an invertible M: the same column space */
	for (int o = 0; o < 20; o++)
		for (int k = 0; k < 3; k++)
			b.B[o * 3 + k] = a.B[o * 3 + k] * (k + 1) + a.B[o * 3 + (k + 1) % 3];
	CHECK(lora_lowrank_compare(&a, &b, &c, &err) == 0);
	CHECK_NEAR(c.overlap, 1.0, 1e-9, 0);
	CHECK(c.cosine < 0.999);
	/* z.B lives in rows 10..19 only, a.B in rows 0..9: orthogonal column spaces */
	for (int o = 0; o < 20; o++) {
		for (int k = 0; k < 3; k++)
			a.B[o * 3 + k] = o < 10 ? a.B[o * 3 + k] : 0;
		for (int k = 0; k < 2; k++)
			z.B[o * 2 + k] = o >= 10 ? z.B[o * 2 + k] : 0;
	}
	CHECK(lora_lowrank_compare(&a, &z, &c, &err) == 0);
	CHECK_NEAR(c.overlap, 0.0, 1e-12, 0);
	CHECK_NEAR(c.cosine, 0.0, 1e-12, 0);
	CHECK(c.overlap_k == 2);
	lora_lowrank_free(&a);
	lora_lowrank_free(&b);
	lora_lowrank_free(&z);
}

/* Two nearly equal updates: d ≈ 1e-9·‖a‖, beyond what ‖a‖²+‖b‖²−2⟨a,b⟩ can resolve. */
TEST(distance_of_close_updates_is_accurate)
{
	struct lora_err err;
	struct lora_lowrank a = make(30, 25, 4, 1.0), b = make(30, 25, 4, 1.0);
	struct lora_lowrank_cmp c;
	double *Wa, *Wb, ref;

	memcpy(b.A, a.A, 4 * 25 * sizeof(double));
	for (int i = 0; i < 30 * 4; i++)
		b.B[i] = a.B[i] + 1e-9 * b.B[i];
	Wa = dense(&a);
	Wb = dense(&b);
	/* the dense difference: each element has error ≈ ε·|W| ≈ 1e-16, d ≈ 1e-8: ~1e-7 relative */
	ref = fro_diff(Wa, Wb, 30 * 25);
	CHECK(lora_lowrank_compare(&a, &b, &c, &err) == 0);
	CHECK_NEAR(c.distance, ref, 0, 1e-5);
	CHECK(c.distance > 0);
	/* identical factors: exactly 0 up to rounding in R */
	CHECK(lora_lowrank_compare(&a, &a, &c, &err) == 0);
	CHECK(c.distance <= 1e-13 * c.norm_a);
	CHECK_NEAR(c.cosine, 1.0, 1e-14, 0);
	free(Wa);
	free(Wb);
	lora_lowrank_free(&a);
	lora_lowrank_free(&b);
}

TEST(zero_update_has_no_cosine)
{
	struct lora_err err;
	struct lora_lowrank a = make(10, 8, 2, 1.0), z = make(10, 8, 2, 1.0);
	struct lora_lowrank_cmp c;

	memset(z.B, 0, 10 * 2 * sizeof(double));
	CHECK(lora_lowrank_compare(&a, &z, &c, &err) == 0);
	CHECK(c.norm_b == 0);
	CHECK(isnan(c.cosine));
	CHECK(isnan(c.overlap));
	CHECK_NEAR(c.distance, c.norm_a, 0, 1e-12);
	lora_lowrank_free(&a);
	lora_lowrank_free(&z);
}

TEST(non_finite_factors_are_an_error)
{
	struct lora_err err = { 0 };
	struct lora_lowrank a = make(10, 8, 2, 1.0), b = make(10, 8, 2, 1.0);
	struct lora_lowrank_cmp c;

	b.A[3] = NAN;
	CHECK(lora_lowrank_compare(&a, &b, &c, &err) == -1);
	CHECK(strstr(err.msg, "non-finite") != NULL);
	lora_lowrank_free(&a);
	lora_lowrank_free(&b);
}

TEST(singular_values_match_dense)
{
	struct lora_err err;
	/* tall, wide, and r > min(out, in) */
	int shapes[3][3] = { { 50, 20, 6 }, { 9, 40, 5 }, { 7, 11, 9 } };

	for (int t = 0; t < 3; t++) {
		struct lora_lowrank f = make(shapes[t][0], shapes[t][1], shapes[t][2], -1.5);
		int k = shapes[t][2] < shapes[t][0] ? shapes[t][2] : shapes[t][0];
		double *W = dense(&f), *ref, sv[16];
		k = k < shapes[t][1] ? k : shapes[t][1];
		ref = dense_sv(W, f.out, f.in);
		CHECK(lora_lowrank_svals(&f, sv, &err) == k);
		for (int i = 0; i < k; i++)
			CHECK_NEAR(sv[i], ref[i], 1e-12 * ref[0], 1e-9);
		free(W);
		free(ref);
		lora_lowrank_free(&f);
	}
}

TEST(truncation_is_the_best_rank_R_approximation)
{
	struct lora_err err;
	struct lora_lowrank f = make(45, 33, 7, 1.0);
	double *W = dense(&f), *ref = dense_sv(W, 45, 33), *Bo = calloc(45 * 9, 8), *Ao = calloc(9 * 33, 8);
	double sv[9], total, err2 = 0;
	struct lora_lowrank g = { 9, 45, 33, 1.0, Bo, Ao };
	double *Wg;

	/* R = 4 < rank: ‖W − W_4‖² = Σ_{i≥4} σ_i² (Eckart–Young) */
	g.r = 4;
	CHECK(lora_lowrank_truncate(f.B, f.A, 45, 7, 33, 4, Bo, Ao, sv, &total, &err) == 0);
	Wg = dense(&g);
	for (int i = 4; i < 7; i++)
		err2 += ref[i] * ref[i];
	CHECK_NEAR(fro_diff(W, Wg, 45 * 33), sqrt(err2), 1e-12, 1e-9);
	for (int i = 0; i < 4; i++)
		CHECK_NEAR(sv[i], ref[i], 0, 1e-9);
	CHECK_NEAR(total, fro(W, 45 * 33) * fro(W, 45 * 33), 0, 1e-9);
	free(Wg);
	/* R = 9 > rank 7: exact, the last two σ and factor columns zero */
	g.r = 9;
	CHECK(lora_lowrank_truncate(f.B, f.A, 45, 7, 33, 9, Bo, Ao, sv, NULL, &err) == 0);
	Wg = dense(&g);
	CHECK(fro_diff(W, Wg, 45 * 33) <= 1e-12 * fro(W, 45 * 33));
	CHECK(sv[7] == 0 && sv[8] == 0);
	for (int o = 0; o < 45; o++)
		CHECK(Bo[o * 9 + 8] == 0);
	free(Wg);
	free(W);
	free(ref);
	free(Bo);
	free(Ao);
	lora_lowrank_free(&f);
}

struct memrows {
	const double *D;
	uint64_t in;
	int calls;
};

static int mem_rows(void *ctx, uint64_t row0, uint64_t n, double *dst, struct lora_err *err)
{
	struct memrows *m = ctx;
	(void)err;
	memcpy(dst, m->D + row0 * m->in, n * m->in * sizeof(double));
	m->calls++;
	return 0;
}

TEST(randomized_svd_recovers_a_planted_low_rank_matrix)
{
	struct lora_err err;
	struct lora_lowrank f = make(60, 44, 5, 1.0);
	double *D = dense(&f), *ref = dense_sv(D, 60, 44);
	double Bo[60 * 5], Ao[5 * 44], sv[5], total;
	struct lora_lowrank g = { 5, 60, 44, 1.0, Bo, Ao };
	double *Wg;
	size_t blocks[2] = { 8 * 44 * 7, 1 << 20 };  /* 7 rows at a time, then all at once */

	for (int b = 0; b < 2; b++) {
		struct memrows m = { D, 44, 0 };
		struct lora_rsvd_params p = { 5, 10, 1, 42, blocks[b] };
		CHECK(lora_rsvd(60, 44, &p, mem_rows, &m, Bo, Ao, sv, &total, &err) == 0);
		Wg = dense(&g);
		CHECK(fro_diff(D, Wg, 60 * 44) <= 1e-9 * fro(D, 60 * 44));
		for (int i = 0; i < 5; i++)
			CHECK_NEAR(sv[i], ref[i], 0, 1e-9);
		CHECK_NEAR(total, fro(D, 60 * 44) * fro(D, 60 * 44), 0, 1e-12);
		/* 2 + 2·iters passes */
		CHECK(m.calls == (b == 0 ? 4 * 9 : 4));
		free(Wg);
	}
	free(D);
	free(ref);
	lora_lowrank_free(&f);
}

TEST(randomized_svd_of_zero_reads_once)
{
	struct lora_err err;
	double D[12 * 9] = { 0 }, Bo[12 * 2], Ao[2 * 9], sv[2], total = -1;
	struct memrows m = { D, 9, 0 };
	struct lora_rsvd_params p = { 2, 3, 2, 1, 1 << 20 };

	CHECK(lora_rsvd(12, 9, &p, mem_rows, &m, Bo, Ao, sv, &total, &err) == 0);
	CHECK(total == 0 && sv[0] == 0 && sv[1] == 0);
	CHECK(m.calls == 1);
}

TEST(effective_rank)
{
	double flat[4] = { 2, 2, 2, 2 }, one[3] = { 5, 0, 0 }, none[2] = { 0, 0 }, two[2] = { 3, 1 };

	CHECK_NEAR(lora_effective_rank(flat, 4), 4.0, 1e-12, 0);
	CHECK_NEAR(lora_effective_rank(one, 3), 1.0, 1e-12, 0);
	CHECK(lora_effective_rank(none, 2) == 0);
	/* p = (0.75, 0.25): exp(−0.75 ln 0.75 − 0.25 ln 0.25) */
	CHECK_NEAR(lora_effective_rank(two, 2), exp(-0.75 * log(0.75) - 0.25 * log(0.25)), 1e-12, 0);
}

TEST(to_f64_dtypes)
{
	/* 1.5, -2, 0.1 in each dtype, bytes little-endian */
	const unsigned char bf16[] = { 0xc0, 0x3f, 0x00, 0xc0, 0xcd, 0x3d };
	const unsigned char f16[] = { 0x00, 0x3e, 0x00, 0xc0, 0x66, 0x2e };
	float f32[3] = { 1.5f, -2.0f, 0.1f };
	double f64[3] = { 1.5, -2.0, 0.1 }, d[3];

	CHECK(lora_to_f64(d, bf16, LORA_DT_BF16, 3) == 0);
	CHECK(d[0] == 1.5 && d[1] == -2.0 && d[2] == 0.10009765625);
	CHECK(lora_to_f64(d, f16, LORA_DT_F16, 3) == 0);
	CHECK(d[0] == 1.5 && d[1] == -2.0 && d[2] == 0.0999755859375);
	CHECK(lora_to_f64(d, f32, LORA_DT_F32, 3) == 0);
	CHECK(d[0] == 1.5 && d[1] == -2.0 && d[2] == (double)0.1f);
	CHECK(lora_to_f64(d, f64, LORA_DT_F64, 3) == 0);
	CHECK(d[2] == 0.1);
	CHECK(lora_to_f64(d, f64, LORA_DT_I32, 1) == -1);
}

int main(void)
{
	RUN(norm_and_inner_match_dense);
	RUN(compare_matches_dense);
	RUN(overlap_same_and_orthogonal_subspaces);
	RUN(distance_of_close_updates_is_accurate);
	RUN(zero_update_has_no_cosine);
	RUN(non_finite_factors_are_an_error);
	RUN(singular_values_match_dense);
	RUN(truncation_is_the_best_rank_R_approximation);
	RUN(randomized_svd_recovers_a_planted_low_rank_matrix);
	RUN(randomized_svd_of_zero_reads_once);
	RUN(effective_rank);
	RUN(to_f64_dtypes);
	return t_done();
}
