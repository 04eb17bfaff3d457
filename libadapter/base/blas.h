/*
 * blas.h - running OpenBLAS single-threaded while our own threads work.
 *
 * Merge, swap and diff make many small GEMMs (an inner size of r) from
 * several threads of their own; OpenBLAS splitting each call would only add
 * spinning threads that compete with ours.  OpenBLAS's pthreads build keeps a
 * pool of worker threads that spin on sched_yield for a while after they are
 * started (even when every call then runs on one thread), so besides setting
 * the thread count to one we stop the pool; OpenBLAS starts it again on its
 * next threaded call.
 */
#ifndef LORA_BLAS_H
#define LORA_BLAS_H

/* Stop OpenBLAS's worker threads (they come back when needed). */
void lora_blas_quiet(void);
/* One BLAS thread from now on; returns the count to give lora_blas_restore(). */
int lora_blas_single(void);
void lora_blas_restore(int threads);

#endif
