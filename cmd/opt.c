/*
 * opt.c - options said once: a command's array of struct cmd_opt (cmd/cmd.h)
 * is at once getopt_long's table, the short-option string and the "options:"
 * part of --help.  Also the strict number parsers for option values.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/cmd.h"

#define OPT_MAX 128          /* entries in one getopt table (lora plan: ~55) */
#define OPT_VAL_BASE 0x20000 /* getopt_long's val for entry i of the table: OPT_VAL_BASE + i */

static int opt_end(const struct cmd_opt *o)
{
	return !o->name && !o->arg;
}

static int takes(const struct cmd_opt *o, unsigned sub)
{
	return o->name && (!o->only || (o->only & sub));
}

/* "--name" of the entry with this id in the command's own options (for messages). */
const char *cmd_opt_flag(const struct cmd_ctx *ctx, int id)
{
	static char buf[80];

	for (const struct cmd_opt *o = ctx && ctx->def ? ctx->def->opts : NULL; o && !opt_end(o); o++)
		if (o->name && o->id == id) {
			snprintf(buf, sizeof(buf), "--%s", o->name);
			return buf;
		}
	return "option";
}

/* A name of the command's own, so that an option borrowed through .also is not taken twice. */
static int own_name(const struct cmd_opt *opts, const char *name)
{
	for (const struct cmd_opt *o = opts; o && !opt_end(o); o++)
		if (o->name && !strcmp(o->name, name))
			return 1;
	return 0;
}

int cmd_getopt_sub(struct cmd_ctx *ctx, int argc, char **argv, unsigned sub)
{
	/* rebuilt at each call (cheap): getopt keeps its place in argv, not in the table */
	static struct option tbl[OPT_MAX + 1];
	static const struct cmd_opt *ent[OPT_MAX];
	static unsigned char borrowed[OPT_MAX];   /* ent[i] is another command's (.also) */
	const struct cmd_opt *own = ctx->def->opts;
	const struct cmd_opt *also = ctx->def->also ? ctx->def->also->opts : NULL;
	char sbuf[2 * OPT_MAX + 2];
	size_t n = 0, ns = 0;
	int c;

	/* Leading ':' makes getopt return ':' for a missing argument and stay quiet. */
	sbuf[ns++] = ':';
	for (int pass = 0; pass < 2; pass++)
		for (const struct cmd_opt *o = pass ? also : own; o && !opt_end(o); o++) {
			if (!takes(o, sub) || (pass && own_name(own, o->name)))
				continue;
			if (n == OPT_MAX) {
				cmd_usage(ctx, "internal error: more than %d options", OPT_MAX);
				return '?';
			}
			tbl[n] = (struct option){ o->name, o->arg ? required_argument : no_argument, NULL,
						  OPT_VAL_BASE + (int)n };
			borrowed[n] = (unsigned char)pass;
			ent[n++] = o;
			if (o->short_name && !pass) {
				sbuf[ns++] = (char)o->short_name;
				if (o->arg)
					sbuf[ns++] = ':';
			}
		}
	tbl[n] = (struct option){ 0 };
	sbuf[ns] = 0;
	opterr = 0;
	c = getopt_long(argc, argv, sbuf, tbl, NULL);
	ctx->opt = NULL;
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
	if (c == -1)
		return -1;
	if (c >= OPT_VAL_BASE && c < OPT_VAL_BASE + (int)n) {
		ctx->opt = ent[c - OPT_VAL_BASE];
		return borrowed[c - OPT_VAL_BASE] ? CMD_OPT_ALSO : ctx->opt->id;
	}
	for (size_t i = 0; i < n; i++)   /* a short option: the char getopt returned */
		if (!borrowed[i] && ent[i]->short_name == c) {
			ctx->opt = ent[i];
			return ent[i]->id;
		}
	return '?';
}

int cmd_getopt(struct cmd_ctx *ctx, int argc, char **argv)
{
	return cmd_getopt_sub(ctx, argc, argv, ~0u);
}

/* ---------------------------------------------------------------- help */

/* The label of one entry, without the leading two spaces: "-o, --output DIR". */
static void label(const struct cmd_opt *o, char *buf, size_t len)
{
	size_t k = 0;

	buf[0] = 0;
	if (!o->name) {
		snprintf(buf, len, "%s", o->arg);
		return;
	}
	if (o->short_name && !(o->flags & CMD_OPT_SHORT_UNLISTED))
		k = (size_t)snprintf(buf, len, "-%c, ", o->short_name);
	if (k < len)
		snprintf(buf + k, len - k, "--%s%s%s", o->name, o->arg ? " " : "", o->arg ? o->arg : "");
}

void cmd_print_options(const struct cmd_opt *opts, int col, FILE *f)
{
	for (const struct cmd_opt *o = opts; o && !opt_end(o); o++) {
		char l[256], l2[128];
		const char *p = o->help;
		int w;

		if (!o->help)
			continue;
		label(o, l, sizeof(l));
		if ((o->flags & CMD_OPT_JOIN_NEXT) && !opt_end(o + 1)) {
			label(o + 1, l2, sizeof(l2));
			strncat(l, ", ", sizeof(l) - strlen(l) - 1);
			strncat(l, l2, sizeof(l) - strlen(l) - 1);
		}
		/* the help text starts at column col, or two spaces after a label too long for it */
		w = fprintf(f, "  %s", l);
		fprintf(f, "%*s", w < col ? col - w : 2, "");
		for (;;) {
			size_t n = strcspn(p, "\n");
			fprintf(f, "%.*s\n", (int)n, p);
			if (!p[n])
				break;
			p += n + 1;
			fprintf(f, "%*s", col, "");
		}
	}
}

static int any_listed(const struct cmd_opt *opts)
{
	for (const struct cmd_opt *o = opts; o && !opt_end(o); o++)
		if (o->help)
			return 1;
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
	if (any_listed(def->opts)) {
		fprintf(f, "\noptions:\n");
		cmd_print_options(def->opts, def->help_col, f);
		if (def->also)
			fprintf(f, "  other lora %s options are accepted and ignored\n", def->also->name);
	}
	fprintf(f, "\nSee lora-%s(1) for details.\n", def->name);
}

/* -------------------------------------------------------- option values */

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

static const char *cur_flag(const struct cmd_ctx *ctx)
{
	static char buf[80];

	if (!ctx->opt)
		return "option";
	snprintf(buf, sizeof(buf), "--%s", ctx->opt->name);
	return buf;
}

int cmd_optarg_long(const struct cmd_ctx *ctx, long min, long max, long *out)
{
	return cmd_parse_long(ctx, cur_flag(ctx), optarg, min, max, out);
}

int cmd_optarg_double(const struct cmd_ctx *ctx, double min, double max, double *out)
{
	return cmd_parse_double(ctx, cur_flag(ctx), optarg, min, max, out);
}
