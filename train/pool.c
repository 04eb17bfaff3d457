/* pool.c - worker threads for parallel loops (see pool.h). */
#include "train/pool.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct worker {
	struct lora_pool *pool;
	pthread_t tid;
	int part;
};

struct lora_pool {
	int n;                    /* threads, the caller included */
	struct worker *w;         /* [n - 1] */
	pthread_mutex_t mu;
	pthread_cond_t go, done;
	unsigned long gen;        /* bumped for each loop */
	int pending;              /* workers still running the current loop */
	int quit;
	/* the current loop */
	size_t items;
	lora_pool_fn fn;
	void *arg;
};

static void run_part(struct lora_pool *p, int part)
{
	const size_t i0 = p->items * (size_t)part / (size_t)p->n;
	const size_t i1 = p->items * (size_t)(part + 1) / (size_t)p->n;

	if (i0 < i1)
		p->fn(p->arg, i0, i1, part);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct lora_pool *p = w->pool;
	unsigned long seen = 0;

	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (!p->quit && p->gen == seen)
			pthread_cond_wait(&p->go, &p->mu);
		if (p->quit)
			break;
		seen = p->gen;
		pthread_mutex_unlock(&p->mu);
		run_part(p, w->part);
		pthread_mutex_lock(&p->mu);
		if (--p->pending == 0)
			pthread_cond_signal(&p->done);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

int lora_pool_create(struct lora_pool **out, int nthreads, struct lora_err *err)
{
	struct lora_pool *p = calloc(1, sizeof(*p));

	*out = NULL;
	if (!p)
		return lora_errf(err, "out of memory");
	p->n = nthreads < 1 ? 1 : nthreads;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->go, NULL);
	pthread_cond_init(&p->done, NULL);
	if (p->n > 1 && !(p->w = calloc((size_t)p->n - 1, sizeof(*p->w)))) {
		free(p);
		return lora_errf(err, "out of memory");
	}
	for (int i = 0; i < p->n - 1; i++) {
		p->w[i].pool = p;
		p->w[i].part = i + 1;
		if (pthread_create(&p->w[i].tid, NULL, worker_main, &p->w[i]) != 0) {
			p->n = i + 1;   /* the workers made so far */
			lora_pool_destroy(p);
			return lora_errf(err, "cannot start worker threads");
		}
	}
	*out = p;
	return 0;
}

void lora_pool_destroy(struct lora_pool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->quit = 1;
	pthread_cond_broadcast(&p->go);
	pthread_mutex_unlock(&p->mu);
	for (int i = 0; i < p->n - 1; i++)
		pthread_join(p->w[i].tid, NULL);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->go);
	pthread_cond_destroy(&p->done);
	free(p->w);
	free(p);
}

int lora_pool_threads(const struct lora_pool *p)
{
	return p ? p->n : 1;
}

void lora_pool_for(struct lora_pool *p, size_t n, size_t grain, lora_pool_fn fn, void *arg)
{
	if (!n)
		return;
	if (!p || p->n == 1 || n < 2 * (grain ? grain : 1)) {
		fn(arg, 0, n, 0);
		return;
	}
	pthread_mutex_lock(&p->mu);
	p->items = n;
	p->fn = fn;
	p->arg = arg;
	p->pending = p->n - 1;
	p->gen++;
	pthread_cond_broadcast(&p->go);
	pthread_mutex_unlock(&p->mu);
	run_part(p, 0);
	pthread_mutex_lock(&p->mu);
	while (p->pending)
		pthread_cond_wait(&p->done, &p->mu);
	pthread_mutex_unlock(&p->mu);
}
