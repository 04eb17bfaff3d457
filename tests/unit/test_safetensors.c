/*
 * test_safetensors.c - the reader and writer against Python safetensors.
 *
 * Fixtures from tests/oracle/st_files.py (tests/fixtures/st/):
 *   validate.txt       header recipes + the reference parser's verdict: lora must agree
 *                      (or give the verdict the file notes as a deliberate difference)
 *   py_*.safetensors   files Python wrote; py_files.json their tensors' SHA-256s
 *   writer_recipe.json tensors + metadata; lora's writer must reproduce
 *                      py_recipe.safetensors byte for byte
 *
 * With LORA_ST_OUT=DIR the files lora's writer makes are kept in DIR, so that
 * the oracle script can load them with Python safetensors (writer_check.json).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "libadapter/base/fsutil.h"
#include "libadapter/format/safetensors.h"
#include "tests/t.h"

static char tmpdir[256];

static const char *out_dir(void)
{
	const char *d = getenv("LORA_ST_OUT");
	return d && *d ? d : tmpdir;
}

static char *read_all(const char *path, size_t *len)
{
	struct lora_err err;
	char *p = NULL;
	if (lora_read_file(path, 1u << 26, &p, len, &err) < 0)
		fprintf(stderr, "  %s\n", err.msg);
	return p;
}

static cJSON *read_json_fixture(const char *rel)
{
	char *path = t_fixture(rel), *text;
	size_t len;
	cJSON *j;

	text = read_all(path, &len);
	free(path);
	if (!text)
		return NULL;
	j = cJSON_ParseWithLength(text, len);
	free(text);
	return j;
}

/* ------------------------------------------------ validation vs reference */

/* "\xNN" -> one byte; everything else as is.  Returns the length. */
static size_t unescape(const char *s, unsigned char *out)
{
	size_t n = 0;
	while (*s) {
		unsigned v;
		if (s[0] == '\\' && s[1] == 'x' && sscanf(s + 2, "%2x", &v) == 1) {
			out[n++] = (unsigned char)v;
			s += 4;
		} else {
			out[n++] = (unsigned char)*s++;
		}
	}
	return n;
}

/* Build one validate.txt case; returns malloc'd bytes. */
static unsigned char *build_case(char *opts, const char *header, size_t *len)
{
	unsigned char *h = malloc(strlen(header) + 1);
	size_t hl = unescape(header, h);
	unsigned long long n = hl, data = 0;
	long long cut = -1;
	int has_cut = 0;
	unsigned char *b;

	for (char *tok = strtok(opts, " "); tok; tok = strtok(NULL, " ")) {
		if (sscanf(tok, "len=%llu", &n) == 1 || sscanf(tok, "data=%llu", &data) == 1)
			continue;
		if (sscanf(tok, "cut=%lld", &cut) == 1)
			has_cut = 1;
	}
	b = malloc(8 + hl + data + 1);
	for (int i = 0; i < 8; i++)
		b[i] = (unsigned char)(n >> (8 * i));
	memcpy(b + 8, h, hl);
	for (size_t i = 0; i < data; i++)
		b[8 + hl + i] = (unsigned char)(i % 251);
	*len = 8 + hl + data;
	if (has_cut)
		*len = cut >= 0 ? (size_t)cut : *len - (size_t)(-cut);
	free(h);
	return b;
}

static int write_file(const char *path, const void *p, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	int ok = fd >= 0 && write(fd, p, n) == (ssize_t)n;
	if (fd >= 0)
		close(fd);
	return ok ? 0 : -1;
}

TEST(validation_agrees_with_reference_parser)
{
	char *path = t_fixture("st/validate.txt");
	FILE *f = fopen(path, "r");
	char line[4096];
	int cases = 0, rejects = 0;

	CHECK(f != NULL);
	free(path);
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		char name[128], ref[16], want[16], *bar, *hdr, *opts;
		size_t len;
		unsigned char *bytes;
		struct lora_st *st = NULL;
		struct lora_err err = { 0 };
		int rc, rc_file;
		char fpath[512];

		line[strcspn(line, "\n")] = 0;
		if (line[0] == '#' || !(bar = strstr(line, " | ")))
			continue;
		*bar = 0;
		hdr = bar + 3;
		if (sscanf(line, "%127s %15s %15s", name, ref, want) != 3)
			continue;
		opts = line + strlen(name) + strlen(ref) + strlen(want) + 3;
		bytes = build_case(opts, hdr, &len);
		cases++;

		rc = lora_st_open_mem(bytes, len, name, &st, &err);
		CHECKF((rc == 0) == !strcmp(want, "accept"), "%s: lora %s, expected %s (reference %s): %s", name,
		       rc == 0 ? "accepts" : "rejects", want, ref, rc ? err.msg : "");
		if (rc == 0) {
			CHECK(st != NULL);
			/* what was accepted can be walked without leaving the buffer */
			for (size_t i = 0; st && i < st->n_tensors; i++) {
				const struct lora_st_tensor *t = &st->tensors[i];
				CHECK(t->data >= bytes && t->data + (t->end - t->begin) <= bytes + len);
				CHECK(lora_st_find(st, t->name) == t);
			}
			lora_st_close(st);
		} else {
			rejects++;
			CHECK(st == NULL);
			CHECKF((err.msg[0] >= 'a' && err.msg[0] <= 'z') || err.msg[0] == '\'',
			       "%s: message not lowercase: %s", name, err.msg);
			CHECKF(strstr(err.msg, name) != NULL, "%s: message does not name the file: %s", name,
			       err.msg);
			CHECK(strchr(err.msg, '\n') == NULL);
		}
		/* The same bytes through the mmap path must give the same verdict. */
		snprintf(fpath, sizeof(fpath), "%s/%s.safetensors", tmpdir, name);
		CHECK(write_file(fpath, bytes, len) == 0);
		rc_file = lora_st_open(fpath, &st, &err);
		CHECKF(rc_file == rc, "%s: file verdict %d, memory verdict %d (%s)", name, rc_file, rc, err.msg);
		if (rc_file == 0)
			lora_st_close(st);
		unlink(fpath);
		free(bytes);
	}
	fclose(f);
	CHECK(cases > 60);
	CHECK(rejects > 40);
}

/* ------------------------------------------- files Python safetensors wrote */

static int json_shape_eq(const cJSON *shape, const struct lora_st_tensor *t)
{
	int i = 0;
	const cJSON *d;
	cJSON_ArrayForEach(d, shape) {
		if (i >= t->ndim || (uint64_t)d->valuedouble != t->shape[i])
			return 0;
		i++;
	}
	return i == t->ndim;
}

/* Rewrite st with lora's writer: same tensor order (data order), same metadata order. */
static int rewrite(const struct lora_st *st, const char *path, size_t chunk, struct lora_err *err)
{
	struct lora_st_spec *specs = calloc(st->n_tensors + 1, sizeof(*specs));
	struct lora_st_writer w;
	int rc = -1;

	for (size_t i = 0; i < st->n_tensors; i++) {
		specs[i].name = st->tensors[i].name;
		specs[i].dtype = st->tensors[i].dtype;
		specs[i].ndim = st->tensors[i].ndim;
		memcpy(specs[i].shape, st->tensors[i].shape, sizeof(specs[i].shape));
	}
	if (lora_st_writer_open(&w, path, specs, st->n_tensors, (const char *const *)st->meta_keys,
				(const char *const *)st->meta_vals, st->n_meta, err) < 0)
		goto out;
	for (size_t i = 0; i < st->n_tensors; i++) {
		const struct lora_st_tensor *t = &st->tensors[i];
		uint64_t n = t->end - t->begin;
		/* stream in small pieces: the writer must not care how data is split */
		for (uint64_t off = 0; off < n; off += chunk) {
			size_t k = n - off < chunk ? (size_t)(n - off) : chunk;
			if (lora_st_writer_write(&w, t->data + off, k, err) < 0) {
				lora_st_writer_abort(&w);
				goto out;
			}
		}
	}
	rc = lora_st_writer_commit(&w, err);
out:
	free(specs);
	return rc;
}

static int same_file_bytes(const char *a, const char *b)
{
	size_t la, lb;
	char *pa = read_all(a, &la), *pb = read_all(b, &lb);
	int same = pa && pb && la == lb && !memcmp(pa, pb, la);
	if (pa && pb && !same) {
		size_t i = 0;
		while (i < la && i < lb && pa[i] == pb[i])
			i++;
		fprintf(stderr, "  %s and %s differ at byte %zu (sizes %zu, %zu)\n", a, b, i, la, lb);
	}
	free(pa);
	free(pb);
	return same;
}

TEST(reads_python_files_with_identical_bytes_and_rewrites_them_identically)
{
	cJSON *j = read_json_fixture("st/py_files.json"), *file;
	int files = 0, tensors = 0;

	CHECK(j != NULL);
	if (!j)
		return;
	cJSON_ArrayForEach(file, cJSON_GetObjectItem(j, "files")) {
		char *path;
		struct lora_st *st = NULL;
		struct lora_err err = { 0 };
		const cJSON *t, *kv, *ts = cJSON_GetObjectItem(file, "tensors"), *meta = cJSON_GetObjectItem(file, "metadata");
		size_t k = 0;
		char rel[512], outp[1024];

		snprintf(rel, sizeof(rel), "st/%s", file->string);
		path = t_fixture(rel);
		files++;
		if (lora_st_open(path, &st, &err) < 0) {
			CHECKF(0, "%s: %s", rel, err.msg);
			free(path);
			continue;
		}
		CHECKF(st->n_tensors == (size_t)cJSON_GetArraySize(ts), "%s: %zu tensors, python %d", rel,
		       st->n_tensors, cJSON_GetArraySize(ts));
		cJSON_ArrayForEach(t, ts) {
			const char *name = cJSON_GetObjectItem(t, "name")->valuestring;
			const struct lora_st_tensor *x = lora_st_find(st, name);
			char hex[65];
			tensors++;
			CHECKF(x != NULL, "%s: tensor '%s' not found", rel, name);
			if (!x)
				continue;
			CHECKF(!strcmp(lora_dtype_name(x->dtype), cJSON_GetObjectItem(t, "dtype")->valuestring),
			       "%s: %s dtype %s", rel, name, lora_dtype_name(x->dtype));
			CHECKF(json_shape_eq(cJSON_GetObjectItem(t, "shape"), x), "%s: %s shape differs", rel, name);
			CHECK(x->begin == (uint64_t)cJSON_GetArrayItem(cJSON_GetObjectItem(t, "data_offsets"), 0)->valuedouble);
			CHECK(x->end == (uint64_t)cJSON_GetArrayItem(cJSON_GetObjectItem(t, "data_offsets"), 1)->valuedouble);
			lora_sha256_hex(x->data, x->end - x->begin, hex);
			CHECKF(!strcmp(hex, cJSON_GetObjectItem(t, "sha256")->valuestring), "%s: %s bytes differ", rel,
			       name);
			CHECK(x == &st->tensors[k]);  /* tensors[] is in data order */
			k++;
		}
		/* metadata: the same pairs, in the file's order */
		CHECKF(st->n_meta == (size_t)cJSON_GetArraySize(meta), "%s: %zu metadata keys, python %d", rel,
		       st->n_meta, cJSON_GetArraySize(meta));
		k = 0;
		cJSON_ArrayForEach(kv, meta) {
			const char *key = cJSON_GetArrayItem(kv, 0)->valuestring, *val = cJSON_GetArrayItem(kv, 1)->valuestring;
			const char *got = lora_st_meta(st, key);
			CHECKF(got && !strcmp(got, val), "%s: metadata '%s' = '%s', python '%s'", rel, key,
			       got ? got : "(none)", val);
			CHECK(k < st->n_meta && !strcmp(st->meta_keys[k], key));
			k++;
		}
		CHECK(lora_st_meta(st, "no such key") == NULL);
		/* lora's writer, given the same tensors and metadata, writes the same bytes */
		snprintf(outp, sizeof(outp), "%s/lora_%s", out_dir(), file->string + 3);
		CHECKF(rewrite(st, outp, 3, &err) == 0, "%s: %s", rel, err.msg);
		CHECKF(same_file_bytes(outp, path), "%s: lora's rewrite differs from Python's file", rel);
		lora_st_close(st);
		free(path);
	}
	cJSON_Delete(j);
	CHECK(files == 3);
	CHECK(tensors >= 25);
}

TEST(writer_reproduces_python_file_from_recipe)
{
	cJSON *j = read_json_fixture("st/writer_recipe.json"), *t, *kv;
	struct lora_st_spec specs[64];
	const char *mk[16], *mv[16];
	unsigned char *data[64];
	size_t dlen[64], n = 0, nm = 0;
	struct lora_st_writer w;
	struct lora_err err = { 0 };
	struct lora_st *st = NULL;
	char outp[1024], *pyfile;

	CHECK(j != NULL);
	if (!j)
		return;
	memset(specs, 0, sizeof(specs));
	cJSON_ArrayForEach(t, cJSON_GetObjectItem(j, "tensors")) {
		const cJSON *d;
		const char *hex = cJSON_GetObjectItem(t, "hex")->valuestring;
		specs[n].name = cJSON_GetObjectItem(t, "name")->valuestring;
		specs[n].dtype = lora_dtype_parse(cJSON_GetObjectItem(t, "dtype")->valuestring, -1);
		cJSON_ArrayForEach(d, cJSON_GetObjectItem(t, "shape"))
			specs[n].shape[specs[n].ndim++] = (uint64_t)d->valuedouble;
		dlen[n] = strlen(hex) / 2;
		data[n] = malloc(dlen[n] + 1);
		for (size_t i = 0; i < dlen[n]; i++) {
			unsigned v;
			sscanf(hex + 2 * i, "%2x", &v);
			data[n][i] = (unsigned char)v;
		}
		n++;
	}
	cJSON_ArrayForEach(kv, cJSON_GetObjectItem(j, "metadata")) {
		mk[nm] = cJSON_GetArrayItem(kv, 0)->valuestring;
		mv[nm++] = cJSON_GetArrayItem(kv, 1)->valuestring;
	}
	snprintf(outp, sizeof(outp), "%s/lora_recipe.safetensors", out_dir());
	CHECKF(lora_st_writer_open(&w, outp, specs, n, mk, mv, nm, &err) == 0, "%s", err.msg);
	CHECK(w.header_len % 8 == 0);
	for (size_t i = 0; i < n; i++)
		CHECKF(lora_st_writer_write(&w, data[i], dlen[i], &err) == 0, "%s", err.msg);
	CHECKF(lora_st_writer_commit(&w, &err) == 0, "%s", err.msg);

	pyfile = t_fixture("st/py_recipe.safetensors");
	CHECKF(same_file_bytes(outp, pyfile), "lora's file differs from the one Python wrote from the same recipe");
	free(pyfile);

	/* read back with lora's reader: identical tensors and metadata */
	CHECKF(lora_st_open(outp, &st, &err) == 0, "%s", err.msg);
	if (st) {
		CHECK(st->n_tensors == n && st->n_meta == nm);
		CHECK(st->data_start % 8 == 0);
		for (size_t i = 0; i < n; i++) {
			const struct lora_st_tensor *x = lora_st_find(st, specs[i].name);
			CHECKF(x && x->dtype == specs[i].dtype && x->ndim == specs[i].ndim &&
				       x->end - x->begin == dlen[i] && !memcmp(x->data, data[i], dlen[i]),
			       "tensor '%s' differs after the round trip", specs[i].name);
		}
		for (size_t i = 0; i < nm; i++)
			CHECKF(lora_st_meta(st, mk[i]) && !strcmp(lora_st_meta(st, mk[i]), mv[i]), "metadata %s", mk[i]);
		lora_st_close(st);
	}
	for (size_t i = 0; i < n; i++)
		free(data[i]);
	cJSON_Delete(j);
}

/* ------------------------------------------------------------ the writer */

static int count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;
	while (d && (e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			n++;
	if (d)
		closedir(d);
	return n;
}

TEST(writer_is_atomic_and_counts_bytes)
{
	char dir[512], path[600];
	struct lora_st_spec s = { "w", LORA_DT_F32, 2, { 2, 3 } };
	struct lora_st_writer w;
	struct lora_err err = { 0 };
	float v[6] = { 1, 2, 3, 4, 5, 6 };

	snprintf(dir, sizeof(dir), "%s/atomic", tmpdir);
	CHECK(mkdir(dir, 0755) == 0);
	snprintf(path, sizeof(path), "%s/out.safetensors", dir);

	/* too few bytes: commit fails, nothing is left behind */
	CHECK(lora_st_writer_open(&w, path, &s, 1, NULL, NULL, 0, &err) == 0);
	CHECK(lora_st_writer_write(&w, v, 20, &err) == 0);
	CHECK(lora_st_writer_commit(&w, &err) == -1);
	CHECKF(strstr(err.msg, "20 bytes") != NULL, "%s", err.msg);
	CHECK(count_entries(dir) == 0);

	/* too many bytes: refused at write time */
	CHECK(lora_st_writer_open(&w, path, &s, 1, NULL, NULL, 0, &err) == 0);
	CHECK(lora_st_writer_write(&w, v, 24, &err) == 0);
	CHECK(lora_st_writer_write(&w, v, 1, &err) == -1);
	lora_st_writer_abort(&w);
	CHECK(count_entries(dir) == 0);

	/* an aborted rewrite keeps the old file intact */
	CHECK(lora_st_writer_open(&w, path, &s, 1, NULL, NULL, 0, &err) == 0);
	CHECK(lora_st_writer_write(&w, v, 24, &err) == 0);
	CHECK(lora_st_writer_commit(&w, &err) == 0);
	CHECK(count_entries(dir) == 1);
	CHECK(lora_st_writer_open(&w, path, &s, 1, NULL, NULL, 0, &err) == 0);
	CHECK(count_entries(dir) == 2);  /* the temporary file, beside the target */
	lora_st_writer_abort(&w);
	CHECK(count_entries(dir) == 1);
	{
		struct lora_st *st;
		float *f;
		CHECK(lora_st_open(path, &st, &err) == 0);
		f = lora_st_to_f32(&st->tensors[0], &err);
		CHECK(f && f[5] == 6.0f);
		free(f);
		lora_st_close(st);
	}

	/* copy from another file's bytes */
	{
		int fd = open(path, O_RDONLY);
		char p2[700];
		struct lora_st *st;
		snprintf(p2, sizeof(p2), "%s/copy.safetensors", dir);
		CHECK(lora_st_writer_open(&w, p2, &s, 1, NULL, NULL, 0, &err) == 0);
		CHECK(lora_st_writer_copy(&w, fd, 88, 0, &err) == 0);  /* nothing, anywhere */
		/* the first file's data starts after its 8 + N header bytes */
		CHECK(lora_st_open(path, &st, &err) == 0);
		CHECK(lora_st_writer_copy(&w, fd, st->data_start, 24, &err) == 0);
		CHECK(lora_st_writer_commit(&w, &err) == 0);
		lora_st_close(st);
		close(fd);
		CHECK(same_file_bytes(p2, path));
	}
}

TEST(writer_refuses_bad_specs)
{
	unsigned char *h = NULL;
	size_t hl;
	uint64_t dl;
	struct lora_err err = { 0 };
	struct lora_st_spec bad[] = {
		{ "__metadata__", LORA_DT_F32, 1, { 1 } },
		{ "x", LORA_DT_INVALID, 1, { 1 } },
		{ "x", LORA_DT_U8, 3, { 1ull << 32, 1ull << 32, 2 } },    /* product overflows */
		{ "x", LORA_DT_F64, 1, { 1ull << 62 } },                  /* bytes overflow */
		{ "x", LORA_DT_F4, 1, { 3 } },                            /* 12 bits */
		{ "x", LORA_DT_U8, LORA_ST_MAX_DIMS + 1, { 1 } },
		{ "x", LORA_DT_U8, -1, { 1 } },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err.msg[0] = 0;
		CHECKF(lora_st_build_header(&bad[i], 1, NULL, NULL, 0, &h, &hl, &dl, &err) == -1, "case %zu", i);
		CHECKF(err.msg[0] != 0, "case %zu has no message", i);
	}
	/* a 0-d tensor is one element; an empty one no bytes; F4 packs two per byte */
	{
		struct lora_st_spec ok[] = { { "s", LORA_DT_F64, 0, { 0 } }, { "e", LORA_DT_BF16, 2, { 5, 0 } },
					     { "q", LORA_DT_F4, 1, { 6 } } };
		struct lora_st *st;
		unsigned char *buf;
		CHECK(lora_st_build_header(ok, 3, NULL, NULL, 0, &h, &hl, &dl, &err) == 0);
		CHECK(dl == 8 + 0 + 3);
		CHECK(hl % 8 == 0);
		buf = calloc(1, hl + dl);
		memcpy(buf, h, hl);
		CHECKF(lora_st_open_mem(buf, hl + dl, "built", &st, &err) == 0, "%s", err.msg);
		if (st) {
			CHECK(lora_st_find(st, "s")->ndim == 0 && lora_st_find(st, "s")->nelem == 1);
			CHECK(lora_st_find(st, "e")->nelem == 0);
			lora_st_close(st);
		}
		free(buf);
		free(h);
	}
}

TEST(to_f32_converts_float_tensors_only)
{
	/* bf16 [1.0, -2.0], f16 [0.5, 65504] ; U8 [7] */
	static const unsigned char data[] = { 0x80, 0x3f, 0x00, 0xc0, 0x00, 0x38, 0xff, 0x7b, 7 };
	struct lora_st_spec s[] = { { "b", LORA_DT_BF16, 1, { 2 } }, { "h", LORA_DT_F16, 1, { 2 } },
				    { "u", LORA_DT_U8, 1, { 1 } } };
	unsigned char *h, *buf;
	size_t hl;
	uint64_t dl;
	struct lora_err err = { 0 };
	struct lora_st *st = NULL;
	float *f;

	CHECK(lora_st_build_header(s, 3, NULL, NULL, 0, &h, &hl, &dl, &err) == 0);
	CHECK(dl == sizeof(data));
	buf = malloc(hl + dl);
	memcpy(buf, h, hl);
	memcpy(buf + hl, data, dl);
	CHECK(lora_st_open_mem(buf, hl + dl, "mem", &st, &err) == 0);
	if (st) {
		f = lora_st_to_f32(lora_st_find(st, "b"), &err);
		CHECK(f && f[0] == 1.0f && f[1] == -2.0f);
		free(f);
		f = lora_st_to_f32(lora_st_find(st, "h"), &err);
		CHECK(f && f[0] == 0.5f && f[1] == 65504.0f);
		free(f);
		CHECK(lora_st_to_f32(lora_st_find(st, "u"), &err) == NULL);
		CHECKF(strstr(err.msg, "'u'") != NULL, "%s", err.msg);
		CHECK(lora_st_find(st, "nope") == NULL);
		lora_st_close(st);
	}
	free(buf);
	free(h);
}

TEST(utf8_validator)
{
	struct { const char *s; int ok; } c[] = {
		{ "plain", 1 }, { "h\xc3\xa9", 1 }, { "\xe2\x9c\x93", 1 }, { "\xf0\x9f\x98\x80", 1 },
		{ "\xf4\x8f\xbf\xbf", 1 },  /* U+10FFFF */
		{ "\xf4\x90\x80\x80", 0 },  /* past U+10FFFF */
		{ "\xc0\xaf", 0 }, { "\xe0\x80\xaf", 0 }, { "\xf0\x80\x80\xaf", 0 },  /* overlong */
		{ "\xed\xa0\x80", 0 }, { "\xed\xbf\xbf", 0 },  /* surrogates */
		{ "\x80", 0 }, { "\xff", 0 }, { "\xc3", 0 }, { "\xe2\x9c", 0 }, { "a\xc3(", 0 },
		{ "\xf8\x88\x80\x80\x80", 0 },
	};
	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++)
		CHECKF(lora_utf8_valid((const unsigned char *)c[i].s, strlen(c[i].s)) == c[i].ok, "case %zu", i);
	CHECK(lora_utf8_valid((const unsigned char *)"a\0b", 3) == 1);
}

TEST(open_refuses_what_is_not_a_file)
{
	struct lora_st *st = (struct lora_st *)1;
	struct lora_err err = { 0 };

	CHECK(lora_st_open(tmpdir, &st, &err) == -1 && st == NULL);
	CHECK(lora_st_open("/nonexistent/x.safetensors", &st, &err) == -1);
	CHECKF(strstr(err.msg, "/nonexistent/x.safetensors") != NULL, "%s", err.msg);
}

int main(void)
{
	const char *base = getenv("TMPDIR");
	snprintf(tmpdir, sizeof(tmpdir), "%s/lora-st.XXXXXX", base && *base ? base : "/tmp");
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	RUN(validation_agrees_with_reference_parser);
	RUN(reads_python_files_with_identical_bytes_and_rewrites_them_identically);
	RUN(writer_reproduces_python_file_from_recipe);
	RUN(writer_is_atomic_and_counts_bytes);
	RUN(writer_refuses_bad_specs);
	RUN(to_f32_converts_float_tensors_only);
	RUN(utf8_validator);
	RUN(open_refuses_what_is_not_a_file);
	{
		struct lora_err err;
		lora_rm_rf(tmpdir, &err);
	}
	return t_done();
}
