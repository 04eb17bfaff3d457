/*
 * par.h - a parallel for over indexes, for work cut into independent items
 * (one module, one tensor): the calling thread works too, and the first
 * failure stops the handing out of further items.
 */
#ifndef LORA_PAR_H
#define LORA_PAR_H

#include <stddef.h>

#include "libadapter/base/err.h"

/* Do item i; 0, or -1 with err set. */
typedef int (*lora_par_fn)(void *ctx, size_t i, struct lora_err *err);

/*
 * fn(ctx, i, err) for every i < n, on `threads` threads (0: one per CPU),
 * never more than n nor 64.  Returns 0, or -1 with the first failure's error.
 */
int lora_par_for(size_t n, int threads, lora_par_fn fn, void *ctx, struct lora_err *err);

#endif
