/*
 * test_plan.c - `lora plan`'s memory model against what the CPU trainer
 * really takes, and its arithmetic against published figures.
 *
 * What is measured.  A child process (fork) resets its peak resident set
 * (writing 5 to /proc/self/clear_refs), notes its resident set, then does
 * what one training step of the CPU trainer does: lora_net_open (NF4 or as
 * stored), fresh LoRA, AdamW state, zero_grad, forward_backward, gradient
 * clipping, an AdamW step.  Two figures come back:
 *   - peak RSS: VmHWM at the end less VmRSS at the start: every page the
 *     step touched, the trainer's heap and the mapped model file alike
 *     (what `top` and /usr/bin/time show a user);
 *   - heap: glibc's count of bytes in use (mallinfo2: arena + mmap'd
 *     chunks) after the step less before: the trainer's own allocations,
 *     touched or not.
 * lora_plan_compute(device cpu), less the program's own pages
 * (LORA_PLAN_CPU_PROGRAM, resident before the step), must be within 15% of the first (the issue's
 * bound; a few % is expected, the rest being program pages and BLAS buffers
 * that the plan does not count) and within 2% of the second (the arithmetic
 * of every buffer in model_cpu.c's layout(), so any drift shows here first).
 * Under AddressSanitizer both are meaningless (shadow memory, its own
 * allocator): the step still runs, the comparisons are skipped.
 */
#include <fcntl.h>
#include <malloc.h>
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "libadapter/base/dtype.h"
#include "libadapter/base/fsutil.h"
#include "libadapter/format/modeldir.h"
#include "libadapter/format/safetensors.h"
#include "train/net.h"
#include "train/optim.h"
#include "train/plan.h"
#include "tests/t.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

static char tmpdir[] = "/tmp/lora-test-plan-XXXXXX";

/* ------------------------------------------------------------ a model on disk */

struct mdims {
	int C, F, L, H, KV, V, tied;
	int qwen3;                 /* Qwen3ForCausalLM: per-head q_norm / k_norm tensors too */
	int phi3;                  /* Phi3ForCausalLM: qkv_proj and gate_up_proj fused */
	int gemma2;                /* Gemma2ForCausalLM: pre/post feed-forward norms too */
	int gemma3;                /* Gemma3ForCausalLM: those, q/k norms, two RoPE bases */
};

static uint64_t rng = 0x243f6a8885a308d3ull;
static uint16_t rand_bf16(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return lora_f32_to_bf16((float)((double)(rng >> 11) * 0x1p-53 - 0.5) * 0.08f);
}

/* A Llama model with random bf16 weights in dir. */
static int write_model(const char *dir, const struct mdims *d)
{
	const int D = d->C / d->H, HD = d->H * D, KVD = d->KV * D;
	const int rows[7] = {HD, KVD, KVD, d->C, d->F, d->F, d->C};
	const int cols[7] = {d->C, d->C, d->C, HD, d->C, d->C, d->F};
	static const char *const lin[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
					   "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
					   "mlp.down_proj"};
	struct lora_st_spec specs[512];
	char names[512][96], cfg[2048], *path;
	size_t n = 0;
	struct lora_st_writer w;
	struct lora_err err;
	uint16_t *buf;
	int rc = -1;

	snprintf(names[n], sizeof(names[n]), "model.embed_tokens.weight");
	specs[n] = (struct lora_st_spec){names[n], LORA_DT_BF16, 2, {(uint64_t)d->V, (uint64_t)d->C}};
	n++;
	for (int l = 0; l < d->L; l++) {
		snprintf(names[n], sizeof(names[n]), "model.layers.%d.input_layernorm.weight", l);
		specs[n] = (struct lora_st_spec){names[n], LORA_DT_BF16, 1, {(uint64_t)d->C}};
		n++;
		snprintf(names[n], sizeof(names[n]), "model.layers.%d.post_attention_layernorm.weight", l);
		specs[n] = (struct lora_st_spec){names[n], LORA_DT_BF16, 1, {(uint64_t)d->C}};
		n++;
		for (int pf = 0; (d->gemma2 || d->gemma3) && pf < 2; pf++) {
			snprintf(names[n], sizeof(names[n]), "model.layers.%d.%s_feedforward_layernorm.weight", l,
				 pf ? "post" : "pre");
			specs[n] = (struct lora_st_spec){names[n], LORA_DT_BF16, 1, {(uint64_t)d->C}};
			n++;
		}
		for (int qk = 0; (d->qwen3 || d->gemma3) && qk < 2; qk++) {
			snprintf(names[n], sizeof(names[n]), "model.layers.%d.self_attn.%c_norm.weight", l,
				 qk ? 'k' : 'q');
			specs[n] = (struct lora_st_spec){names[n], LORA_DT_BF16, 1, {(uint64_t)D}};
			n++;
		}
		for (int t = 0; t < 7; t++) {
			const char *name = lin[t];
			int r = rows[t];

			if (d->phi3 && (t == 1 || t == 2 || t == 5))
				continue;   /* inside qkv_proj / gate_up_proj */
			if (d->phi3 && t == 0) {
				name = "self_attn.qkv_proj";
				r = HD + 2 * KVD;
			} else if (d->phi3 && t == 4) {
				name = "mlp.gate_up_proj";
				r = 2 * d->F;
			}
			snprintf(names[n], sizeof(names[n]), "model.layers.%d.%s.weight", l, name);
			specs[n] = (struct lora_st_spec){names[n], LORA_DT_BF16, 2, {(uint64_t)r, (uint64_t)cols[t]}};
			n++;
		}
	}
	snprintf(names[n], sizeof(names[n]), "model.norm.weight");
	specs[n] = (struct lora_st_spec){names[n], LORA_DT_BF16, 1, {(uint64_t)d->C}};
	n++;
	if (!d->tied) {
		snprintf(names[n], sizeof(names[n]), "lm_head.weight");
		specs[n] = (struct lora_st_spec){names[n], LORA_DT_BF16, 2, {(uint64_t)d->V, (uint64_t)d->C}};
		n++;
	}
	path = lora_path_join(dir, "model.safetensors");
	buf = malloc(sizeof(uint16_t) * (size_t)d->V * (size_t)(d->C > d->F ? d->C : d->F));
	if (!path || !buf || lora_st_writer_open(&w, path, specs, n, NULL, NULL, 0, &err) < 0)
		goto out;
	for (size_t i = 0; i < n; i++) {
		const size_t k = specs[i].ndim == 1 ? specs[i].shape[0] : specs[i].shape[0] * specs[i].shape[1];
		for (size_t j = 0; j < k; j++)
			buf[j] = specs[i].ndim == 1 ? 0x3f80 : rand_bf16();   /* norms 1.0 */
		if (lora_st_writer_write(&w, buf, k * 2, &err) < 0) {
			lora_st_writer_abort(&w);
			goto out;
		}
	}
	if (lora_st_writer_commit(&w, &err) < 0)
		goto out;
	free(path);
	path = lora_path_join(dir, "config.json");
	snprintf(cfg, sizeof(cfg),
		 "{\"architectures\": [\"%s\"], \"model_type\": \"%s\", \"hidden_size\": %d,"
		 " \"intermediate_size\": %d, \"num_hidden_layers\": %d, \"num_attention_heads\": %d,"
		 " \"num_key_value_heads\": %d, \"vocab_size\": %d, \"max_position_embeddings\": 4096,"
		 " \"rms_norm_eps\": 1e-5, \"tie_word_embeddings\": %s, \"torch_dtype\": \"bfloat16\"%s}\n",
		 d->qwen3 ? "Qwen3ForCausalLM" : d->phi3 ? "Phi3ForCausalLM" : d->gemma2 ? "Gemma2ForCausalLM"
		 : d->gemma3 ? "Gemma3ForCausalLM" : "LlamaForCausalLM",
		 d->qwen3 ? "qwen3" : d->phi3 ? "phi3" : d->gemma2 ? "gemma2" : d->gemma3 ? "gemma3_text" : "llama",
		 d->C, d->F,
		 d->L, d->H, d->KV, d->V, d->tied ? "true" : "false",
		 d->gemma2   ? ", \"attn_logit_softcapping\": 50.0, \"final_logit_softcapping\": 30.0"
		 : d->gemma3 ? ", \"rope_theta\": 1000000.0, \"rope_local_base_freq\": 10000.0, \"sliding_window\": 64, "
			       "\"layer_types\": [\"sliding_attention\", \"sliding_attention\", \"full_attention\", "
			       "\"sliding_attention\"]"
			     : "");
	rc = lora_write_file_atomic(path, cfg, strlen(cfg), 0644, &err);
out:
	if (rc)
		fprintf(stderr, "  write_model: %s\n", err.msg);
	free(buf);
	free(path);
	return rc;
}

/* ------------------------------------------------------------ measuring a step */

static long status_kb(const char *key)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long v = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, strlen(key)) && line[strlen(key)] == ':')
			v = strtol(line + strlen(key) + 1, NULL, 10);
	fclose(f);
	return v;
}

static uint64_t heap_in_use(void)
{
	struct mallinfo2 mi = mallinfo2();
	return (uint64_t)mi.uordblks + (uint64_t)mi.hblkhd;
}

struct measured {
	int ok;
	uint64_t rss, heap;
	char msg[1024];
};

struct run {
	const char *dir;
	enum lora_quant quant;
	int checkpoint, B, T;
	double dropout;
};

/* In the child: one training step; the figures go to fd. */
static void child_step(const struct run *r, int fd)
{
	struct measured m = {0};
	struct lora_err err = {0};
	struct lora_net_opts o;
	struct lora_net *net = NULL;
	struct lora_cfg lc;
	struct lora_adamw opt = {0};
	struct lora_optim_cfg oc;
	struct lora_fb_result res;
	int32_t *ids = NULL;
	long rss0, hwm;
	uint64_t heap0;
	int cr = open("/proc/self/clear_refs", O_WRONLY);

	if (cr < 0 || write(cr, "5", 1) != 1) {
		snprintf(m.msg, sizeof(m.msg), "cannot reset the peak RSS through /proc/self/clear_refs");
		goto out;
	}
	close(cr);
	rss0 = status_kb("VmRSS");
	heap0 = heap_in_use();
	lora_net_opts_defaults(&o);
	o.quant = r->quant;
	o.checkpoint = r->checkpoint;
	o.threads = 1;
	lora_cfg_defaults(&lc);
	lc.dropout = r->dropout;
	lora_optim_defaults(&oc);
	if (lora_net_open(&net, r->dir, &o, &err) < 0 || lora_net_init_lora(net, &lc, &err) < 0 ||
	    lora_adamw_init(&opt, net->n_params, &err) < 0 ||
	    !(ids = malloc(sizeof(int32_t) * (size_t)r->B * (size_t)r->T))) {
		snprintf(m.msg, sizeof(m.msg), "%s", err.msg);
		goto out;
	}
	for (int i = 0; i < r->B * r->T; i++)
		ids[i] = (int32_t)(((uint64_t)i * 7919u) % (uint64_t)net->V);
	{
		struct lora_batch b = {r->B, r->T, ids, NULL, NULL};

		lora_net_zero_grad(net);
		if (lora_net_forward_backward(net, &b, 0, &res, &err) < 0) {
			snprintf(m.msg, sizeof(m.msg), "%s", err.msg);
			goto out;
		}
	}
	lora_clip_grad_norm(net->grads, net->n_params, oc.max_grad_norm);
	lora_adamw_step(&opt, &oc, net->params, net->grads, oc.lr);
	hwm = status_kb("VmHWM");
	m.heap = heap_in_use() - heap0 - sizeof(int32_t) * (uint64_t)r->B * (uint64_t)r->T;
	m.rss = (uint64_t)(hwm - rss0) * 1024;
	m.ok = rss0 > 0 && hwm > 0;
out:
	if (write(fd, &m, sizeof(m)) != sizeof(m))
		_exit(1);
	_exit(0);
}

static int measure(const struct run *r, struct measured *m)
{
	int p[2], st;
	pid_t pid;

	memset(m, 0, sizeof(*m));
	if (pipe(p) < 0)
		return -1;
	fflush(NULL);
	if ((pid = fork()) < 0)
		return -1;
	if (pid == 0) {
		close(p[0]);
		child_step(r, p[1]);
	}
	close(p[1]);
	if (read(p[0], m, sizeof(*m)) != (ssize_t)sizeof(*m))
		m->ok = 0;
	close(p[0]);
	waitpid(pid, &st, 0);
	return m->ok ? 0 : -1;
}

/* The lora binary's own resident size (0: plan's default), measured by check_lora_train. */
static uint64_t program_bytes;

static int plan_for(const char *dir, const struct run *r, struct lora_plan *p)
{
	struct lora_model *mdl;
	struct lora_plan_shape s;
	struct lora_plan_opts o;
	struct lora_err err;
	int rc;

	if (lora_model_open(dir, 1, &mdl, &err) < 0)
		return -1;
	rc = lora_plan_shape_from_model(mdl, &s, &err);
	lora_model_close(mdl);
	if (rc < 0)
		return -1;
	lora_plan_opts_defaults(&o);
	o.device = LORA_PLAN_CPU;
	o.batch = r->B;
	o.seq_len = r->T;
	o.checkpoint = r->checkpoint;
	o.dropout = r->dropout;
	o.quant_nf4 = r->quant == LORA_QUANT_NF4;
	o.program_bytes = program_bytes;
	lora_plan_compute(&s, &o, p);
	return 0;
}

static void check_run(const char *dir, const struct run *r)
{
	struct measured m;
	struct lora_plan p;
	const struct lora_plan_col *c;
	double rr, hr;

	CHECK(plan_for(dir, r, &p) == 0);
	c = &p.col[r->quant == LORA_QUANT_NF4 ? LORA_PLAN_QLORA : LORA_PLAN_LORA];
	CHECKF(measure(r, &m) == 0, "%s", m.msg);
	if (!m.ok)
		return;
	if (UNDER_ASAN) {
		printf("  (AddressSanitizer: its shadow memory and allocator make both figures meaningless; "
		       "not compared)\n");
		return;
	}
	/* the delta leaves out what was resident before the step: the program */
	rr = (double)(c->total - LORA_PLAN_CPU_PROGRAM) / (double)m.rss;
	hr = (double)c->heap / (double)m.heap;
	printf("  %-4s ckpt %d B %d T %4d dropout %.2f: plan %8.2f MiB, peak RSS %8.2f MiB (x%.3f); "
	       "plan heap %8.2f MiB, heap %8.2f MiB (x%.4f)\n",
	       r->quant == LORA_QUANT_NF4 ? "nf4" : "none", r->checkpoint, r->B, r->T, r->dropout,
	       (c->total - LORA_PLAN_CPU_PROGRAM) / 1048576.0, m.rss / 1048576.0, rr, c->heap / 1048576.0,
	       m.heap / 1048576.0, hr);
	CHECK_NEAR(c->total - LORA_PLAN_CPU_PROGRAM, m.rss, 0, 0.15);
	CHECK_NEAR(c->heap, m.heap, 0, 0.02);
}

/* ------------------------------------------------------------ lora train itself */

/* Run argv with env LORA_HOME=home, stdout/stderr to /dev/null; its peak RSS in bytes, or 0. */
static uint64_t child_maxrss(char *const argv[], const char *home, int *status)
{
	struct rusage ru;
	pid_t pid;

	fflush(NULL);
	if ((pid = fork()) < 0)
		return 0;
	if (pid == 0) {
		int fd = open("/dev/null", O_WRONLY);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		setenv("LORA_HOME", home, 1);
		execv(argv[0], argv);
		_exit(127);
	}
	if (wait4(pid, status, 0, &ru) != pid)
		return 0;
	return (uint64_t)ru.ru_maxrss * 1024;
}

/*
 * The acceptance figure: `lora train` on the CPU, whole process, against
 * `lora plan --device cpu` for the same run.  Needs $LORA (make check sets it).
 */
static void check_lora_train(const char *dir, int quant_nf4, int ckpt)
{
	const char *lora = getenv("LORA");
	char home[128], data[128], name[32];
	char *kg[] = {(char *)lora, "keygen", "--name", "t", NULL};
	char *tr[24];
	struct run r = {dir, quant_nf4 ? LORA_QUANT_NF4 : LORA_QUANT_NONE, ckpt, 2, 192, 0.05};
	struct lora_plan p;
	const struct lora_plan_col *c;
	uint64_t rss;
	int st, n = 0;
	FILE *f;

	snprintf(home, sizeof(home), "%s/store", tmpdir);
	snprintf(data, sizeof(data), "%s/rows.jsonl", tmpdir);
	if (!(f = fopen(data, "r"))) {   /* 64 rows of 200 token ids */
		CHECK((f = fopen(data, "w")) != NULL);
		if (!f)
			return;
		for (int i = 0; i < 64; i++) {
			fputs("{\"input_ids\": [", f);
			for (int j = 0; j < 200; j++)
				fprintf(f, "%s%u", j ? ", " : "", (unsigned)((i * 7919u + j * 104729u) % 4093u) + 3);
			fputs("]}\n", f);
		}
		CHECK(fclose(f) == 0);
		CHECK(child_maxrss(kg, home, &st) > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
	} else {
		fclose(f);
	}
	snprintf(name, sizeof(name), "m%d%d:v1", quant_nf4, ckpt);
	tr[n++] = (char *)lora;
	tr[n++] = "train";
	tr[n++] = "--base";
	tr[n++] = (char *)dir;
	tr[n++] = "--data";
	tr[n++] = data;
	tr[n++] = "--name";
	tr[n++] = name;
	tr[n++] = "--steps";
	tr[n++] = "2";
	tr[n++] = "--batch";
	tr[n++] = "2";
	tr[n++] = "--grad-accum";
	tr[n++] = "1";
	tr[n++] = "--seq-len";
	tr[n++] = "192";
	tr[n++] = "--threads";
	tr[n++] = "1";
	tr[n++] = "--quant";
	tr[n++] = quant_nf4 ? "nf4" : "none";
	if (ckpt)
		tr[n++] = "--grad-checkpoint";
	tr[n] = NULL;
	{
		/* What the binary itself keeps resident (a CUDA build maps large libraries);
		 * `lora plan` measures the same of itself. */
		char *hp[] = {(char *)lora, "help", NULL};
		int hs;
		program_bytes = child_maxrss(hp, home, &hs);
	}
	rss = child_maxrss(tr, home, &st);
	CHECKF(rss > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "lora train exited with status %d", st);
	if (!rss || plan_for(dir, &r, &p) < 0) {
		program_bytes = 0;
		return;
	}
	program_bytes = 0;
	c = &p.col[quant_nf4 ? LORA_PLAN_QLORA : LORA_PLAN_LORA];
	printf("  lora train --quant %s%s: plan %.2f MiB, peak RSS of the process %.2f MiB (x%.3f)\n",
	       quant_nf4 ? "nf4" : "none", ckpt ? " --grad-checkpoint" : "", c->total / 1048576.0,
	       rss / 1048576.0, (double)c->total / (double)rss);
	if (!UNDER_ASAN)
		CHECK_NEAR(c->total, rss, 0, 0.15);
}

/* ------------------------------------------------------------ tests */

TEST(cpu_plan_matches_a_measured_step)
{
	static const struct mdims d = {256, 704, 4, 8, 4, 4096, 0, 0, 0, 0, 0};
	char dir[64];

	snprintf(dir, sizeof(dir), "%s/untied", tmpdir);
	CHECK(lora_mkdir_p(dir, 0755, NULL) == 0);
	if (write_model(dir, &d) < 0) {
		CHECK(0);
		return;
	}
	for (int q = 0; q < 2; q++)
		for (int ck = 0; ck < 2; ck++) {
			struct run r = {dir, q ? LORA_QUANT_NF4 : LORA_QUANT_NONE, ck, 2, 192, 0.05};
			check_run(dir, &r);
		}
	{
		struct run r = {dir, LORA_QUANT_NF4, 1, 1, 512, 0.0};   /* longer rows, no dropout */
		check_run(dir, &r);
	}
	if (!getenv("LORA")) {
		printf("  ($LORA not set: lora train itself not measured)\n");
		return;
	}
	for (int q = 0; q < 2; q++)
		for (int ck = 0; ck < 2; ck++)
			check_lora_train(dir, q, ck);
}

TEST(cpu_plan_tied_model)
{
	static const struct mdims d = {384, 1024, 2, 6, 2, 8192, 1, 0, 0, 0, 0};
	char dir[64];

	snprintf(dir, sizeof(dir), "%s/tied", tmpdir);
	CHECK(lora_mkdir_p(dir, 0755, NULL) == 0);
	if (write_model(dir, &d) < 0) {
		CHECK(0);
		return;
	}
	{
		struct run r = {dir, LORA_QUANT_NF4, 1, 4, 64, 0.05};
		check_run(dir, &r);
	}
}

/* Qwen3's per-head q/k norms keep q|k before the norm and 1/rms per head for backward. */
TEST(cpu_plan_qwen3)
{
	static const struct mdims d = {256, 704, 4, 8, 4, 4096, 0, 1, 0, 0, 0};
	char dir[64];

	snprintf(dir, sizeof(dir), "%s/qwen3", tmpdir);
	CHECK(lora_mkdir_p(dir, 0755, NULL) == 0);
	if (write_model(dir, &d) < 0) {
		CHECK(0);
		return;
	}
	for (int q = 0; q < 2; q++) {
		struct run r = {dir, q ? LORA_QUANT_NF4 : LORA_QUANT_NONE, 0, 2, 192, 0.05};
		check_run(dir, &r);
	}
}

/* Phi-3: one qkv_proj and one gate_up_proj a layer (fewer, wider LoRA modules; NF4 per fused tensor). */
TEST(cpu_plan_phi3)
{
	static const struct mdims d = {256, 704, 4, 8, 4, 4096, 0, 0, 1, 0, 0};
	char dir[64];

	snprintf(dir, sizeof(dir), "%s/phi3", tmpdir);
	CHECK(lora_mkdir_p(dir, 0755, NULL) == 0);
	if (write_model(dir, &d) < 0) {
		CHECK(0);
		return;
	}
	for (int q = 0; q < 2; q++) {
		struct run r = {dir, q ? LORA_QUANT_NF4 : LORA_QUANT_NONE, 0, 2, 192, 0.05};
		check_run(dir, &r);
	}
}

/* Gemma 2: post-attention and post-feed-forward norms keep their inputs; attention soft-capping
 * (transformers' default 50) keeps d capped / d score per thread. */
TEST(cpu_plan_gemma2)
{
	static const struct mdims d = {256, 704, 4, 8, 4, 4096, 1, 0, 0, 1, 0};
	char dir[64];

	snprintf(dir, sizeof(dir), "%s/gemma2", tmpdir);
	CHECK(lora_mkdir_p(dir, 0755, NULL) == 0);
	if (write_model(dir, &d) < 0) {
		CHECK(0);
		return;
	}
	for (int q = 0; q < 2; q++) {
		struct run r = {dir, q ? LORA_QUANT_NF4 : LORA_QUANT_NONE, 0, 2, 192, 0.05};
		check_run(dir, &r);
	}
}

/* Gemma 3: Gemma 2's norms, q/k norms, and the sliding layers' RoPE table. */
TEST(cpu_plan_gemma3)
{
	static const struct mdims d = {256, 704, 4, 8, 4, 4096, 1, 0, 0, 0, 1};
	char dir[64];

	snprintf(dir, sizeof(dir), "%s/gemma3", tmpdir);
	CHECK(lora_mkdir_p(dir, 0755, NULL) == 0);
	if (write_model(dir, &d) < 0) {
		CHECK(0);
		return;
	}
	for (int q = 0; q < 2; q++) {
		struct run r = {dir, q ? LORA_QUANT_NF4 : LORA_QUANT_NONE, 0, 2, 192, 0.05};
		check_run(dir, &r);
	}
}

static int llama3_8b(struct lora_plan_shape *s)
{
	char *path = t_fixture("plan/llama3_8b_config.json"), *text = NULL;
	size_t len;
	struct lora_model_config cfg;
	struct lora_err err;
	int rc = -1;

	if (lora_read_file(path, 1 << 20, &text, &len, &err) == 0 &&
	    lora_model_config_parse(text, len, path, &cfg, &err) == 0 &&
	    lora_plan_shape_from_config(&cfg, s, &err) == 0)
		rc = 0;
	else
		fprintf(stderr, "  %s\n", err.msg);
	free(text);
	free(path);
	return rc;
}

/* Figures anyone can check by hand for Meta-Llama-3-8B. */
TEST(llama3_8b_counts)
{
	struct lora_plan_shape s;
	struct lora_plan_opts o;
	struct lora_plan p;

	if (llama3_8b(&s) < 0) {
		CHECK(0);
		return;
	}
	/* 8,030,261,248 parameters: the count the model card's "8B" rounds */
	CHECK(s.n_params == 8030261248ull);
	/* 32 layers x (2·4096² + 2·4096·1024 + 3·4096·14336) in the decoder linears */
	CHECK(s.n_linear == 32ull * (2 * 4096ull * 4096 + 2 * 4096ull * 1024 + 3 * 4096ull * 14336));
	lora_plan_opts_defaults(&o);
	lora_plan_compute(&s, &o, &p);
	/* peft's print_trainable_parameters for r 16 on all linears: 41,943,040 */
	CHECK(p.n_lora == 41943040ull);
	CHECK(p.col[LORA_PLAN_QLORA].lora == 41943040ull * 4);
	CHECK(p.col[LORA_PLAN_QLORA].optim == 41943040ull * 8);
	/* bf16 base: 2 bytes a parameter; NF4 with double quantization: 4.127 bits a
	 * linear weight, embedding and lm_head kept in bf16 */
	CHECK(p.col[LORA_PLAN_LORA].weights == 8030261248ull * 2);
	CHECK_NEAR(p.col[LORA_PLAN_QLORA].weights, s.n_linear * (4.0 + 8.0 / 64 + 32.0 / (64 * 256)) / 8 +
		   (8030261248.0 - (double)s.n_linear) * 2, 64.0 * 32 * 7, 0);
	/* full fine-tuning in mixed precision: 16 bytes a parameter before activations */
	CHECK(p.col[LORA_PLAN_FULL].weights + p.col[LORA_PLAN_FULL].grads + p.col[LORA_PLAN_FULL].optim ==
	      8030261248ull * 16);
	/* checkpointing keeps one [N, C] bf16 input per layer instead of every layer's set */
	CHECK(p.col[LORA_PLAN_QLORA].acts_ckpt < p.col[LORA_PLAN_QLORA].acts_full / 5);
	CHECK(p.col[LORA_PLAN_QLORA].total < p.col[LORA_PLAN_LORA].total);
	CHECK(p.col[LORA_PLAN_LORA].total < p.col[LORA_PLAN_FULL].total);
	/* paged: the optimizer states may live on the host */
	CHECK(p.col[LORA_PLAN_QLORA].total_min == p.col[LORA_PLAN_QLORA].total - p.col[LORA_PLAN_QLORA].optim);
}

TEST(fit_is_the_largest_that_fits)
{
	struct lora_plan_shape s;
	struct lora_plan_opts o;

	if (llama3_8b(&s) < 0) {
		CHECK(0);
		return;
	}
	lora_plan_opts_defaults(&o);
	for (int dev = 0; dev < 2; dev++)
		for (int m = 0; m < LORA_PLAN_NMETHOD; m++) {
			const uint64_t limit = (uint64_t)24 << 30;
			struct lora_plan p;
			int T, B;

			o.device = dev ? LORA_PLAN_CUDA : LORA_PLAN_CPU;
			lora_plan_fit(&s, &o, (enum lora_plan_method)m, limit, &T, &B);
			if (m == LORA_PLAN_FULL) {   /* 128 GB of weights and states: nothing fits */
				CHECK(T == 0 && B == 0);
				continue;
			}
			if (T > 0 && T < s.max_pos) {
				struct lora_plan_opts x = o;
				x.seq_len = T;
				lora_plan_compute(&s, &x, &p);
				CHECK(p.col[m].total <= limit);
				x.seq_len = T + 1;
				lora_plan_compute(&s, &x, &p);
				CHECK(p.col[m].total > limit);
			}
			if (B > 0 && B < 65536) {
				struct lora_plan_opts x = o;
				x.batch = B;
				lora_plan_compute(&s, &x, &p);
				CHECK(p.col[m].total <= limit);
				x.batch = B + 1;
				lora_plan_compute(&s, &x, &p);
				CHECK(p.col[m].total > limit);
			}
			/* a QLoRA run of 8B at 512 tokens fits in 24 GiB on a GPU */
			if (dev && m == LORA_PLAN_QLORA)
				CHECK(T >= 512 && B >= 1);
		}
}

TEST(refuses_unsupported_architectures)
{
	static const char js[] = "{\"architectures\": [\"GPT2LMHeadModel\"], \"model_type\": \"gpt2\", "
				 "\"hidden_size\": 64, \"num_hidden_layers\": 2, \"vocab_size\": 100}";
	struct lora_model_config cfg;
	struct lora_plan_shape s;
	struct lora_err err;

	CHECK(lora_model_config_parse(js, sizeof(js) - 1, "x", &cfg, &err) == 0);
	CHECK(lora_plan_shape_from_config(&cfg, &s, &err) < 0);
	CHECK(strstr(err.msg, "GPT2LMHeadModel") != NULL);
	{
		static const char moe[] = "{\"architectures\": [\"Qwen3MoeForCausalLM\"], \"model_type\": "
					  "\"qwen3_moe\", \"hidden_size\": 64, \"num_hidden_layers\": 2, "
					  "\"num_attention_heads\": 4, \"vocab_size\": 100, \"intermediate_size\": 64}";

		CHECK(lora_model_config_parse(moe, sizeof(moe) - 1, "x", &cfg, &err) == 0);
		CHECK(lora_plan_shape_from_config(&cfg, &s, &err) < 0);
		CHECK(strstr(err.msg, "Qwen3MoeForCausalLM") != NULL);
	}
}

int main(void)
{
	char cmd[128];

	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	RUN(cpu_plan_matches_a_measured_step);
	RUN(cpu_plan_tied_model);
	RUN(cpu_plan_qwen3);
	RUN(cpu_plan_phi3);
	RUN(cpu_plan_gemma2);
	RUN(cpu_plan_gemma3);
	RUN(llama3_8b_counts);
	RUN(fit_is_the_largest_that_fits);
	RUN(refuses_unsupported_architectures);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", tmpdir);
	return t_done();
}
