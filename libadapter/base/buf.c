/* buf.c - growable byte buffer (see buf.h). */
#include "libadapter/base/buf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int grow(struct lora_buf *b, size_t extra)
{
	size_t need, cap;
	char *p;

	if (b->oom)
		return -1;
	if (extra > SIZE_MAX - b->len - 1)  /* Catch size_t overflow */
		goto fail;
	need = b->len + extra + 1;
	if (need <= b->cap)
		return 0;
	cap = b->cap ? b->cap : 64;
	while (cap < need)
		cap = cap > SIZE_MAX / 2 ? need : cap * 2;
	p = realloc(b->data, cap);
	if (!p)
		goto fail;
	b->data = p;
	b->cap = cap;
	return 0;
fail:
	b->oom = 1;
	return -1;
}

void lora_buf_add(struct lora_buf *b, const void *p, size_t n)
{
	if (grow(b, n) < 0)
		return;
	if (n)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
}

void lora_buf_puts(struct lora_buf *b, const char *s)
{
	lora_buf_add(b, s, strlen(s));
}

void lora_buf_printf(struct lora_buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0 || grow(b, (size_t)n) < 0)
		return;
	va_start(ap, fmt);
	vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

void lora_buf_json_str(struct lora_buf *b, const char *s)
{
	lora_buf_add(b, "\"", 1);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		switch (*p) {
		case '"': lora_buf_add(b, "\\\"", 2); break;
		case '\\': lora_buf_add(b, "\\\\", 2); break;
		case '\n': lora_buf_add(b, "\\n", 2); break;
		case '\r': lora_buf_add(b, "\\r", 2); break;
		case '\t': lora_buf_add(b, "\\t", 2); break;
		default:
			if (*p < 0x20)
				lora_buf_printf(b, "\\u%04x", *p);
			else
				lora_buf_add(b, p, 1);
		}
	}
	lora_buf_add(b, "\"", 1);
}

char *lora_buf_take(struct lora_buf *b)
{
	char *p;

	if (b->oom) {
		lora_buf_free(b);
		return NULL;
	}
	if (!b->data)
		lora_buf_add(b, "", 0);
	p = b->data;
	b->data = NULL;
	b->len = b->cap = 0;
	return p;
}

void lora_buf_free(struct lora_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
	b->oom = 0;
}
