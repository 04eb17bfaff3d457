/*
 * buf.h - a growable byte buffer, NUL-terminated, for building JSON, paths
 * and messages without fixed-size arrays.
 *
 *     struct lora_buf b = LORA_BUF_INIT;
 *     lora_buf_printf(&b, "{\"r\": %d}", r);
 *     ... b.data, b.len ...
 *     lora_buf_free(&b);
 *
 * Allocation failure is sticky: `oom` is set, later appends do nothing, and
 * the caller checks it once at the end.
 */
#ifndef LORA_BUF_H
#define LORA_BUF_H

#include <stddef.h>

struct lora_buf {
	char *data;   /* NUL-terminated when len > 0 or after any append */
	size_t len;
	size_t cap;
	int oom;      /* an allocation failed */
};

#define LORA_BUF_INIT { NULL, 0, 0, 0 }

void lora_buf_add(struct lora_buf *b, const void *p, size_t n);
void lora_buf_puts(struct lora_buf *b, const char *s);
void lora_buf_printf(struct lora_buf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Append s as a JSON string literal, quotes included. */
void lora_buf_json_str(struct lora_buf *b, const char *s);
/* Take ownership of the data (never NULL unless oom); the buffer is reset. */
char *lora_buf_take(struct lora_buf *b);
void lora_buf_free(struct lora_buf *b);

#endif
