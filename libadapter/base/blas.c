/* blas.c - see blas.h. */
#include "libadapter/base/blas.h"

#include <cblas.h>

/* Present in OpenBLAS's pthreads build; weak, so other BLAS builds still link. */
extern int blas_thread_shutdown_(void) __attribute__((weak));

void lora_blas_quiet(void)
{
	if (blas_thread_shutdown_)
		blas_thread_shutdown_();
}

int lora_blas_single(void)
{
	int n = openblas_get_num_threads();

	/* Setting the count (re)starts the pool; stop it again right after. */
	openblas_set_num_threads(1);
	lora_blas_quiet();
	return n;
}

void lora_blas_restore(int threads)
{
	if (threads > 1)
		openblas_set_num_threads(threads);
}
