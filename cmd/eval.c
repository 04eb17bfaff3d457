/*
 * eval.c - `lora eval`: mean loss and perplexity of a base model, with or
 * without an adapter, over pre-tokenized rows
 *     {"input_ids": [...], "labels": [...]}        (labels optional)
 * one JSON object a line.  Labels follow transformers: aligned with
 * input_ids, position t predicts labels[t+1], -100 ignored, absent labels
 * mean the ids themselves.  The loss is the mean over every predicted token
 * of the file (token-weighted), the perplexity its exponential.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cmd/cmd.h"
#include "libadapter/base/fsutil.h"
#include "libadapter/format/safetensors.h"
#include "libadapter/store/store.h"
#include "train/net.h"

#define MAX_ROW_TOKENS (1 << 20)
#define BATCH_TOKENS 2048   /* rows per forward pass: about this many positions */

struct row {
	int32_t *ids, *labels;   /* [n] each; labels are the ids when the row has none */
	int n;
};

static void free_rows(struct row *rows, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(rows[i].ids);
		free(rows[i].labels);
	}
	free(rows);
}

/* An array of token ids (labels: -100 allowed), each below V. */
static int int_array(const cJSON *a, int V, int labels, int32_t **out, int *n, const char *what,
		     const char *path, size_t line, struct lora_err *err)
{
	const cJSON *e;
	int i = 0, len;

	if (!cJSON_IsArray(a))
		return lora_errf(err, "'%s' line %zu: \"%s\" is not an array", path, line, what);
	len = cJSON_GetArraySize(a);
	if (len > MAX_ROW_TOKENS)
		return lora_errf(err, "'%s' line %zu: more than %d tokens", path, line, MAX_ROW_TOKENS);
	if (!(*out = malloc(sizeof(int32_t) * (size_t)(len ? len : 1))))
		return lora_errf(err, "out of memory");
	cJSON_ArrayForEach(e, a) {
		double v = cJSON_IsNumber(e) ? e->valuedouble : -1e300;

		if (v != floor(v) || !((v >= 0 && v < V) || (labels && v == -100))) {
			free(*out);
			*out = NULL;
			return lora_errf(err, "'%s' line %zu: \"%s\"[%d] is not a token id of this model "
					 "(0..%d%s)", path, line, what, i, V - 1, labels ? " or -100" : "");
		}
		(*out)[i++] = (int32_t)v;
	}
	*n = len;
	return 0;
}

static int parse_row(const char *text, size_t len, int V, struct row *r, const char *path,
		     size_t line, struct lora_err *err)
{
	cJSON *o = cJSON_ParseWithLength(text, len);
	const cJSON *lab;
	int nl = 0, rc = -1;

	memset(r, 0, sizeof(*r));
	if (!o || !cJSON_IsObject(o)) {
		lora_errf(err, "'%s' line %zu: not a JSON object", path, line);
		goto out;
	}
	if (int_array(cJSON_GetObjectItemCaseSensitive(o, "input_ids"), V, 0, &r->ids, &r->n,
		      "input_ids", path, line, err) < 0)
		goto out;
	lab = cJSON_GetObjectItemCaseSensitive(o, "labels");
	if (lab && !cJSON_IsNull(lab)) {
		if (int_array(lab, V, 1, &r->labels, &nl, "labels", path, line, err) < 0)
			goto out;
		if (nl != r->n) {
			lora_errf(err, "'%s' line %zu: %d labels for %d input_ids", path, line, nl, r->n);
			goto out;
		}
	} else {
		if (!(r->labels = malloc(sizeof(int32_t) * (size_t)(r->n ? r->n : 1)))) {
			lora_errf(err, "out of memory");
			goto out;
		}
		memcpy(r->labels, r->ids, sizeof(int32_t) * (size_t)r->n);
	}
	rc = 0;
out:
	if (rc) {
		free(r->ids);
		free(r->labels);
		memset(r, 0, sizeof(*r));
	}
	cJSON_Delete(o);
	return rc;
}

static int read_rows(const char *path, int V, struct row **rows, size_t *nrows, struct lora_err *err)
{
	FILE *f = fopen(path, "r");
	char *line = NULL;
	size_t cap = 0, lineno = 0, n = 0, alloc = 0;
	ssize_t len;
	struct row *r = NULL;
	int rc = -1;

	if (!f)
		return lora_errf(err, "cannot open '%s': %s", path, strerror(errno));
	while ((len = getline(&line, &cap, f)) >= 0) {
		lineno++;
		if (strspn(line, " \t\r\n") == (size_t)len)
			continue;
		if (n == alloc) {
			struct row *nr = realloc(r, sizeof(*r) * (alloc = alloc ? 2 * alloc : 64));
			if (!nr) {
				lora_errf(err, "out of memory");
				goto out;
			}
			r = nr;
		}
		if (parse_row(line, (size_t)len, V, &r[n], path, lineno, err) < 0)
			goto out;
		n++;
	}
	if (ferror(f)) {
		lora_errf(err, "cannot read '%s': %s", path, strerror(errno));
		goto out;
	}
	if (!n) {
		lora_errf(err, "'%s' has no rows", path);
		goto out;
	}
	rc = 0;
out:
	free(line);
	fclose(f);
	if (rc)
		free_rows(r, n);
	else {
		*rows = r;
		*nrows = n;
	}
	return rc;
}

/* The adapter argument: a PEFT folder, a .lora package or a store REF. */
static int attach_adapter(struct lora_net *net, const char *store, const char *spec,
			  struct lora_err *err)
{
	struct lora_adapter_src a = { 0 };
	int rc;

	if (lora_adapter_open(store, spec, &a, err) < 0)
		return -1;
	rc = lora_net_load_peft(net, a.peft, a.ref, err);
	lora_adapter_close(&a);
	return rc;
}

/* A writer for logits.0 .. logits.N-1, each [len, V] fp32. */
static int open_dump(struct lora_st_writer *w, const char *path, const struct row *rows, size_t n,
		     int V, struct lora_err *err)
{
	struct lora_st_spec *specs = calloc(n, sizeof(*specs));
	char (*names)[32] = calloc(n, sizeof(*names));
	int rc = -1;

	if (!specs || !names) {
		lora_errf(err, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		snprintf(names[i], sizeof(names[i]), "logits.%zu", i);
		specs[i].name = names[i];
		specs[i].dtype = LORA_DT_F32;
		specs[i].ndim = 2;
		specs[i].shape[0] = (uint64_t)rows[i].n;
		specs[i].shape[1] = (uint64_t)V;
	}
	rc = lora_st_writer_open(w, path, specs, n, NULL, NULL, 0, err);
out:
	free(specs);
	free(names);
	return rc;
}

struct eval_opts {
	const char *base, *adapter, *tokens, *dump;
	enum lora_quant quant;
	int json;
	long threads;
};

static int run_eval(const struct eval_opts *o, const struct cmd_ctx *ctx, struct lora_err *err)
{
	struct lora_net_opts no;
	struct lora_net *net = NULL;
	struct row *rows = NULL;
	size_t nrows = 0;
	struct lora_st_writer w;
	int dumping = 0, T = 1, rc = -1;
	int32_t *ids = NULL, *labels = NULL, *len = NULL;
	float *logits = NULL;
	double loss_sum = 0;
	long tokens = 0;
	size_t per;
	struct cmd_progress prog;

	lora_net_opts_defaults(&no);
	no.quant = o->quant;
	no.threads = (int)o->threads;
	if (lora_net_open(&net, o->base, &no, err) < 0)
		return -1;
	if (o->adapter && attach_adapter(net, ctx->store, o->adapter, err) < 0)
		goto out;
	if (read_rows(o->tokens, net->V, &rows, &nrows, err) < 0)
		goto out;
	for (size_t i = 0; i < nrows; i++)
		T = rows[i].n > T ? rows[i].n : T;
	if (net->cfg.max_position_embeddings > 0 && T > net->cfg.max_position_embeddings) {
		lora_errf(err, "'%s': a row of %d tokens is longer than the model's %d positions", o->tokens,
			  T, net->cfg.max_position_embeddings);
		goto out;
	}
	/* rows padded to the longest; with --dump-logits one row at a time */
	per = o->dump ? 1 : (size_t)(BATCH_TOKENS / T > 1 ? BATCH_TOKENS / T : 1);
	per = per > nrows ? nrows : per;
	ids = calloc(per * (size_t)T, sizeof(int32_t));
	labels = calloc(per * (size_t)T, sizeof(int32_t));
	len = calloc(per, sizeof(int32_t));
	if (o->dump)
		logits = malloc(sizeof(float) * (size_t)T * (size_t)net->V);
	if (!ids || !labels || !len || (o->dump && !logits)) {
		lora_errf(err, "out of memory for a batch of %zu x %d", per, T);
		goto out;
	}
	if (o->dump) {
		if (open_dump(&w, o->dump, rows, nrows, net->V, err) < 0)
			goto out;
		dumping = 1;
	}
	cmd_progress_start(&prog, ctx, "eval", (double)nrows);
	for (size_t r0 = 0; r0 < nrows; r0 += per) {
		const size_t nb = nrows - r0 < per ? nrows - r0 : per;
		const int bt = o->dump ? rows[r0].n : T;
		struct lora_batch b = {(int)nb, bt > 0 ? bt : 1, ids, labels, len};
		struct lora_fb_result res;

		memset(ids, 0, sizeof(int32_t) * per * (size_t)T);
		for (size_t i = 0; i < per * (size_t)T; i++)
			labels[i] = -100;
		for (size_t i = 0; i < nb; i++) {
			memcpy(ids + i * b.T, rows[r0 + i].ids, sizeof(int32_t) * (size_t)rows[r0 + i].n);
			memcpy(labels + i * b.T, rows[r0 + i].labels, sizeof(int32_t) * (size_t)rows[r0 + i].n);
			len[i] = rows[r0 + i].n;
		}
		if (lora_net_forward(net, &b, logits, &res, err) < 0)
			goto out;
		loss_sum += res.loss_sum;
		tokens += res.tokens;
		if (dumping && lora_st_writer_write(&w, logits, sizeof(float) * (size_t)rows[r0].n * net->V,
						    err) < 0)
			goto out;
		cmd_progress_update(&prog, (double)(r0 + nb), NULL);
	}
	cmd_progress_end(&prog);
	if (dumping) {
		dumping = 0;
		if (lora_st_writer_commit(&w, err) < 0)
			goto out;
	}
	if (!tokens) {
		lora_errf(err, "'%s' has no labelled tokens to predict", o->tokens);
		goto out;
	}
	if (o->json)
		printf("{\"loss\": %.17g, \"perplexity\": %.17g, \"tokens\": %ld, \"rows\": %zu}\n",
		       loss_sum / (double)tokens, exp(loss_sum / (double)tokens), tokens, nrows);
	else
		printf("loss        %.6f\nperplexity  %.4f\ntokens      %ld\nrows        %zu\n",
		       loss_sum / (double)tokens, exp(loss_sum / (double)tokens), tokens, nrows);
	rc = 0;
out:
	if (dumping)
		lora_st_writer_abort(&w);
	free(ids);
	free(labels);
	free(len);
	free(logits);
	free_rows(rows, nrows);
	lora_net_close(net);
	return rc;
}

static const struct cmd_opt opts[] = {
	{ "base", 0, "DIR", "the Hugging Face model folder", 'b', 0, 0 },
	{ "adapter", 0, "PATH|REF", "the adapter: a PEFT folder, a .lora file or a stored NAME[:TAG]", 'a', 0, 0 },
	{ "tokens", 0, "FILE", "rows {\"input_ids\": [...], \"labels\": [...]}, one a line", 't', 0, 0 },
	{ "quant", 0, "nf4|none", "NF4 frozen weights as QLoRA trains them (default), or as stored", 'q', 0, 0 },
	{ "json", 0, NULL, "{\"loss\", \"perplexity\", \"tokens\", \"rows\"} on stdout", 'j', 0, 0 },
	{ "dump-logits", 0, "FILE", "write each row's logits as fp32 tensor logits.N to FILE", 'd', 0, 0 },
	{ "threads", 0, "N", "BLAS threads", 'T', 0, 0 },
	{ 0 }
};

static CMD(eval)
{
	struct eval_opts o = { .quant = LORA_QUANT_NF4 };
	struct lora_err err = { 0 };
	int c;

	while ((c = cmd_getopt(ctx, argc, argv)) != -1) {
		switch (c) {
		case 'b': o.base = optarg; break;
		case 'a': o.adapter = optarg; break;
		case 't': o.tokens = optarg; break;
		case 'j': o.json = 1; break;
		case 'd': o.dump = optarg; break;
		case 'q':
			if (lora_quant_parse(optarg, &o.quant) < 0)
				return cmd_usage(ctx, "--quant is nf4 or none, not '%s'", optarg);
			break;
		case 'T':
			if (cmd_optarg_long(ctx, 1, 1024, &o.threads) < 0)
				return 2;
			break;
		default: return 2;
		}
	}
	if (optind != argc)
		return cmd_usage(ctx, "unexpected argument '%s'", argv[optind]);
	if (!o.base || !o.tokens)
		return cmd_usage(ctx, "eval needs --base DIR and --tokens FILE");
	if (run_eval(&o, ctx, &err) < 0)
		return cmd_fail(&err);
	if (fflush(stdout) != 0 || ferror(stdout))
		return cmd_error("cannot write the result: %s", strerror(errno));
	return 0;
}

const struct cmd_def cmd_eval_entry = {
	"eval", cmd_eval, CMD_NEED_STORE, "loss and perplexity of a model, with or without an adapter",
	"lora eval --base DIR [--adapter PATH|REF] --tokens FILE.jsonl [--quant nf4|none] [--json] [--dump-logits FILE] [--threads N]",
	opts, 22, NULL
};
