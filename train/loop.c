/*
 * loop.c - the training loop (see loop.h): set-up, steps, evaluation,
 * checkpoints, metrics log, and the finished adapter into the store.
 */
#include "train/loop.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "libadapter/base/buf.h"
#include "libadapter/base/fsutil.h"
#include "libadapter/format/modeldir.h"
#include "libadapter/store/store.h"
#include "train/chat.h"
#include "train/ckpt.h"
#include "train/data.h"
#include "train/eval.h"
#include "train/plot.h"
#include "train/tokenizer.h"
#include "train/cuda.h"
#include "train/model_cuda.h"

#ifndef LORA_VERSION
#define LORA_VERSION "unknown"
#endif

#define DEFAULT_SEQ_LEN 512
#define DEFAULT_SAVE_EVERY 100

/* A point of a loss curve. */
struct point {
	double step, loss;
};
struct curve {
	struct point *p;
	size_t n, cap;
};

struct lora_trainer {
	struct lora_train_opts o;
	struct lora_train_info info;
	char *base_abs, *data_abs, *eval_abs, *work_dir, *base_name;
	int lock_fd;

	struct lora_net *net;
	struct lora_tok *tok;
	struct lora_chat chat;
	int have_chat;
	char chat_error[1024];
	struct lora_dataset *train, *eval;
	char data_sha[65], eval_sha[65];
	char base_fp[72];
	struct lora_batcher *bt;
	int32_t pad_id;
	struct lora_data_batch *mb;   /* [G] micro-batches of the step in flight */

	struct lora_optim_cfg ocfg;   /* warmup_steps and total_steps filled in */
	struct lora_adamw opt;
	long step;                    /* optimizer steps done */
	uint64_t tokens;              /* over the whole run */
	double elapsed_prev;          /* wall seconds of earlier sessions */
	long saved_step;              /* step of the checkpoint on disk; -1: none */
	double last_loss, first_eval, last_eval;
	int log_fd;
	struct curve train_curve, eval_curve;
	cJSON *config;                /* the options that define the run (checkpoint, provenance) */
	const struct lora_cuda_abi *cuda;   /* the plugin's table when training on the GPU */
	char device_why[1100];       /* device_note's text */
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void lora_train_opts_defaults(struct lora_train_opts *o)
{
	memset(o, 0, sizeof(*o));
	lora_cfg_defaults(&o->lora);
	o->lora.rank = 16;
	o->lora.alpha = 32;
	o->lora.dropout = 0.05;
	o->lora.targets = LORA_TARGETS_ALL;
	lora_optim_defaults(&o->optim);
	o->optim.lr = 2e-4;
	o->optim.sched = LORA_SCHED_COSINE;
	o->optim.max_grad_norm = 0.3;
	o->optim.weight_decay = 0.0;
	o->warmup = 0.03;
	o->batch = 4;
	o->grad_accum = 4;
	o->epochs = 1;
	o->seed = 42;
	o->quant = LORA_QUANT_NF4;
	o->device = "auto";
}

const struct lora_train_info *lora_trainer_info(const struct lora_trainer *tr)
{
	return &tr->info;
}

struct lora_net *lora_trainer_net(struct lora_trainer *tr)
{
	return tr->net;
}

static int curve_push(struct curve *c, double step, double loss)
{
	if (c->n == c->cap) {
		size_t cap = c->cap ? 2 * c->cap : 256;
		struct point *p = realloc(c->p, cap * sizeof(*p));
		if (!p)
			return -1;
		c->p = p;
		c->cap = cap;
	}
	c->p[c->n].step = step;
	c->p[c->n].loss = loss;
	c->n++;
	return 0;
}

/* ============================================================ device */

/*
 * The backend for --device: cuda needs a plugin that sees a device (else one
 * error naming why); auto takes it when there is one and trains on the CPU
 * otherwise.  The net is put on the device after it is opened (use_device).
 */
static int pick_device(struct lora_trainer *tr, struct lora_err *err)
{
	const char *d = tr->o.device ? tr->o.device : "auto";
	struct lora_cuda_info ci;
	char why[512] = "";

	if (!strcmp(d, "cpu")) {
		tr->info.device = "cpu";
		return 0;
	}
	if (strcmp(d, "cuda") && strcmp(d, "auto"))
		return lora_errc(err, LORA_EUSAGE, "--device is auto, cpu or cuda, not '%s'", d);
	if (lora_cuda_device(tr->o.cuda_plugin, &ci, why, sizeof(why)) == 0 && ci.count > 0 &&
	    (tr->cuda = lora_cuda_api(tr->o.cuda_plugin, why, sizeof(why)))) {
		tr->info.device = "cuda";
		return 0;
	}
	if (!strcmp(d, "cuda"))
		return lora_errf(err, "--device cuda: %s", why[0] ? why : "no CUDA device");
	tr->info.device = "cpu";
	return 0;
}

/* The net onto the device pick_device chose; auto falls back to the CPU for a model it cannot run. */
static int use_device(struct lora_trainer *tr, struct lora_err *err)
{
	const char *d = tr->o.device ? tr->o.device : "auto";
	struct lora_err e;

	if (!tr->cuda)
		return 0;
	if (lora_cuda_attach(tr->net, tr->cuda, &e) == 0)
		return 0;
	if (!strcmp(d, "cuda")) {
		*err = e;
		return -1;
	}
	snprintf(tr->device_why, sizeof(tr->device_why), "%s; training on the CPU", e.msg);
	tr->info.device = "cpu";
	tr->info.device_note = tr->device_why;
	tr->cuda = NULL;
	return 0;
}

/* ============================================================ config */

static const char *quant_name(enum lora_quant q)
{
	return q == LORA_QUANT_NF4 ? "nf4" : "none";
}

/* The options that define the run; `resume` compares them key by key. */
static cJSON *config_json(const struct lora_trainer *tr)
{
	const struct lora_train_opts *o = &tr->o;
	cJSON *c = cJSON_CreateObject();
	char targets[128];

	if (!c)
		return NULL;
	lora_targets_format(o->lora.targets, targets, sizeof(targets));
	cJSON_AddStringToObject(c, "base", tr->base_abs);
	cJSON_AddStringToObject(c, "data", tr->data_abs);
	if (tr->eval_abs)
		cJSON_AddStringToObject(c, "eval_data", tr->eval_abs);
	else
		cJSON_AddNullToObject(c, "eval_data");
	cJSON_AddNumberToObject(c, "eval_split", o->eval_split);
	cJSON_AddBoolToObject(c, "skip_bad_rows", o->skip_bad_rows);
	cJSON_AddBoolToObject(c, "pack", !o->no_pack);
	if (o->chat_template)
		cJSON_AddStringToObject(c, "chat_template", o->chat_template);
	else
		cJSON_AddNullToObject(c, "chat_template");
	cJSON_AddNumberToObject(c, "seq_len", tr->info.seq_len);
	cJSON_AddNumberToObject(c, "batch", o->batch);
	cJSON_AddNumberToObject(c, "grad_accum", o->grad_accum);
	cJSON_AddNumberToObject(c, "steps", (double)tr->info.total_steps);
	cJSON_AddNumberToObject(c, "rank", o->lora.rank);
	cJSON_AddNumberToObject(c, "alpha", o->lora.alpha);
	cJSON_AddBoolToObject(c, "rslora", o->lora.rslora);
	cJSON_AddNumberToObject(c, "dropout", o->lora.dropout);
	cJSON_AddStringToObject(c, "targets", targets);
	cJSON_AddStringToObject(c, "quant", quant_name(o->quant));
	cJSON_AddNumberToObject(c, "lr", o->optim.lr);
	cJSON_AddStringToObject(c, "schedule", lora_sched_name(o->optim.sched));
	cJSON_AddNumberToObject(c, "warmup", o->warmup);
	cJSON_AddNumberToObject(c, "warmup_steps", (double)tr->info.warmup_steps);
	cJSON_AddNumberToObject(c, "max_grad_norm", o->optim.max_grad_norm);
	cJSON_AddNumberToObject(c, "weight_decay", o->optim.weight_decay);
	cJSON_AddNumberToObject(c, "adam_beta1", o->optim.beta1);
	cJSON_AddNumberToObject(c, "adam_beta2", o->optim.beta2);
	cJSON_AddNumberToObject(c, "adam_eps", o->optim.eps);
	cJSON_AddNumberToObject(c, "seed", (double)o->seed);
	cJSON_AddBoolToObject(c, "grad_checkpoint", o->grad_checkpoint);
	cJSON_AddNumberToObject(c, "eval_every", (double)o->eval_every);
	cJSON_AddNumberToObject(c, "save_every", (double)o->save_every);
	cJSON_AddNumberToObject(c, "threads", o->threads);
	cJSON_AddStringToObject(c, "device", tr->info.device);
	return c;
}

/* Keys that may change between sessions of one run. */
static int free_to_change(const char *k)
{
	static const char *const keys[] = { "base", "data", "eval_data", "eval_every", "save_every",
					    "threads", "device" };
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		if (!strcmp(k, keys[i]))
			return 1;
	return 0;
}

static void value_text(const cJSON *v, char *buf, size_t len)
{
	char *s = v ? cJSON_PrintUnformatted(v) : NULL;
	snprintf(buf, len, "%s", s ? s : "(none)");
	free(s);
}

/* Same run?  The first difference, as the option a user would change. */
static int config_same(const cJSON *now, const cJSON *saved, struct lora_err *err)
{
	const cJSON *e;

	cJSON_ArrayForEach(e, now) {
		const cJSON *s = cJSON_GetObjectItemCaseSensitive(saved, e->string);
		char a[128], b[128], opt[64];

		if (free_to_change(e->string) || (s && cJSON_Compare(e, s, 1)))
			continue;
		snprintf(opt, sizeof(opt), "--%s", strcmp(e->string, "pack") ? e->string : "no-pack");
		for (char *p = opt; *p; p++)
			if (*p == '_')
				*p = '-';
		if (cJSON_IsBool(e) && cJSON_IsBool(s)) {
			int with = !strcmp(e->string, "pack") ? cJSON_IsFalse(s) : cJSON_IsTrue(s);
			return lora_errc(err, LORA_EUSAGE, "the checkpoint was made %s %s; resume with the options "
					 "of the run it belongs to", with ? "with" : "without", opt);
		}
		value_text(e, a, sizeof(a));
		value_text(s, b, sizeof(b));
		return lora_errc(err, LORA_EUSAGE, "the checkpoint was made with %s %s, not %s; resume with "
				 "the options of the run it belongs to", opt, b, a);
	}
	return 0;
}

/* ============================================================ set-up */

static char *abs_path(const char *p, struct lora_err *err)
{
	char *r = realpath(p, NULL);

	if (!r)
		lora_errf(err, "cannot open '%s': %s", p, strerror(errno));
	return r;
}

static int check_opts(const struct lora_train_opts *o, struct lora_err *err)
{
	if (!o->base_dir || !o->data_path || !o->work_dir)
		return lora_errc(err, LORA_EUSAGE, "training needs a base model, a data file and a work area");
	if (o->batch < 1 || o->grad_accum < 1 || o->seq_len < 0 || o->steps < 0)
		return lora_errc(err, LORA_EUSAGE, "bad batch shape (batch %d, grad-accum %d, seq-len %d)",
				 o->batch, o->grad_accum, o->seq_len);
	if (!o->steps && !(o->epochs > 0))
		return lora_errc(err, LORA_EUSAGE, "give --steps or --epochs");
	if (o->eval_path && o->eval_split > 0)
		return lora_errc(err, LORA_EUSAGE, "give --eval-data or --eval-split, not both");
	if (!(o->eval_split >= 0 && o->eval_split <= 0.5))
		return lora_errc(err, LORA_EUSAGE, "--eval-split is a fraction in (0, 0.5]");
	if (!(o->warmup >= 0) || !(o->optim.lr > 0) || !isfinite(o->optim.lr))
		return lora_errc(err, LORA_EUSAGE, "bad learning rate or warmup");
	return 0;
}

static int load_tokenizer(struct lora_trainer *tr, struct lora_err *err)
{
	char *p = lora_path_join(tr->base_abs, "tokenizer.json");
	struct lora_err cerr = { 0 };
	int has;

	if (!p)
		return lora_errf(err, "out of memory");
	has = lora_is_file(p);
	free(p);
	if (!has && tr->o.chat_template)
		return lora_errc(err, LORA_EUSAGE, "--chat-template needs the model's tokenizer.json, which '%s' lacks",
				 tr->o.base_dir);
	if (!has) {
		/* only {"input_ids"} rows then: data.c says so for the others */
		tr->pad_id = tr->net->cfg.eos_token_id >= 0 ? tr->net->cfg.eos_token_id : 0;
		return 0;
	}
	if (lora_tok_load(tr->base_abs, &tr->tok, err) < 0)
		return -1;
	if (tr->o.chat_template) {
		if (lora_chat_open(tr->o.chat_template, lora_tok_bos_str(tr->tok), lora_tok_eos_str(tr->tok), &tr->chat,
				   err) < 0)
			return -1;
		tr->have_chat = 1;
	} else if (lora_chat_jinja(lora_tok_chat_template(tr->tok), lora_tok_bos_str(tr->tok), lora_tok_eos_str(tr->tok),
				   &tr->chat, &cerr) == 0)
		tr->have_chat = 1;
	else
		snprintf(tr->chat_error, sizeof(tr->chat_error), "%s", cerr.msg);
	tr->pad_id = lora_tok_pad(tr->tok) >= 0 ? lora_tok_pad(tr->tok) : lora_tok_eos(tr->tok);
	if (tr->pad_id < 0 || tr->pad_id >= tr->net->V)
		tr->pad_id = 0;   /* padding is never attended to nor learned: any id works */
	return 0;
}

static int load_data(struct lora_trainer *tr, struct lora_err *err)
{
	struct lora_data_opts d = { 0 };
	uint64_t size;

	d.tok = tr->tok;
	d.chat = tr->have_chat ? &tr->chat : NULL;
	d.chat_error = tr->have_chat ? NULL : (tr->chat_error[0] ? tr->chat_error : NULL);
	d.vocab_size = tr->net->V;
	d.skip_bad_rows = tr->o.skip_bad_rows;
	if (lora_sha256_file(tr->data_abs, tr->data_sha, &size, err) < 0 ||
	    lora_data_load(tr->o.data_path, &d, &tr->train, err) < 0)
		return -1;
	if (tr->eval_abs) {
		if (lora_sha256_file(tr->eval_abs, tr->eval_sha, &size, err) < 0 ||
		    lora_data_load(tr->o.eval_path, &d, &tr->eval, err) < 0)
			return -1;
	} else if (tr->o.eval_split > 0) {
		if (tr->train->n_rows < 2)
			return lora_errf(err, "'%s' has %zu row; --eval-split needs at least two", tr->o.data_path,
					 tr->train->n_rows);
		if (lora_data_split(tr->train, tr->o.eval_split, tr->o.seed, &tr->eval, err) < 0)
			return -1;
		memcpy(tr->eval_sha, tr->data_sha, sizeof(tr->eval_sha));
	}
	tr->info.train_rows = tr->train->n_rows;
	tr->info.eval_rows = tr->eval ? tr->eval->n_rows : 0;
	tr->info.skipped_rows = tr->train->n_skipped + (tr->eval && tr->eval_abs ? tr->eval->n_skipped : 0);
	tr->info.first_skipped = tr->train->n_skipped ? tr->train->first_skip
				 : tr->eval && tr->eval->n_skipped ? tr->eval->first_skip : "";
	tr->info.train_tokens = tr->train->n_tokens;
	if (!tr->train->n_loss_tokens)
		return lora_errf(err, "'%s' has no tokens to learn (every label is -100)", tr->o.data_path);
	return 0;
}

static int make_batcher(struct lora_trainer *tr, struct lora_err *err)
{
	struct lora_batcher_opts bo = { 0 };
	const int maxpos = tr->net->cfg.max_position_embeddings;
	const int G = tr->o.grad_accum;
	uint64_t per_epoch;

	tr->info.seq_len = tr->o.seq_len ? tr->o.seq_len
			   : (maxpos > 0 && maxpos < DEFAULT_SEQ_LEN ? maxpos : DEFAULT_SEQ_LEN);
	if (maxpos > 0 && tr->info.seq_len > maxpos)
		return lora_errc(err, LORA_EUSAGE, "--seq-len %d is longer than the model's %d positions",
				 tr->info.seq_len, maxpos);
	if (tr->info.seq_len < 2)
		return lora_errc(err, LORA_EUSAGE, "--seq-len must be at least 2");
	bo.batch = tr->o.batch;
	bo.seq_len = tr->info.seq_len;
	bo.no_pack = tr->o.no_pack;
	bo.shuffle = 1;
	bo.pad_id = tr->pad_id;
	bo.seed = tr->o.seed;
	if (lora_batcher_new(tr->train, &bo, &tr->bt, err) < 0)
		return -1;
	if (!(tr->mb = calloc((size_t)G, sizeof(*tr->mb))))
		return lora_errf(err, "out of memory");
	for (int g = 0; g < G; g++)
		if (lora_data_batch_init(&tr->mb[g], tr->o.batch, tr->info.seq_len, err) < 0)
			return -1;
	per_epoch = lora_batcher_epoch_batches(tr->bt);
	if (tr->o.steps)
		tr->info.total_steps = tr->o.steps;
	else {
		double s = ceil(tr->o.epochs * (double)per_epoch / G);
		if (s > 1e12)
			return lora_errc(err, LORA_EUSAGE, "--epochs %g makes too many steps", tr->o.epochs);
		tr->info.total_steps = s < 1 ? 1 : (long)s;
	}
	tr->info.epochs = (double)tr->info.total_steps * G / (double)per_epoch;
	tr->info.tokens_per_step = (double)tr->o.batch * G * tr->info.seq_len;
	return 0;
}

static int setup_optim(struct lora_trainer *tr, struct lora_err *err)
{
	const long total = tr->info.total_steps;

	tr->ocfg = tr->o.optim;
	tr->ocfg.total_steps = total;
	if (tr->o.warmup < 1) {
		/* transformers: ceil(warmup_ratio * max_steps) */
		tr->ocfg.warmup_steps = (long)ceil(tr->o.warmup * (double)total);
	} else {
		if (tr->o.warmup != floor(tr->o.warmup) || tr->o.warmup > 1e12)
			return lora_errc(err, LORA_EUSAGE, "--warmup %g: a fraction below 1 or a number of steps",
					 tr->o.warmup);
		tr->ocfg.warmup_steps = (long)tr->o.warmup;
	}
	tr->info.warmup_steps = tr->ocfg.warmup_steps;
	if (!tr->o.save_every)
		tr->o.save_every = DEFAULT_SAVE_EVERY;
	if (!tr->o.eval_every)
		tr->o.eval_every = total >= 10 ? (total + 9) / 10 : 1;
	return lora_adamw_init(&tr->opt, tr->net->n_params, err);
}

static int base_fingerprint(struct lora_trainer *tr, struct lora_err *err)
{
	const struct lora_net *net = tr->net;
	size_t n = 0, cap = (size_t)net->L * LORA_NTARGET;
	char **names = calloc(cap ? cap : 1, sizeof(*names));
	int rc = -1;

	if (!names)
		return lora_errf(err, "out of memory");
	for (int l = 0; l < net->L; l++)
		for (int t = 0; t < LORA_NTARGET; t++) {
			char buf[128];
			if (!lora_net_mod(net, l, (enum lora_target)t))
				continue;
			lora_net_module_name(net, buf, sizeof(buf), l, (enum lora_target)t);
			if (!(names[n++] = strdup(buf))) {
				lora_errf(err, "out of memory");
				goto out;
			}
		}
	rc = lora_model_fingerprint(net->base, (const char *const *)names, n, tr->base_fp, err);
out:
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return rc;
}

/* ============================================================ metrics log */

static char *work_path(const struct lora_trainer *tr, const char *name)
{
	return lora_path_join(tr->work_dir, name);
}

static int log_line(struct lora_trainer *tr, const char *line, struct lora_err *err)
{
	return lora_write_all(tr->log_fd, line, strlen(line), LORA_CKPT_LOG, err);
}

static void json_num(struct lora_buf *b, const char *key, double v)
{
	if (isfinite(v))
		lora_buf_printf(b, ", \"%s\": %.9g", key, v);
	else
		lora_buf_printf(b, ", \"%s\": null", key);
}

static int log_event(struct lora_trainer *tr, const char *ev, long step, const char *k1, double v1,
		     const char *k2, double v2, const char *k3, double v3, struct lora_err *err)
{
	struct lora_buf b = LORA_BUF_INIT;
	int rc;

	lora_buf_printf(&b, "{\"event\": \"%s\", \"step\": %ld", ev, step);
	if (k1)
		json_num(&b, k1, v1);
	if (k2)
		json_num(&b, k2, v2);
	if (k3)
		json_num(&b, k3, v3);
	lora_buf_puts(&b, "}\n");
	if (b.oom) {
		lora_buf_free(&b);
		return lora_errf(err, "out of memory");
	}
	rc = log_line(tr, b.data, err);
	lora_buf_free(&b);
	return rc;
}

/* The curves of the run so far from the log (after --resume). */
static int read_log_curves(struct lora_trainer *tr, const char *path, struct lora_err *err)
{
	char *text = NULL, *line, *save = NULL;
	size_t len;

	if (lora_read_file(path, (size_t)1 << 30, &text, &len, err) < 0)
		return -1;
	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		cJSON *o = cJSON_Parse(line);
		const cJSON *ev = cJSON_GetObjectItemCaseSensitive(o, "event");
		const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "step");
		const cJSON *l = cJSON_GetObjectItemCaseSensitive(o, "loss");
		const cJSON *el = cJSON_GetObjectItemCaseSensitive(o, "eval_loss");

		if (cJSON_IsString(ev) && cJSON_IsNumber(st)) {
			if (!strcmp(ev->valuestring, "train") && cJSON_IsNumber(l)) {
				curve_push(&tr->train_curve, st->valuedouble, l->valuedouble);
				tr->last_loss = l->valuedouble;
			} else if (!strcmp(ev->valuestring, "eval") && cJSON_IsNumber(el)) {
				curve_push(&tr->eval_curve, st->valuedouble, el->valuedouble);
				if (st->valuedouble == 0)
					tr->first_eval = el->valuedouble;
				tr->last_eval = el->valuedouble;
			}
		}
		cJSON_Delete(o);
	}
	free(text);
	return 0;
}

/* Open the log: new, or cut back to what the checkpoint had seen. */
static int open_log(struct lora_trainer *tr, int resume, uint64_t keep_bytes, struct lora_err *err)
{
	char *p = work_path(tr, LORA_CKPT_LOG);
	int rc = -1;

	if (!p)
		return lora_errf(err, "out of memory");
	tr->log_fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC | (resume ? 0 : O_TRUNC), 0644);
	if (tr->log_fd < 0) {
		lora_errf(err, "cannot open '%s': %s", p, strerror(errno));
		goto out;
	}
	if (resume) {
		if (ftruncate(tr->log_fd, (off_t)keep_bytes) < 0) {
			lora_errf(err, "cannot truncate '%s': %s", p, strerror(errno));
			goto out;
		}
		if (read_log_curves(tr, p, err) < 0)
			goto out;
	}
	if (lseek(tr->log_fd, 0, SEEK_END) < 0) {
		lora_errf(err, "cannot seek '%s': %s", p, strerror(errno));
		goto out;
	}
	rc = 0;
out:
	free(p);
	return rc;
}

/* ============================================================ checkpoint */

static char *state_json(const struct lora_trainer *tr, uint64_t log_bytes, double elapsed)
{
	cJSON *s = cJSON_CreateObject(), *pos;
	struct lora_data_pos dp;
	char *text;

	if (!s)
		return NULL;
	lora_batcher_get_pos(tr->bt, &dp);
	cJSON_AddNumberToObject(s, "step", (double)tr->step);
	cJSON_AddNumberToObject(s, "total_steps", (double)tr->info.total_steps);
	cJSON_AddNumberToObject(s, "adam_step", (double)tr->opt.step);
	/* forward_backward calls: the dropout stream's counter (the RNG state) */
	cJSON_AddNumberToObject(s, "net_step", (double)tr->net->step);
	pos = cJSON_AddObjectToObject(s, "data_pos");
	cJSON_AddNumberToObject(pos, "epoch", (double)dp.epoch);
	cJSON_AddNumberToObject(pos, "row", (double)dp.row);
	cJSON_AddNumberToObject(pos, "tok", (double)dp.tok);
	cJSON_AddNumberToObject(s, "tokens", (double)tr->tokens);
	cJSON_AddNumberToObject(s, "elapsed_s", elapsed);
	cJSON_AddNumberToObject(s, "log_bytes", (double)log_bytes);
	cJSON_AddNumberToObject(s, "n_params", (double)tr->net->n_params);
	cJSON_AddStringToObject(s, "data_sha256", tr->data_sha);
	cJSON_AddNumberToObject(s, "data_rows", (double)tr->train->n_rows);
	cJSON_AddStringToObject(s, "eval_sha256", tr->eval_sha);
	cJSON_AddStringToObject(s, "base_fingerprint", tr->base_fp);
	cJSON_AddItemToObject(s, "config", cJSON_Duplicate(tr->config, 1));
	text = cJSON_PrintUnformatted(s);
	cJSON_Delete(s);
	return text;
}

static int save_checkpoint(struct lora_trainer *tr, double session_t0, struct lora_err *err)
{
	char *path = work_path(tr, LORA_CKPT_FILE), *state = NULL;
	off_t log_bytes;
	int rc = -1;

	if (!path)
		return lora_errf(err, "out of memory");
	/* the log first, so the checkpoint never counts lines that are not on disk */
	if (fsync(tr->log_fd) < 0 || (log_bytes = lseek(tr->log_fd, 0, SEEK_END)) < 0) {
		lora_errf(err, "cannot sync '%s': %s", LORA_CKPT_LOG, strerror(errno));
		goto out;
	}
	if (!(state = state_json(tr, (uint64_t)log_bytes, tr->elapsed_prev + now_s() - session_t0))) {
		lora_errf(err, "out of memory");
		goto out;
	}
	if (lora_ckpt_write(path, state, tr->net->params, tr->opt.m, tr->opt.v, tr->net->n_params, err) < 0)
		goto out;
	tr->saved_step = tr->step;
	rc = 0;
out:
	free(path);
	free(state);
	return rc;
}

static double num(const cJSON *o, const char *k, int *bad)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);

	if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0)) {
		*bad = 1;
		return 0;
	}
	return v->valuedouble;
}

static const char *str(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsString(v) ? v->valuestring : "";
}

/* Put the checkpoint's state back; the options were compared first. */
static int restore(struct lora_trainer *tr, struct lora_ckpt *c, const cJSON *s, struct lora_err *err)
{
	const cJSON *pos = cJSON_GetObjectItemCaseSensitive(s, "data_pos");
	struct lora_data_pos dp;
	int bad = 0;
	long step = (long)num(s, "step", &bad);

	dp.epoch = (uint64_t)num(pos, "epoch", &bad);
	dp.row = (uint64_t)num(pos, "row", &bad);
	dp.tok = (uint64_t)num(pos, "tok", &bad);
	tr->opt.step = (long)num(s, "adam_step", &bad);
	tr->net->step = (uint64_t)num(s, "net_step", &bad);
	tr->tokens = (uint64_t)num(s, "tokens", &bad);
	tr->elapsed_prev = num(s, "elapsed_s", &bad);
	if (bad || step > tr->info.total_steps)
		return lora_errf(err, "the checkpoint's state is damaged");
	if (c->n != tr->net->n_params)
		return lora_errf(err, "the checkpoint has %zu parameters; this run has %zu", c->n,
				 tr->net->n_params);
	if (lora_batcher_set_pos(tr->bt, &dp, err) < 0)
		return -1;
	memcpy(tr->net->params, c->params, c->n * sizeof(float));
	memcpy(tr->opt.m, c->m, c->n * sizeof(float));
	memcpy(tr->opt.v, c->v, c->n * sizeof(float));
	tr->step = step;
	tr->saved_step = step;
	tr->info.start_step = step;
	return 0;
}

static int resume(struct lora_trainer *tr, struct lora_err *err)
{
	char *path = work_path(tr, LORA_CKPT_FILE);
	struct lora_ckpt c = { 0 };
	cJSON *s = NULL;
	int bad = 0, rc = -1;
	uint64_t log_bytes;

	if (!path)
		return lora_errf(err, "out of memory");
	if (!lora_is_file(path)) {
		lora_errf(err, "no checkpoint to resume in '%s'", tr->work_dir);
		goto out;
	}
	if (lora_ckpt_read(path, &c, err) < 0)
		goto out;
	if (!(s = cJSON_Parse(c.state)) || !cJSON_IsObject(s)) {
		lora_errf(err, "checkpoint '%s': the state is not JSON", path);
		goto out;
	}
	if (config_same(tr->config, cJSON_GetObjectItemCaseSensitive(s, "config"), err) < 0)
		goto out;
	if (strcmp(str(s, "data_sha256"), tr->data_sha)) {
		lora_errf(err, "'%s' changed since the checkpoint was made (sha256 %.12s..., was %.12s...)",
			  tr->o.data_path, tr->data_sha, str(s, "data_sha256"));
		goto out;
	}
	if (strcmp(str(s, "eval_sha256"), tr->eval_sha)) {
		lora_errf(err, "the evaluation data changed since the checkpoint was made");
		goto out;
	}
	if (strcmp(str(s, "base_fingerprint"), tr->base_fp)) {
		lora_errf(err, "the base model '%s' is not the one the checkpoint was made with", tr->o.base_dir);
		goto out;
	}
	log_bytes = (uint64_t)num(s, "log_bytes", &bad);
	if (bad) {
		lora_errf(err, "the checkpoint's state is damaged");
		goto out;
	}
	if (restore(tr, &c, s, err) < 0 || open_log(tr, 1, log_bytes, err) < 0)
		goto out;
	rc = log_event(tr, "resume", tr->step, NULL, 0, NULL, 0, NULL, 0, err);
out:
	cJSON_Delete(s);
	lora_ckpt_free(&c);
	free(path);
	return rc;
}

/* A fresh run: no checkpoint may be lying there unasked. */
static int start_fresh(struct lora_trainer *tr, struct lora_err *err)
{
	char *path = work_path(tr, LORA_CKPT_FILE), *cfg = NULL;
	int rc = -1;

	if (!path)
		return lora_errf(err, "out of memory");
	if (lora_is_file(path)) {
		struct lora_ckpt c;
		cJSON *s = NULL;
		int bad = 0;
		long step = -1, total = -1;

		if (lora_ckpt_read(path, &c, NULL) == 0 && (s = cJSON_Parse(c.state))) {
			step = (long)num(s, "step", &bad);
			total = (long)num(s, "total_steps", &bad);
		}
		cJSON_Delete(s);
		lora_ckpt_free(&c);
		lora_errf(err, "an unfinished run of this name has a checkpoint (step %ld of %ld) in '%s'; "
			  "continue it with --resume, or remove it with 'lora rm'", step, total, tr->work_dir);
		goto out;
	}
	if (open_log(tr, 0, 0, err) < 0)
		goto out;
	if (!(cfg = cJSON_PrintUnformatted(tr->config))) {
		lora_errf(err, "out of memory");
		goto out;
	}
	{
		struct lora_buf b = LORA_BUF_INIT;
		lora_buf_printf(&b, "{\"event\": \"start\", \"step\": 0, \"total_steps\": %ld, "
				"\"lora_version\": \"%s\", \"config\": %s}\n", tr->info.total_steps, LORA_VERSION, cfg);
		rc = b.oom ? lora_errf(err, "out of memory") : log_line(tr, b.data, err);
		lora_buf_free(&b);
	}
out:
	free(cfg);
	free(path);
	return rc;
}

int lora_train_opts_from_checkpoint(const char *work_dir, struct lora_train_opts *o, char **keep,
				    struct lora_err *err)
{
	char *path = lora_path_join(work_dir, LORA_CKPT_FILE);
	struct lora_ckpt c = { 0 };
	cJSON *s = NULL;
	const cJSON *cfg;
	struct lora_buf b = LORA_BUF_INIT;
	const char *keys[4] = { "base", "data", "eval_data", "chat_template" };
	size_t off[4];
	int bad = 0, rc = -1;

	*keep = NULL;
	if (!path)
		return lora_errf(err, "out of memory");
	if (!lora_is_file(path)) {
		lora_errf(err, "no checkpoint to resume in '%s'", work_dir);
		goto out;
	}
	if (lora_ckpt_read(path, &c, err) < 0)
		goto out;
	s = cJSON_Parse(c.state);
	cfg = cJSON_GetObjectItemCaseSensitive(s, "config");
	if (!cJSON_IsObject(cfg)) {
		lora_errf(err, "checkpoint '%s': no configuration in its state", path);
		goto out;
	}
	/* the strings, NUL-separated, in one allocation the caller frees */
	for (int i = 0; i < 4; i++) {
		off[i] = b.len;
		lora_buf_puts(&b, str(cfg, keys[i]));
		lora_buf_add(&b, "", 1);
	}
	if (b.oom) {
		lora_errf(err, "out of memory");
		goto out;
	}
	o->base_dir = b.data + off[0];
	o->data_path = b.data + off[1];
	o->eval_path = b.data[off[2]] ? b.data + off[2] : NULL;
	o->chat_template = b.data[off[3]] ? b.data + off[3] : NULL;
	o->eval_split = num(cfg, "eval_split", &bad);
	o->skip_bad_rows = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg, "skip_bad_rows"));
	o->no_pack = !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg, "pack"));
	o->seq_len = (int)num(cfg, "seq_len", &bad);
	o->batch = (int)num(cfg, "batch", &bad);
	o->grad_accum = (int)num(cfg, "grad_accum", &bad);
	o->steps = (long)num(cfg, "steps", &bad);
	o->lora.rank = (int)num(cfg, "rank", &bad);
	o->lora.alpha = num(cfg, "alpha", &bad);
	o->lora.rslora = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg, "rslora"));
	o->lora.dropout = num(cfg, "dropout", &bad);
	if (lora_targets_parse(str(cfg, "targets"), &o->lora.targets, NULL) < 0 ||
	    lora_quant_parse(str(cfg, "quant"), &o->quant) < 0 ||
	    lora_sched_parse(str(cfg, "schedule"), &o->optim.sched) < 0)
		bad = 1;
	o->optim.lr = num(cfg, "lr", &bad);
	o->warmup = num(cfg, "warmup", &bad);
	o->optim.max_grad_norm = num(cfg, "max_grad_norm", &bad);
	o->optim.weight_decay = num(cfg, "weight_decay", &bad);
	o->optim.beta1 = num(cfg, "adam_beta1", &bad);
	o->optim.beta2 = num(cfg, "adam_beta2", &bad);
	o->optim.eps = num(cfg, "adam_eps", &bad);
	o->seed = (uint64_t)num(cfg, "seed", &bad);
	o->grad_checkpoint = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg, "grad_checkpoint"));
	o->eval_every = (long)num(cfg, "eval_every", &bad);
	o->save_every = (long)num(cfg, "save_every", &bad);
	o->threads = (int)num(cfg, "threads", &bad);
	if (bad) {
		lora_errf(err, "checkpoint '%s': its configuration is damaged", path);
		goto out;
	}
	*keep = lora_buf_take(&b);
	rc = 0;
out:
	lora_buf_free(&b);
	cJSON_Delete(s);
	lora_ckpt_free(&c);
	free(path);
	return rc;
}

int lora_trainer_open(struct lora_trainer **out, const struct lora_train_opts *o, struct lora_err *err)
{
	struct lora_trainer *tr;
	struct lora_net_opts no;
	struct lora_cfg lc;

	*out = NULL;
	if (check_opts(o, err) < 0)
		return -1;
	if (!(tr = calloc(1, sizeof(*tr))))
		return lora_errf(err, "out of memory");
	tr->o = *o;
	tr->lock_fd = tr->log_fd = -1;
	tr->saved_step = -1;
	tr->last_loss = tr->first_eval = tr->last_eval = NAN;
	if (pick_device(tr, err) < 0)
		goto fail;
	if (!(tr->work_dir = strdup(o->work_dir))) {
		lora_errf(err, "out of memory");
		goto fail;
	}
	if ((tr->lock_fd = lora_work_lock(tr->work_dir, err)) < 0)
		goto fail;
	if (!(tr->base_abs = abs_path(o->base_dir, err)) || !(tr->data_abs = abs_path(o->data_path, err)) ||
	    (o->eval_path && !(tr->eval_abs = abs_path(o->eval_path, err))))
		goto fail;
	{
		const char *bn = o->base_name ? o->base_name : strrchr(tr->base_abs, '/');
		if (!(tr->base_name = strdup(bn ? (bn[0] == '/' ? bn + 1 : bn) : tr->base_abs))) {
			lora_errf(err, "out of memory");
			goto fail;
		}
	}
	lora_net_opts_defaults(&no);
	no.quant = o->quant;
	no.threads = o->threads;
	no.checkpoint = o->grad_checkpoint;
	if (lora_net_open(&tr->net, tr->base_abs, &no, err) < 0 || use_device(tr, err) < 0)
		goto fail;
	if (load_tokenizer(tr, err) < 0 || load_data(tr, err) < 0 || make_batcher(tr, err) < 0)
		goto fail;
	lc = o->lora;
	lc.seed = o->seed;
	if (lora_net_init_lora(tr->net, &lc, err) < 0)
		goto fail;
	tr->info.n_params = tr->net->n_params;
	if (setup_optim(tr, err) < 0 || base_fingerprint(tr, err) < 0)
		goto fail;
	if (!(tr->config = config_json(tr))) {
		lora_errf(err, "out of memory");
		goto fail;
	}
	if ((o->resume ? resume(tr, err) : start_fresh(tr, err)) < 0)
		goto fail;
	*out = tr;
	return 0;
fail:
	lora_trainer_close(tr);
	return -1;
}

/* A work area with nothing to resume (a run that failed before its first checkpoint) goes. */
static void drop_empty_work(struct lora_trainer *tr)
{
	char *ck = work_path(tr, LORA_CKPT_FILE), *parent;

	if (ck && !lora_is_file(ck) && lora_is_dir(tr->work_dir) && lora_rm_rf(tr->work_dir, NULL) == 0 &&
	    (parent = lora_dirname(tr->work_dir))) {
		rmdir(parent);   /* only when empty */
		free(parent);
	}
	free(ck);
}

void lora_trainer_close(struct lora_trainer *tr)
{
	if (!tr)
		return;
	if (tr->log_fd >= 0)
		close(tr->log_fd);
	if (tr->lock_fd >= 0) {
		drop_empty_work(tr);   /* while we hold the lock */
		close(tr->lock_fd);
	}
	for (int g = 0; tr->mb && g < tr->o.grad_accum; g++)
		lora_data_batch_free(&tr->mb[g]);
	free(tr->mb);
	lora_batcher_free(tr->bt);
	lora_data_free(tr->train);
	lora_data_free(tr->eval);
	if (tr->have_chat)
		lora_chat_free(&tr->chat);
	lora_tok_free(tr->tok);
	lora_adamw_free(&tr->opt);
	lora_net_close(tr->net);
	cJSON_Delete(tr->config);
	free(tr->train_curve.p);
	free(tr->eval_curve.p);
	free(tr->base_abs);
	free(tr->data_abs);
	free(tr->eval_abs);
	free(tr->base_name);
	free(tr->work_dir);
	free(tr);
}

/* ============================================================ evaluation */

int lora_trainer_eval(struct lora_trainer *tr, double *loss, struct lora_err *err)
{
	struct lora_eval_opts eo = { .batch = tr->o.batch, .seq_len = tr->info.seq_len,
				     .no_pack = tr->o.no_pack, .pad_id = tr->pad_id };
	struct lora_eval_result res;

	*loss = NAN;
	if (!tr->eval)
		return lora_errf(err, "no evaluation data");
	if (lora_eval_run(tr->net, tr->eval, &eo, &res, err) < 0)
		return -1;
	if (!res.tokens)
		return lora_errf(err, "the evaluation rows have no tokens to predict");
	*loss = res.loss;
	return 0;
}

static int do_eval(struct lora_trainer *tr, lora_train_cb cb, void *ud, struct lora_train_progress *p,
		   struct lora_err *err)
{
	double loss;

	if (lora_trainer_eval(tr, &loss, err) < 0)
		return lora_err_prefix(err, "evaluating at step %ld", tr->step);
	if (curve_push(&tr->eval_curve, (double)tr->step, loss) < 0)
		return lora_errf(err, "out of memory");
	if (tr->step == 0)
		tr->first_eval = loss;
	tr->last_eval = loss;
	if (log_event(tr, "eval", tr->step, "eval_loss", loss, NULL, 0, NULL, 0, err) < 0)
		return -1;
	if (cb) {
		p->ev = LORA_EV_EVAL;
		p->eval_loss = loss;
		cb(p, ud);
	}
	return 0;
}

/* ============================================================ steps */

/*
 * One optimizer step.  Returns 0, 1 when *stop came in between micro-batches
 * (the step is undone: data position and dropout counter put back, no
 * update), -1 on error.
 */
static int one_step(struct lora_trainer *tr, volatile sig_atomic_t *stop, double *loss_out,
		    double *norm_out, double *lr_out, uint64_t *tokens_out, struct lora_err *err)
{
	const int G = tr->o.grad_accum;
	struct lora_data_pos pos0;
	const uint64_t net_step0 = tr->net->step;
	double loss_sum = 0, norm, lr;
	int64_t targets = 0;
	uint64_t tokens = 0;

	lora_batcher_get_pos(tr->bt, &pos0);
	for (int g = 0; g < G; g++) {
		if (lora_batcher_next(tr->bt, &tr->mb[g], err) != 1)
			return lora_err_prefix(err, "reading the data");
		targets += tr->mb[g].n_targets;
		for (int r = 0; r < tr->mb[g].B; r++)
			tokens += (uint64_t)tr->mb[g].len[r];
	}
	lora_net_zero_grad(tr->net);
	for (int g = 0; g < G; g++) {
		const struct lora_data_batch *m = &tr->mb[g];
		struct lora_batch nb = { m->B, m->T, m->ids, m->labels, m->len };
		struct lora_fb_result res;

		if (stop && *stop) {
			if (lora_batcher_set_pos(tr->bt, &pos0, err) < 0)
				return -1;
			tr->net->step = net_step0;
			lora_net_zero_grad(tr->net);
			return 1;
		}
		/* the gradient of (sum of token losses of the step) / (their count) */
		if (lora_net_forward_backward(tr->net, &nb, targets ? 1.0 / (double)targets : 1.0, &res, err) < 0)
			return lora_err_prefix(err, "step %ld", tr->step + 1);
		loss_sum += res.loss_sum;
	}
	*loss_out = targets ? loss_sum / (double)targets : 0.0;
	if (!isfinite(*loss_out)) {
		lora_errf(err, "the loss is %s at step %ld; training stopped", isnan(*loss_out) ? "nan" : "inf",
			  tr->step + 1);
		return 2;
	}
	lr = lora_sched_lr(&tr->ocfg, tr->step);
	if (tr->net->be->optim_step) {   /* on the device (it leaves the update undone when norm is not finite) */
		if (tr->net->be->optim_step(tr->net, &tr->opt, &tr->ocfg, lr, &norm, err) < 0)
			return lora_err_prefix(err, "step %ld", tr->step + 1);
	} else {
		norm = lora_clip_grad_norm(tr->net->grads, tr->net->n_params, tr->ocfg.max_grad_norm);
	}
	if (!isfinite(norm)) {
		lora_errf(err, "the gradient norm is %s at step %ld; training stopped",
			  isnan(norm) ? "nan" : "inf", tr->step + 1);
		return 2;
	}
	if (!tr->net->be->optim_step)
		lora_adamw_step(&tr->opt, &tr->ocfg, tr->net->params, tr->net->grads, lr);
	tr->step++;
	*norm_out = norm;
	*lr_out = lr;
	*tokens_out = tokens;
	return 0;
}

static void fill_times(struct lora_trainer *tr, struct lora_train_progress *p, double t0, uint64_t tok0,
		       long step0)
{
	const double el = now_s() - t0;
	const long done = tr->step - step0;

	p->step = tr->step;
	p->total_steps = tr->info.total_steps;
	p->tokens = tr->tokens - tok0;
	p->tokens_per_s = el > 0 ? (double)p->tokens / el : 0;
	p->elapsed_s = tr->elapsed_prev + el;
	p->eta_s = done > 0 ? el / done * (double)(tr->info.total_steps - tr->step) : NAN;
}

/* After a NaN, say where the last good state is. */
static int nan_error(struct lora_trainer *tr, struct lora_err *err)
{
	char what[sizeof(err->msg)];

	memcpy(what, err->msg, sizeof(what));
	if (tr->saved_step >= 0)
		return lora_errf(err, "%.200s; the last good checkpoint (step %ld) is kept in '%s'", what,
				 tr->saved_step, tr->work_dir);
	return lora_errf(err, "%.200s; there is no checkpoint to go back to (lower --lr, or check the data)",
			 what);
}

int lora_trainer_run(struct lora_trainer *tr, lora_train_cb cb, void *ud, volatile sig_atomic_t *stop,
		     struct lora_err *err)
{
	const double t0 = now_s();
	const uint64_t tok0 = tr->tokens;
	const long step0 = tr->step, total = tr->info.total_steps;
	struct lora_train_progress p;

	memset(&p, 0, sizeof(p));
	fill_times(tr, &p, t0, tok0, step0);
	if (tr->step == 0 && tr->eval && !tr->eval_curve.n && do_eval(tr, cb, ud, &p, err) < 0)
		return -1;
	while (tr->step < total) {
		double loss = 0, norm = 0, lr = 0;
		uint64_t tokens = 0;
		int rc = one_step(tr, stop, &loss, &norm, &lr, &tokens, err);

		if (rc == 2)
			return nan_error(tr, err);
		if (rc < 0)
			return -1;
		if (rc == 1)
			break;
		tr->tokens += tokens;
		tr->last_loss = loss;
		if (curve_push(&tr->train_curve, (double)tr->step, loss) < 0)
			return lora_errf(err, "out of memory");
		fill_times(tr, &p, t0, tok0, step0);
		if (log_event(tr, "train", tr->step, "loss", loss, "lr", lr, "grad_norm", norm, err) < 0)
			return -1;
		if (cb) {
			p.ev = LORA_EV_STEP;
			p.loss = loss;
			p.lr = lr;
			p.grad_norm = norm;
			cb(&p, ud);
		}
		if (tr->eval && (tr->step % tr->o.eval_every == 0 || tr->step == total) &&
		    do_eval(tr, cb, ud, &p, err) < 0)
			return -1;
		if ((tr->step % tr->o.save_every == 0 || tr->step == total) && !(stop && *stop)) {
			if (save_checkpoint(tr, t0, err) < 0)
				return -1;
			if (log_event(tr, "checkpoint", tr->step, NULL, 0, NULL, 0, NULL, 0, err) < 0)
				return -1;
			if (cb) {
				p.ev = LORA_EV_SAVE;
				cb(&p, ud);
			}
		}
		if (stop && *stop)
			break;
	}
	if (tr->step < total) {   /* stopped */
		if (tr->saved_step != tr->step) {
			if (log_event(tr, "stop", tr->step, NULL, 0, NULL, 0, NULL, 0, err) < 0 ||
			    save_checkpoint(tr, t0, err) < 0)
				return -1;
		}
		return 1;
	}
	tr->elapsed_prev += now_s() - t0;
	return log_event(tr, "done", tr->step, "train_loss", tr->last_loss, "eval_loss", tr->last_eval,
			 "wall_s", tr->elapsed_prev, err);
}

/* ============================================================ output */

void lora_trainer_result(const struct lora_trainer *tr, struct lora_train_result *r)
{
	r->steps = tr->step;
	r->tokens = tr->tokens;
	r->train_loss = tr->last_loss;
	r->eval_loss_first = tr->first_eval;
	r->eval_loss = tr->last_eval;
	r->wall_s = tr->elapsed_prev;
}

static void add_num_or_null(cJSON *o, const char *k, double v)
{
	if (isfinite(v))
		cJSON_AddNumberToObject(o, k, v);
	else
		cJSON_AddNullToObject(o, k);
}

char *lora_trainer_provenance(const struct lora_trainer *tr, struct lora_err *err)
{
	cJSON *p = cJSON_CreateObject(), *b, *d, *e;
	char *text;

	if (!p) {
		lora_errf(err, "out of memory");
		return NULL;
	}
	cJSON_AddStringToObject(p, "trainer", "lora train");
	cJSON_AddStringToObject(p, "lora_version", LORA_VERSION);
	b = cJSON_AddObjectToObject(p, "base");
	cJSON_AddStringToObject(b, "name", tr->base_name);
	cJSON_AddStringToObject(b, "path", tr->base_abs);
	cJSON_AddStringToObject(b, "fingerprint", tr->base_fp);
	cJSON_AddStringToObject(b, "architecture", tr->net->cfg.architecture);
	d = cJSON_AddObjectToObject(p, "data");
	cJSON_AddStringToObject(d, "path", tr->data_abs);
	cJSON_AddStringToObject(d, "sha256", tr->data_sha);
	/* rows of the file: with --eval-split the held-out ones too */
	cJSON_AddNumberToObject(d, "rows", (double)(tr->train->n_rows +
						    (tr->eval && !tr->eval_abs ? tr->eval->n_rows : 0)));
	cJSON_AddNumberToObject(d, "train_rows", (double)tr->train->n_rows);
	cJSON_AddNumberToObject(d, "skipped_rows", (double)tr->train->n_skipped);
	cJSON_AddNumberToObject(d, "tokens", (double)tr->train->n_tokens);
	if (tr->eval) {
		e = cJSON_AddObjectToObject(d, "eval");
		if (tr->eval_abs) {
			cJSON_AddStringToObject(e, "path", tr->eval_abs);
			cJSON_AddStringToObject(e, "sha256", tr->eval_sha);
		} else {
			cJSON_AddNumberToObject(e, "split", tr->o.eval_split);
		}
		cJSON_AddNumberToObject(e, "rows", (double)tr->eval->n_rows);
	}
	cJSON_AddItemToObject(p, "hyperparameters", cJSON_Duplicate(tr->config, 1));
	cJSON_AddNumberToObject(p, "steps", (double)tr->step);
	cJSON_AddNumberToObject(p, "epochs", tr->info.epochs);
	cJSON_AddNumberToObject(p, "tokens", (double)tr->tokens);
	add_num_or_null(p, "final_train_loss", tr->last_loss);
	add_num_or_null(p, "initial_eval_loss", tr->first_eval);
	add_num_or_null(p, "final_eval_loss", tr->last_eval);
	cJSON_AddNumberToObject(p, "wall_time_s", tr->elapsed_prev);
	cJSON_AddStringToObject(p, "device", tr->info.device);
	text = cJSON_PrintUnformatted(p);
	cJSON_Delete(p);
	if (!text)
		lora_errf(err, "out of memory");
	return text;
}

static int write_plot(const struct lora_trainer *tr, const char *path, const char *ref, struct lora_err *err)
{
	struct lora_series s[2];
	double *x[2] = { NULL, NULL }, *y[2] = { NULL, NULL };
	const struct curve *c[2] = { &tr->train_curve, &tr->eval_curve };
	size_t ns = 0;
	char title[300];
	int rc = -1;

	for (int i = 0; i < 2; i++) {
		if (!c[i]->n)
			continue;
		x[i] = malloc(c[i]->n * sizeof(double));
		y[i] = malloc(c[i]->n * sizeof(double));
		if (!x[i] || !y[i]) {
			lora_errf(err, "out of memory");
			goto out;
		}
		for (size_t k = 0; k < c[i]->n; k++) {
			x[i][k] = c[i]->p[k].step;
			y[i][k] = c[i]->p[k].loss;
		}
		s[ns].label = i ? "eval" : "train";
		s[ns].color = i ? "#d62728" : "#1f77b4";
		s[ns].x = x[i];
		s[ns].y = y[i];
		s[ns].n = c[i]->n;
		ns++;
	}
	snprintf(title, sizeof(title), "%s: loss on %s", ref, tr->base_name);
	rc = lora_plot_svg_file(path, title, s, ns, err);
out:
	for (int i = 0; i < 2; i++) {
		free(x[i]);
		free(y[i]);
	}
	return rc;
}

/* Copy the metrics log into the package folder. */
static int copy_log(const struct lora_trainer *tr, const char *dst, struct lora_err *err)
{
	char *src = work_path(tr, LORA_CKPT_LOG), *text = NULL;
	size_t len;
	int rc = -1;

	if (!src)
		return lora_errf(err, "out of memory");
	if (fsync(tr->log_fd) < 0)
		lora_errf(err, "cannot sync '%s': %s", src, strerror(errno));
	else if (lora_read_file(src, (size_t)1 << 30, &text, &len, err) == 0)
		rc = lora_write_file_atomic(dst, text, len, 0644, err);
	free(text);
	free(src);
	return rc;
}

int lora_trainer_publish(struct lora_trainer *tr, const char *store_dir, const char *ref,
			 const char *key_path, const char *description, char digest_out[72],
			 struct lora_err *err)
{
	char *outdir = work_path(tr, "out"), *log = NULL, *svg = NULL, *prov = NULL;
	struct lora_import_opts io = { 0 };
	int rc = -1;

	if (!outdir)
		return lora_errf(err, "out of memory");
	if (tr->step < tr->info.total_steps) {
		lora_errf(err, "the run is not finished (step %ld of %ld)", tr->step, tr->info.total_steps);
		goto out;
	}
	if (lora_is_dir(outdir) && lora_rm_rf(outdir, err) < 0)
		goto out;
	if (lora_net_save_adapter(tr->net, outdir, tr->base_name, err) < 0)
		goto out;
	if (!(log = lora_path_join(outdir, LORA_CKPT_LOG)) || !(svg = lora_path_join(outdir, "loss.svg"))) {
		lora_errf(err, "out of memory");
		goto out;
	}
	if (copy_log(tr, log, err) < 0 || write_plot(tr, svg, ref, err) < 0 ||
	    !(prov = lora_trainer_provenance(tr, err)))
		goto out;
	io.key_path = key_path;
	io.description = description;
	io.user = tr->o.user;
	io.created = tr->o.created;
	io.base_fingerprint = tr->base_fp;
	io.provenance_json = prov;
	/* training_log.jsonl and loss.svg in the folder are packaged with it */
	if (lora_store_add_peft_dir(store_dir, outdir, ref, &io, digest_out, err) < 0)
		goto out;
	/* in the store now: the work area has served (we hold its lock, so remove it directly) */
	{
		char *parent = lora_dirname(tr->work_dir);
		if (lora_rm_rf(tr->work_dir, err) < 0) {
			free(parent);
			goto out;
		}
		if (parent)
			rmdir(parent);   /* only when empty */
		free(parent);
	}
	rc = 0;
out:
	free(outdir);
	free(log);
	free(svg);
	free(prov);
	return rc;
}
