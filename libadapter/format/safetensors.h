/*
 * safetensors.h - reading and writing safetensors files.
 *
 * The file, byte by byte:
 *   1. N: 8 bytes, little-endian unsigned header length (at most 100,000,000,
 *      and 8 + N no larger than the file);
 *   2. N bytes of UTF-8 JSON: one object mapping each tensor name to
 *        {"dtype": "BF16", "shape": [4096, 4096], "data_offsets": [BEGIN, END]}
 *      plus an optional "__metadata__" object of string values only.  Writers
 *      pad it with spaces so that the data starts on an 8-byte boundary;
 *   3. the data buffer: offsets are relative to its start, the tensors tile it
 *      from 0 with no hole and no overlap, END - BEGIN equals the element count
 *      times the dtype size, and the last END is the end of the file.
 * Values are little-endian and row-major.  A 0-d tensor has shape [] and one
 * element; a tensor with a 0 in its shape has no bytes.
 *
 * The reader validates all of the above before anything else touches the
 * data (a hostile header must never make us read outside the mapping), maps
 * the file with mmap so that headers cost nothing and data is paged in only
 * when used, and can also parse a buffer in memory (tests, fuzzers).
 *
 * The writer streams: give it every tensor's name, dtype and shape up front,
 * then the bytes in that order; it writes to a temporary file beside the
 * target and renames it into place only when every byte has arrived.
 */
#ifndef LORA_SAFETENSORS_H
#define LORA_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "libadapter/base/dtype.h"
#include "libadapter/base/err.h"
#include "libadapter/base/fsutil.h"

#define LORA_ST_MAX_HEADER 100000000ull
#define LORA_ST_MAX_DIMS 16

struct lora_st_tensor {
	char *name;
	enum lora_dtype dtype;
	int ndim;
	uint64_t shape[LORA_ST_MAX_DIMS];
	uint64_t nelem;
	uint64_t begin, end;          /* offsets in the data buffer */
	uint64_t file_offset;         /* absolute offset of the first byte in the file */
	const unsigned char *data;    /* begin of the bytes (inside the mapping) */
};

struct lora_st {
	char *path;                   /* file path, or the label given to open_mem */
	const unsigned char *base;    /* the whole file */
	size_t size;
	uint64_t header_len;          /* N */
	uint64_t data_start;          /* 8 + N */
	size_t n_tensors;
	struct lora_st_tensor *tensors;  /* in data order (by begin offset) */
	size_t *by_name;              /* indexes into tensors, sorted by name */
	size_t n_meta;
	char **meta_keys, **meta_vals;
	int mapped;                   /* base came from mmap */
};

/* Open and validate a file.  The error names the file and the problem. */
int lora_st_open(const char *path, struct lora_st **out, struct lora_err *err);
/* Parse a buffer the caller keeps alive until close.  `label` names it in errors. */
int lora_st_open_mem(const void *buf, size_t len, const char *label, struct lora_st **out,
		     struct lora_err *err);
void lora_st_close(struct lora_st *st);

const struct lora_st_tensor *lora_st_find(const struct lora_st *st, const char *name);
/* The __metadata__ value for key, or NULL. */
const char *lora_st_meta(const struct lora_st *st, const char *key);
/* Convert a float tensor to a malloc'd fp32 array (n elements).  NULL + err on failure. */
float *lora_st_to_f32(const struct lora_st_tensor *t, struct lora_err *err);

/* Strict UTF-8 check (no overlongs, surrogates or code points past U+10FFFF). */
int lora_utf8_valid(const unsigned char *s, size_t n);

/* ---- writer ---- */

struct lora_st_spec {
	const char *name;
	enum lora_dtype dtype;
	int ndim;
	uint64_t shape[LORA_ST_MAX_DIMS];
};

struct lora_st_writer {
	struct lora_tmpfile tmp;
	uint64_t header_len;          /* N as written */
	uint64_t expected;            /* total data bytes */
	uint64_t written;
	char *path;
};

/*
 * Build the header (metadata first, then tensors in the given order, data
 * offsets in that order) into a malloc'd buffer including the 8-byte length
 * and padding.  The data size is returned in *data_len.
 */
int lora_st_build_header(const struct lora_st_spec *specs, size_t n, const char *const *meta_keys,
			 const char *const *meta_vals, size_t n_meta, unsigned char **out,
			 size_t *out_len, uint64_t *data_len, struct lora_err *err);

int lora_st_writer_open(struct lora_st_writer *w, const char *path, const struct lora_st_spec *specs,
			size_t n, const char *const *meta_keys, const char *const *meta_vals,
			size_t n_meta, struct lora_err *err);
/* Append the next bytes of tensor data (any split). */
int lora_st_writer_write(struct lora_st_writer *w, const void *data, size_t len, struct lora_err *err);
/* Copy bytes straight from another file (copy_file_range where it works). */
int lora_st_writer_copy(struct lora_st_writer *w, int in_fd, uint64_t off, uint64_t len,
			struct lora_err *err);
/* Check the byte count, fsync, rename into place. */
int lora_st_writer_commit(struct lora_st_writer *w, struct lora_err *err);
void lora_st_writer_abort(struct lora_st_writer *w);

#endif
