/*
 * fpline.c - fingerprint lines of base tensors, and their cache on disk.
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
/* ------------------------------------------------------------ fingerprints */

void lora_merge_line_from_digest(const struct lora_st_tensor *t, const unsigned char md[32], char line[128])
{
	int k = snprintf(line, 128, "%s ", lora_dtype_name(t->dtype));

	for (int d = 0; d < t->ndim && k < 100; d++)
		k += snprintf(line + k, (size_t)(128 - k), "%s%llu", d ? "x" : "",
			      (unsigned long long)t->shape[d]);
	k += snprintf(line + k, (size_t)(128 - k), " ");
	for (int i = 0; i < 32 && k < 126; i++)
		k += snprintf(line + k, (size_t)(128 - k), "%02x", md[i]);
}

int lora_merge_tensor_line(const struct lora_st_tensor *t, char line[128], struct lora_err *err)
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	unsigned char md[32];
	unsigned int mdlen = 0;
	uint64_t n = t->end - t->begin;

	if (!c || !EVP_DigestInit_ex(c, EVP_sha256(), NULL)) {
		EVP_MD_CTX_free(c);
		return lora_errf(err, "out of memory");
	}
	for (uint64_t off = 0; off < n; off += 4u << 20) {
		size_t k = n - off < (4u << 20) ? (size_t)(n - off) : (4u << 20);
		EVP_DigestUpdate(c, t->data + off, k);
		lora_merge_drop_pages(t->data + off, k);
	}
	EVP_DigestFinal_ex(c, md, &mdlen);
	EVP_MD_CTX_free(c);
	lora_merge_line_from_digest(t, md, line);
	return 0;
}

struct lines_job {
	const struct lora_st_tensor *const *ts;
	char *const *lines;
};

static int line_one(void *ctx, size_t i, struct lora_err *err)
{
	struct lines_job *l = ctx;
	return lora_merge_tensor_line(l->ts[i], l->lines[i], err);
}

int lora_merge_tensor_lines(const struct lora_st_tensor *const *ts, char *const *lines, size_t n,
			    struct lora_err *err)
{
	struct lines_job l = { .ts = ts, .lines = lines };
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);

	return lora_par_for(n, cpus > 8 ? 8 : 0, line_one, &l, err);
}

void lora_merge_fingerprint_lines(const char *const *modules, const char *const *lines, size_t n,
				  char out[72])
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	unsigned char md[32];
	unsigned int mdlen = 0;

	EVP_DigestInit_ex(c, EVP_sha256(), NULL);
	for (size_t i = 0; i < n; i++) {
		EVP_DigestUpdate(c, modules[i], strlen(modules[i]));
		EVP_DigestUpdate(c, ".weight ", 8);
		EVP_DigestUpdate(c, lines[i], strlen(lines[i]));
		EVP_DigestUpdate(c, "\n", 1);
	}
	EVP_DigestFinal_ex(c, md, &mdlen);
	EVP_MD_CTX_free(c);
	memcpy(out, "sha256:", 7);
	for (int i = 0; i < 32; i++)
		snprintf(out + 7 + 2 * i, 3, "%02x", md[i]);
}

/* ------------------------------------------------------ fingerprint cache */


/*
 * Hashing the targeted tensors is a large part of a merge's CPU time, and
 * people merge many adapters into one base.  So the lines are cached per
 * shard file, keyed by the file's identity as git's index does it: path,
 * device, inode, size, mtime and ctime to the nanosecond (any write to the
 * file changes ctime).  A cache file is
 *     ${XDG_CACHE_HOME:-~/.cache}/lora/tensor-lines/<sha256 of the key>
 * holding "lora-tensor-lines/1\n" then "<tensor>\t<line>\n" per tensor.
 * Reading it is best effort (a bad or missing file is a miss); so is writing.
 * LORA_NO_CACHE=1 turns it off.
 */
struct lc_shard {
	char *path;               /* the cache file, or NULL: no caching for this shard */
	size_t n;
	char **names, **lines;
	int dirty;
};

struct lora_linecache {
	const struct lora_model *m;
	struct lc_shard *s;
};

/* Append name -> line to a shard's cache; 0, or -1 when out of memory. */
static int lc_append(struct lc_shard *c, const char *name, const char *line)
{
	char **nn = realloc(c->names, (c->n + 1) * sizeof(char *)), **nl;

	if (nn)
		c->names = nn;
	nl = realloc(c->lines, (c->n + 1) * sizeof(char *));
	if (nl)
		c->lines = nl;
	if (!nn || !nl)
		return -1;
	c->names[c->n] = strdup(name);
	c->lines[c->n] = strdup(line);
	if (!c->names[c->n] || !c->lines[c->n]) {
		free(c->names[c->n]);
		free(c->lines[c->n]);
		return -1;
	}
	c->n++;
	return 0;
}

static void lc_load(struct lc_shard *c)
{
	char *text = NULL, *p, *nl;
	size_t len;

	if (lora_read_file(c->path, 64u << 20, &text, &len, NULL) < 0)
		return;
	if (strncmp(text, "lora-tensor-lines/1\n", 20)) {
		free(text);
		return;
	}
	for (p = text + 20; *p; p = nl + 1) {
		char *tab = strchr(p, '\t');
		nl = strchr(p, '\n');
		if (!nl || !tab || tab > nl)
			break;
		*tab = *nl = '\0';
		if (lora_merge_line_valid(tab + 1) && lc_append(c, p, tab + 1) < 0)
			break;
	}
	free(text);
}

struct lora_linecache *lora_linecache_open(const struct lora_model *m, const char *dir)
{
	struct lora_linecache *c = calloc(1, sizeof(*c));

	if (!c || !(c->s = calloc(m->n_shards ? m->n_shards : 1, sizeof(*c->s)))) {
		free(c);
		return NULL;
	}
	c->m = m;
	for (size_t i = 0; dir && i < m->n_shards; i++) {
		char *path = lora_path_join(m->dir, m->shard_names[i]), *real = path ? realpath(path, NULL) : NULL;
		struct stat sb;
		char *key = NULL, hex[65];
		if (real && stat(real, &sb) == 0 && (uint64_t)sb.st_size == m->shards[i]->size &&
		    asprintf(&key, "%s\n%llu %llu %llu %lld.%09ld %lld.%09ld", real,
			     (unsigned long long)sb.st_dev, (unsigned long long)sb.st_ino,
			     (unsigned long long)sb.st_size, (long long)sb.st_mtim.tv_sec,
			     sb.st_mtim.tv_nsec, (long long)sb.st_ctim.tv_sec, sb.st_ctim.tv_nsec) >= 0) {
			lora_sha256_hex(key, strlen(key), hex);
			c->s[i].path = lora_path_join(dir, hex);
			if (c->s[i].path)
				lc_load(&c->s[i]);
		}
		free(key);
		free(real);
		free(path);
	}
	return c;
}

const char *lora_linecache_get(struct lora_linecache *c, const struct lora_model_tensor *mt)
{
	struct lc_shard *s;
	char want[128];
	const struct lora_st_tensor *t = mt->t;

	if (!c)
		return NULL;
	s = &c->s[mt->shard];
	/* The cached line must describe this tensor's dtype and shape. */
	lora_merge_line_from_digest(t, (const unsigned char *)"\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"
					       "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", want);
	for (size_t i = 0; i < s->n; i++)
		if (!strcmp(s->names[i], t->name) &&
		    !strncmp(s->lines[i], want, strlen(want) - 64))
			return s->lines[i];
	return NULL;
}

void lora_linecache_put(struct lora_linecache *c, const struct lora_model_tensor *mt, const char *line)
{
	struct lc_shard *s;

	if (!c || !line[0])
		return;
	s = &c->s[mt->shard];
	if (!s->path || lora_linecache_get(c, mt))
		return;
	if (lc_append(s, mt->t->name, line) == 0)
		s->dirty = 1;
}

void lora_linecache_close(struct lora_linecache *c, int save)
{
	if (!c)
		return;
	for (size_t i = 0; i < c->m->n_shards; i++) {
		struct lc_shard *s = &c->s[i];
		if (save && s->dirty && s->path) {
			struct lora_buf b = LORA_BUF_INIT;
			char *dir = lora_dirname(s->path);
			lora_buf_puts(&b, "lora-tensor-lines/1\n");
			for (size_t k = 0; k < s->n; k++)
				lora_buf_printf(&b, "%s\t%s\n", s->names[k], s->lines[k]);
			if (dir && !b.oom && lora_mkdir_p(dir, 0700, NULL) == 0)
				lora_write_file_atomic(s->path, b.data, b.len, 0600, NULL);
			free(dir);
			lora_buf_free(&b);
		}
		for (size_t k = 0; k < s->n; k++) {
			free(s->names[k]);
			free(s->lines[k]);
		}
		free(s->names);
		free(s->lines);
		free(s->path);
	}
	free(c->s);
	free(c);
}

