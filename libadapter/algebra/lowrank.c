/*
 * lowrank.c - factored-space arithmetic on LoRA updates ΔW = s·B·A.
 *
 * Nothing here forms an out×in matrix.  Products of factors reduce to r×r
 * Gram matrices (BLAS level 3), spectra to QR of the factors plus an SVD of
 * an r×r core (LAPACK), and the randomized SVD of a full difference streams
 * it a block of rows at a time.
 *
 * A note on layouts: LAPACK wants column-major, and a row-major [m, n] array
 * is the column-major [n, m] array of its transpose.  So a row-major A [K, in]
 * is Aᵀ [in, K] in column-major, and QR of Aᵀ runs on it in place; a row-major
 * B [out, K] is Bᵀ in column-major, and the LQ of Bᵀ gives B = Q_B·R_B with
 * R_B = Lᵀ, again in place.
 */
#include "libadapter/algebra/lowrank.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#include <lapacke.h>

#include "libadapter/base/dtype.h"

/* ------------------------------------------------------------- loading */

/*
 * These loops are most of a diff's time after BLAS: O3 lets GCC vectorise
 * them, and target_clones picks an AVX2 or AVX-512 build at load time where
 * the CPU has one (plain x86-64 otherwise).
 */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FAST_LOOP __attribute__((optimize("O3"), target_clones("avx512f", "avx2", "default")))
#else
#define FAST_LOOP __attribute__((optimize("O3")))
#endif

FAST_LOOP static void bf16_to_f64(double *dst, const unsigned char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint16_t h;
		uint32_t u;
		float f;
		memcpy(&h, s + 2 * i, 2);
		u = (uint32_t)h << 16;  /* bf16 is the top half of an fp32 */
		memcpy(&f, &u, 4);
		dst[i] = f;
	}
}

FAST_LOOP static void f32_to_f64(double *dst, const unsigned char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		float f;
		memcpy(&f, s + 4 * i, 4);
		dst[i] = f;
	}
}

int lora_to_f64(double *dst, const void *src, enum lora_dtype dt, size_t n)
{
	const unsigned char *s = src;

	switch (dt) {
	case LORA_DT_F64:
		memcpy(dst, s, n * sizeof(double));
		return 0;
	case LORA_DT_F32:
		f32_to_f64(dst, s, n);
		return 0;
	case LORA_DT_BF16:
		bf16_to_f64(dst, s, n);
		return 0;
	case LORA_DT_F16:
		for (size_t i = 0; i < n; i++) {
			uint16_t h;
			memcpy(&h, s + 2 * i, 2);
			dst[i] = lora_f16_to_f32(h);
		}
		return 0;
	default:
		return -1;
	}
}

double *lora_tensor_f64(const struct lora_st_tensor *t, struct lora_err *err)
{
	double *d;

	if (!lora_dtype_is_float(t->dtype)) {
		lora_errf(err, "tensor '%s' has dtype %s, not a float type", t->name,
			  lora_dtype_name(t->dtype));
		return NULL;
	}
	if (t->nelem > SIZE_MAX / sizeof(double)) {
		lora_errf(err, "tensor '%s' is too large", t->name);
		return NULL;
	}
	d = malloc(t->nelem ? t->nelem * sizeof(double) : sizeof(double));
	if (!d) {
		lora_errf(err, "out of memory for tensor '%s'", t->name);
		return NULL;
	}
	lora_to_f64(d, t->data, t->dtype, t->nelem);
	return d;
}

int lora_lowrank_load(const struct lora_peft_module *m, struct lora_lowrank *f, struct lora_err *err)
{
	memset(f, 0, sizeof(*f));
	if (m->out == 0 || m->in == 0 || m->out > INT_MAX || m->in > INT_MAX || m->r <= 0)
		return lora_errf(err, "module '%s' has an unusable shape [%llu, %llu]", m->name,
				 (unsigned long long)m->out, (unsigned long long)m->in);
	f->r = m->r;
	f->out = (int)m->out;
	f->in = (int)m->in;
	f->scale = m->scale;
	if (!(f->B = lora_tensor_f64(m->B, err)) || !(f->A = lora_tensor_f64(m->A, err))) {
		lora_lowrank_free(f);
		return -1;
	}
	return 0;
}

void lora_lowrank_free(struct lora_lowrank *f)
{
	free(f->A);
	free(f->B);
	f->A = f->B = NULL;
}

/* ----------------------------------------------------------- small help */

static double *dalloc(size_t n, struct lora_err *err)
{
	double *p;

	if (n > SIZE_MAX / sizeof(double)) {
		lora_errf(err, "matrix too large");
		return NULL;
	}
	p = calloc(n ? n : 1, sizeof(double));
	if (!p)
		lora_errf(err, "out of memory");
	return p;
}

static int lapack_fail(const char *what, lapack_int info, struct lora_err *err)
{
	if (info < 0)
		return lora_errf(err, "%s: bad argument %d (non-finite values in the input?)", what,
				 (int)-info);
	return lora_errf(err, "%s did not converge", what);
}

/* Fill the lower triangle of a row-major n×n matrix from its upper one. */
static void mirror_upper(double *G, int n)
{
	for (int i = 0; i < n; i++)
		for (int j = i + 1; j < n; j++)
			G[(size_t)j * n + i] = G[(size_t)i * n + j];
}

/* G [r, r] = BᵀB for B [out, r]. */
static void gram_B(const double *B, int out, int r, double *G)
{
	cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, r, out, 1.0, B, r, 0.0, G, r);
	mirror_upper(G, r);
}

/* G [r, r] = AAᵀ for A [r, in]. */
static void gram_A(const double *A, int r, int in, double *G)
{
	cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, r, in, 1.0, A, in, 0.0, G, r);
	mirror_upper(G, r);
}

static double dot(const double *x, const double *y, size_t n)
{
	double s = 0;

	for (size_t i = 0; i < n; i++)
		s += x[i] * y[i];
	return s;
}

/* ------------------------------------------------------ stacked Grams */

/*
 * The factors are converted to fp64 a block at a time into a buffer that
 * stays in cache, and each block is added to the Gram with one syrk: no
 * fp64 copy of a whole factor is ever made.
 */
#define GRAM_BLOCK_BYTES (512u << 10)

struct src {                          /* one factor, stored or in memory */
	const unsigned char *data;
	enum lora_dtype dt;
	size_t esize;                 /* bytes per element */
};

static void src_rows(const struct src *s, size_t off, size_t n, double *dst)
{
	lora_to_f64(dst, s->data + off * s->esize, s->dt, n);
}

static int grams(const struct src *B, const struct src *A, const int *r, int m, uint64_t out,
		 uint64_t in, double *GB, double *GA, struct lora_err *err)
{
	int K = 0;
	size_t nb;
	double *buf;

	for (int i = 0; i < m; i++)
		K += r[i];
	nb = GRAM_BLOCK_BYTES / ((size_t)K * sizeof(double));
	nb = nb < 8 ? 8 : nb;
	if (!(buf = dalloc(nb * K, err)))
		return -1;
	memset(GB, 0, (size_t)K * K * sizeof(double));
	memset(GA, 0, (size_t)K * K * sizeof(double));
	/* GB += blkᵀ·blk over blocks of rows of [B_1 … B_m] */
	for (uint64_t r0 = 0; r0 < out; r0 += nb) {
		size_t n = out - r0 < nb ? (size_t)(out - r0) : nb;
		for (size_t j = 0; j < n; j++)
			for (int i = 0, off = 0; i < m; off += r[i], i++)
				src_rows(&B[i], (size_t)(r0 + j) * r[i], (size_t)r[i], buf + j * K + off);
		cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, K, (int)n, 1.0, buf, K, 1.0, GB, K);
	}
	/* GA += blk·blkᵀ over blocks of columns of [A_1; …; A_m] */
	for (uint64_t c0 = 0; c0 < in; c0 += nb) {
		size_t n = in - c0 < nb ? (size_t)(in - c0) : nb;
		for (int i = 0, row = 0; i < m; row += r[i], i++)
			for (int j = 0; j < r[i]; j++)
				src_rows(&A[i], (size_t)j * in + c0, n, buf + (size_t)(row + j) * n);
		cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, K, (int)n, 1.0, buf, (int)n, 1.0, GA,
			    K);
	}
	mirror_upper(GB, K);
	mirror_upper(GA, K);
	free(buf);
	return 0;
}

int lora_grams_tensors(const struct lora_peft_module *const *mods, int m, double *GB, double *GA,
		       struct lora_err *err)
{
	struct src B[8], A[8];
	int r[8];

	if (m < 1 || m > 8)
		return lora_errf(err, "grams: %d factors (1 to 8)", m);
	for (int i = 0; i < m; i++) {
		const struct lora_peft_module *x = mods[i];
		if (!lora_dtype_is_float(x->A->dtype) || !lora_dtype_is_float(x->B->dtype))
			return lora_errf(err, "module '%s' is not a float tensor", x->name);
		if (x->out != mods[0]->out || x->in != mods[0]->in || x->r <= 0 ||
		    x->out > INT_MAX || x->in > INT_MAX)
			return lora_errf(err, "module '%s' has an unusable shape", x->name);
		B[i] = (struct src){ x->B->data, x->B->dtype, lora_dtype_bits(x->B->dtype) / 8 };
		A[i] = (struct src){ x->A->data, x->A->dtype, lora_dtype_bits(x->A->dtype) / 8 };
		r[i] = x->r;
	}
	return grams(B, A, r, m, mods[0]->out, mods[0]->in, GB, GA, err);
}

int lora_grams_factors(const struct lora_lowrank *const *f, int m, double *GB, double *GA,
		       struct lora_err *err)
{
	struct src B[8], A[8];
	int r[8];

	if (m < 1 || m > 8)
		return lora_errf(err, "grams: %d factors (1 to 8)", m);
	for (int i = 0; i < m; i++) {
		if (f[i]->out != f[0]->out || f[i]->in != f[0]->in)
			return lora_errf(err, "shapes differ: [%d, %d] and [%d, %d]", f[0]->out,
					 f[0]->in, f[i]->out, f[i]->in);
		B[i] = (struct src){ (const unsigned char *)f[i]->B, LORA_DT_F64, sizeof(double) };
		A[i] = (struct src){ (const unsigned char *)f[i]->A, LORA_DT_F64, sizeof(double) };
		r[i] = f[i]->r;
	}
	return grams(B, A, r, m, (uint64_t)f[0]->out, (uint64_t)f[0]->in, GB, GA, err);
}

int lora_module_norm(const struct lora_peft_module *m, double *out, struct lora_err *err)
{
	size_t rr = (size_t)m->r * m->r;
	double *GB = dalloc(rr, err), *GA = GB ? dalloc(rr, err) : NULL;

	if (!GA || lora_grams_tensors(&m, 1, GB, GA, err) < 0) {
		free(GB);
		free(GA);
		return -1;
	}
	*out = fabs(m->scale) * sqrt(fmax(dot(GB, GA, rr), 0));
	free(GB);
	free(GA);
	return 0;
}

/* ------------------------------------------------------ norms, products */

int lora_lowrank_norm(const struct lora_lowrank *f, double *out, struct lora_err *err)
{
	size_t rr = (size_t)f->r * f->r;
	double *GB = dalloc(rr, err), *GA = GB ? dalloc(rr, err) : NULL, s;

	if (!GA) {
		free(GB);
		return -1;
	}
	gram_B(f->B, f->out, f->r, GB);
	gram_A(f->A, f->r, f->in, GA);
	s = dot(GB, GA, rr);  /* tr(GB·GA) = Σ GB_ij GA_ji, GA symmetric */
	*out = fabs(f->scale) * sqrt(s > 0 ? s : 0);
	free(GB);
	free(GA);
	return 0;
}

/* CB [rx, ry] = B_xᵀB_y and CA [rx, ry] = A_xA_yᵀ. */
static void cross_grams(const struct lora_lowrank *x, const struct lora_lowrank *y, double *CB,
			double *CA)
{
	cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, x->r, y->r, x->out, 1.0, x->B, x->r, y->B,
		    y->r, 0.0, CB, y->r);
	cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, x->r, y->r, x->in, 1.0, x->A, x->in, y->A,
		    y->in, 0.0, CA, y->r);
}

int lora_lowrank_inner(const struct lora_lowrank *x, const struct lora_lowrank *y, double *out,
		       struct lora_err *err)
{
	size_t n = (size_t)x->r * y->r;
	double *CB, *CA;

	if (x->out != y->out || x->in != y->in)
		return lora_errf(err, "shapes differ: [%d, %d] and [%d, %d]", x->out, x->in, y->out, y->in);
	CB = dalloc(n, err);
	CA = CB ? dalloc(n, err) : NULL;
	if (!CA) {
		free(CB);
		return -1;
	}
	cross_grams(x, y, CB, CA);
	/* ⟨B_xA_x, B_yA_y⟩ = Σ_ab (B_xᵀB_y)_ab (A_xA_yᵀ)_ab */
	*out = x->scale * y->scale * dot(CB, CA, n);
	free(CB);
	free(CA);
	return 0;
}

/* ------------------------------------------------------- QR of a stack */

/*
 * QR of both factors of B [out, K] · A [K, in] (copied into bw, aw, which
 * then hold the Householder vectors), and core [kb, ka] = R_B·R_Aᵀ with
 * kb = min(out, K), ka = min(in, K).  σ(B·A) = σ(core).
 */
struct qr2 {
	double *bw, *aw, *taub, *taua, *core;
	int kb, ka;
};

static void qr2_free(struct qr2 *q)
{
	free(q->bw);
	free(q->aw);
	free(q->taub);
	free(q->taua);
	free(q->core);
	memset(q, 0, sizeof(*q));
}

static int qr2_run(const double *B, const double *A, int out, int K, int in, struct qr2 *q,
		   struct lora_err *err)
{
	double *RB = NULL, *RA = NULL;
	lapack_int info;
	int rc = -1;

	memset(q, 0, sizeof(*q));
	q->kb = out < K ? out : K;
	q->ka = in < K ? in : K;
	if (!(q->bw = dalloc((size_t)out * K, err)) || !(q->aw = dalloc((size_t)K * in, err)) ||
	    !(q->taub = dalloc((size_t)q->kb, err)) || !(q->taua = dalloc((size_t)q->ka, err)) ||
	    !(q->core = dalloc((size_t)q->kb * q->ka, err)) ||
	    !(RB = dalloc((size_t)q->kb * K, err)) || !(RA = dalloc((size_t)q->ka * K, err)))
		goto out;
	memcpy(q->bw, B, (size_t)out * K * sizeof(double));
	memcpy(q->aw, A, (size_t)K * in * sizeof(double));
	/* B row-major [out, K] = Bᵀ column-major [K, out]: Bᵀ = L·Q, so B = Qᵀ·Lᵀ. */
	info = LAPACKE_dgelqf(LAPACK_COL_MAJOR, K, out, q->bw, K, q->taub);
	if (info) {
		lapack_fail("lq factorization", info, err);
		goto out;
	}
	/* A row-major [K, in] = Aᵀ column-major [in, K]: Aᵀ = Q_A·R_A. */
	info = LAPACKE_dgeqrf(LAPACK_COL_MAJOR, in, K, q->aw, in, q->taua);
	if (info) {
		lapack_fail("qr factorization", info, err);
		goto out;
	}
	/* R_B [kb, K] row-major: R_B[j][i] = L[i][j] = bw[i + j·K] for i ≥ j. */
	for (int j = 0; j < q->kb; j++)
		for (int i = j; i < K; i++)
			RB[(size_t)j * K + i] = q->bw[(size_t)j * K + i];
	/* R_A [ka, K] row-major: R_A[i][j] = aw[i + j·in] for i ≤ j. */
	for (int i = 0; i < q->ka; i++)
		for (int j = i; j < K; j++)
			RA[(size_t)i * K + j] = q->aw[(size_t)j * in + i];
	cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, q->kb, q->ka, K, 1.0, RB, K, RA, K, 0.0,
		    q->core, q->ka);
	rc = 0;
out:
	free(RB);
	free(RA);
	if (rc)
		qr2_free(q);
	return rc;
}

int lora_lowrank_stack_norm(const double *B, const double *A, int out, int K, int in, double *norm,
			    struct lora_err *err)
{
	struct qr2 q;

	if (qr2_run(B, A, out, K, in, &q, err) < 0)
		return -1;
	*norm = sqrt(dot(q.core, q.core, (size_t)q.kb * q.ka));
	qr2_free(&q);
	return 0;
}

/* Singular values only of a row-major m×n matrix (destroyed); sv holds min(m, n). */
static int svals_only(double *M, int m, int n, double *sv, struct lora_err *err)
{
	double dummy = 0;
	/* row-major M is column-major Mᵀ, which has the same singular values */
	lapack_int info = LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'N', n, m, M, n, sv, &dummy, 1, &dummy, 1);

	return info ? lapack_fail("singular value decomposition", info, err) : 0;
}

int lora_lowrank_svals(const struct lora_lowrank *f, double *sv, struct lora_err *err)
{
	struct qr2 q;
	int k;

	if (qr2_run(f->B, f->A, f->out, f->r, f->in, &q, err) < 0)
		return -1;
	k = q.kb < q.ka ? q.kb : q.ka;
	if (svals_only(q.core, q.kb, q.ka, sv, err) < 0) {
		qr2_free(&q);
		return -1;
	}
	for (int i = 0; i < k; i++)
		sv[i] *= fabs(f->scale);
	qr2_free(&q);
	return k;
}

int lora_module_spectrum(const struct lora_peft_module *m, double *sv, struct lora_err *err)
{
	struct lora_lowrank f;
	int k;

	if (lora_lowrank_load(m, &f, err) < 0)
		return lora_err_prefix(err, "module '%s'", m->name);
	k = lora_lowrank_svals(&f, sv, err);
	lora_lowrank_free(&f);
	if (k < 0)
		return lora_err_prefix(err, "module '%s'", m->name);
	for (int i = k; i < m->r; i++)
		sv[i] = 0;
	return 0;
}

int lora_peft_figures(const struct lora_peft *p, double *norms, double **sv, struct lora_err *err)
{
	for (size_t i = 0; i < p->n_modules; i++)
		if (lora_peft_delta_norm(&p->modules[i], &norms[i], err) < 0)
			return -1;
	for (size_t i = 0; sv && i < p->n_modules; i++) {
		if (!(sv[i] = calloc((size_t)p->modules[i].r, sizeof(double))))
			return lora_errf(err, "out of memory");
		if (lora_module_spectrum(&p->modules[i], sv[i], err) < 0)
			return -1;
	}
	return 0;
}

double lora_effective_rank(const double *sv, int n)
{
	double sum = 0, h = 0;

	for (int i = 0; i < n; i++)
		sum += fabs(sv[i]);
	if (!(sum > 0))
		return 0;
	for (int i = 0; i < n; i++) {
		double p = fabs(sv[i]) / sum;
		if (p > 0)
			h -= p * log(p);
	}
	return exp(h);
}

int lora_lowrank_truncate(const double *B, const double *A, int out, int K, int in, int R,
			  double *B_out, double *A_out, double *sv, double *total_sq,
			  struct lora_err *err)
{
	struct qr2 q;
	double *s = NULL, *U = NULL, *VT = NULL;
	lapack_int info;
	int mn, keep, rc = -1;

	memset(B_out, 0, (size_t)out * R * sizeof(double));
	memset(A_out, 0, (size_t)R * in * sizeof(double));
	memset(sv, 0, (size_t)R * sizeof(double));
	if (qr2_run(B, A, out, K, in, &q, err) < 0)
		return -1;
	mn = q.kb < q.ka ? q.kb : q.ka;
	keep = R < mn ? R : mn;
	if (total_sq)
		*total_sq = dot(q.core, q.core, (size_t)q.kb * q.ka);
	if (!(s = dalloc((size_t)mn, err)) || !(U = dalloc((size_t)q.kb * mn, err)) ||
	    !(VT = dalloc((size_t)mn * q.ka, err)))
		goto out;
	info = LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', q.kb, q.ka, q.core, q.ka, s, U, mn, VT, q.ka);
	if (info) {
		lapack_fail("singular value decomposition", info, err);
		goto out;
	}
	/* Explicit Q_B [out, kb] (row-major, leading dimension K) and Q_Aᵀ [ka, in]. */
	info = LAPACKE_dorglq(LAPACK_COL_MAJOR, q.kb, out, q.kb, q.bw, K, q.taub);
	if (!info)
		info = LAPACKE_dorgqr(LAPACK_COL_MAJOR, in, q.ka, q.ka, q.aw, in, q.taua);
	if (info) {
		lapack_fail("forming q", info, err);
		goto out;
	}
	/* U·diag(σ) into U's first `keep` columns, then B_out = Q_B·U_keep. */
	for (int i = 0; i < q.kb; i++)
		for (int j = 0; j < keep; j++)
			U[(size_t)i * mn + j] *= s[j];
	if (keep > 0) {
		cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out, keep, q.kb, 1.0, q.bw, K, U,
			    mn, 0.0, B_out, R);
		/* A_out = Vᵀ_keep·Q_Aᵀ */
		cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, keep, in, q.ka, 1.0, VT, q.ka,
			    q.aw, in, 0.0, A_out, in);
	}
	memcpy(sv, s, (size_t)keep * sizeof(double));
	rc = 0;
out:
	free(s);
	free(U);
	free(VT);
	qr2_free(&q);
	return rc;
}

/* ------------------------------------------------------------ compare */

#define GRAM_TOL 1e-12  /* eigenvalues of BᵀB below this × the largest are noise */

/*
 * From G_B = BᵀB (destroyed) and G_A = AAᵀ (both [r, r]), the left singular
 * vectors of ΔW = s·B·A as U = B·M: M [r, r] (the first *k columns used),
 * with σ in sv [r] (descending) and *k the number above LORA_RANK_TOL·σ₁.
 *
 * G_B = V Λ Vᵀ gives B = Q_B·L with L = Λ^½ Vᵀ and Q_B = B·V Λ^-½
 * orthonormal.  Then ΔW ΔWᵀ = Q_B (s² L G_A Lᵀ) Q_Bᵀ, and the eigenvectors W
 * of that small matrix, with eigenvalues σ², give U = Q_B W = B·(V Λ^-½ W).
 * Two r×r eigendecompositions per update; σ² costs accuracy only for σ far
 * below σ₁, which matter here only as "below the cut".
 */
static int left_basis(double *GB, const double *GA, int r, double scale, double *M, double *sv,
		      int *k, struct lora_err *err)
{
	double *lb = dalloc((size_t)r, err), *LB = dalloc((size_t)r * r, err);
	double *T1 = dalloc((size_t)r * r, err), *T = dalloc((size_t)r * r, err);
	double *P = dalloc((size_t)r * r, err), *mu = dalloc((size_t)r, err);
	double *W = dalloc((size_t)r * r, err);
	int kb = 0, rc = -1;
	lapack_int info;

	*k = 0;
	memset(M, 0, (size_t)r * r * sizeof(double));
	memset(sv, 0, (size_t)r * sizeof(double));
	if (!lb || !LB || !T1 || !T || !P || !mu || !W) {
		lora_errf(err, "out of memory");
		goto out;
	}
	info = LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', r, GB, r, lb);
	if (info) {
		lapack_fail("eigendecomposition", info, err);
		goto out;
	}
	/* Eigenvalues come ascending; keep the significant ones, largest first. */
	for (int j = r - 1; j >= 0; j--)
		if (lb[j] > 0 && lb[j] > GRAM_TOL * lb[r - 1]) {
			double sq = sqrt(lb[j]);
			for (int i = 0; i < r; i++) {
				LB[(size_t)kb * r + i] = sq * GB[(size_t)i * r + j];
				P[(size_t)i * r + kb] = GB[(size_t)i * r + j] / sq;
			}
			kb++;
		}
	if (!kb || scale == 0) {
		rc = 0;
		goto out;
	}
	/* T [kb, kb] = s²·L G_A Lᵀ */
	cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, kb, r, r, scale * scale, LB, r, GA, r, 0.0,
		    T1, r);
	cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, kb, kb, r, 1.0, T1, r, LB, r, 0.0, T, kb);
	info = LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', kb, T, kb, mu);
	if (info) {
		lapack_fail("eigendecomposition", info, err);
		goto out;
	}
	/* W: eigenvectors largest first */
	for (int t = 0; t < kb; t++) {
		int j = kb - 1 - t;
		sv[t] = sqrt(mu[j] > 0 ? mu[j] : 0);
		for (int i = 0; i < kb; i++)
			W[(size_t)i * kb + t] = T[(size_t)i * kb + j];
	}
	/* M [r, kb] (leading dimension r) = P [r, kb] · W [kb, kb] */
	cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r, kb, kb, 1.0, P, r, W, kb, 0.0, M, r);
	while (*k < kb && sv[*k] > LORA_RANK_TOL * sv[0])
		(*k)++;
	rc = 0;
out:
	free(lb);
	free(LB);
	free(T1);
	free(T);
	free(P);
	free(mu);
	free(W);
	return rc;
}

int lora_lowrank_distance_qr(const struct lora_lowrank *a, const struct lora_lowrank *b, double *d,
			     struct lora_err *err)
{
	int K = a->r + b->r, out = a->out, in = a->in;
	double *Bs, *As;
	int rc;

	if (a->out != b->out || a->in != b->in)
		return lora_errf(err, "shapes differ: [%d, %d] and [%d, %d]", a->out, a->in, b->out, b->in);
	Bs = dalloc((size_t)out * K, err);
	As = Bs ? dalloc((size_t)K * in, err) : NULL;
	if (!As) {
		free(Bs);
		return -1;
	}
	/* ΔW_a − ΔW_b = [B_a B_b]·[s_a A_a; −s_b A_b] */
	for (int i = 0; i < out; i++) {
		memcpy(Bs + (size_t)i * K, a->B + (size_t)i * a->r, (size_t)a->r * sizeof(double));
		memcpy(Bs + (size_t)i * K + a->r, b->B + (size_t)i * b->r, (size_t)b->r * sizeof(double));
	}
	for (size_t i = 0; i < (size_t)a->r * in; i++)
		As[i] = a->scale * a->A[i];
	for (size_t i = 0; i < (size_t)b->r * in; i++)
		As[(size_t)a->r * in + i] = -b->scale * b->A[i];
	rc = lora_lowrank_stack_norm(Bs, As, out, K, in, d, err);
	free(Bs);
	free(As);
	return rc;
}

/* Copy the [r0, r0+nr) × [c0, c0+nc) block of a row-major K×K matrix. */
static void sub(const double *G, int K, int r0, int nr, int c0, int nc, double *dst)
{
	for (int i = 0; i < nr; i++)
		memcpy(dst + (size_t)i * nc, G + (size_t)(r0 + i) * K + c0, (size_t)nc * sizeof(double));
}

int lora_lowrank_compare_grams(const double *GB, const double *GA, int ra, int rb, double sa,
			       double sb, struct lora_lowrank_cmp *c, int *need_qr,
			       struct lora_err *err)
{
	int K = ra + rb, ka, kb, k, rc = -1;
	double *GBa = NULL, *GAa = NULL, *GBb = NULL, *GAb = NULL, *CB = NULL, *CA = NULL;
	double *Ma = NULL, *Mb = NULL, *sva = NULL, *svb = NULL, *T = NULL, *X = NULL;
	double na2, nb2, d2;

	memset(c, 0, sizeof(*c));
	c->cosine = c->overlap = NAN;
	*need_qr = 0;
	if (!(GBa = dalloc((size_t)ra * ra, err)) || !(GAa = dalloc((size_t)ra * ra, err)) ||
	    !(GBb = dalloc((size_t)rb * rb, err)) || !(GAb = dalloc((size_t)rb * rb, err)) ||
	    !(CB = dalloc((size_t)ra * rb, err)) || !(CA = dalloc((size_t)ra * rb, err)) ||
	    !(Ma = dalloc((size_t)ra * ra, err)) || !(Mb = dalloc((size_t)rb * rb, err)) ||
	    !(sva = dalloc((size_t)ra, err)) || !(svb = dalloc((size_t)rb, err)) ||
	    !(T = dalloc((size_t)ra * rb, err)) || !(X = dalloc((size_t)ra * rb, err)))
		goto out;
	for (int i = 0; i < K; i++)
		if (!isfinite(GB[(size_t)i * K + i]) || !isfinite(GA[(size_t)i * K + i])) {
			lora_errf(err, "non-finite values (NaN or Inf) in the LoRA factors");
			goto out;
		}
	sub(GB, K, 0, ra, 0, ra, GBa);
	sub(GB, K, ra, rb, ra, rb, GBb);
	sub(GB, K, 0, ra, ra, rb, CB);   /* B_aᵀB_b */
	sub(GA, K, 0, ra, 0, ra, GAa);
	sub(GA, K, ra, rb, ra, rb, GAb);
	sub(GA, K, 0, ra, ra, rb, CA);   /* A_aA_bᵀ */

	na2 = sa * sa * dot(GBa, GAa, (size_t)ra * ra);
	nb2 = sb * sb * dot(GBb, GAb, (size_t)rb * rb);
	na2 = na2 > 0 ? na2 : 0;
	nb2 = nb2 > 0 ? nb2 : 0;
	c->norm_a = sqrt(na2);
	c->norm_b = sqrt(nb2);
	/* ⟨B_aA_a, B_bA_b⟩ = Σ_ij (B_aᵀB_b)_ij (A_aA_bᵀ)_ij */
	c->inner = sa * sb * dot(CB, CA, (size_t)ra * rb);
	if (c->norm_a > 0 && c->norm_b > 0) {
		c->cosine = c->inner / (c->norm_a * c->norm_b);
		c->cosine = c->cosine > 1 ? 1 : c->cosine < -1 ? -1 : c->cosine;
	}
	/*
	 * d² = ‖a‖² + ‖b‖² − 2⟨a,b⟩ loses digits when a ≈ b (relative error
	 * ≈ ε·(‖a‖² + ‖b‖²)/d²); below 1e-6 of the sum the caller redoes it by QR.
	 */
	d2 = na2 + nb2 - 2 * c->inner;
	if (d2 > 1e-6 * (na2 + nb2))
		c->distance = sqrt(d2);
	else
		*need_qr = 1;

	if (left_basis(GBa, GAa, ra, sa, Ma, sva, &ka, err) < 0 ||
	    left_basis(GBb, GAb, rb, sb, Mb, svb, &kb, err) < 0)
		goto out;
	k = ka < kb ? ka : kb;
	c->overlap_k = k;
	if (k > 0) {
		/* U_aᵀU_b = M_aᵀ (B_aᵀB_b) M_b, first k rows and columns */
		cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, k, rb, ra, 1.0, Ma, ra, CB, rb, 0.0,
			    T, rb);
		cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, k, k, rb, 1.0, T, rb, Mb, rb, 0.0,
			    X, k);
		c->overlap = dot(X, X, (size_t)k * k) / k;
		c->overlap = c->overlap > 1 ? 1 : c->overlap;
	}
	rc = 0;
out:
	free(GBa);
	free(GAa);
	free(GBb);
	free(GAb);
	free(CB);
	free(CA);
	free(Ma);
	free(Mb);
	free(sva);
	free(svb);
	free(T);
	free(X);
	return rc;
}

int lora_lowrank_compare(const struct lora_lowrank *a, const struct lora_lowrank *b,
			 struct lora_lowrank_cmp *c, struct lora_err *err)
{
	const struct lora_lowrank *fs[2] = { a, b };
	int K = a->r + b->r, need_qr = 0, rc = -1;
	double *GB, *GA;

	if (a->out != b->out || a->in != b->in)
		return lora_errf(err, "shapes differ: [%d, %d] and [%d, %d]", a->out, a->in, b->out, b->in);
	GB = dalloc((size_t)K * K, err);
	GA = GB ? dalloc((size_t)K * K, err) : NULL;
	if (GA && lora_grams_factors(fs, 2, GB, GA, err) == 0 &&
	    lora_lowrank_compare_grams(GB, GA, a->r, b->r, a->scale, b->scale, c, &need_qr, err) == 0)
		rc = need_qr ? lora_lowrank_distance_qr(a, b, &c->distance, err) : 0;
	free(GB);
	free(GA);
	return rc;
}

/* ------------------------------------------------------ randomized SVD */

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Standard normal by Box-Muller from two uniforms in (0, 1). */
static double gauss(uint64_t *s)
{
	double u1 = ((double)(splitmix64(s) >> 11) + 0.5) / 9007199254740992.0;
	double u2 = ((double)(splitmix64(s) >> 11) + 0.5) / 9007199254740992.0;

	return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Orthonormalise the columns of a column-major m×l matrix in place (m ≥ l). */
static int orth(double *Y, int m, int l, double *tau, struct lora_err *err)
{
	lapack_int info = LAPACKE_dgeqrf(LAPACK_COL_MAJOR, m, l, Y, m, tau);

	if (!info)
		info = LAPACKE_dorgqr(LAPACK_COL_MAJOR, m, l, l, Y, m, tau);
	return info ? lapack_fail("qr factorization", info, err) : 0;
}

struct rsvd_pass {
	uint64_t out, in;
	int l;
	size_t nb;                    /* rows per block */
	double *blk;                  /* [nb, in] */
	lora_rows_fn rows;
	void *ctx;
};

/*
 * One pass over D.  With Y (column-major out×l) non-NULL: Y = D·X for X
 * (column-major in×l).  Else Z (column-major in×l) = Dᵀ·Q for Q (out×l).
 * sq (may be NULL) gets ‖D‖_F².
 */
static int pass(struct rsvd_pass *ps, const double *X, double *Y, const double *Q, double *Z,
		double *sq, struct lora_err *err)
{
	int in = (int)ps->in, out = (int)ps->out, l = ps->l;
	double s = 0;

	if (Z)
		memset(Z, 0, (size_t)in * l * sizeof(double));
	for (uint64_t r0 = 0; r0 < ps->out; r0 += ps->nb) {
		int n = (int)(ps->out - r0 < ps->nb ? ps->out - r0 : ps->nb);
		if (ps->rows(ps->ctx, r0, (uint64_t)n, ps->blk, err) < 0)
			return -1;
		/* blk row-major [n, in] = blkᵀ column-major [in, n] */
		if (Y)
			cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, n, l, in, 1.0, ps->blk, in, X,
				    in, 0.0, Y + r0, out);
		else
			cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, in, l, n, 1.0, ps->blk, in,
				    Q + r0, out, 1.0, Z, in);
		if (sq)
			s += dot(ps->blk, ps->blk, (size_t)n * in);
	}
	if (sq)
		*sq = s;
	return 0;
}

int lora_rsvd(uint64_t out, uint64_t in, const struct lora_rsvd_params *p, lora_rows_fn rows,
	      void *ctx, double *B_out, double *A_out, double *sv, double *total_sq,
	      struct lora_err *err)
{
	struct rsvd_pass ps = { out, in, 0, 0, NULL, rows, ctx };
	double *Om = NULL, *Y = NULL, *Z = NULL, *tau = NULL, *S = NULL, *VT = NULL, *W = NULL;
	uint64_t seed = p->seed, mn = out < in ? out : in;
	int R = p->rank, l, rc = -1;
	lapack_int info;

	if (out == 0 || in == 0 || out > INT_MAX || in > INT_MAX || R < 1 || (uint64_t)R > mn)
		return lora_errf(err, "randomized svd: bad shape [%llu, %llu] for rank %d",
				 (unsigned long long)out, (unsigned long long)in, R);
	l = R + (p->oversample > 0 ? p->oversample : 0);
	if ((uint64_t)l > mn)
		l = (int)mn;
	ps.l = l;
	ps.nb = p->block_bytes / (in * sizeof(double));
	ps.nb = ps.nb < 1 ? 1 : ps.nb > out ? out : ps.nb;
	if (!(ps.blk = dalloc(ps.nb * in, err)) || !(Om = dalloc(in * l, err)) ||
	    !(Y = dalloc(out * l, err)) || !(Z = dalloc(in * l, err)) ||
	    !(tau = dalloc((size_t)l, err)) || !(S = dalloc((size_t)l, err)) ||
	    !(VT = dalloc((size_t)l * l, err)) || !(W = dalloc((size_t)l * R, err)))
		goto out;
	for (uint64_t i = 0; i < in * (uint64_t)l; i++)
		Om[i] = gauss(&seed);
	/* Y = D·Ω, then power iterations Y = D·orth(Dᵀ·orth(Y)) */
	if (pass(&ps, Om, Y, NULL, NULL, total_sq, err) < 0)
		goto out;
	if (*total_sq == 0) {
		/* D = 0: nothing to find, and no need to read it again */
		memset(B_out, 0, (size_t)out * R * sizeof(double));
		memset(A_out, 0, (size_t)R * in * sizeof(double));
		memset(sv, 0, (size_t)R * sizeof(double));
		rc = 0;
		goto out;
	}
	for (int it = 0; it < p->iters; it++) {
		if (orth(Y, (int)out, l, tau, err) < 0 || pass(&ps, NULL, NULL, Y, Z, NULL, err) < 0 ||
		    orth(Z, (int)in, l, tau, err) < 0 || pass(&ps, Z, Y, NULL, NULL, NULL, err) < 0)
			goto out;
	}
	/* Q = orth(Y); Z = DᵀQ, the transpose of the small l×in matrix QᵀD. */
	if (orth(Y, (int)out, l, tau, err) < 0 || pass(&ps, NULL, NULL, Y, Z, NULL, err) < 0)
		goto out;
	/* Z [in, l] = U_z S V_zᵀ, so D ≈ Q·Zᵀ = (Q V_z) S U_zᵀ; U_z overwrites Z. */
	info = LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'O', (int)in, l, Z, (int)in, S, NULL, (int)in, VT, l);
	if (info) {
		lapack_fail("singular value decomposition", info, err);
		goto out;
	}
	/* A_out [R, in] row-major: row j = U_z column j, already laid out that way. */
	memcpy(A_out, Z, (size_t)R * in * sizeof(double));
	/* W [l, R] column-major = V_z[:, :R]·diag(S); V_z(i, j) = VT[j + i·l]. */
	for (int j = 0; j < R; j++)
		for (int i = 0; i < l; i++)
			W[(size_t)j * l + i] = VT[(size_t)i * l + j] * S[j];
	/* B_out row-major [out, R] = (Q·W)ᵀ column-major [R, out] = Wᵀ·Qᵀ. */
	cblas_dgemm(CblasColMajor, CblasTrans, CblasTrans, R, (int)out, l, 1.0, W, l, Y, (int)out, 0.0,
		    B_out, R);
	memcpy(sv, S, (size_t)R * sizeof(double));
	rc = 0;
out:
	free(ps.blk);
	free(Om);
	free(Y);
	free(Z);
	free(tau);
	free(S);
	free(VT);
	free(W);
	return rc;
}
