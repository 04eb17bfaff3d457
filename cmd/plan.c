/*
 * plan.c - `lora plan`: the memory a training run needs, before it starts,
 * for full fine-tuning, LoRA and QLoRA side by side (train/plan.h has the
 * model), and the largest --seq-len / --batch that fit --gpu-mem.
 *
 * It takes the options of `lora train`, so a train command line can be
 * planned by changing the verb; options that do not change memory (data,
 * name, learning rate, steps, ...) are accepted and ignored.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd/cmd.h"
#include "libadapter/base/buf.h"
#include "libadapter/base/fsutil.h"
#include "libadapter/format/modeldir.h"
#include "train/lora_cfg.h"
#include "train/plan.h"

#define GIB ((uint64_t)1 << 30)

struct plan_args {
	const char *base, *config;
	struct lora_plan_opts o;
	double gpu_mem;            /* GiB; 0: not asked */
	int json;
};

/* Resident size of this process now (the same binary and libraries a run of lora train maps). */
static uint64_t own_rss(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	unsigned long long kb = 0;

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %llu kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return (uint64_t)kb * 1024;
}

static void targets_text(unsigned mask, char *buf, size_t len)
{
	if (mask == LORA_TARGETS_ALL)
		snprintf(buf, len, "all-linear");
	else
		lora_targets_format(mask, buf, len);
}

/* "12.34 GiB", "567.0 MiB", "0" */
static const char *human(uint64_t b, char *buf, size_t len)
{
	if (!b)
		snprintf(buf, len, "-");
	else if (b >= GIB)
		snprintf(buf, len, "%.2f GiB", (double)b / (double)GIB);
	else if (b >= (1u << 20))
		snprintf(buf, len, "%.1f MiB", (double)b / 1048576.0);
	else
		snprintf(buf, len, "%.1f KiB", (double)b / 1024.0);
	return buf;
}

static const char *count(uint64_t n, char *buf, size_t len)
{
	if (n >= 1000000000ull)
		snprintf(buf, len, "%.2f B", (double)n / 1e9);
	else if (n >= 1000000ull)
		snprintf(buf, len, "%.1f M", (double)n / 1e6);
	else
		snprintf(buf, len, "%llu", (unsigned long long)n);
	return buf;
}

static int load_shape(const struct plan_args *a, struct lora_plan_shape *s, char *label, size_t len,
		      struct lora_err *err)
{
	if (a->base) {
		struct lora_model *m;
		int rc;

		if (lora_model_open(a->base, 1, &m, err) < 0)
			return -1;
		rc = lora_plan_shape_from_model(m, s, err);
		lora_model_close(m);
		snprintf(label, len, "%s", a->base);
		return rc;
	} else {
		struct lora_model_config cfg;
		char *text = NULL;
		size_t n;
		int rc = -1;

		if (lora_read_file(a->config, 16u << 20, &text, &n, err) < 0)
			return -1;
		if (lora_model_config_parse(text, n, a->config, &cfg, err) == 0) {
			rc = lora_plan_shape_from_config(&cfg, s, err);
			if (rc < 0)
				lora_err_prefix(err, "'%s'", a->config);
		}
		free(text);
		snprintf(label, len, "%s", a->config);
		return rc;
	}
}

/* ------------------------------------------------------------ output */

struct fit {
	int T, B;
};

static void print_json(const struct plan_args *a, const char *label, const struct lora_plan_shape *s,
		       const struct lora_plan *p, const struct fit *fit)
{
	struct lora_buf b = LORA_BUF_INIT;
	char targets[128];
	const struct lora_plan_opts *o = &p->opts;

	targets_text(o->targets, targets, sizeof(targets));
	lora_buf_puts(&b, "{\"model\": {\"source\": ");
	lora_buf_json_str(&b, label);
	lora_buf_printf(&b, ", \"architecture\": \"%s\", \"parameters\": %llu, \"linear_parameters\": %llu, "
			"\"hidden_size\": %d, \"intermediate_size\": %d, \"layers\": %d, \"heads\": %d, "
			"\"kv_heads\": %d, \"head_dim\": %d, \"vocab_size\": %d, \"tied_embeddings\": %s, "
			"\"dtype\": \"%s\"}",
			s->architecture, (unsigned long long)s->n_params, (unsigned long long)s->n_linear,
			s->C, s->F, s->L, s->H, s->KV, s->D, s->V, s->tied ? "true" : "false",
			lora_dtype_name(s->dtype));
	lora_buf_printf(&b, ", \"settings\": {\"device\": \"%s\", \"estimate\": %s, \"rank\": %d, "
			"\"targets\": \"%s\", \"quant\": \"%s\", \"batch\": %d, \"seq_len\": %d, "
			"\"grad_accum\": %d, \"checkpointing\": %s, \"paged\": %s, \"dropout\": %.6g, "
			"\"threads\": %d}",
			o->device == LORA_PLAN_CPU ? "cpu" : "cuda",
			o->device == LORA_PLAN_CPU ? "false" : "true", o->rank, targets,
			o->quant_nf4 ? "nf4" : "none", o->batch, o->seq_len, o->grad_accum,
			o->checkpoint ? "true" : "false", o->paged ? "true" : "false", o->dropout, o->threads);
	lora_buf_printf(&b, ", \"lora_parameters\": %llu, \"selected\": \"%s\", \"columns\": {",
			(unsigned long long)p->n_lora, o->quant_nf4 ? "qlora" : "lora");
	for (int m = 0; m < LORA_PLAN_NMETHOD; m++) {
		const struct lora_plan_col *c = &p->col[m];

		lora_buf_printf(&b, "%s\"%s\": {\"weights\": %llu, \"lora\": %llu, \"gradients\": %llu, "
				"\"optimizer\": %llu, \"activations\": %llu, "
				"\"activations_checkpointing\": %llu, \"activations_no_checkpointing\": %llu, "
				"\"logits\": %llu, \"workspace\": %llu, \"file_pages\": %llu, \"runtime\": %llu, "
				"\"total\": %llu, \"total_paged\": %llu",
				m ? ", " : "", lora_plan_method_names[m], (unsigned long long)c->weights,
				(unsigned long long)c->lora, (unsigned long long)c->grads,
				(unsigned long long)c->optim, (unsigned long long)c->acts,
				(unsigned long long)c->acts_ckpt, (unsigned long long)c->acts_full,
				(unsigned long long)c->logits, (unsigned long long)c->workspace,
				(unsigned long long)c->file_pages, (unsigned long long)c->runtime,
				(unsigned long long)c->total, (unsigned long long)c->total_min);
		if (a->gpu_mem > 0)
			lora_buf_printf(&b, ", \"fits\": %s, \"fits_paged\": %s, \"max_seq_len\": %d, "
					"\"max_batch\": %d",
					c->total <= (uint64_t)(a->gpu_mem * (double)GIB) ? "true" : "false",
					c->total_min <= (uint64_t)(a->gpu_mem * (double)GIB) ? "true" : "false",
					fit[m].T, fit[m].B);
		lora_buf_puts(&b, "}");
	}
	lora_buf_puts(&b, "}");
	if (a->gpu_mem > 0)
		lora_buf_printf(&b, ", \"memory_limit\": %llu",
				(unsigned long long)(a->gpu_mem * (double)GIB));
	lora_buf_puts(&b, "}\n");
	if (!b.oom)
		fwrite(b.data, 1, b.len, stdout);
	lora_buf_free(&b);
}

static void row(const char *name, const uint64_t *v, int always)
{
	char buf[3][32];

	if (!always && !v[0] && !v[1] && !v[2])
		return;
	printf("%-34s %12s %12s %12s\n", name, human(v[0], buf[0], 32), human(v[1], buf[1], 32),
	       human(v[2], buf[2], 32));
}

#define ROW(label, field)                                                         \
	do {                                                                      \
		uint64_t v_[3] = {p->col[0].field, p->col[1].field, p->col[2].field}; \
		row(label, v_, 0);                                                \
	} while (0)

/* "yes", "paged" (only with the AdamW states on the host), "no" */
static const char *fits_word(const struct lora_plan_col *c, uint64_t lim)
{
	return c->total <= lim ? "yes" : c->total_min <= lim ? "paged" : "no";
}

static void print_text(const struct plan_args *a, const char *label, const struct lora_plan_shape *s,
		       const struct lora_plan *p, const struct fit *fit)
{
	const struct lora_plan_opts *o = &p->opts;
	const int cpu = o->device == LORA_PLAN_CPU;
	char targets[128], n1[32], n2[32];
	uint64_t v[3];

	targets_text(o->targets, targets, sizeof(targets));
	printf("model     %s (%s), %s parameters, %s, %d layers, hidden %d, vocab %d%s\n", label,
	       s->architecture, count(s->n_params, n1, sizeof(n1)), lora_dtype_name(s->dtype), s->L, s->C,
	       s->V, s->tied ? ", tied embeddings" : "");
	printf("run       r %d on %s (%s LoRA parameters), batch %d x %d tokens, grad-accum %d,\n"
	       "          checkpointing %s, %sAdamW, dropout %g\n",
	       o->rank, targets, count(p->n_lora, n2, sizeof(n2)), o->batch, o->seq_len, o->grad_accum,
	       o->checkpoint ? "on" : "off", !cpu && o->paged ? "paged " : "", o->dropout);
	if (cpu)
		printf("device    cpu: the CPU trainer's peak resident memory (measured by the tests)\n\n");
	else
		printf("device    cuda: an estimate for a CUDA trainer (not yet measured on a GPU)\n\n");
	printf("%-34s %12s %12s %12s\n", "", "full FT", o->quant_nf4 ? "LoRA" : "LoRA *",
	       o->quant_nf4 ? "QLoRA *" : "QLoRA");
	ROW(cpu ? "weights (fp32 / as stored / NF4)" : "weights (bf16 / bf16 / NF4)", weights);
	ROW("LoRA parameters (fp32)", lora);
	ROW(cpu ? "gradients (fp32)" : "gradients (bf16 / fp32)", grads);
	ROW(cpu ? "AdamW states (fp32 m, v)" : "AdamW states (+ fp32 master)", optim);
	v[0] = p->col[0].acts, v[1] = p->col[1].acts, v[2] = p->col[2].acts;
	row(o->checkpoint ? "activations (checkpointing)" : "activations (no checkpointing)", v, 1);
	if (o->checkpoint)
		ROW("  without checkpointing", acts_full);
	else
		ROW("  with checkpointing", acts_ckpt);
	ROW("logits (one chunk, fp32)", logits);
	ROW("workspace", workspace);
	ROW("model file read to quantize", file_pages);
	ROW(cpu ? "program and BLAS buffers" : "CUDA context and cuBLAS", runtime);
	v[0] = p->col[0].total, v[1] = p->col[1].total, v[2] = p->col[2].total;
	row("total", v, 1);
	if (!cpu && o->paged)
		ROW("  with paged states on the host", total_min);
	if (a->gpu_mem > 0) {
		const uint64_t lim = (uint64_t)(a->gpu_mem * (double)GIB);
		char t[3][32], b[3][32], title[64];

		printf("\n");
		snprintf(title, sizeof(title), "fits in %g GiB", a->gpu_mem);
		printf("%-34s %12s %12s %12s\n", title, fits_word(&p->col[0], lim), fits_word(&p->col[1], lim),
		       fits_word(&p->col[2], lim));
		for (int m = 0; m < 3; m++) {
			snprintf(t[m], 32, "%d", fit[m].T);
			snprintf(b[m], 32, "%d", fit[m].B);
		}
		snprintf(title, sizeof(title), "largest --seq-len at batch %d", o->batch);
		printf("%-34s %12s %12s %12s\n", title, fit[0].T ? t[0] : "-", fit[1].T ? t[1] : "-",
		       fit[2].T ? t[2] : "-");
		snprintf(title, sizeof(title), "largest --batch at %d tokens", o->seq_len);
		printf("%-34s %12s %12s %12s\n", title, fit[0].B ? b[0] : "-", fit[1].B ? b[1] : "-",
		       fit[2].B ? b[2] : "-");
	}
	printf("\n* the run as set (--quant %s)\n", o->quant_nf4 ? "nf4" : "none");
	if (cpu && p->col[LORA_PLAN_QLORA].file_pages)
		printf("The CPU trainer reads the stored weights through a file mapping to quantize them;\n"
		       "those pages stay resident until the kernel needs the memory back.\n");
}

/* ------------------------------------------------------------ options */

enum {
	O_BASE = 256, O_CONFIG, O_RANK, O_ALPHA, O_TARGETS, O_QUANT, O_BATCH, O_SEQ, O_ACCUM,
	O_CKPT, O_NOCKPT, O_PAGED, O_NOPAGED, O_DROPOUT, O_GPUMEM, O_DEVICE, O_JSON, O_THREADS,
	O_IGNORED_FLAG
};

/* lora train's options that are not here are accepted and ignored (.also below) */
extern const struct cmd_def cmd_train_entry __attribute__((weak));
static const struct cmd_opt opts[] = {
	{ "base", 0, "DIR", "a model folder (config.json; weights' dtype from the files)", O_BASE, 0, 0 },
	{ "config", 0, "FILE", "a config.json alone", O_CONFIG, 0, 0 },
	{ "rank", 0, "R", "LoRA rank (16)", O_RANK, 0, 0 },
	{ "alpha", 0, "A", NULL, O_ALPHA, 0, 0 },
	{ "targets", 0, "LIST", "all-linear (default) or q_proj,v_proj,...", O_TARGETS, 0, 0 },
	{ "quant", 0, "nf4|none", "the column the run would use: QLoRA (default) or LoRA", O_QUANT, 0, 0 },
	{ "batch", 0, "B", "rows per micro-batch (4)", O_BATCH, 0, 0 },
	{ "seq-len", 0, "T", "tokens per row (512, or the model's limit)", O_SEQ, 0, 0 },
	{ "grad-accum", 0, "G", "accepted; does not change memory", O_ACCUM, 0, 0 },
	{ "grad-checkpoint", 0, NULL, "keep one input per layer and recompute (also --checkpointing;\n"
				      "--no-checkpointing, the default)", O_CKPT, 0, 0 },
	{ "checkpointing", 0, NULL, NULL, O_CKPT, 0, 0 },
	{ "no-checkpointing", 0, NULL, NULL, O_NOCKPT, 0, 0 },
	{ "paged", 0, NULL, "paged AdamW states (default, cuda); --no-paged", O_PAGED, 0, 0 },
	{ "no-paged", 0, NULL, NULL, O_NOPAGED, 0, 0 },
	{ "dropout", 0, "P", "LoRA dropout (0.05)", O_DROPOUT, 0, 0 },
	{ "gpu-mem", 0, "GB", "also the largest --seq-len and --batch that fit in GB GiB", O_GPUMEM, 0, 0 },
	{ "device", 0, "cpu|cuda", "the CPU trainer (measured) or the CUDA estimate (default)", O_DEVICE, 0, 0 },
	{ "threads", 0, "N", "cpu: the trainer's threads (default: one per CPU)", O_THREADS, 0, 0 },
	{ "json", 0, NULL, "one JSON document, sizes in bytes", O_JSON, 0, 0 },
	{ "pack", 0, NULL, NULL, O_IGNORED_FLAG, 0, 0 },     /* spellings lora train does not take */
	{ "rslora", 0, NULL, NULL, O_IGNORED_FLAG, 0, 0 },
	{ 0 }
};

static int parse(int argc, char **argv, struct cmd_ctx *ctx, struct plan_args *a)
{
	long v;
	double d;
	int c;

	memset(a, 0, sizeof(*a));
	lora_plan_opts_defaults(&a->o);
	a->o.program_bytes = own_rss();
	/* as the trainer: OpenBLAS's thread count, one per CPU unless told */
	v = sysconf(_SC_NPROCESSORS_ONLN);
	a->o.threads = v > 0 && v <= 1024 ? (int)v : 1;
	while ((c = cmd_getopt(ctx, argc, argv)) != -1) {
		switch (c) {
		case O_BASE: a->base = optarg; break;
		case O_CONFIG: a->config = optarg; break;
		case O_RANK:
			if (cmd_optarg_long(ctx, 1, 65536, &v) < 0)
				return 2;
			a->o.rank = (int)v;
			break;
		case O_ALPHA:
			if (cmd_optarg_double(ctx, 1e-9, 1e9, &d) < 0)
				return 2;
			break;
		case O_TARGETS: {
			struct lora_err err = {0};
			if (lora_targets_parse(optarg, &a->o.targets, &err) < 0)
				return cmd_usage(ctx, "%s", err.msg);
			break;
		}
		case O_QUANT:
			if (strcmp(optarg, "nf4") && strcmp(optarg, "none"))
				return cmd_usage(ctx, "--quant is nf4 or none, not '%s'", optarg);
			a->o.quant_nf4 = !strcmp(optarg, "nf4");
			break;
		case O_BATCH:
			if (cmd_optarg_long(ctx, 1, 65536, &v) < 0)
				return 2;
			a->o.batch = (int)v;
			break;
		case O_SEQ:
			if (cmd_optarg_long(ctx, 1, 1 << 20, &v) < 0)
				return 2;
			a->o.seq_len = (int)v;
			break;
		case O_ACCUM:
			if (cmd_optarg_long(ctx, 1, 1 << 20, &v) < 0)
				return 2;
			a->o.grad_accum = (int)v;
			break;
		case O_CKPT: a->o.checkpoint = 1; break;
		case O_NOCKPT: a->o.checkpoint = 0; break;
		case O_PAGED: a->o.paged = 1; break;
		case O_NOPAGED: a->o.paged = 0; break;
		case O_DROPOUT:
			if (cmd_optarg_double(ctx, 0, 0.999, &a->o.dropout) < 0)
				return 2;
			break;
		case O_GPUMEM:
			if (cmd_optarg_double(ctx, 0.001, 1 << 24, &a->gpu_mem) < 0)
				return 2;
			break;
		case O_DEVICE:
			if (!strcmp(optarg, "cpu"))
				a->o.device = LORA_PLAN_CPU;
			else if (!strcmp(optarg, "cuda") || !strcmp(optarg, "auto"))
				a->o.device = LORA_PLAN_CUDA;
			else
				return cmd_usage(ctx, "--device is cpu or cuda, not '%s'", optarg);
			break;
		case O_JSON: a->json = 1; break;
		case O_THREADS:
			if (cmd_optarg_long(ctx, 1, 1024, &v) < 0)
				return 2;
			a->o.threads = (int)v;
			break;
		case CMD_OPT_ALSO: case O_IGNORED_FLAG: break;
		default: return 2;
		}
	}
	if (optind != argc)
		return cmd_usage(ctx, "unexpected argument '%s'", argv[optind]);
	if (!a->base == !a->config)
		return cmd_usage(ctx, "plan needs --base DIR or --config FILE (one of them)");
	return 0;
}

static CMD(plan)
{
	struct plan_args a;
	struct lora_plan_shape s;
	struct lora_plan p;
	struct lora_err err = {0};
	struct fit fit[LORA_PLAN_NMETHOD] = {{0, 0}};
	char label[4096];
	int rc;

	if ((rc = parse(argc, argv, ctx, &a)) != 0)
		return rc;
	if (load_shape(&a, &s, label, sizeof(label), &err) < 0)
		return cmd_fail(&err);
	if (s.max_pos > 0 && a.o.seq_len > s.max_pos)
		cmd_warn("--seq-len %d is longer than the model's %d positions", a.o.seq_len, s.max_pos);
	lora_plan_compute(&s, &a.o, &p);
	if (a.gpu_mem > 0)
		for (int m = 0; m < LORA_PLAN_NMETHOD; m++)
			lora_plan_fit(&s, &a.o, (enum lora_plan_method)m, (uint64_t)(a.gpu_mem * (double)GIB),
				      &fit[m].T, &fit[m].B);
	if (a.json)
		print_json(&a, label, &s, &p, fit);
	else
		print_text(&a, label, &s, &p, fit);
	if (fflush(stdout) != 0 || ferror(stdout))
		return cmd_error("cannot write the result: %s", strerror(errno));
	return 0;
}

const struct cmd_def cmd_plan_entry = {
	"plan", cmd_plan, 0, "estimate the memory a training run needs",
	"lora plan (--base DIR | --config FILE) [training options] [--gpu-mem GB] [--device cpu|cuda] [--json]",
	opts, 22, &cmd_train_entry
};
