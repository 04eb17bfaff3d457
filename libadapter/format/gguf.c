/* gguf.c - validated GGUF reader (mmap or memory) and streaming atomic writer; layout in gguf.h. */
#include "libadapter/format/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "libadapter/base/buf.h"

/* ------------------------------------------------------------ types */

struct ggml_type_info {
	uint32_t type;
	const char *name;
	uint32_t block;               /* elements per block */
	uint32_t bytes;               /* bytes per block */
};

static const struct ggml_type_info ggml_types[] = {
	{ LORA_GGML_F32, "F32", 1, 4 },   { LORA_GGML_F16, "F16", 1, 2 },
	{ LORA_GGML_Q8_0, "Q8_0", 32, 34 }, { LORA_GGML_I8, "I8", 1, 1 },
	{ LORA_GGML_I16, "I16", 1, 2 },   { LORA_GGML_I32, "I32", 1, 4 },
	{ LORA_GGML_I64, "I64", 1, 8 },   { LORA_GGML_F64, "F64", 1, 8 },
	{ LORA_GGML_BF16, "BF16", 1, 2 },
};

static const struct ggml_type_info *type_info(uint32_t type)
{
	for (size_t i = 0; i < sizeof(ggml_types) / sizeof(ggml_types[0]); i++)
		if (ggml_types[i].type == type)
			return &ggml_types[i];
	return NULL;
}

const char *lora_ggml_type_name(uint32_t type)
{
	const struct ggml_type_info *ti = type_info(type);
	return ti ? ti->name : NULL;
}

/* Size of one scalar KV value; 0 for STRING and ARRAY (variable) and unknown types. */
static size_t kv_scalar_size(uint32_t type)
{
	switch (type) {
	case LORA_GGUF_UINT8: case LORA_GGUF_INT8: case LORA_GGUF_BOOL: return 1;
	case LORA_GGUF_UINT16: case LORA_GGUF_INT16: return 2;
	case LORA_GGUF_UINT32: case LORA_GGUF_INT32: case LORA_GGUF_FLOAT32: return 4;
	case LORA_GGUF_UINT64: case LORA_GGUF_INT64: case LORA_GGUF_FLOAT64: return 8;
	default: return 0;
	}
}

int lora_gguf_tensor_nbytes(uint32_t type, uint32_t n_dims, const uint64_t *ne, uint64_t *out,
			    struct lora_err *err)
{
	const struct ggml_type_info *ti = type_info(type);
	uint64_t n = 1;

	if (!ti)
		return lora_errf(err, "unsupported ggml tensor type %u", type);
	if (n_dims < 1 || n_dims > LORA_GGUF_MAX_DIMS)
		return lora_errf(err, "%u dimensions (1 to %d allowed)", n_dims, LORA_GGUF_MAX_DIMS);
	for (uint32_t d = 0; d < n_dims; d++) {
		if (ne[d] > (uint64_t)INT64_MAX)
			return lora_errf(err, "dimension %u is negative", d);
		/* Catch int64 overflow of the element count, as ggml does */
		if (ne[d] != 0 && n > (uint64_t)INT64_MAX / ne[d])
			return lora_errf(err, "element count overflows");
		n *= ne[d];
	}
	if (ne[0] % ti->block)
		return lora_errf(err, "row of %llu elements is not a multiple of the %s block (%u)",
				 (unsigned long long)ne[0], ti->name, ti->block);
	if (n / ti->block > UINT64_MAX / ti->bytes)
		return lora_errf(err, "byte count overflows");
	*out = n / ti->block * ti->bytes;
	return 0;
}

/* ------------------------------------------------------------ reader */

struct cursor {
	const unsigned char *p;
	size_t off, size;
	const char *label;
	struct lora_err *err;
};

static int need(struct cursor *c, uint64_t n, const char *what)
{
	if (n > c->size - c->off)
		return lora_errf(c->err, "'%s': truncated: %s needs %llu bytes at offset %zu, %zu left", c->label,
				 what, (unsigned long long)n, c->off, c->size - c->off);
	return 0;
}

static uint64_t le(const unsigned char *p, int n)
{
	uint64_t v = 0;
	for (int i = n - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static int rd_u32(struct cursor *c, uint32_t *v, const char *what)
{
	if (need(c, 4, what) < 0)
		return -1;
	*v = (uint32_t)le(c->p + c->off, 4);
	c->off += 4;
	return 0;
}

static int rd_u64(struct cursor *c, uint64_t *v, const char *what)
{
	if (need(c, 8, what) < 0)
		return -1;
	*v = le(c->p + c->off, 8);
	c->off += 8;
	return 0;
}

/* A string: uint64 length and bytes; *out a malloc'd NUL-terminated copy (NULL out: skip). */
static int rd_str(struct cursor *c, char **out, uint64_t *len_out, const char *what)
{
	uint64_t n;

	if (rd_u64(c, &n, what) < 0 || need(c, n, what) < 0)
		return -1;
	if (out) {
		if (!(*out = malloc((size_t)n + 1)))
			return lora_errf(c->err, "out of memory");
		memcpy(*out, c->p + c->off, (size_t)n);
		(*out)[n] = 0;
	}
	if (len_out)
		*len_out = n;
	c->off += (size_t)n;
	return 0;
}

static int rd_kv_value(struct cursor *c, struct lora_gguf_kv *kv)
{
	size_t sz;

	if (kv->type == LORA_GGUF_STRING)
		return rd_str(c, &kv->str, &kv->str_len, "a string value");
	if (kv->type == LORA_GGUF_ARRAY) {
		if (rd_u32(c, &kv->arr_type, "an array type") < 0 || rd_u64(c, &kv->arr_n, "an array count") < 0)
			return -1;
		if (kv->arr_type >= LORA_GGUF_TYPE_COUNT || kv->arr_type == LORA_GGUF_ARRAY)
			return lora_errf(c->err, "'%s': key '%s': bad array element type %u", c->label, kv->key,
					 kv->arr_type);
		kv->arr = c->p + c->off;
		if (kv->arr_type == LORA_GGUF_STRING) {
			/* each element is at least its 8-byte length: bounds the loop by the file */
			if (kv->arr_n > (c->size - c->off) / 8)
				return need(c, UINT64_MAX, "a string array");
			for (uint64_t i = 0; i < kv->arr_n; i++)
				if (rd_str(c, NULL, NULL, "an array string") < 0)
					return -1;
			return 0;
		}
		sz = kv_scalar_size(kv->arr_type);
		if (kv->arr_n > UINT64_MAX / sz)
			return need(c, UINT64_MAX, "an array");
		if (need(c, kv->arr_n * sz, "an array") < 0)
			return -1;
		c->off += (size_t)(kv->arr_n * sz);
		return 0;
	}
	sz = kv_scalar_size(kv->type);
	if (!sz)
		return lora_errf(c->err, "'%s': key '%s': unknown value type %u", c->label, kv->key, kv->type);
	if (need(c, sz, "a value") < 0)
		return -1;
	uint64_t raw = le(c->p + c->off, (int)sz);
	c->off += sz;
	switch (kv->type) {
	case LORA_GGUF_INT8: kv->v.i = (int8_t)raw; break;
	case LORA_GGUF_INT16: kv->v.i = (int16_t)raw; break;
	case LORA_GGUF_INT32: kv->v.i = (int32_t)raw; break;
	case LORA_GGUF_INT64: kv->v.i = (int64_t)raw; break;
	case LORA_GGUF_FLOAT32: {
		uint32_t b = (uint32_t)raw;
		float f;
		memcpy(&f, &b, 4);
		kv->v.f = f;
		break;
	}
	case LORA_GGUF_FLOAT64: memcpy(&kv->v.f, &raw, 8); break;
	case LORA_GGUF_BOOL:
		if (raw > 1)
			return lora_errf(c->err, "'%s': key '%s': bool is %llu", c->label, kv->key,
					 (unsigned long long)raw);
		/* fall through */
	default: kv->v.u = raw; break;
	}
	return 0;
}

void lora_gguf_close(struct lora_gguf *g)
{
	if (!g)
		return;
	for (size_t i = 0; i < g->n_kv; i++) {
		free(g->kv[i].key);
		free(g->kv[i].str);
	}
	for (size_t i = 0; i < g->n_tensors; i++)
		free(g->tensors[i].name);
	free(g->kv);
	free(g->tensors);
	if (g->mapped && g->base)
		munmap((void *)g->base, g->size);
	free(g->path);
	free(g);
}

static int parse_kvs(struct lora_gguf *g, struct cursor *c, uint64_t n_kv)
{
	/* every pair is at least 8 (key length) + 4 (type) + 1 bytes: a count the file cannot hold is refused before allocating */
	if (n_kv > (c->size - c->off) / 13)
		return lora_errf(c->err, "'%s': %llu key/value pairs cannot fit in %zu bytes", c->label,
				 (unsigned long long)n_kv, c->size);
	g->kv = calloc(n_kv ? (size_t)n_kv : 1, sizeof(*g->kv));
	if (!g->kv)
		return lora_errf(c->err, "out of memory");
	for (uint64_t i = 0; i < n_kv; i++) {
		struct lora_gguf_kv *kv = &g->kv[i];
		uint64_t klen;

		if (rd_str(c, &kv->key, &klen, "a key") < 0)
			return -1;
		g->n_kv = (size_t)i + 1;
		if (klen == 0 || strlen(kv->key) != klen)
			return lora_errf(c->err, "'%s': key %llu is empty or holds a NUL byte", c->label,
					 (unsigned long long)i);
		for (uint64_t j = 0; j < i; j++)
			if (!strcmp(g->kv[j].key, kv->key))
				return lora_errf(c->err, "'%s': duplicate key '%s'", c->label, kv->key);
		if (rd_u32(c, &kv->type, "a value type") < 0 || rd_kv_value(c, kv) < 0)
			return -1;
	}
	return 0;
}

static int parse_tensor_infos(struct lora_gguf *g, struct cursor *c, uint64_t n_t)
{
	/* name length 8 + n_dims 4 + one dim 8 + type 4 + offset 8 */
	if (n_t > (c->size - c->off) / 32)
		return lora_errf(c->err, "'%s': %llu tensors cannot fit in %zu bytes", c->label,
				 (unsigned long long)n_t, c->size);
	g->tensors = calloc(n_t ? (size_t)n_t : 1, sizeof(*g->tensors));
	if (!g->tensors)
		return lora_errf(c->err, "out of memory");
	for (uint64_t i = 0; i < n_t; i++) {
		struct lora_gguf_tensor *t = &g->tensors[i];
		uint64_t nlen;

		if (rd_str(c, &t->name, &nlen, "a tensor name") < 0)
			return -1;
		g->n_tensors = (size_t)i + 1;
		if (nlen == 0 || nlen >= LORA_GGUF_MAX_NAME || strlen(t->name) != nlen)
			return lora_errf(c->err, "'%s': tensor %llu has an empty, NUL-holding or over-long name", c->label,
					 (unsigned long long)i);
		for (uint64_t j = 0; j < i; j++)
			if (!strcmp(g->tensors[j].name, t->name))
				return lora_errf(c->err, "'%s': duplicate tensor '%s'", c->label, t->name);
		if (rd_u32(c, &t->n_dims, "tensor dims") < 0)
			return -1;
		if (t->n_dims < 1 || t->n_dims > LORA_GGUF_MAX_DIMS)
			return lora_errf(c->err, "'%s': tensor '%s' has %u dimensions (1 to %d allowed)", c->label,
					 t->name, t->n_dims, LORA_GGUF_MAX_DIMS);
		for (uint32_t d = 0; d < LORA_GGUF_MAX_DIMS; d++) {
			t->ne[d] = 1;
			if (d < t->n_dims && rd_u64(c, &t->ne[d], "a tensor dimension") < 0)
				return -1;
		}
		if (rd_u32(c, &t->type, "a tensor type") < 0 || rd_u64(c, &t->offset, "a tensor offset") < 0)
			return -1;
		if (lora_gguf_tensor_nbytes(t->type, t->n_dims, t->ne, &t->nbytes, c->err) < 0)
			return lora_err_prefix(c->err, "'%s': tensor '%s'", c->label, t->name);
	}
	return 0;
}

/* Offsets: each the running padded sum; data inside the buffer. */
static int place_tensors(struct lora_gguf *g, struct lora_err *err)
{
	uint64_t expect = 0, avail = g->size - g->data_start;

	for (size_t i = 0; i < g->n_tensors; i++) {
		struct lora_gguf_tensor *t = &g->tensors[i];
		uint64_t pad;

		if (t->offset != expect)
			return lora_errf(err, "'%s': tensor '%s' at data offset %llu, expected %llu", g->path, t->name,
					 (unsigned long long)t->offset, (unsigned long long)expect);
		if (t->nbytes > avail - t->offset)
			return lora_errf(err, "'%s': tensor '%s' (%llu bytes at %llu) runs past the end of the file",
					 g->path, t->name, (unsigned long long)t->nbytes, (unsigned long long)t->offset);
		t->data = g->base + g->data_start + t->offset;
		pad = (g->alignment - t->nbytes % g->alignment) % g->alignment;
		/* the last tensor's padding may be missing at the end of the file */
		expect = t->offset + t->nbytes;
		if (pad > avail - expect) {
			if (i + 1 < g->n_tensors)
				return lora_errf(err, "'%s': tensor '%s' runs past the end of the file", g->path,
						 g->tensors[i + 1].name);
			pad = 0;
		}
		expect += pad;
	}
	return 0;
}

static int gguf_init(struct lora_gguf *g, struct lora_err *err)
{
	struct cursor c = { g->base, 0, g->size, g->path, err };
	uint64_t n_t, n_kv;
	const struct lora_gguf_kv *al;

	if (g->size < 4 || memcmp(g->base, LORA_GGUF_MAGIC, 4))
		return lora_errf(err, "'%s' is not a GGUF file (no \"GGUF\" magic)", g->path);
	c.off = 4;
	if (rd_u32(&c, &g->version, "the version") < 0)
		return -1;
	if (g->version != 2 && g->version != 3)
		return lora_errf(err, "'%s': GGUF version %u is not supported (2 or 3)", g->path, g->version);
	if (rd_u64(&c, &n_t, "the tensor count") < 0 || rd_u64(&c, &n_kv, "the key/value count") < 0)
		return -1;
	if (parse_kvs(g, &c, n_kv) < 0 || parse_tensor_infos(g, &c, n_t) < 0)
		return -1;
	g->alignment = LORA_GGUF_ALIGNMENT;
	if ((al = lora_gguf_find_kv(g, "general.alignment"))) {
		if (al->type != LORA_GGUF_UINT32 || al->v.u == 0 || (al->v.u & (al->v.u - 1)))
			return lora_errf(err, "'%s': general.alignment must be a uint32 power of two", g->path);
		g->alignment = (uint32_t)al->v.u;
	}
	g->data_start = c.off;
	if (g->n_tensors) {
		uint64_t pad = (g->alignment - c.off % g->alignment) % g->alignment;
		if (pad > g->size - c.off)
			return lora_errf(err, "'%s': truncated before the data section", g->path);
		g->data_start += pad;
	}
	for (size_t i = 0; i < g->n_tensors; i++)
		if (g->tensors[i].offset % g->alignment)
			return lora_errf(err, "'%s': tensor '%s' offset %llu is not a multiple of %u", g->path,
					 g->tensors[i].name, (unsigned long long)g->tensors[i].offset, g->alignment);
	return place_tensors(g, err);
}

int lora_gguf_open_mem(const void *buf, size_t len, const char *label, struct lora_gguf **out,
		       struct lora_err *err)
{
	struct lora_gguf *g = calloc(1, sizeof(*g));

	*out = NULL;
	if (!g || !(g->path = strdup(label ? label : "<memory>"))) {
		free(g);
		return lora_errf(err, "out of memory");
	}
	g->base = buf;
	g->size = len;
	if (gguf_init(g, err) < 0) {
		lora_gguf_close(g);
		return -1;
	}
	*out = g;
	return 0;
}

int lora_gguf_open(const char *path, struct lora_gguf **out, struct lora_err *err)
{
	struct lora_gguf *g;
	struct stat sb;
	void *map = NULL;
	int fd;

	*out = NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return lora_errf(err, "cannot open '%s': %s", path, strerror(errno));
	if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		close(fd);
		return lora_errf(err, "'%s' is not a regular file", path);
	}
	if (sb.st_size > 0) {
		map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_SHARED, fd, 0);
		if (map == MAP_FAILED) {
			close(fd);
			return lora_errf(err, "cannot map '%s': %s", path, strerror(errno));
		}
	}
	close(fd);
	g = calloc(1, sizeof(*g));
	if (!g || !(g->path = strdup(path))) {
		free(g);
		if (map)
			munmap(map, (size_t)sb.st_size);
		return lora_errf(err, "out of memory");
	}
	g->base = map;
	g->size = (size_t)sb.st_size;
	g->mapped = 1;
	if (gguf_init(g, err) < 0) {
		lora_gguf_close(g);
		return -1;
	}
	*out = g;
	return 0;
}

const struct lora_gguf_kv *lora_gguf_find_kv(const struct lora_gguf *g, const char *key)
{
	for (size_t i = 0; i < g->n_kv; i++)
		if (!strcmp(g->kv[i].key, key))
			return &g->kv[i];
	return NULL;
}

const char *lora_gguf_get_str(const struct lora_gguf *g, const char *key)
{
	const struct lora_gguf_kv *kv = lora_gguf_find_kv(g, key);
	return kv && kv->type == LORA_GGUF_STRING ? kv->str : NULL;
}

int lora_gguf_get_num(const struct lora_gguf *g, const char *key, double *out)
{
	const struct lora_gguf_kv *kv = lora_gguf_find_kv(g, key);

	if (!kv)
		return -1;
	switch (kv->type) {
	case LORA_GGUF_FLOAT32: case LORA_GGUF_FLOAT64: *out = kv->v.f; return 0;
	case LORA_GGUF_INT8: case LORA_GGUF_INT16: case LORA_GGUF_INT32: case LORA_GGUF_INT64:
		*out = (double)kv->v.i; return 0;
	case LORA_GGUF_UINT8: case LORA_GGUF_UINT16: case LORA_GGUF_UINT32: case LORA_GGUF_UINT64:
		*out = (double)kv->v.u; return 0;
	default: return -1;
	}
}

const struct lora_gguf_tensor *lora_gguf_find_tensor(const struct lora_gguf *g, const char *name)
{
	for (size_t i = 0; i < g->n_tensors; i++)
		if (!strcmp(g->tensors[i].name, name))
			return &g->tensors[i];
	return NULL;
}

/* ------------------------------------------------------------ writer */

static void put_le(struct lora_buf *b, uint64_t v, int n)
{
	unsigned char x[8];
	for (int i = 0; i < n; i++)
		x[i] = (unsigned char)(v >> (8 * i));
	lora_buf_add(b, x, (size_t)n);
}

static void put_str(struct lora_buf *b, const char *s)
{
	put_le(b, strlen(s), 8);
	lora_buf_add(b, s, strlen(s));
}

static int put_kv(struct lora_buf *b, const struct lora_gguf_kv_spec *kv, struct lora_err *err)
{
	size_t sz = kv_scalar_size(kv->type);

	put_str(b, kv->key);
	put_le(b, kv->type, 4);
	if (kv->type == LORA_GGUF_STRING) {
		if (!kv->str)
			return lora_errf(err, "gguf key '%s': no string", kv->key);
		put_str(b, kv->str);
	} else if (kv->type == LORA_GGUF_FLOAT32) {
		float f = (float)kv->f;
		uint32_t u;
		memcpy(&u, &f, 4);
		put_le(b, u, 4);
	} else if (kv->type == LORA_GGUF_FLOAT64) {
		uint64_t u;
		memcpy(&u, &kv->f, 8);
		put_le(b, u, 8);
	} else if (!sz) {
		return lora_errf(err, "gguf key '%s': cannot write type %u", kv->key, kv->type);
	} else {
		int is_signed = kv->type == LORA_GGUF_INT8 || kv->type == LORA_GGUF_INT16 ||
				kv->type == LORA_GGUF_INT32 || kv->type == LORA_GGUF_INT64;
		put_le(b, is_signed ? (uint64_t)kv->i : kv->u, (int)sz);
	}
	return 0;
}

static uint64_t pad_to(uint64_t n, uint32_t a)
{
	return (a - n % a) % a;
}

int lora_gguf_writer_open(struct lora_gguf_writer *w, const char *path, const struct lora_gguf_kv_spec *kv,
			  size_t n_kv, const struct lora_gguf_tensor_spec *t, size_t n, struct lora_err *err)
{
	struct lora_buf b = LORA_BUF_INIT;
	uint64_t off = 0;

	memset(w, 0, sizeof(*w));
	w->tmp.fd = -1;
	w->alignment = LORA_GGUF_ALIGNMENT;
	w->n = n;
	if (!(w->nbytes = calloc(n ? n : 1, sizeof(*w->nbytes))) || !(w->path = strdup(path))) {
		free(w->nbytes);
		return lora_errf(err, "out of memory");
	}
	lora_buf_add(&b, LORA_GGUF_MAGIC, 4);
	put_le(&b, LORA_GGUF_VERSION, 4);
	put_le(&b, n, 8);
	put_le(&b, n_kv, 8);
	for (size_t i = 0; i < n_kv; i++) {
		if (!strcmp(kv[i].key, "general.alignment"))
			w->alignment = (uint32_t)kv[i].u;
		if (put_kv(&b, &kv[i], err) < 0)
			goto fail;
	}
	if (w->alignment == 0 || (w->alignment & (w->alignment - 1))) {
		lora_errf(err, "'%s': general.alignment must be a power of two", path);
		goto fail;
	}
	for (size_t i = 0; i < n; i++) {
		if (!*t[i].name || strlen(t[i].name) >= LORA_GGUF_MAX_NAME) {
			lora_errf(err, "'%s': tensor name '%s' is empty or longer than %d bytes", path, t[i].name,
				  LORA_GGUF_MAX_NAME - 1);
			goto fail;
		}
		if (lora_gguf_tensor_nbytes(t[i].type, t[i].n_dims, t[i].ne, &w->nbytes[i], err) < 0) {
			lora_err_prefix(err, "'%s': tensor '%s'", path, t[i].name);
			goto fail;
		}
		put_str(&b, t[i].name);
		put_le(&b, t[i].n_dims, 4);
		for (uint32_t d = 0; d < t[i].n_dims; d++)
			put_le(&b, t[i].ne[d], 8);
		put_le(&b, t[i].type, 4);
		put_le(&b, off, 8);
		off += w->nbytes[i] + pad_to(w->nbytes[i], w->alignment);
	}
	if (n) {
		static const unsigned char zeros[64];
		for (uint64_t p = pad_to(b.len, w->alignment); p; p = pad_to(b.len, w->alignment))
			lora_buf_add(&b, zeros, p > 64 ? 64 : (size_t)p);
	}
	if (b.oom) {
		lora_errf(err, "out of memory");
		goto fail;
	}
	if (lora_tmp_open(&w->tmp, path, 0644, err) < 0)
		goto fail;
	if (lora_write_all(w->tmp.fd, b.data, b.len, w->tmp.tmp_path, err) < 0) {
		lora_tmp_abort(&w->tmp);
		goto fail;
	}
	lora_buf_free(&b);
	/* skip empty tensors at the start */
	while (w->cur < w->n && w->nbytes[w->cur] == 0)
		w->cur++;
	return 0;
fail:
	lora_buf_free(&b);
	free(w->nbytes);
	free(w->path);
	w->nbytes = NULL;
	w->path = NULL;
	return -1;
}

int lora_gguf_writer_write(struct lora_gguf_writer *w, const void *data, size_t len, struct lora_err *err)
{
	static const unsigned char zeros[64];
	const unsigned char *p = data;

	while (len) {
		uint64_t left, k;

		if (w->cur >= w->n)
			return lora_errf(err, "'%s': more tensor bytes than the tensors hold", w->path);
		left = w->nbytes[w->cur] - w->in_cur;
		k = len < left ? len : left;
		if (lora_write_all(w->tmp.fd, p, (size_t)k, w->tmp.tmp_path, err) < 0)
			return -1;
		p += k;
		len -= (size_t)k;
		w->in_cur += k;
		if (w->in_cur == w->nbytes[w->cur]) {
			uint64_t pad = pad_to(w->nbytes[w->cur], w->alignment);
			while (pad) {
				size_t z = pad > sizeof(zeros) ? sizeof(zeros) : (size_t)pad;
				if (lora_write_all(w->tmp.fd, zeros, z, w->tmp.tmp_path, err) < 0)
					return -1;
				pad -= z;
			}
			w->in_cur = 0;
			do
				w->cur++;
			while (w->cur < w->n && w->nbytes[w->cur] == 0);
		}
	}
	return 0;
}

int lora_gguf_writer_commit(struct lora_gguf_writer *w, struct lora_err *err)
{
	int rc;

	if (w->cur < w->n) {
		lora_errf(err, "'%s': tensor data ended early (tensor %zu of %zu)", w->path, w->cur + 1, w->n);
		lora_gguf_writer_abort(w);
		return -1;
	}
	rc = lora_tmp_commit(&w->tmp, err);
	free(w->nbytes);
	free(w->path);
	w->nbytes = NULL;
	w->path = NULL;
	return rc;
}

void lora_gguf_writer_abort(struct lora_gguf_writer *w)
{
	lora_tmp_abort(&w->tmp);
	free(w->nbytes);
	free(w->path);
	w->nbytes = NULL;
	w->path = NULL;
}
