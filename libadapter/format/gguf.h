/*
 * gguf.h - reading and writing GGUF files (the container of ggml / llama.cpp).
 *
 * The file, byte by byte (all integers little-endian; version 3, 2 is read too):
 *   1. magic: the 4 bytes "GGUF" (0x47 0x47 0x55 0x46);
 *   2. version: uint32 (3);
 *   3. n_tensors: uint64 (int64 in ggml's words; above 2^63 is refused);
 *   4. n_kv: uint64;
 *   5. n_kv key/value pairs, each
 *        key    a string: uint64 byte length, then the bytes (no NUL), UTF-8,
 *               unique in the file, e.g. "general.architecture";
 *        type   uint32, one of enum lora_gguf_type;
 *        value  UINT8/INT8/BOOL 1 byte (a BOOL is 0 or 1), (U)INT16 2, (U)INT32
 *               and FLOAT32 4, (U)INT64 and FLOAT64 8, STRING as a key is, and
 *               ARRAY as: element type uint32 (not ARRAY), count uint64, then
 *               the elements back to back;
 *   6. n_tensors tensor infos, each
 *        name    a string, unique (at most 63 bytes: GGML_MAX_NAME - 1);
 *        n_dims  uint32, 1 to 4;
 *        ne      n_dims uint64 (int64 ≥ 0): ne[0] is the innermost, fastest
 *                varying dimension, so a row-major [rows, cols] matrix has
 *                ne = {cols, rows};
 *        type    uint32, a ggml_type (F32 0, F16 1, Q8_0 8, BF16 30, ...);
 *        offset  uint64, of the tensor's bytes from the start of the data
 *                section, a multiple of the alignment;
 *   7. padding with zero bytes up to a multiple of the alignment: the value
 *      of "general.alignment" (UINT32, a power of two) or 32;
 *   8. the data section: each tensor's bytes (ne[0]/block · block bytes per
 *      row, rows = ne[1]·ne[2]·ne[3]), each padded to the alignment, in the
 *      order of the tensor infos (offset i+1 = offset i + padded size i).
 *
 * The reader checks every count, length, type, dimension product, offset and
 * the padding arithmetic against the bytes that are really there, with
 * overflow-checked products, before anything looks at tensor data: a hostile
 * file cannot make it read outside the buffer or allocate more than the file
 * could describe.  It maps a file with mmap, or parses a buffer (tests,
 * fuzzers).  Tensor offsets must be exactly the running padded sum, as
 * llama.cpp's own reader requires.
 *
 * The writer is given every KV and every tensor's name, dims and type up
 * front, then streams the tensor bytes in that order (padding is inserted for
 * it); the file appears by rename only when every byte has arrived.
 */
#ifndef LORA_GGUF_H
#define LORA_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "libadapter/base/err.h"
#include "libadapter/base/fsutil.h"

#define LORA_GGUF_MAGIC "GGUF"
#define LORA_GGUF_VERSION 3
#define LORA_GGUF_ALIGNMENT 32          /* when general.alignment is absent */
#define LORA_GGUF_MAX_DIMS 4
#define LORA_GGUF_MAX_NAME 64           /* tensor names are shorter than this (ggml's GGML_MAX_NAME) */

enum lora_gguf_type {
	LORA_GGUF_UINT8 = 0,
	LORA_GGUF_INT8 = 1,
	LORA_GGUF_UINT16 = 2,
	LORA_GGUF_INT16 = 3,
	LORA_GGUF_UINT32 = 4,
	LORA_GGUF_INT32 = 5,
	LORA_GGUF_FLOAT32 = 6,
	LORA_GGUF_BOOL = 7,
	LORA_GGUF_STRING = 8,
	LORA_GGUF_ARRAY = 9,
	LORA_GGUF_UINT64 = 10,
	LORA_GGUF_INT64 = 11,
	LORA_GGUF_FLOAT64 = 12,
	LORA_GGUF_TYPE_COUNT
};

/* The ggml tensor types this code knows the size of (others are refused). */
enum lora_ggml_type {
	LORA_GGML_F32 = 0,
	LORA_GGML_F16 = 1,
	LORA_GGML_Q8_0 = 8,             /* blocks of 32: fp16 scale + 32 int8 (34 bytes) */
	LORA_GGML_I8 = 24,
	LORA_GGML_I16 = 25,
	LORA_GGML_I32 = 26,
	LORA_GGML_I64 = 27,
	LORA_GGML_F64 = 28,
	LORA_GGML_BF16 = 30,
};

/* Name of a ggml type ("F32"), or NULL when unknown. */
const char *lora_ggml_type_name(uint32_t type);

struct lora_gguf_kv {
	char *key;                    /* NUL-terminated copy */
	uint32_t type;                /* enum lora_gguf_type */
	uint32_t arr_type;            /* ARRAY: the element type */
	uint64_t arr_n;               /* ARRAY: the element count */
	const unsigned char *arr;     /* ARRAY: the raw elements (inside the buffer) */
	union {
		uint64_t u;               /* UINT8..UINT64, BOOL */
		int64_t i;                /* INT8..INT64 */
		double f;                 /* FLOAT32, FLOAT64 */
	} v;
	char *str;                    /* STRING: NUL-terminated copy (may hold NULs: use str_len) */
	uint64_t str_len;
};

struct lora_gguf_tensor {
	char *name;
	uint32_t n_dims;
	uint64_t ne[LORA_GGUF_MAX_DIMS]; /* 1 past n_dims */
	uint32_t type;                /* enum lora_ggml_type */
	uint64_t offset;              /* in the data section */
	uint64_t nbytes;              /* without padding */
	const unsigned char *data;    /* inside the buffer */
};

struct lora_gguf {
	char *path;                   /* file path, or the label given to open_mem */
	const unsigned char *base;
	size_t size;
	int mapped;
	uint32_t version;
	uint32_t alignment;
	uint64_t data_start;          /* absolute offset of the data section */
	size_t n_kv;
	struct lora_gguf_kv *kv;      /* in file order */
	size_t n_tensors;
	struct lora_gguf_tensor *tensors;  /* in file order */
};

/* Open and validate a file; the error names it and the problem. */
int lora_gguf_open(const char *path, struct lora_gguf **out, struct lora_err *err);
/* Parse a buffer kept alive by the caller until close. */
int lora_gguf_open_mem(const void *buf, size_t len, const char *label, struct lora_gguf **out,
		       struct lora_err *err);
void lora_gguf_close(struct lora_gguf *g);

const struct lora_gguf_kv *lora_gguf_find_kv(const struct lora_gguf *g, const char *key);
/* The STRING value of key, or NULL when absent or not a string. */
const char *lora_gguf_get_str(const struct lora_gguf *g, const char *key);
/* A FLOAT32/FLOAT64 (or integer) value of key into *out; -1 when absent or not a number. */
int lora_gguf_get_num(const struct lora_gguf *g, const char *key, double *out);
const struct lora_gguf_tensor *lora_gguf_find_tensor(const struct lora_gguf *g, const char *name);

/* ---- writer ---- */

/* A scalar or string KV to write (arrays are not written here). */
struct lora_gguf_kv_spec {
	const char *key;
	uint32_t type;                /* any lora_gguf_type but ARRAY */
	const char *str;              /* STRING */
	uint64_t u;                   /* unsigned types, BOOL */
	int64_t i;                    /* signed types */
	double f;                     /* FLOAT32 (rounded to fp32), FLOAT64 */
};

struct lora_gguf_tensor_spec {
	const char *name;
	uint32_t n_dims;
	uint64_t ne[LORA_GGUF_MAX_DIMS];
	uint32_t type;                /* F32, F16 or BF16, or any type whose size is known */
};

struct lora_gguf_writer {
	struct lora_tmpfile tmp;
	size_t n;                     /* tensors */
	uint64_t *nbytes;             /* per tensor */
	size_t cur;                   /* tensor being written */
	uint64_t in_cur;              /* bytes of it written so far */
	uint32_t alignment;
	char *path;
};

/* Bytes of a tensor of this type and shape; -1 + err on an unknown type, a bad shape or overflow. */
int lora_gguf_tensor_nbytes(uint32_t type, uint32_t n_dims, const uint64_t *ne, uint64_t *out,
			    struct lora_err *err);

int lora_gguf_writer_open(struct lora_gguf_writer *w, const char *path, const struct lora_gguf_kv_spec *kv,
			  size_t n_kv, const struct lora_gguf_tensor_spec *t, size_t n, struct lora_err *err);
/* The next bytes of tensor data, in tensor order, any split (padding is added here). */
int lora_gguf_writer_write(struct lora_gguf_writer *w, const void *data, size_t len, struct lora_err *err);
/* Check that every byte arrived, fsync, rename into place. */
int lora_gguf_writer_commit(struct lora_gguf_writer *w, struct lora_err *err);
void lora_gguf_writer_abort(struct lora_gguf_writer *w);

#endif
