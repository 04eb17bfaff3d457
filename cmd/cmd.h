/*
 * cmd.h - what every command shares: the command table entry, the options
 * array, the context built from global options, and the few ways a command
 * talks to the user.
 *
 * Commands return the process exit status: 0 ok, 1 failure, 2 usage error,
 * 3 failed verification (DESIGN.md).  Errors are one line on stderr that
 * begins "lora: ".  Only cmd/ prints.
 *
 * How a command is written (each option said once):
 *
 *     enum { O_BASE = 1, O_OUT, O_JSON };           // ids: anything but -1, 0, '?' and ':'
 *     static const struct cmd_opt opts[] = {        // in the order --help lists them
 *         { "base", 0, "DIR", "the base model folder", O_BASE },
 *         { "output", 'o', "DIR", "the folder to create", O_OUT },
 *         { "json", 0, NULL, "one JSON document on stdout", O_JSON },
 *         { 0 }
 *     };
 *     static CMD(frob) { ... while ((c = cmd_getopt(ctx, argc, argv)) != -1) switch (c) ... }
 *     const struct cmd_def cmd_frob_entry = {
 *         "frob", cmd_frob, CMD_NEED_STORE, "one line for lora help",
 *         "lora frob --base DIR -o DIR [--json]",   // = the man page's SYNOPSIS (tests/sh/foundation_man.sh)
 *         opts, 20 };                              // 20: the column where help text starts
 *
 * and one line in cmd/lora.c's table (COMMAND(frob)).  The array is at once
 * getopt_long's table, the short-option string and the "options:" block of
 * --help (cmd/opt.c); an entry with help NULL is accepted but not listed, one
 * with no name is an operand's help line (arg is its label).  Number values:
 * cmd_optarg_long/double, whose messages name the option being parsed.
 * tests/sh/layering_opts.sh fails when an option name is declared twice in a
 * file, or when a struct option table or a hand-written help line appears.
 */
#ifndef LORA_CMD_H
#define LORA_CMD_H

#include <getopt.h>
#include <stdio.h>

#include "libadapter/base/err.h"

#define CMD_NEED_STORE 0x1   /* resolve the store directory before running */

#define CMD_OPT_SHORT_UNLISTED 0x1   /* the short name works, but --help does not show it */
#define CMD_OPT_JOIN_NEXT      0x2   /* one help line with the next entry: "--chat, --no-chat" */
#define CMD_OPT_ALSO      0x10000    /* cmd_getopt's answer for an option borrowed through .also */

/* One option of a command; an array of them ends with { 0 }. */
struct cmd_opt {
	const char *name;       /* long name without "--"; NULL: an operand's help line */
	int short_name;         /* 'o' for -o, or 0 */
	const char *arg;        /* the value's name in help ("DIR"); NULL: takes no value */
	const char *help;       /* help text, lines separated by \n; NULL: accepted, not listed */
	int id;                 /* what cmd_getopt returns for it */
	unsigned flags;         /* CMD_OPT_* */
	unsigned only;          /* subcommands that take it, a bit each (cmd_getopt_sub); 0: all */
};

struct cmd_ctx;
typedef int (*cmd_fn)(int argc, char **argv, struct cmd_ctx *ctx);

struct cmd_def {
	const char *name;
	cmd_fn fn;
	unsigned flags;
	const char *summary;    /* one line for `lora help` */
	const char *synopsis;   /* the SYNOPSIS of the man page, lines separated by \n */
	const struct cmd_opt *opts;   /* its options, or NULL */
	int help_col;           /* column where the help text of an option starts */
	const struct cmd_def *also;   /* another command whose options are accepted and ignored */
};

struct cmd_ctx {
	const struct cmd_def *def;
	const char *store;      /* --store, $LORA_HOME, or the XDG default */
	int is_tty;             /* stderr is a terminal: progress bars allowed */
	const struct cmd_opt *opt;    /* the option cmd_getopt returned last */
	/* the environment, read here only and handed to the library in its options */
	const char *cache_dir;  /* fingerprint lines: $XDG_CACHE_HOME/lora/tensor-lines, else
				   $HOME/.cache/lora/tensor-lines; NULL when $LORA_NO_CACHE is set (not 0) */
	const char *tmp_dir;    /* $TMPDIR, else /tmp */
	const char *user;       /* $USER for default signer identities; NULL: the login name */
	const char *created;    /* $SOURCE_DATE_EPOCH as RFC 3339, for manifests; NULL: now */
	const char *cuda_plugin;   /* $LORA_CUDA_PLUGIN: the CUDA plugin to load (train/cuda.h); NULL:
				      liblora_cuda.so beside lora */
};

/* Print "lora: <msg>" on stderr; returns 1. */
int cmd_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Print "lora: <msg> (see 'lora CMD --help')"; returns 2. */
int cmd_usage(const struct cmd_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Print err's message; returns its exit code (1, 2 or 3). */
int cmd_fail(const struct lora_err *err);
/* Print "lora: warning: <msg>" on stderr. */
void cmd_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Print o as one JSON document on stdout and free it; returns 0, or 1 when out of memory. */
struct cJSON;
int cmd_print_json(struct cJSON *o);

/* Print the --help text of a command to f; the "options:" lines of opts, help at column col. */
void cmd_print_help(const struct cmd_def *def, FILE *f);
void cmd_print_options(const struct cmd_opt *opts, int col, FILE *f);

/*
 * Strict number parsing for option values; on a bad value prints a usage
 * error naming the option and returns -1 (the caller returns 2).
 * cmd_optarg_*: optarg, for the option cmd_getopt just returned.
 */
int cmd_parse_long(const struct cmd_ctx *ctx, const char *opt, const char *s, long min, long max,
		   long *out);
int cmd_parse_double(const struct cmd_ctx *ctx, const char *opt, const char *s, double min,
		     double max, double *out);
int cmd_optarg_long(const struct cmd_ctx *ctx, long min, long max, long *out);
int cmd_optarg_double(const struct cmd_ctx *ctx, double min, double max, double *out);
/* "--name" of the command's option with this id, for messages. */
const char *cmd_opt_flag(const struct cmd_ctx *ctx, int id);

/*
 * The getopt_long loop that every command uses, over ctx->def->opts:
 *     while ((c = cmd_getopt(ctx, argc, argv)) != -1) switch (c) { ... case '?': return 2; }
 * getopt's own messages are replaced by one "lora: ..." usage line.
 * cmd_getopt_sub takes only the options whose .only has a bit of sub (or is 0).
 */
int cmd_getopt(struct cmd_ctx *ctx, int argc, char **argv);
int cmd_getopt_sub(struct cmd_ctx *ctx, int argc, char **argv, unsigned sub);

/* Progress bar on stderr when it is a terminal; quiet otherwise. */
struct cmd_progress {
	int on;
	const char *label;
	double total;
	double last_draw;
	double t0;
};
void cmd_progress_start(struct cmd_progress *p, const struct cmd_ctx *ctx, const char *label, double total);
void cmd_progress_update(struct cmd_progress *p, double done, const char *extra);
void cmd_progress_end(struct cmd_progress *p);

/* A command's function, in cmd/<name>.c beside its entry cmd_<name>_entry. */
#define CMD(n) int cmd_##n(int argc, char **argv, struct cmd_ctx *ctx)

#endif
