/*
 * merge.h - merging LoRA adapters into a base model folder.
 *
 * For every base tensor that some adapter of the set targets,
 *
 *     W' = W + Σᵢ weightᵢ · scaleᵢ · Bᵢ·Aᵢ
 *
 * is computed in fp32 (OpenBLAS sgemm, or cuBLAS with LORA_DEVICE_CUDA; W is
 * exact in fp32 when it is bf16/fp16/fp32) and rounded once, to nearest even,
 * to the output dtype.  For an fp32 output, ΔW and the sum are computed in
 * fp64 (dgemm) instead: fp32 accumulation would leave errors of about r·2⁻²⁴
 * of the terms, which exceed 1e-6 of W' where W and ΔW nearly cancel; for
 * bf16/fp16 outputs fp32 is ample (the result is rounded to 8 or 11 bits).  Every other tensor is copied byte for byte
 * (copy_file_range), or converted when an explicit output dtype differs.
 * Work goes in row blocks of about 4 MB, so memory stays bounded by one block
 * plus one adapter's factors, whatever the model size.
 *
 * The output folder keeps the base's shard files, tensor names, order, shapes
 * and data offsets; it is built in a hidden folder beside OUTDIR and renamed
 * into place at the end, so a failure or a kill leaves no OUTDIR behind.
 *
 * What a merged folder records (so that `lora swap` can change it in place):
 *
 *   lora-merge.json      {"format": "lora-merge/1",
 *                         "base": {"path": "/abs/base", "fingerprint": "sha256:..."},
 *                         "dtype": "auto" | "bf16" | "fp16" | "fp32",
 *                         "adapters": [{"ref": ..., "digest": "sha256:...", "weight": 0.7}, ...],
 *                         "tensors": {"<module>.weight": "<DTYPE> <d0>x<d1> <sha256 hex>", ...},
 *                         "drift": N, "drifted": {...}   (only after swaps without the base)}
 *                        "tensors" holds, for each targeted tensor, its line of
 *                        the base fingerprint (see lora_model_fingerprint), so
 *                        the fingerprint of any subset can be recomputed, and a
 *                        base offered later can be checked tensor by tensor.
 *   each shard's __metadata__
 *                        the base's own keys ("format": "pt", ...) plus
 *                        "lora.merge": the record above without "tensors", as
 *                        compact JSON.  The header is padded with trailing
 *                        spaces to (its size without "lora.merge") + 16 KiB,
 *                        rounded up to 8, so that a swap can rewrite the record
 *                        without moving a single tensor.
 *
 * Nothing here prints; errors come back in struct lora_err.
 */
#ifndef LORA_MERGE_H
#define LORA_MERGE_H

#include <stddef.h>
#include <stdint.h>

#include "libadapter/base/buf.h"
#include "libadapter/base/dtype.h"
#include "libadapter/base/err.h"
#include "libadapter/format/modeldir.h"
#include "libadapter/format/peft.h"
#include "libadapter/format/safetensors.h"

#define LORA_MERGE_JSON "lora-merge.json"
#define LORA_MERGE_META_KEY "lora.merge"
#define LORA_MERGE_RESERVE 16384u   /* header bytes kept free for the record */

enum lora_device { LORA_DEVICE_CPU = 0, LORA_DEVICE_CUDA = 1 };

typedef void (*lora_progress_fn)(void *ctx, uint64_t done, uint64_t total);

/* ------------------------------------------------------------ adapter sets */

/* One adapter of a set, opened, with what the merge records about it. */
struct lora_merge_adapter {
	char *ref;                /* store ref as given, or the absolute path of a folder/file */
	char *digest;             /* "sha256:<hex>" identifying the adapter's content */
	char *base_fingerprint;   /* fingerprint the adapter records for its base, or NULL */
	double weight;
	struct lora_peft *peft;
	void *src;                /* the struct lora_adapter_src that owns peft */
};

struct lora_merge_set {
	size_t n;
	struct lora_merge_adapter *a;
	const char *tmp_dir;      /* where .lora files are unpacked while open; NULL: /tmp */
};

/*
 * Split a command-line argument "REF[@WEIGHT]" into a malloc'd spec and a
 * weight (1 when absent).  The text after the last '@' is a weight only when
 * it is a finite number, so paths holding '@' still work.
 */
int lora_merge_parse_arg(const char *arg, char **spec, double *weight, struct lora_err *err);

/*
 * Open one adapter (a PEFT folder, a .lora file or a store REF) and append it
 * to the set.  store_dir may be NULL when only paths are used.
 *     lora_merge_set_add(&set, ctx->store, "adapters/a", 0.7, &err);
 */
int lora_merge_set_add(struct lora_merge_set *set, const char *store_dir, const char *spec,
		       double weight, struct lora_err *err);
void lora_merge_set_free(struct lora_merge_set *set);

/* ------------------------------------------------------------------ merge */

struct lora_merge_gpu;             /* below */

struct lora_merge_opts {
	const char *store_dir;    /* for store refs; may be NULL */
	const char *base_dir;
	const char *out_dir;      /* must not exist */
	enum lora_dtype dtype;    /* LORA_DT_INVALID = auto: every tensor keeps its dtype */
	enum lora_device device;
	const struct lora_merge_gpu *gpu;   /* the GEMMs for LORA_DEVICE_CUDA (cmd/ passes the plugin's);
					       NULL: --device cuda says the build has no CUDA */
	int force;                /* merge even when an adapter's base fingerprint differs */
	int threads;              /* worker threads; 0 = one per CPU (at most 8) */
	lora_progress_fn progress;
	void *progress_ctx;
	const char *cache_dir;    /* fingerprint line cache (lora_linecache_open); NULL: none */
};

struct lora_merge_stats {
	size_t n_shards;
	size_t n_merged;          /* tensors recomputed */
	size_t n_copied;          /* tensors copied byte for byte */
	size_t n_converted;       /* tensors converted to the output dtype */
	uint64_t bytes_out;       /* tensor data written */
	size_t n_forced;          /* adapters whose fingerprint differed (merged under --force) */
	char fingerprint[72];     /* base fingerprint over the targeted tensors */
};

/*
 * Merge `set` into the base at o->base_dir, writing o->out_dir.  Refused
 * before anything is written when a targeted module is missing from the base,
 * a shape or dtype does not fit, an adapter records another base (unless
 * o->force), or OUTDIR exists.  Any failure removes everything written.
 * A base with an unfinished swap is refused (lora_model_open); a caller that
 * means to finish it calls lora_merged_recover() first, as `lora merge` does.
 */
int lora_merge(const struct lora_merge_opts *o, const struct lora_merge_set *set,
	       struct lora_merge_stats *stats, struct lora_err *err);

/* "bf16" / "fp16" / "fp32" (also "bfloat16", "float16", "float32"); "auto" gives INVALID. */
int lora_merge_dtype_parse(const char *s, enum lora_dtype *out);
const char *lora_merge_dtype_label(enum lora_dtype dt);   /* "auto" for INVALID */

/* ===================================================================
 * The pieces below are shared by merge.c and swap.c.
 * =================================================================== */

/* One term of W' = W + Σ coef · B·A. */
struct lora_merge_term {
	const struct lora_peft_module *mod;
	double coef;              /* weight · scale; negative to take an adapter out */
	int fifo;                 /* base stores W as [in, out] */
};

/* One base tensor that the plan recomputes. */
struct lora_merge_target {
	char *module;             /* "model.layers.0.self_attn.q_proj" */
	char *name;               /* "<module>.weight" */
	uint64_t rows, cols;      /* as stored */
	size_t n_terms;
	struct lora_merge_term *terms;
	char line[128];           /* "<DTYPE> <d0>x<d1> <sha256 hex>" of the base tensor, or "" */
};

struct lora_merge_plan {
	size_t n;
	struct lora_merge_target *t;   /* sorted by module name */
};

/*
 * Add every module of every adapter in `set` to the plan, with coefficient
 * sign · weight · scale, checking it against the tensors of `m` (a base, or a
 * merged folder with the same shapes): the tensor exists, is 2-D, F16/BF16/F32,
 * and has the shape B·A (or its transpose with fan_in_fan_out).  `label` names
 * the model in errors.
 */
int lora_merge_plan_add(struct lora_merge_plan *p, const struct lora_model *m, const char *label,
			const struct lora_merge_set *set, double sign, struct lora_err *err);
struct lora_merge_target *lora_merge_plan_find(const struct lora_merge_plan *p, const char *name);
void lora_merge_plan_free(struct lora_merge_plan *p);

/* The fingerprint line of a tensor ("BF16 64x64 <hex>") from its bytes. */
int lora_merge_tensor_line(const struct lora_st_tensor *t, char line[128], struct lora_err *err);
/* lines[i] = the line of ts[i], for n tensors, hashed by worker threads (one per CPU, at most 8). */
int lora_merge_tensor_lines(const struct lora_st_tensor *const *ts, char *const *lines, size_t n,
			    struct lora_err *err);
/*
 * lora_model_fingerprint's value from per-module lines: sha256 over
 * "<module>.weight <line>\n" in module-name order.  modules/lines: n each.
 */
void lora_merge_fingerprint_lines(const char *const *modules, const char *const *lines, size_t n,
				  char out[72]);

/*
 * A cache of fingerprint lines per shard file, keyed by the file's identity
 * (path, device, inode, size, mtime, ctime): see merge.c, one file per shard
 * in dir (the program's choice: $XDG_CACHE_HOME/lora/tensor-lines; NULL: a
 * cache that always misses).  Every call is best effort; NULL caches are
 * allowed and miss.
 */
struct lora_linecache;
struct lora_linecache *lora_linecache_open(const struct lora_model *m, const char *dir);
const char *lora_linecache_get(struct lora_linecache *c, const struct lora_model_tensor *mt);
void lora_linecache_put(struct lora_linecache *c, const struct lora_model_tensor *mt, const char *line);
/* save: write the new lines to the cache files. */
void lora_linecache_close(struct lora_linecache *c, int save);

/*
 * The ΔW GEMMs on a GPU (`--device cuda`).  kernels/merge.cu implements them in
 * the CUDA plugin and cmd/ passes a hook that loads it on first use
 * (lora_merge_opts.gpu, a struct lora_cuda_merge_hook of train/cuda.h), so that
 * libadapter never links against CUDA.  init gets the hook itself (self), so
 * a hook can carry its own settings (the plugin's path) after these pointers.
 * The arguments are those of lora_cuda_merge_delta in kernels/merge.h.
 */
struct lora_merge_gpu {
	int (*init)(const struct lora_merge_gpu *self, void **ctx, char *msg, size_t msglen);
	void (*reset)(void *ctx);
	int (*delta)(void *ctx, int f64, int trans, int M, int N, int K, double coef, const void *m1,
		     size_t m1_elems, size_t off1, int ld1, const void *m2, size_t m2_elems, int ld2,
		     int accumulate, void *host_out, char *msg, size_t msglen);
	void (*free)(void *ctx);
};

/* The compute engine: block buffers and, with CUDA, the device context. */
struct lora_merge_engine {
	enum lora_device device;
	const struct lora_merge_gpu *gpu;   /* with CUDA */
	void *cuda;               /* struct lora_cuda_merge *, when device is CUDA */
	float *w, *d;             /* one row block: W in fp32; d (room for fp64) when needed */
	unsigned char *o;         /* one row block in the output dtype */
	unsigned char *in;        /* one row block read from the source (batches) */
	size_t in_cap;            /* bytes in `in` */
	size_t cap;               /* elements each buffer holds */
};

int lora_merge_engine_init(struct lora_merge_engine *e, enum lora_device device,
			   const struct lora_merge_gpu *gpu, struct lora_err *err);
void lora_merge_engine_free(struct lora_merge_engine *e);

/* The output dtype of a tensor of dtype dt under the chosen dtype (INVALID = auto). */
enum lora_dtype lora_merge_out_dtype(enum lora_dtype dt, enum lora_dtype chosen);

/* What a merged folder records. */
struct lora_merge_rec_adapter {
	char *ref, *digest;
	double weight;
};

struct lora_merge_record {
	char *base_path;
	char fingerprint[72];
	enum lora_dtype dtype;    /* INVALID = auto */
	int drift;                /* swaps applied without the base since the last exact one */
	size_t n_adapters;
	struct lora_merge_rec_adapter *adapters;
	size_t n_tensors;
	char **modules;           /* sorted */
	char **lines;
	/* After a swap without the base: tensors no adapter targets any more that
	 * may still differ from the base (drift), with their base lines. */
	size_t n_drifted;
	char **drifted_modules;   /* sorted */
	char **drifted_lines;
};

/* Fill a record's adapters from a set. */
int lora_merge_record_set_adapters(struct lora_merge_record *r, const struct lora_merge_set *set,
				   struct lora_err *err);
/* Fill modules/lines from a plan (every target needs its line) and compute the fingerprint. */
int lora_merge_record_set_tensors(struct lora_merge_record *r, const struct lora_merge_plan *p,
				  struct lora_err *err);
/* lora-merge.json (pretty; with tensors) or the shard "lora.merge" value (compact; without). */
int lora_merge_record_json(const struct lora_merge_record *r, int compact, struct lora_buf *out,
			   struct lora_err *err);
/* Read and check DIR/lora-merge.json. */
int lora_merge_record_read(const char *dir, struct lora_merge_record *r, struct lora_err *err);
void lora_merge_record_free(struct lora_merge_record *r);

/*
 * A shard header: the tensors of `shard` in data order with dtypes out_dt[i]
 * (NULL: unchanged), the shard's metadata without "lora.merge", then
 * "lora.merge" = rec.  Padded with spaces to `target` bytes (the 8-byte
 * length included); target 0 picks the size a fresh merge uses.  Fails when
 * the record does not fit.
 */
int lora_merge_shard_header(const struct lora_st *shard, const enum lora_dtype *out_dt,
			    const char *rec, uint64_t target, unsigned char **out, size_t *out_len,
			    struct lora_err *err);

/*
 * Drop the whole pages inside [p, p+n) of a read-only file mapping from this
 * process (madvise DONTNEED): keeps the resident size small while streaming a
 * model; the page cache keeps the data.  Never use it on anonymous memory.
 */
void lora_merge_drop_pages(const void *p, size_t n);

/* bf16 <-> fp32 for whole blocks, rounding as lora_from_f32 does (vectorized loops). */
void lora_merge_bf16_to_f32(float *dst, const unsigned char *src, size_t n);
void lora_merge_f32_to_bf16(unsigned char *dst, const float *src, size_t n);

/*
 * A batch of tensor writes, run by worker threads.  Each tensor is read from
 * in_fd (pread at src->file_offset; in_what names the file in errors) and
 * written at out_off of out_fd (`what` names it): merged with tg when tg is
 * not NULL (W + Σ coef·B·A, rounded once; a target whose line is "" gets its
 * fingerprint line computed on the way), else converted to out_dt, or copied
 * byte for byte (copy_file_range) when out_dt is src's dtype.  Writeback is
 * started as blocks are written; the caller fsyncs.  The bytes written do not
 * depend on the thread count.
 */
struct lora_merge_batch;

struct lora_merge_batch *lora_merge_batch_new(void);
int lora_merge_batch_add(struct lora_merge_batch *b, const struct lora_st_tensor *src, int in_fd,
			 const char *in_what, struct lora_merge_target *tg, enum lora_dtype out_dt,
			 int out_fd, uint64_t out_off, const char *what, struct lora_err *err);
/*
 * Run what was added: threads 0 = one per CPU (at most 8).  With eng on a
 * CUDA device, one thread runs everything on eng (it holds the context).
 */
int lora_merge_batch_run(struct lora_merge_batch *b, int threads, struct lora_merge_engine *eng,
			 lora_progress_fn progress, void *progress_ctx, struct lora_err *err);
void lora_merge_batch_free(struct lora_merge_batch *b);

/* Shortest "%.Ng" that reads back as the same double. */
void lora_merge_fmt_double(double v, char out[32]);

#endif
