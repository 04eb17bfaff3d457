/*
 * plan.c - the memory model behind `lora plan`.
 *
 * The CPU figures follow train/model_cpu.c buffer by buffer (its layout()
 * function); when that file changes, this one must change with it, and
 * tests/unit/test_plan.c fails until it does.  The CUDA figures are the
 * same accounting with bf16 activations and no T x T attention scores.
 */
#include "train/plan.h"

#include <stdio.h>
#include <string.h>

#include "train/lora_cfg.h"
#include "train/nf4.h"

const char *const lora_plan_method_names[LORA_PLAN_NMETHOD] = {"full", "lora", "qlora"};

/* model_cpu.c's constants */
#define CPU_WCHUNK ((uint64_t)1 << 20)       /* floats of a dequantized weight chunk */
#define CPU_LOGIT_CHUNK ((uint64_t)64 << 20) /* floats of logits held at once */
#define CPU_QB 64                            /* attention queries per block */
#define PAGE 4096u
/* A CUDA context with cuBLAS loaded: what PyTorch QLoRA runs show before the first tensor. */
#define CUDA_RUNTIME ((uint64_t)512 << 20)
/* CPU: library code paged in on first use (OpenBLAS kernels) and OpenBLAS's
 * packing buffers: 2-3 MiB with one thread in tests/unit/test_plan.c; plus the
 * program itself (LORA_PLAN_CPU_PROGRAM). */
#define CPU_RUNTIME (((uint64_t)3 << 20) + LORA_PLAN_CPU_PROGRAM)

void lora_plan_opts_defaults(struct lora_plan_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->device = LORA_PLAN_CUDA;
	o->rank = 16;
	o->targets = LORA_TARGETS_ALL;
	o->batch = 4;
	o->seq_len = 0;
	o->grad_accum = 4;
	o->checkpoint = 0;
	o->paged = 1;
	o->dropout = 0.05;
	o->quant_nf4 = 1;
	o->threads = 1;
}

/* ------------------------------------------------------------ shapes */

static const char *const archs[][2] = {
	{"LlamaForCausalLM", "llama"},
	{"MistralForCausalLM", "mistral"},
	{"Qwen2ForCausalLM", "qwen2"},
	{"Qwen3ForCausalLM", "qwen3"},
	{"Phi3ForCausalLM", "phi3"},
	{"Gemma2ForCausalLM", "gemma2"},
	{"Gemma3ForCausalLM", "gemma3_text"},
};

/* out x in of decoder linear t */
static void lin_dims(const struct lora_plan_shape *s, int t, uint64_t *out, uint64_t *in)
{
	const uint64_t C = (uint64_t)s->C, F = (uint64_t)s->F, HD = (uint64_t)s->H * s->D,
		       KVD = (uint64_t)s->KV * s->D;

	if (s->fused && (t == LORA_T_K || t == LORA_T_V || t == LORA_T_UP)) {
		*out = 0;   /* part of qkv_proj / gate_up_proj */
		*in = C;
		return;
	}
	switch (t) {
	case LORA_T_Q: *out = s->fused ? HD + 2 * KVD : HD; *in = C; break;
	case LORA_T_O: *out = C; *in = HD; break;
	case LORA_T_GATE: case LORA_T_UP: *out = s->fused ? 2 * F : F; *in = C; break;
	case LORA_T_DOWN: *out = C; *in = F; break;
	default: *out = KVD; *in = C; break;   /* k, v */
	}
}

/* Does target t carry LoRA under o (Phi-3: any of q,k,v on qkv_proj, gate/up on gate_up_proj)? */
static int lora_on(const struct lora_plan_shape *s, const struct lora_plan_opts *o, int t)
{
	const unsigned qkv = (1u << LORA_T_Q) | (1u << LORA_T_K) | (1u << LORA_T_V);
	const unsigned gu = (1u << LORA_T_GATE) | (1u << LORA_T_UP);

	if (!s->fused)
		return (o->targets >> t) & 1;
	if (t == LORA_T_K || t == LORA_T_V || t == LORA_T_UP)
		return 0;
	if (t == LORA_T_Q)
		return (o->targets & qkv) != 0;
	if (t == LORA_T_GATE)
		return (o->targets & gu) != 0;
	return (o->targets >> t) & 1;
}

static int finish_shape(struct lora_plan_shape *s, struct lora_err *err)
{
	uint64_t per_layer = 0, bias = 0;

	if (s->C <= 0 || s->F <= 0 || s->L <= 0 || s->H <= 0 || s->KV <= 0 || s->V <= 0 || s->D <= 0 ||
	    s->C > (1 << 20) || s->F > (1 << 22) || s->L > 4096 || s->H > 4096 || s->D > 4096 ||
	    s->V > (1 << 24))
		return lora_errf(err, "the config lacks sizes or has impossible ones");
	if (s->H % s->KV)
		return lora_errf(err, "%d attention heads do not divide into %d key/value heads", s->H, s->KV);
	for (int t = 0; t < LORA_NTARGET; t++) {
		uint64_t out, in;
		int has_bias = t <= LORA_T_V ? s->qkv_bias : t == LORA_T_O ? s->o_bias : s->mlp_bias;

		lin_dims(s, t, &out, &in);
		per_layer += out * in;
		bias += has_bias ? out : 0;
	}
	s->n_linear = per_layer * (uint64_t)s->L;
	s->n_params = s->n_linear + (uint64_t)s->L * (bias + 2 * (uint64_t)s->C) + (uint64_t)s->C +
		      (s->qk_norm ? (uint64_t)s->L * 2 * (uint64_t)s->D : 0) +
		      (s->gemma ? (uint64_t)s->L * 2 * (uint64_t)s->C : 0) +
		      (uint64_t)s->V * s->C * (s->tied ? 1 : 2);
	return 0;
}

int lora_plan_shape_from_config(const struct lora_model_config *c, struct lora_plan_shape *s,
				struct lora_err *err)
{
	size_t i;

	memset(s, 0, sizeof(*s));
	for (i = 0; i < sizeof(archs) / sizeof(archs[0]); i++)
		if (c->architecture[0] ? !strcmp(c->architecture, archs[i][0])
				       : !strcmp(c->model_type, archs[i][1]))
			break;
	if (i == sizeof(archs) / sizeof(archs[0]))
		return lora_errf(err, "architecture '%s' is not supported (Llama, Mistral, Qwen2, Qwen3, Phi-3, Gemma 2, Gemma 3)",
				 c->architecture[0] ? c->architecture : c->model_type);
	snprintf(s->architecture, sizeof(s->architecture), "%s", archs[i][0]);
	s->C = c->hidden_size;
	s->F = c->intermediate_size;
	s->L = c->num_hidden_layers;
	s->H = c->num_attention_heads;
	s->KV = c->num_key_value_heads;
	s->D = c->head_dim;
	s->V = c->vocab_size;
	s->max_pos = c->max_position_embeddings;
	s->tied = c->tie_word_embeddings;
	s->qkv_bias = c->attention_bias || !strcmp(archs[i][1], "qwen2");
	s->o_bias = c->attention_bias;
	s->mlp_bias = c->mlp_bias;
	s->qk_norm = !strcmp(archs[i][1], "qwen3") || !strcmp(archs[i][1], "gemma3_text");
	s->fused = !strcmp(archs[i][1], "phi3");
	s->gemma = !strcmp(archs[i][1], "gemma2") || !strcmp(archs[i][1], "gemma3_text");
	s->attn_cap = !strcmp(archs[i][1], "gemma2");
	s->local_rope = c->rope_local_theta > 0 &&
			(c->rope_local_theta != c->rope_theta || c->rope_type != LORA_ROPE_DEFAULT);
	s->dtype = !strcmp(c->torch_dtype, "float32") ? LORA_DT_F32
		   : !strcmp(c->torch_dtype, "float16") ? LORA_DT_F16 : LORA_DT_BF16;
	return finish_shape(s, err);
}

int lora_plan_shape_from_model(const struct lora_model *m, struct lora_plan_shape *s,
			       struct lora_err *err)
{
	const struct lora_model_tensor *t;
	enum lora_dtype dt;

	if (!m->has_config)
		return lora_errf(err, "no config.json in '%s'", m->dir);
	if (lora_plan_shape_from_config(&m->cfg, s, err) < 0)
		return lora_err_prefix(err, "model '%s'", m->dir);
	dt = lora_model_dtype(m);
	if (dt == LORA_DT_F32 || dt == LORA_DT_BF16 || dt == LORA_DT_F16)
		s->dtype = dt;
	/* as the trainer decides: no lm_head tensor means the embedding serves */
	s->tied = m->cfg.tie_word_embeddings || !lora_model_find(m, "lm_head.weight");
	t = lora_model_find(m, "model.layers.0.self_attn.q_proj.bias");
	s->qkv_bias = s->qkv_bias || t != NULL;
	s->o_bias = s->o_bias || lora_model_find(m, "model.layers.0.self_attn.o_proj.bias") != NULL;
	s->mlp_bias = s->mlp_bias || lora_model_find(m, "model.layers.0.mlp.down_proj.bias") != NULL;
	return finish_shape(s, err);
}

/* ------------------------------------------------------------ common counts */

static uint64_t lora_count(const struct lora_plan_shape *s, const struct lora_plan_opts *o)
{
	uint64_t n = 0;

	for (int t = 0; t < LORA_NTARGET; t++)
		if (lora_on(s, o, t)) {
			uint64_t out, in;
			lin_dims(s, t, &out, &in);
			n += (uint64_t)o->rank * (in + out);
		}
	return n * (uint64_t)s->L;
}

static uint64_t nf4_linears(const struct lora_plan_shape *s)
{
	uint64_t n = 0;

	for (int t = 0; t < LORA_NTARGET; t++) {
		uint64_t out, in;
		lin_dims(s, t, &out, &in);
		n += out ? lora_nf4_bytes(out * in) : 0;
	}
	return n * (uint64_t)s->L;
}

/* Parameters outside the decoder linears: embedding(s), norms, biases. */
static uint64_t other_params(const struct lora_plan_shape *s)
{
	return s->n_params - s->n_linear;
}

/* Largest input width among LoRA'd linears (0 when none). */
static uint64_t max_lora_in(const struct lora_plan_shape *s, const struct lora_plan_opts *o)
{
	uint64_t mx = 0;

	for (int t = 0; t < LORA_NTARGET; t++)
		if (lora_on(s, o, t)) {
			uint64_t out, in;
			lin_dims(s, t, &out, &in);
			mx = in > mx ? in : mx;
		}
	return mx;
}

static uint64_t round_pages(uint64_t b)
{
	return (b + PAGE - 1) / PAGE * PAGE;
}

/* ------------------------------------------------------------ CPU: model_cpu.c */

/* floats of a take(): rounded up to 16 (64-byte alignment) */
static uint64_t tk(uint64_t n)
{
	return (n + 15) & ~(uint64_t)15;
}

/*
 * layout() of model_cpu.c for B x T.  `heap`: the floats of the arena; the
 * return value: the floats a training step writes (touched pages).
 */
static uint64_t cpu_arena(const struct lora_plan_shape *s, const struct lora_plan_opts *o, int lora,
			  int nf4, uint64_t *heap, uint64_t *acts, uint64_t *logits, uint64_t *work)
{
	const uint64_t B = (uint64_t)o->batch, T = (uint64_t)o->seq_len, N = B * T;
	const uint64_t C = (uint64_t)s->C, F = (uint64_t)s->F, HD = (uint64_t)s->H * s->D,
		       KVD = (uint64_t)s->KV * s->D, V = (uint64_t)s->V;
	const uint64_t mx = C > F ? (C > HD ? C : HD) : (F > HD ? F : HD);
	const uint64_t R = lora ? (uint64_t)o->rank : 1;
	const uint64_t n_acts = o->checkpoint ? 1 : (uint64_t)s->L;
	const uint64_t th = o->threads > 0 ? (uint64_t)o->threads : 1, qb = T < CPU_QB ? T : CPU_QB;
	/* the frozen weights a pass converts, stacked as model_cpu.c groups them:
	 * q|k|v, o, gate|up, down, lm_head (rows, cols) */
	const uint64_t grp[5][2] = {{HD + 2 * KVD, C}, {C, HD}, {2 * F, C}, {C, F}, {V, C}};
	uint64_t per, a, w, lg, nc, wb = 0, xd;

	/* per layer: x, h1, xm, h2; rstd1, rstd2; q, att; k, v; lse; gate|up; act; u */
	per = tk(N * C) * 4 + tk(N) * 2 + tk(N * HD) * 2 + tk(N * KVD) * 2 + tk(N * (uint64_t)s->H) +
	      tk(N * 2 * F) + tk(N * F);
	if (s->qk_norm)   /* q|k before their per-head norms, and 1/rms of each head */
		per += tk(N * (HD + KVD)) + tk(N * (uint64_t)(s->H + s->KV));
	if (s->gemma)     /* o_proj and down_proj outputs before their norms, 1/rms of each */
		per += tk(N * C) * 2 + tk(N) * 2;
	if (lora)
		for (int t = 0; t < LORA_NTARGET; t++)
			per += lora_on(s, o, t) ? tk(N * R) : 0;
	a = per * n_acts + (o->checkpoint ? tk(N * C) * (uint64_t)s->L : 0);
	a += tk(N * C) * 2 + tk(N);   /* xL, hf, rstd_f: the final residual and norm */
	/* dx, dh, to; q|k|v before RoPE; datt, dq; dk, dv; dact; d gate|up; du; S, P per
	 * thread; RoPE tables */
	w = tk(N * C) * 3 + tk(N * (HD + 2 * KVD)) + tk(N * HD) * 2 + tk(N * KVD) * 2 + tk(N * F) +
	    tk(N * 2 * F) + tk(N * R) + tk(th * qb * T) * (s->attn_cap ? 3 : 2) +
	    tk(T * (uint64_t)(s->D / 2)) * (s->local_rope ? 4 : 2);
	nc = CPU_LOGIT_CHUNK / V;
	nc = nc < 1 ? 1 : nc > N ? N : nc;
	/* logits of a chunk, the chunk's token losses (double), exponentials per thread */
	lg = tk(nc * V) + tk(2 * nc) + tk(th * V);
	*heap = a + w + tk(N * mx) * 2 + tk(CPU_WCHUNK) + lg;

	/* what is written: xd and mask only with dropout, up to the widest LoRA input;
	 * the weight chunk up to the largest chunk a converted group fills (a lone fp32
	 * matrix is used in place) */
	xd = lora && o->dropout > 0 ? N * max_lora_in(s, o) * 2 : 0;
	for (int g = 0; g < 5; g++) {
		const int lone = g == 1 || g == 3 || g == 4;
		const int converted = g < 4 ? (nf4 || s->dtype != LORA_DT_F32 || !lone) : s->dtype != LORA_DT_F32;
		uint64_t rows = CPU_WCHUNK / grp[g][1];

		rows = rows < 1 ? 1 : rows > grp[g][0] ? grp[g][0] : rows;
		if (converted && rows * grp[g][1] > wb)
			wb = rows * grp[g][1];
	}
	*acts = a;
	*logits = lg;
	*work = w + xd + wb;
	return a + w + xd + wb + lg;
}

/* Resident bytes of the CPU trainer for one method. */
static void cpu_col(const struct lora_plan_shape *s, const struct lora_plan_opts *o,
		    enum lora_plan_method m, uint64_t n_lora, struct lora_plan_col *c)
{
	const uint64_t ds = lora_dtype_bits(s->dtype) / 8, C = (uint64_t)s->C, V = (uint64_t)s->V;
	const uint64_t N = (uint64_t)o->batch * o->seq_len;
	const uint64_t vec = other_params(s) - V * C * (s->tied ? 1 : 2);   /* norms and biases */
	uint64_t emb, head, heap, acts, lg, work, touched;
	struct lora_plan_opts oc = *o;

	/* mapped embedding: the rows the batch looks up (all of it when it is also lm_head) */
	head = s->tied ? 0 : V * C * ds;
	emb = s->tied ? V * C * ds : (N < V ? N : V) * round_pages(C * ds);
	emb = emb > V * C * ds ? round_pages(V * C * ds) : emb;

	memset(c, 0, sizeof(*c));
	if (m == LORA_PLAN_FULL) {
		/* textbook fp32 training: weights, gradients, m and v, 16 bytes a parameter */
		c->weights = s->n_params * 4;
		c->grads = s->n_params * 4;
		c->optim = s->n_params * 8;
		oc.checkpoint = 1;
		cpu_arena(s, &oc, 0, 0, &heap, &c->acts_ckpt, &lg, &work);
		oc.checkpoint = 0;
		touched = cpu_arena(s, &oc, 0, 0, &heap, &c->acts_full, &lg, &work);
		c->acts_ckpt *= 4;
		c->acts_full *= 4;
		c->acts = o->checkpoint ? c->acts_ckpt : c->acts_full;
		c->logits = lg * 4;
		c->workspace = work * 4;
		(void)touched;
	} else {
		const int nf4 = m == LORA_PLAN_QLORA;

		c->weights = (nf4 ? nf4_linears(s) : s->n_linear * ds) + emb + head + vec * 4;
		c->file_pages = nf4 ? s->n_linear * ds : 0;
		c->lora = n_lora * 4;
		c->grads = n_lora * 4;
		c->optim = n_lora * 8;
		oc.checkpoint = 1;
		cpu_arena(s, &oc, 1, nf4, &heap, &c->acts_ckpt, &lg, &work);
		oc.checkpoint = 0;
		cpu_arena(s, &oc, 1, nf4, &heap, &c->acts_full, &lg, &work);
		cpu_arena(s, o, 1, nf4, &heap, &acts, &lg, &work);
		c->acts_ckpt *= 4;
		c->acts_full *= 4;
		c->acts = acts * 4;
		c->logits = lg * 4;
		c->workspace = work * 4;
		c->heap = heap * 4 + (nf4 ? nf4_linears(s) : 0) + vec * 4 + c->lora + c->grads + c->optim;
	}
	c->runtime = CPU_RUNTIME - LORA_PLAN_CPU_PROGRAM +
		     (o->program_bytes ? o->program_bytes : LORA_PLAN_CPU_PROGRAM);
	c->total = c->weights + c->lora + c->grads + c->optim + c->acts + c->logits + c->workspace +
		   c->file_pages + c->runtime;
	c->total_min = c->total;
}

/* ------------------------------------------------------------ CUDA estimate */

static void cuda_col(const struct lora_plan_shape *s, const struct lora_plan_opts *o,
		     enum lora_plan_method m, uint64_t n_lora, struct lora_plan_col *c)
{
	const uint64_t N = (uint64_t)o->batch * o->seq_len, L = (uint64_t)s->L;
	const uint64_t C = (uint64_t)s->C, F = (uint64_t)s->F, HD = (uint64_t)s->H * s->D,
		       KVD = (uint64_t)s->KV * s->D, V = (uint64_t)s->V;
	const int lora = m != LORA_PLAN_FULL;
	uint64_t u = 0, layer, nc, maxw = 0;

	memset(c, 0, sizeof(*c));
	if (lora)
		for (int t = 0; t < LORA_NTARGET; t++)
			u += lora_on(s, o, t) ? (uint64_t)o->rank : 0;
	/* per token of one layer: the inputs of every linear and what attention and
	 * SwiGLU need (bf16), two RMS statistics and the attention log-sum-exp (fp32) */
	layer = 2 * (4 * C + 2 * HD + 2 * KVD + 3 * F + u) + 4 * (2 + (uint64_t)s->H);
	if (s->qk_norm)   /* q|k before their per-head norms (bf16) and 1/rms of each head */
		layer += 2 * (HD + KVD) + 4 * (uint64_t)(s->H + s->KV);
	if (s->gemma)     /* the two linear outputs before their post norms, and 1/rms of each */
		layer += 2 * 2 * C + 4 * 2;
	c->acts_full = N * (layer * L + 2 * 2 * C + 4);
	c->acts_ckpt = N * (2 * C * L + layer + 2 * 2 * C + 4);
	c->acts = o->checkpoint ? c->acts_ckpt : c->acts_full;
	nc = CPU_LOGIT_CHUNK / V;
	nc = nc < 1 ? 1 : nc > N ? N : nc;
	c->logits = nc * V * 4;
	/* one layer's backward scratch in bf16, the dropped LoRA input, and for NF4 one
	 * dequantized weight */
	c->workspace = N * 2 * (3 * C + 3 * HD + 4 * KVD + 3 * F) +
		       (lora ? N * 2 * (uint64_t)o->rank : 0) +
		       (lora && o->dropout > 0 ? N * 2 * max_lora_in(s, o) : 0);
	for (int t = 0; t < LORA_NTARGET; t++) {
		uint64_t out, in;
		lin_dims(s, t, &out, &in);
		maxw = out * in > maxw ? out * in : maxw;
	}
	c->runtime = CUDA_RUNTIME;
	if (m == LORA_PLAN_FULL) {
		/* mixed precision: bf16 weights and gradients, fp32 master copy, m and v */
		c->weights = s->n_params * 2;
		c->grads = s->n_params * 2;
		c->optim = s->n_params * 12;
	} else {
		c->weights = m == LORA_PLAN_QLORA ? nf4_linears(s) + other_params(s) * 2 : s->n_params * 2;
		c->workspace += m == LORA_PLAN_QLORA ? maxw * 2 : 0;
		c->lora = n_lora * 4;
		c->grads = n_lora * 4;
		c->optim = n_lora * 8;
	}
	c->total = c->weights + c->lora + c->grads + c->optim + c->acts + c->logits + c->workspace +
		   c->runtime;
	c->total_min = c->total - (o->paged ? c->optim : 0);
}

void lora_plan_compute(const struct lora_plan_shape *s, const struct lora_plan_opts *in,
		       struct lora_plan *p)
{
	struct lora_plan_opts x = *in;
	const struct lora_plan_opts *o = &x;

	if (x.seq_len <= 0)   /* as lora train: 512, or the model's limit */
		x.seq_len = s->max_pos > 0 && s->max_pos < 512 ? s->max_pos : 512;
	memset(p, 0, sizeof(*p));
	p->opts = x;
	p->n_lora = lora_count(s, o);
	for (int m = 0; m < LORA_PLAN_NMETHOD; m++) {
		if (o->device == LORA_PLAN_CPU)
			cpu_col(s, o, (enum lora_plan_method)m, p->n_lora, &p->col[m]);
		else
			cuda_col(s, o, (enum lora_plan_method)m, p->n_lora, &p->col[m]);
	}
}

/* ------------------------------------------------------------ fitting */

static uint64_t need(const struct lora_plan_shape *s, const struct lora_plan_opts *o,
		     enum lora_plan_method m, int B, int T)
{
	struct lora_plan_opts x = *o;
	struct lora_plan_col c;
	uint64_t n_lora;

	x.batch = B;
	x.seq_len = T > 0 ? T : s->max_pos > 0 && s->max_pos < 512 ? s->max_pos : 512;
	n_lora = lora_count(s, &x);
	if (o->device == LORA_PLAN_CPU)
		cpu_col(s, &x, m, n_lora, &c);
	else
		cuda_col(s, &x, m, n_lora, &c);
	return c.total;
}

/* Largest v in [1, hi] with fits(v), by bisection (need grows with v); 0 if none. */
static int largest(const struct lora_plan_shape *s, const struct lora_plan_opts *o,
		   enum lora_plan_method m, uint64_t limit, int hi, int vary_batch)
{
	int lo = 0;

	while (lo < hi) {
		int mid = lo + (hi - lo + 1) / 2;
		uint64_t n = vary_batch ? need(s, o, m, mid, o->seq_len) : need(s, o, m, o->batch, mid);

		if (n <= limit)
			lo = mid;
		else
			hi = mid - 1;
	}
	return lo;
}

void lora_plan_fit(const struct lora_plan_shape *s, const struct lora_plan_opts *o,
		   enum lora_plan_method method, uint64_t limit, int *max_seq_len, int *max_batch)
{
	const int tmax = s->max_pos > 0 ? s->max_pos : 1 << 20;

	*max_seq_len = largest(s, o, method, limit, tmax, 0);
	*max_batch = largest(s, o, method, limit, 65536, 1);
}
