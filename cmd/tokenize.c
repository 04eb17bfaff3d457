/*
 * tokenize.c - `lora tokenize`: text to token ids with a model's tokenizer
 * (and ids back to text with --decode).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/cmd.h"
#include "libadapter/base/buf.h"
#include "train/tokenizer.h"

#define STDIN_MAX ((size_t)1 << 30)

/* All of stdin into b. */
static int read_stdin(struct lora_buf *b)
{
	char chunk[65536];
	size_t n;
	while ((n = fread(chunk, 1, sizeof(chunk), stdin)) > 0) {
		lora_buf_add(b, chunk, n);
		if (b->len > STDIN_MAX)
			return cmd_error("standard input is larger than 1 GiB");
	}
	if (ferror(stdin))
		return cmd_error("cannot read standard input: %s", strerror(errno));
	lora_buf_add(b, "", 0);
	return b->oom ? cmd_error("out of memory") : 0;
}

/* The input: the arguments joined by spaces, or stdin. */
static int gather(int argc, char **argv, struct lora_buf *b)
{
	if (optind >= argc)
		return read_stdin(b);
	for (int i = optind; i < argc; i++) {
		if (i > optind)
			lora_buf_add(b, " ", 1);
		lora_buf_puts(b, argv[i]);
	}
	lora_buf_add(b, "", 0);
	return b->oom ? cmd_error("out of memory") : 0;
}

/* Ids separated by spaces, commas, newlines or in a JSON array. */
static int parse_ids(const char *s, int32_t **out, size_t *n, int32_t vocab)
{
	size_t cap = 0;
	*out = NULL;
	*n = 0;
	while (*s) {
		char *end;
		long v;
		if (strchr(" \t\r\n,[]", *s)) {
			s++;
			continue;
		}
		errno = 0;
		v = strtol(s, &end, 10);
		if (end == s || errno || v < 0 || v >= vocab)
			return cmd_error("--decode: '%.20s' is not a token id below %d", s, vocab);
		if (*n == cap) {
			int32_t *p;
			cap = cap ? cap * 2 : 64;
			p = realloc(*out, cap * sizeof(*p));
			if (!p)
				return cmd_error("out of memory");
			*out = p;
		}
		(*out)[(*n)++] = (int32_t)v;
		s = end;
	}
	return 0;
}

static int do_decode(const struct lora_tok *tok, const char *in, int json, int no_special)
{
	struct lora_err err = { 0 };
	struct lora_buf out = LORA_BUF_INIT, j = LORA_BUF_INIT;
	int32_t *ids;
	size_t n;
	int rc;

	if (parse_ids(in, &ids, &n, lora_tok_vocab_size(tok))) {
		free(ids);
		return 1;
	}
	rc = lora_tok_decode(tok, ids, n, no_special ? LORA_TOK_SKIP_SPECIAL : 0, &out, &err);
	free(ids);
	if (rc < 0) {
		lora_buf_free(&out);
		return cmd_fail(&err);
	}
	if (json) {
		lora_buf_puts(&j, "{\"text\": ");
		lora_buf_json_str(&j, out.data ? out.data : "");
		lora_buf_printf(&j, ", \"count\": %zu}\n", n);
		fwrite(j.data, 1, j.len, stdout);
	} else {
		fwrite(out.data ? out.data : "", 1, out.len, stdout);
		fputc('\n', stdout);
	}
	lora_buf_free(&out);
	lora_buf_free(&j);
	return 0;
}

static int do_encode(const struct lora_tok *tok, const struct lora_buf *in, int json, int no_special)
{
	struct lora_err err = { 0 };
	struct lora_tokens t = LORA_TOKENS_INIT;
	struct lora_buf o = LORA_BUF_INIT;

	if (lora_tok_encode(tok, in->data ? in->data : "", in->len, no_special ? 0 : LORA_TOK_ADD_SPECIAL, &t,
			    &err) < 0)
		return cmd_fail(&err);
	if (json) {
		lora_buf_puts(&o, "{\"ids\": [");
		for (size_t i = 0; i < t.n; i++)
			lora_buf_printf(&o, "%s%d", i ? ", " : "", t.ids[i]);
		lora_buf_puts(&o, "], \"tokens\": [");
		for (size_t i = 0; i < t.n; i++) {
			lora_buf_puts(&o, i ? ", " : "");
			lora_buf_json_str(&o, lora_tok_id_to_token(tok, t.ids[i]));
		}
		lora_buf_puts(&o, "], \"offsets\": [");
		for (size_t i = 0; i < t.n; i++)
			lora_buf_printf(&o, "%s%lld", i ? ", " : "", (long long)t.start[i]);
		lora_buf_printf(&o, "], \"count\": %zu}\n", t.n);
	} else {
		for (size_t i = 0; i < t.n; i++)
			lora_buf_printf(&o, "%s%d", i ? " " : "", t.ids[i]);
		lora_buf_puts(&o, "\n");
	}
	lora_tokens_free(&t);
	if (o.oom) {
		lora_buf_free(&o);
		return cmd_error("out of memory");
	}
	fwrite(o.data, 1, o.len, stdout);
	lora_buf_free(&o);
	return 0;
}

static const struct cmd_opt opts[] = {
	{ "base", 0, "DIR", "model folder with tokenizer.json (and tokenizer_config.json)", 'b', 0, 0 },
	{ "json", 0, NULL, "one JSON document: ids, tokens, offsets, count", 'j', 0, 0 },
	{ "no-special", 0, NULL, "do not add BOS/EOS (with --decode: leave special tokens out)", 'n', 0, 0 },
	{ "decode", 0, NULL, "read token ids and print the text they stand for", 'd', 0, 0 },
	{ NULL, 0, "TEXT", "the text (arguments joined by spaces); standard input when absent", 0, 0, 0 },
	{ 0 }
};

static CMD(tokenize)
{
	const char *base = NULL;
	int json = 0, decode = 0, no_special = 0, c, rc;
	struct lora_tok *tok = NULL;
	struct lora_err err = { 0 };
	struct lora_buf in = LORA_BUF_INIT;

	while ((c = cmd_getopt(ctx, argc, argv)) != -1) {
		switch (c) {
		case 'b': base = optarg; break;
		case 'j': json = 1; break;
		case 'd': decode = 1; break;
		case 'n': no_special = 1; break;
		default: return 2;
		}
	}
	if (!base)
		return cmd_usage(ctx, "--base DIR is required (a model folder with tokenizer.json)");
	if (lora_tok_load(base, &tok, &err) < 0)
		return cmd_fail(&err);
	rc = gather(argc, argv, &in);
	if (!rc)
		rc = decode ? do_decode(tok, in.data ? in.data : "", json, no_special)
			    : do_encode(tok, &in, json, no_special);
	lora_buf_free(&in);
	lora_tok_free(tok);
	return rc;
}

const struct cmd_def cmd_tokenize_entry = {
	"tokenize", cmd_tokenize, 0, "turn text into token ids with a model's tokenizer",
	"lora tokenize --base DIR [--json] [--no-special] [--decode] [TEXT...]",
	opts, 17, NULL
};
