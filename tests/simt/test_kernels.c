/*
 * test_kernels.c - every CUDA kernel against its CPU twin (train/ops_cpu.h,
 * train/nf4.c, train/optim.c), through the plugin's table (kernels/abi.h).
 *
 * Built twice from this one source: in `make check` over the CPU execution
 * layer (tests/simt, the .cu files compiled by g++), and in `make check-cuda`
 * linked against the real liblora_cuda.so, where the same cases and
 * tolerances run on the GPU (and under compute-sanitizer).
 *
 * Each case draws fresh random inputs, fills the outputs with NaN (0xff
 * bytes) before the kernel runs, and compares every element: |got - ref| <=
 * tol, the tolerance stated beside each comparison from the arithmetic
 * (u = 2^-24, the unit roundoff of fp32; a sum of k fp32 terms in any order
 * is off by at most about k·u relative to the sum of their magnitudes).
 * Shapes are odd on purpose: not multiples of a block or warp, one token,
 * one element, several rows per block stride.
 */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/abi.h"
#include "libadapter/base/dtype.h"
#include "tests/t.h"
#include "train/nf4.h"
#include "train/ops_cpu.h"
#include "train/optim.h"

#define U 0x1p-24   /* fp32 unit roundoff */

static const struct lora_cuda_abi *K;

/* ------------------------------------------------------------ helpers */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd64(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* uniform in [-a, a) */
static float urand(float a)
{
	return (float)((double)(rnd64() >> 11) * 0x1p-53 * 2.0 - 1.0) * a;
}

static void fill(float *x, size_t n, float a)
{
	for (size_t i = 0; i < n; i++)
		x[i] = urand(a);
}

static void *xmalloc(size_t bytes)
{
	void *p = malloc(bytes ? bytes : 1);
	if (!p)
		abort();
	return p;
}

static void *dev(size_t bytes)
{
	void *p = NULL;
	int st = K->malloc(&p, bytes);
	if (st) {
		fprintf(stderr, "device malloc of %zu bytes: %s\n", bytes, K->strerror(st));
		abort();
	}
	return p;
}

static void *up(const void *host, size_t bytes)
{
	void *d = dev(bytes);
	CHECK(K->memcpy(d, host, bytes, NULL) == 0);
	return d;
}

/* NaN in every fp32 (and an all-ones pattern in anything else) */
static void *poisoned(size_t bytes)
{
	void *d = dev(bytes);
	CHECK(K->memset(d, 0xff, bytes, NULL) == 0);
	return d;
}

static void down(void *host, const void *d, size_t bytes)
{
	CHECK(K->stream_sync(NULL) == 0);
	CHECK(K->memcpy(host, d, bytes, NULL) == 0);
	CHECK(K->stream_sync(NULL) == 0);
}

/* Elements with |got - ref| > abs + rel·|ref| (NaN counts), the first few printed. */
static size_t cmp(const char *what, const float *got, const float *ref, size_t n, double abs_tol,
		  double rel_tol, const double *tol_i)
{
	size_t bad = 0;

	for (size_t i = 0; i < n; i++) {
		const double t = abs_tol + rel_tol * fabs(ref[i]) + (tol_i ? tol_i[i] : 0.0);
		if (!(fabs((double)got[i] - (double)ref[i]) <= t)) {
			if (bad < 4)
				fprintf(stderr, "  %s[%zu] = %.9g, twin %.9g (tolerance %.3g)\n", what, i, got[i],
					ref[i], t);
			bad++;
		}
	}
	if (bad)
		fprintf(stderr, "  %s: %zu of %zu elements off\n", what, bad, n);
	return bad;
}

/* ------------------------------------------------------------ the table */

TEST(table)
{
	CHECK(K->version == LORA_CUDA_ABI_VERSION);
	CHECK(K->size == sizeof(struct lora_cuda_abi));
	/* every entry filled: the table is a row of function pointers after the header */
	CHECK(K->query && K->strerror && K->malloc && K->memcpy && K->gemm && K->nf4_dequant && K->rmsnorm_fwd &&
	      K->rmsnorm_bwd && K->rope_table && K->rope_fwd && K->rope_bwd && K->swiglu_fwd && K->swiglu_bwd &&
	      K->add && K->addmul && K->grad_norm && K->adamw && K->merge_init && K->blas_create && K->lora_fwd &&
	      K->lora_bwd && K->xent_stats && K->xent_loss && K->xent_grad && K->attn_fwd &&
	      K->attn_bwd && K->geglu_fwd && K->geglu_bwd && K->headnorm_fwd &&
	      K->headnorm_bwd && K->attn_fwd_softcap && K->attn_bwd_softcap &&
	      K->softcap && K->xent_grad_softcap);
	printf("  plugin: %s\n", K->build);
}

/* ------------------------------------------------------------ nf4 */

/* Same operations in the same order as lora_nf4_dequant: equal bit for bit (tolerance 0). */
static void nf4_case(uint64_t n, uint64_t start, uint64_t count)
{
	struct lora_nf4 q;
	struct lora_err err = {0};
	float *w = xmalloc(n * sizeof(float)), *ref = xmalloc(count * sizeof(float));
	float *got = xmalloc(count * sizeof(float));
	uint16_t *got16 = xmalloc(count * 2), *ref16 = xmalloc(count * 2);

	for (uint64_t i = 0; i < n; i++)   /* blocks of very different scales */
		w[i] = urand(1.0f) * (float)(1 + (i / 64) % 7) * 0.01f;
	CHECKF(lora_nf4_quantize(&q, w, LORA_DT_F32, n, &err) == 0, "%s", err.msg);
	lora_nf4_dequant(&q, start, count, ref);
	for (uint64_t i = 0; i < count; i++)
		ref16[i] = lora_f32_to_bf16(ref[i]);
	{
		uint8_t *pk = up(q.packed, (n + 1) / 2), *qa = up(q.qabsmax, q.nb);
		float *a2 = up(q.absmax2, q.ng * sizeof(float)), *c8 = up(lora_code8, sizeof(lora_code8));
		void *o = poisoned(count * sizeof(float)), *o16 = poisoned(count * 2);

		CHECK(K->nf4_dequant(pk, qa, a2, q.offset, c8, start, count, o, 0, NULL) == 0);
		CHECK(K->nf4_dequant(pk, qa, a2, q.offset, c8, start, count, o16, 1, NULL) == 0);
		down(got, o, count * sizeof(float));
		down(got16, o16, count * 2);
		CHECKF(memcmp(got, ref, count * sizeof(float)) == 0, "n %llu [%llu, +%llu): fp32 differs",
		       (unsigned long long)n, (unsigned long long)start, (unsigned long long)count);
		CHECKF(memcmp(got16, ref16, count * 2) == 0, "n %llu: bf16 differs", (unsigned long long)n);
		cmp("nf4", got, ref, count, 0.0, 0.0, NULL);
		K->free(pk), K->free(qa), K->free(a2), K->free(c8), K->free(o), K->free(o16);
	}
	lora_nf4_free(&q);
	free(w), free(ref), free(got), free(got16), free(ref16);
}

TEST(nf4_dequant)
{
	nf4_case(1, 0, 1);
	nf4_case(63, 0, 63);                    /* one partial block */
	nf4_case(64 * 257 + 37, 0, 64 * 257 + 37);   /* 258 blocks: two groups of absmax2, odd tail */
	nf4_case(64 * 257 + 37, 101, 5000);     /* a window starting on a low nibble */
	nf4_case(64 * 300, 64 * 256 - 3, 771);  /* across the group boundary */
}

/* ------------------------------------------------------------ rmsnorm */

static void rmsnorm_case(int N, int C)
{
	const size_t nc = (size_t)N * C;
	float *x = xmalloc(nc * 4), *w = xmalloc(C * 4), *dy = xmalloc(nc * 4), *dx0 = xmalloc(nc * 4);
	float *y = xmalloc(nc * 4), *rs = xmalloc(N * 4), *dx = xmalloc(nc * 4);
	float *gy = xmalloc(nc * 4), *grs = xmalloc(N * 4), *gdx = xmalloc(nc * 4);
	double *tol = xmalloc(nc * sizeof(double));
	const float eps = 1e-5f;
	/* fp32 sums: a thread adds ceil(C/256) terms, then 5 + 3 butterfly/tree levels */
	const double k = (double)((C + 255) / 256 + 8);

	fill(x, nc, 2.0f);
	fill(w, C, 1.5f);
	fill(dy, nc, 1.0f);
	fill(dx0, nc, 1.0f);
	for (int n = 0; n < N; n += 3)   /* rows of another scale */
		for (int i = 0; i < C; i++)
			x[(size_t)n * C + i] *= 1e-3f;
	lora_cpu_rmsnorm(x, w, N, C, eps, y, rs);
	{
		float *dxd = up(x, nc * 4), *dw = up(w, C * 4), *ddy = up(dy, nc * 4);
		float *dyo = poisoned(nc * 4), *drs = poisoned(N * 4), *ddx = poisoned(nc * 4);

		CHECK(K->rmsnorm_fwd(dxd, dw, N, C, eps, dyo, drs, NULL) == 0);
		down(gy, dyo, nc * 4);
		down(grs, drs, N * 4);
		/* rstd: the sum of squares (positive terms) within k·u, the mean, the sqrt
		 * (halves it) and the division: (k/2 + 3)·u relative.  y: two products more. */
		CHECK(cmp("rstd", grs, rs, N, 0.0, (k / 2 + 3) * U, NULL) == 0);
		CHECK(cmp("rmsnorm y", gy, y, nc, 0.0, (k / 2 + 5) * U, NULL) == 0);

		for (int acc = 0; acc < 2; acc++) {
			/* backward from the CPU's rstd, so only the dot product's sum differs */
			float *drs_ref = up(rs, N * 4);
			memcpy(dx, dx0, nc * 4);
			lora_cpu_rmsnorm_bwd(x, w, rs, dy, N, C, dx, acc);
			if (acc) {
				K->free(ddx);
				ddx = up(dx0, nc * 4);
			}
			CHECK(K->rmsnorm_bwd(dxd, dw, drs_ref, ddy, N, C, ddx, acc, NULL) == 0);
			down(gdx, ddx, nc * 4);
			/* dx = r·w·dy - x·kk, kk = r³·dot/C: dot's error is k·u of S = Σ|w·dy·x|
			 * (terms of both signs: relative to S, not to dot); each term of dx is
			 * then off by a few roundings of its own magnitude. */
			for (int n = 0; n < N; n++) {
				const float r = rs[n];
				double S = 0.0;
				for (int i = 0; i < C; i++)
					S += fabs((double)w[i] * dy[(size_t)n * C + i] * x[(size_t)n * C + i]);
				for (int i = 0; i < C; i++) {
					const size_t j = (size_t)n * C + i;
					const double t1 = fabs((double)r * w[i] * dy[j]);
					const double t2 = fabs((double)x[j]) * r * r * r * S / C;
					tol[j] = 4 * U * (t1 + t2 + (acc ? fabs(dx0[j]) : 0.0)) + (k + 6) * U * t2;
				}
			}
			CHECK(cmp("rmsnorm dx", gdx, dx, nc, 0.0, 2 * U, tol) == 0);
			K->free(drs_ref);
		}
		K->free(dxd), K->free(dw), K->free(ddy), K->free(dyo), K->free(drs), K->free(ddx);
	}
	free(x), free(w), free(dy), free(dx0), free(y), free(rs), free(dx), free(gy), free(grs), free(gdx), free(tol);
}

TEST(rmsnorm)
{
	rmsnorm_case(1, 1);
	rmsnorm_case(3, 7);
	rmsnorm_case(5, 300);       /* a thread holds 2 terms, most only 1 */
	rmsnorm_case(17, 1000);
	rmsnorm_case(2, 4099);      /* 17 terms per thread */
}

/* ------------------------------------------------------------ per-head q/k norm */

/*
 * headnorm on rows [N, ld]: H + KV heads of D in place, the columns after them (v) must
 * stay as they were.  The arithmetic of rmsnorm over rows of D: a lane adds ceil(D/32)
 * terms, then 5 butterfly levels, so k = ceil(D/32) + 5 and the tolerances of rmsnorm_case.
 */
static void headnorm_case(int N, int H, int KV, int D, int extra_cols)
{
	const int nh = H + KV, ld = nh * D + extra_cols;
	const size_t ny = (size_t)N * ld, nr = (size_t)N * nh * D, nrs = (size_t)N * nh;
	float *y0 = xmalloc(ny * 4), *y = xmalloc(ny * 4), *gy = xmalloc(ny * 4), *wq = xmalloc(D * 4);
	float *wk = xmalloc(D * 4), *raw = xmalloc(nr * 4), *graw = xmalloc(nr * 4), *rs = xmalloc(nrs * 4);
	float *grs = xmalloc(nrs * 4), *dy0 = xmalloc(ny * 4), *dy = xmalloc(ny * 4);
	double *tol = xmalloc(ny * sizeof(double));
	const float eps = 1e-6f;
	const double k = (double)((D + 31) / 32 + 5);

	fill(y0, ny, 2.0f);
	for (int n = 0; n < N; n += 2)   /* heads of another scale */
		for (int i = 0; i < nh * D; i += 3 * D)
			for (int d = 0; d < D; d++)
				y0[(size_t)n * ld + i + d] *= 1e-3f;
	fill(wq, D, 1.5f);
	fill(wk, D, 1.5f);
	fill(dy0, ny, 1.0f);
	memcpy(y, y0, ny * 4);
	lora_cpu_headnorm(y, ld, N, H, KV, D, wq, wk, eps, raw, rs);
	{
		float *dy_ = up(y0, ny * 4), *dwq = up(wq, D * 4), *dwk = up(wk, D * 4);
		float *draw = poisoned(nr * 4), *drs = poisoned(nrs * 4);

		CHECK(K->headnorm_fwd(dy_, ld, N, H, KV, D, dwq, dwk, eps, draw, drs, NULL) == 0);
		down(gy, dy_, ny * 4);
		down(graw, draw, nr * 4);
		down(grs, drs, nrs * 4);
		CHECKF(memcmp(graw, raw, nr * 4) == 0, "headnorm raw N %d H %d KV %d D %d", N, H, KV, D);
		/* rstd: the positive sum within k·u, the mean, sqrt (halves it), the division */
		CHECKF(cmp("headnorm rstd", grs, rs, nrs, 0.0, (k / 2 + 3) * U, NULL) == 0, "N %d H %d KV %d D %d", N,
		       H, KV, D);
		/* y: two products more; the v columns untouched (equal: tolerance 0 there) */
		for (size_t i = 0; i < ny; i++)
			tol[i] = (int)(i % ld) < nh * D ? (k / 2 + 5) * U * fabs(y[i]) : 0.0;
		CHECKF(cmp("headnorm y", gy, y, ny, 0.0, 0.0, tol) == 0, "N %d H %d KV %d D %d", N, H, KV, D);

		/* backward from the CPU's raw and rstd, so only the dot's sum differs: as rmsnorm dx */
		{
			float *craw = up(raw, nr * 4), *crs = up(rs, nrs * 4), *ddy = up(dy0, ny * 4);

			memcpy(dy, dy0, ny * 4);
			lora_cpu_headnorm_bwd(dy, ld, N, H, KV, D, wq, wk, raw, rs);
			CHECK(K->headnorm_bwd(ddy, ld, N, H, KV, D, dwq, dwk, craw, crs, NULL) == 0);
			down(gy, ddy, ny * 4);
			for (int n = 0; n < N; n++)
				for (int h = 0; h < nh; h++) {
					const float *x = raw + ((size_t)n * nh + h) * D, *w = h < H ? wq : wk;
					const float *g = dy0 + (size_t)n * ld + (size_t)h * D;
					const float r = rs[(size_t)n * nh + h];
					double S = 0.0;
					for (int d = 0; d < D; d++)
						S += fabs((double)w[d] * g[d] * x[d]);
					for (int d = 0; d < D; d++) {
						const double t1 = fabs((double)r * w[d] * g[d]);
						const double t2 = fabs((double)x[d]) * r * r * r * S / D;
						tol[(size_t)n * ld + (size_t)h * D + d] = 4 * U * (t1 + t2) + (k + 6) * U * t2 +
											  2 * U * fabs(dy[(size_t)n * ld + (size_t)h * D + d]);
					}
				}
			CHECKF(cmp("headnorm d raw", gy, dy, ny, 0.0, 0.0, tol) == 0, "N %d H %d KV %d D %d", N, H, KV, D);
			K->free(craw), K->free(crs), K->free(ddy);
		}
		K->free(dy_), K->free(dwq), K->free(dwk), K->free(draw), K->free(drs);
	}
	free(y0), free(y), free(gy), free(wq), free(wk), free(raw), free(graw), free(rs), free(grs), free(dy0), free(dy),
		free(tol);
}

TEST(headnorm)
{
	headnorm_case(1, 1, 1, 1, 0);       /* one token, heads of one element */
	headnorm_case(3, 4, 2, 24, 48);     /* GQA ratio 2, inside a q|k|v row (v after) */
	headnorm_case(5, 3, 3, 128, 384);   /* ratio 1, 30 heads: 8 blocks, the last partial */
	headnorm_case(7, 8, 1, 256, 0);     /* 63 heads of 256 (Gemma 3): 8 terms a lane */
	headnorm_case(2, 5, 1, 40, 40);     /* D not a multiple of the warp */
}

/* ------------------------------------------------------------ rope */

static void rope_case(int B, int T, int nh, int D, int extra_cols)
{
	const int half = D / 2, ld = nh * D + extra_cols;
	const size_t N = (size_t)B * T, ntok = N * ld, nhead = N * nh * D;
	float *inv = xmalloc(half * 4), *cs = xmalloc((size_t)T * half * 4), *sn = xmalloc((size_t)T * half * 4);
	float *gcs = xmalloc((size_t)T * half * 4), *gsn = xmalloc((size_t)T * half * 4);
	float *src = xmalloc(ntok * 4), *hd = xmalloc(nhead * 4), *ref = xmalloc(nhead * 4), *got = xmalloc(nhead * 4);
	float *tref = xmalloc(ntok * 4), *tgot = xmalloc(ntok * 4);

	for (int i = 0; i < half; i++)
		inv[i] = (float)pow(10000.0, -2.0 * i / D);
	lora_cpu_rope_tables(inv, D, T, cs, sn);
	fill(src, ntok, 1.0f);
	fill(hd, nhead, 1.0f);
	{
		float *dinv = up(inv, half * 4), *dcs = poisoned((size_t)T * half * 4), *dsn = poisoned((size_t)T * half * 4);
		float *ccs = up(cs, (size_t)T * half * 4), *csn = up(sn, (size_t)T * half * 4);
		float *dsrc = up(src, ntok * 4), *dhd = up(hd, nhead * 4);

		CHECK(K->rope_table(dinv, T, half, dcs, dsn, NULL) == 0);
		down(gcs, dcs, (size_t)T * half * 4);
		down(gsn, dsn, (size_t)T * half * 4);
		/* cosf/sinf: 2 ulp on a GPU (CUDA guide, full range), < 1 ulp in glibc, of values
		 * <= 1 and of the same argument inv_freq·t (one fp32 product on both): 4u absolute */
		CHECK(cmp("rope cos", gcs, cs, (size_t)T * half, 4 * U, 0.0, NULL) == 0);
		CHECK(cmp("rope sin", gsn, sn, (size_t)T * half, 4 * U, 0.0, NULL) == 0);

		for (int rope = 0; rope < 2; rope++) {
			/* from the CPU's tables the rotation is the same two products and a sum per
			 * element, in the same order: equal (tolerance 0) */
			float *o = poisoned(nhead * 4), *to = dev(ntok * 4);
			lora_cpu_to_heads(src, ld, ref, B, T, nh, D, cs, sn, rope);
			CHECK(K->rope_fwd(dsrc, ld, o, B, T, nh, D, ccs, csn, rope, NULL) == 0);
			down(got, o, nhead * 4);
			CHECK(cmp("rope fwd", got, ref, nhead, 0.0, 0.0, NULL) == 0);

			/* backward writes only the head columns of each token row: those start
			 * as NaN, the others as random values that must stay */
			fill(tref, ntok, 1.0f);
			for (size_t i = 0; i < ntok; i++)
				if ((int)(i % ld) < nh * D)
					memset(&tref[i], 0xff, 4);
			CHECK(K->memcpy(to, tref, ntok * 4, NULL) == 0);
			lora_cpu_from_heads(hd, tref, ld, B, T, nh, D, cs, sn, rope);
			CHECK(K->rope_bwd(dhd, to, ld, B, T, nh, D, ccs, csn, rope, NULL) == 0);
			down(tgot, to, ntok * 4);
			CHECKF(memcmp(tgot, tref, ntok * 4) == 0, "rope bwd B %d T %d nh %d D %d rope %d", B, T, nh, D,
			       rope);
			K->free(o), K->free(to);
		}
		K->free(dinv), K->free(dcs), K->free(dsn), K->free(ccs), K->free(csn), K->free(dsrc), K->free(dhd);
	}
	free(inv), free(cs), free(sn), free(gcs), free(gsn), free(src), free(hd), free(ref), free(got), free(tref),
		free(tgot);
}

TEST(rope)
{
	rope_case(1, 1, 1, 2, 0);       /* one token, one pair */
	rope_case(2, 5, 3, 8, 16);      /* q inside a q|k|v row: ld > nh·D */
	rope_case(3, 37, 2, 64, 64);
	rope_case(1, 300, 1, 128, 0);   /* long positions: large cos/sin arguments */
}

/* ------------------------------------------------------------ swiglu */

static void swiglu_case(int N, int F)
{
	const size_t nf = (size_t)N * F;
	float *gu = xmalloc(2 * nf * 4), *da = xmalloc(nf * 4), *act = xmalloc(nf * 4), *gact = xmalloc(nf * 4);
	float *dgu = xmalloc(2 * nf * 4), *gdgu = xmalloc(2 * nf * 4);
	double *tol = xmalloc(2 * nf * sizeof(double));

	fill(gu, 2 * nf, 8.0f);
	fill(da, nf, 1.0f);
	lora_cpu_swiglu(gu, N, F, act);
	lora_cpu_swiglu_bwd(gu, da, N, F, dgu);
	{
		float *dg = up(gu, 2 * nf * 4), *dda = up(da, nf * 4), *o = poisoned(nf * 4), *o2 = poisoned(2 * nf * 4);

		CHECK(K->swiglu_fwd(dg, N, F, o, NULL) == 0);
		CHECK(K->swiglu_bwd(dg, dda, N, F, o2, NULL) == 0);
		down(gact, o, nf * 4);
		down(gdgu, o2, 2 * nf * 4);
		/* e^-g: the CPU's vexpf within 1e-7 relative, a GPU's expf within 2 ulp (2.4e-7);
		 * 1/(1+e) carries that error at most, then 3 roundings: 4e-7 + 3u < 6e-7 */
		CHECK(cmp("swiglu act", gact, act, nf, 1e-37, 6e-7, NULL) == 0);
		/* backward: s within 4e-7 relative; d gate has 1 - s, whose error is 4e-7·s
		 * absolute, times |g|: so |da·up|·(|g| + 1)·1e-6 absolute on top */
		for (size_t n = 0; n < (size_t)N; n++)
			for (int i = 0; i < F; i++) {
				const double g = gu[n * 2 * F + i], u = gu[n * 2 * F + F + i], d = da[n * F + i];
				tol[n * 2 * F + i] = fabs(d * u) * (fabs(g) + 1.0) * 1e-6;
				tol[n * 2 * F + F + i] = 0.0;
			}
		CHECK(cmp("swiglu dgu", gdgu, dgu, 2 * nf, 1e-37, 8e-7, tol) == 0);
		K->free(dg), K->free(dda), K->free(o), K->free(o2);
	}
	free(gu), free(da), free(act), free(gact), free(dgu), free(gdgu), free(tol);
}

TEST(swiglu)
{
	swiglu_case(1, 1);
	swiglu_case(3, 37);
	swiglu_case(7, 1001);
}

/*
 * Gemma's GELU-tanh gate.  Both sides compute the argument of tanh with the same
 * roundings in the same order (no contraction): the same number.  tanhf is within
 * 2 ulp on a GPU (CUDA guide) and in glibc, so the two t differ by 4 ulp <= 8u·|t|.
 *   gelu = (0.5·g)·(1 + t): 0.5·|g|·8u|t| from t, two roundings: 4u|g·t| + 2u|gelu|;
 *   act = gelu·up, d up = dact·gelu: 4u|g·t·up| (|g·t·dact|) + 3u|result|.
 *   gelu' = lin + curv, lin = 0.5·(1 + t): 4u|t| + 2u|lin|;  curv = 0.5·g·(1 - t²)·β·(1 + 3κg²):
 *   t² is off by 2|t|·8u|t| + u·t², so curv by 0.5|g|·β·(1 + 3κg²)·17u·t² + 6u|curv|;
 *   d gate = (dact·up)·gelu': |dact·up|·(that + 2u|gelu'|) + u|d gate|.
 */
static void geglu_case(int N, int F, float a)
{
	const size_t nf = (size_t)N * F;
	const double beta = 0.7978845608028654, kappa = 0.044715;
	float *gu = xmalloc(2 * nf * 4), *da = xmalloc(nf * 4), *act = xmalloc(nf * 4), *gact = xmalloc(nf * 4);
	float *dgu = xmalloc(2 * nf * 4), *gdgu = xmalloc(2 * nf * 4);
	double *tol = xmalloc(2 * nf * sizeof(double)), *tola = xmalloc(nf * sizeof(double));

	fill(gu, 2 * nf, a);
	fill(da, nf, 1.0f);
	lora_cpu_geglu(gu, N, F, act);
	lora_cpu_geglu_bwd(gu, da, N, F, dgu);
	for (size_t n = 0; n < (size_t)N; n++)
		for (int i = 0; i < F; i++) {
			const double g = gu[n * 2 * F + i], u = gu[n * 2 * F + F + i], d = da[n * F + i];
			const double t = tanh(beta * (g + kappa * g * g * g)), gl = 0.5 * g * (1.0 + t);
			const double lin = 0.5 * (1.0 + t), curv = 0.5 * g * (1.0 - t * t) * beta * (1.0 + 3.0 * kappa * g * g);
			const double gd = 4 * U * fabs(t) + 2 * U * fabs(lin) +
					  0.5 * fabs(g) * beta * (1.0 + 3.0 * kappa * g * g) * 17 * U * t * t +
					  6 * U * fabs(curv) + 2 * U * fabs(lin + curv);
			tola[n * F + i] = 4 * U * fabs(g * t * u) + 3 * U * fabs(gl * u);
			tol[n * 2 * F + F + i] = 4 * U * fabs(g * t * d) + 3 * U * fabs(gl * d);
			tol[n * 2 * F + i] = fabs(d * u) * gd + U * fabs(d * u * (lin + curv));
		}
	{
		float *dg = up(gu, 2 * nf * 4), *dda = up(da, nf * 4), *o = poisoned(nf * 4), *o2 = poisoned(2 * nf * 4);

		CHECK(K->geglu_fwd(dg, N, F, o, NULL) == 0);
		CHECK(K->geglu_bwd(dg, dda, N, F, o2, NULL) == 0);
		down(gact, o, nf * 4);
		down(gdgu, o2, 2 * nf * 4);
		CHECKF(cmp("geglu act", gact, act, nf, 1e-37, 0.0, tola) == 0, "N %d F %d", N, F);
		CHECKF(cmp("geglu dgu", gdgu, dgu, 2 * nf, 1e-37, 0.0, tol) == 0, "N %d F %d", N, F);
		K->free(dg), K->free(dda), K->free(o), K->free(o2);
	}
	free(gu), free(da), free(act), free(gact), free(dgu), free(gdgu), free(tol), free(tola);
}

TEST(geglu)
{
	geglu_case(1, 1, 1.0f);
	geglu_case(3, 37, 8.0f);      /* tanh saturated at both ends for |g| > ~3 */
	geglu_case(7, 1001, 3.0f);    /* 7007 elements: 28 blocks, the last partial */
	geglu_case(2, 300, 1e-3f);    /* small gates: t ≈ β·g, gelu ≈ g/2 */
}

/* ------------------------------------------------------------ residual */

static void ew_case(size_t n)
{
	float *a = xmalloc(n * 4), *b = xmalloc(n * 4), *y = xmalloc(n * 4), *y0 = xmalloc(n * 4), *g = xmalloc(n * 4);

	fill(a, n, 3.0f);
	fill(b, n, 3.0f);
	fill(y0, n, 3.0f);
	{
		float *da = up(a, n * 4), *db = up(b, n * 4), *dy = poisoned(n * 4);

		/* one rounding each, as the CPU: equal (tolerance 0) */
		lora_cpu_add(a, b, y, n);
		CHECK(K->add(da, db, dy, n, NULL) == 0);
		down(g, dy, n * 4);
		CHECK(cmp("add", g, y, n, 0.0, 0.0, NULL) == 0);
		memcpy(y, y0, n * 4);
		lora_cpu_addmul(a, b, y, n);
		CHECK(K->memcpy(dy, y0, n * 4, NULL) == 0);
		CHECK(K->addmul(da, db, dy, n, NULL) == 0);
		down(g, dy, n * 4);
		CHECK(cmp("addmul", g, y, n, 0.0, 0.0, NULL) == 0);
		K->free(da), K->free(db), K->free(dy);
	}
	free(a), free(b), free(y), free(y0), free(g);
}

TEST(residual)
{
	ew_case(1);
	ew_case(1000);
	ew_case(256 * 65535 + 77);   /* more than one grid-stride pass */
}

/* ------------------------------------------------------------ clipping + AdamW */

static void adamw_case(size_t n, double max_norm, double wd, float gscale)
{
	struct lora_optim_cfg cfg;
	struct lora_adamw opt;
	struct lora_err err = {0};
	float *p = xmalloc(n * 4), *g = xmalloc(n * 4), *gc = xmalloc(n * 4);
	float *gp = xmalloc(n * 4), *gm = xmalloc(n * 4), *gv = xmalloc(n * 4);
	float *dp, *dg, *dm, *dv, *dcoef, coef;
	double *dscr, *dnorm, norm;

	lora_optim_defaults(&cfg);
	cfg.max_grad_norm = max_norm;
	cfg.weight_decay = wd;
	fill(p, n, 0.1f);
	CHECK(lora_adamw_init(&opt, n, &err) == 0);
	dp = up(p, n * 4);
	dm = dev(n * 4);
	dv = dev(n * 4);
	CHECK(K->memset(dm, 0, n * 4, NULL) == 0 && K->memset(dv, 0, n * 4, NULL) == 0);
	dg = dev(n * 4);
	dscr = dev(LORA_CUDA_NORM_BLOCKS * sizeof(double));
	dnorm = dev(sizeof(double));
	dcoef = dev(sizeof(float));
	for (int step = 0; step < 3; step++) {
		const double lr = 1e-3 * (step + 1);
		struct lora_cuda_adamw k;
		double cpu_norm;

		fill(g, n, gscale);
		memcpy(gc, g, n * 4);
		CHECK(K->memcpy(dg, g, n * 4, NULL) == 0);
		CHECK(K->memset(dnorm, 0xff, sizeof(double), NULL) == 0 && K->memset(dcoef, 0xff, 4, NULL) == 0);
		cpu_norm = lora_clip_grad_norm(gc, n, max_norm);
		lora_adamw_step(&opt, &cfg, p, gc, lr);
		lora_adamw_consts(&cfg, step + 1, lr, &k);
		CHECK(K->grad_norm(dg, n, (float)max_norm, dscr, dnorm, dcoef, NULL) == 0);
		CHECK(K->adamw(dp, dg, dm, dv, n, k, dcoef, NULL) == 0);
		down(&norm, dnorm, sizeof(double));
		down(&coef, dcoef, sizeof(float));
		down(gp, dp, n * 4);
		down(gm, dm, n * 4);
		down(gv, dv, n * 4);
		/* both sum g² in double, in another order: n·2^-53 relative */
		CHECK_NEAR(norm, cpu_norm, 0.0, (double)(n + 8) * 0x1p-53);
		/* fp32 norm rounds alike unless the doubles straddle a rounding point (then one
		 * ulp of coef, 2u relative in the clipped gradient); everything else in AdamW is
		 * the same operations in the same order: equal when coef is */
		{
			const float cpu_coef = (float)max_norm / ((float)cpu_norm + 1e-6f);
			const int same = max_norm <= 0.0 || (float)norm == (float)cpu_norm;
			if (max_norm > 0.0)
				CHECK_NEAR(coef, cpu_coef, 0.0, same ? 0.0 : 2 * U);
			else
				CHECK(coef == 1.0f);
			/* m and v after t steps: each step's gradient within 2u; p moves by at most lr
			 * per step, its update within a few u of that: loose bound 16u·lr·t + 4u|p| */
			CHECK(cmp("adamw m", gm, opt.m, n, 0.0, same ? 0.0 : 8 * U, NULL) == 0);
			CHECK(cmp("adamw v", gv, opt.v, n, 0.0, same ? 0.0 : 8 * U, NULL) == 0);
			CHECK(cmp("adamw p", gp, p, n, same ? 0.0 : 16 * U * 1e-3 * 6, same ? 0.0 : 4 * U, NULL) == 0);
		}
	}
	K->free(dp), K->free(dg), K->free(dm), K->free(dv), K->free(dscr), K->free(dnorm), K->free(dcoef);
	lora_adamw_free(&opt);
	free(p), free(g), free(gc), free(gp), free(gm), free(gv);
}

TEST(adamw_clip)
{
	adamw_case(1, 1.0, 0.0, 1.0f);
	adamw_case(1000, 1.0, 0.01, 1.0f);          /* clipped (norm ~18), weight decay */
	adamw_case(100003, 1e9, 0.0, 1e-3f);        /* not clipped */
	adamw_case(100003, 0.0, 0.1, 1.0f);         /* no clipping asked */
	adamw_case(256 * 256 * 3 + 5, 0.5, 0.0, 2.0f);   /* several elements per thread in the norm */
}

/* ------------------------------------------------------------ gemm wrapper, LoRA path */

static void sgemm(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda, const float *b, int ldb,
		  float beta, float *c, int ldc)
{
	cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k, alpha, a,
		    lda, b, ldb, beta, c, ldc);
}

static float *absdup(const float *x, size_t n)
{
	float *y = xmalloc(n * 4);
	for (size_t i = 0; i < n; i++)
		y[i] = fabsf(x[i]);
	return y;
}

/* tol[i] = kk·u·mag[i]: a sum of at most kk products in another order, mag = Σ|terms| */
static double *tol_of(const float *mag, size_t n, double kk)
{
	double *t = xmalloc(n * sizeof(double));
	for (size_t i = 0; i < n; i++)
		t[i] = kk * U * mag[i];
	return t;
}

/* One product through the wrapper, bf16 or fp32 operands, against sgemm on the same
 * (bf16-rounded, widened: exact) values. */
static void gemm_case(void *h, int ta, int tb, int m, int n, int k, int bf)
{
	const int ra = ta ? k : m, ca = ta ? m : k, rb = tb ? n : k, cb = tb ? k : n;
	const size_t na = (size_t)ra * ca, nb = (size_t)rb * cb, nc = (size_t)m * n;
	float *a = xmalloc(na * 4), *b = xmalloc(nb * 4), *c0 = xmalloc(nc * 4), *c = xmalloc(nc * 4), *g = xmalloc(nc * 4);
	uint16_t *a16 = xmalloc(na * 2), *b16 = xmalloc(nb * 2);
	float *aa, *ab, *mag;
	double *tol;

	fill(a, na, 1.0f);
	fill(b, nb, 1.0f);
	fill(c0, nc, 1.0f);
	for (size_t i = 0; i < na; i++)
		a16[i] = lora_f32_to_bf16(a[i]), a[i] = bf ? lora_bf16_to_f32(a16[i]) : a[i];
	for (size_t i = 0; i < nb; i++)
		b16[i] = lora_f32_to_bf16(b[i]), b[i] = bf ? lora_bf16_to_f32(b16[i]) : b[i];
	memcpy(c, c0, nc * 4);
	sgemm(ta, tb, m, n, k, 0.75f, a, ca, b, cb, 0.5f, c, n);
	aa = absdup(a, na), ab = absdup(b, nb), mag = absdup(c0, nc);
	sgemm(ta, tb, m, n, k, 0.75f, aa, ca, ab, cb, 0.5f, mag, n);
	tol = tol_of(mag, nc, k + 2);
	{
		void *da = bf ? up(a16, na * 2) : up(a, na * 4), *db = bf ? up(b16, nb * 2) : up(b, nb * 4);
		float *dc = up(c0, nc * 4);

		CHECK(K->gemm(h, ta, tb, m, n, k, 0.75f, da, bf, ca, db, bf, cb, 0.5f, dc, n) == 0);
		down(g, dc, nc * 4);
		CHECKF(cmp("gemm", g, c, nc, 0.0, 0.0, tol) == 0, "ta %d tb %d %dx%dx%d bf16 %d", ta, tb, m, n, k, bf);
		K->free(da), K->free(db), K->free(dc);
	}
	free(a), free(b), free(c0), free(c), free(g), free(a16), free(b16), free(aa), free(ab), free(mag), free(tol);
}

TEST(gemm)
{
	void *h = NULL;

	CHECK(K->blas_create(&h, NULL) == 0);
	for (int ta = 0; ta < 2; ta++)
		for (int tb = 0; tb < 2; tb++)
			for (int bf = 0; bf < 2; bf++) {
				gemm_case(h, ta, tb, 1, 1, 1, bf);
				gemm_case(h, ta, tb, 17, 33, 65, bf);
				gemm_case(h, ta, tb, 3, 130, 7, bf);
			}
	K->blas_destroy(h);
}

/* The sequence of lin_fwd / lin_bwd (train/model_cpu.c) on the CPU, on whatever arrays it is given
 * (the values, or their magnitudes for the tolerances). */
static void lora_ref(const float *xa, const float *dy, int lddy, int N, int in, int out, int r, const float *A,
		     const float *B, float scale, float *u, float *y, int ldy, float *gA, float *gB, float *du,
		     float *dx, const float *mask, float *xd)
{
	sgemm(0, 1, N, r, in, 1.0f, xa, in, A, in, 0.0f, u, r);
	sgemm(0, 1, N, out, r, scale, u, r, B, r, 1.0f, y, ldy);
	sgemm(1, 0, out, r, N, scale, dy, lddy, u, r, 1.0f, gB, r);
	sgemm(0, 0, N, r, out, scale, dy, lddy, B, r, 0.0f, du, r);
	sgemm(1, 0, r, in, N, 1.0f, du, r, xa, in, 1.0f, gA, in);
	if (!mask) {
		sgemm(0, 0, N, in, r, 1.0f, du, r, A, in, 1.0f, dx, in);
	} else {
		sgemm(0, 0, N, in, r, 1.0f, du, r, A, in, 0.0f, xd, in);
		lora_cpu_addmul(xd, mask, dx, (size_t)N * in);
	}
}

static void lora_case(int N, int in, int out, int r, int ldy, int dropout)
{
	const size_t nx = (size_t)N * in, ny = (size_t)N * ldy, nu = (size_t)N * r;
	const size_t nA = (size_t)r * in, nB = (size_t)out * r;
	const float scale = 2.0f;
	float *x = xmalloc(nx * 4), *mask = xmalloc(nx * 4), *A = xmalloc(nA * 4), *B = xmalloc(nB * 4);
	float *dy = xmalloc(ny * 4), *y0 = xmalloc(ny * 4), *gA0 = xmalloc(nA * 4), *gB0 = xmalloc(nB * 4);
	float *dx0 = xmalloc(nx * 4);
	float *ref[7], *mag[7], *got[7];
	const size_t len[7] = {nu, ny, nA, nB, nu, nx, nx};
	const char *name[7] = {"lora u", "lora y", "lora gA", "lora gB", "lora du", "lora dx", "lora xd"};
	/* inner sizes met along the chain: u (in), y (+r), gB (+N), du (out), gA (+N), dx (+r) */
	const double kk[7] = {in + 2, in + r + 4, in + N + 4, out + 2, out + N + 4, out + r + 4, out + r + 4};
	void *h = NULL;

	fill(x, nx, 1.0f);
	for (size_t i = 0; i < nx; i++)
		mask[i] = dropout && (rnd64() & 3) == 0 ? 0.0f : (dropout ? 1.0f / 0.75f : 1.0f);
	for (size_t i = 0; i < nx; i++)
		x[i] *= mask[i];   /* xa = x·mask, as lora_input makes it */
	fill(A, nA, 0.3f);
	fill(B, nB, 0.3f);
	fill(dy, ny, 1.0f);
	fill(y0, ny, 1.0f);
	fill(gA0, nA, 0.1f);
	fill(gB0, nB, 0.1f);
	fill(dx0, nx, 1.0f);
	for (int v = 0; v < 7; v++) {
		ref[v] = xmalloc(len[v] * 4), mag[v] = xmalloc(len[v] * 4), got[v] = xmalloc(len[v] * 4);
	}
	memcpy(ref[1], y0, ny * 4), memcpy(ref[2], gA0, nA * 4), memcpy(ref[3], gB0, nB * 4), memcpy(ref[5], dx0, nx * 4);
	lora_ref(x, dy, ldy, N, in, out, r, A, B, scale, ref[0], ref[1], ldy, ref[2], ref[3], ref[4], ref[5],
		 dropout ? mask : NULL, ref[6]);
	{
		float *ax = absdup(x, nx), *aA = absdup(A, nA), *aB = absdup(B, nB), *ady = absdup(dy, ny);
		float *ay = absdup(y0, ny), *agA = absdup(gA0, nA), *agB = absdup(gB0, nB), *adx = absdup(dx0, nx);
		memcpy(mag[1], ay, ny * 4), memcpy(mag[2], agA, nA * 4), memcpy(mag[3], agB, nB * 4), memcpy(mag[5], adx, nx * 4);
		lora_ref(ax, ady, ldy, N, in, out, r, aA, aB, scale, mag[0], mag[1], ldy, mag[2], mag[3], mag[4], mag[5],
			 dropout ? mask : NULL, mag[6]);
		free(ax), free(aA), free(aB), free(ady), free(ay), free(agA), free(agB), free(adx);
	}
	CHECK(K->blas_create(&h, NULL) == 0);
	{
		float *dX = up(x, nx * 4), *dM = up(mask, nx * 4), *dA = up(A, nA * 4), *dB = up(B, nB * 4);
		float *dDY = up(dy, ny * 4), *dY = up(y0, ny * 4), *dgA = up(gA0, nA * 4), *dgB = up(gB0, nB * 4);
		float *dU = poisoned(nu * 4), *dDU = poisoned(nu * 4), *dDX = up(dx0, nx * 4), *dXD = poisoned(nx * 4);
		float *dv[7] = {dU, dY, dgA, dgB, dDU, dDX, dXD};

		CHECK(K->lora_fwd(h, dX, N, in, out, r, dA, dB, scale, dU, dY, ldy, NULL) == 0);
		CHECK(K->lora_bwd(h, dX, dDY, ldy, dU, N, in, out, r, dA, dB, scale, dgA, dgB, dDU, dDX,
				  dropout ? dM : NULL, dXD, NULL) == 0);
		for (int v = 0; v < 7; v++) {
			double *tol;
			if (v == 6 && !dropout)
				continue;
			down(got[v], dv[v], len[v] * 4);
			tol = tol_of(mag[v], len[v], kk[v]);
			CHECKF(cmp(name[v], got[v], ref[v], len[v], 0.0, 0.0, tol) == 0, "N %d in %d out %d r %d dropout %d",
			       N, in, out, r, dropout);
			free(tol);
		}
		for (int v = 0; v < 7; v++)
			K->free(dv[v]);
		K->free(dX), K->free(dM), K->free(dA), K->free(dB), K->free(dDY);
	}
	K->blas_destroy(h);
	for (int v = 0; v < 7; v++)
		free(ref[v]), free(mag[v]), free(got[v]);
	free(x), free(mask), free(A), free(B), free(dy), free(y0), free(gA0), free(gB0), free(dx0);
}

TEST(lora_path)
{
	lora_case(1, 1, 1, 1, 1, 0);
	lora_case(7, 33, 20, 4, 20, 0);
	lora_case(7, 33, 20, 4, 52, 1);     /* y inside a wider row (q of q|k|v), dropout */
	lora_case(37, 64, 96, 16, 96, 1);
}

/* ------------------------------------------------------------ cross-entropy */

static void xent_case(int nc, int V, int vc, float zscale)
{
	const size_t nz = (size_t)nc * V;
	const float scale = 0.125f;
	float *z = xmalloc(nz * 4), *dl = xmalloc(nz * 4), *got = xmalloc(nz * 4);
	int32_t *tgt = xmalloc((size_t)nc * 4);
	double *loss = xmalloc((size_t)nc * 8), *loss2 = xmalloc((size_t)nc * 8), *gl = xmalloc((size_t)nc * 8);

	fill(z, nz, zscale);
	for (int i = 0; i < nc; i++)
		tgt[i] = i % 5 == 3 ? -100 : (int32_t)(rnd64() % (uint64_t)V);   /* every 5th row unlabelled */
	if (nc > 1)
		tgt[1] = V - 1;   /* the target in the last, partial chunk */
	memcpy(dl, z, nz * 4);
	lora_cpu_xent(dl, tgt, nc, V, scale, 1, loss);
	{
		float *tmp = xmalloc(nz * 4);   /* the forward-only branch gives the same losses */
		memcpy(tmp, z, nz * 4);
		lora_cpu_xent(tmp, tgt, nc, V, scale, 0, loss2);
		CHECK(memcmp(loss, loss2, (size_t)nc * 8) == 0);
		free(tmp);
	}
	{
		float *dz = up(z, nz * 4), *dm = poisoned((size_t)nc * 4), *dzt = poisoned((size_t)nc * 4);
		int32_t *dt = up(tgt, (size_t)nc * 4);
		double *ds = poisoned((size_t)nc * 8), *dlo = poisoned((size_t)nc * 8);
		double *tol = xmalloc(nz * sizeof(double));

		for (int v0 = 0; v0 < V; v0 += vc)
			CHECK(K->xent_stats(dz + v0, V, nc, v0, V - v0 < vc ? V - v0 : vc, dt, dm, ds, dzt, v0 == 0, NULL) == 0);
		CHECK(K->xent_loss(dm, ds, dzt, dt, nc, dlo, NULL) == 0);
		for (int v0 = 0; v0 < V; v0 += vc)
			CHECK(K->xent_grad(dz + v0, V, nc, v0, V - v0 < vc ? V - v0 : vc, dt, dm, ds, scale, NULL) == 0);
		down(gl, dlo, (size_t)nc * 8);
		down(got, dz, nz * 4);
		/* The sum of e^(z - max): each term within |z - max|·u (the fp32 argument, from
		 * chunk-wise maxima) + 2.4e-7 (expf, vs the CPU's vexpf within 1e-7), so the
		 * log of the sum is within (2·zscale·u + 3.5e-7) absolute, plus the double sums */
		for (int i = 0; i < nc; i++) {
			if (tgt[i] < 0) {
				CHECK(gl[i] == -1.0);
				continue;
			}
			CHECK_NEAR(gl[i], loss[i], 2.0 * zscale * U + 3.5e-7, 1e-12);
		}
		/* d logits: e^(z - max) (same max: exact) within 3.4e-7 relative, times scale/s,
		 * s within the same bound as above, so relative 2·(2·zscale·u + 3.5e-7) + 2u;
		 * at the target, minus scale: that error is absolute, from |p·scale| <= scale */
		for (size_t i = 0; i < nz; i++)
			tol[i] = (2.0 * (2.0 * zscale * U + 3.5e-7) + 2 * U) * scale;
		CHECK(cmp("xent dlogits", got, dl, nz, 1e-37, 2.0 * (2.0 * zscale * U + 3.5e-7) + 2 * U, tol) == 0);
		K->free(dz), K->free(dm), K->free(dzt), K->free(dt), K->free(ds), K->free(dlo);
		free(tol);
	}
	free(z), free(dl), free(got), free(tgt), free(loss), free(loss2), free(gl);
}

/*
 * Gemma 2's final soft-capping on the chunked path: softcap on each chunk, then xent_stats,
 * xent_loss, xent_grad_softcap, against head_part with final_softcap.  The capped logits:
 * the same division on both sides, tanhf 2 ulp each (8u·|t|) and the product: 10u·|z_c|.
 * Then as xent_case with |z - max| <= 2·zb, zb = min(zscale, cap), and each capped logit
 * off by 10u·cap more (in z and in the max: 20u·cap in every exponent); the factor
 * 1 - (z_c/cap)² is off by 2·10u + 2u, times |d| <= scale.
 */
static void xent_cap_case(int nc, int V, int vc, float zscale, float cap)
{
	const size_t nz = (size_t)nc * V;
	const float scale = 0.25f;
	const double zb = zscale < cap ? zscale : cap, ez = 2.0 * zb * U + 3.5e-7 + 20.0 * U * cap;
	float *z = xmalloc(nz * 4), *zc = xmalloc(nz * 4), *dl = xmalloc(nz * 4), *got = xmalloc(nz * 4);
	int32_t *tgt = xmalloc((size_t)nc * 4);
	double *loss = xmalloc((size_t)nc * 8), *gl = xmalloc((size_t)nc * 8), *tol = xmalloc(nz * sizeof(double));

	fill(z, nz, zscale);
	for (int i = 0; i < nc; i++)
		tgt[i] = i % 4 == 2 ? -100 : (int32_t)(rnd64() % (uint64_t)V);
	memcpy(zc, z, nz * 4);
	lora_cpu_softcap(zc, nz, cap);
	memcpy(dl, zc, nz * 4);
	lora_cpu_xent_softcap(dl, tgt, nc, V, scale, 1, cap, loss);
	{
		float *dz = up(z, nz * 4), *dm = poisoned((size_t)nc * 4), *dzt = poisoned((size_t)nc * 4);
		int32_t *dt = up(tgt, (size_t)nc * 4);
		double *ds = poisoned((size_t)nc * 8), *dlo = poisoned((size_t)nc * 8);

		for (int v0 = 0; v0 < V; v0 += vc) {
			const int w = V - v0 < vc ? V - v0 : vc;
			CHECK(K->softcap(dz + v0, V, nc, w, cap, NULL) == 0);
			CHECK(K->xent_stats(dz + v0, V, nc, v0, w, dt, dm, ds, dzt, v0 == 0, NULL) == 0);
		}
		down(got, dz, nz * 4);
		CHECKF(cmp("softcap z", got, zc, nz, 1e-37, 10 * U, NULL) == 0, "nc %d V %d cap %g", nc, V, cap);
		CHECK(K->xent_loss(dm, ds, dzt, dt, nc, dlo, NULL) == 0);
		for (int v0 = 0; v0 < V; v0 += vc)
			CHECK(K->xent_grad_softcap(dz + v0, V, nc, v0, V - v0 < vc ? V - v0 : vc, dt, dm, ds, scale, cap,
						   NULL) == 0);
		down(gl, dlo, (size_t)nc * 8);
		down(got, dz, nz * 4);
		for (int i = 0; i < nc; i++) {
			if (tgt[i] < 0) {
				CHECK(gl[i] == -1.0);
				continue;
			}
			CHECK_NEAR(gl[i], loss[i], ez + 10.0 * U * cap, 1e-12);
		}
		for (size_t i = 0; i < nz; i++)
			tol[i] = (2.0 * ez + 2 * U) * scale + 22.0 * U * scale;
		CHECKF(cmp("xent softcap dlogits", got, dl, nz, 1e-37, 2.0 * ez + 4 * U, tol) == 0, "nc %d V %d cap %g", nc,
		       V, cap);
		K->free(dz), K->free(dm), K->free(dzt), K->free(dt), K->free(ds), K->free(dlo);
	}
	free(z), free(zc), free(dl), free(got), free(tgt), free(loss), free(gl), free(tol);
}

TEST(xent_softcap)
{
	xent_cap_case(1, 1, 256, 1.0f, 2.0f);       /* one token, one word */
	xent_cap_case(5, 1001, 256, 40.0f, 30.0f);  /* Gemma 2's cap 30, logits well past it; an unlabelled row */
	xent_cap_case(9, 3000, 97, 8.0f, 5.0f);     /* many odd chunks */
}

TEST(xent)
{
	xent_case(1, 1, 256, 1.0f);       /* one token, one word */
	xent_case(4, 1001, 256, 8.0f);    /* 4 chunks, the last partial; an unlabelled row */
	xent_case(11, 700, 1000, 8.0f);   /* one chunk wider than the vocabulary */
	xent_case(9, 3000, 97, 20.0f);    /* many odd chunks, a wide range of logits */
}

/* ------------------------------------------------------------ attention */

/* scaling 0: D^-0.5 (Gemma's query_pre_attn_scalar gives another); cap > 0: Gemma 2's soft-capping */
static void attn_cap_case(int B, int H, int KV, int T, int D, int window, float qs, float sc, float cap)
{
	const size_t nq = (size_t)B * H * T * D, nkv = (size_t)B * KV * T * D, nl = (size_t)B * H * T;
	const float scaling = sc > 0 ? sc : (float)pow((double)D, -0.5);
	float *q = xmalloc(nq * 4), *k = xmalloc(nkv * 4), *v = xmalloc(nkv * 4);
	float *att = xmalloc(nq * 4), *lse = xmalloc(nl * 4), *gatt = xmalloc(nq * 4), *glse = xmalloc(nl * 4);
	double *tatt = xmalloc(nq * sizeof(double)), *tlse = xmalloc(nl * sizeof(double));

	fill(q, nq, qs);
	fill(k, nkv, qs);
	fill(v, nkv, 1.0f);
	CHECK(lora_cpu_attn_fwd_softcap(q, k, v, B, H, KV, T, D, scaling, window, cap, att, lse) == 0);
	/*
	 * Per query row with nk keys: |s| <= A = scaling·max_j Σ|q·k|, and s itself is off
	 * by D·u·A (another summation order).  Each probability is off by that, by expf's
	 * 2 ulp (2.4e-7; the CPU's vexpf 1e-7), and by one more expf and rounding each time
	 * the running max grows (at most nk times): δ = 3.5e-7·(nk + 1) + 2·(D + 2)·u·A.
	 * out is a weighted mean of v: within 2δ·max|v| + 4u|out|; lse within δ + 2u|lse|.
	 * Soft-capped, each side's score is cap·tanh(s/cap): the raw error times tanh' <= 1, and
	 * tanhf's 2 ulp (4u·cap), the division and the product (u·cap each): δ grows by 12u·cap.
	 */
	for (int b = 0; b < B; b++)
		for (int h = 0; h < H; h++)
			for (int i = 0; i < T; i++) {
				const int kvh = h / (H / KV), lo = window > 0 && i - window + 1 > 0 ? i - window + 1 : 0;
				const float *qi = q + (((size_t)b * H + h) * T + i) * D;
				const float *kb = k + ((size_t)b * KV + kvh) * T * D, *vb = v + ((size_t)b * KV + kvh) * T * D;
				double A = 0.0, vmax = 0.0, delta;
				for (int j = lo; j <= i; j++) {
					double dot = 0.0;
					for (int d = 0; d < D; d++) {
						dot += fabs((double)qi[d] * kb[(size_t)j * D + d]);
						vmax = fmax(vmax, fabs(vb[(size_t)j * D + d]));
					}
					A = fmax(A, dot * scaling);
				}
				delta = 3.5e-7 * (i - lo + 2) + 2.0 * (D + 2) * U * A + (cap > 0 ? 12.0 * U * cap : 0.0);
				tlse[((size_t)b * H + h) * T + i] = delta;
				for (int d = 0; d < D; d++)
					tatt[((size_t)b * T + i) * H * D + (size_t)h * D + d] = 2.0 * delta * vmax;
			}
	{
		float *dq = up(q, nq * 4), *dk = up(k, nkv * 4), *dv = up(v, nkv * 4);
		float *da = poisoned(nq * 4), *dl = poisoned(nl * 4);

		if (cap > 0)
			CHECK(K->attn_fwd_softcap(dq, dk, dv, B, H, KV, T, D, scaling, window, cap, da, dl, NULL) == 0);
		else
			CHECK(K->attn_fwd(dq, dk, dv, B, H, KV, T, D, scaling, window, da, dl, NULL) == 0);
		down(gatt, da, nq * 4);
		down(glse, dl, nl * 4);
		CHECKF(cmp("attn out", gatt, att, nq, 0.0, 4 * U, tatt) == 0, "B %d H %d KV %d T %d D %d window %d", B, H,
		       KV, T, D, window);
		CHECKF(cmp("attn lse", glse, lse, nl, 0.0, 2 * U, tlse) == 0, "B %d H %d KV %d T %d D %d window %d", B, H,
		       KV, T, D, window);
		K->free(dq), K->free(dk), K->free(dv), K->free(da), K->free(dl);
	}
	free(q), free(k), free(v), free(att), free(lse), free(gatt), free(glse), free(tatt), free(tlse);
}

static void attn_case(int B, int H, int KV, int T, int D, int window, float qs, float sc)
{
	attn_cap_case(B, H, KV, T, D, window, qs, sc, 0.0f);
}

TEST(attn_fwd)
{
	attn_case(1, 1, 1, 1, 1, 0, 1.0f, 0);       /* one token */
	attn_case(2, 4, 4, 37, 16, 0, 1.0f, 0);     /* GQA ratio 1, T not a multiple of the tiles */
	attn_case(2, 6, 2, 70, 24, 0, 2.0f, 0);     /* ratio 3, two query blocks, three key tiles */
	attn_case(1, 4, 1, 131, 64, 19, 2.0f, 0);   /* ratio 4, sliding window inside the tiles */
	attn_case(1, 2, 2, 65, 128, 64, 1.0f, 0);   /* head dim 128, window = one query block */
	attn_case(1, 4, 2, 40, 32, 0, 1.0f, 0.0625f);   /* another scaling (query_pre_attn_scalar 256) */
}

TEST(attn_softcap_fwd)
{
	attn_cap_case(1, 1, 1, 1, 1, 0, 1.0f, 0, 1.0f);         /* one token */
	attn_cap_case(2, 4, 4, 37, 16, 0, 3.0f, 0, 1.5f);       /* ratio 1; scores well past the cap */
	attn_cap_case(2, 6, 2, 70, 24, 0, 3.0f, 0, 2.0f);       /* ratio 3, two query blocks */
	attn_cap_case(1, 4, 1, 131, 64, 19, 2.0f, 0, 2.5f);     /* ratio 4, sliding window */
	attn_cap_case(1, 4, 2, 40, 32, 0, 8.0f, 0.0625f, 50.0f);   /* Gemma 2's cap 50, scaling 1/16 */
}

/*
 * The backward against attn_bwd_part.  Both sides start from the same q, k, v, datt and the
 * CPU forward's lse, so the only differences are rounding and the order of sums.  With p_ij
 * the exact probabilities (double here), per query row i of nk keys:
 *   A_i = scaling·max_j Σ_d |q_i,d·k_j,d|,  M_i = max_j Σ_d |dO_i,d·v_j,d| (bounds |dp|),
 *   εp_i: each side's p is off, relative, by expf (2.4e-7 GPU, 1e-7 vexpf), by the score
 *     (D + 2)·u·A_i and by the subtraction of lse u·(A_i + |lse_i|): both together
 *     εp = 3.5e-7 + 2(D + 2)·u·A + 2u·(A + |lse|);
 *   dp is off by 2D·u·M, Δ = Σ_j p·dp by (2nk·u + εp + 2D·u)·M, so ds = p·(dp - Δ)
 *   (|dp - Δ| <= 2M) is off by p_ij·e_i, e_i = M_i·(3εp_i + (4D + 2nk + 8)·u);
 *   dq_i,d = scaling·Σ_j ds·k: within scaling·Σ_j p_ij·|k_j,d|·(e_i + 4(nk + 2)·u·M_i),
 *   the second term the two sums' rounding (|ds| <= 2p·M);
 *   dk_j,d, dv_j,d sum over the n_j (query, head) pairs that see key j: within
 *   scaling·Σ p_ij·|q_i,d|·(e_i + 4(n_j + 2)·u·M_i) and Σ p_ij·|dO_i,d|·(εp_i + 2(n_j + 2)·u).
 * Plus 2u relative for the last multiply by scaling.
 */
static void attn_bwd_cap_case(int B, int H, int KV, int T, int D, int window, float qs, float sc, float cap)
{
	const size_t nq = (size_t)B * H * T * D, nkv = (size_t)B * KV * T * D, nl = (size_t)B * H * T;
	const float scaling = sc > 0 ? sc : (float)pow((double)D, -0.5);
	const int grp = H / KV;
	float *q = xmalloc(nq * 4), *k = xmalloc(nkv * 4), *v = xmalloc(nkv * 4), *dO = xmalloc(nq * 4);
	float *att = xmalloc(nq * 4), *lse = xmalloc(nl * 4);
	float *dq = xmalloc(nq * 4), *dk = xmalloc(nkv * 4), *dv = xmalloc(nkv * 4);
	float *gdq = xmalloc(nq * 4), *gdk = xmalloc(nkv * 4), *gdv = xmalloc(nkv * 4);
	double *tdq = xmalloc(nq * sizeof(double)), *tdk = xmalloc(nkv * sizeof(double));
	double *tdv = xmalloc(nkv * sizeof(double)), *pr = xmalloc((size_t)T * sizeof(double));

	fill(q, nq, qs);
	fill(k, nkv, qs);
	fill(v, nkv, 1.0f);
	fill(dO, nq, 1.0f);
	CHECK(lora_cpu_attn_fwd_softcap(q, k, v, B, H, KV, T, D, scaling, window, cap, att, lse) == 0);
	CHECK(lora_cpu_attn_bwd_softcap(q, k, v, lse, dO, B, H, KV, T, D, scaling, window, cap, dq, dk, dv) == 0);
	memset(tdq, 0, nq * sizeof(double));
	memset(tdk, 0, nkv * sizeof(double));
	memset(tdv, 0, nkv * sizeof(double));
	for (int b = 0; b < B; b++)
		for (int h = 0; h < H; h++)
			for (int i = 0; i < T; i++) {
				const int kvh = h / grp, lo = window > 0 && i - window + 1 > 0 ? i - window + 1 : 0;
				const int nk = i - lo + 1;
				const size_t row = ((size_t)b * H + h) * T + i;
				const float *qi = q + row * D, *oi = dO + ((size_t)b * T + i) * H * D + (size_t)h * D;
				const float *kb = k + ((size_t)b * KV + kvh) * T * D, *vb = v + ((size_t)b * KV + kvh) * T * D;
				double A = 0.0, M = 0.0, ep, e;

				for (int j = lo; j <= i; j++) {
					double aq = 0.0, ad = 0.0, sd = 0.0;
					for (int d = 0; d < D; d++) {
						aq += fabs((double)qi[d] * kb[(size_t)j * D + d]);
						ad += fabs((double)oi[d] * vb[(size_t)j * D + d]);
						sd += (double)qi[d] * kb[(size_t)j * D + d];
					}
					A = fmax(A, aq * scaling);
					M = fmax(M, ad);
					pr[j] = exp((cap > 0 ? cap * tanh(sd * scaling / cap) : sd * scaling) - lse[row]);
				}
				ep = 3.5e-7 + 2.0 * (D + 2) * U * A + 2.0 * U * (A + fabs(lse[row]));
				e = M * (3.0 * ep + (4.0 * D + 2.0 * nk + 8.0) * U);
				if (cap > 0) {
					/* the capped scores as in the forward (12u·cap more); the two t differ by
					 * dt = (2(D + 2)·u·A + 12u·cap)/cap, so 1 - t² by 2dt + 2u, times |p·(dp - Δ)| <= 2pM */
					const double dt = (2.0 * (D + 2) * U * A + 12.0 * U * cap) / cap;
					ep += 12.0 * U * cap;
					e = M * (3.0 * ep + (4.0 * D + 2.0 * nk + 8.0) * U) + 2.0 * M * (2.0 * dt + 2.0 * U);
				}
				for (int j = lo; j <= i; j++) {
					const int hi = window > 0 && j + window - 1 < T - 1 ? j + window - 1 : T - 1;
					const double nj = (double)grp * (hi - j + 1);
					const size_t kr = ((size_t)b * KV + kvh) * T + j;
					for (int d = 0; d < D; d++) {
						tdq[row * D + d] += scaling * pr[j] * fabs(kb[(size_t)j * D + d]) *
								    (e + 4.0 * (nk + 2) * U * M);
						tdk[kr * D + d] += scaling * pr[j] * fabs(qi[d]) * (e + 4.0 * (nj + 2) * U * M);
						tdv[kr * D + d] += pr[j] * fabs(oi[d]) * (ep + 2.0 * (nj + 2) * U);
					}
				}
			}
	{
		float *gq = up(q, nq * 4), *gk = up(k, nkv * 4), *gv = up(v, nkv * 4), *go = up(dO, nq * 4);
		float *gl = up(lse, nl * 4), *gd = poisoned(nl * 4);
		float *oq = poisoned(nq * 4), *ok = poisoned(nkv * 4), *ov = poisoned(nkv * 4);

		if (cap > 0)
			CHECK(K->attn_bwd_softcap(gq, gk, gv, gl, go, B, H, KV, T, D, scaling, window, cap, gd, oq, ok, ov,
						  NULL) == 0);
		else
			CHECK(K->attn_bwd(gq, gk, gv, gl, go, B, H, KV, T, D, scaling, window, gd, oq, ok, ov, NULL) == 0);
		down(gdq, oq, nq * 4);
		down(gdk, ok, nkv * 4);
		down(gdv, ov, nkv * 4);
		CHECKF(cmp("attn dq", gdq, dq, nq, 0.0, 2 * U, tdq) == 0, "B %d H %d KV %d T %d D %d window %d", B, H,
		       KV, T, D, window);
		CHECKF(cmp("attn dk", gdk, dk, nkv, 0.0, 2 * U, tdk) == 0, "B %d H %d KV %d T %d D %d window %d", B,
		       H, KV, T, D, window);
		CHECKF(cmp("attn dv", gdv, dv, nkv, 0.0, 2 * U, tdv) == 0, "B %d H %d KV %d T %d D %d window %d", B,
		       H, KV, T, D, window);
		K->free(gq), K->free(gk), K->free(gv), K->free(go), K->free(gl), K->free(gd);
		K->free(oq), K->free(ok), K->free(ov);
	}
	free(q), free(k), free(v), free(dO), free(att), free(lse), free(dq), free(dk), free(dv);
	free(gdq), free(gdk), free(gdv), free(tdq), free(tdk), free(tdv), free(pr);
}

static void attn_bwd_case(int B, int H, int KV, int T, int D, int window, float qs, float sc)
{
	attn_bwd_cap_case(B, H, KV, T, D, window, qs, sc, 0.0f);
}

TEST(attn_bwd)
{
	attn_bwd_case(1, 1, 1, 1, 1, 0, 1.0f, 0);       /* one token: ds is exactly 0 */
	attn_bwd_case(2, 4, 4, 37, 16, 0, 1.0f, 0);     /* GQA ratio 1, T not a multiple of the tiles */
	attn_bwd_case(2, 6, 2, 70, 24, 0, 2.0f, 0);     /* ratio 3, two query blocks, three key tiles */
	attn_bwd_case(1, 4, 1, 131, 64, 19, 2.0f, 0);   /* ratio 4, sliding window inside the tiles */
	attn_bwd_case(1, 2, 2, 65, 128, 64, 1.0f, 0);   /* head dim 128, window = one query block */
	attn_bwd_case(1, 4, 2, 40, 32, 0, 1.0f, 0.0625f);   /* another scaling */
}

TEST(attn_softcap_bwd)
{
	attn_bwd_cap_case(1, 1, 1, 1, 1, 0, 1.0f, 0, 1.0f);
	attn_bwd_cap_case(2, 4, 4, 37, 16, 0, 3.0f, 0, 1.5f);
	attn_bwd_cap_case(2, 6, 2, 70, 24, 0, 3.0f, 0, 2.0f);
	attn_bwd_cap_case(1, 4, 1, 131, 64, 19, 2.0f, 0, 2.5f);
	attn_bwd_cap_case(1, 4, 2, 40, 32, 0, 8.0f, 0.0625f, 50.0f);
}

int main(void)
{
	K = lora_cuda_plugin(LORA_CUDA_ABI_VERSION);
	if (!K) {
		printf("FAIL plugin_table\n");
		return 1;
	}
	RUN(table);
	RUN(nf4_dequant);
	RUN(rmsnorm);
	RUN(headnorm);
	RUN(rope);
	RUN(swiglu);
	RUN(geglu);
	RUN(residual);
	RUN(adamw_clip);
	RUN(gemm);
	RUN(lora_path);
	RUN(xent);
	RUN(xent_softcap);
	RUN(attn_fwd);
	RUN(attn_bwd);
	RUN(attn_softcap_fwd);
	RUN(attn_softcap_bwd);
	return t_done();
}
