/*
 * cmd.h - what every command shares: the command table entry, the context
 * built from global options, and the few ways a command talks to the user.
 *
 * Commands return the process exit status: 0 ok, 1 failure, 2 usage error,
 * 3 failed verification (DESIGN.md).  Errors are one line on stderr that
 * begins "lora: ".  Only cmd/ prints.
 */
#ifndef LORA_CMD_H
#define LORA_CMD_H

#include <getopt.h>
#include <stdio.h>

#include "libadapter/base/err.h"

#define CMD_NEED_STORE 0x1   /* resolve the store directory before running */

struct cmd_ctx;
typedef int (*cmd_fn)(int argc, char **argv, struct cmd_ctx *ctx);

struct cmd_def {
	const char *name;
	cmd_fn fn;
	unsigned flags;
	const char *summary;    /* one line for `lora help` */
	const char *synopsis;   /* the SYNOPSIS of the man page, lines separated by \n */
	const char *options;    /* option descriptions for --help, or NULL */
};

struct cmd_ctx {
	const struct cmd_def *def;
	const char *store;      /* --store, $LORA_HOME, or the XDG default */
	int is_tty;             /* stderr is a terminal: progress bars allowed */
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

/* Print the --help text of a command to f. */
void cmd_print_help(const struct cmd_def *def, FILE *f);

/*
 * Strict number parsing for option values; on a bad value prints a usage
 * error naming the option and returns -1 (the caller returns 2).
 */
int cmd_parse_long(const struct cmd_ctx *ctx, const char *opt, const char *s, long min, long max,
		   long *out);
int cmd_parse_double(const struct cmd_ctx *ctx, const char *opt, const char *s, double min,
		     double max, double *out);

/*
 * A getopt_long loop that every command uses:
 *     while ((c = cmd_getopt(argc, argv, "o:", longopts)) != -1) switch (c) { ... case '?': return 2; }
 * getopt's own messages are replaced by one "lora: ..." usage line.
 */
int cmd_getopt(const struct cmd_ctx *ctx, int argc, char **argv, const char *shortopts,
	       const struct option *longopts);

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

/* Every command, defined in cmd/<name>.c */
#define CMD(n) int cmd_##n(int argc, char **argv, struct cmd_ctx *ctx)
CMD(inspect);

#endif
