/* par.c - see par.h. */
#include "libadapter/base/par.h"

#include <pthread.h>
#include <unistd.h>

struct par {
	size_t n, next;
	lora_par_fn fn;
	void *ctx;
	pthread_mutex_t mu;
	int failed;
	struct lora_err err;
};

static void *par_worker(void *arg)
{
	struct par *p = arg;

	for (;;) {
		struct lora_err err = { 0 };
		size_t i;

		pthread_mutex_lock(&p->mu);
		i = p->failed ? p->n : p->next++;
		pthread_mutex_unlock(&p->mu);
		if (i >= p->n)
			return NULL;
		if (p->fn(p->ctx, i, &err) < 0) {
			pthread_mutex_lock(&p->mu);
			if (!p->failed) {
				p->failed = 1;
				p->err = err;
			}
			pthread_mutex_unlock(&p->mu);
		}
	}
}

int lora_par_for(size_t n, int threads, lora_par_fn fn, void *ctx, struct lora_err *err)
{
	struct par p = { .n = n, .fn = fn, .ctx = ctx };
	pthread_t tid[64];
	int started = 0;

	if (threads <= 0) {
		long c = sysconf(_SC_NPROCESSORS_ONLN);
		threads = c > 0 ? (int)c : 1;
	}
	if (threads > 64)
		threads = 64;
	if ((size_t)threads > n)
		threads = n ? (int)n : 1;
	pthread_mutex_init(&p.mu, NULL);
	for (int t = 1; t < threads; t++)
		if (pthread_create(&tid[started], NULL, par_worker, &p) == 0)
			started++;
	par_worker(&p);   /* the calling thread works too */
	for (int t = 0; t < started; t++)
		pthread_join(tid[t], NULL);
	pthread_mutex_destroy(&p.mu);
	if (p.failed) {
		*err = p.err;
		return -1;
	}
	return 0;
}
