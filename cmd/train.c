/*
 * train.c - `lora train`: a base model and a JSONL data file in, a signed
 * adapter in the store out.  Options are read into the loop's settings
 * (train/loop.h); with --resume the settings of the checkpoint come first and
 * the options given on the command line must agree with them.  This file
 * draws the progress bar, catches SIGINT/SIGTERM (the loop then writes a
 * checkpoint and returns) and prints the summary.
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cmd/cmd.h"
#include "libadapter/store/store.h"
#include "train/ckpt.h"
#include "train/loop.h"

enum {
	O_BASE = 1, O_DATA, O_NAME, O_RANK, O_ALPHA, O_DROPOUT, O_TARGETS, O_QUANT, O_LR, O_SCHEDULE,
	O_WARMUP, O_STEPS, O_EPOCHS, O_BATCH, O_GRAD_ACCUM, O_SEQ_LEN, O_MAX_GRAD_NORM, O_WEIGHT_DECAY,
	O_SEED, O_EVAL_EVERY, O_SAVE_EVERY, O_RESUME, O_DEVICE, O_THREADS, O_EVAL_DATA, O_EVAL_SPLIT,
	O_SKIP_BAD_ROWS, O_NO_PACK, O_CHAT_TEMPLATE, O_GRAD_CKPT, O_DESCRIPTION, O_KEY, O_JSON, O_N
};

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig)
{
	stop_signal = sig;
}

/* Apply one option's value to the settings; 2 on a bad value (after printing). */
static int apply(const struct cmd_ctx *ctx, int id, const char *v, struct lora_train_opts *o)
{
	struct lora_err err = { 0 };
	long l;
	double d;

#define LONG(lo, hi) if (cmd_parse_long(ctx, cmd_opt_flag(ctx, id), v, lo, hi, &l) < 0) return 2
#define DBL(lo, hi) if (cmd_parse_double(ctx, cmd_opt_flag(ctx, id), v, lo, hi, &d) < 0) return 2
	switch (id) {
	case O_BASE: o->base_dir = v; break;
	case O_DATA: o->data_path = v; break;
	case O_EVAL_DATA: o->eval_path = v; o->eval_split = 0; break;
	case O_EVAL_SPLIT: DBL(1e-6, 0.5); o->eval_split = d; o->eval_path = NULL; break;
	case O_RANK: LONG(1, 65536); o->lora.rank = (int)l; break;
	case O_ALPHA: DBL(1e-6, 1e6); o->lora.alpha = d; break;
	case O_DROPOUT: DBL(0, 0.99); o->lora.dropout = d; break;
	case O_TARGETS:
		if (lora_targets_parse(v, &o->lora.targets, &err) < 0)
			return cmd_usage(ctx, "%s", err.msg);
		break;
	case O_QUANT:
		if (lora_quant_parse(v, &o->quant) < 0)
			return cmd_usage(ctx, "--quant is nf4 or none, not '%s'", v);
		break;
	case O_LR: DBL(1e-12, 1e300); o->optim.lr = d; break;
	case O_SCHEDULE:
		if (lora_sched_parse(v, &o->optim.sched) < 0)
			return cmd_usage(ctx, "--schedule is cosine, linear or constant, not '%s'", v);
		break;
	case O_WARMUP:
		DBL(0, 1e12);
		if (d >= 1 && d != floor(d))
			return cmd_usage(ctx, "--warmup is a fraction below 1 or a whole number of steps, not '%s'", v);
		o->warmup = d;
		break;
	case O_STEPS: LONG(1, 1000000000000L); o->steps = l; o->epochs = 0; break;
	case O_EPOCHS: DBL(1e-6, 1e6); o->epochs = d; o->steps = 0; break;
	case O_BATCH: LONG(1, 65536); o->batch = (int)l; break;
	case O_GRAD_ACCUM: LONG(1, 65536); o->grad_accum = (int)l; break;
	case O_SEQ_LEN: LONG(2, 1 << 20); o->seq_len = (int)l; break;
	case O_MAX_GRAD_NORM: DBL(0, 1e30); o->optim.max_grad_norm = d; break;
	case O_WEIGHT_DECAY: DBL(0, 1e6); o->optim.weight_decay = d; break;
	case O_SEED: LONG(0, 0x7fffffffffffffffL); o->seed = (uint64_t)l; break;
	case O_EVAL_EVERY: LONG(1, 1000000000000L); o->eval_every = l; break;
	case O_SAVE_EVERY: LONG(1, 1000000000000L); o->save_every = l; break;
	case O_DEVICE:
		if (strcmp(v, "auto") && strcmp(v, "cpu") && strcmp(v, "cuda"))
			return cmd_usage(ctx, "--device is auto, cpu or cuda, not '%s'", v);
		o->device = v;
		break;
	case O_THREADS: LONG(1, 1024); o->threads = (int)l; break;
	case O_SKIP_BAD_ROWS: o->skip_bad_rows = 1; break;
	case O_NO_PACK: o->no_pack = 1; break;
	case O_CHAT_TEMPLATE:
		if (!*v)
			return cmd_usage(ctx, "--chat-template is chatml, llama3 or a template file");
		o->chat_template = v;
		break;
	case O_GRAD_CKPT: o->grad_checkpoint = 1; break;
	}
#undef LONG
#undef DBL
	return 0;
}

/* ------------------------------------------------------------ progress */

struct bar {
	int on;
	double last;
	double eval_loss;
	int have_eval;
};

static double mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void fmt_dur(double s, char *buf, size_t len)
{
	if (!isfinite(s) || s < 0)
		snprintf(buf, len, "--");
	else if (s < 10)
		snprintf(buf, len, "%.1fs", s);
	else if (s < 60)
		snprintf(buf, len, "%.0fs", s);
	else if (s < 3600)
		snprintf(buf, len, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
	else
		snprintf(buf, len, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
}

static void on_progress(const struct lora_train_progress *p, void *ud)
{
	struct bar *b = ud;
	const int w = 24;
	double t = mono(), frac;
	char eta[32], ev[48] = "";
	int fill;

	if (p->ev == LORA_EV_EVAL) {
		b->eval_loss = p->eval_loss;
		b->have_eval = 1;
	}
	if (!b->on || (p->ev == LORA_EV_STEP && t - b->last < 0.1 && p->step < p->total_steps))
		return;
	b->last = t;
	frac = p->total_steps ? (double)p->step / (double)p->total_steps : 0;
	fill = (int)(frac * w);
	fmt_dur(p->eta_s, eta, sizeof(eta));
	if (b->have_eval)
		snprintf(ev, sizeof(ev), " eval %.4f", b->eval_loss);
	fprintf(stderr, "\rtrain [");
	for (int i = 0; i < w; i++)
		fputc(i < fill ? '#' : '.', stderr);
	fprintf(stderr, "] step %ld/%ld loss %.4f%s %.0f tok/s ETA %s%s\033[K", p->step, p->total_steps,
		p->loss, ev, p->tokens_per_s, eta, p->ev == LORA_EV_SAVE ? " (saved)" : "");
	fflush(stderr);
}

/* ------------------------------------------------------------ summary */

static void print_summary(const char *ref, const char *digest, const struct lora_train_result *r,
			  const struct lora_train_info *info, int json)
{
	char wall[32];

	if (json) {
		printf("{\"ref\": \"%s\", \"digest\": \"%s\", \"steps\": %ld, \"tokens\": %llu, ", ref, digest,
		       r->steps, (unsigned long long)r->tokens);
		printf(isfinite(r->train_loss) ? "\"train_loss\": %.9g, " : "\"train_loss\": null, ", r->train_loss);
		printf(isfinite(r->eval_loss_first) ? "\"eval_loss_initial\": %.9g, " : "\"eval_loss_initial\": null, ",
		       r->eval_loss_first);
		printf(isfinite(r->eval_loss) ? "\"eval_loss\": %.9g, " : "\"eval_loss\": null, ", r->eval_loss);
		printf("\"wall_s\": %.3f, \"device\": \"%s\"}\n", r->wall_s, info->device);
		return;
	}
	fmt_dur(r->wall_s, wall, sizeof(wall));
	printf("trained %s  %s\n", ref, digest);
	printf("  %ld steps (%.2f epochs), %llu tokens, %s on %s\n", r->steps, info->epochs,
	       (unsigned long long)r->tokens, wall, info->device);
	printf("  train loss %.4f", r->train_loss);
	if (isfinite(r->eval_loss))
		printf(", eval loss %.4f -> %.4f", r->eval_loss_first, r->eval_loss);
	printf("\n");
}

/* ------------------------------------------------------------ the command */

static int run(const struct cmd_ctx *ctx, struct lora_train_opts *o, const char *ref, const char *work,
	       const char *key, const char *description, int json)
{
	struct lora_err err = { 0 };
	struct lora_trainer *tr = NULL;
	const struct lora_train_info *info;
	struct lora_train_result res;
	struct sigaction sa, old_int, old_term;
	struct bar bar = { .on = ctx->is_tty };
	char digest[72] = "";
	int rc;

	/* before hours of work: can the result be signed? */
	if (lora_store_check_signing_key(ctx->store, key, &err) < 0)
		return cmd_fail(&err);
	if (lora_trainer_open(&tr, o, &err) < 0)
		return cmd_fail(&err);
	info = lora_trainer_info(tr);
	if (info->device_note)
		cmd_warn("%s", info->device_note);
	if (info->skipped_rows)
		cmd_warn("skipped %zu bad row%s (the first: %s)", info->skipped_rows,
			 info->skipped_rows == 1 ? "" : "s", info->first_skipped);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	/* a second ^C ends the process at once (every write is atomic); system calls restart */
	sa.sa_flags = SA_RESETHAND | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, &old_int);
	sigaction(SIGTERM, &sa, &old_term);
	rc = lora_trainer_run(tr, on_progress, &bar, &stop_signal, &err);
	sigaction(SIGINT, &old_int, NULL);
	sigaction(SIGTERM, &old_term, NULL);
	if (bar.on) {
		fputs("\r\033[K", stderr);
		fflush(stderr);
	}
	if (rc < 0) {
		rc = cmd_fail(&err);
		goto out;
	}
	lora_trainer_result(tr, &res);
	if (rc == 1) {
		cmd_error("interrupted at step %ld of %ld; the checkpoint is in '%s'; continue with "
			  "'lora train --name %s --resume'", res.steps, info->total_steps, work, ref);
		rc = stop_signal == SIGTERM ? 128 + SIGTERM : 128 + SIGINT;
		goto out;
	}
	if (lora_trainer_publish(tr, ctx->store, ref, key, description, digest, &err) < 0) {
		/* nothing is lost: the final checkpoint is in the work area */
		char msg[sizeof(err.msg)];
		memcpy(msg, err.msg, sizeof(msg));
		lora_errc(&err, err.code, "%.600s; the trained adapter is kept in '%s' ('lora train --name %s "
			  "--resume' packages it again)", msg, work, ref);
		rc = cmd_fail(&err);
		goto out;
	}
	print_summary(ref, digest, &res, info, json);
	rc = 0;
out:
	lora_trainer_close(tr);
	return rc;
}

/* Also the options lora plan accepts (cmd/plan.c's .also): a train command line can be planned. */
static const struct cmd_opt opts[] = {
	{ "base", 0, "DIR", "the Hugging Face model folder to adapt", O_BASE, 0, 0 },
	{ "data", 0, "FILE", "JSONL rows: {\"text\"}, {\"prompt\",\"completion\"}, {\"messages\"} or\n"
			     "{\"input_ids\",\"labels\"}", O_DATA, 0, 0 },
	{ "name", 0, "NAME[:TAG]", "the adapter's name in the store (tag 'latest' when absent)", O_NAME, 0, 0 },
	{ "rank", 0, "R", "LoRA rank (16)", O_RANK, 0, 0 },
	{ "alpha", 0, "A", "LoRA alpha; scale alpha/r (32)", O_ALPHA, 0, 0 },
	{ "dropout", 0, "P", "dropout on the LoRA path (0.05)", O_DROPOUT, 0, 0 },
	{ "targets", 0, "LIST", "all-linear (default) or q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
	  O_TARGETS, 0, 0 },
	{ "quant", 0, "nf4|none", "frozen weights in NF4 (QLoRA, default) or as stored", O_QUANT, 0, 0 },
	{ "lr", 0, "LR", "peak learning rate (2e-4)", O_LR, 0, 0 },
	{ "schedule", 0, "S", "cosine (default), linear or constant, after warmup", O_SCHEDULE, 0, 0 },
	{ "warmup", 0, "W", "warmup: a fraction of the steps below 1, or a step count (0.03)", O_WARMUP, 0, 0 },
	{ "steps", 0, "N", "optimizer steps; or --epochs E, passes over the data (1 epoch)", O_STEPS, 0, 0 },
	{ "epochs", 0, "E", NULL, O_EPOCHS, 0, 0 },
	{ "batch", 0, "B", "rows per micro-batch (4)", O_BATCH, 0, 0 },
	{ "grad-accum", 0, "G", "micro-batches per optimizer step (4)", O_GRAD_ACCUM, 0, 0 },
	{ "seq-len", 0, "T", "tokens per row; rows are packed to it (512, or the model's limit)", O_SEQ_LEN, 0, 0 },
	{ "max-grad-norm", 0, "X", "clip the gradient norm to X; 0: no clipping (0.3)", O_MAX_GRAD_NORM, 0, 0 },
	{ "weight-decay", 0, "X", "AdamW decoupled weight decay (0)", O_WEIGHT_DECAY, 0, 0 },
	{ "seed", 0, "S", "initialization, dropout, data order and split (42)", O_SEED, 0, 0 },
	{ "eval-data", 0, "FILE", "rows to evaluate on; or --eval-split F to hold out a fraction of --data",
	  O_EVAL_DATA, 0, 0 },
	{ "eval-split", 0, "F", NULL, O_EVAL_SPLIT, 0, 0 },
	{ "eval-every", 0, "K", "steps between evaluations (a tenth of the run)", O_EVAL_EVERY, 0, 0 },
	{ "save-every", 0, "K", "steps between checkpoints (100)", O_SAVE_EVERY, 0, 0 },
	{ "resume", 0, NULL, "continue the interrupted run of NAME:TAG from its checkpoint", O_RESUME, 0, 0 },
	{ "skip-bad-rows", 0, NULL, "skip and count bad rows instead of stopping at the first", O_SKIP_BAD_ROWS, 0, 0 },
	{ "no-pack", 0, NULL, "one row per sequence, padded, instead of packing", O_NO_PACK, 0, 0 },
	{ "chat-template", 0, "NAME|FILE", "chatml, llama3 or a Jinja file for {\"messages\"} rows (default: the model's own)",
	  O_CHAT_TEMPLATE, 0, 0 },
	{ "grad-checkpoint", 0, NULL, "recompute activations in backward (less memory)", O_GRAD_CKPT, 0, 0 },
	{ "device", 0, "D", "auto (default), cpu or cuda", O_DEVICE, 0, 0 },
	{ "threads", 0, "N", "CPU threads", O_THREADS, 0, 0 },
	{ "description", 0, "TEXT", "a description for the manifest", O_DESCRIPTION, 0, 0 },
	{ "key", 0, "FILE", "sign with this OpenSSH ed25519 key (default: the store's key)", O_KEY, 0, 0 },
	{ "json", 0, NULL, "one JSON document with the result on stdout", O_JSON, 0, 0 },
	{ 0 }
};

static CMD(train)
{
	/* every option in the order given: applied after the checkpoint's settings */
	struct given { int id; const char *v; } *given = calloc((size_t)argc + 1, sizeof(*given));
	struct lora_train_opts o;
	struct lora_err err = { 0 };
	const char *name = NULL, *key = NULL, *description = NULL;
	char *work = NULL, *keep = NULL, ref[LORA_REF_MAX];
	struct lora_ref r;
	int c, n = 0, resume = 0, json = 0, rc = 2, has_steps = 0, has_epochs = 0;

	if (!given)
		return cmd_error("out of memory");
	while ((c = cmd_getopt(ctx, argc, argv)) != -1) {
		switch (c) {
		case O_NAME: name = optarg; break;
		case O_RESUME: resume = 1; break;
		case O_KEY: key = optarg; break;
		case O_DESCRIPTION: description = optarg; break;
		case O_JSON: json = 1; break;
		case '?': case ':': goto out;
		case O_STEPS: has_steps = 1; /* fall through */
		case O_EPOCHS: has_epochs |= c == O_EPOCHS; /* fall through */
		default:
			given[n].id = c;
			given[n++].v = optarg;
			break;
		}
	}
	if (optind != argc) {
		cmd_usage(ctx, "unexpected argument '%s'", argv[optind]);
		goto out;
	}
	if (has_steps && has_epochs) {
		cmd_usage(ctx, "give --steps or --epochs, not both");
		goto out;
	}
	if (!name) {
		cmd_usage(ctx, "train needs --name NAME[:TAG] for the adapter it makes");
		goto out;
	}
	if (lora_ref_parse(name, &r, &err) < 0 || r.is_digest) {
		cmd_usage(ctx, "%s", r.is_digest ? "--name is NAME[:TAG], not a digest" : err.msg);
		goto out;
	}
	snprintf(ref, sizeof(ref), "%s:%s", r.name, r.tag);
	if (!(work = lora_work_dir(ctx->store, ref, &err))) {
		rc = cmd_fail(&err);
		goto out;
	}
	lora_train_opts_defaults(&o);
	if (resume && lora_train_opts_from_checkpoint(work, &o, &keep, &err) < 0) {
		rc = cmd_fail(&err);
		goto out;
	}
	for (int i = 0; i < n; i++)
		if ((rc = apply(ctx, given[i].id, given[i].v, &o)) != 0)
			goto out;
	rc = 2;
	if (!o.base_dir || !o.data_path) {
		cmd_usage(ctx, "train needs --base DIR and --data FILE");
		goto out;
	}
	o.work_dir = work;
	o.resume = resume;
	o.user = ctx->user;
	o.created = ctx->created;
	o.cuda_plugin = ctx->cuda_plugin;
	rc = run(ctx, &o, ref, work, key, description, json);
out:
	free(given);
	free(work);
	free(keep);
	return rc;
}

const struct cmd_def cmd_train_entry = {
	"train", cmd_train, CMD_NEED_STORE, "train a LoRA/QLoRA adapter into the store",
	"lora train --base DIR --data FILE --name NAME[:TAG] [--rank R] [--alpha A] [--targets LIST] [--quant nf4|none] [--lr LR] [--steps N | --epochs E] [--batch B] [--grad-accum G] [--seq-len T] [options]\n"
	"lora train --name NAME[:TAG] --resume [options]",
	opts, 24, NULL
};
