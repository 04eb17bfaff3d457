/*
 * lora.c - the command table, global options and dispatch.
 *
 * main() only dispatches: it reads the global options (--store, --version,
 * --help), finds the command in the table, answers --help from the table,
 * resolves the store when the command needs one, and runs it.  A command
 * whose source file is not linked in (its cmd_<name> is a weak NULL) is
 * hidden from help and reported as not available.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cmd/cmd.h"
#include "libadapter/base/blas.h"
#include "libadapter/merge/merge.h"
#include "train/cuda.h"


#define WEAK __attribute__((weak))
CMD(keygen) WEAK; CMD(trust) WEAK; CMD(import) WEAK; CMD(export) WEAK; CMD(list) WEAK;
CMD(verify) WEAK; CMD(rm) WEAK; CMD(tag) WEAK; CMD(diff) WEAK; CMD(merge) WEAK; CMD(swap) WEAK;
CMD(train) WEAK; CMD(eval) WEAK; CMD(plan) WEAK; CMD(generate) WEAK; CMD(tokenize) WEAK;
CMD(combine) WEAK; CMD(extract) WEAK;
static CMD(help);

static const struct cmd_def commands[] = {
	{ "help", cmd_help, 0, "show help for lora or for one command",
	  "lora help [COMMAND]", NULL },
	{ "inspect", cmd_inspect, CMD_NEED_STORE, "describe an adapter or a model folder",
	  "lora inspect (PATH | REF) [--json] [--spectrum]",
	  "  --json        one JSON document on stdout\n"
	  "  --spectrum    singular values per module and an effective rank\n" },
	{ "keygen", cmd_keygen, CMD_NEED_STORE, "make the default Ed25519 signing key",
	  "lora keygen [--name ID] [--force]",
	  "  --name ID     the signer identity (default $USER@hostname)\n"
	  "  --force       replace an existing default key\n" },
	{ "trust", cmd_trust, CMD_NEED_STORE, "manage the signers you trust (allowed_signers)",
	  "lora trust add ID (PUBKEY_FILE | --key 'ssh-ed25519 AAAA...')\n"
	  "lora trust list [--json]\nlora trust rm ID",
	  "  --key LINE    the public key as text instead of PUBKEY_FILE\n"
	  "  --json        one JSON document on stdout\n" },
	{ "import", cmd_import, CMD_NEED_STORE, "add a .lora package or a PEFT folder to the store",
	  "lora import PATH [--name NAME[:TAG]] [--allow-untrusted] [--key FILE] [--description TEXT] [--base DIR]",
	  "  --name NAME[:TAG]   store it under this name (tag 'latest' when absent)\n"
	  "  --allow-untrusted   accept an unsigned package or an unknown signer\n"
	  "  --key FILE          sign a folder with this OpenSSH ed25519 key\n"
	  "  --description TEXT  a description for the manifest of a folder\n"
	  "  --base DIR          record the fingerprint of this base model\n" },
	{ "export", cmd_export, CMD_NEED_STORE, "write a stored adapter as a .lora file or PEFT folder",
	  "lora export REF -o PATH [--format lora|peft]",
	  "  -o, --output PATH   the .lora file ('-' for stdout) or the folder to write\n"
	  "  --format lora|peft  a package (default) or a PEFT folder\n" },
	{ "list", cmd_list, CMD_NEED_STORE, "list the adapters in the store",
	  "lora list [--json]",
	  "  --json        one JSON document on stdout\n" },
	{ "verify", cmd_verify, CMD_NEED_STORE, "check digests, signature and signer of an adapter",
	  "lora verify (REF | FILE.lora) [--json]",
	  "  --json        one JSON document on stdout\n" },
	{ "rm", cmd_rm, CMD_NEED_STORE, "remove an adapter name from the store",
	  "lora rm REF", NULL },
	{ "tag", cmd_tag, CMD_NEED_STORE, "give a stored adapter another name",
	  "lora tag REF NAME[:TAG]", NULL },
	{ "diff", cmd_diff, CMD_NEED_STORE, "compare two adapters module by module",
	  "lora diff REF REF [--json] [--threads N]",
	  "  --json        one JSON document on stdout\n"
	  "  --threads N   worker threads (default: one per CPU)\n" },
	{ "combine", cmd_combine, CMD_NEED_STORE, "build one adapter from several",
	  "lora combine REF[@W]... --method cat|svd|linear (--name NAME[:TAG] | -o DIR) [--rank R]\n"
	  "      [--dtype fp32|bf16|fp16] [--key FILE] [--description TEXT] [--json]",
	  "  --method M       cat: exact sum (rank = sum of ranks); svd: exact sum truncated\n"
	  "                   to rank R; linear: PEFT's linear (equal ranks, not the exact sum)\n"
	  "  --rank R         rank for --method svd (default: the largest input rank)\n"
	  "  --name NAME[:TAG]  add the result to the store, signed\n"
	  "  -o, --output DIR write a PEFT folder instead\n"
	  "  --dtype D        dtype of the written tensors (default fp32)\n"
	  "  --key FILE       signing key (default: the store's key)\n"
	  "  --description T  description recorded in the manifest\n"
	  "  --json           one JSON document on stdout\n" },
	{ "extract", cmd_extract, CMD_NEED_STORE, "turn a full fine-tune into an adapter",
	  "lora extract --base DIR --tuned DIR --rank R [--targets LIST] (--name NAME[:TAG] | -o DIR)\n"
	  "      [--iters N] [--oversample P] [--seed S] [--dtype fp32|bf16|fp16]\n"
	  "      [--key FILE] [--description TEXT] [--json]",
	  "  --rank R         rank of the adapter\n"
	  "  --targets LIST   comma-separated module names (q_proj,v_proj); default: every\n"
	  "                   2-d weight inside numbered layers (all linear layers)\n"
	  "  --name NAME[:TAG]  add the result to the store, signed\n"
	  "  -o, --output DIR write a PEFT folder instead\n"
	  "  --iters N        power iterations of the randomized SVD (default 2)\n"
	  "  --oversample P   extra random directions (default 10)\n"
	  "  --seed S         random seed (default 0)\n"
	  "  --dtype D        dtype of the written tensors (default fp32)\n"
	  "  --key FILE       signing key (default: the store's key)\n"
	  "  --description T  description recorded in the manifest\n"
	  "  --json           one JSON document on stdout\n" },
	{ "merge", cmd_merge, CMD_NEED_STORE, "merge adapters into a new base model folder",
	  "lora merge --base DIR REF[@WEIGHT]... -o OUTDIR [--dtype auto|bf16|fp16|fp32] [--device cpu|cuda] [--force]",
	  "  --base DIR        the base model folder\n"
	  "  -o, --output DIR  the merged folder to create (must not exist)\n"
	  "  --dtype TYPE      output dtype of float tensors (auto: each keeps its own)\n"
	  "  --device DEV      cpu (default) or cuda for the B·A products\n"
	  "  --force           merge adapters made for another base (fingerprint)\n"
	  "  REF@WEIGHT        a PEFT folder, .lora file or stored adapter, times WEIGHT\n" },
	{ "swap", cmd_swap, CMD_NEED_STORE, "change the adapters merged into a model folder in place",
	  "lora swap MODEL_DIR (REF[@WEIGHT]... | --none) [--base DIR]",
	  "  --none            remove every adapter (the base's tensors)\n"
	  "  --base DIR        recompute from this base (default: the recorded one)\n" },
	{ "train", cmd_train, CMD_NEED_STORE, "train a LoRA/QLoRA adapter into the store",
	  "lora train --base DIR --data FILE --name NAME[:TAG] [--rank R] [--alpha A] [--targets LIST] [--quant nf4|none] [--lr LR] [--steps N | --epochs E] [--batch B] [--grad-accum G] [--seq-len T] [options]\n"
	  "lora train --name NAME[:TAG] --resume [options]",
	  "  --base DIR            the Hugging Face model folder to adapt\n"
	  "  --data FILE           JSONL rows: {\"text\"}, {\"prompt\",\"completion\"}, {\"messages\"} or\n"
	  "                        {\"input_ids\",\"labels\"}\n"
	  "  --name NAME[:TAG]     the adapter's name in the store (tag 'latest' when absent)\n"
	  "  --rank R              LoRA rank (16)\n"
	  "  --alpha A             LoRA alpha; scale alpha/r (32)\n"
	  "  --dropout P           dropout on the LoRA path (0.05)\n"
	  "  --targets LIST        all-linear (default) or q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj\n"
	  "  --quant nf4|none      frozen weights in NF4 (QLoRA, default) or as stored\n"
	  "  --lr LR               peak learning rate (2e-4)\n"
	  "  --schedule S          cosine (default), linear or constant, after warmup\n"
	  "  --warmup W            warmup: a fraction of the steps below 1, or a step count (0.03)\n"
	  "  --steps N             optimizer steps; or --epochs E, passes over the data (1 epoch)\n"
	  "  --batch B             rows per micro-batch (4)\n"
	  "  --grad-accum G        micro-batches per optimizer step (4)\n"
	  "  --seq-len T           tokens per row; rows are packed to it (512, or the model's limit)\n"
	  "  --max-grad-norm X     clip the gradient norm to X; 0: no clipping (0.3)\n"
	  "  --weight-decay X      AdamW decoupled weight decay (0)\n"
	  "  --seed S              initialization, dropout, data order and split (42)\n"
	  "  --eval-data FILE      rows to evaluate on; or --eval-split F to hold out a fraction of --data\n"
	  "  --eval-every K        steps between evaluations (a tenth of the run)\n"
	  "  --save-every K        steps between checkpoints (100)\n"
	  "  --resume              continue the interrupted run of NAME:TAG from its checkpoint\n"
	  "  --skip-bad-rows       skip and count bad rows instead of stopping at the first\n"
	  "  --no-pack             one row per sequence, padded, instead of packing\n"
	  "  --chat-template NAME  chatml or llama3 for {\"messages\"} rows (default: the model's own)\n"
	  "  --grad-checkpoint     recompute activations in backward (less memory)\n"
	  "  --device D            auto (default), cpu or cuda\n"
	  "  --threads N           CPU threads\n"
	  "  --description TEXT    a description for the manifest\n"
	  "  --key FILE            sign with this OpenSSH ed25519 key (default: the store's key)\n"
	  "  --json                one JSON document with the result on stdout\n" },
	{ "eval", cmd_eval, CMD_NEED_STORE, "loss and perplexity of a model, with or without an adapter",
	  "lora eval --base DIR [--adapter PATH|REF] --tokens FILE.jsonl [--quant nf4|none] [--json] [--dump-logits FILE] [--threads N]",
	  "  --base DIR          the Hugging Face model folder\n"
	  "  --adapter PATH|REF  the adapter: a PEFT folder, a .lora file or a stored NAME[:TAG]\n"
	  "  --tokens FILE       rows {\"input_ids\": [...], \"labels\": [...]}, one a line\n"
	  "  --quant nf4|none    NF4 frozen weights as QLoRA trains them (default), or as stored\n"
	  "  --json              {\"loss\", \"perplexity\", \"tokens\", \"rows\"} on stdout\n"
	  "  --dump-logits FILE  write each row's logits as fp32 tensor logits.N to FILE\n"
	  "  --threads N         BLAS threads\n" },
	{ "plan", cmd_plan, 0, "estimate the memory a training run needs",
	  "lora plan (--base DIR | --config FILE) [training options] [--gpu-mem GB] [--device cpu|cuda] [--json]",
	  "  --base DIR          a model folder (config.json; weights' dtype from the files)\n"
	  "  --config FILE       a config.json alone\n"
	  "  --rank R            LoRA rank (16)\n"
	  "  --targets LIST      all-linear (default) or q_proj,v_proj,...\n"
	  "  --quant nf4|none    the column the run would use: QLoRA (default) or LoRA\n"
	  "  --batch B           rows per micro-batch (4)\n"
	  "  --seq-len T         tokens per row (512, or the model's limit)\n"
	  "  --grad-accum G      accepted; does not change memory\n"
	  "  --grad-checkpoint   keep one input per layer and recompute (also --checkpointing;\n"
	  "                      --no-checkpointing, the default)\n"
	  "  --paged             paged AdamW states (default, cuda); --no-paged\n"
	  "  --dropout P         LoRA dropout (0.05)\n"
	  "  --gpu-mem GB        also the largest --seq-len and --batch that fit in GB GiB\n"
	  "  --device cpu|cuda   the CPU trainer (measured) or the CUDA estimate (default)\n"
	  "  --threads N         cpu: the trainer's threads (default: one per CPU)\n"
	  "  --json              one JSON document, sizes in bytes\n"
	  "  other lora train options are accepted and ignored\n" },
	{ "generate", cmd_generate, CMD_NEED_STORE, "sample text from a model and adapter",
	  "lora generate --base DIR [--adapter REF|PATH] --prompt TEXT [--max-tokens N] [--temperature T] [--top-p P] [--seed S] "
	  "[--quant nf4|none] [--chat|--no-chat] [--json] [--threads N]",
	  "  --base DIR          the Hugging Face model folder (with tokenizer.json)\n"
	  "  --adapter REF|PATH  a stored adapter, a .lora package or a PEFT folder\n"
	  "  --prompt TEXT       what to continue (or, for a chat model, the user's turn)\n"
	  "  --max-tokens N      stop after N new tokens (128)\n"
	  "  --temperature T     0: greedy; default 0.7\n"
	  "  --top-p P           sample from the smallest set of tokens holding P of the mass (0.9)\n"
	  "  --seed S            random stream of the sampler (42): same seed, same text\n"
	  "  --quant nf4|none    NF4 frozen weights as QLoRA trains them (default), or as stored\n"
	  "  --chat, --no-chat   use the model's chat template (default: when it has one)\n"
	  "  --json              {\"text\", \"prompt_tokens\", \"tokens\", \"stop\", ...} at the end\n"
	  "  --threads N         BLAS threads\n" },
	{ "tokenize", cmd_tokenize, 0, "turn text into token ids with a model's tokenizer",
	  "lora tokenize --base DIR [--json] [--no-special] [--decode] [TEXT...]",
	  "  --base DIR     model folder with tokenizer.json (and tokenizer_config.json)\n"
	  "  --json         one JSON document: ids, tokens, offsets, count\n"
	  "  --no-special   do not add BOS/EOS (with --decode: leave special tokens out)\n"
	  "  --decode       read token ids and print the text they stand for\n"
	  "  TEXT           the text (arguments joined by spaces); standard input when absent\n" },
};
#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

/* ------------------------------------------------------------ messages */

static void vmsg(const char *prefix, const char *fmt, va_list ap)
{
	fflush(stdout);
	fputs(prefix, stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

int cmd_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vmsg("lora: ", fmt, ap);
	va_end(ap);
	return 1;
}

void cmd_warn(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vmsg("lora: warning: ", fmt, ap);
	va_end(ap);
}

int cmd_usage(const struct cmd_ctx *ctx, const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fputs("lora: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	if (ctx && ctx->def)
		fprintf(stderr, " (see 'lora %s --help')\n", ctx->def->name);
	else
		fputs(" (see 'lora help')\n", stderr);
	return 2;
}

int cmd_fail(const struct lora_err *err)
{
	fflush(stdout);
	fprintf(stderr, "lora: %s\n", err->msg[0] ? err->msg : "failed");
	return err->code > 0 && err->code <= 3 ? err->code : 1;
}

int cmd_print_json(cJSON *o)
{
	char *s = o ? cJSON_PrintUnformatted(o) : NULL;

	cJSON_Delete(o);
	if (!s)
		return cmd_error("out of memory");
	puts(s);
	free(s);
	return 0;
}

void cmd_print_help(const struct cmd_def *def, FILE *f)
{
	const char *p = def->synopsis;

	/* One synopsis line each, the later ones aligned under the first. */
	for (int first = 1; *p; first = 0) {
		size_t n = strcspn(p, "\n");
		fprintf(f, "%s%.*s\n", first ? "usage: " : "       ", (int)n, p);
		p += n + (p[n] == '\n');
	}
	fprintf(f, "\n%s\n", def->summary);
	if (def->options)
		fprintf(f, "\noptions:\n%s", def->options);
	fprintf(f, "\nSee lora-%s(1) for details.\n", def->name);
}

/* -------------------------------------------------------- option parsing */

int cmd_parse_long(const struct cmd_ctx *ctx, const char *opt, const char *s, long min, long max,
		   long *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max) {
		cmd_usage(ctx, "bad value '%s' for %s (an integer from %ld to %ld)", s, opt, min, max);
		return -1;
	}
	*out = v;
	return 0;
}

int cmd_parse_double(const struct cmd_ctx *ctx, const char *opt, const char *s, double min,
		     double max, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !(v >= min && v <= max)) {
		cmd_usage(ctx, "bad value '%s' for %s (a number from %g to %g)", s, opt, min, max);
		return -1;
	}
	*out = v;
	return 0;
}

int cmd_getopt(const struct cmd_ctx *ctx, int argc, char **argv, const char *shortopts,
	       const struct option *longopts)
{
	char sbuf[128];
	int c;

	/* Leading ':' makes getopt return ':' for a missing argument and stay quiet. */
	snprintf(sbuf, sizeof(sbuf), ":%s", shortopts);
	opterr = 0;
	c = getopt_long(argc, argv, sbuf, longopts, NULL);
	if (c == '?') {
		if (optopt)
			cmd_usage(ctx, "unknown option '-%c'", optopt);
		else
			cmd_usage(ctx, "unknown option '%s'", argv[optind - 1]);
		return '?';
	}
	if (c == ':') {
		cmd_usage(ctx, "option '%s' needs a value", argv[optind - 1]);
		return '?';
	}
	return c;
}

/* ------------------------------------------------------------- progress */

#include <time.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void cmd_progress_start(struct cmd_progress *p, const struct cmd_ctx *ctx, const char *label, double total)
{
	p->on = ctx->is_tty;
	p->label = label;
	p->total = total;
	p->t0 = now();
	p->last_draw = 0;
}

void cmd_progress_update(struct cmd_progress *p, double done, const char *extra)
{
	double t = now(), frac, el, eta;
	int w = 30, fill;

	if (!p->on || (t - p->last_draw < 0.1 && done < p->total))
		return;
	p->last_draw = t;
	frac = p->total > 0 ? done / p->total : 0;
	if (frac > 1)
		frac = 1;
	fill = (int)(frac * w);
	el = t - p->t0;
	eta = frac > 0 ? el / frac - el : 0;
	fprintf(stderr, "\r%s [", p->label);
	for (int i = 0; i < w; i++)
		fputc(i < fill ? '#' : '.', stderr);
	fprintf(stderr, "] %3.0f%% %s ETA %.0fs\033[K", frac * 100, extra ? extra : "", eta);
	fflush(stderr);
}

void cmd_progress_end(struct cmd_progress *p)
{
	if (p->on) {
		fputs("\r\033[K", stderr);
		fflush(stderr);
	}
}

/* ------------------------------------------------------------- dispatch */

static const struct cmd_def *find_cmd(const char *name)
{
	for (size_t i = 0; i < N_COMMANDS; i++)
		if (!strcmp(commands[i].name, name))
			return &commands[i];
	return NULL;
}

/* Damerau-Levenshtein (optimal string alignment) distance of short strings. */
static int edit_distance(const char *a, const char *b)
{
	int la = (int)strlen(a), lb = (int)strlen(b);
	int d[32][32];

	if (la > 30 || lb > 30)
		return 99;
	for (int i = 0; i <= la; i++)
		d[i][0] = i;
	for (int j = 0; j <= lb; j++)
		d[0][j] = j;
	for (int i = 1; i <= la; i++)
		for (int j = 1; j <= lb; j++) {
			int cost = a[i - 1] != b[j - 1];
			int v = d[i - 1][j] + 1;
			if (d[i][j - 1] + 1 < v)
				v = d[i][j - 1] + 1;
			if (d[i - 1][j - 1] + cost < v)
				v = d[i - 1][j - 1] + cost;
			if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
			    d[i - 2][j - 2] + 1 < v)
				v = d[i - 2][j - 2] + 1;
			d[i][j] = v;
		}
	return d[la][lb];
}

static int unknown_command(const char *name)
{
	const char *best = NULL;
	int best_d = 3;

	for (size_t i = 0; i < N_COMMANDS; i++) {
		int d;
		if (!commands[i].fn)
			continue;
		d = edit_distance(name, commands[i].name);
		if (d < best_d || (d == best_d && best && strlen(commands[i].name) < strlen(best))) {
			best_d = d;
			best = commands[i].name;
		}
	}
	if (best)
		cmd_error("'%s' is not a lora command; did you mean '%s'?", name, best);
	else
		cmd_error("'%s' is not a lora command (see 'lora help')", name);
	return 2;
}

static void print_usage(FILE *f)
{
	fprintf(f, "usage: lora [--store DIR] <command> [options]\n"
		   "       lora --version | lora help [COMMAND]\n\n"
		   "Train, keep, sign, share and merge LoRA adapters.\n\ncommands:\n");
	for (size_t i = 0; i < N_COMMANDS; i++)
		if (commands[i].fn)
			fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
	fprintf(f, "\nglobal options:\n"
		   "  --store DIR   the adapter store (default $LORA_HOME, else\n"
		   "                ${XDG_DATA_HOME:-~/.local/share}/lora)\n"
		   "  --version     print the version\n\n"
		   "'lora help COMMAND' or 'lora COMMAND --help' shows one command; see lora(1).\n");
}

static CMD(help)
{
	const struct cmd_def *def;

	(void)ctx;
	if (argc < 2) {
		print_usage(stdout);
		return 0;
	}
	if (argc > 2)
		return cmd_usage(ctx, "help takes one command name");
	def = find_cmd(argv[1]);
	if (!def || !def->fn)
		return unknown_command(argv[1]);
	cmd_print_help(def, stdout);
	return 0;
}

static char *default_store(void)
{
	const char *h = getenv("LORA_HOME"), *x = getenv("XDG_DATA_HOME"), *home = getenv("HOME");
	char *p;

	if (h && *h)
		return strdup(h);
	if (x && *x) {
		p = malloc(strlen(x) + 8);
		if (p)
			sprintf(p, "%s/lora", x);
		return p;
	}
	if (!home || !*home)
		return NULL;
	p = malloc(strlen(home) + 32);
	if (p)
		sprintf(p, "%s/.local/share/lora", home);
	return p;
}

static int finish_stdout(int rc)
{
	/* Report a failed write to stdout (a full disk, a closed pipe). */
	if (fflush(stdout) != 0 || ferror(stdout) || fclose(stdout) != 0) {
		if (errno != EPIPE)
			cmd_error("cannot write to standard output: %s", strerror(errno));
		return rc ? rc : 1;
	}
	return rc;
}

int main(int argc, char **argv)
{
	struct cmd_ctx ctx = { 0 };
	const struct cmd_def *def;
	char *store = NULL, *store_opt = NULL;
	int i = 1, rc;

	/* OpenBLAS's threads spin for a while after it loads: most commands never need them. */
	lora_blas_quiet();
	while (i < argc && argv[i][0] == '-') {
		if (!strcmp(argv[i], "--version")) {
			struct lora_cuda_info ci;
			char why[512];
			if (!lora_cuda_api(why, sizeof(why)))
				printf("lora %s (cpu only: %s)\n", LORA_VERSION, why);
			else if (lora_cuda_device(&ci, why, sizeof(why)) == 0 && ci.count)
				printf("lora %s (cuda: %s, %.0f GiB)\n", LORA_VERSION, ci.name,
				       ci.total_mem / 1073741824.0);
			else
				printf("lora %s (cuda plugin; %s)\n", LORA_VERSION, why);
			return finish_stdout(0);
		} else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			print_usage(stdout);
			return finish_stdout(0);
		} else if (!strcmp(argv[i], "--store")) {
			if (i + 1 >= argc)
				return cmd_usage(NULL, "option '--store' needs a value");
			store_opt = argv[i + 1];
			i += 2;
		} else if (!strncmp(argv[i], "--store=", 8)) {
			store_opt = argv[i] + 8;
			i++;
		} else {
			return cmd_usage(NULL, "unknown option '%s'", argv[i]);
		}
	}
	if (i >= argc) {
		print_usage(stderr);
		return 2;
	}
	def = find_cmd(argv[i]);
	if (!def || !def->fn)
		return unknown_command(argv[i]);
	ctx.def = def;
	ctx.is_tty = isatty(STDERR_FILENO);
	for (int k = i + 1; k < argc && strcmp(argv[k], "--"); k++)
		if (!strcmp(argv[k], "--help") || !strcmp(argv[k], "-h")) {
			cmd_print_help(def, stdout);
			return finish_stdout(0);
		}
	if (def->flags & CMD_NEED_STORE) {
		store = store_opt ? strdup(store_opt) : default_store();
		if (!store)
			return cmd_error("cannot find the store: set --store, $LORA_HOME or $HOME");
		ctx.store = store;
	}
	optind = 0;  /* GNU getopt: reinitialise for the command's own argv */
	rc = def->fn(argc - i, argv + i, &ctx);
	free(store);
	return finish_stdout(rc);
}
