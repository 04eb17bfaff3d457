/*
 * pool.h - a fixed set of worker threads for the CPU backend's loops.
 *
 *     lora_pool_for(pool, n, grain, fn, arg);
 *
 * runs fn(arg, i0, i1, part) over [0, n) cut into one contiguous range per
 * thread (the calling thread takes part 0) and returns when every part is
 * done.  The cut depends only on n and the thread count, and each index is
 * handled by exactly one call, so a loop whose iterations write disjoint
 * outputs gives the same bits whatever the thread count.  Below 2·grain
 * items the loop runs on the caller alone.  Workers sleep between loops.
 */
#ifndef LORA_TRAIN_POOL_H
#define LORA_TRAIN_POOL_H

#include <stddef.h>

#include "libadapter/base/err.h"

struct lora_pool;
typedef void (*lora_pool_fn)(void *arg, size_t i0, size_t i1, int part);

/* nthreads >= 1 (1: no workers, everything on the caller). */
int lora_pool_create(struct lora_pool **out, int nthreads, struct lora_err *err);
void lora_pool_destroy(struct lora_pool *p);
int lora_pool_threads(const struct lora_pool *p);
void lora_pool_for(struct lora_pool *p, size_t n, size_t grain, lora_pool_fn fn, void *arg);

#endif
