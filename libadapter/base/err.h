/*
 * err.h - how libadapter and train/ report failure.
 *
 * Library code never prints and never exits.  A function that can fail takes
 * a `struct lora_err *` as its last argument and returns -1 (or NULL) after
 * filling it with one lowercase line that says what failed and on which file:
 *
 *     if (fd < 0)
 *             return lora_errf(err, "cannot open '%s': %s", path, strerror(errno));
 *
 * cmd/ prints it as "lora: <msg>" and picks the exit code from `code`.
 */
#ifndef LORA_ERR_H
#define LORA_ERR_H

#include <stddef.h>

enum lora_status {
	LORA_OK = 0,
	LORA_EFAIL = 1,   /* ordinary failure: exit 1 */
	LORA_EUSAGE = 2,  /* bad command line: exit 2 */
	LORA_EVERIFY = 3, /* a verification (digest, signature, trust) failed: exit 3 */
};

struct lora_err {
	int code;         /* enum lora_status */
	char msg[1024];
};

/* Fill err (may be NULL) with a formatted message, code LORA_EFAIL; returns -1. */
int lora_errf(struct lora_err *err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Same, with an explicit status code; returns -1. */
int lora_errc(struct lora_err *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Prefix an existing message: "<prefix>: <old msg>".  Returns -1. */
int lora_err_prefix(struct lora_err *err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

void lora_err_clear(struct lora_err *err);

#endif
