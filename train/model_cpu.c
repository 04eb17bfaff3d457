/*
 * model_cpu.c - the CPU reference forward and backward.  This is the oracle
 * the CUDA trainer is tested against, and the trainer for machines without a
 * GPU: plain fp32 arithmetic in the order transformers uses, every matrix
 * product through OpenBLAS sgemm, frozen weights dequantized a chunk of rows
 * at a time just before they are used, no approximations.  Its results depend
 * only on the inputs and the thread count (bit-identical run to run, and with
 * activation checkpointing on or off).
 *
 * Layouts (row-major; N = B·T tokens, token n = b·T + t):
 *   token-major   [N, width]          residual stream, projections, MLP
 *   head-major    [B, heads, T, D]    q, k, v after RoPE, for attention
 * The loss head never holds [N, V] logits: it works through NC tokens at a
 * time and, when training, turns them into d hidden at once.
 */
#include "model.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define WCHUNK (1u << 20)        /* floats of a dequantized weight chunk (4 MiB) */
#define LOGIT_CHUNK (8u << 20)   /* floats of logits held at once (32 MiB) */
#define QB 64                    /* attention queries per block */

/* What one layer keeps for its backward pass. */
struct acts {
	float *x;                 /* [N, C] layer input (the residual stream) */
	float *rstd1;             /* [N] 1/rms of x */
	float *h1;                /* [N, C] input_layernorm(x): q/k/v input */
	float *q;                 /* [B, H, T, D] after RoPE */
	float *k, *v;             /* [B, KV, T, D] (k after RoPE) */
	float *lse;               /* [B, H, T] log-sum-exp of each attention row */
	float *att;               /* [N, H·D] attention output: o_proj input */
	float *xm;                /* [N, C] x + attention */
	float *rstd2;             /* [N] */
	float *h2;                /* [N, C] post_attention_layernorm(xm): gate/up input */
	float *g, *up;            /* [N, F] gate and up projections */
	float *act;               /* [N, F] silu(g)·up: down_proj input */
	float *u[LORA_NTARGET];   /* [N, r] LoRA inner activations (dropout(x)·Aᵀ) */
};

struct cpu {
	int B, T;                 /* capacity the buffers were sized for */
	float *mem;               /* every buffer below points into this */
	int n_acts;               /* L, or 1 with checkpointing */
	struct acts *acts;
	float **xs;               /* [L][N, C] layer inputs (checkpointing) */
	float *xL, *hf, *rstd_f;  /* [N, C], [N, C], [N]: final residual and norm */
	float *dx, *dh;           /* [N, C] */
	float *tq, *tk, *tv;      /* [N, H·D], [N, KV·D] x2: projections before RoPE / d of them */
	float *to;                /* [N, C] o_proj / down_proj output, recompute sink */
	float *datt;              /* [N, H·D] */
	float *dq, *dk, *dv;      /* head-major gradients */
	float *dact, *dg, *dup;   /* [N, F] */
	float *xd, *mask;         /* [N, max in] dropout(x) and its mask */
	float *du;                /* [N, max r] */
	float *S, *P;             /* [QB, T] attention scores / probabilities (and dS) */
	float *cosb, *sinb;       /* [T, D/2] */
	float *wbuf;              /* [WCHUNK] */
	float *logit;             /* [NC, V] */
	int nc;                   /* tokens per loss chunk */
	int threads_set;
};

static inline float *take(float **p, size_t n)
{
	float *r = *p;
	*p += (n + 15) & ~(size_t)15;   /* keep 64-byte alignment */
	return r;
}

static size_t max_rank(const struct lora_net *net)
{
	int r = 1;
	for (int l = 0; l < net->L; l++)
		for (int t = 0; t < LORA_NTARGET; t++)
			if (net->blocks[l].lin[t].has_lora && net->blocks[l].lin[t].lora.r > r)
				r = net->blocks[l].lin[t].lora.r;
	return (size_t)r;
}

/* Lay out (or only measure, when base is NULL) every buffer for B x T. */
static size_t layout(struct cpu *c, const struct lora_net *net, int B, int T, float *base)
{
	const size_t N = (size_t)B * T, C = net->C, F = net->F, HD = (size_t)net->H * net->D;
	const size_t KVD = (size_t)net->KV * net->D, mx = C > F ? (C > HD ? C : HD) : (F > HD ? F : HD);
	const size_t R = max_rank(net);
	float *p = base ? base : (float *)64;   /* measure: any aligned origin */
	float *start = p;

	for (int l = 0; l < c->n_acts; l++) {
		struct acts *a = &c->acts[l];
		a->x = take(&p, N * C);
		a->rstd1 = take(&p, N);
		a->h1 = take(&p, N * C);
		a->q = take(&p, N * HD);
		a->k = take(&p, N * KVD);
		a->v = take(&p, N * KVD);
		a->lse = take(&p, N * net->H);
		a->att = take(&p, N * HD);
		a->xm = take(&p, N * C);
		a->rstd2 = take(&p, N);
		a->h2 = take(&p, N * C);
		a->g = take(&p, N * F);
		a->up = take(&p, N * F);
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
	c->tq = take(&p, N * HD);
	c->tk = take(&p, N * KVD);
	c->tv = take(&p, N * KVD);
	c->to = take(&p, N * C);
	c->datt = take(&p, N * HD);
	c->dq = take(&p, N * HD);
	c->dk = take(&p, N * KVD);
	c->dv = take(&p, N * KVD);
	c->dact = take(&p, N * F);
	c->dg = take(&p, N * F);
	c->dup = take(&p, N * F);
	c->xd = take(&p, N * mx);
	c->mask = take(&p, N * mx);
	c->du = take(&p, N * R);
	c->S = take(&p, (size_t)(T < QB ? T : QB) * T);
	c->P = take(&p, (size_t)(T < QB ? T : QB) * T);
	c->cosb = take(&p, (size_t)T * (net->D / 2));
	c->sinb = take(&p, (size_t)T * (net->D / 2));
	c->wbuf = take(&p, WCHUNK);
	c->nc = (int)(LOGIT_CHUNK / (size_t)net->V);
	if (c->nc < 1)
		c->nc = 1;
	if ((size_t)c->nc > N)
		c->nc = (int)N;
	c->logit = take(&p, (size_t)c->nc * net->V);
	return (size_t)(p - start);
}

static void cpu_release(struct lora_net *net)
{
	struct cpu *c = net->be_state;

	if (!c)
		return;
	free(c->mem);
	free(c->acts);
	free(c->xs);
	free(c);
	net->be_state = NULL;
}

static struct cpu *cpu_prepare(struct lora_net *net, int B, int T, struct lora_err *err)
{
	struct cpu *c = net->be_state;
	size_t n;

	if (c && c->B >= B && c->T == T)
		return c;
	cpu_release(net);
	if (!(c = calloc(1, sizeof(*c))))
		goto oom;
	net->be_state = c;
	c->n_acts = net->opts.checkpoint ? 1 : net->L;
	if (!(c->acts = calloc((size_t)c->n_acts, sizeof(*c->acts))))
		goto oom;
	if (net->opts.checkpoint && !(c->xs = calloc((size_t)net->L, sizeof(*c->xs))))
		goto oom;
	n = layout(c, net, B, T, NULL);
	if (n > ((size_t)1 << 40) / sizeof(float) ||
	    !(c->mem = aligned_alloc(64, ((n * sizeof(float)) + 63) & ~(size_t)63)))
		goto oom;
	layout(c, net, B, T, c->mem);
	c->B = B;
	c->T = T;
	if (net->opts.threads > 0)
		openblas_set_num_threads(net->opts.threads);
	return c;
oom:
	cpu_release(net);
	lora_errf(err, "out of memory for activations of a %d x %d batch", B, T);
	return NULL;
}

/* ------------------------------------------------------------ matrix products */

static void gemm(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
		 const float *b, int ldb, float beta, float *cm, int ldc)
{
	cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n,
		    k, alpha, a, lda, b, ldb, beta, cm, ldc);
}

static int chunk_rows(const struct lora_frozen *w)
{
	int nr = (int)(WCHUNK / (unsigned)w->cols);
	return nr < 1 ? 1 : nr > w->rows ? w->rows : nr;
}

/* y[:, 0..rows) (row stride ldy) = beta·y + x [N, cols] · Wᵀ */
static void frozen_xwt(struct cpu *c, const struct lora_frozen *w, const float *x, int N, float *y,
		       int ldy, float beta)
{
	const int step = chunk_rows(w);

	if (w->fmt == LORA_WF_F32 && ((uintptr_t)w->data & 3) == 0) {
		gemm(0, 1, N, w->rows, w->cols, 1.0f, x, w->cols, w->data, w->cols, beta, y, ldy);
		return;
	}
	for (int r0 = 0; r0 < w->rows; r0 += step) {
		const int nr = w->rows - r0 < step ? w->rows - r0 : step;
		lora_frozen_rows(w, r0, nr, c->wbuf);
		gemm(0, 1, N, nr, w->cols, 1.0f, x, w->cols, c->wbuf, w->cols, beta, y + r0, ldy);
	}
}

/* dx [N, cols] = beta·dx + dy [N, rows] (row stride lddy) · W */
static void frozen_dyw(struct cpu *c, const struct lora_frozen *w, const float *dy, int N, int lddy,
		       float *dx, float beta)
{
	const int step = chunk_rows(w);

	if (w->fmt == LORA_WF_F32 && ((uintptr_t)w->data & 3) == 0) {
		gemm(0, 0, N, w->cols, w->rows, 1.0f, dy, lddy, w->data, w->cols, beta, dx, w->cols);
		return;
	}
	for (int r0 = 0; r0 < w->rows; r0 += step) {
		const int nr = w->rows - r0 < step ? w->rows - r0 : step;
		lora_frozen_rows(w, r0, nr, c->wbuf);
		gemm(0, 0, N, w->cols, nr, 1.0f, dy + r0, lddy, c->wbuf, w->cols, r0 ? 1.0f : beta, dx,
		     w->cols);
	}
}

/* ------------------------------------------------------------ linear + LoRA */

struct ctx {
	struct lora_net *net;
	struct cpu *c;
	const struct lora_batch *b;
	int N;
	int dropout;              /* LoRA dropout active (training) */
};

/* The LoRA path's input: x itself, or x·mask in c->xd (mask in c->mask). */
static const float *lora_input(const struct ctx *k, int l, enum lora_target t, const float *x, int in)
{
	const size_t n = (size_t)k->N * in;

	if (!k->dropout)
		return x;
	lora_dropout_mask(k->c->mask, n, k->net->lcfg.dropout, k->net->lcfg.seed, k->net->step, l, t);
	for (size_t i = 0; i < n; i++)
		k->c->xd[i] = x[i] * k->c->mask[i];
	return k->c->xd;
}

/* y [N, out] = x·Wᵀ + bias + scale·(dropout(x)·Aᵀ)·Bᵀ; u [N, r] keeps dropout(x)·Aᵀ. */
static void lin_fwd(const struct ctx *k, int l, enum lora_target t, const float *x, float *y, float *u)
{
	const struct lora_linear *lin = &k->net->blocks[l].lin[t];
	const int in = lin->w.cols, out = lin->w.rows, N = k->N;

	frozen_xwt(k->c, &lin->w, x, N, y, out, 0.0f);
	if (lin->bias)
		for (int n = 0; n < N; n++)
			for (int o = 0; o < out; o++)
				y[(size_t)n * out + o] += lin->bias[o];
	if (lin->has_lora) {
		const struct lora_mod *m = &lin->lora;
		const float *xa = lora_input(k, l, t, x, in);

		gemm(0, 1, N, m->r, in, 1.0f, xa, in, k->net->params + m->a_off, in, 0.0f, u, m->r);
		gemm(0, 1, N, out, m->r, m->scale, u, m->r, k->net->params + m->b_off, m->r, 1.0f, y, out);
	}
}

/*
 * Given dy [N, out]: dA += duᵀ·dropout(x), dB += scale·dyᵀ·u with du = scale·dy·B,
 * and when dx is not NULL, dx = beta·dx + dy·W + (du·A)·mask.
 */
static void lin_bwd(const struct ctx *k, int l, enum lora_target t, const float *x, const float *u,
		    const float *dy, float *dx, float beta)
{
	const struct lora_linear *lin = &k->net->blocks[l].lin[t];
	const int in = lin->w.cols, out = lin->w.rows, N = k->N;
	struct cpu *c = k->c;

	if (lin->has_lora) {
		const struct lora_mod *m = &lin->lora;
		float *gA = k->net->grads + m->a_off, *gB = k->net->grads + m->b_off;
		const float *xa;

		gemm(1, 0, out, m->r, N, m->scale, dy, out, u, m->r, 1.0f, gB, m->r);
		gemm(0, 0, N, m->r, out, m->scale, dy, out, k->net->params + m->b_off, m->r, 0.0f, c->du, m->r);
		xa = lora_input(k, l, t, x, in);
		gemm(1, 0, m->r, in, N, 1.0f, c->du, m->r, xa, in, 1.0f, gA, in);
	}
	if (!dx)
		return;
	frozen_dyw(c, &lin->w, dy, N, out, dx, beta);
	if (lin->has_lora) {
		const struct lora_mod *m = &lin->lora;
		const float *A = k->net->params + m->a_off;

		if (!k->dropout) {
			gemm(0, 0, N, in, m->r, 1.0f, c->du, m->r, A, in, 1.0f, dx, in);
		} else {
			/* xd is free again: (du·A) there, then through the mask */
			gemm(0, 0, N, in, m->r, 1.0f, c->du, m->r, A, in, 0.0f, c->xd, in);
			for (size_t i = 0; i < (size_t)N * in; i++)
				dx[i] += c->xd[i] * c->mask[i];
		}
	}
}

/* ------------------------------------------------------------ norms, RoPE, MLP */

/* transformers' LlamaRMSNorm in fp32: y = w · (x · rsqrt(mean(x²) + eps)). */
static void rmsnorm(const float *x, const float *w, int N, int C, float eps, float *y, float *rstd)
{
	for (int n = 0; n < N; n++) {
		const float *xn = x + (size_t)n * C;
		float *yn = y + (size_t)n * C;
		double ss = 0.0;
		float r;

		for (int i = 0; i < C; i++)
			ss += (double)xn[i] * xn[i];
		r = 1.0f / sqrtf((float)(ss / C) + eps);
		rstd[n] = r;
		for (int i = 0; i < C; i++)
			yn[i] = w[i] * (xn[i] * r);
	}
}

/* dx (+)= d/dx of rmsnorm given dy: r·(w·dy) - x·r³·mean(w·dy·x). */
static void rmsnorm_bwd(const float *x, const float *w, const float *rstd, const float *dy, int N,
			int C, float *dx, int accumulate)
{
	for (int n = 0; n < N; n++) {
		const float *xn = x + (size_t)n * C, *dyn = dy + (size_t)n * C;
		float *dxn = dx + (size_t)n * C;
		const float r = rstd[n];
		double dot = 0.0;
		float k;

		for (int i = 0; i < C; i++)
			dot += (double)w[i] * dyn[i] * xn[i];
		k = (float)(dot / C) * r * r * r;
		for (int i = 0; i < C; i++) {
			float g = r * (w[i] * dyn[i]) - xn[i] * k;
			dxn[i] = accumulate ? dxn[i] + g : g;
		}
	}
}

static void rope_tables(const struct lora_net *net, int T, float *cosb, float *sinb)
{
	const int half = net->D / 2;

	for (int t = 0; t < T; t++)
		for (int i = 0; i < half; i++) {
			float a = net->inv_freq[i] * (float)t;
			cosb[t * half + i] = cosf(a);
			sinb[t * half + i] = sinf(a);
		}
}

/* token-major src [N, nh·D] -> head-major dst [B, nh, T, D], rotated (rope) or not. */
static void to_heads(const float *src, float *dst, int B, int T, int nh, int D, const float *cosb,
		     const float *sinb, int rope)
{
	const int half = D / 2;

	for (int b = 0; b < B; b++)
		for (int t = 0; t < T; t++)
			for (int h = 0; h < nh; h++) {
				const float *s = src + ((size_t)b * T + t) * nh * D + (size_t)h * D;
				float *d = dst + (((size_t)b * nh + h) * T + t) * D;
				const float *cs = cosb + (size_t)t * half, *sn = sinb + (size_t)t * half;

				if (!rope) {
					memcpy(d, s, sizeof(float) * D);
					continue;
				}
				/* q·cos + rotate_half(q)·sin, rotate_half(q) = [-q2, q1] */
				for (int i = 0; i < half; i++) {
					d[i] = s[i] * cs[i] - s[i + half] * sn[i];
					d[i + half] = s[i + half] * cs[i] + s[i] * sn[i];
				}
			}
}

/* Inverse of to_heads for gradients: head-major src -> token-major dst. */
static void from_heads(const float *src, float *dst, int B, int T, int nh, int D, const float *cosb,
		       const float *sinb, int rope)
{
	const int half = D / 2;

	for (int b = 0; b < B; b++)
		for (int t = 0; t < T; t++)
			for (int h = 0; h < nh; h++) {
				const float *s = src + (((size_t)b * nh + h) * T + t) * D;
				float *d = dst + ((size_t)b * T + t) * nh * D + (size_t)h * D;
				const float *cs = cosb + (size_t)t * half, *sn = sinb + (size_t)t * half;

				if (!rope) {
					memcpy(d, s, sizeof(float) * D);
					continue;
				}
				for (int i = 0; i < half; i++) {
					d[i] = s[i] * cs[i] + s[i + half] * sn[i];
					d[i + half] = s[i + half] * cs[i] - s[i] * sn[i];
				}
			}
}

static void swiglu(const float *g, const float *up, float *act, size_t n)
{
	for (size_t i = 0; i < n; i++)
		act[i] = g[i] / (1.0f + expf(-g[i])) * up[i];
}

static void swiglu_bwd(const float *g, const float *up, const float *dact, float *dg, float *dup,
		       size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const float s = 1.0f / (1.0f + expf(-g[i]));
		dup[i] = dact[i] * (g[i] * s);
		dg[i] = dact[i] * up[i] * (s * (1.0f + g[i] * (1.0f - s)));
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
 * S and P are [QB, T] scratch with row stride nk = q1 - k0.
 */
/* P = softmax of the scaled scores of queries [q0, q1) within the band; lse per row. */
static void attn_probs(struct cpu *c, const float *q, const float *kk, int q0, int q1, int k0, int D,
		       float scaling, int window, float *lse, int have_lse)
{
	const int nk = q1 - k0;

	gemm(0, 1, q1 - q0, nk, D, 1.0f, q + (size_t)q0 * D, D, kk + (size_t)k0 * D, D, 0.0f, c->S, nk);
	for (int i = q0; i < q1; i++) {
		float *s = c->S + (size_t)(i - q0) * nk - k0, *p = c->P + (size_t)(i - q0) * nk - k0;
		const int lo = key_lo(i, window);
		float m = -INFINITY, sum = 0.0f;

		for (int j = k0; j < lo; j++)
			p[j] = 0.0f;
		for (int j = i + 1; j < q1; j++)
			p[j] = 0.0f;
		if (have_lse) {
			for (int j = lo; j <= i; j++)
				p[j] = expf(s[j] * scaling - lse[i]);
			continue;
		}
		for (int j = lo; j <= i; j++) {
			s[j] = s[j] * scaling;
			m = s[j] > m ? s[j] : m;
		}
		for (int j = lo; j <= i; j++) {
			p[j] = expf(s[j] - m);
			sum += p[j];
		}
		for (int j = lo; j <= i; j++)
			p[j] = p[j] / sum;
		lse[i] = m + logf(sum);
	}
}

static void attn_fwd(const struct ctx *k, const struct lora_block *bk, struct acts *a)
{
	const struct lora_net *net = k->net;
	const int B = k->b->B, T = k->b->T, H = net->H, D = net->D, HD = H * D, grp = H / net->KV;
	const float scaling = (float)pow((double)D, -0.5);

	for (int b = 0; b < B; b++)
		for (int h = 0; h < H; h++) {
			const float *q = a->q + ((size_t)b * H + h) * T * D;
			const size_t kvo = ((size_t)b * net->KV + h / grp) * T * D;
			float *out = a->att + (size_t)b * T * HD + (size_t)h * D;

			for (int q0 = 0; q0 < T; q0 += QB) {
				const int q1 = q0 + QB < T ? q0 + QB : T, k0 = key_lo(q0, bk->window);

				attn_probs(k->c, q, a->k + kvo, q0, q1, k0, D, scaling, bk->window,
					   a->lse + ((size_t)b * H + h) * T, 0);
				gemm(0, 0, q1 - q0, D, q1 - k0, 1.0f, k->c->P, q1 - k0,
				     a->v + kvo + (size_t)k0 * D, D, 0.0f, out + (size_t)q0 * HD, HD);
			}
		}
}

/* From datt [N, H·D]: dq, dk, dv head-major (dk, dv summed over each group's heads). */
static void attn_bwd(const struct ctx *k, const struct lora_block *bk, const struct acts *a)
{
	const struct lora_net *net = k->net;
	struct cpu *c = k->c;
	const int B = k->b->B, T = k->b->T, H = net->H, D = net->D, HD = H * D, grp = H / net->KV;
	const float scaling = (float)pow((double)D, -0.5);

	memset(c->dk, 0, sizeof(float) * (size_t)B * net->KV * T * D);
	memset(c->dv, 0, sizeof(float) * (size_t)B * net->KV * T * D);
	for (int b = 0; b < B; b++)
		for (int h = 0; h < H; h++) {
			const size_t qo = ((size_t)b * H + h) * T * D;
			const size_t kvo = ((size_t)b * net->KV + h / grp) * T * D;
			const float *dO = c->datt + (size_t)b * T * HD + (size_t)h * D;

			for (int q0 = 0; q0 < T; q0 += QB) {
				const int q1 = q0 + QB < T ? q0 + QB : T, k0 = key_lo(q0, bk->window);
				const int nq = q1 - q0, nk = q1 - k0;

				attn_probs(c, a->q + qo, a->k + kvo, q0, q1, k0, D, scaling, bk->window,
					   a->lse + ((size_t)b * H + h) * T, 1);
				/* dV += Pᵀ·dO, dP = dO·Vᵀ (into S), dS = P·(dP - rowsum(P·dP)) */
				gemm(1, 0, nk, D, nq, 1.0f, c->P, nk, dO + (size_t)q0 * HD, HD, 1.0f,
				     c->dv + kvo + (size_t)k0 * D, D);
				gemm(0, 1, nq, nk, D, 1.0f, dO + (size_t)q0 * HD, HD, a->v + kvo + (size_t)k0 * D,
				     D, 0.0f, c->S, nk);
				for (int i = q0; i < q1; i++) {
					float *dp = c->S + (size_t)(i - q0) * nk - k0;
					const float *p = c->P + (size_t)(i - q0) * nk - k0;
					const int lo = key_lo(i, bk->window);
					float dot = 0.0f;

					for (int j = lo; j <= i; j++)
						dot += p[j] * dp[j];
					for (int j = k0; j < q1; j++)
						dp[j] = (j >= lo && j <= i) ? p[j] * (dp[j] - dot) : 0.0f;
				}
				gemm(0, 0, nq, D, nk, scaling, c->S, nk, a->k + kvo + (size_t)k0 * D, D, 0.0f,
				     c->dq + qo + (size_t)q0 * D, D);
				gemm(1, 0, nk, D, nq, scaling, c->S, nk, a->q + qo + (size_t)q0 * D, D, 1.0f,
				     c->dk + kvo + (size_t)k0 * D, D);
			}
		}
}

/* ------------------------------------------------------------ a decoder layer */

static void layer_fwd(const struct ctx *k, int l, struct acts *a, float *out)
{
	const struct lora_net *net = k->net;
	const struct lora_block *bk = &net->blocks[l];
	struct cpu *c = k->c;
	const int N = k->N, B = k->b->B, T = k->b->T, C = net->C;

	rmsnorm(a->x, bk->ln1, N, C, net->eps, a->h1, a->rstd1);
	lin_fwd(k, l, LORA_T_Q, a->h1, c->tq, a->u[LORA_T_Q]);
	lin_fwd(k, l, LORA_T_K, a->h1, c->tk, a->u[LORA_T_K]);
	lin_fwd(k, l, LORA_T_V, a->h1, c->tv, a->u[LORA_T_V]);
	to_heads(c->tq, a->q, B, T, net->H, net->D, c->cosb, c->sinb, 1);
	to_heads(c->tk, a->k, B, T, net->KV, net->D, c->cosb, c->sinb, 1);
	to_heads(c->tv, a->v, B, T, net->KV, net->D, c->cosb, c->sinb, 0);
	attn_fwd(k, bk, a);
	lin_fwd(k, l, LORA_T_O, a->att, c->to, a->u[LORA_T_O]);
	for (size_t i = 0; i < (size_t)N * C; i++)
		a->xm[i] = a->x[i] + c->to[i];
	rmsnorm(a->xm, bk->ln2, N, C, net->eps, a->h2, a->rstd2);
	lin_fwd(k, l, LORA_T_GATE, a->h2, a->g, a->u[LORA_T_GATE]);
	lin_fwd(k, l, LORA_T_UP, a->h2, a->up, a->u[LORA_T_UP]);
	swiglu(a->g, a->up, a->act, (size_t)N * net->F);
	lin_fwd(k, l, LORA_T_DOWN, a->act, c->to, a->u[LORA_T_DOWN]);
	for (size_t i = 0; i < (size_t)N * C; i++)
		out[i] = a->xm[i] + c->to[i];
}

/* c->dx holds d(layer output); leaves d(layer input) there when need_dx. */
static void layer_bwd(const struct ctx *k, int l, const struct acts *a, int need_dx)
{
	const struct lora_net *net = k->net;
	const struct lora_block *bk = &net->blocks[l];
	struct cpu *c = k->c;
	const int N = k->N, B = k->b->B, T = k->b->T, C = net->C;
	const size_t NF = (size_t)N * net->F;

	/* MLP: out = xm + down(silu(gate(h2))·up(h2)) */
	lin_bwd(k, l, LORA_T_DOWN, a->act, a->u[LORA_T_DOWN], c->dx, c->dact, 0.0f);
	swiglu_bwd(a->g, a->up, c->dact, c->dg, c->dup, NF);
	lin_bwd(k, l, LORA_T_GATE, a->h2, a->u[LORA_T_GATE], c->dg, c->dh, 0.0f);
	lin_bwd(k, l, LORA_T_UP, a->h2, a->u[LORA_T_UP], c->dup, c->dh, 1.0f);
	rmsnorm_bwd(a->xm, bk->ln2, a->rstd2, c->dh, N, C, c->dx, 1);   /* dx is now d xm */

	/* attention: xm = x + o(attn(rope(q(h1)), rope(k(h1)), v(h1))) */
	lin_bwd(k, l, LORA_T_O, a->att, a->u[LORA_T_O], c->dx, c->datt, 0.0f);
	attn_bwd(k, bk, a);
	from_heads(c->dq, c->tq, B, T, net->H, net->D, c->cosb, c->sinb, 1);
	from_heads(c->dk, c->tk, B, T, net->KV, net->D, c->cosb, c->sinb, 1);
	from_heads(c->dv, c->tv, B, T, net->KV, net->D, c->cosb, c->sinb, 0);
	lin_bwd(k, l, LORA_T_Q, a->h1, a->u[LORA_T_Q], c->tq, need_dx ? c->dh : NULL, 0.0f);
	lin_bwd(k, l, LORA_T_K, a->h1, a->u[LORA_T_K], c->tk, need_dx ? c->dh : NULL, 1.0f);
	lin_bwd(k, l, LORA_T_V, a->h1, a->u[LORA_T_V], c->tv, need_dx ? c->dh : NULL, 1.0f);
	if (need_dx)
		rmsnorm_bwd(a->x, bk->ln1, a->rstd1, c->dh, N, C, c->dx, 1);
}

/* ------------------------------------------------------------ loss head */

static inline int target_of(const struct lora_batch *b, int n)
{
	const int r = n / b->T, t = n % b->T, len = b->len ? b->len[r] : b->T;

	if (t + 1 >= len)
		return -100;
	return b->labels ? b->labels[(size_t)r * b->T + t + 1] : b->ids[(size_t)r * b->T + t + 1];
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

	for (int n0 = 0; n0 < k->N; n0 += c->nc) {
		const int nc = k->N - n0 < c->nc ? k->N - n0 : c->nc;

		frozen_xwt(c, &net->lm_head, c->hf + (size_t)n0 * C, nc, c->logit, V, 0.0f);
		if (logits_out)
			memcpy(logits_out + (size_t)n0 * V, c->logit, sizeof(float) * (size_t)nc * V);
		for (int i = 0; i < nc; i++) {
			float *z = c->logit + (size_t)i * V;
			const int tgt = target_of(k->b, n0 + i);
			float m = -INFINITY;
			double sum = 0.0, lse;

			if (tgt < 0) {
				if (backward)
					memset(z, 0, sizeof(float) * V);
				continue;
			}
			for (int j = 0; j < V; j++)
				m = z[j] > m ? z[j] : m;
			/* fp32 exponentials as torch's log_softmax, summed in double */
			for (int j = 0; j < V; j++)
				sum += expf(z[j] - m);
			lse = m + log(sum);
			res->loss_sum += lse - z[tgt];
			if (backward) {
				const float fl = (float)lse, fs = (float)scale;
				for (int j = 0; j < V; j++)
					z[j] = expf(z[j] - fl) * fs;
				z[tgt] -= fs;
			}
		}
		if (backward)
			frozen_dyw(c, &net->lm_head, c->logit, nc, V, c->dh + (size_t)n0 * C, 0.0f);
	}
}

/* ------------------------------------------------------------ the pass */

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
	rope_tables(net, b->T, c->cosb, c->sinb);

	/* embedding -> layers -> final norm */
	{
		float *x0 = ck ? c->xs[0] : c->acts[0].x;
		for (int n = 0; n < k.N; n++)
			lora_frozen_rows(&net->embed, b->ids[n], 1, x0 + (size_t)n * C);
	}
	for (int l = 0; l < L; l++) {
		struct acts *a = &c->acts[ck ? 0 : l];
		float *out = l + 1 < L ? (ck ? c->xs[l + 1] : c->acts[l + 1].x) : c->xL;

		if (ck)
			a->x = c->xs[l];
		layer_fwd(&k, l, a, out);
	}
	rmsnorm(c->xL, net->norm_f, k.N, C, net->eps, c->hf, c->rstd_f);
	loss_head(&k, backward, scale, logits, res);
	res->loss = res->tokens ? res->loss_sum / (double)res->tokens : 0.0;
	if (!backward)
		return 0;

	rmsnorm_bwd(c->xL, net->norm_f, c->rstd_f, c->dh, k.N, C, c->dx, 0);
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
};
