/*
 * generate.c - `lora generate`: text from a base model, with or without an
 * adapter, on the CPU (train/generate.h): the prompt, through the model's
 * chat template when it has one, then tokens sampled one at a time over a
 * key/value cache until end of sequence, --max-tokens, or the model's last
 * position.  The text streams to stdout as it is made.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/cmd.h"
#include "libadapter/base/buf.h"
#include "libadapter/store/store.h"
#include "train/chat.h"
#include "train/generate.h"
#include "train/net.h"
#include "train/tokenizer.h"

#define MAX_STOPS 4

struct gen_opts {
	const char *base, *adapter, *prompt, *system;
	long max_tokens, threads;
	double temperature, top_p;
	long seed;
	enum lora_quant quant;
	int chat;                  /* -1 auto, 0 off, 1 on */
	int json;
};

struct gen_out {
	struct lora_buf text;      /* the decoded continuation */
	size_t prompt_tokens, tokens;
	const char *stop;          /* "eos", "max_tokens", "max_positions" */
	const char *chat;          /* template family used, or NULL */
};

/* The prompt as token ids: rendered by the chat template, or as given. */
static int prompt_ids(const struct gen_opts *o, const struct lora_tok *tok, struct lora_chat *chat,
		      int *have_chat, struct lora_tokens *ids, struct lora_err *err)
{
	const char *tpl = lora_tok_chat_template(tok);
	struct lora_err cerr = {0};
	struct lora_buf text = LORA_BUF_INIT;
	int rc;

	*have_chat = 0;
	if (o->chat != 0 && tpl) {
		if (lora_chat_jinja(tpl, lora_tok_bos_str(tok), lora_tok_eos_str(tok), chat, &cerr) == 0)
			*have_chat = 1;
		else if (o->chat == 1)
			return lora_errf(err, "%s", cerr.msg);
		else
			cmd_warn("%s; using the prompt as plain text", cerr.msg);
	} else if (o->chat == 1) {
		return lora_errf(err, "model '%s' has no chat template (try --no-chat)", o->base);
	}
	if (!*have_chat && o->system)
		return lora_errf(err, "--system needs a chat template, and model '%s' is read without one", o->base);
	if (!*have_chat)
		return lora_tok_encode(tok, o->prompt, strlen(o->prompt), LORA_TOK_ADD_SPECIAL, ids, err);
	{
		struct lora_chat_msg m[2] = { { .role = "system", .content = o->system },
					      { .role = "user", .content = o->prompt } };
		const int skip = o->system ? 0 : 1;

		if (lora_chat_render(chat, m + skip, 2 - skip, 1, &text, NULL, NULL, err) < 0) {
			lora_buf_free(&text);
			return -1;
		}
	}
	/* as transformers' apply_chat_template: the template wrote the special tokens */
	rc = lora_tok_encode(tok, text.data ? text.data : "", text.len, 0, ids, err);
	lora_buf_free(&text);
	return rc;
}

/* Ids that end the answer: EOS (tokenizer and config) and the chat's end of turn. */
static int stop_ids(const struct lora_tok *tok, const struct lora_net *net, const struct lora_chat *chat,
		    int32_t *stops)
{
	int n = 0;
	int32_t c[3] = {lora_tok_eos(tok), net->cfg.eos_token_id, -1};

	if (chat)
		c[2] = chat->fmt == LORA_CHAT_JINJA ? (chat->end_marker ? lora_tok_token_to_id(tok, chat->end_marker) : -1)
		       : lora_tok_token_to_id(tok, chat->fmt == LORA_CHAT_LLAMA3 ? "<|eot_id|>" : "<|im_end|>");
	for (int i = 0; i < 3; i++) {
		int dup = 0;
		for (int j = 0; j < n; j++)
			dup |= stops[j] == c[i];
		if (c[i] >= 0 && !dup)
			stops[n++] = c[i];
	}
	return n;
}

/* Print the decoded text past `*printed`, holding back an unfinished UTF-8 sequence. */
static void stream(const struct lora_buf *t, size_t *printed, int final)
{
	size_t end = t->len;

	if (!final && end >= 3 && !memcmp(t->data + end - 3, "\xEF\xBF\xBD", 3))
		end -= 3;
	if (end > *printed) {
		fwrite(t->data + *printed, 1, end - *printed, stdout);
		fflush(stdout);
		*printed = end;
	}
}

static int run_generate(const struct gen_opts *o, const struct cmd_ctx *ctx, struct gen_out *out,
			struct lora_err *err)
{
	struct lora_net_opts no;
	struct lora_net *net = NULL;
	struct lora_tok *tok = NULL;
	struct lora_adapter_src ad = {0};
	struct lora_tokens ids = LORA_TOKENS_INIT;
	struct lora_chat chat = {0};
	struct lora_gen *g = NULL;
	struct lora_sampler sp = {o->temperature, o->top_p, (uint64_t)o->seed, 0};
	int32_t stops[MAX_STOPS], *gen = NULL, *shown = NULL;
	size_t nshown = 0;
	int have_chat = 0, nstop, P, rc = -1;
	float *logits = NULL, *scratch = NULL;
	size_t printed = 0;

	lora_net_opts_defaults(&no);
	no.quant = o->quant;
	no.threads = (int)o->threads;
	if (lora_tok_load(o->base, &tok, err) < 0)
		return -1;
	if (lora_net_open(&net, o->base, &no, err) < 0)
		goto out;
	if (lora_tok_vocab_size(tok) > net->V)
		cmd_warn("the tokenizer has %d tokens, the model %d", (int)lora_tok_vocab_size(tok), net->V);
	if (o->adapter) {
		if (lora_adapter_open(ctx->store, ctx->tmp_dir, o->adapter, &ad, err) < 0 ||
		    lora_net_load_peft(net, ad.peft, o->adapter, err) < 0)
			goto out;
	}
	if (prompt_ids(o, tok, &chat, &have_chat, &ids, err) < 0)
		goto out;
	if (!ids.n) {
		lora_errf(err, "the prompt has no tokens");
		goto out;
	}
	out->chat = have_chat ? lora_chat_name(&chat) : NULL;
	nstop = stop_ids(tok, net, have_chat ? &chat : NULL, stops);
	P = net->cfg.max_position_embeddings > 0 ? net->cfg.max_position_embeddings : 1 << 20;
	if (ids.n >= (size_t)P) {
		lora_errf(err, "the prompt has %zu tokens; the model has %d positions", ids.n, P);
		goto out;
	}
	if ((long)ids.n + o->max_tokens < P)
		P = (int)ids.n + (int)o->max_tokens;
	logits = malloc(sizeof(float) * (size_t)net->V);
	scratch = malloc(2 * sizeof(float) * (size_t)net->V);
	gen = malloc(sizeof(int32_t) * (size_t)(o->max_tokens + 1));
	shown = malloc(sizeof(int32_t) * (size_t)(o->max_tokens + 1));
	if (!logits || !scratch || !gen || !shown) {
		lora_errf(err, "out of memory");
		goto out;
	}
	if (lora_gen_new(&g, net, P, err) < 0)
		goto out;
	for (size_t i = 0; i < ids.n; i++)
		if (ids.ids[i] >= net->V) {
			lora_errf(err, "the prompt has token %d, outside the model's vocabulary (%d)", ids.ids[i],
				  net->V);
			goto out;
		}
	if (lora_gen_feed(g, ids.ids, (int)ids.n, logits, NULL, err) < 0)
		goto out;
	out->prompt_tokens = ids.n;
	out->stop = "max_tokens";
	for (long k = 0; k < o->max_tokens; k++) {
		int32_t id = lora_sample(logits, net->V, &sp, scratch);
		int stop = 0;

		for (int s = 0; s < nstop; s++)
			stop |= id == stops[s];
		stop |= lora_tok_is_stop(tok, id);
		if (stop) {
			out->stop = "eos";
			break;
		}
		gen[out->tokens++] = id;
		/* a model's vocabulary may be padded past the tokenizer's: those ids have no
		 * text (transformers' decode skips them too) */
		if (id < lora_tok_vocab_size(tok) && lora_tok_id_to_token(tok, id))
			shown[nshown++] = id;
		out->text.len = 0;
		if (lora_tok_decode(tok, shown, nshown, LORA_TOK_SKIP_SPECIAL, &out->text, err) < 0)
			goto out;
		if (!o->json)
			stream(&out->text, &printed, 0);
		if (k + 1 == o->max_tokens)
			break;
		if (lora_gen_pos(g) == P) {
			out->stop = "max_positions";
			break;
		}
		if (lora_gen_feed(g, &id, 1, logits, NULL, err) < 0)
			goto out;
	}
	if (!o->json) {
		stream(&out->text, &printed, 1);
		putchar('\n');
	}
	rc = 0;
out:
	lora_gen_free(g);
	free(logits);
	free(scratch);
	free(gen);
	free(shown);
	lora_tokens_free(&ids);
	if (have_chat)
		lora_chat_free(&chat);
	lora_adapter_close(&ad);
	lora_net_close(net);
	lora_tok_free(tok);
	return rc;
}

static void print_json(const struct gen_opts *o, const struct gen_out *r)
{
	struct lora_buf b = LORA_BUF_INIT;

	lora_buf_puts(&b, "{\"prompt\": ");
	lora_buf_json_str(&b, o->prompt);
	lora_buf_puts(&b, ", \"text\": ");
	lora_buf_json_str(&b, r->text.data ? r->text.data : "");
	lora_buf_printf(&b, ", \"prompt_tokens\": %zu, \"tokens\": %zu, \"stop\": \"%s\", \"chat\": ",
			r->prompt_tokens, r->tokens, r->stop);
	if (r->chat)
		lora_buf_json_str(&b, r->chat);
	else
		lora_buf_puts(&b, "null");
	lora_buf_printf(&b, ", \"temperature\": %g, \"top_p\": %g, \"seed\": %ld}\n", o->temperature,
			o->top_p, o->seed);
	if (!b.oom)
		fwrite(b.data, 1, b.len, stdout);
	lora_buf_free(&b);
}

enum { O_BASE = 256, O_ADAPTER, O_PROMPT, O_SYSTEM, O_MAX, O_TEMP, O_TOPP, O_SEED, O_QUANT, O_CHAT,
       O_NOCHAT, O_JSON, O_THREADS };
static const struct cmd_opt opts[] = {
	{ "base", 0, "DIR", "the Hugging Face model folder (with tokenizer.json)", O_BASE, 0, 0 },
	{ "adapter", 0, "REF|PATH", "a stored adapter, a .lora package or a PEFT folder", O_ADAPTER, 0, 0 },
	{ "prompt", 0, "TEXT", "what to continue (or, for a chat model, the user's turn)", O_PROMPT, 0, 0 },
	{ "system", 0, "TEXT", "a system message before the user's turn (chat models)", O_SYSTEM, 0, 0 },
	{ "max-tokens", 0, "N", "stop after N new tokens (128)", O_MAX, 0, 0 },
	{ "temperature", 0, "T", "0: greedy; default 0.7", O_TEMP, 0, 0 },
	{ "top-p", 0, "P", "sample from the smallest set of tokens holding P of the mass (0.9)", O_TOPP, 0, 0 },
	{ "seed", 0, "S", "random stream of the sampler (42): same seed, same text", O_SEED, 0, 0 },
	{ "quant", 0, "nf4|none", "NF4 frozen weights as QLoRA trains them (default), or as stored", O_QUANT, 0, 0 },
	{ "chat", 0, NULL, "use the model's chat template (default: when it has one)", O_CHAT, CMD_OPT_JOIN_NEXT, 0 },
	{ "no-chat", 0, NULL, NULL, O_NOCHAT, 0, 0 },
	{ "json", 0, NULL, "{\"text\", \"prompt_tokens\", \"tokens\", \"stop\", ...} at the end", O_JSON, 0, 0 },
	{ "threads", 0, "N", "BLAS threads", O_THREADS, 0, 0 },
	{ 0 }
};

static CMD(generate)
{
	struct gen_opts o = { .max_tokens = 128, .temperature = 0.7, .top_p = 0.9, .seed = 42,
			      .quant = LORA_QUANT_NF4, .chat = -1 };
	struct gen_out r = { .text = LORA_BUF_INIT };
	struct lora_err err = { 0 };
	int c, rc = 0;

	while ((c = cmd_getopt(ctx, argc, argv)) != -1) {
		switch (c) {
		case O_BASE: o.base = optarg; break;
		case O_ADAPTER: o.adapter = optarg; break;
		case O_PROMPT: o.prompt = optarg; break;
		case O_SYSTEM: o.system = optarg; break;
		case O_MAX:
			if (cmd_optarg_long(ctx, 1, 1 << 20, &o.max_tokens) < 0)
				return 2;
			break;
		case O_TEMP:
			if (cmd_optarg_double(ctx, 0, 100, &o.temperature) < 0)
				return 2;
			break;
		case O_TOPP:
			if (cmd_optarg_double(ctx, 1e-9, 1, &o.top_p) < 0)
				return 2;
			break;
		case O_SEED:
			if (cmd_optarg_long(ctx, 0, 0x7fffffffffffffffL, &o.seed) < 0)
				return 2;
			break;
		case O_QUANT:
			if (lora_quant_parse(optarg, &o.quant) < 0)
				return cmd_usage(ctx, "--quant is nf4 or none, not '%s'", optarg);
			break;
		case O_CHAT: o.chat = 1; break;
		case O_NOCHAT: o.chat = 0; break;
		case O_JSON: o.json = 1; break;
		case O_THREADS:
			if (cmd_optarg_long(ctx, 1, 1024, &o.threads) < 0)
				return 2;
			break;
		default: return 2;
		}
	}
	if (optind != argc)
		return cmd_usage(ctx, "unexpected argument '%s'", argv[optind]);
	if (!o.base || !o.prompt)
		return cmd_usage(ctx, "generate needs --base DIR and --prompt TEXT");
	if (run_generate(&o, ctx, &r, &err) < 0)
		rc = cmd_fail(&err);
	else if (o.json)
		print_json(&o, &r);
	lora_buf_free(&r.text);
	if (rc)
		return rc;
	if (fflush(stdout) != 0 || ferror(stdout))
		return cmd_error("cannot write the result: %s", strerror(errno));
	return 0;
}

const struct cmd_def cmd_generate_entry = {
	"generate", cmd_generate, CMD_NEED_STORE, "sample text from a model and adapter",
	"lora generate --base DIR [--adapter REF|PATH] --prompt TEXT [--system TEXT] [--max-tokens N] [--temperature T] [--top-p P] [--seed S] "
	"[--quant nf4|none] [--chat|--no-chat] [--json] [--threads N]",
	opts, 22, NULL
};
