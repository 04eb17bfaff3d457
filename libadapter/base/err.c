/* err.c - error reporting for library code (see err.h). */
#include "libadapter/base/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int vset(struct lora_err *err, int code, const char *fmt, va_list ap)
{
	if (!err)
		return -1;
	err->code = code;
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	return -1;
}

int lora_errf(struct lora_err *err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vset(err, LORA_EFAIL, fmt, ap);
	va_end(ap);
	return -1;
}

int lora_errc(struct lora_err *err, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vset(err, code, fmt, ap);
	va_end(ap);
	return -1;
}

int lora_err_prefix(struct lora_err *err, const char *fmt, ...)
{
	char old[sizeof(err->msg)], pre[512], both[sizeof(pre) + sizeof(old) + 2];
	va_list ap;

	if (!err)
		return -1;
	memcpy(old, err->msg, sizeof(old));
	va_start(ap, fmt);
	vsnprintf(pre, sizeof(pre), fmt, ap);
	va_end(ap);
	snprintf(both, sizeof(both), "%s: %s", pre, old);
	memcpy(err->msg, both, sizeof(err->msg) - 1);  /* truncate a very long message */
	err->msg[sizeof(err->msg) - 1] = '\0';
	return -1;
}

void lora_err_clear(struct lora_err *err)
{
	if (err) {
		err->code = LORA_OK;
		err->msg[0] = '\0';
	}
}
