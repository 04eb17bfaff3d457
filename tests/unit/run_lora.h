/*
 * run_lora.h - run the `lora` binary under test ($LORA, as tests/run.sh sets
 * it) from a C test and capture its stdout, stderr and exit status.
 */
#ifndef LORA_TEST_RUN_LORA_H
#define LORA_TEST_RUN_LORA_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "libadapter/base/buf.h"

struct lora_run {
	int rc;            /* exit status, or -1 when it did not exit normally */
	char *out, *err;   /* malloc'd, NUL-terminated */
};

static inline char *run_slurp(const char *path)
{
	struct lora_buf b = LORA_BUF_INIT;
	char chunk[4096];
	size_t n;
	FILE *f = fopen(path, "r");

	while (f && (n = fread(chunk, 1, sizeof(chunk), f)) > 0)
		lora_buf_add(&b, chunk, n);
	if (f)
		fclose(f);
	lora_buf_add(&b, "", 0);
	return lora_buf_take(&b);
}

/* Run "$LORA ARGS" (ARGS already shell-quoted).  Returns -1 when $LORA is unset. */
static inline int run_lora(const char *args, struct lora_run *r)
{
	const char *lora = getenv("LORA"), *tmp = getenv("TMPDIR");
	char outp[256], errp[256], *cmd;
	int st;

	memset(r, 0, sizeof(*r));
	r->rc = -1;
	if (!lora || !*lora) {
		fprintf(stderr, "  $LORA is not set: run through make check\n");
		return -1;
	}
	snprintf(outp, sizeof(outp), "%s/lora-run-%d.out", tmp && *tmp ? tmp : "/tmp", (int)getpid());
	snprintf(errp, sizeof(errp), "%s/lora-run-%d.err", tmp && *tmp ? tmp : "/tmp", (int)getpid());
	cmd = malloc(strlen(lora) + strlen(args) + 2 * sizeof(outp) + 32);
	sprintf(cmd, "'%s' %s >'%s' 2>'%s'", lora, args, outp, errp);
	st = system(cmd);
	free(cmd);
	r->rc = st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
	r->out = run_slurp(outp);
	r->err = run_slurp(errp);
	remove(outp);
	remove(errp);
	return 0;
}

static inline void run_free(struct lora_run *r)
{
	free(r->out);
	free(r->err);
}

#endif
