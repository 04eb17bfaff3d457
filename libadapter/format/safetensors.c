/* safetensors.c - validated reader (mmap or memory) and streaming atomic writer. */
#include "libadapter/format/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "libadapter/base/buf.h"

/* ---------------------------------------------------------------- UTF-8 */

int lora_utf8_valid(const unsigned char *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		unsigned c = s[i];
		size_t len;
		uint32_t cp, min;

		if (c < 0x80) {
			i++;
			continue;
		} else if ((c & 0xe0) == 0xc0) {
			len = 2, cp = c & 0x1f, min = 0x80;
		} else if ((c & 0xf0) == 0xe0) {
			len = 3, cp = c & 0x0f, min = 0x800;
		} else if ((c & 0xf8) == 0xf0) {
			len = 4, cp = c & 0x07, min = 0x10000;
		} else {
			return 0;
		}
		if (n - i < len)
			return 0;
		for (size_t k = 1; k < len; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return 0;
			cp = (cp << 6) | (s[i + k] & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return 0;
		i += len;
	}
	return 1;
}

/* --------------------------------------------------------------- reader */

static int json_u64(const cJSON *v, uint64_t *out)
{
	double d;

	if (!cJSON_IsNumber(v))
		return -1;
	d = v->valuedouble;
	if (!(d >= 0) || d != floor(d) || d >= 18446744073709551616.0)
		return -1;
	*out = (uint64_t)d;
	return 0;
}

static int cmp_begin(const void *a, const void *b)
{
	const struct lora_st_tensor *x = a, *y = b;

	if (x->begin != y->begin)
		return x->begin < y->begin ? -1 : 1;
	if (x->end != y->end)
		return x->end < y->end ? -1 : 1;
	return 0;
}

static const struct lora_st *sort_ctx;

static int cmp_name(const void *a, const void *b)
{
	return strcmp(sort_ctx->tensors[*(const size_t *)a].name,
		      sort_ctx->tensors[*(const size_t *)b].name);
}

void lora_st_close(struct lora_st *st)
{
	if (!st)
		return;
	for (size_t i = 0; i < st->n_tensors; i++)
		free(st->tensors[i].name);
	for (size_t i = 0; i < st->n_meta; i++) {
		free(st->meta_keys[i]);
		free(st->meta_vals[i]);
	}
	free(st->tensors);
	free(st->by_name);
	free(st->meta_keys);
	free(st->meta_vals);
	if (st->mapped && st->size)
		munmap((void *)st->base, st->size);
	free(st->path);
	free(st);
}

static int parse_metadata(struct lora_st *st, const cJSON *meta, struct lora_err *err)
{
	const cJSON *it;
	size_t n = 0;

	if (!cJSON_IsObject(meta))
		return lora_errf(err, "'%s': __metadata__ is not an object", st->path);
	cJSON_ArrayForEach(it, meta)
		n++;
	st->meta_keys = calloc(n ? n : 1, sizeof(char *));
	st->meta_vals = calloc(n ? n : 1, sizeof(char *));
	if (!st->meta_keys || !st->meta_vals)
		return lora_errf(err, "out of memory");
	cJSON_ArrayForEach(it, meta) {
		if (!cJSON_IsString(it))
			return lora_errf(err, "'%s': __metadata__ value for '%s' is not a string",
					 st->path, it->string);
		for (size_t k = 0; k < st->n_meta; k++)
			if (!strcmp(st->meta_keys[k], it->string))
				return lora_errf(err, "'%s': duplicate __metadata__ key '%s'", st->path,
						 it->string);
		st->meta_keys[st->n_meta] = strdup(it->string);
		st->meta_vals[st->n_meta] = strdup(it->valuestring);
		if (!st->meta_keys[st->n_meta] || !st->meta_vals[st->n_meta])
			return lora_errf(err, "out of memory");
		st->n_meta++;
	}
	return 0;
}

/* The reference refuses an entry naming a field twice (cJSON would take the first). */
static int field_twice(const cJSON *obj, const char *key)
{
	const cJSON *c;
	int n = 0;

	cJSON_ArrayForEach(c, obj)
		n += c->string && !strcmp(c->string, key);
	return n > 1;
}

static int parse_tensor(struct lora_st *st, const cJSON *it, struct lora_st_tensor *t,
			struct lora_err *err)
{
	const char *name = it->string;
	const cJSON *dt = cJSON_GetObjectItemCaseSensitive(it, "dtype");
	const cJSON *shape = cJSON_GetObjectItemCaseSensitive(it, "shape");
	const cJSON *offs = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
	const cJSON *d;
	uint64_t bits;

	if (!cJSON_IsObject(it))
		return lora_errf(err, "'%s': entry '%s' is not an object", st->path, name);
	if (field_twice(it, "dtype") || field_twice(it, "shape") || field_twice(it, "data_offsets"))
		return lora_errf(err, "'%s': tensor '%s' has a field twice", st->path, name);
	t->name = strdup(name);
	if (!t->name)
		return lora_errf(err, "out of memory");
	if (!cJSON_IsString(dt))
		return lora_errf(err, "'%s': tensor '%s' has no dtype", st->path, name);
	t->dtype = lora_dtype_parse(dt->valuestring, -1);
	if (t->dtype == LORA_DT_INVALID)
		return lora_errf(err, "'%s': tensor '%s' has unknown dtype '%s'", st->path, name,
				 dt->valuestring);
	if (!cJSON_IsArray(shape))
		return lora_errf(err, "'%s': tensor '%s' has no shape", st->path, name);
	t->nelem = 1;
	cJSON_ArrayForEach(d, shape) {
		uint64_t v;
		if (t->ndim == LORA_ST_MAX_DIMS)
			return lora_errf(err, "'%s': tensor '%s' has more than %d dimensions", st->path,
					 name, LORA_ST_MAX_DIMS);
		if (json_u64(d, &v) < 0)
			return lora_errf(err, "'%s': tensor '%s' has a bad shape", st->path, name);
		t->shape[t->ndim++] = v;
		if (__builtin_mul_overflow(t->nelem, v, &t->nelem))
			return lora_errf(err, "'%s': shape of tensor '%s' overflows", st->path, name);
	}
	if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 ||
	    json_u64(cJSON_GetArrayItem(offs, 0), &t->begin) < 0 ||
	    json_u64(cJSON_GetArrayItem(offs, 1), &t->end) < 0)
		return lora_errf(err, "'%s': tensor '%s' has bad data_offsets", st->path, name);
	if (t->end < t->begin)
		return lora_errf(err, "'%s': tensor '%s' ends before it begins", st->path, name);
	if (__builtin_mul_overflow(t->nelem, (uint64_t)lora_dtype_bits(t->dtype), &bits))
		return lora_errf(err, "'%s': shape of tensor '%s' overflows", st->path, name);
	if (bits % 8)
		return lora_errf(err, "'%s': tensor '%s' does not fill whole bytes", st->path, name);
	if (bits / 8 != t->end - t->begin)
		return lora_errf(err,
				 "'%s': tensor '%s' has %llu bytes but its shape and dtype need %llu",
				 st->path, name, (unsigned long long)(t->end - t->begin),
				 (unsigned long long)(bits / 8));
	return 0;
}

/*
 * What cJSON lets through but JSON and the reference do not: raw control
 * characters inside strings, and nesting of 128 levels or more (serde_json's
 * recursion limit, one level of which the reference spends itself).
 */
static const char *json_prescan(const char *s, size_t n)
{
	int in_str = 0, depth = 0;

	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (in_str) {
			if (c == '\\')
				i++;
			else if (c == '"')
				in_str = 0;
			else if (c < 0x20)
				return "a control character in a string";
		} else if (c == '"') {
			in_str = 1;
		} else if (c == '{' || c == '[') {
			if (++depth > 127)
				return "nested too deeply";
		} else if (c == '}' || c == ']') {
			depth--;
		}
	}
	return NULL;
}

static int parse_header(struct lora_st *st, struct lora_err *err)
{
	const char *hdr = (const char *)st->base + 8;
	const char *end = NULL, *p, *why;
	cJSON *root, *it;
	int seen_meta = 0;
	size_t n = 0, k = 0;
	uint64_t data_len, pos = 0;
	int rc = -1;

	if (!lora_utf8_valid((const unsigned char *)hdr, st->header_len))
		return lora_errf(err, "'%s': header is not valid UTF-8", st->path);
	for (p = hdr; p < hdr + st->header_len && strchr(" \t\n\r", *p) && *p; p++)
		;  /* JSON allows leading whitespace, and so does the reference */
	if (p == hdr + st->header_len || *p != '{')
		return lora_errf(err, "'%s': header is not a JSON object", st->path);
	if ((why = json_prescan(hdr, st->header_len)))
		return lora_errf(err, "'%s': header is not valid JSON (%s)", st->path, why);
	root = cJSON_ParseWithLengthOpts(hdr, st->header_len, &end, 0);
	if (!root)
		return lora_errf(err, "'%s': header is not valid JSON", st->path);
	for (; end && end < hdr + st->header_len; end++)
		if (*end != ' ' && *end != '\t' && *end != '\n' && *end != '\r')
			goto bad_json;
	if (!cJSON_IsObject(root)) {
		lora_errf(err, "'%s': header is not a JSON object", st->path);
		goto out;
	}
	cJSON_ArrayForEach(it, root)
		if (strcmp(it->string, "__metadata__"))
			n++;
	st->tensors = calloc(n ? n : 1, sizeof(*st->tensors));
	st->by_name = calloc(n ? n : 1, sizeof(size_t));
	if (!st->tensors || !st->by_name) {
		lora_errf(err, "out of memory");
		goto out;
	}
	cJSON_ArrayForEach(it, root) {
		if (!strcmp(it->string, "__metadata__")) {
			if (seen_meta++) {
				lora_errf(err, "'%s': duplicate __metadata__", st->path);
				goto out;
			}
			if (cJSON_IsNull(it))
				continue;  /* the reference reads null as no metadata */
			if (parse_metadata(st, it, err) < 0)
				goto out;
			continue;
		}
		st->n_tensors = k + 1;
		if (parse_tensor(st, it, &st->tensors[k], err) < 0)
			goto out;
		k++;
	}
	qsort(st->tensors, n, sizeof(*st->tensors), cmp_begin);
	data_len = st->size - st->data_start;
	for (size_t i = 0; i < n; i++) {
		struct lora_st_tensor *t = &st->tensors[i];
		if (t->begin != pos) {
			lora_errf(err, "'%s': tensor '%s' %s", st->path, t->name,
				  t->begin < pos ? "overlaps the tensor before it"
						 : "leaves a hole before it in the data");
			goto out;
		}
		if (t->end > data_len) {
			lora_errf(err, "'%s': tensor '%s' runs past the end of the file", st->path, t->name);
			goto out;
		}
		pos = t->end;
		t->file_offset = st->data_start + t->begin;
		t->data = st->base + t->file_offset;
	}
	if (pos != data_len) {
		lora_errf(err, "'%s': data does not end at the end of the file (%llu bytes left over)",
			  st->path, (unsigned long long)(data_len - pos));
		goto out;
	}
	for (size_t i = 0; i < n; i++)
		st->by_name[i] = i;
	sort_ctx = st;
	qsort(st->by_name, n, sizeof(size_t), cmp_name);
	for (size_t i = 1; i < n; i++)
		if (!strcmp(st->tensors[st->by_name[i]].name, st->tensors[st->by_name[i - 1]].name)) {
			lora_errf(err, "'%s': duplicate tensor name '%s'", st->path,
				  st->tensors[st->by_name[i]].name);
			goto out;
		}
	rc = 0;
	goto out;
bad_json:
	lora_errf(err, "'%s': header is not valid JSON", st->path);
out:
	cJSON_Delete(root);
	return rc;
}

static int st_init(struct lora_st *st, struct lora_err *err)
{
	uint64_t n = 0;

	if (st->size < 8)
		return lora_errf(err, "'%s': file too small for a safetensors header (%zu bytes)",
				 st->path, st->size);
	for (int i = 7; i >= 0; i--)
		n = (n << 8) | st->base[i];
	if (n > LORA_ST_MAX_HEADER)
		return lora_errf(err, "'%s': header length %llu is over the 100 MB limit", st->path,
				 (unsigned long long)n);
	if (n > st->size - 8)
		return lora_errf(err, "'%s': header length %llu runs past the end of the file (%zu bytes)",
				 st->path, (unsigned long long)n, st->size);
	st->header_len = n;
	st->data_start = 8 + n;
	return parse_header(st, err);
}

int lora_st_open_mem(const void *buf, size_t len, const char *label, struct lora_st **out,
		     struct lora_err *err)
{
	struct lora_st *st = calloc(1, sizeof(*st));

	*out = NULL;
	if (!st || !(st->path = strdup(label ? label : "<memory>"))) {
		free(st);
		return lora_errf(err, "out of memory");
	}
	st->base = buf;
	st->size = len;
	if (st_init(st, err) < 0) {
		lora_st_close(st);
		return -1;
	}
	*out = st;
	return 0;
}

int lora_st_open(const char *path, struct lora_st **out, struct lora_err *err)
{
	struct lora_st *st;
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
	st = calloc(1, sizeof(*st));
	if (!st || !(st->path = strdup(path))) {
		free(st);
		if (map)
			munmap(map, (size_t)sb.st_size);
		return lora_errf(err, "out of memory");
	}
	st->base = map;
	st->size = (size_t)sb.st_size;
	st->mapped = 1;
	if (st_init(st, err) < 0) {
		lora_st_close(st);
		return -1;
	}
	*out = st;
	return 0;
}

const struct lora_st_tensor *lora_st_find(const struct lora_st *st, const char *name)
{
	size_t lo = 0, hi = st->n_tensors;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct lora_st_tensor *t = &st->tensors[st->by_name[mid]];
		int c = strcmp(name, t->name);
		if (c == 0)
			return t;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

const char *lora_st_meta(const struct lora_st *st, const char *key)
{
	for (size_t i = 0; i < st->n_meta; i++)
		if (!strcmp(st->meta_keys[i], key))
			return st->meta_vals[i];
	return NULL;
}

float *lora_st_to_f32(const struct lora_st_tensor *t, struct lora_err *err)
{
	float *p;

	if (!lora_dtype_is_float(t->dtype)) {
		lora_errf(err, "tensor '%s' has dtype %s, not a float type", t->name,
			  lora_dtype_name(t->dtype));
		return NULL;
	}
	if (t->nelem > SIZE_MAX / sizeof(float)) {
		lora_errf(err, "tensor '%s' is too large", t->name);
		return NULL;
	}
	p = malloc(t->nelem ? t->nelem * sizeof(float) : 1);
	if (!p) {
		lora_errf(err, "out of memory for tensor '%s'", t->name);
		return NULL;
	}
	lora_to_f32(p, t->data, t->dtype, t->nelem);
	return p;
}

/* --------------------------------------------------------------- writer */

int lora_st_build_header(const struct lora_st_spec *specs, size_t n, const char *const *meta_keys,
			 const char *const *meta_vals, size_t n_meta, unsigned char **out,
			 size_t *out_len, uint64_t *data_len, struct lora_err *err)
{
	struct lora_buf b = LORA_BUF_INIT;
	uint64_t off = 0, hl;
	const char *sep = "";

	lora_buf_add(&b, "\0\0\0\0\0\0\0\0{", 9);
	if (n_meta) {
		lora_buf_puts(&b, "\"__metadata__\":{");
		for (size_t i = 0; i < n_meta; i++) {
			if (i)
				lora_buf_puts(&b, ",");
			lora_buf_json_str(&b, meta_keys[i]);
			lora_buf_puts(&b, ":");
			lora_buf_json_str(&b, meta_vals[i]);
		}
		lora_buf_puts(&b, "}");
		sep = ",";
	}
	for (size_t i = 0; i < n; i++) {
		const struct lora_st_spec *s = &specs[i];
		uint64_t nel = 1, bits;

		if (!strcmp(s->name, "__metadata__") || s->ndim < 0 || s->ndim > LORA_ST_MAX_DIMS ||
		    lora_dtype_bits(s->dtype) == 0) {
			lora_buf_free(&b);
			return lora_errf(err, "cannot write tensor '%s': bad name, dtype or shape", s->name);
		}
		for (int d = 0; d < s->ndim; d++)
			if (__builtin_mul_overflow(nel, s->shape[d], &nel)) {
				lora_buf_free(&b);
				return lora_errf(err, "cannot write tensor '%s': shape overflows", s->name);
			}
		if (__builtin_mul_overflow(nel, (uint64_t)lora_dtype_bits(s->dtype), &bits) || bits % 8) {
			lora_buf_free(&b);
			return lora_errf(err, "cannot write tensor '%s': size is not whole bytes", s->name);
		}
		lora_buf_puts(&b, sep);
		sep = ",";
		lora_buf_json_str(&b, s->name);
		lora_buf_printf(&b, ":{\"dtype\":\"%s\",\"shape\":[", lora_dtype_name(s->dtype));
		for (int d = 0; d < s->ndim; d++)
			lora_buf_printf(&b, "%s%llu", d ? "," : "", (unsigned long long)s->shape[d]);
		lora_buf_printf(&b, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
				(unsigned long long)(off + bits / 8));
		off += bits / 8;
	}
	lora_buf_puts(&b, "}");
	while (b.len % 8)
		lora_buf_puts(&b, " ");
	if (b.oom) {
		lora_buf_free(&b);
		return lora_errf(err, "out of memory");
	}
	hl = b.len - 8;
	if (hl > LORA_ST_MAX_HEADER) {
		lora_buf_free(&b);
		return lora_errf(err, "safetensors header would exceed 100 MB");
	}
	for (int i = 0; i < 8; i++)
		b.data[i] = (char)((hl >> (8 * i)) & 0xff);
	*out_len = b.len;
	*data_len = off;
	*out = (unsigned char *)lora_buf_take(&b);
	return 0;
}

int lora_st_writer_open(struct lora_st_writer *w, const char *path, const struct lora_st_spec *specs,
			size_t n, const char *const *meta_keys, const char *const *meta_vals,
			size_t n_meta, struct lora_err *err)
{
	unsigned char *hdr;
	size_t hlen;

	memset(w, 0, sizeof(*w));
	w->tmp.fd = -1;
	if (lora_st_build_header(specs, n, meta_keys, meta_vals, n_meta, &hdr, &hlen, &w->expected,
				 err) < 0)
		return -1;
	w->header_len = hlen - 8;
	if (!(w->path = strdup(path))) {
		free(hdr);
		return lora_errf(err, "out of memory");
	}
	if (lora_tmp_open(&w->tmp, path, 0644, err) < 0 ||
	    lora_write_all(w->tmp.fd, hdr, hlen, path, err) < 0) {
		free(hdr);
		lora_st_writer_abort(w);
		return -1;
	}
	free(hdr);
	return 0;
}

int lora_st_writer_write(struct lora_st_writer *w, const void *data, size_t len, struct lora_err *err)
{
	if (len > w->expected - w->written)
		return lora_errf(err, "'%s': more tensor data than the header declares", w->path);
	if (lora_write_all(w->tmp.fd, data, len, w->path, err) < 0)
		return -1;
	w->written += len;
	return 0;
}

int lora_st_writer_copy(struct lora_st_writer *w, int in_fd, uint64_t off, uint64_t len,
			struct lora_err *err)
{
	if (len > w->expected - w->written)
		return lora_errf(err, "'%s': more tensor data than the header declares", w->path);
	if (lora_copy_range(w->tmp.fd, in_fd, off, len, w->path, err) < 0)
		return -1;
	w->written += len;
	return 0;
}

int lora_st_writer_commit(struct lora_st_writer *w, struct lora_err *err)
{
	int rc;

	if (w->written != w->expected) {
		lora_errf(err, "'%s': %llu bytes of tensor data written, header declares %llu", w->path,
			  (unsigned long long)w->written, (unsigned long long)w->expected);
		lora_st_writer_abort(w);
		return -1;
	}
	rc = lora_tmp_commit(&w->tmp, err);
	free(w->path);
	w->path = NULL;
	return rc;
}

void lora_st_writer_abort(struct lora_st_writer *w)
{
	lora_tmp_abort(&w->tmp);
	free(w->path);
	w->path = NULL;
}
