/*
 * eval.c - `lora eval`: mean loss and perplexity of a base model, with or
 * without an adapter, over pre-tokenized rows
 *     {"input_ids": [...], "labels": [...]}        (labels optional)
 * one JSON object a line.  Labels follow transformers: aligned with
 * input_ids, position t predicts labels[t+1], -100 ignored, absent labels
 * mean the ids themselves.  The loss is the mean over every predicted token
 * of the file (token-weighted), the perplexity its exponential.
 * The rows are read by train/data.c and evaluated by train/eval.c, the loop
 * training uses for its evaluation rows; this file parses, calls and prints.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/cmd.h"
#include "libadapter/store/store.h"
#include "train/data.h"
#include "train/eval.h"
#include "train/net.h"

#define BATCH_TOKENS 2048   /* rows per forward pass: about this many positions */

/* The adapter argument: a PEFT folder, a .lora package or a store REF. */
static int attach_adapter(struct lora_net *net, const struct cmd_ctx *ctx, const char *spec,
			  struct lora_err *err)
{
	struct lora_adapter_src a = { 0 };
	int rc;

	if (lora_adapter_open(ctx->store, ctx->tmp_dir, spec, &a, err) < 0)
		return -1;
	rc = lora_net_load_peft(net, a.peft, a.ref, err);
	lora_adapter_close(&a);
	return rc;
}

struct eval_opts {
	const char *base, *adapter, *tokens, *dump;
	enum lora_quant quant;
	int json;
	long threads;
};

static void on_progress(void *ud, uint64_t done, uint64_t total)
{
	struct cmd_progress *p = ud;

	p->total = (double)total;
	cmd_progress_update(p, (double)done, NULL);
}

static int run_eval(const struct eval_opts *o, const struct cmd_ctx *ctx, struct lora_err *err)
{
	struct lora_net_opts no;
	struct lora_net *net = NULL;
	struct lora_dataset *d = NULL;
	/* pre-tokenized rows only (no tokenizer), each row one sequence, all kept */
	struct lora_data_opts dopts = { .keep_unlabelled = 1, .line_words = 1 };
	struct lora_eval_opts eo = { .no_pack = 1, .pad_id = 0, .dump_path = o->dump };
	struct lora_eval_result res;
	struct cmd_progress prog;
	int rc = -1;

	lora_net_opts_defaults(&no);
	no.quant = o->quant;
	no.threads = (int)o->threads;
	if (lora_net_open(&net, o->base, &no, err) < 0)
		return -1;
	if (o->adapter && attach_adapter(net, ctx, o->adapter, err) < 0)
		goto out;
	dopts.vocab_size = net->V;
	if (lora_data_load(o->tokens, &dopts, &d, err) < 0)
		goto out;
	lora_eval_shape(d, BATCH_TOKENS, &eo.batch, &eo.seq_len);
	if (net->cfg.max_position_embeddings > 0 && eo.seq_len > net->cfg.max_position_embeddings) {
		lora_errf(err, "'%s': a row of %d tokens is longer than the model's %d positions", o->tokens,
			  eo.seq_len, net->cfg.max_position_embeddings);
		goto out;
	}
	if (o->dump)
		eo.batch = 1;   /* one row a pass: its logits are one tensor */
	cmd_progress_start(&prog, ctx, "eval", 1);
	eo.progress = on_progress;
	eo.progress_ud = &prog;
	rc = lora_eval_run(net, d, &eo, &res, err);
	cmd_progress_end(&prog);
	if (rc < 0)
		goto out;
	rc = -1;
	if (!res.tokens) {
		lora_errf(err, "'%s' has no labelled tokens to predict", o->tokens);
		goto out;
	}
	if (o->json)
		printf("{\"loss\": %.17g, \"perplexity\": %.17g, \"tokens\": %ld, \"rows\": %zu}\n",
		       res.loss, exp(res.loss), res.tokens, d->n_rows);
	else
		printf("loss        %.6f\nperplexity  %.4f\ntokens      %ld\nrows        %zu\n",
		       res.loss, exp(res.loss), res.tokens, d->n_rows);
	rc = 0;
out:
	lora_data_free(d);
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
