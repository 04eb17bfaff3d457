/*
 * test_train_model.c - the CPU forward/backward against transformers + peft.
 *
 * Fixtures (tests/oracle/train_model.py): for each tiny model M,
 * tests/fixtures/train/M (bf16 weights), M.adapter (saved by peft, B != 0)
 * and M.expect.safetensors (a right-padded batch with masked labels, and the
 * logits, loss and LoRA gradients of torch in fp32, with the bf16 weights
 * upcast ("none") and with bitsandbytes' NF4 round trip ("nf4")).
 *
 * Tolerances.  Both sides compute in fp32 from bit-identical weights (bf16
 * upcast, or byte-identical NF4), so what differs is the order of fp32
 * summation inside matrix products, norms and softmax: a dot product of
 * length K carries a relative error of about K·2^-24 of the sum of |terms|,
 * ~1e-6 for K <= 256 at these magnitudes; through 2-3 layers this stays
 * near 1e-6 absolute on logits of size ~1-5.  We hold logits to 1e-5
 * absolute and the loss and gradients to 1e-5 relative (norm-wise), as
 * issue #14 asks of every family: the largest errors seen (printed; 4.6e-6
 * and 2.3e-6) leave a margin of 2-4x, and a missing norm, a wrong scale or
 * a misplaced head changes them by 1e-2 or more.
 */
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "libadapter/base/fsutil.h"
#include "libadapter/format/peft.h"
#include "libadapter/format/safetensors.h"
#include "train/net.h"
#include "train/optim.h"
#include "tests/t.h"

static const char *const models[] = {"llama_tied", "llama3_untied", "qwen2", "mistral_window",
				     "families/qwen3", "families/llama32_tied", "families/phi3", "families/gemma2",
				     "families/gemma3"};

/* Fixture path of model M ("train/M", or M itself when it names its folder) plus suffix. */
static void model_rel(char *rel, size_t n, const char *model, const char *suffix)
{
	snprintf(rel, n, "%s%s%s", strchr(model, '/') ? "" : "train/", model, suffix);
}
static double worst_logit, worst_grad, worst_loss;

struct fx {
	struct lora_st *st;
	struct lora_batch b;
};

static int open_fx(const char *model, struct fx *f)
{
	char rel[128], *path;
	struct lora_err err;
	const struct lora_st_tensor *ids, *lab, *len;
	int rc;

	model_rel(rel, sizeof(rel), model, ".expect.safetensors");
	path = t_fixture(rel);
	rc = lora_st_open(path, &f->st, &err);
	free(path);
	CHECKF(rc == 0, "%s", err.msg);
	if (rc)
		return -1;
	ids = lora_st_find(f->st, "input_ids");
	lab = lora_st_find(f->st, "labels");
	len = lora_st_find(f->st, "lengths");
	CHECK(ids && lab && len && ids->dtype == LORA_DT_I32 && ids->ndim == 2);
	if (!ids || !lab || !len)
		return -1;
	f->b.B = (int)ids->shape[0];
	f->b.T = (int)ids->shape[1];
	f->b.ids = (const int32_t *)ids->data;
	f->b.labels = (const int32_t *)lab->data;
	f->b.len = (const int32_t *)len->data;
	return 0;
}

static struct lora_net *open_net(const char *model, enum lora_quant q, int checkpoint, int adapter)
{
	char rel[128], *dir;
	struct lora_net_opts o;
	struct lora_net *net = NULL;
	struct lora_err err;
	int rc;

	lora_net_opts_defaults(&o);
	o.quant = q;
	o.checkpoint = checkpoint;
	model_rel(rel, sizeof(rel), model, "");
	dir = t_fixture(rel);
	rc = lora_net_open(&net, dir, &o, &err);
	free(dir);
	CHECKF(rc == 0, "%s: %s", model, err.msg);
	if (rc)
		return NULL;
	if (adapter) {
		model_rel(rel, sizeof(rel), model, ".adapter");
		dir = t_fixture(rel);
		rc = lora_net_load_adapter(net, dir, &err);
		free(dir);
		CHECKF(rc == 0, "%s: %s", model, err.msg);
		if (rc) {
			lora_net_close(net);
			return NULL;
		}
	}
	return net;
}

static const float *tensor_f32(const struct lora_st *st, const char *name, uint64_t n)
{
	const struct lora_st_tensor *t = lora_st_find(st, name);

	CHECKF(t && t->dtype == LORA_DT_F32 && t->nelem == n, "fixture tensor %s", name);
	return t && t->dtype == LORA_DT_F32 && t->nelem == n ? (const float *)t->data : NULL;
}

/* Every LoRA gradient against "<prefix>.grad.<module>.lora_A/B.weight"; returns how many. */
static int compare_grads(const struct lora_net *net, const struct lora_st *st, const char *prefix,
			 const char *model)
{
	char name[256];
	const float *ref;
	int nmods = 0;

	for (int l = 0; l < net->L; l++)
		for (int t = 0; t < LORA_NTARGET; t++) {
			const struct lora_mod *m = lora_net_mod(net, l, (enum lora_target)t);
			const struct lora_linear *lin = &net->blocks[l].lin[t];
			char mod[128];

			if (!m)
				continue;
			lora_net_module_name(net, mod, sizeof(mod), l, (enum lora_target)t);
			for (int ab = 0; ab < 2; ab++) {
				const size_t n = ab ? (size_t)lin->w.rows * m->r : (size_t)m->r * lin->w.cols;
				const float *g = net->grads + (ab ? m->b_off : m->a_off);
				double d2 = 0, r2 = 0, rel;

				snprintf(name, sizeof(name), "%s.grad.%s.lora_%c.weight", prefix, mod,
					 ab ? 'B' : 'A');
				if (!(ref = tensor_f32(st, name, n)))
					continue;
				for (size_t i = 0; i < n; i++) {
					d2 += ((double)g[i] - ref[i]) * ((double)g[i] - ref[i]);
					r2 += (double)ref[i] * ref[i];
				}
				rel = sqrt(d2 / r2);
				CHECKF(r2 > 0 && rel <= 1e-5, "%s %s: gradient off by %.3g (norm-wise)", model,
				       name, rel);
				worst_grad = rel > worst_grad ? rel : worst_grad;
				nmods++;
			}
		}
	return nmods;
}

/* Logits at real positions, loss, and every LoRA gradient against the fixture. */
static void check_model(const char *model, enum lora_quant q)
{
	const char *qn = q == LORA_QUANT_NF4 ? "nf4" : "none";
	struct fx f;
	struct lora_net *net;
	struct lora_fb_result res, res2;
	struct lora_err err;
	char name[256];
	const float *ref;
	const struct lora_st_tensor *lt;
	float *logits;
	double maxerr = 0, ref_loss;
	int nmods = 0;

	if (open_fx(model, &f) < 0 || !(net = open_net(model, q, 0, 1)))
		return;
	logits = calloc((size_t)f.b.B * f.b.T * net->V, sizeof(float));
	CHECKF(lora_net_forward(net, &f.b, logits, &res, &err) == 0, "%s", err.msg);
	snprintf(name, sizeof(name), "%s.logits", qn);
	if ((ref = tensor_f32(f.st, name, (uint64_t)f.b.B * f.b.T * net->V)))
		for (int b = 0; b < f.b.B; b++)
			for (int t = 0; t < f.b.len[b]; t++)
				for (int v = 0; v < net->V; v++) {
					size_t i = ((size_t)b * f.b.T + t) * net->V + v;
					double e = fabs((double)logits[i] - ref[i]);
					maxerr = e > maxerr ? e : maxerr;
				}
	CHECKF(maxerr <= 1e-5, "%s/%s: logits differ by %.3g", model, qn, maxerr);
	worst_logit = maxerr > worst_logit ? maxerr : worst_logit;

	snprintf(name, sizeof(name), "%s.loss", qn);
	lt = lora_st_find(f.st, name);
	CHECK(lt && lt->dtype == LORA_DT_F64);
	ref_loss = lt ? *(const double *)lt->data : 0;
	CHECK_NEAR(res.loss, ref_loss, 0, 1e-5);

	lora_net_zero_grad(net);
	CHECKF(lora_net_forward_backward(net, &f.b, 0, &res2, &err) == 0, "%s", err.msg);
	CHECK_NEAR(res2.loss, ref_loss, 0, 1e-5);
	CHECK(res2.loss == res.loss);   /* forward alone and forward+backward agree exactly */
	if (fabs(res2.loss - ref_loss) / ref_loss > worst_loss)
		worst_loss = fabs(res2.loss - ref_loss) / ref_loss;
	nmods = compare_grads(net, f.st, qn, model);
	CHECKF(nmods > 0, "%s: no gradients compared", model);
	free(logits);
	lora_net_close(net);
	lora_st_close(f.st);
}

TEST(llama_tied_none) { check_model("llama_tied", LORA_QUANT_NONE); }
TEST(llama_tied_nf4) { check_model("llama_tied", LORA_QUANT_NF4); }
TEST(llama3_rope_untied_rslora_patterns_none) { check_model("llama3_untied", LORA_QUANT_NONE); }
TEST(llama3_rope_untied_rslora_patterns_nf4) { check_model("llama3_untied", LORA_QUANT_NF4); }
TEST(qwen2_biases_linear_rope_none) { check_model("qwen2", LORA_QUANT_NONE); }
TEST(qwen2_biases_linear_rope_nf4) { check_model("qwen2", LORA_QUANT_NF4); }
TEST(mistral_sliding_window_none) { check_model("mistral_window", LORA_QUANT_NONE); }
TEST(mistral_sliding_window_nf4) { check_model("mistral_window", LORA_QUANT_NF4); }
/* tests/oracle/families.py: Qwen3 (per-head q/k norms, head_dim 24, a sliding second layer) */
TEST(qwen3_qk_norm_none) { check_model("families/qwen3", LORA_QUANT_NONE); }
TEST(qwen3_qk_norm_nf4) { check_model("families/qwen3", LORA_QUANT_NF4); }
/* Llama 3.2: tied embeddings with llama3 rope scaling */
TEST(llama32_tied_llama3_rope_none) { check_model("families/llama32_tied", LORA_QUANT_NONE); }
TEST(llama32_tied_llama3_rope_nf4) { check_model("families/llama32_tied", LORA_QUANT_NF4); }
/* Phi-3: fused qkv_proj and gate_up_proj, LoRA on the fused modules, NF4 of the fused tensors */
TEST(phi3_fused_none) { check_model("families/phi3", LORA_QUANT_NONE); }
TEST(phi3_fused_nf4) { check_model("families/phi3", LORA_QUANT_NF4); }
/* Gemma 2: scaled embeddings, (1 + w) and post norms, GELU-tanh, soft-capping, query_pre_attn_scalar */
TEST(gemma2_none) { check_model("families/gemma2", LORA_QUANT_NONE); }
TEST(gemma2_nf4) { check_model("families/gemma2", LORA_QUANT_NF4); }
/* Gemma 3: (1 + w) q/k norms, local and global RoPE bases (linear scaling on the global), no caps */
TEST(gemma3_none) { check_model("families/gemma3", LORA_QUANT_NONE); }
TEST(gemma3_nf4) { check_model("families/gemma3", LORA_QUANT_NF4); }

/* One row of 120 tokens: attention runs in two query blocks, the window cuts across them. */
static void check_long(const char *model)
{
	struct fx f;
	struct lora_net *net;
	struct lora_fb_result res;
	struct lora_err err;
	const struct lora_st_tensor *ids, *lab, *loss;

	if (open_fx(model, &f) < 0 || !(net = open_net(model, LORA_QUANT_NONE, 0, 1)))
		return;
	ids = lora_st_find(f.st, "long.input_ids");
	lab = lora_st_find(f.st, "long.labels");
	loss = lora_st_find(f.st, "long.loss");
	CHECK(ids && lab && loss);
	if (ids && lab && loss) {
		struct lora_batch b = {1, (int)ids->shape[1], (const int32_t *)ids->data,
				       (const int32_t *)lab->data, NULL};

		lora_net_zero_grad(net);
		CHECKF(lora_net_forward_backward(net, &b, 0, &res, &err) == 0, "%s", err.msg);
		CHECK_NEAR(res.loss, *(const double *)loss->data, 0, 1e-5);
		CHECK(compare_grads(net, f.st, "long", model) > 0);
		/* the same net on the short batch again: buffers re-laid for another shape */
		CHECK(lora_net_forward(net, &f.b, NULL, &res, &err) == 0);
		loss = lora_st_find(f.st, "none.loss");
		CHECK(loss && fabs(res.loss - *(const double *)loss->data) <= 1e-4 * res.loss);
	}
	lora_net_close(net);
	lora_st_close(f.st);
}

TEST(long_row_full_causal) { check_long("llama_tied"); }
TEST(long_row_sliding_window) { check_long("mistral_window"); }
TEST(long_row_qwen3) { check_long("families/qwen3"); }
TEST(long_row_llama32_tied) { check_long("families/llama32_tied"); }
TEST(long_row_phi3) { check_long("families/phi3"); }
TEST(long_row_gemma2) { check_long("families/gemma2"); }
TEST(long_row_gemma3) { check_long("families/gemma3"); }

/* Gradients with activation checkpointing are bit-identical to those without. */
TEST(checkpointing_is_bit_identical)
{
	for (size_t i = 0; i < sizeof(models) / sizeof(models[0]); i++) {
		struct fx f;
		struct lora_net *a, *b;
		struct lora_fb_result ra, rb;
		struct lora_err err;

		if (open_fx(models[i], &f) < 0)
			return;
		a = open_net(models[i], LORA_QUANT_NF4, 0, 1);
		b = open_net(models[i], LORA_QUANT_NF4, 1, 1);
		if (a && b) {
			/* with dropout on, so that the recomputed masks are checked too */
			a->lcfg.dropout = b->lcfg.dropout = 0.1;
			lora_net_zero_grad(a);
			lora_net_zero_grad(b);
			CHECK(lora_net_forward_backward(a, &f.b, 0, &ra, &err) == 0);
			CHECK(lora_net_forward_backward(b, &f.b, 0, &rb, &err) == 0);
			CHECK(ra.loss == rb.loss);
			CHECK(a->n_params == b->n_params);
			CHECKF(memcmp(a->grads, b->grads, a->n_params * sizeof(float)) == 0,
			       "%s: checkpointed gradients differ", models[i]);
		}
		lora_net_close(a);
		lora_net_close(b);
		lora_st_close(f.st);
	}
}

/*
 * The loss head in chunks of 7 tokens gives what one chunk gives, up to the
 * rounding of products OpenBLAS computes with other kernels for other shapes
 * (~1e-8); an indexing slip would show as errors of order 1.
 */
TEST(loss_head_chunks)
{
	struct fx f;
	struct lora_net *a, *b;
	struct lora_fb_result ra, rb;
	struct lora_err err;

	if (open_fx("qwen2", &f) < 0)
		return;
	a = open_net("qwen2", LORA_QUANT_NONE, 0, 1);
	b = open_net("qwen2", LORA_QUANT_NONE, 0, 1);
	if (a && b) {
		double d2 = 0, r2 = 0;

		b->opts.logit_tokens = 7;
		lora_net_zero_grad(a);
		lora_net_zero_grad(b);
		CHECK(lora_net_forward_backward(a, &f.b, 0, &ra, &err) == 0);
		CHECK(lora_net_forward_backward(b, &f.b, 0, &rb, &err) == 0);
		CHECK(ra.tokens == rb.tokens);
		CHECK_NEAR(rb.loss, ra.loss, 0, 1e-6);
		for (size_t i = 0; i < a->n_params; i++) {
			d2 += ((double)a->grads[i] - b->grads[i]) * ((double)a->grads[i] - b->grads[i]);
			r2 += (double)a->grads[i] * a->grads[i];
		}
		CHECKF(sqrt(d2 / r2) < 1e-6, "chunked gradients off by %g", sqrt(d2 / r2));
	}
	lora_net_close(a);
	lora_net_close(b);
	lora_st_close(f.st);
}

/* Fresh adapters, a few AdamW steps with dropout: weights after each run. */
static float *train_run(uint64_t seed, size_t *n)
{
	struct fx f;
	struct lora_net *net = open_net("llama_tied", LORA_QUANT_NF4, 0, 0);
	struct lora_cfg lc;
	struct lora_optim_cfg oc;
	struct lora_adamw opt;
	struct lora_fb_result r;
	struct lora_err err;
	float *out = NULL;

	if (!net || open_fx("llama_tied", &f) < 0) {
		lora_net_close(net);
		return NULL;
	}
	lora_cfg_defaults(&lc);
	lc.rank = 4;
	lc.alpha = 8;
	lc.dropout = 0.1;
	lc.seed = seed;
	CHECK(lora_net_init_lora(net, &lc, &err) == 0);
	lora_optim_defaults(&oc);
	oc.lr = 1e-2;
	oc.sched = LORA_SCHED_COSINE;
	oc.warmup_steps = 1;
	oc.total_steps = 4;
	CHECK(lora_adamw_init(&opt, net->n_params, &err) == 0);
	for (long s = 0; s < 4; s++) {
		lora_net_zero_grad(net);
		CHECK(lora_net_forward_backward(net, &f.b, 0, &r, &err) == 0);
		lora_clip_grad_norm(net->grads, net->n_params, 1.0);
		lora_adamw_step(&opt, &oc, net->params, net->grads, lora_sched_lr(&oc, s));
	}
	*n = net->n_params;
	out = malloc(*n * sizeof(float));
	memcpy(out, net->params, *n * sizeof(float));
	lora_adamw_free(&opt);
	lora_net_close(net);
	lora_st_close(f.st);
	return out;
}

TEST(determinism_same_seed_same_weights)
{
	size_t n1 = 0, n2 = 0, n3 = 0;
	float *a = train_run(7, &n1), *b = train_run(7, &n2), *c = train_run(8, &n3);

	CHECK(a && b && c && n1 == n2 && n1 == n3 && n1 > 0);
	if (a && b && c) {
		CHECK(memcmp(a, b, n1 * sizeof(float)) == 0);
		CHECK(memcmp(a, c, n1 * sizeof(float)) != 0);
	}
	free(a);
	free(b);
	free(c);
}

TEST(fresh_lora_is_peft_initialized)
{
	struct lora_net *net = open_net("llama3_untied", LORA_QUANT_NONE, 0, 0);
	struct lora_cfg lc;
	struct lora_err err;

	if (!net)
		return;
	lora_cfg_defaults(&lc);
	lc.rank = 8;
	lc.alpha = 16;
	lc.rslora = 1;
	lc.targets = (1u << LORA_T_Q) | (1u << LORA_T_DOWN);
	CHECK(lora_net_init_lora(net, &lc, &err) == 0);
	for (int l = 0; l < net->L; l++) {
		const struct lora_mod *q = lora_net_mod(net, l, LORA_T_Q);
		const struct lora_mod *d = lora_net_mod(net, l, LORA_T_DOWN);
		const float bq = 1.0f / sqrtf((float)net->C), bd = 1.0f / sqrtf((float)net->F);
		double mean = 0, var = 0;
		size_t na = (size_t)8 * net->C;

		CHECK(q && d && !lora_net_mod(net, l, LORA_T_V));
		if (!q || !d)
			continue;
		CHECK_NEAR(q->scale, 16.0 / sqrt(8.0), 1e-6, 0);
		for (size_t i = 0; i < na; i++) {
			float v = net->params[q->a_off + i];
			CHECK(fabsf(v) <= bq);
			mean += v;
			var += (double)v * v;
		}
		/* U(-b, b): mean 0, variance b²/3 (768 samples: 4-sigma bands) */
		mean /= (double)na;
		var = var / (double)na;
		CHECK_NEAR(mean, 0.0, 4 * bq / sqrt(3.0 * na), 0);
		CHECK_NEAR(var, bq * bq / 3.0, 4 * bq * bq * sqrt(4.0 / 45.0 / na), 0);
		for (size_t i = 0; i < (size_t)8 * net->F; i++)
			CHECK(fabsf(net->params[d->a_off + i]) <= bd);
		for (size_t i = 0; i < (size_t)net->C * 8; i++)
			CHECK(net->params[q->b_off + i] == 0.0f);
	}
	lora_net_close(net);
}

TEST(save_and_load_adapter_round_trip)
{
	struct lora_net *a = open_net("llama3_untied", LORA_QUANT_NONE, 0, 1);
	struct lora_net *b = open_net("llama3_untied", LORA_QUANT_NONE, 0, 0);
	char tmpl[] = "/tmp/lora-test-adapter.XXXXXX", *dir = mkdtemp(tmpl);
	struct lora_peft *p = NULL;
	struct lora_err err;

	CHECK(dir != NULL);
	if (!a || !b || !dir)
		goto out;
	CHECKF(lora_net_save_adapter(a, dir, "llama3_untied", &err) == 0, "%s", err.msg);
	CHECKF(lora_peft_open(dir, &p, &err) == 0, "%s", err.msg);
	if (p) {
		/* the patterns survive: v_proj rank 4, o_proj alpha 4, rsLoRA */
		const struct lora_peft_module *v = lora_peft_find(p, "model.layers.1.self_attn.v_proj");
		const struct lora_peft_module *o = lora_peft_find(p, "model.layers.2.self_attn.o_proj");
		CHECK(p->cfg.use_rslora && p->cfg.r == 8);
		CHECK(v && v->r == 4);
		CHECK(o && fabs(o->scale - 4.0 / sqrt(8.0)) < 1e-6);
		CHECK(p->n_modules == 12);
	}
	CHECKF(lora_net_load_adapter(b, dir, &err) == 0, "%s", err.msg);
	CHECK(a->n_params == b->n_params);
	if (a->n_params == b->n_params)
		CHECK(memcmp(a->params, b->params, a->n_params * sizeof(float)) == 0);
	for (int l = 0; l < a->L; l++)
		for (int t = 0; t < LORA_NTARGET; t++) {
			const struct lora_mod *ma = lora_net_mod(a, l, (enum lora_target)t);
			const struct lora_mod *mb = lora_net_mod(b, l, (enum lora_target)t);
			CHECK(!ma == !mb);
			if (ma && mb)
				CHECK(ma->r == mb->r && fabsf(ma->scale - mb->scale) < 1e-6f);
		}
out:
	lora_peft_close(p);
	if (dir)
		lora_rm_rf(dir, &err);
	lora_net_close(a);
	lora_net_close(b);
}

TEST(nf4_base_takes_about_4_13_bits)
{
	struct lora_net *net = open_net("llama3_untied", LORA_QUANT_NF4, 0, 0);
	uint64_t params = 0;

	if (!net)
		return;
	for (int l = 0; l < net->L; l++)
		for (int t = 0; t < LORA_NTARGET; t++)
			params += (uint64_t)net->blocks[l].lin[t].w.rows * net->blocks[l].lin[t].w.cols;
	/* the per-tensor fixed cost (offset, partial nested block) shows on tiny tensors */
	CHECK_NEAR(8.0 * lora_net_frozen_bytes(net) / params, 4.13, 0.05, 0);
	lora_net_close(net);
}

/* A copy of fixture model M with every tensor converted to dt, in a temp dir. */
static char *convert_model(const char *model, enum lora_dtype dt)
{
	char rel[128], *src, *path, *dir = NULL, tmpl[] = "/tmp/lora-test-dtype.XXXXXX";
	struct lora_st *st = NULL;
	struct lora_st_writer w;
	struct lora_st_spec *specs = NULL;
	struct lora_err err;
	char *cfg = NULL;
	size_t cfg_len;
	int ok = 0;

	snprintf(rel, sizeof(rel), "train/%s/model.safetensors", model);
	src = t_fixture(rel);
	if (lora_st_open(src, &st, &err) < 0 || !(dir = mkdtemp(tmpl)))
		goto out;
	dir = strdup(dir);
	specs = calloc(st->n_tensors, sizeof(*specs));
	for (size_t i = 0; i < st->n_tensors; i++) {
		specs[i].name = st->tensors[i].name;
		specs[i].dtype = dt;
		specs[i].ndim = st->tensors[i].ndim;
		memcpy(specs[i].shape, st->tensors[i].shape, sizeof(specs[i].shape));
	}
	path = lora_path_join(dir, "model.safetensors");
	if (lora_st_writer_open(&w, path, specs, st->n_tensors, NULL, NULL, 0, &err) < 0) {
		free(path);
		goto out;
	}
	free(path);
	for (size_t i = 0; i < st->n_tensors; i++) {
		float *f = lora_st_to_f32(&st->tensors[i], &err);
		size_t n = st->tensors[i].nelem, es = lora_dtype_bits(dt) / 8;
		void *buf = malloc(n * es);

		lora_from_f32(buf, f, dt, n);
		lora_st_writer_write(&w, buf, n * es, &err);
		free(buf);
		free(f);
	}
	if (lora_st_writer_commit(&w, &err) < 0)
		goto out;
	free(src);
	snprintf(rel, sizeof(rel), "train/%s/config.json", model);
	src = t_fixture(rel);
	path = lora_path_join(dir, "config.json");
	if (lora_read_file(src, 1 << 20, &cfg, &cfg_len, &err) == 0 &&
	    lora_write_file_atomic(path, cfg, cfg_len, 0644, &err) == 0)
		ok = 1;
	free(path);
out:
	CHECKF(ok, "converting %s: %s", model, err.msg);
	free(cfg);
	free(specs);
	free(src);
	lora_st_close(st);
	if (!ok && dir) {
		lora_rm_rf(dir, &err);
		free(dir);
		dir = NULL;
	}
	return dir;
}

static float *logits_of(const char *dir, const char *adapter_model, const struct lora_batch *b, int *V)
{
	struct lora_net_opts o;
	struct lora_net *net = NULL;
	struct lora_fb_result r;
	struct lora_err err;
	char rel[128], *ad;
	float *out = NULL;

	lora_net_opts_defaults(&o);
	o.quant = LORA_QUANT_NONE;
	snprintf(rel, sizeof(rel), "train/%s.adapter", adapter_model);
	ad = t_fixture(rel);
	if (lora_net_open(&net, dir, &o, &err) == 0 && lora_net_load_adapter(net, ad, &err) == 0) {
		*V = net->V;
		out = malloc(sizeof(float) * (size_t)b->B * b->T * net->V);
		if (lora_net_forward(net, b, out, &r, &err) < 0) {
			free(out);
			out = NULL;
		}
	}
	CHECKF(out != NULL, "%s: %s", dir, err.msg);
	free(ad);
	lora_net_close(net);
	return out;
}

/* The same weights stored as F32 give the same logits bit for bit; as F16, close ones. */
TEST(fp32_and_fp16_weights)
{
	struct fx f;
	char *d32 = NULL, *d16 = NULL, *dbf = t_fixture("train/qwen2");
	float *lbf = NULL, *l32 = NULL, *l16 = NULL;
	struct lora_err err;
	int V = 0;

	if (open_fx("qwen2", &f) < 0)
		return;
	d32 = convert_model("qwen2", LORA_DT_F32);
	d16 = convert_model("qwen2", LORA_DT_F16);
	if (d32 && d16) {
		lbf = logits_of(dbf, "qwen2", &f.b, &V);
		l32 = logits_of(d32, "qwen2", &f.b, &V);
		l16 = logits_of(d16, "qwen2", &f.b, &V);
	}
	if (lbf && l32 && l16) {
		const size_t n = (size_t)f.b.B * f.b.T * V;
		double worst = 0;

		CHECK(memcmp(lbf, l32, n * sizeof(float)) == 0);
		/* bf16 -> f16 rounds the few weights below f16's normal range (6e-5) */
		for (size_t i = 0; i < n; i++)
			worst = fabs((double)l16[i] - lbf[i]) > worst ? fabs((double)l16[i] - lbf[i]) : worst;
		CHECKF(worst < 1e-3, "f16 logits off by %g", worst);
	}
	free(lbf);
	free(l32);
	free(l16);
	if (d32)
		lora_rm_rf(d32, &err);
	if (d16)
		lora_rm_rf(d16, &err);
	free(d32);
	free(d16);
	free(dbf);
	lora_st_close(f.st);
}

TEST(refuses_other_architectures_by_name)
{
	char tmpl[] = "/tmp/lora-test-arch.XXXXXX", *dir = mkdtemp(tmpl);
	struct lora_net *net = NULL;
	struct lora_net_opts o;
	struct lora_err err;
	char *cfg;
	const char *json = "{\"architectures\": [\"GPT2LMHeadModel\"], \"model_type\": \"gpt2\", "
			   "\"hidden_size\": 64, \"num_hidden_layers\": 1, \"num_attention_heads\": 4, "
			   "\"vocab_size\": 16, \"intermediate_size\": 64}";
	const char *st = "\x02\0\0\0\0\0\0\0{}";

	CHECK(dir != NULL);
	if (!dir)
		return;
	cfg = lora_path_join(dir, "config.json");
	CHECK(lora_write_file_atomic(cfg, json, strlen(json), 0644, &err) == 0);
	free(cfg);
	cfg = lora_path_join(dir, "model.safetensors");
	CHECK(lora_write_file_atomic(cfg, st, 10, 0644, &err) == 0);
	free(cfg);
	lora_net_opts_defaults(&o);
	CHECK(lora_net_open(&net, dir, &o, &err) < 0);
	CHECKF(strstr(err.msg, "GPT2LMHeadModel") && strstr(err.msg, "not supported"), "%s", err.msg);
	lora_rm_rf(dir, &err);
}

/* lora_net_open on a folder of config.json (json) and an empty model.safetensors: the error. */
static void refused(const char *json, const char *want1, const char *want2)
{
	char tmpl[] = "/tmp/lora-test-arch.XXXXXX", *dir = mkdtemp(tmpl), *p;
	struct lora_net *net = NULL;
	struct lora_net_opts o;
	struct lora_err err;

	CHECK(dir != NULL);
	if (!dir)
		return;
	p = lora_path_join(dir, "config.json");
	CHECK(lora_write_file_atomic(p, json, strlen(json), 0644, &err) == 0);
	free(p);
	p = lora_path_join(dir, "model.safetensors");
	CHECK(lora_write_file_atomic(p, "\x02\0\0\0\0\0\0\0{}", 10, 0644, &err) == 0);
	free(p);
	lora_net_opts_defaults(&o);
	CHECK(lora_net_open(&net, dir, &o, &err) < 0);
	CHECKF(strstr(err.msg, want1) && strstr(err.msg, want2), "%s", err.msg);
	lora_rm_rf(dir, &err);
}

#define SIZES "\"hidden_size\": 64, \"num_hidden_layers\": 1, \"num_attention_heads\": 4, " \
	      "\"vocab_size\": 16, \"intermediate_size\": 64"

/* Each family refuses, naming the field and value, what it does not support. */
TEST(families_refuse_what_they_do_not_support)
{
	refused("{\"architectures\": [\"Qwen3MoeForCausalLM\"], \"model_type\": \"qwen3_moe\", " SIZES "}",
		"Qwen3MoeForCausalLM", "not supported");
	refused("{\"architectures\": [\"Qwen3ForCausalLM\"], \"model_type\": \"qwen3\", "
		"\"hidden_act\": \"gelu\", " SIZES "}", "hidden_act", "gelu");
	refused("{\"architectures\": [\"Phi3ForCausalLM\"], \"model_type\": \"phi3\", "
		"\"partial_rotary_factor\": 0.75, " SIZES "}", "partial_rotary_factor", "0.75");
	refused("{\"architectures\": [\"Phi3ForCausalLM\"], \"model_type\": \"phi3\", \"rope_scaling\": "
		"{\"type\": \"longrope\", \"long_factor\": [1.0], \"short_factor\": [1.0]}, " SIZES "}",
		"rope_scaling", "longrope");
	refused("{\"architectures\": [\"Gemma2ForCausalLM\"], \"model_type\": \"gemma2\", "
		"\"hidden_activation\": \"gelu\", " SIZES "}", "hidden_activation", "gelu");
	refused("{\"architectures\": [\"Gemma3ForConditionalGeneration\"], \"model_type\": \"gemma3\", "
		SIZES "}", "Gemma3ForConditionalGeneration", "not supported");
	refused("{\"architectures\": [\"Gemma3ForCausalLM\"], \"model_type\": \"gemma3_text\", \"rope_parameters\": "
		"{\"sliding_attention\": {\"rope_type\": \"yarn\", \"rope_theta\": 1e4}, \"full_attention\": "
		"{\"rope_type\": \"default\", \"rope_theta\": 1e6}}, " SIZES "}", "sliding_attention", "yarn");
	refused("{\"architectures\": [\"Qwen3ForCausalLM\"], \"model_type\": \"qwen3\", "
		"\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}, " SIZES "}", "rope_scaling", "yarn");
	refused("{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", "
		"\"rope_scaling\": {\"rope_type\": \"dynamic\", \"factor\": 2.0}, " SIZES "}", "rope_scaling",
		"dynamic");
}

/* A Qwen3 checkpoint without its per-head norms is refused naming the tensor. */
TEST(qwen3_needs_its_qk_norms)
{
	char tmpl[] = "/tmp/lora-test-qwen3.XXXXXX", *dir = mkdtemp(tmpl), *src, *p;
	struct lora_st *st = NULL;
	struct lora_st_writer w;
	struct lora_st_spec specs[64];
	struct lora_net *net = NULL;
	struct lora_net_opts o;
	struct lora_err err;
	char *cfg = NULL;
	size_t n = 0, len;

	src = t_fixture("families/qwen3/model.safetensors");
	CHECK(dir && lora_st_open(src, &st, &err) == 0 && st->n_tensors <= 64);
	free(src);
	if (!dir || !st)
		return;
	for (size_t i = 0; i < st->n_tensors; i++)
		if (strcmp(st->tensors[i].name, "model.layers.1.self_attn.k_norm.weight")) {
			specs[n].name = st->tensors[i].name;
			specs[n].dtype = st->tensors[i].dtype;
			specs[n].ndim = st->tensors[i].ndim;
			memcpy(specs[n].shape, st->tensors[i].shape, sizeof(specs[n].shape));
			n++;
		}
	p = lora_path_join(dir, "model.safetensors");
	CHECK(lora_st_writer_open(&w, p, specs, n, NULL, NULL, 0, &err) == 0);
	free(p);
	for (size_t i = 0; i < st->n_tensors; i++)
		if (strcmp(st->tensors[i].name, "model.layers.1.self_attn.k_norm.weight"))
			lora_st_writer_write(&w, st->tensors[i].data, st->tensors[i].end - st->tensors[i].begin,
					     &err);
	CHECK(lora_st_writer_commit(&w, &err) == 0);
	src = t_fixture("families/qwen3/config.json");
	p = lora_path_join(dir, "config.json");
	CHECK(lora_read_file(src, 1 << 20, &cfg, &len, &err) == 0 &&
	      lora_write_file_atomic(p, cfg, len, 0644, &err) == 0);
	free(src);
	free(p);
	free(cfg);
	lora_net_opts_defaults(&o);
	CHECK(lora_net_open(&net, dir, &o, &err) < 0);
	CHECKF(strstr(err.msg, "model.layers.1.self_attn.k_norm.weight") != NULL, "%s", err.msg);
	lora_st_close(st);
	lora_rm_rf(dir, &err);
}

TEST(bad_batches_are_refused)
{
	struct lora_net *net = open_net("llama_tied", LORA_QUANT_NONE, 0, 1);
	int32_t ids[4] = {1, 2, 500, 3}, len[1] = {4};
	struct lora_batch b = {1, 4, ids, NULL, len};
	struct lora_fb_result r;
	struct lora_err err;

	if (!net)
		return;
	CHECK(lora_net_forward(net, &b, NULL, &r, &err) < 0 && strstr(err.msg, "500"));
	ids[2] = 5;
	len[0] = 5;
	CHECK(lora_net_forward(net, &b, NULL, &r, &err) < 0);
	len[0] = 4;
	CHECK(lora_net_forward(net, &b, NULL, &r, &err) == 0 && r.tokens == 3);
	/* anything may pad a row: ids past the length are never looked up */
	len[0] = 2;
	ids[2] = -1;
	ids[3] = 1 << 30;
	CHECK(lora_net_forward(net, &b, NULL, &r, &err) == 0 && r.tokens == 1);
	lora_net_close(net);
}

int main(void)
{
	RUN(llama_tied_none);
	RUN(llama_tied_nf4);
	RUN(llama3_rope_untied_rslora_patterns_none);
	RUN(llama3_rope_untied_rslora_patterns_nf4);
	RUN(qwen2_biases_linear_rope_none);
	RUN(qwen2_biases_linear_rope_nf4);
	RUN(mistral_sliding_window_none);
	RUN(mistral_sliding_window_nf4);
	RUN(long_row_full_causal);
	RUN(long_row_sliding_window);
	RUN(qwen3_qk_norm_none);
	RUN(qwen3_qk_norm_nf4);
	RUN(llama32_tied_llama3_rope_none);
	RUN(llama32_tied_llama3_rope_nf4);
	RUN(phi3_fused_none);
	RUN(phi3_fused_nf4);
	RUN(long_row_phi3);
	RUN(gemma2_none);
	RUN(gemma2_nf4);
	RUN(long_row_gemma2);
	RUN(gemma3_none);
	RUN(gemma3_nf4);
	RUN(long_row_gemma3);
	RUN(long_row_qwen3);
	RUN(long_row_llama32_tied);
	printf("  largest errors: logits %.3g abs, loss %.3g rel, gradients %.3g rel (norm-wise)\n",
	       worst_logit, worst_loss, worst_grad);
	RUN(checkpointing_is_bit_identical);
	RUN(loss_head_chunks);
	RUN(determinism_same_seed_same_weights);
	RUN(fresh_lora_is_peft_initialized);
	RUN(save_and_load_adapter_round_trip);
	RUN(nf4_base_takes_about_4_13_bits);
	RUN(fp32_and_fp16_weights);
	RUN(refuses_other_architectures_by_name);
	RUN(families_refuse_what_they_do_not_support);
	RUN(qwen3_needs_its_qk_norms);
	RUN(bad_batches_are_refused);
	return t_done();
}
