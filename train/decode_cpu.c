/*
 * decode_cpu.c - the CPU backend's incremental forward pass (generation):
 * a key/value cache and n new tokens at a time.  The per-token arithmetic
 * repeats model_cpu.c's (RMSNorm, RoPE, SwiGLU, linear + LoRA, softmax
 * attention) for a window of new positions instead of a whole [B, T] batch;
 * test_generate.c checks the two against each other and against
 * transformers' greedy generate.  Reached through lora_backend_cpu's
 * kv_new / decode / kv_free hooks (net.h); generate.c holds the loop.
 *
 * Shapes: n new tokens at positions p0 .. p0+n-1; C hidden, F intermediate,
 * H heads, KV key/value heads, D head dim, V vocab, P cache positions.
 */
#include "train/decode_cpu.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define WCHUNK (1u << 20)   /* floats of a dequantized weight chunk (as model_cpu.c) */
#define NCHUNK 64           /* new positions per pass (a longer prompt is fed in pieces) */

struct lora_kv {
	const struct lora_net *net;
	int P;                    /* cache capacity in positions */
	size_t R;                 /* largest LoRA rank the buffers hold */
	float *kc, *vc;           /* [L, KV, P, D] */
	float *x, *h;             /* [NCHUNK, C] residual stream, normed input */
	float *q, *k, *v;         /* [NCHUNK, H·D], [NCHUNK, KV·D] x2 */
	float *att;               /* [NCHUNK, H·D] */
	float *t;                 /* [NCHUNK, C] o_proj / down_proj output */
	float *g, *up;            /* [NCHUNK, F] */
	float *u;                 /* [NCHUNK, max r] LoRA inner activations */
	float *fz;                /* [NCHUNK, max(H·D + 2·KV·D, 2F)] a fused linear's output (Phi-3) */
	float *p;                 /* [P] attention probabilities of one query */
	float *cs, *sn;           /* [D/2] RoPE of one position */
	float *wbuf;              /* [WCHUNK] */
	float *mem;
};

static inline float *take(float **p, size_t n)
{
	float *r = *p;
	*p += (n + 15) & ~(size_t)15;
	return r;
}

static size_t layout(struct lora_kv *g, float *base)
{
	const struct lora_net *net = g->net;
	const size_t C = net->C, F = net->F, HD = (size_t)net->H * net->D, KVD = (size_t)net->KV * net->D;
	const size_t cache = (size_t)net->L * net->KV * (size_t)g->P * net->D;
	size_t R = 1;
	float *p = base ? base : (float *)64, *start = p;

	for (int l = 0; l < net->L; l++)
		for (int t = 0; t < LORA_NTARGET; t++)
			if (net->blocks[l].lin[t].has_lora && (size_t)net->blocks[l].lin[t].lora.r > R)
				R = (size_t)net->blocks[l].lin[t].lora.r;
	g->kc = take(&p, cache);
	g->vc = take(&p, cache);
	g->x = take(&p, NCHUNK * C);
	g->h = take(&p, NCHUNK * C);
	g->q = take(&p, NCHUNK * HD);
	g->k = take(&p, NCHUNK * KVD);
	g->v = take(&p, NCHUNK * KVD);
	g->att = take(&p, NCHUNK * HD);
	g->t = take(&p, NCHUNK * C);
	g->g = take(&p, NCHUNK * F);
	g->up = take(&p, NCHUNK * F);
	g->R = R;
	g->u = take(&p, NCHUNK * R);
	g->fz = take(&p, net->fused ? NCHUNK * (HD + 2 * KVD > 2 * F ? HD + 2 * KVD : 2 * F) : 0);
	g->p = take(&p, (size_t)g->P);
	g->cs = take(&p, (size_t)net->D / 2);
	g->sn = take(&p, (size_t)net->D / 2);
	g->wbuf = take(&p, WCHUNK);
	return (size_t)(p - start);
}

int lora_cpu_kv_new(struct lora_net *net, int max_pos, struct lora_kv **out, struct lora_err *err)
{
	struct lora_kv *g = calloc(1, sizeof(*g));
	size_t n;

	*out = NULL;
	if (!g)
		return lora_errf(err, "out of memory");
	g->net = net;
	g->P = max_pos;
	n = layout(g, NULL);
	if (n > ((size_t)1 << 40) / sizeof(float) ||
	    !(g->mem = aligned_alloc(64, (n * sizeof(float) + 63) & ~(size_t)63))) {
		free(g);
		return lora_errf(err, "out of memory for a cache of %d positions", max_pos);
	}
	layout(g, g->mem);
	if (net->opts.threads > 0)
		openblas_set_num_threads(net->opts.threads);
	*out = g;
	return 0;
}

void lora_cpu_kv_free(struct lora_net *net, struct lora_kv *g)
{
	(void)net;
	if (!g)
		return;
	free(g->mem);
	free(g);
}

/* ------------------------------------------------------------ pieces */

/* y [n, rows] = x [n, cols] · Wᵀ */
static void frozen_xwt(struct lora_kv *g, const struct lora_frozen *w, const float *x, int n, float *y)
{
	int step = (int)(WCHUNK / (unsigned)w->cols);

	step = step < 1 ? 1 : step > w->rows ? w->rows : step;
	if (w->fmt == LORA_WF_F32 && ((uintptr_t)w->data & 3) == 0) {
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, w->rows, w->cols, 1.0f, x, w->cols,
			    w->data, w->cols, 0.0f, y, w->rows);
		return;
	}
	for (int r0 = 0; r0 < w->rows; r0 += step) {
		const int nr = w->rows - r0 < step ? w->rows - r0 : step;

		lora_frozen_rows(w, r0, nr, g->wbuf);
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, nr, w->cols, 1.0f, x, w->cols,
			    g->wbuf, w->cols, 0.0f, y + r0, w->rows);
	}
}

/* y [n, out] = x·Wᵀ + bias + scale·(x·Aᵀ)·Bᵀ */
static void lin(struct lora_kv *g, int l, enum lora_target t, const float *x, int n, float *y)
{
	const struct lora_linear *ln = &g->net->blocks[l].lin[t];
	const int in = ln->w.cols, out = ln->w.rows;

	frozen_xwt(g, &ln->w, x, n, y);
	if (ln->bias)
		for (int i = 0; i < n; i++)
			for (int o = 0; o < out; o++)
				y[(size_t)i * out + o] += ln->bias[o];
	if (ln->has_lora) {
		const struct lora_mod *m = &ln->lora;

		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, m->r, in, 1.0f, x, in,
			    g->net->params + m->a_off, in, 0.0f, g->u, m->r);
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, m->r, m->scale, g->u, m->r,
			    g->net->params + m->b_off, m->r, 1.0f, y, out);
	}
}

/* transformers' LlamaRMSNorm in fp32, as model_cpu.c computes it */
static void rmsnorm(const float *x, const float *w, int n, int C, float eps, float *y)
{
	for (int i = 0; i < n; i++) {
		const float *xi = x + (size_t)i * C;
		float *yi = y + (size_t)i * C;
		double ss = 0.0;
		float r;

		for (int j = 0; j < C; j++)
			ss += (double)xi[j] * xi[j];
		r = 1.0f / sqrtf((float)(ss / C) + eps);
		for (int j = 0; j < C; j++)
			yi[j] = w[j] * (xi[j] * r);
	}
}

/* torch's gelu(approximate="tanh"), as model_cpu.c computes it */
static inline float gelu_tanh(float x)
{
	const float inner = 0.7978845608028654f * (x + 0.044715f * (x * x * x));
	return 0.5f * x * (1.0f + tanhf(inner));
}

/* Gemma 2's final soft-capping of n·V logits in place */
static void final_cap(const struct lora_net *net, float *z, size_t n)
{
	for (size_t i = 0; net->final_softcap > 0 && i < n; i++)
		z[i] = tanhf(z[i] / net->final_softcap) * net->final_softcap;
}

/* Rotate nh heads of one token in place at position pos (x·cos + rotate_half(x)·sin). */
static void rope(struct lora_kv *g, const float *inv_freq, float *x, int nh, int pos)
{
	const int D = g->net->D, half = D / 2;

	for (int i = 0; i < half; i++) {
		float a = inv_freq[i] * (float)pos;
		g->cs[i] = cosf(a);
		g->sn[i] = sinf(a);
	}
	for (int h = 0; h < nh; h++) {
		float *s = x + (size_t)h * D;
		for (int i = 0; i < half; i++) {
			const float a = s[i], b = s[i + half];
			s[i] = a * g->cs[i] - b * g->sn[i];
			s[i + half] = b * g->cs[i] + a * g->sn[i];
		}
	}
}

static inline float *kv_at(const struct lora_kv *g, float *base, int l, int kvh, int pos)
{
	const struct lora_net *net = g->net;
	return base + ((((size_t)l * net->KV + kvh) * g->P) + pos) * net->D;
}

/* att [n, H·D] for queries q at positions p0.. over the cached keys of layer l. */
static void attention(struct lora_kv *g, int l, int p0, int n)
{
	const struct lora_net *net = g->net;
	const int H = net->H, D = net->D, HD = H * D, grp = H / net->KV, window = net->blocks[l].window;
	const float scaling = net->attn_scale, cap = net->attn_softcap;

	for (int i = 0; i < n; i++) {
		const int p = p0 + i, lo = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;

		for (int h = 0; h < H; h++) {
			const float *qh = g->q + (size_t)i * HD + (size_t)h * D;
			float *o = g->att + (size_t)i * HD + (size_t)h * D;
			float m = -INFINITY, sum = 0.0f;

			for (int j = lo; j <= p; j++) {
				const float *kj = kv_at(g, g->kc, l, h / grp, j);
				float s = 0.0f;
				for (int d = 0; d < D; d++)
					s += qh[d] * kj[d];
				s = s * scaling;
				if (cap > 0)   /* Gemma 2's soft-capping */
					s = tanhf(s / cap) * cap;
				g->p[j] = s;
				m = s > m ? s : m;
			}
			for (int j = lo; j <= p; j++) {
				g->p[j] = expf(g->p[j] - m);
				sum += g->p[j];
			}
			memset(o, 0, sizeof(float) * D);
			for (int j = lo; j <= p; j++) {
				const float w = g->p[j] / sum, *vj = kv_at(g, g->vc, l, h / grp, j);
				for (int d = 0; d < D; d++)
					o[d] += w * vj[d];
			}
		}
	}
}

/* n <= NCHUNK new tokens: the pass through every layer; x ends as the final residual. */
static void pass(struct lora_kv *g, const int32_t *ids, int n, int p0)
{
	const struct lora_net *net = g->net;
	const int C = net->C, F = net->F, D = net->D, HD = net->H * D, KVD = net->KV * D;

	for (int i = 0; i < n; i++)
		lora_frozen_rows(&net->embed, ids[i], 1, g->x + (size_t)i * C);
	for (size_t i = 0; net->embed_scale != 1.0f && i < (size_t)n * C; i++)
		g->x[i] *= net->embed_scale;
	for (int l = 0; l < net->L; l++) {
		const struct lora_block *bk = &net->blocks[l];

		rmsnorm(g->x, bk->ln1, n, C, net->eps, g->h);
		if (net->fused) {   /* qkv_proj: rows [q | k | v] */
			lin(g, l, LORA_T_Q, g->h, n, g->fz);
			for (int i = 0; i < n; i++) {
				const float *r = g->fz + (size_t)i * (HD + 2 * KVD);
				memcpy(g->q + (size_t)i * HD, r, sizeof(float) * HD);
				memcpy(g->k + (size_t)i * KVD, r + HD, sizeof(float) * KVD);
				memcpy(g->v + (size_t)i * KVD, r + HD + KVD, sizeof(float) * KVD);
			}
		} else {
			lin(g, l, LORA_T_Q, g->h, n, g->q);
			lin(g, l, LORA_T_K, g->h, n, g->k);
			lin(g, l, LORA_T_V, g->h, n, g->v);
		}
		if (bk->q_norm) {   /* each head of D: n·H query rows, n·KV key rows */
			rmsnorm(g->q, bk->q_norm, n * net->H, D, net->eps, g->q);
			rmsnorm(g->k, bk->k_norm, n * net->KV, D, net->eps, g->k);
		}
		for (int i = 0; i < n; i++) {
			const float *f = bk->local_rope ? net->inv_freq_local : net->inv_freq;

			rope(g, f, g->q + (size_t)i * HD, net->H, p0 + i);
			rope(g, f, g->k + (size_t)i * KVD, net->KV, p0 + i);
			for (int h = 0; h < net->KV; h++) {
				memcpy(kv_at(g, g->kc, l, h, p0 + i), g->k + (size_t)i * KVD + (size_t)h * D,
				       sizeof(float) * D);
				memcpy(kv_at(g, g->vc, l, h, p0 + i), g->v + (size_t)i * KVD + (size_t)h * D,
				       sizeof(float) * D);
			}
		}
		attention(g, l, p0, n);
		lin(g, l, LORA_T_O, g->att, n, g->t);
		if (bk->post_attn)
			rmsnorm(g->t, bk->post_attn, n, C, net->eps, g->t);
		for (size_t i = 0; i < (size_t)n * C; i++)
			g->x[i] += g->t[i];
		rmsnorm(g->x, bk->ln2, n, C, net->eps, g->h);
		if (net->fused) {   /* gate_up_proj: rows [gate | up] */
			lin(g, l, LORA_T_GATE, g->h, n, g->fz);
			for (int i = 0; i < n; i++) {
				memcpy(g->g + (size_t)i * F, g->fz + (size_t)i * 2 * F, sizeof(float) * F);
				memcpy(g->up + (size_t)i * F, g->fz + (size_t)i * 2 * F + F, sizeof(float) * F);
			}
		} else {
			lin(g, l, LORA_T_GATE, g->h, n, g->g);
			lin(g, l, LORA_T_UP, g->h, n, g->up);
		}
		for (size_t i = 0; i < (size_t)n * F; i++)
			g->g[i] = (net->gelu ? gelu_tanh(g->g[i]) : g->g[i] / (1.0f + expf(-g->g[i]))) * g->up[i];
		lin(g, l, LORA_T_DOWN, g->g, n, g->t);
		if (bk->post_ff)
			rmsnorm(g->t, bk->post_ff, n, C, net->eps, g->t);
		for (size_t i = 0; i < (size_t)n * C; i++)
			g->x[i] += g->t[i];
	}
}

int lora_cpu_decode(struct lora_net *net, struct lora_kv *g, int pos, const int32_t *ids, int n,
		    float *logits, float *all, struct lora_err *err)
{
	const int C = net->C, V = net->V;

	if (g->net != net || pos < 0 || n < 1 || n > g->P - pos)
		return lora_errf(err, "%d tokens at position %d do not fit in the %d positions of the cache", n,
				 pos, g->P);
	for (int l = 0; l < net->L; l++)
		for (int t = 0; t < LORA_NTARGET; t++)
			if (net->blocks[l].lin[t].has_lora && (size_t)net->blocks[l].lin[t].lora.r > g->R)
				return lora_errf(err, "the key/value cache was made before adapters of rank %d",
						 net->blocks[l].lin[t].lora.r);
	for (int i0 = 0; i0 < n; i0 += NCHUNK) {
		const int m = n - i0 < NCHUNK ? n - i0 : NCHUNK;

		pass(g, ids + i0, m, pos + i0);
		if (all) {
			rmsnorm(g->x, net->norm_f, m, C, net->eps, g->h);
			frozen_xwt(g, &net->lm_head, g->h, m, all + (size_t)i0 * V);
			final_cap(net, all + (size_t)i0 * V, (size_t)m * V);
		}
		if (logits && i0 + m == n) {
			if (all) {
				memcpy(logits, all + (size_t)(n - 1) * V, sizeof(float) * V);
			} else {
				rmsnorm(g->x + (size_t)(m - 1) * C, net->norm_f, 1, C, net->eps, g->h);
				frozen_xwt(g, &net->lm_head, g->h, 1, logits);
				final_cap(net, logits, (size_t)V);
			}
		}
	}
	return 0;
}
