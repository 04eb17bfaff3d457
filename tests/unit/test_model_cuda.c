/*
 * test_model_cuda.c - the CUDA backend's host code (train/model_cuda.c) on
 * the CPU execution layer (tests/simt built as liblora_cuda_simt.so, found
 * beside this binary in ../tools/, or the plugin $LORA_CUDA_PLUGIN names,
 * e.g. the real one under make check-cuda), against the transformers + peft
 * fixtures of test_train_model.c and against the CPU backend.
 *
 * Tolerances.  On the layer, the gemm wrapper is OpenBLAS sgemm on fp32
 * operands (tests/simt/blas_simt.cc: bf16 only when asked, and this backend
 * never asks), so the matrix products are the CPU trainer's; NF4 dequantizes
 * bit for bit (test_kernels nf4_dequant, tolerance 0).  What differs is the
 * summation order inside the kernels' reductions (RMSNorm sums, attention's
 * online softmax, the cross-entropy's max/sum over the vocabulary): a sum of
 * K fp32 terms moves by about K·2^-24 of the sum of |terms|, ~1e-6 relative
 * at these sizes (K <= 160), and a few layers keep it near that.  So the
 * loss is held to 1e-5 relative, logits to 1e-5 absolute (size ~1-5) and
 * every LoRA gradient to 1e-5 relative norm-wise, against torch (the
 * tolerance test_train_model.c holds the CPU trainer to) and against the
 * CPU backend.  A skipped residual, a wrong head offset or a missing bias
 * changes them by 1e-2 or more.  The worst figures are printed.
 */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "libadapter/base/fsutil.h"
#include "libadapter/format/safetensors.h"
#include "train/cuda.h"
#include "train/loop.h"
#include "train/model_cuda.h"
#include "train/net.h"
#include "tests/t.h"

static const struct lora_cuda_abi *K;
static char tools[PATH_MAX + 16];
static double worst_loss, worst_logit, worst_grad;   /* cuda vs cpu */
static double worst_ref_loss, worst_ref_grad;       /* cuda vs torch */

static char plugin_path[PATH_MAX + 64];

static void find_plugin(void)
{
	char exe[PATH_MAX], path[PATH_MAX + 64], msg[1024];
	const char *env = getenv("LORA_CUDA_PLUGIN");
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	char *slash;

	if (n <= 0)
		n = 0;
	exe[n] = '\0';
	if ((slash = strrchr(exe, '/')))
		*slash = '\0';
	snprintf(tools, sizeof(tools), "%s/../tools", exe);
	snprintf(path, sizeof(path), "%s/liblora_cuda_simt.so", tools);
	snprintf(plugin_path, sizeof(plugin_path), "%s", env && *env ? env : path);
	K = lora_cuda_api(plugin_path, msg, sizeof(msg));
	if (!K)
		fprintf(stderr, "  no plugin: %s\n", msg);
}

static void model_rel(char *rel, size_t n, const char *model, const char *suffix)
{
	snprintf(rel, n, "%s%s%s", strchr(model, '/') || model[0] == '/' ? "" : "train/", model, suffix);
}

static struct lora_net *open_dir(const char *dir, enum lora_quant q, int checkpoint, const char *adapter,
				 int cuda)
{
	struct lora_net_opts o;
	struct lora_net *net = NULL;
	struct lora_err err;

	lora_net_opts_defaults(&o);
	o.quant = q;
	o.checkpoint = checkpoint;
	o.threads = 1;
	CHECKF(lora_net_open(&net, dir, &o, &err) == 0, "%s: %s", dir, err.msg);
	if (!net)
		return NULL;
	if (adapter) {
		CHECKF(lora_net_load_adapter(net, adapter, &err) == 0, "%s: %s", adapter, err.msg);
	} else {
		struct lora_cfg lc;

		lora_cfg_defaults(&lc);
		lc.rank = 3;
		lc.alpha = 5;
		CHECKF(lora_net_init_lora(net, &lc, &err) == 0, "%s", err.msg);
		/* B = 0 after PEFT's initialization would leave d A = 0: fill A and B, the same
		 * numbers in both nets */
		for (size_t i = 0; i < net->n_params; i++)
			net->params[i] = (float)(((i * 2654435761u) % 1000) / 1000.0 - 0.5) * 0.2f;
	}
	if (cuda)
		CHECKF(lora_cuda_attach(net, K, &err) == 0, "%s", err.msg);
	return net;
}

static struct lora_net *open_fixture(const char *model, enum lora_quant q, int checkpoint, int cuda)
{
	char rel[128], *dir, *ad;
	struct lora_net *net;

	model_rel(rel, sizeof(rel), model, "");
	dir = t_fixture(rel);
	model_rel(rel, sizeof(rel), model, ".adapter");
	ad = t_fixture(rel);
	net = open_dir(dir, q, checkpoint, ad, cuda);
	free(dir);
	free(ad);
	return net;
}

static double rel_norm(const float *a, const float *ref, size_t n)
{
	double d2 = 0, r2 = 0;

	for (size_t i = 0; i < n; i++) {
		d2 += ((double)a[i] - ref[i]) * ((double)a[i] - ref[i]);
		r2 += (double)ref[i] * ref[i];
	}
	return r2 > 0 ? sqrt(d2 / r2) : sqrt(d2);
}

/* Forward (logits) and forward + backward (loss, gradients) of the same batch on both backends. */
static void compare(const char *what, struct lora_net *cpu, struct lora_net *gpu, const struct lora_batch *b)
{
	const size_t nl = (size_t)b->B * b->T * cpu->V;
	float *lc = malloc(nl * sizeof(float)), *lg = malloc(nl * sizeof(float));
	struct lora_fb_result rc, rg;
	struct lora_err err;
	double maxe = 0, rl, rgr;

	if (!lc || !lg)
		abort();
	for (size_t i = 0; i < nl; i++)   /* poisoned: every logit must be written */
		lg[i] = NAN;
	CHECKF(lora_net_forward(cpu, b, lc, &rc, &err) == 0, "%s: %s", what, err.msg);
	CHECKF(lora_net_forward(gpu, b, lg, &rg, &err) == 0, "%s: %s", what, err.msg);
	for (size_t i = 0; i < nl; i++) {
		double e = fabs((double)lg[i] - lc[i]);
		maxe = e > maxe || isnan(e) ? (isnan(e) ? INFINITY : e) : maxe;
	}
	CHECKF(maxe <= 1e-5, "%s: logits differ by %.3g", what, maxe);
	CHECKF(rg.tokens == rc.tokens, "%s: tokens %ld vs %ld", what, rg.tokens, rc.tokens);
	rl = rc.loss ? fabs(rg.loss - rc.loss) / rc.loss : fabs(rg.loss);
	CHECKF(rl <= 1e-5, "%s: forward loss %.9g vs %.9g", what, rg.loss, rc.loss);

	lora_net_zero_grad(cpu);
	lora_net_zero_grad(gpu);
	for (size_t i = 0; i < gpu->n_params; i++)   /* gradients are added: start both at the same */
		cpu->grads[i] = gpu->grads[i] = (float)(i % 7) * 1e-3f;
	CHECKF(lora_net_forward_backward(cpu, b, 0, &rc, &err) == 0, "%s: %s", what, err.msg);
	CHECKF(lora_net_forward_backward(gpu, b, 0, &rg, &err) == 0, "%s: %s", what, err.msg);
	rl = rc.loss ? fabs(rg.loss - rc.loss) / rc.loss : fabs(rg.loss);
	CHECKF(rl <= 1e-5, "%s: loss %.9g vs %.9g", what, rg.loss, rc.loss);
	rgr = rel_norm(gpu->grads, cpu->grads, cpu->n_params);
	CHECKF(rgr <= 1e-5, "%s: gradients differ by %.3g (norm-wise)", what, rgr);
	worst_loss = rl > worst_loss ? rl : worst_loss;
	worst_logit = maxe > worst_logit ? maxe : worst_logit;
	worst_grad = rgr > worst_grad ? rgr : worst_grad;
	free(lc);
	free(lg);
}

/* The fixture's batch: cuda against torch's loss and gradients, and against the CPU backend. */
static void check_fixture(const char *model, enum lora_quant q, int checkpoint, double dropout)
{
	const char *qn = q == LORA_QUANT_NF4 ? "nf4" : "none";
	char rel[128], *path, what[160];
	struct lora_st *st = NULL;
	struct lora_err err;
	struct lora_net *cpu, *gpu;
	const struct lora_st_tensor *ids, *lab, *len, *lt;
	struct lora_batch b;

	if (!K) {
		CHECKF(0, "no CUDA plugin");
		return;
	}
	snprintf(what, sizeof(what), "%s/%s%s%s", model, qn, checkpoint ? "/checkpoint" : "",
		 dropout > 0 ? "/dropout" : "");
	model_rel(rel, sizeof(rel), model, ".expect.safetensors");
	path = t_fixture(rel);
	CHECKF(lora_st_open(path, &st, &err) == 0, "%s", err.msg);
	free(path);
	if (!st)
		return;
	ids = lora_st_find(st, "input_ids");
	lab = lora_st_find(st, "labels");
	len = lora_st_find(st, "lengths");
	CHECK(ids && lab && len);
	cpu = open_fixture(model, q, checkpoint, 0);
	gpu = open_fixture(model, q, checkpoint, 1);
	if (ids && lab && len && cpu && gpu) {
		b.B = (int)ids->shape[0];
		b.T = (int)ids->shape[1];
		b.ids = (const int32_t *)ids->data;
		b.labels = (const int32_t *)lab->data;
		b.len = (const int32_t *)len->data;
		cpu->lcfg.dropout = gpu->lcfg.dropout = dropout;
		if (dropout == 0) {
			/* against torch: the loss and each gradient */
			struct lora_fb_result r;
			snprintf(rel, sizeof(rel), "%s.loss", qn);
			lt = lora_st_find(st, rel);
			lora_net_zero_grad(gpu);
			CHECKF(lora_net_forward_backward(gpu, &b, 0, &r, &err) == 0, "%s: %s", what, err.msg);
			if (lt) {
				const double ref = *(const double *)lt->data, e = fabs(r.loss - ref) / ref;
				CHECKF(e <= 1e-5, "%s: loss %.9g, torch %.9g", what, r.loss, ref);
				worst_ref_loss = e > worst_ref_loss ? e : worst_ref_loss;
			}
			for (int l = 0; l < gpu->L; l++)
				for (int t = 0; t < LORA_NTARGET; t++) {
					const struct lora_mod *m = lora_net_mod(gpu, l, (enum lora_target)t);
					const struct lora_linear *lin = &gpu->blocks[l].lin[t];
					char mod[128], name[256];

					if (!m)
						continue;
					lora_net_module_name(gpu, mod, sizeof(mod), l, (enum lora_target)t);
					for (int ab = 0; ab < 2; ab++) {
						const size_t n = ab ? (size_t)lin->w.rows * m->r : (size_t)m->r * lin->w.cols;
						const struct lora_st_tensor *g;
						double e;

						snprintf(name, sizeof(name), "%s.grad.%s.lora_%c.weight", qn, mod, ab ? 'B' : 'A');
						g = lora_st_find(st, name);
						CHECKF(g && g->nelem == n, "fixture %s", name);
						if (!g || g->nelem != n)
							continue;
						e = rel_norm(gpu->grads + (ab ? m->b_off : m->a_off), (const float *)g->data, n);
						CHECKF(e <= 1e-5, "%s %s: gradient off torch by %.3g", what, name, e);
						worst_ref_grad = e > worst_ref_grad ? e : worst_ref_grad;
					}
				}
		}
		compare(what, cpu, gpu, &b);
		/* another shape on the same nets (buffers re-laid): T = 1, one row with no label */
		{
			static const int32_t one[2] = {5, 9};
			struct lora_batch b1 = {2, 1, one, NULL, NULL};
			snprintf(what + strlen(what), sizeof(what) - strlen(what), " T=1");
			compare(what, cpu, gpu, &b1);
		}
		{
			static const int32_t three[3] = {7, 3, 11};
			struct lora_batch b3 = {1, 3, three, NULL, NULL};
			snprintf(what + strlen(what), sizeof(what) - strlen(what), " T=3");
			compare(what, cpu, gpu, &b3);
		}
	}
	lora_net_close(cpu);
	lora_net_close(gpu);
	lora_st_close(st);
}

TEST(llama_tied_none) { check_fixture("llama_tied", LORA_QUANT_NONE, 0, 0); }
TEST(llama_tied_nf4) { check_fixture("llama_tied", LORA_QUANT_NF4, 0, 0); }
TEST(llama3_rope_untied_none) { check_fixture("llama3_untied", LORA_QUANT_NONE, 0, 0); }
TEST(llama3_rope_untied_nf4) { check_fixture("llama3_untied", LORA_QUANT_NF4, 0, 0); }
TEST(qwen2_biases_none) { check_fixture("qwen2", LORA_QUANT_NONE, 0, 0); }
TEST(qwen2_biases_nf4) { check_fixture("qwen2", LORA_QUANT_NF4, 0, 0); }
TEST(mistral_window_none) { check_fixture("mistral_window", LORA_QUANT_NONE, 0, 0); }
TEST(mistral_window_nf4) { check_fixture("mistral_window", LORA_QUANT_NF4, 0, 0); }
TEST(llama32_tied_llama3_rope_nf4) { check_fixture("families/llama32_tied", LORA_QUANT_NF4, 0, 0); }
TEST(checkpointing_nf4) { check_fixture("mistral_window", LORA_QUANT_NF4, 1, 0); }
TEST(dropout_same_masks) { check_fixture("qwen2", LORA_QUANT_NF4, 0, 0.1); }
TEST(dropout_checkpointing) { check_fixture("llama_tied", LORA_QUANT_NF4, 1, 0.1); }
TEST(qwen3_qk_norm_none) { check_fixture("families/qwen3", LORA_QUANT_NONE, 0, 0); }
TEST(qwen3_qk_norm_nf4) { check_fixture("families/qwen3", LORA_QUANT_NF4, 0, 0); }
TEST(gemma2_softcap_gelu_post_norms_none) { check_fixture("families/gemma2", LORA_QUANT_NONE, 0, 0); }
TEST(gemma2_softcap_gelu_post_norms_nf4) { check_fixture("families/gemma2", LORA_QUANT_NF4, 0, 0); }
TEST(gemma2_checkpointing_dropout) { check_fixture("families/gemma2", LORA_QUANT_NF4, 1, 0.1); }
TEST(gemma3_local_rope_qk_norm_none) { check_fixture("families/gemma3", LORA_QUANT_NONE, 0, 0); }
TEST(gemma3_local_rope_qk_norm_nf4) { check_fixture("families/gemma3", LORA_QUANT_NF4, 0, 0); }
TEST(phi3_fused_none) { check_fixture("families/phi3", LORA_QUANT_NONE, 0, 0); }
TEST(phi3_fused_nf4) { check_fixture("families/phi3", LORA_QUANT_NF4, 0, 0); }

/*
 * Odd shapes from mktiny (beside this binary in ../tools): C 40, F 72, V 97,
 * head_dim 8; GQA ratio 1 (5 heads, 5 KV) and 5 (5 heads, 1 KV); a batch of
 * 3 rows of 7 with lengths 7, 4, 1 (padding rows, one with no label); a
 * sliding window and q/k/v biases put on the nets by hand.
 */
static void check_odd(int kv, int tied, int window, int bias)
{
	char dir[256], cmd[PATH_MAX + 1024], what[128];
	struct lora_net *cpu, *gpu;
	int32_t ids[21], len[3] = {7, 4, 1};

	if (!K) {
		CHECKF(0, "no CUDA plugin");
		return;
	}
	snprintf(dir, sizeof(dir), "%s/lora-test-mc-%d-%d-%d", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
		 (int)getpid(), kv, tied);
	snprintf(cmd, sizeof(cmd),
		 "ASAN_OPTIONS=detect_leaks=0 '%s/mktiny' model '%s' --hidden 40 --inter 72 --layers 2 --heads 5 "
		 "--kv-heads %d --vocab 97 --seed 11 %s >/dev/null",
		 tools, dir, kv, tied ? "--tied" : "");
	CHECKF(system(cmd) == 0, "%s", cmd);
	snprintf(what, sizeof(what), "odd kv=%d%s%s%s", kv, tied ? " tied" : "", window ? " window" : "",
		 bias ? " bias" : "");
	for (int i = 0; i < 21; i++)
		ids[i] = (int32_t)((i * 37 + 5) % 97);
	for (int q = 0; q < 2; q++) {
		cpu = open_dir(dir, q ? LORA_QUANT_NF4 : LORA_QUANT_NONE, 0, NULL, 0);
		gpu = open_dir(dir, q ? LORA_QUANT_NF4 : LORA_QUANT_NONE, 0, NULL, 1);
		if (cpu && gpu) {
			struct lora_batch b = {3, 7, ids, NULL, len};

			for (int l = 0; l < cpu->L; l++) {
				cpu->blocks[l].window = gpu->blocks[l].window = window;
				for (int t = 0; bias && t <= LORA_T_V; t++) {
					const int rows = cpu->blocks[l].lin[t].w.rows;
					float *b1 = malloc(sizeof(float) * rows), *b2 = malloc(sizeof(float) * rows);
					for (int i = 0; i < rows; i++)
						b1[i] = b2[i] = (float)((i * 13 + t) % 11) * 0.05f - 0.25f;
					cpu->blocks[l].lin[t].bias = b1;
					gpu->blocks[l].lin[t].bias = b2;
				}
			}
			compare(what, cpu, gpu, &b);
		}
		lora_net_close(cpu);
		lora_net_close(gpu);
	}
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	CHECK(system(cmd) == 0);
}

TEST(odd_gqa1) { check_odd(5, 0, 0, 0); }
TEST(odd_gqa5_tied) { check_odd(1, 1, 0, 0); }
TEST(odd_window_bias) { check_odd(1, 0, 3, 1); }

/* What the backend does not compute is refused by name, not computed wrongly. */
TEST(refuses_unsupported)
{
	struct lora_net *net;
	struct lora_err err;

	if (!K) {
		CHECKF(0, "no CUDA plugin");
		return;
	}
	/* the one thing left: a head_dim the attention kernels do not take (D <= 128, even); the
	 * field is only read by the check, and put back before the net is closed */
	if (!(net = open_fixture("families/qwen3", LORA_QUANT_NONE, 0, 0)))
		return;
	net->D += 1;
	CHECK(lora_cuda_attach(net, K, &err) < 0);
	CHECKF(strstr(err.msg, "head_dim") != NULL, "%s", err.msg);
	CHECK(net->be == &lora_backend_cpu);
	net->D -= 1;
	lora_net_close(net);
}

/* ------------------------------------------------------------ the trainer across devices */

static char tmp[256], data[300], base[300];
static double step_loss[2][21];   /* [run][step] */
static int run_ix;
static volatile sig_atomic_t stop;
static long stop_after;
static long poison_after;   /* a NaN into the parameters after this step (ud: the trainer) */

static void on_progress(const struct lora_train_progress *p, void *ud)
{
	if (ud && p->ev == LORA_EV_STEP && p->step == poison_after)
		lora_trainer_net(ud)->params[0] = NAN;
	if (p->ev != LORA_EV_STEP || p->step < 1 || p->step > 20)
		return;
	step_loss[run_ix][p->step] = p->loss;
	if (p->step == stop_after)
		stop = 1;
}

static void train_opts(struct lora_train_opts *o, const char *work, const char *device)
{
	lora_train_opts_defaults(o);
	o->base_dir = base;
	o->data_path = data;
	o->lora.rank = 4;
	o->lora.alpha = 8;
	o->lora.dropout = 0.1;   /* the masks' step counter must come back on the other device too */
	o->optim.lr = 5e-3;
	o->steps = 20;
	o->batch = 2;
	o->grad_accum = 2;
	o->seq_len = 16;
	o->save_every = 100;
	o->eval_every = 100;
	o->threads = 1;
	o->device = device;
	o->cuda_plugin = plugin_path;
	o->work_dir = work;
}

/*
 * 20 steps on the CPU, against 10 on the CPU, stopped (a checkpoint), and
 * resumed with --device cuda for the other 10.  Steps 1-10 are the same
 * computation (equal); steps 11-20 ran on the device: per-step loss within
 * 1e-5 relative (one step's loss differs by the summation order of its
 * forward, ~1e-7 measured, plus what earlier steps' updates moved), and the
 * final parameters within 1e-4 relative norm-wise: AdamW's step is lr·m/√v,
 * insensitive to a gradient's scale, so a relative gradient error of ~1e-6
 * moves each update by about as much, except for elements whose gradient is
 * near 0, where it is noisy; ten steps of lr 5e-3 leave ~1e-6..1e-5
 * relative (measured below), and a broken backend moves them by 1e-2 or more.
 */
TEST(resume_cpu_checkpoint_on_cuda)
{
	char wa[300], wb[300];
	struct lora_train_opts o;
	struct lora_trainer *tr = NULL;
	struct lora_err err = { 0 };
	float *want = NULL;
	size_t n = 0;
	double worst = 0, e;

	if (!K) {
		CHECKF(0, "no CUDA plugin");
		return;
	}
	snprintf(wa, sizeof(wa), "%s/whole", tmp);
	snprintf(wb, sizeof(wb), "%s/moved", tmp);
	train_opts(&o, wa, "cpu");
	run_ix = 0;
	stop = 0;
	stop_after = 0;
	CHECKF(lora_trainer_open(&tr, &o, &err) == 0, "%s", err.msg);
	if (!tr)
		return;
	CHECKF(lora_trainer_run(tr, on_progress, NULL, &stop, &err) == 0, "%s", err.msg);
	n = lora_trainer_net(tr)->n_params;
	want = malloc(n * sizeof(float));
	memcpy(want, lora_trainer_net(tr)->params, n * sizeof(float));
	lora_trainer_close(tr);

	run_ix = 1;
	stop_after = 10;
	train_opts(&o, wb, "cpu");
	tr = NULL;
	CHECKF(lora_trainer_open(&tr, &o, &err) == 0, "%s", err.msg);
	if (tr) {
		CHECK(lora_trainer_run(tr, on_progress, NULL, &stop, &err) == 1);
		CHECK(!strcmp(lora_trainer_info(tr)->device, "cpu"));
		lora_trainer_close(tr);
	}
	stop = 0;
	stop_after = 0;
	train_opts(&o, wb, "cuda");
	o.resume = 1;
	tr = NULL;
	CHECKF(lora_trainer_open(&tr, &o, &err) == 0, "%s", err.msg);
	if (tr) {
		CHECK(lora_trainer_info(tr)->start_step == 10);
		CHECK(!strcmp(lora_trainer_info(tr)->device, "cuda"));
		CHECK(lora_trainer_net(tr)->be == &lora_backend_cuda);
		CHECKF(lora_trainer_run(tr, on_progress, NULL, &stop, &err) == 0, "%s", err.msg);
		CHECK(lora_trainer_net(tr)->n_params == n);
		if (lora_trainer_net(tr)->n_params == n) {
			e = rel_norm(lora_trainer_net(tr)->params, want, n);
			printf("  resumed on cuda: parameters %.3g off the CPU run (norm-wise)\n", e);
			CHECKF(e <= 1e-4, "resumed parameters differ by %.3g", e);
			CHECK(e > 0);   /* the second half did run on the other backend */
		}
		lora_trainer_close(tr);
	}
	for (int s = 1; s <= 20; s++) {
		e = fabs(step_loss[1][s] - step_loss[0][s]) / step_loss[0][s];
		CHECKF(s > 10 || e == 0, "step %d on the cpu: %.9g vs %.9g", s, step_loss[1][s], step_loss[0][s]);
		CHECKF(e <= 1e-5, "step %d: loss %.9g on cuda, %.9g on cpu", s, step_loss[1][s], step_loss[0][s]);
		worst = e > worst ? e : worst;
	}
	printf("  per-step loss, cuda after resume vs cpu: at most %.3g relative\n", worst);
	free(want);
}

/* A NaN on the device stops the run as on the CPU: the last good checkpoint kept, and resumable. */
TEST(nan_on_cuda_stops_at_the_last_good_checkpoint)
{
	char w[300];
	struct lora_train_opts o;
	struct lora_trainer *tr = NULL;
	struct lora_err err = { 0 };

	if (!K) {
		CHECKF(0, "no CUDA plugin");
		return;
	}
	snprintf(w, sizeof(w), "%s/nan", tmp);
	train_opts(&o, w, "cuda");
	o.steps = 6;
	o.save_every = 2;
	run_ix = 0;
	stop = 0;
	stop_after = 0;
	poison_after = 3;
	CHECKF(lora_trainer_open(&tr, &o, &err) == 0, "%s", err.msg);
	if (tr) {
		CHECK(lora_trainer_run(tr, on_progress, tr, &stop, &err) < 0);
		/* A[0] of the first module is NaN: the loss stays finite (the CPU trainer says the same),
		 * the gradient norm, computed on the device (grad_norm), is not */
		CHECKF(strstr(err.msg, "the gradient norm is nan at step 4") != NULL, "%s", err.msg);
		CHECKF(strstr(err.msg, "last good checkpoint (step 2)") != NULL, "%s", err.msg);
		lora_trainer_close(tr);
	}
	poison_after = 0;
	o.resume = 1;
	tr = NULL;
	CHECKF(lora_trainer_open(&tr, &o, &err) == 0, "%s", err.msg);
	CHECK(tr && lora_trainer_info(tr)->start_step == 2);
	CHECK(tr && lora_trainer_run(tr, on_progress, NULL, &stop, &err) == 0);
	CHECK(tr && isfinite(lora_trainer_net(tr)->params[0]));
	lora_trainer_close(tr);
}

int main(void)
{
	const char *t = getenv("TMPDIR");
	char *b = t_fixture("train/llama_tied");
	FILE *f;

	find_plugin();
	snprintf(tmp, sizeof(tmp), "%s/lora-model-cuda.XXXXXX", t && *t ? t : "/tmp");
	if (!mkdtemp(tmp) || !realpath(b, base)) {
		printf("FAIL model_cuda_setup\n");
		return 1;
	}
	free(b);
	/* 40 rows counting up by one (mod 125, ids 3..127), 8 to 20 tokens */
	snprintf(data, sizeof(data), "%s/count.jsonl", tmp);
	f = fopen(data, "w");
	for (int r = 0; f && r < 40; r++) {
		int a = 3 + (r * 37) % 125, n = 8 + (r * 7) % 13;
		fprintf(f, "{\"input_ids\": [");
		for (int k = 0; k < n; k++)
			fprintf(f, "%s%d", k ? ", " : "", 3 + (a - 3 + k) % 125);
		fprintf(f, "]}\n");
	}
	if (!f || fclose(f)) {
		printf("FAIL model_cuda_data\n");
		return 1;
	}
	RUN(llama_tied_none);
	RUN(llama_tied_nf4);
	RUN(llama3_rope_untied_none);
	RUN(llama3_rope_untied_nf4);
	RUN(qwen2_biases_none);
	RUN(qwen2_biases_nf4);
	RUN(mistral_window_none);
	RUN(mistral_window_nf4);
	RUN(llama32_tied_llama3_rope_nf4);
	RUN(checkpointing_nf4);
	RUN(dropout_same_masks);
	RUN(dropout_checkpointing);
	RUN(qwen3_qk_norm_none);
	RUN(qwen3_qk_norm_nf4);
	RUN(gemma2_softcap_gelu_post_norms_none);
	RUN(gemma2_softcap_gelu_post_norms_nf4);
	RUN(gemma2_checkpointing_dropout);
	RUN(gemma3_local_rope_qk_norm_none);
	RUN(gemma3_local_rope_qk_norm_nf4);
	RUN(phi3_fused_none);
	RUN(phi3_fused_nf4);
	RUN(odd_gqa1);
	RUN(odd_gqa5_tied);
	RUN(odd_window_bias);
	RUN(refuses_unsupported);
	RUN(resume_cpu_checkpoint_on_cuda);
	RUN(nan_on_cuda_stops_at_the_last_good_checkpoint);
	lora_rm_rf(tmp, NULL);
	printf("  worst cuda vs cpu: loss %.3g relative, logits %.3g absolute, gradients %.3g norm-wise\n",
	       worst_loss, worst_logit, worst_grad);
	printf("  worst cuda vs torch: loss %.3g relative, gradients %.3g norm-wise\n", worst_ref_loss,
	       worst_ref_grad);
	return t_done();
}
