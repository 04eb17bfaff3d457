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
#include "libadapter/store/manifest.h"
#include "train/cuda.h"


/*
 * The table of commands, in the order `lora help` lists them.  Each entry is
 * defined beside its command in cmd/<name>.c (cmd/cmd.h); a weak reference
 * is NULL when that file is not linked in.
 */
#define COMMAND(n) extern const struct cmd_def cmd_##n##_entry __attribute__((weak))
COMMAND(inspect); COMMAND(keygen); COMMAND(trust); COMMAND(import); COMMAND(export); COMMAND(list);
COMMAND(verify); COMMAND(rm); COMMAND(tag); COMMAND(diff); COMMAND(combine); COMMAND(extract);
COMMAND(merge); COMMAND(swap); COMMAND(train); COMMAND(eval); COMMAND(plan); COMMAND(generate);
COMMAND(tokenize); COMMAND(push); COMMAND(pull);
static CMD(help);
static const struct cmd_def cmd_help_entry = {
	"help", cmd_help, 0, "show help for lora or for one command", "lora help [COMMAND]", NULL, 0, NULL
};

static const struct cmd_def *const commands[] = {
	&cmd_help_entry, &cmd_inspect_entry, &cmd_keygen_entry, &cmd_trust_entry, &cmd_import_entry,
	&cmd_export_entry, &cmd_push_entry, &cmd_pull_entry,
	&cmd_list_entry, &cmd_verify_entry, &cmd_rm_entry, &cmd_tag_entry,
	&cmd_diff_entry, &cmd_combine_entry, &cmd_extract_entry, &cmd_merge_entry, &cmd_swap_entry,
	&cmd_train_entry, &cmd_eval_entry, &cmd_plan_entry, &cmd_generate_entry, &cmd_tokenize_entry,
};
#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

/* Global options, before the command's name. */
enum { G_STORE = 1, G_VERSION, G_HELP };
static const struct cmd_opt global_opts[] = {
	{ "store", 0, "DIR", "the adapter store (default $LORA_HOME, else\n"
			      "${XDG_DATA_HOME:-~/.local/share}/lora)", G_STORE, 0, 0 },
	{ "version", 0, NULL, "print the version", G_VERSION, 0, 0 },
	{ "help", 'h', NULL, NULL, G_HELP, 0, 0 },
	{ 0 }
};

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
		if (commands[i] && !strcmp(commands[i]->name, name))
			return commands[i];
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
		if (!commands[i] || !commands[i]->fn)
			continue;
		d = edit_distance(name, commands[i]->name);
		if (d < best_d || (d == best_d && best && strlen(commands[i]->name) < strlen(best))) {
			best_d = d;
			best = commands[i]->name;
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
		if (commands[i] && commands[i]->fn)
			fprintf(f, "  %-10s %s\n", commands[i]->name, commands[i]->summary);
	fprintf(f, "\nglobal options:\n");
	cmd_print_options(global_opts, 16, f);
	fprintf(f, "\n'lora help COMMAND' or 'lora COMMAND --help' shows one command; see lora(1).\n");
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

/*
 * The global option arg is ("--name", "--name=VALUE" for one that takes a
 * value, "-h"), or NULL; *val is VALUE or NULL.
 */
static const struct cmd_opt *global_opt(const char *arg, const char **val)
{
	for (const struct cmd_opt *o = global_opts; o->name; o++) {
		size_t n = strlen(o->name);

		if (val)
			*val = NULL;
		if (arg[0] == '-' && arg[1] == o->short_name && o->short_name && !arg[2])
			return o;
		if (strncmp(arg, "--", 2) || strncmp(arg + 2, o->name, n))
			continue;
		if (!arg[2 + n])
			return o;
		if (o->arg && arg[2 + n] == '=') {
			if (val)
				*val = arg + 3 + n;
			return o;
		}
	}
	return NULL;
}

/*
 * The environment the library is told about (cmd.h, struct cmd_ctx): the
 * only getenv calls of the program are here and in cmd/ (tests/sh/layering_env.sh).
 */
static char *env_cache_dir(void)
{
	const char *x = getenv("XDG_CACHE_HOME"), *h = getenv("HOME"), *off = getenv("LORA_NO_CACHE");
	const char *root = x && *x == '/' ? x : h && *h == '/' ? h : NULL;
	const char *sub = root == x ? "/lora/tensor-lines" : "/.cache/lora/tensor-lines";
	char *d;

	if ((off && *off && strcmp(off, "0")) || !root)
		return NULL;
	if ((d = malloc(strlen(root) + strlen(sub) + 1)))
		sprintf(d, "%s%s", root, sub);
	return d;
}

static void env_to_ctx(struct cmd_ctx *ctx, char created[32])
{
	const char *td = getenv("TMPDIR"), *u = getenv("USER"), *sde = getenv("SOURCE_DATE_EPOCH");
	const char *cp = getenv("LORA_CUDA_PLUGIN");

	ctx->tmp_dir = td && *td ? td : "/tmp";
	ctx->user = u && *u ? u : NULL;
	ctx->cuda_plugin = cp && *cp ? cp : NULL;
	if (sde && *sde) {
		lora_rfc3339(strtoll(sde, NULL, 10), created);
		ctx->created = created;
	}
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
	char *store = NULL, *store_opt = NULL, *cache = NULL, created[32];
	int i = 1, rc;

	/* OpenBLAS's threads spin for a while after it loads: most commands never need them. */
	lora_blas_quiet();
	while (i < argc && argv[i][0] == '-') {
		const char *val = NULL;
		const struct cmd_opt *g = global_opt(argv[i], &val);

		if (!g)
			return cmd_usage(NULL, "unknown option '%s'", argv[i]);
		if (g->id == G_VERSION) {
			struct lora_cuda_info ci;
			char why[512];
			const char *cp = getenv("LORA_CUDA_PLUGIN");

			if (!lora_cuda_api(cp, why, sizeof(why)))
				printf("lora %s (cpu only: %s)\n", LORA_VERSION, why);
			else if (lora_cuda_device(cp, &ci, why, sizeof(why)) == 0 && ci.count)
				printf("lora %s (cuda: %s, %.0f GiB)\n", LORA_VERSION, ci.name,
				       ci.total_mem / 1073741824.0);
			else
				printf("lora %s (cuda plugin; %s)\n", LORA_VERSION, why);
			return finish_stdout(0);
		} else if (g->id == G_HELP) {
			print_usage(stdout);
			return finish_stdout(0);
		} else if (!val) {   /* G_STORE, its value the next argument */
			if (i + 1 >= argc)
				return cmd_usage(NULL, "option '%s' needs a value", argv[i]);
			store_opt = argv[i + 1];
			i += 2;
		} else {
			store_opt = (char *)val;
			i++;
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
		if (global_opt(argv[k], NULL) && global_opt(argv[k], NULL)->id == G_HELP) {
			cmd_print_help(def, stdout);
			return finish_stdout(0);
		}
	if (def->flags & CMD_NEED_STORE) {
		store = store_opt ? strdup(store_opt) : default_store();
		if (!store)
			return cmd_error("cannot find the store: set --store, $LORA_HOME or $HOME");
		ctx.store = store;
	}
	env_to_ctx(&ctx, created);
	ctx.cache_dir = cache = env_cache_dir();
	optind = 0;  /* GNU getopt: reinitialise for the command's own argv */
	rc = def->fn(argc - i, argv + i, &ctx);
	free(store);
	free(cache);
	return finish_stdout(rc);
}
