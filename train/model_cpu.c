/*
 * model_cpu.c - the CPU reference forward and backward.  This is the oracle
 * the CUDA trainer is tested against, and the trainer for machines without a
 * GPU: fp32 arithmetic in the order transformers uses, every matrix product
 * through OpenBLAS sgemm, frozen weights dequantized a chunk of rows at a
 * time just before they are used.  The one approximation is e^x, a
 * polynomial within 1e-7 relative (vexpf), as torch's own vectorized exp is.
 * Results depend only on the inputs and the thread count: bit-identical run
 * to run and with activation checkpointing on or off (OpenBLAS 0.3.21 gave
 * the same bits with 1 and 2 threads too, as it does not split a product's
 * inner dimension).
 *
 * Layouts (row-major; N = B·T tokens, token n = b·T + t):
 *   token-major   [N, width]          residual stream, projections, MLP
 *   head-major    [B, heads, T, D]    q, k, v after RoPE, for attention
 * q|k|v and gate|up are each one product over stacked weights, so their
 * outputs share a row: [N, H·D + 2·KV·D] and [N, 2F].  The loss head never
 * holds [N, V] logits: it works through NC tokens at a time and, when
 * training, turns them into d hidden at once.
 */
#include "train/net.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "train/decode_cpu.h"
#include "train/ops_cpu.h"
#include "train/pool.h"

/*
 * Loops are left to the compiler to vectorize, with an AVX2 clone picked at
 * run time (HOT).  No operation is fused or reordered (fp-contract off, no
 * fast-math), so the vector and scalar paths give the same bits and results
 * do not depend on the machine or on where a loop is cut.
 */
#ifndef __clang__
#pragma GCC optimize("tree-vectorize", "vect-cost-model=dynamic", "no-trapping-math", "fp-contract=off")
#endif
#if defined(__x86_64__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define HOT __attribute__((target_clones("avx2", "default")))
#else
#define HOT
#endif

#define WCHUNK (1u << 20)        /* floats of a dequantized weight chunk (4 MiB) */
#define LOGIT_CHUNK (64u << 20)  /* floats of logits held at once (256 MiB): the lm_head is
                                    widened once per chunk, so chunks must be long */
#define QB 64                    /* attention queries per block */

/* What one layer keeps for its backward pass. */
struct acts {
	float *x;                 /* [N, C] layer input (the residual stream) */
	float *rstd1;             /* [N] 1/rms of x */
	float *h1;                /* [N, C] input_layernorm(x): q/k/v input */
	float *qkr;               /* [N, (H+KV)·D] q|k before their per-head norms (q_norm/k_norm only) */
	float *qkrstd;            /* [N, H+KV] 1/rms of each of those heads */
	float *q;                 /* [B, H, T, D] after RoPE */
	float *k, *v;             /* [B, KV, T, D] (k after RoPE) */
	float *lse;               /* [B, H, T] log-sum-exp of each attention row */
	float *att;               /* [N, H·D] attention output: o_proj input */
	float *o_raw, *rstd3;     /* [N, C], [N] o_proj output before post_attention norm (Gemma 2) */
	float *d_raw, *rstd4;     /* [N, C], [N] down_proj output before post_feedforward norm */
	float *xm;                /* [N, C] x + attention */
	float *rstd2;             /* [N] */
	float *h2;                /* [N, C] post_attention_layernorm(xm): gate/up input */
	float *gu;                /* [N, 2F] gate (columns 0..F) and up (F..2F) projections */
	float *act;               /* [N, F] silu(g)·up: down_proj input */
	float *u[LORA_NTARGET];   /* [N, r] LoRA inner activations (dropout(x)·Aᵀ) */
};

struct cpu {
	int B, T;                 /* the batch shape the buffers are laid out for */
	float *mem;               /* every buffer below points into this */
	size_t cap;               /* floats in mem */
	int n_acts;               /* L, or 1 with checkpointing */
	struct acts *acts;
	float **xs;               /* [L][N, C] layer inputs (checkpointing) */
	float *xL, *hf, *rstd_f;  /* [N, C], [N, C], [N]: final residual and norm */
	float *dx, *dh;           /* [N, C] */
	float *tqkv;              /* [N, H·D + 2·KV·D] q|k|v projections before RoPE / d of them */
	float *to;                /* [N, C] o_proj / down_proj output, recompute sink */
	float *datt;              /* [N, H·D] */
	float *dq, *dk, *dv;      /* head-major gradients */
	float *dact;              /* [N, F] */
	float *dgu;               /* [N, 2F] d gate | d up */
	float *xd, *mask;         /* [N, max in] dropout(x) and its mask */
	float *du;                /* [N, max r] */
	float *S, *P;             /* [threads][QB, T] attention scores / probabilities (and dS) */
	float *G;                 /* [threads][QB, T] d capped / d score (attention soft-capping only) */
	float *cosb, *sinb;       /* [T, D/2] */
	float *cosl, *sinl;       /* [T, D/2] of net->inv_freq_local (Gemma 3's sliding layers) */
	float *wbuf;              /* [WCHUNK] */
	float *logit;             /* [NC, V] */
	double *tok_loss;         /* [NC] per-token loss of a chunk (-1: unlabelled) */
	float *tmp_e;             /* [threads][V] exponentials (forward-only loss) */
	int nc;                   /* tokens per loss chunk */
	int nthreads;
	struct lora_pool *pool;
};

static inline float *take(float **p, size_t n)
{
	float *r = *p;
	*p += (n + 15) & ~(size_t)15;   /* keep 64-byte alignment */
	return r;
}

/* Lay out (or only measure, when base is NULL) every buffer for B x T. */
static size_t layout(struct cpu *c, const struct lora_net *net, int B, int T, float *base)
{
	const size_t N = (size_t)B * T, C = net->C, F = net->F, HD = (size_t)net->H * net->D;
	const size_t KVD = (size_t)net->KV * net->D, mx = C > F ? (C > HD ? C : HD) : (F > HD ? F : HD);
	const size_t R = lora_net_max_rank(net);
	float *p = base ? base : (float *)64;   /* measure: any aligned origin */
	float *start = p;

	for (int l = 0; l < c->n_acts; l++) {
		struct acts *a = &c->acts[l];
		a->x = take(&p, N * C);
		a->rstd1 = take(&p, N);
		a->h1 = take(&p, N * C);
		a->qkr = take(&p, net->qk_norm ? N * (HD + KVD) : 0);
		a->qkrstd = take(&p, net->qk_norm ? N * (size_t)(net->H + net->KV) : 0);
		a->q = take(&p, N * HD);
		a->k = take(&p, N * KVD);
		a->v = take(&p, N * KVD);
		a->lse = take(&p, N * net->H);
		a->att = take(&p, N * HD);
		a->o_raw = take(&p, net->gemma ? N * C : 0);
		a->rstd3 = take(&p, net->gemma ? N : 0);
		a->d_raw = take(&p, net->gemma ? N * C : 0);
		a->rstd4 = take(&p, net->gemma ? N : 0);
		a->xm = take(&p, N * C);
		a->rstd2 = take(&p, N);
		a->h2 = take(&p, N * C);
		a->gu = take(&p, N * 2 * F);
		a->act = take(&p, N * F);
		for (int t = 0; t < LORA_NTARGET; t++) {
			const struct lora_linear *lin = &net->blocks[l].lin[t];
			a->u[t] = take(&p, lin->has_lora ? N * (size_t)lin->lora.r : 0);
		}
	}
	if (c->xs)
		for (int l = 0; l < net->L; l++)
			c->xs[l] = take(&p, N * C);
	c->xL = take(&p, N * C);
	c->hf = take(&p, N * C);
	c->rstd_f = take(&p, N);
	c->dx = take(&p, N * C);
	c->dh = take(&p, N * C);
	c->tqkv = take(&p, N * (HD + 2 * KVD));
	c->to = take(&p, N * C);
	c->datt = take(&p, N * HD);
	c->dq = take(&p, N * HD);
	c->dk = take(&p, N * KVD);
	c->dv = take(&p, N * KVD);
	c->dact = take(&p, N * F);
	c->dgu = take(&p, N * 2 * F);
	c->xd = take(&p, N * mx);
	c->mask = take(&p, N * mx);
	c->du = take(&p, N * R);
	c->S = take(&p, (size_t)c->nthreads * (T < QB ? T : QB) * T);
	c->P = take(&p, (size_t)c->nthreads * (T < QB ? T : QB) * T);
	c->G = take(&p, net->attn_softcap > 0 ? (size_t)c->nthreads * (T < QB ? T : QB) * T : 0);
	c->cosb = take(&p, (size_t)T * (net->D / 2));
	c->sinb = take(&p, (size_t)T * (net->D / 2));
	c->cosl = take(&p, net->inv_freq_local ? (size_t)T * (net->D / 2) : 0);
	c->sinl = take(&p, net->inv_freq_local ? (size_t)T * (net->D / 2) : 0);
	c->wbuf = take(&p, WCHUNK);
	c->nc = net->opts.logit_tokens > 0 ? net->opts.logit_tokens : (int)(LOGIT_CHUNK / (size_t)net->V);
	if (c->nc < 1)
		c->nc = 1;
	if ((size_t)c->nc > N)
		c->nc = (int)N;
	c->logit = take(&p, (size_t)c->nc * net->V);
	c->tok_loss = (double *)take(&p, 2 * (size_t)c->nc);
	c->tmp_e = take(&p, (size_t)c->nthreads * net->V);
	return (size_t)(p - start);
}

static void cpu_release(struct lora_net *net)
{
	struct cpu *c = net->be_state;

	if (!c)
		return;
	lora_pool_destroy(c->pool);
	free(c->mem);
	free(c->acts);
	free(c->xs);
	free(c);
	net->be_state = NULL;
}

/* Buffers for a B x T batch: the state (threads included) is made once and
 * its memory grows when a batch needs more; any batch shape may follow any other. */
static struct cpu *cpu_prepare(struct lora_net *net, int B, int T, struct lora_err *err)
{
	struct cpu *c = net->be_state;
	size_t need;

	if (!c) {
		if (!(c = calloc(1, sizeof(*c))))
			goto oom;
		net->be_state = c;
		c->n_acts = net->opts.checkpoint ? 1 : net->L;
		if (net->opts.threads > 0)
			openblas_set_num_threads(net->opts.threads);
		c->nthreads = net->opts.threads > 0 ? net->opts.threads : openblas_get_num_threads();
		if (c->nthreads < 1)
			c->nthreads = 1;
		if (lora_pool_create(&c->pool, c->nthreads, err) < 0) {
			cpu_release(net);
			return NULL;
		}
		if (!(c->acts = calloc((size_t)c->n_acts, sizeof(*c->acts))))
			goto oom;
		if (net->opts.checkpoint && !(c->xs = calloc((size_t)net->L, sizeof(*c->xs))))
			goto oom;
	}
	if (c->B == B && c->T == T)
		return c;
	need = layout(c, net, B, T, NULL);
	if (need > ((size_t)1 << 40) / sizeof(float))
		goto oom;
	if (need > c->cap) {
		free(c->mem);
		c->cap = 0;
		c->B = c->T = 0;
		if (!(c->mem = aligned_alloc(64, ((need * sizeof(float)) + 63) & ~(size_t)63)))
			goto oom;
		c->cap = need;
	}
	layout(c, net, B, T, c->mem);
	c->B = B;
	c->T = T;
	return c;
oom:
	cpu_release(net);
	lora_errf(err, "out of memory for activations of a %d x %d batch", B, T);
	return NULL;
}

/* ------------------------------------------------------------ exp */

/*
 * e^x for the softmaxes and SiLU, written without calls or branches on
 * floats so that loops using it vectorize: x = k·ln2 + r with k = round(x·log2
 * e) taken from the bits of x·log2 e + 1.5·2^23, |r| <= ln2/2 (ln2 in two
 * parts), e^r by the Cephes polynomial, 2^k from the exponent bits.  Within
 * 1e-7 relative of e^x on [-87, 88] (measured: 8.3e-8); below, it returns
 * about 1e-38 instead of a denormal or 0, above, about 2e38 instead of inf;
 * only |x| < 2.9e6 is meaningful (k must fit the bits), NaN stays NaN.  k is
 * clamped as an integer: a float clamp would let the compiler evaluate a
 * constant branch on every lane and divide into denormals.
 */
static inline float vexpf(float x)
{
	const float magic = 12582912.0f;   /* 1.5·2^23 */
	float t, kf, r, p, sc;
	int32_t k, tb, mb, bits;

	t = x * 1.44269504088896341f + magic;
	kf = t - magic;
	r = x - kf * 0.693359375f;
	r = r - kf * -2.12194440e-4f;
	p = 1.9875691500e-4f;
	p = p * r + 1.3981999507e-3f;
	p = p * r + 8.3334519073e-3f;
	p = p * r + 4.1665795894e-2f;
	p = p * r + 1.6666665459e-1f;
	p = p * r + 5.0000001201e-1f;
	p = p * r * r + r + 1.0f;
	memcpy(&tb, &t, sizeof(tb));
	memcpy(&mb, &magic, sizeof(mb));
	k = tb - mb;
	k = k < -126 ? -126 : k;
	k = k > 127 ? 127 : k;
	bits = (k + 127) << 23;
	memcpy(&sc, &bits, sizeof(sc));
	return p * sc;
}

/* ------------------------------------------------------------ parallel loops */

/*
 * Every loop below writes disjoint outputs per index, so its result does not
 * depend on how the pool cuts it (see pool.h).  Grains keep tiny loops on
 * the calling thread.
 */
#define GRAIN_ELEMS 16384
#define GRAIN_ROWS 16

enum ew_op {
	EW_ADD,          /* y = a + b */
	EW_ADDMUL,       /* y += a·b */
};

struct ew {
	enum ew_op op;
	const float *a, *b;
	float *y;
};

HOT static void ew_part(void *arg, size_t i0, size_t i1, int part)
{
	const struct ew *e = arg;
	(void)part;

	switch (e->op) {
	case EW_ADD:
		for (size_t i = i0; i < i1; i++)
			e->y[i] = e->a[i] + e->b[i];
		break;
	case EW_ADDMUL:
		for (size_t i = i0; i < i1; i++)
			e->y[i] += e->a[i] * e->b[i];
		break;
	}
}

static void ew(struct cpu *c, enum ew_op op, size_t n, const float *a, const float *b, float *y)
{
	struct ew e = {op, a, b, y};
	lora_pool_for(c->pool, n, GRAIN_ELEMS, ew_part, &e);
}

/* ------------------------------------------------------------ matrix products */

static void gemm(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
		 const float *b, int ldb, float beta, float *cm, int ldc)
{
	cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n,
		    k, alpha, a, lda, b, ldb, beta, cm, ldc);
}

/*
 * A group of frozen matrices with the same input, rows stacked: [W0; W1; ...]
 * (q|k|v, gate|up).  One product per group instead of one per matrix: the
 * input is packed once, and in backward d input is written once.
 */
struct fgroup {
	int n;
	const struct lora_frozen *w[3];
	int off[4];               /* first row of each matrix; off[n] = all rows */
	int cols;
};

static void group_init(struct fgroup *g, const struct lora_block *bk, int first, int n)
{
	g->n = n;
	g->off[0] = 0;
	for (int i = 0; i < n; i++) {
		g->w[i] = &bk->lin[first + i].w;
		g->off[i + 1] = g->off[i] + g->w[i]->rows;
	}
	g->cols = g->w[0]->cols;
}

static void group_rows(const struct fgroup *g, int r0, int nr, float *out)
{
	for (int m = 0; m < g->n && nr > 0; m++) {
		int take;

		if (r0 >= g->off[m + 1])
			continue;
		take = g->off[m + 1] - r0 < nr ? g->off[m + 1] - r0 : nr;
		lora_frozen_rows(g->w[m], r0 - g->off[m], take, out);
		out += (size_t)take * g->cols;
		r0 += take;
		nr -= take;
	}
}

struct grows_job {
	const struct fgroup *g;
	int r0;
	float *out;
};

static void grows_part(void *arg, size_t i0, size_t i1, int part)
{
	const struct grows_job *j = arg;
	(void)part;
	group_rows(j->g, j->r0 + (int)i0, (int)(i1 - i0), j->out + i0 * (size_t)j->g->cols);
}

/* Rows [r0, r0 + nr) of the stacked matrix as fp32, the threads sharing the rows. */
static void group_rows_par(struct cpu *c, const struct fgroup *g, int r0, int nr, float *out)
{
	struct grows_job j = {g, r0, out};
	lora_pool_for(c->pool, (size_t)nr, GRAIN_ELEMS / (size_t)g->cols + 1, grows_part, &j);
}

static int chunk_rows(const struct fgroup *g)
{
	int nr = (int)(WCHUNK / (unsigned)g->cols);
	return nr < 1 ? 1 : nr > g->off[g->n] ? g->off[g->n] : nr;
}

static int direct_f32(const struct fgroup *g)
{
	return g->n == 1 && g->w[0]->fmt == LORA_WF_F32 && ((uintptr_t)g->w[0]->data & 3) == 0;
}

/* y[:, 0..rows) (row stride ldy) = x [N, cols] · [W0; W1; ...]ᵀ */
static void group_xwt(struct cpu *c, const struct fgroup *g, const float *x, int N, float *y, int ldy)
{
	const int rows = g->off[g->n], step = chunk_rows(g);

	if (direct_f32(g)) {
		gemm(0, 1, N, rows, g->cols, 1.0f, x, g->cols, g->w[0]->data, g->cols, 0.0f, y, ldy);
		return;
	}
	for (int r0 = 0; r0 < rows; r0 += step) {
		const int nr = rows - r0 < step ? rows - r0 : step;
		group_rows_par(c, g, r0, nr, c->wbuf);
		gemm(0, 1, N, nr, g->cols, 1.0f, x, g->cols, c->wbuf, g->cols, 0.0f, y + r0, ldy);
	}
}

/* dx [N, cols] = beta·dx + dy [N, rows] (row stride lddy) · [W0; W1; ...] */
static void group_dyw(struct cpu *c, const struct fgroup *g, const float *dy, int N, int lddy,
		      float *dx, float beta)
{
	const int rows = g->off[g->n], step = chunk_rows(g);

	if (direct_f32(g)) {
		gemm(0, 0, N, g->cols, rows, 1.0f, dy, lddy, g->w[0]->data, g->cols, beta, dx, g->cols);
		return;
	}
	for (int r0 = 0; r0 < rows; r0 += step) {
		const int nr = rows - r0 < step ? rows - r0 : step;
		group_rows_par(c, g, r0, nr, c->wbuf);
		gemm(0, 0, N, g->cols, nr, 1.0f, dy + r0, lddy, c->wbuf, g->cols, r0 ? 1.0f : beta, dx,
		     g->cols);
	}
}

/* The lm_head (or any single matrix) as a group of one. */
static void single(struct fgroup *g, const struct lora_frozen *w)
{
	g->n = 1;
	g->w[0] = w;
	g->off[0] = 0;
	g->off[1] = w->rows;
	g->cols = w->cols;
}

/* ------------------------------------------------------------ linear + LoRA */

struct ctx {
	struct lora_net *net;
	struct cpu *c;
	const struct lora_batch *b;
	int N;
	int dropout;              /* LoRA dropout active (training) */
};

struct mask_job {
	const struct ctx *k;
	int l;
	enum lora_target t;
	const float *x;
};

HOT static void mask_part(void *arg, size_t i0, size_t i1, int part)
{
	const struct mask_job *j = arg;
	const struct lora_net *net = j->k->net;
	struct cpu *c = j->k->c;
	(void)part;

	lora_dropout_mask(c->mask + i0, i0, i1 - i0, net->lcfg.dropout, net->lcfg.seed, net->step, j->l,
			  j->t);
	for (size_t i = i0; i < i1; i++)
		c->xd[i] = j->x[i] * c->mask[i];
}

/* The LoRA path's input: x itself, or x·mask in c->xd (mask in c->mask). */
static const float *lora_input(const struct ctx *k, int l, enum lora_target t, const float *x, int in)
{
	struct mask_job j = {k, l, t, x};

	if (!k->dropout)
		return x;
	lora_pool_for(k->c->pool, (size_t)k->N * in, GRAIN_ELEMS, mask_part, &j);
	return k->c->xd;
}

struct bias_job {
	float *y;
	const float *bias;
	int out, ldy;
};

static void bias_part(void *arg, size_t i0, size_t i1, int part)
{
	const struct bias_job *j = arg;
	(void)part;
	for (size_t n = i0; n < i1; n++)
		for (int o = 0; o < j->out; o++)
			j->y[n * j->ldy + o] += j->bias[o];
}

/*
 * Linear layers first..first+n-1 of layer l on the same input x [N, in]:
 *   y[:, off_m ..] = x·W_mᵀ + bias_m + scale_m·(dropout(x)·A_mᵀ)·B_mᵀ
 * into y [N, ldy]; u[m] [N, r] keeps dropout(x)·A_mᵀ for backward.
 */
static void lin_fwd(const struct ctx *k, int l, int first, int n, const float *x, float *y, int ldy,
		    struct acts *a)
{
	const struct lora_block *bk = &k->net->blocks[l];
	const int N = k->N;
	struct fgroup g;

	group_init(&g, bk, first, n);
	group_xwt(k->c, &g, x, N, y, ldy);
	for (int m = 0; m < n; m++) {
		const enum lora_target t = (enum lora_target)(first + m);
		const struct lora_linear *lin = &bk->lin[t];
		const int in = lin->w.cols, out = lin->w.rows;
		float *ym = y + g.off[m];

		if (lin->bias) {
			struct bias_job j = {ym, lin->bias, out, ldy};
			lora_pool_for(k->c->pool, (size_t)N, GRAIN_ROWS, bias_part, &j);
		}
		if (lin->has_lora) {
			const struct lora_mod *lm = &lin->lora;
			const float *xa = lora_input(k, l, t, x, in);

			gemm(0, 1, N, lm->r, in, 1.0f, xa, in, k->net->params + lm->a_off, in, 0.0f, a->u[t],
			     lm->r);
			gemm(0, 1, N, out, lm->r, lm->scale, a->u[t], lm->r, k->net->params + lm->b_off, lm->r,
			     1.0f, ym, ldy);
		}
	}
}

/*
 * Backward of lin_fwd given dy [N, lddy]: for each module dB += scale·dyᵀ·u,
 * du = scale·dy·B, dA += duᵀ·dropout(x); when dx is not NULL,
 * dx = beta·dx + dy·[W0; W1; ...] + Σ (du·A)·mask.
 */
static void lin_bwd(const struct ctx *k, int l, int first, int n, const float *x, const float *dy,
		    int lddy, float *dx, float beta, const struct acts *a)
{
	const struct lora_block *bk = &k->net->blocks[l];
	const int N = k->N;
	struct cpu *c = k->c;
	struct fgroup g;

	group_init(&g, bk, first, n);
	if (dx)
		group_dyw(c, &g, dy, N, lddy, dx, beta);
	for (int m = 0; m < n; m++) {
		const enum lora_target t = (enum lora_target)(first + m);
		const struct lora_linear *lin = &bk->lin[t];
		const struct lora_mod *lm = &lin->lora;
		const int in = lin->w.cols, out = lin->w.rows;
		const float *dym = dy + g.off[m], *xa;
		float *gA = k->net->grads + lm->a_off, *gB = k->net->grads + lm->b_off;

		if (!lin->has_lora)
			continue;
		gemm(1, 0, out, lm->r, N, lm->scale, dym, lddy, a->u[t], lm->r, 1.0f, gB, lm->r);
		gemm(0, 0, N, lm->r, out, lm->scale, dym, lddy, k->net->params + lm->b_off, lm->r, 0.0f,
		     c->du, lm->r);
		xa = lora_input(k, l, t, x, in);
		gemm(1, 0, lm->r, in, N, 1.0f, c->du, lm->r, xa, in, 1.0f, gA, in);
		if (!dx)
			continue;
		if (!k->dropout) {
			gemm(0, 0, N, in, lm->r, 1.0f, c->du, lm->r, k->net->params + lm->a_off, in, 1.0f, dx, in);
		} else {
			/* xd is free again: (du·A) there, then through the mask */
			gemm(0, 0, N, in, lm->r, 1.0f, c->du, lm->r, k->net->params + lm->a_off, in, 0.0f, c->xd,
			     in);
			ew(c, EW_ADDMUL, (size_t)N * in, c->xd, c->mask, dx);
		}
	}
}

/* ------------------------------------------------------------ norms, RoPE */

struct norm_job {
	const float *x, *w, *dy;
	float *y, *rstd;
	int C;
	float eps;
	int accumulate;
};

/* transformers' LlamaRMSNorm in fp32: y = w · (x · rsqrt(mean(x²) + eps)). */
HOT static void rmsnorm_part(void *arg, size_t i0, size_t i1, int part)
{
	const struct norm_job *j = arg;
	const int C = j->C;
	(void)part;

	for (size_t n = i0; n < i1; n++) {
		const float *xn = j->x + n * C;
		float *yn = j->y + n * C;
		double ss = 0.0;
		float r;

		for (int i = 0; i < C; i++)
			ss += (double)xn[i] * xn[i];
		r = 1.0f / sqrtf((float)(ss / C) + j->eps);
		j->rstd[n] = r;
		for (int i = 0; i < C; i++)
			yn[i] = j->w[i] * (xn[i] * r);
	}
}

static void rmsnorm(struct cpu *c, const float *x, const float *w, int N, int C, float eps, float *y,
		    float *rstd)
{
	struct norm_job j = {x, w, NULL, y, rstd, C, eps, 0};
	lora_pool_for(c->pool, (size_t)N, GRAIN_ROWS, rmsnorm_part, &j);
}

/* dx (+)= d/dx of rmsnorm given dy: r·(w·dy) - x·r³·mean(w·dy·x). */
HOT static void rmsnorm_bwd_part(void *arg, size_t i0, size_t i1, int part)
{
	const struct norm_job *j = arg;
	const int C = j->C;
	(void)part;

	for (size_t n = i0; n < i1; n++) {
		const float *xn = j->x + n * C, *dyn = j->dy + n * C;
		float *dxn = j->y + n * C;
		const float r = j->rstd[n];
		double dot = 0.0;
		float kk;

		for (int i = 0; i < C; i++)
			dot += (double)j->w[i] * dyn[i] * xn[i];
		kk = (float)(dot / C) * r * r * r;
		for (int i = 0; i < C; i++) {
			float g = r * (j->w[i] * dyn[i]) - xn[i] * kk;
			dxn[i] = j->accumulate ? dxn[i] + g : g;
		}
	}
}

static void rmsnorm_bwd(struct cpu *c, const float *x, const float *w, const float *rstd,
			const float *dy, int N, int C, float *dx, int accumulate)
{
	struct norm_job j = {x, w, dy, dx, (float *)rstd, C, 0.0f, accumulate};
	lora_pool_for(c->pool, (size_t)N, GRAIN_ROWS, rmsnorm_bwd_part, &j);
}

/*
 * Per-head RMSNorm of q and k before RoPE (Qwen3's q_norm / k_norm): the
 * first (H+KV)·D columns of each row of y [N, ld] are H query heads then KV
 * key heads of D, each normalized as rmsnorm_part does with weight wq or wk,
 * in place; raw [N, (H+KV)·D] keeps the input and rstd [N, H+KV] its 1/rms.
 * Backward turns d(normed) in y into d(raw) in place.
 */
struct headnorm_job {
	float *y;
	int ld, H, KV, D;
	const float *wq, *wk;
	float eps;
	float *raw, *rstd;
};

HOT static void headnorm_part(void *arg, size_t i0, size_t i1, int part)
{
	const struct headnorm_job *j = arg;
	const int D = j->D, nh = j->H + j->KV;
	(void)part;

	for (size_t n = i0; n < i1; n++)
		for (int h = 0; h < nh; h++) {
			float *y = j->y + n * j->ld + (size_t)h * D, *x = j->raw + (n * nh + h) * D;
			const float *w = h < j->H ? j->wq : j->wk;
			double ss = 0.0;
			float r;

			memcpy(x, y, sizeof(float) * D);
			for (int i = 0; i < D; i++)
				ss += (double)x[i] * x[i];
			r = 1.0f / sqrtf((float)(ss / D) + j->eps);
			j->rstd[n * nh + h] = r;
			for (int i = 0; i < D; i++)
				y[i] = w[i] * (x[i] * r);
		}
}

HOT static void headnorm_bwd_part(void *arg, size_t i0, size_t i1, int part)
{
	const struct headnorm_job *j = arg;
	const int D = j->D, nh = j->H + j->KV;
	(void)part;

	for (size_t n = i0; n < i1; n++)
		for (int h = 0; h < nh; h++) {
			float *dy = j->y + n * j->ld + (size_t)h * D;
			const float *x = j->raw + (n * nh + h) * D, *w = h < j->H ? j->wq : j->wk;
			const float r = j->rstd[n * nh + h];
			double dot = 0.0;
			float kk;

			for (int i = 0; i < D; i++)
				dot += (double)w[i] * dy[i] * x[i];
			kk = (float)(dot / D) * r * r * r;
			for (int i = 0; i < D; i++)
				dy[i] = r * (w[i] * dy[i]) - x[i] * kk;
		}
}

static void headnorm(struct cpu *c, const struct lora_net *net, const struct lora_block *bk, float *y,
		     int ld, int N, struct acts *a, int backward)
{
	struct headnorm_job j = {y, ld, net->H, net->KV, net->D, bk->q_norm, bk->k_norm, net->eps,
				 a->qkr, a->qkrstd};
	lora_pool_for(c->pool, (size_t)N, GRAIN_ROWS, backward ? headnorm_bwd_part : headnorm_part, &j);
}

static void rope_tables(const struct lora_net *net, const float *inv_freq, int T, float *cosb, float *sinb)
{
	const int half = net->D / 2;

	for (int t = 0; t < T; t++)
		for (int i = 0; i < half; i++) {
			float a = inv_freq[i] * (float)t;
			cosb[t * half + i] = cosf(a);
			sinb[t * half + i] = sinf(a);
		}
}

struct heads_job {
	const float *src;
	float *dst;
	int ld;                   /* row stride of the token-major side */
	int T, nh, D;
	const float *cosb, *sinb;
	int rope;
};

/*
 * Per token n = b·T + t: token-major src [N, nh·D] -> head-major dst
 * [B, nh, T, D], rotated as transformers' apply_rotary_pos_emb:
 * q·cos + rotate_half(q)·sin with rotate_half(q) = [-q2, q1].
 */
HOT static void to_heads_part(void *arg, size_t i0, size_t i1, int part)
{
	const struct heads_job *j = arg;
	const int T = j->T, nh = j->nh, D = j->D, half = D / 2;
	(void)part;

	for (size_t n = i0; n < i1; n++) {
		const int b = (int)(n / (size_t)T), t = (int)(n % (size_t)T);
		const float *cs = j->cosb + (size_t)t * half, *sn = j->sinb + (size_t)t * half;

		for (int h = 0; h < nh; h++) {
			const float *s = j->src + n * j->ld + (size_t)h * D;
			float *d = j->dst + (((size_t)b * nh + h) * T + t) * D;

			if (!j->rope) {
				memcpy(d, s, sizeof(float) * D);
				continue;
			}
			for (int i = 0; i < half; i++) {
				d[i] = s[i] * cs[i] - s[i + half] * sn[i];
				d[i + half] = s[i + half] * cs[i] + s[i] * sn[i];
			}
		}
	}
}

/* The transpose of to_heads for gradients: head-major src -> token-major dst. */
HOT static void from_heads_part(void *arg, size_t i0, size_t i1, int part)
{
	const struct heads_job *j = arg;
	const int T = j->T, nh = j->nh, D = j->D, half = D / 2;
	(void)part;

	for (size_t n = i0; n < i1; n++) {
		const int b = (int)(n / (size_t)T), t = (int)(n % (size_t)T);
		const float *cs = j->cosb + (size_t)t * half, *sn = j->sinb + (size_t)t * half;

		for (int h = 0; h < nh; h++) {
			const float *s = j->src + (((size_t)b * nh + h) * T + t) * D;
			float *d = j->dst + n * j->ld + (size_t)h * D;

			if (!j->rope) {
				memcpy(d, s, sizeof(float) * D);
				continue;
			}
			for (int i = 0; i < half; i++) {
				d[i] = s[i] * cs[i] + s[i + half] * sn[i];
				d[i + half] = s[i + half] * cs[i] - s[i] * sn[i];
			}
		}
	}
}

static void heads(struct cpu *c, int to, const float *src, float *dst, int ld, int N, int T, int nh,
		  int D, int rope)
{
	/* rope: 0 none, 1 the model's tables, 2 the sliding layers' own (Gemma 3) */
	struct heads_job j = {src, dst, ld, T, nh, D, rope == 2 ? c->cosl : c->cosb, rope == 2 ? c->sinl : c->sinb,
			      rope};
	lora_pool_for(c->pool, (size_t)N, GRAIN_ROWS, to ? to_heads_part : from_heads_part, &j);
}

struct glu_job {
	const float *gu, *dact;
	float *act, *dgu;
	int F;
	int gelu;                 /* gelu_pytorch_tanh(gate)·up instead of silu(gate)·up */
};

/*
 * torch's gelu(approximate="tanh") and its derivative, in its order:
 * 0.5·x·(1 + tanh(β·(x + κ·x³))), β = √2·(2/√π)·0.5, κ = 0.044715.
 */
#define GELU_BETA 0.7978845608028654f
#define GELU_KAPPA 0.044715f
static inline float gelu_tanh(float x)
{
	const float inner = GELU_BETA * (x + GELU_KAPPA * (x * x * x));
	return 0.5f * x * (1.0f + tanhf(inner));
}

static inline float gelu_tanh_grad(float x)
{
	const float x2 = x * x, t = tanhf(GELU_BETA * (x + GELU_KAPPA * (x2 * x)));
	return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_BETA * (1.0f + 3.0f * GELU_KAPPA * x2);
}

/* act = silu(gate)·up, per token, from gu = [gate | up] */
HOT static void swiglu_part(void *arg, size_t i0, size_t i1, int part)
{
	const struct glu_job *j = arg;
	const int F = j->F;
	(void)part;

	for (size_t n = i0; n < i1; n++) {
		const float *g = j->gu + n * 2 * F, *up = g + F;
		float *act = j->act + n * F;

		if (j->gelu) {
			for (int i = 0; i < F; i++)
				act[i] = gelu_tanh(g[i]) * up[i];
			continue;
		}
		for (int i = 0; i < F; i++)
			act[i] = g[i] / (1.0f + vexpf(-g[i])) * up[i];
	}
}

/* dgu = [d gate | d up] from dact */
HOT static void swiglu_bwd_part(void *arg, size_t i0, size_t i1, int part)
{
	const struct glu_job *j = arg;
	const int F = j->F;
	(void)part;

	for (size_t n = i0; n < i1; n++) {
		const float *g = j->gu + n * 2 * F, *up = g + F, *da = j->dact + n * F;
		float *dg = j->dgu + n * 2 * F, *dup = dg + F;

		if (j->gelu) {
			for (int i = 0; i < F; i++) {
				dup[i] = da[i] * gelu_tanh(g[i]);
				dg[i] = da[i] * up[i] * gelu_tanh_grad(g[i]);
			}
			continue;
		}
		for (int i = 0; i < F; i++) {
			const float s = 1.0f / (1.0f + vexpf(-g[i]));
			dup[i] = da[i] * (g[i] * s);
			dg[i] = da[i] * up[i] * (s * (1.0f + g[i] * (1.0f - s)));
		}
	}
}

/* ------------------------------------------------------------ attention */

/* Allowed keys for query i: [lo(i), i]. */
static inline int key_lo(int i, int window)
{
	return window > 0 && i - window + 1 > 0 ? i - window + 1 : 0;
}

/*
 * Queries are taken QB at a time; block [q0, q1) sees keys [k0, q1) with
 * k0 = key_lo(q0), so the products skip what the causal band masks out.
 * S and P are one thread's [QB, T] scratch with row stride nk = q1 - k0.
 */

/* P = softmax of the scaled scores of queries [q0, q1) within the band; lse per row. */
HOT static void attn_probs(float *S, float *P, const float *q, const float *kk, int q0, int q1, int k0,
		       int D, float scaling, int window, float *lse, int have_lse, float cap, float *G)
{
	const int nk = q1 - k0;

	gemm(0, 1, q1 - q0, nk, D, 1.0f, q + (size_t)q0 * D, D, kk + (size_t)k0 * D, D, 0.0f, S, nk);
	for (int i = q0; i < q1; i++) {
		float *s = S + (size_t)(i - q0) * nk - k0, *p = P + (size_t)(i - q0) * nk - k0;
		float *g = G ? G + (size_t)(i - q0) * nk - k0 : NULL;
		const int lo = key_lo(i, window);
		float m = -INFINITY, sum = 0.0f;

		for (int j = k0; j < lo; j++)
			p[j] = 0.0f;
		for (int j = i + 1; j < q1; j++)
			p[j] = 0.0f;
		/* soft-capping (Gemma 2): cap·tanh(scaled / cap); g keeps d capped / d scaled */
		for (int j = lo; cap > 0 && j <= i; j++) {
			const float t = tanhf(s[j] * scaling / cap);

			s[j] = t * cap;
			if (g)
				g[j] = 1.0f - t * t;
		}
		if (have_lse) {
			for (int j = lo; j <= i; j++)
				p[j] = vexpf((cap > 0 ? s[j] : s[j] * scaling) - lse[i]);
			continue;
		}
		for (int j = lo; j <= i; j++) {
			s[j] = cap > 0 ? s[j] : s[j] * scaling;
			m = s[j] > m ? s[j] : m;
		}
		for (int j = lo; j <= i; j++)
			p[j] = vexpf(s[j] - m);
		for (int j = lo; j <= i; j++)
			sum += p[j];
		for (int j = lo; j <= i; j++)
			p[j] = p[j] / sum;
		lse[i] = m + logf(sum);
	}
}

struct attn_job {
	const struct ctx *k;
	const struct lora_block *bk;
	const struct acts *a;
	float *att;               /* forward output */
	float *lse;               /* forward output */
};

/* Tasks are (b, kv head): each owns its dk/dv rows, and runs its heads in order. */
static void attn_fwd_part(void *arg, size_t i0, size_t i1, int part)
{
	const struct attn_job *j = arg;
	const struct lora_net *net = j->k->net;
	struct cpu *c = j->k->c;
	const int T = j->k->b->T, H = net->H, KV = net->KV, D = net->D, HD = H * D, grp = H / KV;
	const float scaling = net->attn_scale;
	const size_t sp = (size_t)(T < QB ? T : QB) * T;
	float *S = c->S + (size_t)part * sp, *P = c->P + (size_t)part * sp;

	for (size_t task = i0; task < i1; task++) {
		const int b = (int)(task / (size_t)KV), kvh = (int)(task % (size_t)KV);
		const size_t kvo = ((size_t)b * KV + kvh) * T * D;

		for (int h = kvh * grp; h < (kvh + 1) * grp; h++) {
			const float *q = j->a->q + ((size_t)b * H + h) * T * D;
			float *out = j->att + (size_t)b * T * HD + (size_t)h * D;

			for (int q0 = 0; q0 < T; q0 += QB) {
				const int q1 = q0 + QB < T ? q0 + QB : T, k0 = key_lo(q0, j->bk->window);

				attn_probs(S, P, q, j->a->k + kvo, q0, q1, k0, D, scaling, j->bk->window,
					   j->lse + ((size_t)b * H + h) * T, 0, net->attn_softcap, NULL);
				gemm(0, 0, q1 - q0, D, q1 - k0, 1.0f, P, q1 - k0, j->a->v + kvo + (size_t)k0 * D,
				     D, 0.0f, out + (size_t)q0 * HD, HD);
			}
		}
	}
}

/* From datt [N, H·D]: dq, dk, dv head-major (dk, dv summed over each group's heads). */
static void attn_bwd_part(void *arg, size_t i0, size_t i1, int part)
{
	const struct attn_job *j = arg;
	const struct lora_net *net = j->k->net;
	struct cpu *c = j->k->c;
	const struct acts *a = j->a;
	const int T = j->k->b->T, H = net->H, KV = net->KV, D = net->D, HD = H * D, grp = H / KV;
	const int window = j->bk->window;
	const float scaling = net->attn_scale;
	const size_t sp = (size_t)(T < QB ? T : QB) * T;
	float *S = c->S + (size_t)part * sp, *P = c->P + (size_t)part * sp;
	float *G = net->attn_softcap > 0 ? c->G + (size_t)part * sp : NULL;

	for (size_t task = i0; task < i1; task++) {
		const int b = (int)(task / (size_t)KV), kvh = (int)(task % (size_t)KV);
		const size_t kvo = ((size_t)b * KV + kvh) * T * D;

		memset(c->dk + kvo, 0, sizeof(float) * (size_t)T * D);
		memset(c->dv + kvo, 0, sizeof(float) * (size_t)T * D);
		for (int h = kvh * grp; h < (kvh + 1) * grp; h++) {
			const size_t qo = ((size_t)b * H + h) * T * D;
			const float *dO = c->datt + (size_t)b * T * HD + (size_t)h * D;

			for (int q0 = 0; q0 < T; q0 += QB) {
				const int q1 = q0 + QB < T ? q0 + QB : T, k0 = key_lo(q0, window);
				const int nq = q1 - q0, nk = q1 - k0;

				attn_probs(S, P, a->q + qo, a->k + kvo, q0, q1, k0, D, scaling, window,
					   a->lse + ((size_t)b * H + h) * T, 1, net->attn_softcap, G);
				/* dV += Pᵀ·dO, dP = dO·Vᵀ (into S), dS = P·(dP - rowsum(P·dP)) */
				gemm(1, 0, nk, D, nq, 1.0f, P, nk, dO + (size_t)q0 * HD, HD, 1.0f,
				     c->dv + kvo + (size_t)k0 * D, D);
				gemm(0, 1, nq, nk, D, 1.0f, dO + (size_t)q0 * HD, HD, a->v + kvo + (size_t)k0 * D,
				     D, 0.0f, S, nk);
				for (int i = q0; i < q1; i++) {
					float *dp = S + (size_t)(i - q0) * nk - k0;
					const float *p = P + (size_t)(i - q0) * nk - k0;
					const int lo = key_lo(i, window);
					float dot = 0.0f;

					for (int jj = lo; jj <= i; jj++)
						dot += p[jj] * dp[jj];
					for (int jj = k0; jj < q1; jj++)
						dp[jj] = (jj >= lo && jj <= i) ? p[jj] * (dp[jj] - dot) : 0.0f;
					if (G) {   /* through the cap */
						const float *g = G + (size_t)(i - q0) * nk - k0;
						for (int jj = lo; jj <= i; jj++)
							dp[jj] = dp[jj] * g[jj];
					}
				}
				gemm(0, 0, nq, D, nk, scaling, S, nk, a->k + kvo + (size_t)k0 * D, D, 0.0f,
				     c->dq + qo + (size_t)q0 * D, D);
				gemm(1, 0, nk, D, nq, scaling, S, nk, a->q + qo + (size_t)q0 * D, D, 1.0f,
				     c->dk + kvo + (size_t)k0 * D, D);
			}
		}
	}
}

/*
 * The (b, kv head) tasks run on the pool with single-threaded BLAS inside,
 * which keeps the small products off OpenBLAS's own threads.
 */
static void attn(const struct ctx *k, const struct lora_block *bk, struct acts *a, int backward)
{
	struct attn_job j = {k, bk, a, a->att, a->lse};
	const int nb = k->c->nthreads;

	if (nb > 1)
		openblas_set_num_threads(1);
	lora_pool_for(k->c->pool, (size_t)k->b->B * k->net->KV, 1, backward ? attn_bwd_part : attn_fwd_part,
		      &j);
	if (nb > 1)
		openblas_set_num_threads(nb);
}

/* ------------------------------------------------------------ a decoder layer */

static void layer_fwd(const struct ctx *k, int l, struct acts *a, float *out)
{
	const struct lora_net *net = k->net;
	const struct lora_block *bk = &net->blocks[l];
	struct cpu *c = k->c;
	const int N = k->N, T = k->b->T, C = net->C, F = net->F;
	const int HD = net->H * net->D, KVD = net->KV * net->D, W3 = HD + 2 * KVD;
	struct glu_job gj = {a->gu, NULL, a->act, NULL, F, net->gelu};

	rmsnorm(c, a->x, bk->ln1, N, C, net->eps, a->h1, a->rstd1);
	lin_fwd(k, l, LORA_T_Q, 3, a->h1, c->tqkv, W3, a);
	if (bk->q_norm)
		headnorm(c, net, bk, c->tqkv, W3, N, a, 0);
	heads(c, 1, c->tqkv, a->q, W3, N, T, net->H, net->D, bk->local_rope ? 2 : 1);
	heads(c, 1, c->tqkv + HD, a->k, W3, N, T, net->KV, net->D, bk->local_rope ? 2 : 1);
	heads(c, 1, c->tqkv + HD + KVD, a->v, W3, N, T, net->KV, net->D, 0);
	attn(k, bk, a, 0);
	lin_fwd(k, l, LORA_T_O, 1, a->att, bk->post_attn ? a->o_raw : c->to, C, a);
	if (bk->post_attn)
		rmsnorm(c, a->o_raw, bk->post_attn, N, C, net->eps, c->to, a->rstd3);
	ew(c, EW_ADD, (size_t)N * C, a->x, c->to, a->xm);
	rmsnorm(c, a->xm, bk->ln2, N, C, net->eps, a->h2, a->rstd2);
	lin_fwd(k, l, LORA_T_GATE, 2, a->h2, a->gu, 2 * F, a);
	lora_pool_for(c->pool, (size_t)N, GRAIN_ROWS, swiglu_part, &gj);
	lin_fwd(k, l, LORA_T_DOWN, 1, a->act, bk->post_ff ? a->d_raw : c->to, C, a);
	if (bk->post_ff)
		rmsnorm(c, a->d_raw, bk->post_ff, N, C, net->eps, c->to, a->rstd4);
	ew(c, EW_ADD, (size_t)N * C, a->xm, c->to, out);
}

/* c->dx holds d(layer output); leaves d(layer input) there when need_dx. */
static void layer_bwd(const struct ctx *k, int l, struct acts *a, int need_dx)
{
	const struct lora_net *net = k->net;
	const struct lora_block *bk = &net->blocks[l];
	struct cpu *c = k->c;
	const int N = k->N, T = k->b->T, C = net->C, F = net->F;
	const int HD = net->H * net->D, KVD = net->KV * net->D, W3 = HD + 2 * KVD;
	struct glu_job gj = {a->gu, c->dact, NULL, c->dgu, F, net->gelu};

	/* MLP: out = xm + down(silu(gate(h2))·up(h2)) */
	/* Gemma 2: out = xm + post_ff(down(...)), xm = x + post_attn(o(...)): c->to takes d of each
	 * linear's output through its norm (c->dx keeps the residual's) */
	if (bk->post_ff)
		rmsnorm_bwd(c, a->d_raw, bk->post_ff, a->rstd4, c->dx, N, C, c->to, 0);
	lin_bwd(k, l, LORA_T_DOWN, 1, a->act, bk->post_ff ? c->to : c->dx, C, c->dact, 0.0f, a);
	lora_pool_for(c->pool, (size_t)N, GRAIN_ROWS, swiglu_bwd_part, &gj);
	lin_bwd(k, l, LORA_T_GATE, 2, a->h2, c->dgu, 2 * F, c->dh, 0.0f, a);
	rmsnorm_bwd(c, a->xm, bk->ln2, a->rstd2, c->dh, N, C, c->dx, 1);   /* dx is now d xm */

	/* attention: xm = x + o(attn(rope(q(h1)), rope(k(h1)), v(h1))) */
	if (bk->post_attn)
		rmsnorm_bwd(c, a->o_raw, bk->post_attn, a->rstd3, c->dx, N, C, c->to, 0);
	lin_bwd(k, l, LORA_T_O, 1, a->att, bk->post_attn ? c->to : c->dx, C, c->datt, 0.0f, a);
	attn(k, bk, a, 1);
	heads(c, 0, c->dq, c->tqkv, W3, N, T, net->H, net->D, bk->local_rope ? 2 : 1);
	heads(c, 0, c->dk, c->tqkv + HD, W3, N, T, net->KV, net->D, bk->local_rope ? 2 : 1);
	heads(c, 0, c->dv, c->tqkv + HD + KVD, W3, N, T, net->KV, net->D, 0);
	if (bk->q_norm)
		headnorm(c, net, bk, c->tqkv, W3, N, a, 1);
	lin_bwd(k, l, LORA_T_Q, 3, a->h1, c->tqkv, W3, need_dx ? c->dh : NULL, 0.0f, a);
	if (need_dx)
		rmsnorm_bwd(c, a->x, bk->ln1, a->rstd1, c->dh, N, C, c->dx, 1);
}

/* ------------------------------------------------------------ loss head */

static inline int target_of(const struct lora_batch *b, int n)
{
	const int r = n / b->T, t = n % b->T, len = b->len ? b->len[r] : b->T;

	if (t + 1 >= len)
		return -100;
	return b->labels ? b->labels[(size_t)r * b->T + t + 1] : b->ids[(size_t)r * b->T + t + 1];
}

struct head_job {
	const struct ctx *k;
	int n0;
	int backward;
	float scale;
};

/* Cross-entropy of each token of the chunk; with backward, logits become d logits. */
HOT static void head_part(void *arg, size_t i0, size_t i1, int part)
{
	const struct head_job *j = arg;
	struct cpu *c = j->k->c;
	const int V = j->k->net->V;
	const float cap = j->k->net->final_softcap;
	for (size_t i = i0; i < i1; i++) {
		float *z = c->logit + i * V;
		const int tgt = target_of(j->k->b, j->n0 + (int)i);
		float m = -INFINITY;
		double sum = 0.0, lse;

		c->tok_loss[i] = -1.0;
		if (tgt < 0) {
			if (j->backward)
				memset(z, 0, sizeof(float) * V);
			continue;
		}
		for (int v = 0; v < V; v++)
			m = z[v] > m ? z[v] : m;
		/* fp32 exponentials as torch's log_softmax, summed in double */
		if (j->backward) {
			float *e = z;   /* e^(z - m) in place, z[tgt] kept aside */
			const float zt = z[tgt];
			float fl, f, *fac = c->tmp_e + (size_t)part * V;

			for (int v = 0; cap > 0 && v < V; v++) {
				const float t = z[v] / cap;
				fac[v] = 1.0f - t * t;
			}

			for (int v = 0; v < V; v++)
				e[v] = vexpf(z[v] - m);
			for (int v = 0; v < V; v++)
				sum += e[v];
			lse = m + log(sum);
			c->tok_loss[i] = lse - zt;
			/* softmax = e^(z - m) / sum; times the loss scale */
			fl = (float)sum;
			f = j->scale / fl;
			for (int v = 0; v < V; v++)
				e[v] = e[v] * f;
			e[tgt] -= j->scale;
			if (cap > 0)   /* d logit = d capped · (1 - tanh²), tanh = capped / cap */
				for (int v = 0; v < V; v++)
					e[v] = e[v] * fac[v];
		} else {
			float *e = c->tmp_e + (size_t)part * V;

			for (int v = 0; v < V; v++)
				e[v] = vexpf(z[v] - m);
			for (int v = 0; v < V; v++)
				sum += e[v];
			lse = m + log(sum);
			c->tok_loss[i] = lse - z[tgt];
		}
	}
}

/* Gemma 2: cap·tanh(logits / cap) */
static void softcap_logits(float *z, size_t n, float cap)
{
	for (size_t i = 0; i < n; i++)
		z[i] = tanhf(z[i] / cap) * cap;
}

/*
 * Logits of hf through lm_head NC tokens at a time; loss; logits out; and
 * when training, d hf = (softmax - onehot)·scale · W_lm into c->dh.
 */
static void loss_head(const struct ctx *k, int backward, double scale, float *logits_out,
		      struct lora_fb_result *res)
{
	const struct lora_net *net = k->net;
	struct cpu *c = k->c;
	const int V = net->V, C = net->C;
	struct fgroup head;

	single(&head, &net->lm_head);
	for (int n0 = 0; n0 < k->N; n0 += c->nc) {
		const int nc = k->N - n0 < c->nc ? k->N - n0 : c->nc;
		struct head_job j = {k, n0, backward, (float)scale};

		group_xwt(c, &head, c->hf + (size_t)n0 * C, nc, c->logit, V);
		if (net->final_softcap > 0)
			softcap_logits(c->logit, (size_t)nc * V, net->final_softcap);
		if (logits_out)
			memcpy(logits_out + (size_t)n0 * V, c->logit, sizeof(float) * (size_t)nc * V);
		lora_pool_for(c->pool, (size_t)nc, 4, head_part, &j);
		for (int i = 0; i < nc; i++)   /* summed in token order */
			if (c->tok_loss[i] >= 0.0)
				res->loss_sum += c->tok_loss[i];
		if (backward)
			group_dyw(c, &head, c->logit, nc, V, c->dh + (size_t)n0 * C, 0.0f);
	}
}

/* ------------------------------------------------------------ the pass */

struct embed_job {
	const struct lora_net *net;
	const struct lora_batch *b;
	float *x;
};

/* Padding positions (t >= len) may hold any id: they embed token 0 (their outputs are never used). */
static void embed_part(void *arg, size_t i0, size_t i1, int part)
{
	const struct embed_job *j = arg;
	const struct lora_batch *b = j->b;
	(void)part;

	for (size_t n = i0; n < i1; n++) {
		const int r = (int)(n / (size_t)b->T), t = (int)(n % (size_t)b->T);
		const int id = t < (b->len ? b->len[r] : b->T) ? b->ids[n] : 0;

		lora_frozen_rows(&j->net->embed, id, 1, j->x + n * (size_t)j->net->C);
		if (j->net->embed_scale != 1.0f)   /* Gemma: times sqrt(C), an fp32 product */
			for (int i = 0; i < j->net->C; i++)
				j->x[n * (size_t)j->net->C + i] *= j->net->embed_scale;
	}
}

static int cpu_run(struct lora_net *net, const struct lora_batch *b, int backward, double grad_scale,
		   float *logits, struct lora_fb_result *res, struct lora_err *err)
{
	struct cpu *c = cpu_prepare(net, b->B, b->T, err);
	struct ctx k;
	const int L = net->L, C = net->C;
	const int ck = net->opts.checkpoint;
	double scale;

	if (!c)
		return -1;
	k.net = net;
	k.c = c;
	k.b = b;
	k.N = b->B * b->T;
	k.dropout = backward && net->has_lora && net->lcfg.dropout > 0.0;
	memset(res, 0, sizeof(*res));
	for (int n = 0; n < k.N; n++)
		res->tokens += target_of(b, n) >= 0;
	scale = grad_scale > 0 ? grad_scale : res->tokens ? 1.0 / (double)res->tokens : 0.0;
	rope_tables(net, net->inv_freq, b->T, c->cosb, c->sinb);
	if (net->inv_freq_local)
		rope_tables(net, net->inv_freq_local, b->T, c->cosl, c->sinl);

	/* embedding -> layers -> final norm -> loss */
	{
		struct embed_job j = {net, b, ck ? c->xs[0] : c->acts[0].x};
		lora_pool_for(c->pool, (size_t)k.N, GRAIN_ROWS, embed_part, &j);
	}
	for (int l = 0; l < L; l++) {
		struct acts *a = &c->acts[ck ? 0 : l];
		float *out = l + 1 < L ? (ck ? c->xs[l + 1] : c->acts[l + 1].x) : c->xL;

		if (ck)
			a->x = c->xs[l];
		layer_fwd(&k, l, a, out);
	}
	rmsnorm(c, c->xL, net->norm_f, k.N, C, net->eps, c->hf, c->rstd_f);
	loss_head(&k, backward, scale, logits, res);
	res->loss = res->tokens ? res->loss_sum / (double)res->tokens : 0.0;
	if (!backward)
		return 0;

	rmsnorm_bwd(c, c->xL, net->norm_f, c->rstd_f, c->dh, k.N, C, c->dx, 0);
	for (int l = L - 1; l >= 0; l--) {
		struct acts *a = &c->acts[ck ? 0 : l];

		if (ck) {
			/* recompute the layer from its saved input; the output is not needed */
			a->x = c->xs[l];
			layer_fwd(&k, l, a, c->dh);
		}
		layer_bwd(&k, l, a, l > 0);
	}
	return 0;
}

const struct lora_backend lora_backend_cpu = {
	.name = "cpu",
	.run = cpu_run,
	.release = cpu_release,
	.kv_new = lora_cpu_kv_new,
	.decode = lora_cpu_decode,
	.kv_free = lora_cpu_kv_free,
};

/* ------------------------------------------------------------ single ops (train/ops_cpu.h) */

/* The loops above on whole arrays, on the calling thread: the CUDA kernels' twins. */

void lora_cpu_rmsnorm(const float *x, const float *w, int N, int C, float eps, float *y, float *rstd)
{
	struct norm_job j = {x, w, NULL, y, rstd, C, eps, 0};
	rmsnorm_part(&j, 0, (size_t)N, 0);
}

void lora_cpu_rmsnorm_bwd(const float *x, const float *w, const float *rstd, const float *dy, int N, int C,
			  float *dx, int accumulate)
{
	struct norm_job j = {x, w, dy, dx, (float *)rstd, C, 0.0f, accumulate};
	rmsnorm_bwd_part(&j, 0, (size_t)N, 0);
}

void lora_cpu_headnorm(float *y, int ld, int N, int H, int KV, int D, const float *wq, const float *wk, float eps,
		       float *raw, float *rstd)
{
	struct headnorm_job j = {y, ld, H, KV, D, wq, wk, eps, raw, rstd};
	headnorm_part(&j, 0, (size_t)N, 0);
}

void lora_cpu_headnorm_bwd(float *dy, int ld, int N, int H, int KV, int D, const float *wq, const float *wk,
			   const float *raw, const float *rstd)
{
	struct headnorm_job j = {dy, ld, H, KV, D, wq, wk, 0.0f, (float *)raw, (float *)rstd};
	headnorm_bwd_part(&j, 0, (size_t)N, 0);
}

void lora_cpu_rope_tables(const float *inv_freq, int D, int T, float *cosb, float *sinb)
{
	struct lora_net n;

	memset(&n, 0, sizeof(n));
	n.D = D;
	rope_tables(&n, inv_freq, T, cosb, sinb);
}

void lora_cpu_to_heads(const float *src, int ld, float *dst, int B, int T, int nh, int D, const float *cosb,
		       const float *sinb, int rope)
{
	struct heads_job j = {src, dst, ld, T, nh, D, cosb, sinb, rope};
	to_heads_part(&j, 0, (size_t)B * T, 0);
}

void lora_cpu_from_heads(const float *src, float *dst, int ld, int B, int T, int nh, int D,
			 const float *cosb, const float *sinb, int rope)
{
	struct heads_job j = {src, dst, ld, T, nh, D, cosb, sinb, rope};
	from_heads_part(&j, 0, (size_t)B * T, 0);
}

void lora_cpu_swiglu(const float *gu, int N, int F, float *act)
{
	struct glu_job j = {gu, NULL, act, NULL, F, 0};
	swiglu_part(&j, 0, (size_t)N, 0);
}

void lora_cpu_swiglu_bwd(const float *gu, const float *dact, int N, int F, float *dgu)
{
	struct glu_job j = {gu, dact, NULL, dgu, F, 0};
	swiglu_bwd_part(&j, 0, (size_t)N, 0);
}

void lora_cpu_geglu(const float *gu, int N, int F, float *act)
{
	struct glu_job j = {gu, NULL, act, NULL, F, 1};
	swiglu_part(&j, 0, (size_t)N, 0);
}

void lora_cpu_geglu_bwd(const float *gu, const float *dact, int N, int F, float *dgu)
{
	struct glu_job j = {gu, dact, NULL, dgu, F, 1};
	swiglu_bwd_part(&j, 0, (size_t)N, 0);
}

void lora_cpu_add(const float *a, const float *b, float *y, size_t n)
{
	struct ew e = {EW_ADD, a, b, y};
	ew_part(&e, 0, n, 0);
}

void lora_cpu_addmul(const float *a, const float *b, float *y, size_t n)
{
	struct ew e = {EW_ADDMUL, a, b, y};
	ew_part(&e, 0, n, 0);
}

void lora_cpu_softcap(float *z, size_t n, float cap)
{
	if (cap > 0)
		softcap_logits(z, n, cap);
}

void lora_cpu_xent(float *z, const int32_t *tgt, int nc, int V, float scale, int backward, double *tok_loss)
{
	lora_cpu_xent_softcap(z, tgt, nc, V, scale, backward, 0.0f, tok_loss);
}

void lora_cpu_xent_softcap(float *z, const int32_t *tgt, int nc, int V, float scale, int backward, float cap,
			   double *tok_loss)
{
	struct lora_net n;
	struct cpu c;
	struct lora_batch b;
	struct ctx k;
	int32_t *labels = malloc(sizeof(int32_t) * ((size_t)nc + 1));
	const int need_e = !backward || cap > 0;   /* the forward's e^(z - m), or the backward's cap factors */
	float *e = need_e ? malloc(sizeof(float) * (size_t)V) : NULL;

	if (!labels || (need_e && !e)) {
		free(labels);
		free(e);
		for (int i = 0; i < nc; i++)
			tok_loss[i] = NAN;
		return;
	}
	/* one row of nc + 1 positions whose labels are the targets shifted by one (target_of) */
	labels[0] = -100;
	memcpy(labels + 1, tgt, sizeof(int32_t) * (size_t)nc);
	memset(&n, 0, sizeof(n));
	memset(&c, 0, sizeof(c));
	memset(&b, 0, sizeof(b));
	n.V = V;
	n.final_softcap = cap > 0 ? cap : 0.0f;
	c.logit = z;
	c.tok_loss = tok_loss;
	c.tmp_e = e;
	b.B = 1;
	b.T = nc + 1;
	b.ids = labels;
	b.labels = labels;
	k.net = &n;
	k.c = &c;
	k.b = &b;
	k.N = nc;
	k.dropout = 0;
	{
		struct head_job j = {&k, 0, backward, scale};
		head_part(&j, 0, (size_t)nc, 0);
	}
	free(labels);
	free(e);
}

int lora_cpu_attn_fwd(const float *q, const float *k, const float *v, int B, int H, int KV, int T, int D,
		      float scaling, int window, float *att, float *lse)
{
	return lora_cpu_attn_fwd_softcap(q, k, v, B, H, KV, T, D, scaling, window, 0.0f, att, lse);
}

int lora_cpu_attn_fwd_softcap(const float *q, const float *k, const float *v, int B, int H, int KV, int T, int D,
			      float scaling, int window, float cap, float *att, float *lse)
{
	const size_t sp = (size_t)(T < QB ? T : QB) * T;
	struct lora_net n;
	struct cpu c;
	struct lora_batch b;
	struct lora_block bk;
	struct acts a;
	struct ctx k0;

	memset(&n, 0, sizeof(n));
	memset(&c, 0, sizeof(c));
	memset(&b, 0, sizeof(b));
	memset(&bk, 0, sizeof(bk));
	memset(&a, 0, sizeof(a));
	c.S = malloc(sizeof(float) * sp);
	c.P = malloc(sizeof(float) * sp);
	if (!c.S || !c.P) {
		free(c.S);
		free(c.P);
		return -1;
	}
	n.H = H;
	n.KV = KV;
	n.D = D;
	n.attn_scale = scaling;
	n.attn_softcap = cap > 0 ? cap : 0.0f;
	b.B = B;
	b.T = T;
	bk.window = window;
	a.q = (float *)q;
	a.k = (float *)k;
	a.v = (float *)v;
	k0.net = &n;
	k0.c = &c;
	k0.b = &b;
	k0.N = B * T;
	k0.dropout = 0;
	{
		struct attn_job j = {&k0, &bk, &a, att, lse};
		attn_fwd_part(&j, 0, (size_t)B * KV, 0);
	}
	free(c.S);
	free(c.P);
	return 0;
}

int lora_cpu_attn_bwd(const float *q, const float *k, const float *v, const float *lse, const float *datt, int B,
		      int H, int KV, int T, int D, float scaling, int window, float *dq, float *dk, float *dv)
{
	return lora_cpu_attn_bwd_softcap(q, k, v, lse, datt, B, H, KV, T, D, scaling, window, 0.0f, dq, dk, dv);
}

int lora_cpu_attn_bwd_softcap(const float *q, const float *k, const float *v, const float *lse, const float *datt,
			      int B, int H, int KV, int T, int D, float scaling, int window, float cap, float *dq,
			      float *dk, float *dv)
{
	const size_t sp = (size_t)(T < QB ? T : QB) * T;
	struct lora_net n;
	struct cpu c;
	struct lora_batch b;
	struct lora_block bk;
	struct acts a;
	struct ctx k0;

	memset(&n, 0, sizeof(n));
	memset(&c, 0, sizeof(c));
	memset(&b, 0, sizeof(b));
	memset(&bk, 0, sizeof(bk));
	memset(&a, 0, sizeof(a));
	c.S = malloc(sizeof(float) * sp);
	c.P = malloc(sizeof(float) * sp);
	c.G = cap > 0 ? malloc(sizeof(float) * sp) : NULL;
	if (!c.S || !c.P || (cap > 0 && !c.G)) {
		free(c.S);
		free(c.P);
		free(c.G);
		return -1;
	}
	n.H = H;
	n.KV = KV;
	n.D = D;
	n.attn_scale = scaling;
	n.attn_softcap = cap > 0 ? cap : 0.0f;
	b.B = B;
	b.T = T;
	bk.window = window;
	a.q = (float *)q;
	a.k = (float *)k;
	a.v = (float *)v;
	a.lse = (float *)lse;
	c.datt = (float *)datt;
	c.dq = dq;
	c.dk = dk;
	c.dv = dv;
	k0.net = &n;
	k0.c = &c;
	k0.b = &b;
	k0.N = B * T;
	k0.dropout = 0;
	{
		struct attn_job j = {&k0, &bk, &a, NULL, NULL};
		attn_bwd_part(&j, 0, (size_t)B * KV, 0);
	}
	free(c.S);
	free(c.P);
	free(c.G);
	return 0;
}
