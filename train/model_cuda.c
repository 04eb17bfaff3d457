/*
 * model_cuda.c - the CUDA forward and backward, read side by side with
 * train/model_cpu.c: the same layer order, the same buffer names, the same
 * products with the same operands, each step one call of the plugin table
 * (kernels/abi.h).  This file never includes a CUDA header and builds
 * without nvcc: the device is raw pointers behind that table, so the same
 * code runs on a GPU and, in `make check`, on the CPU execution layer of
 * tests/simt (liblora_cuda_simt.so), which is how it is tested.
 *
 * On the device, uploaded on the first run and kept (released when the
 * adapters change shape, as the CPU state is):
 *   frozen decoder linears   NF4 as net holds them (packed bytes, 8-bit
 *                            absmax codes, nested fp32 scales: the bytes the
 *                            CPU path dequantizes), or dense as fp32
 *   norms, biases, RoPE inv_freq, the LM head (fp32)
 * Each run uploads the LoRA parameters and the gradients (the host keeps
 * the master copy, which checkpoints save) and downloads the gradients after
 * the backward pass.  The optimizer step runs on the device too
 * (cuda_optim_step: grad_norm and clipping, then the fused AdamW), with the
 * moments paged in from the host's arrays before the update and out after
 * it, as bitsandbytes' paged optimizers keep them off the device.
 *
 * A frozen product dequantizes its NF4 rows a chunk at a time into one fp32
 * scratch (nf4_dequant) and multiplies by it (gemm); the LoRA terms are
 * lora_fwd / lora_bwd; the loss head takes NC tokens at a time through the
 * LM head and the xent_* kernels (no [N, V] logits tensor), and in training
 * turns them into d hidden at once.  The token embedding is gathered on the
 * host from net's rows (N·C floats a step) and uploaded.
 *
 * Attention runs on the device both ways (attn_fwd, attn_bwd from the saved
 * log-sum-exp), so nothing but the embedding rows, the dropout masks, the
 * targets, the LoRA parameters and gradients and the per-token losses
 * crosses the bus in a step.
 *
 * Supported: what the kernels cover, Llama (llama3 / linear RoPE scaling,
 * tied embeddings), Mistral's sliding window, Qwen2's q/k/v biases, Qwen3's
 * and Gemma 3's q_norm/k_norm (headnorm), Gemma 2/3 (geglu, post_attn /
 * post_ff norms, attention and final soft-capping, embed_scale applied on the
 * host to the gathered rows, Gemma 3's second RoPE table from
 * inv_freq_local), Phi-3's fused linears (the empty k/v/up linears are
 * skipped); a head_dim over 128 or odd is refused by lora_cuda_supports.  Dropout on
 * the LoRA input uses the CPU trainer's mask (lora_dropout_mask, made on the
 * host and uploaded), so both backends drop the same elements.
 *
 * Generation (kv_new / decode) is not implemented on the device.
 */
#include "train/model_cuda.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "train/optim.h"

#define WCHUNK_MAX (16u << 20)   /* floats of the NF4 dequantization scratch at most (64 MiB) */
#define LOGIT_CHUNK (16u << 20)  /* floats of logits held at once on the device (64 MiB) */

/* The plugin table of the process (train/cuda.c loads one per process). */
static const struct lora_cuda_abi *api;

/* A frozen matrix on the device. */
struct dfrozen {
	int rows, cols;
	int nf4;
	float *w;                 /* dense: [rows, cols] fp32 */
	uint8_t *packed, *qabsmax;   /* NF4 (train/nf4.h layout) */
	float *absmax2;
	float offset;
};

struct dblock {
	float *ln1, *ln2;         /* [C] */
	float *q_norm, *k_norm;   /* [D] or NULL (Qwen3, Gemma 3) */
	float *post_attn, *post_ff;   /* [C] or NULL (Gemma 2 / 3) */
	struct dfrozen lin[LORA_NTARGET];
	float *bias[LORA_NTARGET];   /* [out] or NULL */
};

/* What one layer keeps for its backward pass (model_cpu.c's struct acts, same names). */
struct acts {
	float *x;                 /* [N, C] layer input (the residual stream) */
	float *rstd1;             /* [N] */
	float *h1;                /* [N, C] input_layernorm(x) */
	float *qkr;               /* [N, (H+KV)·D] q|k before their per-head norms (q_norm/k_norm only) */
	float *qkrstd;            /* [N, H+KV] */
	float *q;                 /* [B, H, T, D] after RoPE */
	float *k, *v;             /* [B, KV, T, D] */
	float *lse;               /* [B, H, T] */
	float *att;               /* [N, H·D] */
	float *xm;                /* [N, C] x + attention */
	float *rstd2;             /* [N] */
	float *h2;                /* [N, C] */
	float *gu;                /* [N, 2F] */
	float *act;               /* [N, F] */
	float *o_raw, *rstd3;     /* [N, C], [N] o_proj output before post_attention norm (Gemma) */
	float *d_raw, *rstd4;     /* [N, C], [N] down_proj output before post_feedforward norm */
	float *u[LORA_NTARGET];   /* [N, r] */
};

struct dev {
	const struct lora_cuda_abi *K;
	void *blas;
	/* resident */
	int loaded;
	struct dblock *blocks;    /* [L] */
	struct dfrozen lm_head;
	float *norm_f, *inv_freq, *inv_freq_local, *code8;
	float *wbuf;              /* [wchunk] NF4 dequantization scratch */
	size_t wchunk;
	float *params, *grads;    /* [n_params] */
	float *om, *ov;           /* [n_params] AdamW moments, paged in from the host for each update */
	double *nscratch, *dnorm; /* [LORA_CUDA_NORM_BLOCKS], [1] the gradient norm */
	float *dcoef;             /* [1] the clipping coefficient */
	size_t n_params;
	/* per batch shape */
	int B, T;
	float *mem;               /* device: every buffer below points into this */
	size_t cap;               /* floats in mem */
	int n_acts;
	struct acts *acts;
	float **xs;               /* [L][N, C] (checkpointing) */
	float *xL, *hf, *rstd_f;
	float *dx, *dh;
	float *tqkv, *to, *datt;
	float *dq, *dk, *dv;
	float *delta;             /* [B, H, T] attention backward's row sums */
	float *dact, *dgu;
	float *xa, *xd, *mask;    /* [N, max in] dropout(x), du·A, the mask */
	float *du;
	float *cosb, *sinb;
	float *cosl, *sinl;       /* [T, D/2] of inv_freq_local (Gemma 3's sliding layers) */
	float *ones;              /* [N] of 1.0 (bias rows through gemm) */
	float *logit;             /* [NC, V] */
	float *m, *zt;            /* [NC] */
	double *s, *loss;         /* [NC] */
	int32_t *tgt;             /* [N] */
	int nc;
	/* host scratch */
	float *hbuf;              /* [max(N·max in, attention tensors)] */
	size_t hcap;
	double *hloss;            /* [NC] */
	int32_t *htgt;            /* [N] */
};

/* ------------------------------------------------------------ errors */

struct ctx {
	struct lora_net *net;
	struct dev *d;
	const struct lora_batch *b;
	int N;
	int dropout;
	struct lora_err *err;
};

/* "K->rmsnorm_fwd(a, b)" -> "rmsnorm_fwd" */
static int kfail(struct lora_err *err, const struct lora_cuda_abi *K, const char *call, int st)
{
	const char *p = strstr(call, "->");
	int n;

	p = p ? p + 2 : call;
	n = (int)strcspn(p, "(");
	return lora_errf(err, "cuda: %.*s failed: %s", n, p, K->strerror ? K->strerror(st) : "error");
}

#define CK(call)                                                                    \
	do {                                                                        \
		int st_ = (call);                                                   \
		if (st_)                                                            \
			return kfail(k->err, k->d->K, #call, st_);                  \
	} while (0)

static int dalloc(const struct lora_cuda_abi *K, void **p, size_t bytes, struct lora_err *err)
{
	int st;

	*p = NULL;
	if (!bytes)
		return 0;
	if ((st = K->malloc(p, bytes)) != 0) {
		*p = NULL;
		return lora_errf(err, "cuda: out of device memory for %zu bytes: %s", bytes, K->strerror(st));
	}
	return 0;
}

static void dfree(const struct lora_cuda_abi *K, void *p)
{
	if (p)
		K->free(p);
}

/* Host -> device, n bytes into fresh device memory. */
static int dup_dev(const struct lora_cuda_abi *K, void **out, const void *src, size_t bytes,
		   struct lora_err *err)
{
	int st;

	if (dalloc(K, out, bytes, err) < 0)
		return -1;
	if (bytes && (st = K->memcpy(*out, src, bytes, NULL)) != 0)
		return lora_errf(err, "cuda: upload of %zu bytes failed: %s", bytes, K->strerror(st));
	return 0;
}

/* Device -> host, then wait for it. */
static int down(const struct ctx *k, void *dst, const void *src, size_t bytes)
{
	CK(k->d->K->memcpy(dst, src, bytes, NULL));
	CK(k->d->K->stream_sync(NULL));
	return 0;
}

static int up(const struct ctx *k, void *dst, const void *src, size_t bytes)
{
	CK(k->d->K->memcpy(dst, src, bytes, NULL));
	CK(k->d->K->stream_sync(NULL));   /* src is reused host scratch */
	return 0;
}

/* ------------------------------------------------------------ support */

int lora_cuda_supports(const struct lora_net *net, struct lora_err *err)
{
	const char *what = NULL;

	if (net->D > 128 || net->D % 2)
		what = "a head_dim over 128 or odd";
	if (what)
		return lora_errf(err, "the CUDA trainer does not support %s yet; train with --device cpu", what);
	return 0;
}

/* ------------------------------------------------------------ state */

static void free_frozen(const struct lora_cuda_abi *K, struct dfrozen *f)
{
	dfree(K, f->w);
	dfree(K, f->packed);
	dfree(K, f->qabsmax);
	dfree(K, f->absmax2);
	memset(f, 0, sizeof(*f));
}

static void cuda_release(struct lora_net *net)
{
	struct dev *d = net->be_state;

	if (!d)
		return;
	if (d->blocks)
		for (int l = 0; l < net->L; l++) {
			dfree(d->K, d->blocks[l].ln1);
			dfree(d->K, d->blocks[l].ln2);
			dfree(d->K, d->blocks[l].q_norm);
			dfree(d->K, d->blocks[l].k_norm);
			dfree(d->K, d->blocks[l].post_attn);
			dfree(d->K, d->blocks[l].post_ff);
			for (int t = 0; t < LORA_NTARGET; t++) {
				free_frozen(d->K, &d->blocks[l].lin[t]);
				dfree(d->K, d->blocks[l].bias[t]);
			}
		}
	free(d->blocks);
	free_frozen(d->K, &d->lm_head);
	dfree(d->K, d->norm_f);
	dfree(d->K, d->inv_freq);
	dfree(d->K, d->inv_freq_local);
	dfree(d->K, d->code8);
	dfree(d->K, d->wbuf);
	dfree(d->K, d->params);
	dfree(d->K, d->grads);
	dfree(d->K, d->om);
	dfree(d->K, d->ov);
	dfree(d->K, d->nscratch);
	dfree(d->K, d->dnorm);
	dfree(d->K, d->dcoef);
	dfree(d->K, d->mem);
	if (d->blas && d->K->blas_destroy)
		d->K->blas_destroy(d->blas);
	free(d->acts);
	free(d->xs);
	free(d->hbuf);
	free(d->hloss);
	free(d->htgt);
	free(d);
	net->be_state = NULL;
}

/* A frozen matrix to the device: NF4 bytes as they are, dense ones widened to fp32. */
static int upload_frozen(const struct lora_cuda_abi *K, const struct lora_frozen *w, struct dfrozen *f,
			 struct lora_err *err)
{
	f->rows = w->rows;
	f->cols = w->cols;
	if (!w->rows || !w->cols)
		return 0;
	if (w->fmt == LORA_WF_NF4) {
		f->nf4 = 1;
		f->offset = w->q.offset;
		return dup_dev(K, (void **)&f->packed, w->q.packed, (w->q.n + 1) / 2, err) < 0 ||
		       dup_dev(K, (void **)&f->qabsmax, w->q.qabsmax, w->q.nb, err) < 0 ||
		       dup_dev(K, (void **)&f->absmax2, w->q.absmax2, w->q.ng * sizeof(float), err) < 0 ? -1 : 0;
	}
	{
		const int step = (int)(WCHUNK_MAX / (unsigned)w->cols) > 0 ? (int)(WCHUNK_MAX / (unsigned)w->cols) : 1;
		const int nr0 = step < w->rows ? step : w->rows;
		float *h = malloc(sizeof(float) * (size_t)nr0 * w->cols);
		int st;

		if (!h)
			return lora_errf(err, "out of memory");
		if (dalloc(K, (void **)&f->w, sizeof(float) * (size_t)w->rows * w->cols, err) < 0) {
			free(h);
			return -1;
		}
		for (int r0 = 0; r0 < w->rows; r0 += step) {
			const int nr = w->rows - r0 < step ? w->rows - r0 : step;

			lora_frozen_rows(w, r0, nr, h);
			if ((st = K->memcpy(f->w + (size_t)r0 * w->cols, h, sizeof(float) * (size_t)nr * w->cols, NULL)) ||
			    (st = K->stream_sync(NULL))) {
				free(h);
				return lora_errf(err, "cuda: upload of a weight failed: %s", K->strerror(st));
			}
		}
		free(h);
	}
	return 0;
}

/* Everything frozen, once. */
static int load_weights(struct lora_net *net, struct dev *d, struct lora_err *err)
{
	const struct lora_cuda_abi *K = d->K;
	const size_t C = net->C;
	size_t wmax = 0, wcols = 0;

	if (!(d->blocks = calloc((size_t)net->L, sizeof(*d->blocks))))
		return lora_errf(err, "out of memory");
	for (int l = 0; l < net->L; l++) {
		const struct lora_block *bk = &net->blocks[l];
		struct dblock *db = &d->blocks[l];

		if (dup_dev(K, (void **)&db->ln1, bk->ln1, C * sizeof(float), err) < 0 ||
		    dup_dev(K, (void **)&db->ln2, bk->ln2, C * sizeof(float), err) < 0)
			return -1;
		if ((bk->q_norm && dup_dev(K, (void **)&db->q_norm, bk->q_norm, net->D * sizeof(float), err) < 0) ||
		    (bk->k_norm && dup_dev(K, (void **)&db->k_norm, bk->k_norm, net->D * sizeof(float), err) < 0) ||
		    (bk->post_attn && dup_dev(K, (void **)&db->post_attn, bk->post_attn, C * sizeof(float), err) < 0) ||
		    (bk->post_ff && dup_dev(K, (void **)&db->post_ff, bk->post_ff, C * sizeof(float), err) < 0))
			return -1;
		for (int t = 0; t < LORA_NTARGET; t++) {
			const struct lora_linear *lin = &bk->lin[t];

			if (upload_frozen(K, &lin->w, &db->lin[t], err) < 0)
				return -1;
			if (lin->bias && dup_dev(K, (void **)&db->bias[t], lin->bias, sizeof(float) * (size_t)lin->w.rows,
						 err) < 0)
				return -1;
			if (lin->w.fmt == LORA_WF_NF4 && (size_t)lin->w.rows * lin->w.cols > wmax)
				wmax = (size_t)lin->w.rows * lin->w.cols;
			if (lin->w.fmt == LORA_WF_NF4 && (size_t)lin->w.cols > wcols)
				wcols = (size_t)lin->w.cols;
		}
	}
	if (upload_frozen(K, &net->lm_head, &d->lm_head, err) < 0 ||
	    dup_dev(K, (void **)&d->norm_f, net->norm_f, C * sizeof(float), err) < 0 ||
	    dup_dev(K, (void **)&d->inv_freq, net->inv_freq, sizeof(float) * (size_t)(net->D / 2), err) < 0 ||
	    (net->inv_freq_local &&
	     dup_dev(K, (void **)&d->inv_freq_local, net->inv_freq_local, sizeof(float) * (size_t)(net->D / 2), err) < 0) ||
	    dup_dev(K, (void **)&d->code8, lora_code8, sizeof(lora_code8), err) < 0)
		return -1;
	if (d->lm_head.nf4)
		return lora_errf(err, "cuda: an NF4 LM head is not supported");
	/* the scratch holds a whole NF4 matrix, or as many of its rows as WCHUNK_MAX allows (one row
	 * at least) */
	d->wchunk = wmax < WCHUNK_MAX ? wmax : WCHUNK_MAX;
	if (d->wchunk < wcols)
		d->wchunk = wcols;
	if (dalloc(K, (void **)&d->wbuf, d->wchunk * sizeof(float), err) < 0)
		return -1;
	d->loaded = 1;
	return 0;
}

static inline float *take(float **p, size_t n)
{
	float *r = *p;
	*p += (n + 63) & ~(size_t)63;   /* 256-byte alignment */
	return r;
}

/* The rank of target t in layer l (0: no LoRA there); l < 0: the largest over the layers
 * (the one set of acts of checkpointing serves every layer). */
static size_t rank_of(const struct lora_net *net, int l, enum lora_target t)
{
	int r = 0;
	for (int i = l < 0 ? 0 : l; i < (l < 0 ? net->L : l + 1); i++)
		if (net->blocks[i].lin[t].has_lora && net->blocks[i].lin[t].lora.r > r)
			r = net->blocks[i].lin[t].lora.r;
	return (size_t)r;
}

/* Lay out (or only measure, when base is NULL) every device buffer for B x T, as model_cpu.c's layout. */
static size_t layout(struct dev *c, const struct lora_net *net, int B, int T, float *base)
{
	const size_t N = (size_t)B * T, C = net->C, F = net->F, HD = (size_t)net->H * net->D;
	const size_t KVD = (size_t)net->KV * net->D, mx = C > F ? (C > HD ? C : HD) : (F > HD ? F : HD);
	const size_t R = lora_net_max_rank(net);
	float *p = base ? base : (float *)256;
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
		a->xm = take(&p, N * C);
		a->rstd2 = take(&p, N);
		a->h2 = take(&p, N * C);
		a->gu = take(&p, N * 2 * F);
		a->act = take(&p, N * F);
		a->o_raw = take(&p, net->gemma ? N * C : 0);
		a->rstd3 = take(&p, net->gemma ? N : 0);
		a->d_raw = take(&p, net->gemma ? N * C : 0);
		a->rstd4 = take(&p, net->gemma ? N : 0);
		for (int t = 0; t < LORA_NTARGET; t++)
			a->u[t] = take(&p, N * rank_of(net, c->n_acts == 1 ? -1 : l, t));
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
	c->delta = take(&p, N * net->H);
	c->dact = take(&p, N * F);
	c->dgu = take(&p, N * 2 * F);
	c->xa = take(&p, N * mx);
	c->xd = take(&p, N * mx);
	c->mask = take(&p, N * mx);
	c->du = take(&p, N * R);
	c->cosb = take(&p, (size_t)T * (net->D / 2));
	c->sinb = take(&p, (size_t)T * (net->D / 2));
	c->cosl = take(&p, net->inv_freq_local ? (size_t)T * (net->D / 2) : 0);
	c->sinl = take(&p, net->inv_freq_local ? (size_t)T * (net->D / 2) : 0);
	c->ones = take(&p, N);
	c->nc = net->opts.logit_tokens > 0 ? net->opts.logit_tokens : (int)(LOGIT_CHUNK / (size_t)net->V);
	if (c->nc < 1)
		c->nc = 1;
	if ((size_t)c->nc > N)
		c->nc = (int)N;
	c->logit = take(&p, (size_t)c->nc * net->V);
	c->m = take(&p, (size_t)c->nc);
	c->zt = take(&p, (size_t)c->nc);
	c->s = (double *)take(&p, 2 * (size_t)c->nc);
	c->loss = (double *)take(&p, 2 * (size_t)c->nc);
	c->tgt = (int32_t *)take(&p, N);
	return (size_t)(p - start);
}

/* Device buffers for a B x T batch (the weights uploaded on the first call); any shape may
 * follow any other, memory grows when a batch needs more. */
static struct dev *prepare(struct lora_net *net, int B, int T, struct lora_err *err)
{
	struct dev *d = net->be_state;
	const struct lora_cuda_abi *K = api;
	size_t need, hneed;
	const size_t N = (size_t)B * T;

	if (!K) {
		lora_errf(err, "cuda: the backend has no plugin table (lora_cuda_attach)");
		return NULL;
	}
	if (!d) {
		int st;

		if (!(d = calloc(1, sizeof(*d)))) {
			lora_errf(err, "out of memory");
			return NULL;
		}
		net->be_state = d;
		d->K = K;
		if ((st = K->blas_create(&d->blas, NULL)) != 0) {
			d->blas = NULL;
			lora_errf(err, "cuda: cannot make a cuBLAS handle: %s", K->strerror(st));
			goto fail;
		}
		d->n_acts = net->opts.checkpoint ? 1 : net->L;
		if (!(d->acts = calloc((size_t)d->n_acts, sizeof(*d->acts))) ||
		    (net->opts.checkpoint && !(d->xs = calloc((size_t)net->L, sizeof(*d->xs))))) {
			lora_errf(err, "out of memory");
			goto fail;
		}
		if (load_weights(net, d, err) < 0)
			goto fail;
	}
	if (d->n_params != net->n_params) {
		void **bufs[] = {(void **)&d->params, (void **)&d->grads, (void **)&d->om, (void **)&d->ov};

		for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++) {
			dfree(K, *bufs[i]);
			*bufs[i] = NULL;
		}
		d->n_params = 0;
		for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
			if (dalloc(K, bufs[i], net->n_params * sizeof(float), err) < 0)
				goto fail;
		d->n_params = net->n_params;
	}
	if (!d->nscratch && (dalloc(K, (void **)&d->nscratch, LORA_CUDA_NORM_BLOCKS * sizeof(double), err) < 0 ||
			     dalloc(K, (void **)&d->dnorm, sizeof(double), err) < 0 ||
			     dalloc(K, (void **)&d->dcoef, sizeof(float), err) < 0))
		goto fail;
	if (d->B == B && d->T == T)
		return d;
	need = layout(d, net, B, T, NULL);
	if (need > ((size_t)1 << 40) / sizeof(float)) {
		lora_errf(err, "cuda: activations of a %d x %d batch are too large", B, T);
		goto fail;
	}
	if (need > d->cap) {
		dfree(K, d->mem);
		d->mem = NULL;
		d->cap = 0;
		d->B = d->T = 0;
		if (dalloc(K, (void **)&d->mem, need * sizeof(float), err) < 0)
			goto fail;
		d->cap = need;
	}
	layout(d, net, B, T, d->mem);
	/* host scratch: the embedding rows and the dropout masks */
	{
		const size_t C = net->C, F = net->F, HD = (size_t)net->H * net->D;
		const size_t mx = C > F ? (C > HD ? C : HD) : (F > HD ? F : HD);

		hneed = N * mx;
		if (hneed > d->hcap) {
			free(d->hbuf);
			free(d->htgt);
			d->hcap = 0;
			d->htgt = NULL;
			if (!(d->hbuf = malloc(hneed * sizeof(float))) || !(d->htgt = malloc(N * sizeof(int32_t)))) {
				lora_errf(err, "out of memory");
				goto fail;
			}
			d->hcap = hneed;
		}
		free(d->hloss);
		if (!(d->hloss = malloc((size_t)d->nc * sizeof(double)))) {
			lora_errf(err, "out of memory");
			goto fail;
		}
	}
	{
		/* ones [N] for the bias rows */
		float *h = d->hbuf;
		struct ctx k = {net, d, NULL, (int)N, 0, err};

		for (size_t i = 0; i < N; i++)
			h[i] = 1.0f;
		if (up(&k, d->ones, h, N * sizeof(float)) < 0)
			goto fail;
	}
	d->B = B;
	d->T = T;
	return d;
fail:
	cuda_release(net);
	return NULL;
}

/* ------------------------------------------------------------ frozen products */

/* y[:, 0..rows) (row stride ldy) = x [N, cols] · Wᵀ */
static int frozen_xwt(const struct ctx *k, const struct dfrozen *w, const float *x, float *y, int ldy)
{
	struct dev *d = k->d;
	const struct lora_cuda_abi *K = d->K;
	int step;

	if (!w->nf4) {
		CK(K->gemm(d->blas, 0, 1, k->N, w->rows, w->cols, 1.0f, x, 0, w->cols, w->w, 0, w->cols, 0.0f, y,
			   ldy));
		return 0;
	}
	step = (int)(d->wchunk / (size_t)w->cols);
	for (int r0 = 0; r0 < w->rows; r0 += step) {
		const int nr = w->rows - r0 < step ? w->rows - r0 : step;

		CK(K->nf4_dequant(w->packed, w->qabsmax, w->absmax2, w->offset, d->code8, (uint64_t)r0 * w->cols,
				  (uint64_t)nr * w->cols, d->wbuf, 0, NULL));
		CK(K->gemm(d->blas, 0, 1, k->N, nr, w->cols, 1.0f, x, 0, w->cols, d->wbuf, 0, w->cols, 0.0f, y + r0,
			   ldy));
	}
	return 0;
}

/* dx [N, cols] = beta·dx + dy [N, rows] (row stride lddy) · W */
static int frozen_dyw(const struct ctx *k, const struct dfrozen *w, const float *dy, int lddy, float *dx,
		      float beta)
{
	struct dev *d = k->d;
	const struct lora_cuda_abi *K = d->K;
	int step;

	if (!w->nf4) {
		CK(K->gemm(d->blas, 0, 0, k->N, w->cols, w->rows, 1.0f, dy, 0, lddy, w->w, 0, w->cols, beta, dx,
			   w->cols));
		return 0;
	}
	step = (int)(d->wchunk / (size_t)w->cols);
	for (int r0 = 0; r0 < w->rows; r0 += step) {
		const int nr = w->rows - r0 < step ? w->rows - r0 : step;

		CK(K->nf4_dequant(w->packed, w->qabsmax, w->absmax2, w->offset, d->code8, (uint64_t)r0 * w->cols,
				  (uint64_t)nr * w->cols, d->wbuf, 0, NULL));
		CK(K->gemm(d->blas, 0, 0, k->N, w->cols, nr, 1.0f, dy + r0, 0, lddy, d->wbuf, 0, w->cols,
			   r0 ? 1.0f : beta, dx, w->cols));
	}
	return 0;
}

/* ------------------------------------------------------------ linear + LoRA */

/* The LoRA path's input: x itself, or x·mask in d->xa (the mask, made on the host, in d->mask). */
static int lora_input(const struct ctx *k, int l, enum lora_target t, const float *x, int in, const float **xa)
{
	struct dev *d = k->d;
	const struct lora_net *net = k->net;
	const size_t n = (size_t)k->N * in;

	*xa = x;
	if (!k->dropout)
		return 0;
	lora_dropout_mask(d->hbuf, 0, n, net->lcfg.dropout, net->lcfg.seed, net->step, l, t);
	if (up(k, d->mask, d->hbuf, n * sizeof(float)) < 0)
		return -1;
	CK(d->K->memset(d->xa, 0, n * sizeof(float), NULL));
	CK(d->K->addmul(x, d->mask, d->xa, n, NULL));   /* 0 + x·mask: x·mask exactly */
	*xa = d->xa;
	return 0;
}

/*
 * Linear layers first..first+n-1 of layer l on the same input x [N, in], outputs side by side
 * in y [N, ldy]: y[:, off_m ..] = x·W_mᵀ + bias_m + scale_m·(dropout(x)·A_mᵀ)·B_mᵀ.
 */
static int lin_fwd(const struct ctx *k, int l, int first, int n, const float *x, float *y, int ldy,
		   struct acts *a)
{
	const struct lora_block *bk = &k->net->blocks[l];
	struct dev *d = k->d;
	const struct dblock *db = &d->blocks[l];
	int off = 0;

	for (int m = 0; m < n; m++) {
		const enum lora_target t = (enum lora_target)(first + m);
		const struct lora_linear *lin = &bk->lin[t];
		const int in = lin->w.cols, out = lin->w.rows;
		float *ym = y + off;

		if (!out)   /* Phi-3: k, v, up live in the fused q / gate linear */
			continue;
		if (frozen_xwt(k, &db->lin[t], x, ym, ldy) < 0)
			return -1;
		if (db->bias[t])   /* y += ones [N, 1] · bias [1, out]: y + bias exactly */
			CK(d->K->gemm(d->blas, 0, 0, k->N, out, 1, 1.0f, d->ones, 0, 1, db->bias[t], 0, out, 1.0f, ym,
				      ldy));
		if (lin->has_lora) {
			const struct lora_mod *lm = &lin->lora;
			const float *xa;

			if (lora_input(k, l, t, x, in, &xa) < 0)
				return -1;
			CK(d->K->lora_fwd(d->blas, xa, k->N, in, out, lm->r, d->params + lm->a_off,
					  d->params + lm->b_off, lm->scale, a->u[t], ym, ldy, NULL));
		}
		off += out;
	}
	return 0;
}

/*
 * Backward of lin_fwd given dy [N, lddy]: LoRA gradients into d->grads, and when dx is not
 * NULL, dx = beta·dx + Σ dy_m·W_m + Σ (du_m·A_m)·mask_m.
 */
static int lin_bwd(const struct ctx *k, int l, int first, int n, const float *x, const float *dy, int lddy,
		   float *dx, float beta, const struct acts *a)
{
	const struct lora_block *bk = &k->net->blocks[l];
	struct dev *d = k->d;
	const struct dblock *db = &d->blocks[l];
	int off = 0;

	for (int m = 0; dx && m < n; m++) {
		const enum lora_target t = (enum lora_target)(first + m);

		if (!bk->lin[t].w.rows)
			continue;
		if (frozen_dyw(k, &db->lin[t], dy + off, lddy, dx, off ? 1.0f : beta) < 0)
			return -1;
		off += bk->lin[t].w.rows;
	}
	off = 0;
	for (int m = 0; m < n; m++) {
		const enum lora_target t = (enum lora_target)(first + m);
		const struct lora_linear *lin = &bk->lin[t];
		const struct lora_mod *lm = &lin->lora;
		const int in = lin->w.cols, out = lin->w.rows;
		const float *xa;

		if (lin->has_lora) {
			if (lora_input(k, l, t, x, in, &xa) < 0)
				return -1;
			CK(d->K->lora_bwd(d->blas, xa, dy + off, lddy, a->u[t], k->N, in, out, lm->r, d->params + lm->a_off,
					  d->params + lm->b_off, lm->scale, d->grads + lm->a_off, d->grads + lm->b_off,
					  d->du, dx, k->dropout ? d->mask : NULL, d->xd, NULL));
		}
		off += out;
	}
	return 0;
}

/* ------------------------------------------------------------ a decoder layer */

static int layer_fwd(const struct ctx *k, int l, struct acts *a, float *out)
{
	const struct lora_net *net = k->net;
	const struct lora_block *bk = &net->blocks[l];
	struct dev *c = k->d;
	const struct lora_cuda_abi *K = c->K;
	const struct dblock *db = &c->blocks[l];
	const int N = k->N, B = k->b->B, T = k->b->T, C = net->C, F = net->F;
	const int HD = net->H * net->D, KVD = net->KV * net->D, W3 = HD + 2 * KVD;
	const float *cs = bk->local_rope ? c->cosl : c->cosb, *sn = bk->local_rope ? c->sinl : c->sinb;

	CK(K->rmsnorm_fwd(a->x, db->ln1, N, C, net->eps, a->h1, a->rstd1, NULL));
	if (lin_fwd(k, l, LORA_T_Q, 3, a->h1, c->tqkv, W3, a) < 0)
		return -1;
	if (db->q_norm)
		CK(K->headnorm_fwd(c->tqkv, W3, N, net->H, net->KV, net->D, db->q_norm, db->k_norm, net->eps, a->qkr,
				   a->qkrstd, NULL));
	CK(K->rope_fwd(c->tqkv, W3, a->q, B, T, net->H, net->D, cs, sn, 1, NULL));
	CK(K->rope_fwd(c->tqkv + HD, W3, a->k, B, T, net->KV, net->D, cs, sn, 1, NULL));
	CK(K->rope_fwd(c->tqkv + HD + KVD, W3, a->v, B, T, net->KV, net->D, cs, sn, 0, NULL));
	if (net->attn_softcap > 0)
		CK(K->attn_fwd_softcap(a->q, a->k, a->v, B, net->H, net->KV, T, net->D, net->attn_scale, bk->window,
				       net->attn_softcap, a->att, a->lse, NULL));
	else
		CK(K->attn_fwd(a->q, a->k, a->v, B, net->H, net->KV, T, net->D, net->attn_scale, bk->window, a->att,
			       a->lse, NULL));
	if (lin_fwd(k, l, LORA_T_O, 1, a->att, db->post_attn ? a->o_raw : c->to, C, a) < 0)
		return -1;
	if (db->post_attn)
		CK(K->rmsnorm_fwd(a->o_raw, db->post_attn, N, C, net->eps, c->to, a->rstd3, NULL));
	CK(K->add(a->x, c->to, a->xm, (size_t)N * C, NULL));
	CK(K->rmsnorm_fwd(a->xm, db->ln2, N, C, net->eps, a->h2, a->rstd2, NULL));
	if (lin_fwd(k, l, LORA_T_GATE, 2, a->h2, a->gu, 2 * F, a) < 0)
		return -1;
	if (net->gelu)
		CK(K->geglu_fwd(a->gu, N, F, a->act, NULL));
	else
		CK(K->swiglu_fwd(a->gu, N, F, a->act, NULL));
	if (lin_fwd(k, l, LORA_T_DOWN, 1, a->act, db->post_ff ? a->d_raw : c->to, C, a) < 0)
		return -1;
	if (db->post_ff)
		CK(K->rmsnorm_fwd(a->d_raw, db->post_ff, N, C, net->eps, c->to, a->rstd4, NULL));
	CK(K->add(a->xm, c->to, out, (size_t)N * C, NULL));
	return 0;
}

/* c->dx holds d(layer output); leaves d(layer input) there when need_dx. */
static int layer_bwd(const struct ctx *k, int l, struct acts *a, int need_dx)
{
	const struct lora_net *net = k->net;
	const struct lora_block *bk = &net->blocks[l];
	struct dev *c = k->d;
	const struct lora_cuda_abi *K = c->K;
	const struct dblock *db = &c->blocks[l];
	const int N = k->N, B = k->b->B, T = k->b->T, C = net->C, F = net->F;
	const int HD = net->H * net->D, KVD = net->KV * net->D, W3 = HD + 2 * KVD;

	const float *cs = bk->local_rope ? c->cosl : c->cosb, *sn = bk->local_rope ? c->sinl : c->sinb;

	/* MLP: out = xm + down(silu(gate(h2))·up(h2)) */
	/* Gemma: out = xm + post_ff(down(...)), xm = x + post_attn(o(...)): c->to takes d of each
	 * linear's output through its norm (c->dx keeps the residual's) */
	if (db->post_ff)
		CK(K->rmsnorm_bwd(a->d_raw, db->post_ff, a->rstd4, c->dx, N, C, c->to, 0, NULL));
	if (lin_bwd(k, l, LORA_T_DOWN, 1, a->act, db->post_ff ? c->to : c->dx, C, c->dact, 0.0f, a) < 0)
		return -1;
	if (net->gelu)
		CK(K->geglu_bwd(a->gu, c->dact, N, F, c->dgu, NULL));
	else
		CK(K->swiglu_bwd(a->gu, c->dact, N, F, c->dgu, NULL));
	if (lin_bwd(k, l, LORA_T_GATE, 2, a->h2, c->dgu, 2 * F, c->dh, 0.0f, a) < 0)
		return -1;
	CK(K->rmsnorm_bwd(a->xm, db->ln2, a->rstd2, c->dh, N, C, c->dx, 1, NULL));   /* dx is now d xm */

	/* attention: xm = x + o(attn(rope(q(h1)), rope(k(h1)), v(h1))) */
	if (db->post_attn)
		CK(K->rmsnorm_bwd(a->o_raw, db->post_attn, a->rstd3, c->dx, N, C, c->to, 0, NULL));
	if (lin_bwd(k, l, LORA_T_O, 1, a->att, db->post_attn ? c->to : c->dx, C, c->datt, 0.0f, a) < 0)
		return -1;
	if (net->attn_softcap > 0)
		CK(K->attn_bwd_softcap(a->q, a->k, a->v, a->lse, c->datt, B, net->H, net->KV, T, net->D, net->attn_scale,
				       bk->window, net->attn_softcap, c->delta, c->dq, c->dk, c->dv, NULL));
	else
		CK(K->attn_bwd(a->q, a->k, a->v, a->lse, c->datt, B, net->H, net->KV, T, net->D, net->attn_scale,
			       bk->window, c->delta, c->dq, c->dk, c->dv, NULL));
	CK(K->rope_bwd(c->dq, c->tqkv, W3, B, T, net->H, net->D, cs, sn, 1, NULL));
	CK(K->rope_bwd(c->dk, c->tqkv + HD, W3, B, T, net->KV, net->D, cs, sn, 1, NULL));
	CK(K->rope_bwd(c->dv, c->tqkv + HD + KVD, W3, B, T, net->KV, net->D, cs, sn, 0, NULL));
	if (db->q_norm)
		CK(K->headnorm_bwd(c->tqkv, W3, N, net->H, net->KV, net->D, db->q_norm, db->k_norm, a->qkr, a->qkrstd,
				   NULL));
	if (lin_bwd(k, l, LORA_T_Q, 3, a->h1, c->tqkv, W3, need_dx ? c->dh : NULL, 0.0f, a) < 0)
		return -1;
	if (need_dx)
		CK(K->rmsnorm_bwd(a->x, db->ln1, a->rstd1, c->dh, N, C, c->dx, 1, NULL));
	return 0;
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
static int loss_head(const struct ctx *k, int backward, double scale, float *logits_out,
		     struct lora_fb_result *res)
{
	const struct lora_net *net = k->net;
	struct dev *c = k->d;
	const struct lora_cuda_abi *K = c->K;
	const int V = net->V, C = net->C;

	for (int n0 = 0; n0 < k->N; n0 += c->nc) {
		const int nc = k->N - n0 < c->nc ? k->N - n0 : c->nc;

		CK(K->gemm(c->blas, 0, 1, nc, V, C, 1.0f, c->hf + (size_t)n0 * C, 0, C, c->lm_head.w, 0, C, 0.0f,
			   c->logit, V));
		if (net->final_softcap > 0)
			CK(K->softcap(c->logit, V, nc, V, net->final_softcap, NULL));
		if (logits_out && down(k, logits_out + (size_t)n0 * V, c->logit, sizeof(float) * (size_t)nc * V) < 0)
			return -1;
		CK(K->xent_stats(c->logit, V, nc, 0, V, c->tgt + n0, c->m, c->s, c->zt, 1, NULL));
		CK(K->xent_loss(c->m, c->s, c->zt, c->tgt + n0, nc, c->loss, NULL));
		if (down(k, c->hloss, c->loss, sizeof(double) * (size_t)nc) < 0)
			return -1;
		for (int i = 0; i < nc; i++)   /* summed in token order */
			if (c->hloss[i] >= 0.0)
				res->loss_sum += c->hloss[i];
		if (backward) {
			if (net->final_softcap > 0)   /* the capped logits are still in c->logit */
				CK(K->xent_grad_softcap(c->logit, V, nc, 0, V, c->tgt + n0, c->m, c->s, (float)scale,
							net->final_softcap, NULL));
			else
				CK(K->xent_grad(c->logit, V, nc, 0, V, c->tgt + n0, c->m, c->s, (float)scale, NULL));
			CK(K->gemm(c->blas, 0, 0, nc, C, V, 1.0f, c->logit, 0, V, c->lm_head.w, 0, C, 0.0f,
				   c->dh + (size_t)n0 * C, C));
		}
	}
	return 0;
}

/* ------------------------------------------------------------ the pass */

/* Padding positions (t >= len) embed token 0, as on the CPU (their outputs are never used). */
static int embed(const struct ctx *k, float *x)
{
	const struct lora_batch *b = k->b;
	const int C = k->net->C;
	float *h = k->d->hbuf;
	const int rows = (int)(k->d->hcap / (size_t)C);

	for (int n0 = 0; n0 < k->N; n0 += rows) {
		const int nr = k->N - n0 < rows ? k->N - n0 : rows;

		for (int i = 0; i < nr; i++) {
			const int n = n0 + i, r = n / b->T, t = n % b->T;
			const int id = t < (b->len ? b->len[r] : b->T) ? b->ids[n] : 0;

			lora_frozen_rows(&k->net->embed, id, 1, h + (size_t)i * C);
			if (k->net->embed_scale != 1.0f)   /* Gemma: times sqrt(C), the CPU's fp32 product */
				for (int j = 0; j < C; j++)
					h[(size_t)i * C + j] *= k->net->embed_scale;
		}
		if (up(k, x + (size_t)n0 * C, h, sizeof(float) * (size_t)nr * C) < 0)
			return -1;
	}
	return 0;
}

static int cuda_run(struct lora_net *net, const struct lora_batch *b, int backward, double grad_scale,
		    float *logits, struct lora_fb_result *res, struct lora_err *err)
{
	struct dev *c = prepare(net, b->B, b->T, err);
	struct ctx kc;
	const struct ctx *k = &kc;
	const int L = net->L, C = net->C;
	const int ck = net->opts.checkpoint;
	double scale;

	if (!c)
		return -1;
	kc.net = net;
	kc.d = c;
	kc.b = b;
	kc.N = b->B * b->T;
	kc.dropout = backward && net->has_lora && net->lcfg.dropout > 0.0;
	kc.err = err;
	memset(res, 0, sizeof(*res));
	for (int n = 0; n < k->N; n++) {
		c->htgt[n] = target_of(b, n);
		res->tokens += c->htgt[n] >= 0;
	}
	scale = grad_scale > 0 ? grad_scale : res->tokens ? 1.0 / (double)res->tokens : 0.0;
	if (up(k, c->tgt, c->htgt, sizeof(int32_t) * (size_t)k->N) < 0)
		return -1;
	if (net->n_params && (up(k, c->params, net->params, net->n_params * sizeof(float)) < 0 ||
			      (backward && up(k, c->grads, net->grads, net->n_params * sizeof(float)) < 0)))
		return -1;
	CK(c->K->rope_table(c->inv_freq, b->T, net->D / 2, c->cosb, c->sinb, NULL));
	if (c->inv_freq_local)
		CK(c->K->rope_table(c->inv_freq_local, b->T, net->D / 2, c->cosl, c->sinl, NULL));

	/* embedding -> layers -> final norm -> loss */
	if (embed(k, ck ? c->xs[0] : c->acts[0].x) < 0)
		return -1;
	for (int l = 0; l < L; l++) {
		struct acts *a = &c->acts[ck ? 0 : l];
		float *out = l + 1 < L ? (ck ? c->xs[l + 1] : c->acts[l + 1].x) : c->xL;

		if (ck)
			a->x = c->xs[l];
		if (layer_fwd(k, l, a, out) < 0)
			return -1;
	}
	CK(c->K->rmsnorm_fwd(c->xL, c->norm_f, k->N, C, net->eps, c->hf, c->rstd_f, NULL));
	if (loss_head(k, backward, scale, logits, res) < 0)
		return -1;
	res->loss = res->tokens ? res->loss_sum / (double)res->tokens : 0.0;
	if (!backward)
		return 0;

	CK(c->K->rmsnorm_bwd(c->xL, c->norm_f, c->rstd_f, c->dh, k->N, C, c->dx, 0, NULL));
	for (int l = L - 1; l >= 0; l--) {
		struct acts *a = &c->acts[ck ? 0 : l];

		if (ck) {
			/* recompute the layer from its saved input; the output is not needed */
			a->x = c->xs[l];
			if (layer_fwd(k, l, a, c->dh) < 0)
				return -1;
		}
		if (layer_bwd(k, l, a, l > 0) < 0)
			return -1;
	}
	if (net->n_params && down(k, net->grads, c->grads, net->n_params * sizeof(float)) < 0)
		return -1;
	return 0;
}

/*
 * Clipping and AdamW on the device (grad_norm, adamw): the gradients are
 * there already (the last run left them, equal to net->grads); the moments
 * come up from opt's host arrays and go back with the parameters, so a
 * checkpoint, --resume and the CPU backend see the state they always do.
 */
static int cuda_optim_step(struct lora_net *net, struct lora_adamw *opt, const struct lora_optim_cfg *cfg,
			   double lr, double *norm, struct lora_err *err)
{
	struct dev *c = net->be_state;
	struct ctx kc = {net, c, NULL, 0, 0, err};
	const struct ctx *k = &kc;
	const size_t n = net->n_params, bytes = n * sizeof(float);
	struct lora_cuda_adamw ka;

	*norm = 0.0;
	if (!n)
		return 0;
	if (!c || c->n_params != n || opt->n != n)
		return lora_errf(err, "cuda: the optimizer step needs a backward pass of these adapters first");
	CK(c->K->grad_norm(c->grads, n, (float)cfg->max_grad_norm, c->nscratch, c->dnorm, c->dcoef, NULL));
	if (down(k, norm, c->dnorm, sizeof(double)) < 0)
		return -1;
	if (!isfinite(*norm))
		return 0;
	lora_adamw_consts(cfg, opt->step + 1, lr, &ka);
	if (up(k, c->om, opt->m, bytes) < 0 || up(k, c->ov, opt->v, bytes) < 0)
		return -1;
	CK(c->K->adamw(c->params, c->grads, c->om, c->ov, n, ka, c->dcoef, NULL));
	if (down(k, net->params, c->params, bytes) < 0 || down(k, opt->m, c->om, bytes) < 0 ||
	    down(k, opt->v, c->ov, bytes) < 0)
		return -1;
	opt->step++;
	return 0;
}

int lora_cuda_attach(struct lora_net *net, const struct lora_cuda_abi *K, struct lora_err *err)
{
	if (!K)
		return lora_errf(err, "cuda: no plugin table");
	if (lora_cuda_supports(net, err) < 0)
		return -1;
	if (api && api != K)
		return lora_errf(err, "cuda: another plugin table is already in use");
	api = K;
	if (net->be && net->be->release)
		net->be->release(net);
	net->be = &lora_backend_cuda;
	return 0;
}

const struct lora_backend lora_backend_cuda = {
	.name = "cuda",
	.run = cuda_run,
	.release = cuda_release,
	.optim_step = cuda_optim_step,
};
