/*
 * engine.c - the compute engine (row blocks, sgemm or the GPU hook, one rounding) and the parallel batches that merge and swap run.
 * Part of the merge room; the public API is in merge.h, shared internals in merge_int.h.
 */
#define _GNU_SOURCE
#include "libadapter/merge/merge.h"
#include "libadapter/merge/merge_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <pthread.h>

#include <cblas.h>
#include <cjson/cJSON.h>
#include <openssl/evp.h>

#include "libadapter/base/blas.h"
#include "libadapter/base/par.h"
#include "libadapter/base/fsutil.h"
#include "libadapter/store/store.h"

/* ------------------------------------------------------------------ engine */

int lora_merge_engine_init(struct lora_merge_engine *e, enum lora_device device,
			   const struct lora_merge_gpu *gpu, struct lora_err *err)
{
	memset(e, 0, sizeof(*e));
	e->device = device;
	e->gpu = gpu;
	e->cap = BLOCK_ELEMS;
	/* d (room for doubles) only comes when needed: fp32 outputs and CUDA. */
	e->w = malloc(e->cap * sizeof(float));
	e->o = malloc(e->cap * sizeof(float));
	if (!e->w || !e->o) {
		lora_merge_engine_free(e);
		return lora_errf(err, "out of memory");
	}
	if (device == LORA_DEVICE_CUDA) {
		char msg[512];
		if (!gpu) {
			lora_merge_engine_free(e);
			return lora_errc(err, LORA_EUSAGE,
					 "--device cuda: this lora was built without CUDA (use --device cpu)");
		}
		if (gpu->init(gpu, &e->cuda, msg, sizeof(msg)) < 0) {
			lora_merge_engine_free(e);
			return lora_errf(err, "--device cuda: %s", msg);
		}
	}
	return 0;
}

void lora_merge_engine_free(struct lora_merge_engine *e)
{
	if (e->cuda && e->gpu)
		e->gpu->free(e->cuda);
	free(e->w);
	free(e->d);
	free(e->o);
	free(e->in);
	memset(e, 0, sizeof(*e));
}

static int engine_grow(struct lora_merge_engine *e, size_t n, struct lora_err *err)
{
	float *w;
	unsigned char *o;

	if (n <= e->cap)
		return 0;
	if (n > SIZE_MAX / 8)
		return lora_errf(err, "tensor rows too long");
	w = realloc(e->w, n * sizeof(float));
	if (w)
		e->w = w;
	o = realloc(e->o, n * sizeof(float));
	if (o)
		e->o = o;
	if (!w || !o)
		return lora_errf(err, "out of memory");
	free(e->d);   /* reallocated at the new size when needed */
	e->d = NULL;
	e->cap = n;
	return 0;
}

/* The ΔW / fp64 buffer, cap doubles. */
static int need_d(struct lora_merge_engine *e, struct lora_err *err)
{
	if (!e->d && !(e->d = malloc(e->cap * sizeof(double))))
		return lora_errf(err, "out of memory");
	return 0;
}


/*
 * c[0 .. nrows*cols) (+)= Σ coef · (B·A)[r0 .. r0+nrows): in fp32 (sgemm), or
 * in fp64 (dgemm) when f64 is set (A, B and c then hold doubles).  With
 * keep, the first term adds to what c holds (W, on the CPU path); otherwise
 * it overwrites it.
 */
static int delta_rows(struct lora_merge_engine *e, const struct lora_merge_target *t, void **A,
		      void **B, int f64, uint64_t r0, uint64_t nrows, void *c, int keep,
		      struct lora_err *err)
{
	for (size_t k = 0; k < t->n_terms; k++) {
		const struct lora_merge_term *tm = &t->terms[k];
		int r = (int)tm->mod->A->shape[0];
		int M = (int)nrows, N = (int)t->cols;
		int ta = tm->fifo ? CblasTrans : CblasNoTrans, acc = keep || k;
		/* W is [out, in]: rows r0.. of B [out, r] times A [r, in].
		 * W is [in, out] (fan_in_fan_out): rows r0.. of Aᵀ [in, r] times Bᵀ [r, out]. */
		uint64_t off1 = tm->fifo ? r0 : r0 * (uint64_t)r;
		int ld1 = tm->fifo ? (int)t->rows : r, ld2 = tm->fifo ? r : N;
		void *m1 = tm->fifo ? A[k] : B[k], *m2 = tm->fifo ? B[k] : A[k];

		if (e->device == LORA_DEVICE_CUDA && e->gpu) {
			char msg[512];
			size_t n1 = tm->fifo ? tm->mod->A->nelem : tm->mod->B->nelem;
			size_t n2 = tm->fifo ? tm->mod->B->nelem : tm->mod->A->nelem;
			if (e->gpu->delta(e->cuda, f64, ta == CblasTrans, M, N, r, tm->coef, m1, n1,
						  off1, ld1, m2, n2, ld2, acc, c, msg, sizeof(msg)) < 0)
				return lora_errf(err, "cuda merge of '%s': %s", t->name, msg);
			continue;
		}
		(void)err;
		if (f64)
			cblas_dgemm(CblasRowMajor, ta, ta, M, N, r, tm->coef, (const double *)m1 + off1,
				    ld1, m2, ld2, acc ? 1.0 : 0.0, c, N);
		else
			cblas_sgemm(CblasRowMajor, ta, ta, M, N, r, (float)tm->coef,
				    (const float *)m1 + off1, ld1, m2, ld2, acc ? 1.0f : 0.0f, c, N);
	}
	return 0;
}

static void free_factors(void **A, void **B, size_t n)
{
	for (size_t k = 0; k < n; k++) {
		free(A ? A[k] : NULL);
		free(B ? B[k] : NULL);
	}
	free(A);
	free(B);
}

/* An adapter factor as fp32, or widened to fp64 (exactly) when f64. */
static void *load_factor(const struct lora_st_tensor *t, int f64, struct lora_err *err)
{
	return f64 ? (void *)lora_peft_load_f64(t, err) : (void *)lora_peft_load_f32(t, err);
}

static int load_factors(const struct lora_merge_target *t, int f64, void ***Ap, void ***Bp,
			struct lora_err *err)
{
	void **A = calloc(t->n_terms ? t->n_terms : 1, sizeof(void *));
	void **B = calloc(t->n_terms ? t->n_terms : 1, sizeof(void *));

	*Ap = *Bp = NULL;
	if (!A || !B) {
		free(A);
		free(B);
		return lora_errf(err, "out of memory");
	}
	for (size_t k = 0; k < t->n_terms; k++) {
		A[k] = load_factor(t->terms[k].mod->A, f64, err);
		B[k] = A[k] ? load_factor(t->terms[k].mod->B, f64, err) : NULL;
		if (!A[k] || !B[k]) {
			free_factors(A, B, t->n_terms);
			return -1;
		}
	}
	*Ap = A;
	*Bp = B;
	return 0;
}

/*
 * Hot loops, kept simple enough for the compiler to vectorize.  They round
 * exactly as dtype.c does (nearest even, NaN kept quiet); test_merge_unit
 * checks them against lora_to_f32/lora_from_f32.  They move 16-bit words as
 * the host stores them, which is safetensors' order on little-endian hosts.
 */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the merge loops assume a little-endian host");
__attribute__((optimize("O3"), target_clones("avx512f", "avx2", "default"))) void lora_merge_bf16_to_f32(float *dst, const unsigned char *src, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint16_t h;
		uint32_t u;
		memcpy(&h, src + 2 * i, 2);
		u = (uint32_t)h << 16;
		memcpy(&dst[i], &u, 4);
	}
}

__attribute__((optimize("O3"), target_clones("avx512f", "avx2", "default"))) void lora_merge_f32_to_bf16(unsigned char *dst, const float *src, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint32_t u, r;
		uint16_t h;
		memcpy(&u, &src[i], 4);
		r = (u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u
						    : (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
		h = (uint16_t)r;
		memcpy(dst + 2 * i, &h, 2);
	}
}

static void to_f32(float *dst, const unsigned char *src, enum lora_dtype dt, size_t n)
{
	if (dt == LORA_DT_BF16)
		lora_merge_bf16_to_f32(dst, src, n);
	else
		lora_to_f32(dst, src, dt, n);
}

static void from_f32(unsigned char *dst, const float *src, enum lora_dtype dt, size_t n)
{
	if (dt == LORA_DT_BF16)
		lora_merge_f32_to_bf16(dst, src, n);
	else
		lora_from_f32(dst, src, dt, n);
}

/* One row block of W' = W + ΔW, rounded once into e->o. */
static int merge_block(struct lora_merge_engine *e, const struct lora_merge_target *t, void **A,
		       void **B, int f64, const unsigned char *in, enum lora_dtype dt, uint64_t r0,
		       uint64_t nr, size_t n, enum lora_dtype out_dt, struct lora_err *err)
{
	float *w = e->w;

	if ((f64 || e->device != LORA_DEVICE_CPU) && need_d(e, err) < 0)
		return -1;
	if (f64) {
		double *c = (double *)e->d;
		float *o = (float *)e->o;
		/* W is exact in fp32 and fp64; the sum is rounded once, from fp64 to fp32. */
		to_f32(w, in, dt, n);
		if (e->device == LORA_DEVICE_CPU) {
			for (size_t i = 0; i < n; i++)
				c[i] = w[i];
			if (delta_rows(e, t, A, B, 1, r0, nr, c, 1, err) < 0)
				return -1;
			for (size_t i = 0; i < n; i++)
				o[i] = (float)c[i];
			return 0;
		}
		if (delta_rows(e, t, A, B, 1, r0, nr, c, 0, err) < 0)
			return -1;
		for (size_t i = 0; i < n; i++)
			o[i] = (float)((double)w[i] + c[i]);
		return 0;
	}
	to_f32(w, in, dt, n);
	if (e->device == LORA_DEVICE_CPU) {
		/* sgemm adds the terms to W in place: C = W + coef·B·A (beta = 1). */
		if (delta_rows(e, t, A, B, 0, r0, nr, w, 1, err) < 0)
			return -1;
	} else {
		if (delta_rows(e, t, A, B, 0, r0, nr, e->d, 0, err) < 0)
			return -1;
		for (size_t i = 0; i < n; i++)
			w[i] += e->d[i];
	}
	from_f32(e->o, w, out_dt, n);
	return 0;
}

/* ------------------------------------------------------ parallel batches */

/*
 * A batch is cut into independent tasks that worker threads take in order:
 * each targeted tensor (its row blocks in order: pread, convert, GEMM,
 * round, pwrite at the block's place in the output, with the SHA-256 of its
 * base bytes for the fingerprint taken from the same block while it is in
 * cache), row blocks of tensors that only change dtype, and copies of
 * untouched tensors (copy_file_range at explicit offsets, in 64 MB pieces).
 * Inputs are read with pread into per-thread blocks rather than through the
 * mapping: no page faults, and no TLB shootdowns from dropping pages behind
 * us.  Every block is computed the same way whichever thread runs it, so the
 * output does not depend on the thread count.
 */
enum task_kind { T_TENSOR, T_CONVERT, T_COPY };

struct task {
	enum task_kind kind;
	const struct lora_st_tensor *src;
	struct lora_merge_target *tg;    /* T_TENSOR */
	enum lora_dtype out_dt;
	int in_fd, out_fd;
	const char *in_what, *what;      /* input and output paths, for messages */
	uint64_t r0, nr, row_len;        /* T_CONVERT: rows [r0, r0+nr) of row_len elements */
	uint64_t in_off, len, out_off;   /* T_COPY: bytes; others: out_off of the first row */
};

struct lora_merge_batch {
	struct task *t;
	size_t n, cap, next;
	uint64_t total, done;            /* source bytes, for progress */
	lora_progress_fn progress;
	void *progress_ctx;
	pthread_mutex_t mu;
	int failed;
	struct lora_err err;
};

static int copy_at(int out, uint64_t out_off, int in, uint64_t in_off, uint64_t len, const char *what,
		   struct lora_err *err)
{
	loff_t io = (loff_t)in_off, oo = (loff_t)out_off;
	char *buf = NULL;

	while (len) {
		ssize_t n = copy_file_range(in, &io, out, &oo, len, 0);
		if (n > 0) {
			len -= (uint64_t)n;
			continue;
		}
		if (n == 0)
			return lora_errf(err, "cannot copy into '%s': source ended early", what);
		if (errno == EINTR)
			continue;
		if (errno == ENOSPC || errno == EDQUOT)
			return lora_errf(err, "cannot write '%s': no space left on device", what);
		if (errno != EXDEV && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP)
			return lora_errf(err, "cannot write '%s': %s", what, strerror(errno));
		break;
	}
	if (len && !(buf = malloc(1 << 20)))
		return lora_errf(err, "out of memory");
	while (len) {
		size_t want = len < (1u << 20) ? (size_t)len : (1u << 20);
		ssize_t n = pread(in, buf, want, io);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0 || lora_pwrite_all(out, buf, (size_t)n, (uint64_t)oo, what, err) < 0) {
			if (n <= 0)
				lora_errf(err, "cannot copy into '%s': read failed", what);
			free(buf);
			return -1;
		}
		io += n;
		oo += n;
		len -= (uint64_t)n;
	}
	free(buf);
	return 0;
}

/*
 * Ask the kernel to start writing what a task wrote (it does not wait): the
 * disk works while we compute, and the final fsync finds little left to do.
 */
static void start_writeback(int fd, uint64_t off, uint64_t len)
{
	sync_file_range(fd, (off_t)off, (off_t)len, SYNC_FILE_RANGE_WRITE);
}

static void batch_progress(struct lora_merge_batch *b, uint64_t bytes)
{
	pthread_mutex_lock(&b->mu);
	b->done += bytes;
	if (b->progress)
		b->progress(b->progress_ctx, b->done, b->total);
	pthread_mutex_unlock(&b->mu);
}

/* The engine's input block, for n elements of ib bytes. */
static int need_in(struct lora_merge_engine *e, size_t n, unsigned ib, struct lora_err *err)
{
	if (n > SIZE_MAX / 4)
		return lora_errf(err, "tensor rows too long");
	if (n * ib > e->in_cap) {
		unsigned char *p = realloc(e->in, n * ib);
		if (!p)
			return lora_errf(err, "out of memory");
		e->in = p;
		e->in_cap = n * ib;
	}
	return 0;
}

/* A targeted tensor, block after block, with its fingerprint line on the way. */
static int tensor_task(struct lora_merge_batch *b, struct lora_merge_engine *e, struct task *t,
		       struct lora_err *err)
{
	const struct lora_st_tensor *src = t->src;
	struct lora_merge_target *tg = t->tg;
	unsigned ib = lora_dtype_bits(src->dtype) / 8, ob = lora_dtype_bits(t->out_dt) / 8;
	int f64 = t->out_dt == LORA_DT_F32, rc = -1;
	uint64_t per = BLOCK_ELEMS / tg->cols ? BLOCK_ELEMS / tg->cols : 1;
	EVP_MD_CTX *h = NULL;
	void **A = NULL, **B = NULL;

	if (engine_grow(e, (size_t)(per * tg->cols), err) < 0 ||
	    need_in(e, (size_t)(per * tg->cols), ib, err) < 0 || load_factors(tg, f64, &A, &B, err) < 0)
		return -1;
	if (!tg->line[0] && (!(h = EVP_MD_CTX_new()) || !EVP_DigestInit_ex(h, EVP_sha256(), NULL))) {
		lora_errf(err, "out of memory");
		goto out;
	}
	if (e->cuda && e->gpu)
		e->gpu->reset(e->cuda);   /* new host arrays: drop the device cache */
	for (uint64_t r0 = 0; r0 < tg->rows; r0 += per) {
		uint64_t nr = tg->rows - r0 < per ? tg->rows - r0 : per;
		size_t n = (size_t)(nr * tg->cols);
		uint64_t off = t->out_off + r0 * tg->cols * ob;

		if (lora_pread_all(t->in_fd, e->in, n * ib, src->file_offset + r0 * tg->cols * ib,
				   t->in_what, err) < 0)
			goto out;
		if (h)
			EVP_DigestUpdate(h, e->in, n * ib);
		if (merge_block(e, tg, A, B, f64, e->in, src->dtype, r0, nr, n, t->out_dt, err) < 0 ||
		    lora_pwrite_all(t->out_fd, e->o, n * ob, off, t->what, err) < 0)
			goto out;
		if (__atomic_load_n(&b->failed, __ATOMIC_RELAXED))
			goto out;   /* another task failed: stop early */
		batch_progress(b, n * ib);
	}
	start_writeback(t->out_fd, t->out_off, tg->rows * tg->cols * ob);
	if (h) {
		unsigned char md[32];
		unsigned int mdlen = 0;
		EVP_DigestFinal_ex(h, md, &mdlen);
		lora_merge_line_from_digest(src, md, tg->line);
	}
	rc = 0;
out:
	EVP_MD_CTX_free(h);
	free_factors(A, B, tg->n_terms);
	return rc;
}

static int run_task(struct lora_merge_batch *b, struct lora_merge_engine *e, struct task *t,
		    struct lora_err *err)
{
	const struct lora_st_tensor *src = t->src;
	unsigned ib = lora_dtype_bits(src->dtype) / 8, ob = lora_dtype_bits(t->out_dt) / 8;
	size_t n;

	if (t->kind == T_TENSOR)
		return tensor_task(b, e, t, err);
	if (t->kind == T_COPY) {
		if (copy_at(t->out_fd, t->out_off, t->in_fd, t->in_off, t->len, t->what, err) < 0)
			return -1;
		start_writeback(t->out_fd, t->out_off, t->len);
		batch_progress(b, t->len);
		return 0;
	}
	n = (size_t)(t->nr * t->row_len);
	if (engine_grow(e, n, err) < 0 || need_in(e, n, ib, err) < 0 ||
	    lora_pread_all(t->in_fd, e->in, n * ib, src->file_offset + t->r0 * t->row_len * ib,
			   t->in_what, err) < 0)
		return -1;
	to_f32(e->w, e->in, src->dtype, n);
	from_f32(e->o, e->w, t->out_dt, n);
	if (lora_pwrite_all(t->out_fd, e->o, n * ob, t->out_off, t->what, err) < 0)
		return -1;
	start_writeback(t->out_fd, t->out_off, n * ob);
	batch_progress(b, n * ib);
	return 0;
}

static void batch_fail(struct lora_merge_batch *b, const struct lora_err *err)
{
	pthread_mutex_lock(&b->mu);
	if (!b->failed)
		b->err = *err;
	__atomic_store_n(&b->failed, 1, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&b->mu);
}

static void *worker(void *arg)
{
	struct lora_merge_batch *b = arg;
	struct lora_merge_engine e;
	struct lora_err err = { 0 };

	if (lora_merge_engine_init(&e, LORA_DEVICE_CPU, NULL, &err) < 0) {
		batch_fail(b, &err);
		return NULL;
	}
	for (;;) {
		struct task *t;
		pthread_mutex_lock(&b->mu);
		if (b->failed || b->next == b->n) {
			pthread_mutex_unlock(&b->mu);
			break;
		}
		t = &b->t[b->next++];
		pthread_mutex_unlock(&b->mu);
		if (run_task(b, &e, t, &err) < 0) {
			batch_fail(b, &err);
			break;
		}
	}
	lora_merge_engine_free(&e);
	return NULL;
}

static int push(struct lora_merge_batch *b, const struct task *t, struct lora_err *err)
{
	if (b->n == b->cap) {
		size_t nc = b->cap ? b->cap * 2 : 256;
		struct task *nt = realloc(b->t, nc * sizeof(*nt));
		if (!nt)
			return lora_errf(err, "out of memory");
		b->t = nt;
		b->cap = nc;
	}
	b->t[b->n++] = *t;
	return 0;
}

struct lora_merge_batch *lora_merge_batch_new(void)
{
	struct lora_merge_batch *b = calloc(1, sizeof(*b));

	if (b)
		pthread_mutex_init(&b->mu, NULL);
	return b;
}

void lora_merge_batch_free(struct lora_merge_batch *b)
{
	if (!b)
		return;
	free(b->t);
	pthread_mutex_destroy(&b->mu);
	free(b);
}

int lora_merge_batch_add(struct lora_merge_batch *b, const struct lora_st_tensor *src, int in_fd,
			 const char *in_what, struct lora_merge_target *tg, enum lora_dtype out_dt,
			 int out_fd, uint64_t out_off, const char *what, struct lora_err *err)
{
	struct task k = { .src = src, .tg = tg, .out_dt = out_dt, .in_fd = in_fd, .out_fd = out_fd,
			  .in_what = in_what, .what = what };
	uint64_t ob = lora_dtype_bits(out_dt), out_bytes = src->nelem * ob / 8;

	if (tg) {
		if (src->ndim != 2 || src->shape[0] != tg->rows || src->shape[1] != tg->cols ||
		    !lora_merge_is_float(src->dtype) || !lora_merge_is_float(out_dt))
			return lora_errf(err, "cannot merge into tensor '%s'", src->name);
		k.kind = T_TENSOR;
		k.out_off = out_off;
		b->total += src->end - src->begin;
		return push(b, &k, err);
	}
	if (out_dt == src->dtype) {
		/* Untouched: copied in pieces of 64 MB. */
		for (uint64_t o = 0; o < out_bytes; o += 64u << 20) {
			k.kind = T_COPY;
			k.in_off = src->file_offset + o;
			k.out_off = out_off + o;
			k.len = out_bytes - o < (64u << 20) ? out_bytes - o : (64u << 20);
			if (push(b, &k, err) < 0)
				return -1;
		}
		b->total += out_bytes;
		return 0;
	}
	if (!lora_merge_is_float(src->dtype) || !lora_merge_is_float(out_dt))
		return lora_errf(err, "cannot convert tensor '%s' from %s to %s", src->name,
				 lora_dtype_name(src->dtype), lora_dtype_name(out_dt));
	k.row_len = src->ndim == 2 && src->shape[1] ? src->shape[1] : 1;
	{
		uint64_t rows = src->nelem / k.row_len;
		uint64_t per = k.row_len <= BLOCK_ELEMS ? BLOCK_ELEMS / k.row_len : 1;
		for (uint64_t r0 = 0; r0 < rows; r0 += per) {
			k.kind = T_CONVERT;
			k.r0 = r0;
			k.nr = rows - r0 < per ? rows - r0 : per;
			k.out_off = out_off + r0 * k.row_len * ob / 8;
			if (push(b, &k, err) < 0)
				return -1;
		}
	}
	b->total += src->end - src->begin;
	return 0;
}

int lora_merge_batch_run(struct lora_merge_batch *b, int threads, struct lora_merge_engine *eng,
			 lora_progress_fn progress, void *progress_ctx, struct lora_err *err)
{
	pthread_t th[8];
	int started = 0, blas_threads;

	b->progress = progress;
	b->progress_ctx = progress_ctx;
	if (eng && eng->device == LORA_DEVICE_CUDA) {
		/* One thread, with the caller's engine (it holds the CUDA context). */
		for (; b->next < b->n; b->next++)
			if (run_task(b, eng, &b->t[b->next], err) < 0)
				return -1;
		return 0;
	}
	/* The GEMMs have an inner size of r (≤ a few hundred): OpenBLAS's own
	 * threads would mostly spin; each of ours runs its GEMMs on one. */
	blas_threads = lora_blas_single();
	if (threads <= 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		threads = n < 1 ? 1 : n > 8 ? 8 : (int)n;
	}
	if (threads > 8)
		threads = 8;
	if ((size_t)threads > b->n - b->next)
		threads = b->n - b->next ? (int)(b->n - b->next) : 1;
	for (int i = 0; i < threads - 1; i++) {
		if (pthread_create(&th[i], NULL, worker, b) != 0)
			break;
		started++;
	}
	worker(b);   /* this thread works too */
	for (int i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	lora_blas_restore(blas_threads);
	if (b->failed) {
		*err = b->err;
		return -1;
	}
	return 0;
}
