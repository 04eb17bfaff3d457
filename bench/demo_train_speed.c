/*
 * demo_train_speed.c - a stand-in for `lora train` while the training loop is
 * being written: trains a LoRA adapter on {"prompt", "completion"} rows with
 * the train API (model, tokenizer, AdamW) and reports eval loss before and
 * after and the wall time, so the demo's settings can be sized on 2 cores.
 *
 *   demo_train_speed BASE TRAIN.jsonl EVAL.jsonl OUT_DIR [steps] [batch] [lr] [rank] [threads]
 *
 * Rows are tokenized as train/data.h says (prompt + completion + EOS, loss
 * from the first token that begins inside the completion), one row per
 * sequence, padded to the longest row of the batch; rows are drawn in a
 * seeded order.  Test tooling: prints and exits on error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "libadapter/base/fsutil.h"
#include "train/net.h"
#include "train/optim.h"
#include "train/tokenizer.h"

struct row {
	int32_t *ids, *labels;
	int n;
};

static void die(const char *what, const struct lora_err *e)
{
	fprintf(stderr, "demo_train_speed: %s%s%s\n", what, e ? ": " : "", e ? e->msg : "");
	exit(1);
}

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static struct row *load(const char *path, const struct lora_tok *tok, int *nrows)
{
	char *text, *line, *save = NULL;
	size_t len;
	struct lora_err err;
	struct row *rows = NULL;
	int n = 0, cap = 0;

	if (lora_read_file(path, 64u << 20, &text, &len, &err) < 0)
		die("read", &err);
	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		cJSON *o = cJSON_Parse(line);
		const char *p = cJSON_GetStringValue(cJSON_GetObjectItem(o, "prompt"));
		const char *c = cJSON_GetStringValue(cJSON_GetObjectItem(o, "completion"));
		struct lora_tokens t = LORA_TOKENS_INIT;
		char *all;
		struct row *r;

		if (!p || !c)
			die("a row without prompt and completion", NULL);
		all = malloc(strlen(p) + strlen(c) + 1);
		strcpy(all, p);
		strcat(all, c);
		if (lora_tok_encode(tok, all, strlen(all), LORA_TOK_ADD_SPECIAL, &t, &err) < 0 ||
		    lora_tokens_push(&t, lora_tok_eos(tok), (int64_t)strlen(all), &err) < 0)
			die("tokenize", &err);
		if (n == cap && !(rows = realloc(rows, sizeof(*rows) * (size_t)(cap = cap ? 2 * cap : 64))))
			die("out of memory", NULL);
		r = &rows[n++];
		r->n = (int)t.n;
		r->ids = malloc(sizeof(int32_t) * t.n);
		r->labels = malloc(sizeof(int32_t) * t.n);
		for (size_t i = 0; i < t.n; i++) {
			r->ids[i] = t.ids[i];
			r->labels[i] = t.start[i] >= (int64_t)strlen(p) ? t.ids[i] : -100;
		}
		lora_tokens_free(&t);
		free(all);
		cJSON_Delete(o);
	}
	free(text);
	*nrows = n;
	return rows;
}

/* rows [r0, r0+B) of order into a padded batch */
static void fill(const struct row *rows, const int *order, int B, int32_t *ids, int32_t *lab, int32_t *len,
		 int *T)
{
	int t = 1;
	for (int b = 0; b < B; b++)
		t = rows[order[b]].n > t ? rows[order[b]].n : t;
	*T = t;
	for (int b = 0; b < B; b++) {
		const struct row *r = &rows[order[b]];
		for (int i = 0; i < t; i++) {
			ids[b * t + i] = i < r->n ? r->ids[i] : 0;
			lab[b * t + i] = i < r->n ? r->labels[i] : -100;
		}
		len[b] = r->n;
	}
}

static double eval(struct lora_net *net, const struct row *rows, int n)
{
	double sum = 0;
	long tok = 0;
	struct lora_err err;

	for (int i = 0; i < n; i++) {
		struct lora_batch b = {1, rows[i].n, rows[i].ids, rows[i].labels, NULL};
		struct lora_fb_result r;
		if (lora_net_forward(net, &b, NULL, &r, &err) < 0)
			die("forward", &err);
		sum += r.loss_sum;
		tok += r.tokens;
	}
	return sum / (double)tok;
}

int main(int argc, char **argv)
{
	struct lora_err err;
	struct lora_tok *tok;
	struct lora_net *net;
	struct lora_net_opts no;
	struct lora_cfg lc;
	struct lora_adamw opt;
	struct lora_optim_cfg oc;
	struct row *tr, *ev;
	int ntr, nev, steps, B, *order, T;
	int32_t *ids, *lab, *len;
	double t0, before, after, lsum = 0;
	uint64_t s = 12345;

	if (argc < 5)
		die("usage: demo_train_speed BASE TRAIN EVAL OUT [steps batch lr rank threads]", NULL);
	steps = argc > 5 ? atoi(argv[5]) : 60;
	B = argc > 6 ? atoi(argv[6]) : 8;
	lora_net_opts_defaults(&no);
	no.threads = argc > 9 ? atoi(argv[9]) : 2;
	lora_cfg_defaults(&lc);
	lc.rank = argc > 8 ? atoi(argv[8]) : 8;
	lc.alpha = 2.0 * lc.rank;
	lc.dropout = 0.05;
	lora_optim_defaults(&oc);
	oc.lr = argc > 7 ? atof(argv[7]) : 2e-3;
	if (lora_tok_load(argv[1], &tok, &err) < 0 || lora_net_open(&net, argv[1], &no, &err) < 0 ||
	    lora_net_init_lora(net, &lc, &err) < 0 || lora_adamw_init(&opt, net->n_params, &err) < 0)
		die("open", &err);
	tr = load(argv[2], tok, &ntr);
	ev = load(argv[3], tok, &nev);
	order = malloc(sizeof(int) * (size_t)ntr);
	ids = malloc(sizeof(int32_t) * (size_t)B * 256);
	lab = malloc(sizeof(int32_t) * (size_t)B * 256);
	len = malloc(sizeof(int32_t) * (size_t)B);
	for (int i = 0; i < ntr; i++)
		order[i] = i;
	before = eval(net, ev, nev);
	t0 = now();
	for (int st = 0, pos = ntr; st < steps; st++, pos += B) {
		struct lora_batch b;
		struct lora_fb_result r;

		if (pos + B > ntr) {   /* new epoch: Fisher-Yates with an LCG */
			for (int i = ntr - 1; i > 0; i--) {
				int j, x;
				s = s * 6364136223846793005ull + 1442695040888963407ull;
				j = (int)((s >> 33) % (uint64_t)(i + 1));
				x = order[i], order[i] = order[j], order[j] = x;
			}
			pos = 0;
		}
		fill(tr, order + pos, B, ids, lab, len, &T);
		b = (struct lora_batch){B, T, ids, lab, len};
		lora_net_zero_grad(net);
		if (lora_net_forward_backward(net, &b, 0, &r, &err) < 0)
			die("train", &err);
		lora_clip_grad_norm(net->grads, net->n_params, 1.0);
		lora_adamw_step(&opt, &oc, net->params, net->grads,
				oc.lr * (st < 5 ? (st + 1) / 5.0 : 1.0));
		lsum += r.loss;
		if ((st + 1) % 10 == 0) {
			printf("step %4d loss %.4f (%.1f s)\n", st + 1, lsum / 10, now() - t0);
			fflush(stdout);
			lsum = 0;
		}
	}
	after = eval(net, ev, nev);
	printf("train %.1f s for %d steps of %d rows; eval loss %.4f -> %.4f\n", now() - t0, steps, B, before,
	       after);
	if (lora_net_save_adapter(net, argv[4], "demo", &err) < 0)
		die("save", &err);
	return 0;
}
