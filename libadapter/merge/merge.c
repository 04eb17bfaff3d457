/*
 * merge.c - merging LoRA adapters into a base model folder (see merge.h).
 *
 * Sections: adapter sets; the plan (which base tensors change, and how);
 * the compute engine (row blocks, sgemm, one rounding); records (the
 * lora-merge.json file and the shard metadata); shard headers; lora_merge().
 */
#define _GNU_SOURCE
#include "libadapter/merge/merge.h"

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
#include "libadapter/merge/swap.h"
#define BLOCK_ELEMS (1u << 17)   /* elements per row block: 512 KB of fp32, stays in L2 */

/* ------------------------------------------------------------ adapter sets */

int lora_merge_parse_arg(const char *arg, char **spec, double *weight, struct lora_err *err)
{
	const char *at = strrchr(arg, '@');
	size_t n = strlen(arg);

	*spec = NULL;
	*weight = 1.0;
	if (at && at != arg && at[1]) {
		char *end;
		double w;
		errno = 0;
		w = strtod(at + 1, &end);
		if (!*end && !errno && isfinite(w)) {
			*weight = w;
			n = (size_t)(at - arg);
		}
	}
	if (n == 0)
		return lora_errc(err, LORA_EUSAGE, "empty adapter reference '%s'", arg);
	*spec = strndup(arg, n);
	if (!*spec)
		return lora_errf(err, "out of memory");
	return 0;
}

/* "sha256:<hex>" of a PEFT folder: of the two lines "<file> <sha256>\n" for its files. */
static int folder_digest(const char *dir, char **out, struct lora_err *err)
{
	static const char *const files[] = { "adapter_config.json", "adapter_model.safetensors" };
	struct lora_buf b = LORA_BUF_INIT;
	char hex[65];

	for (size_t i = 0; i < 2; i++) {
		char *p = lora_path_join(dir, files[i]);
		if (!p) {
			lora_buf_free(&b);
			return lora_errf(err, "out of memory");
		}
		if (lora_sha256_file(p, hex, NULL, err) < 0) {
			free(p);
			lora_buf_free(&b);
			return -1;
		}
		free(p);
		lora_buf_printf(&b, "%s %s\n", files[i], hex);
	}
	if (b.oom) {
		lora_buf_free(&b);
		return lora_errf(err, "out of memory");
	}
	lora_sha256_hex(b.data, b.len, hex);
	lora_buf_free(&b);
	if (asprintf(out, "sha256:%s", hex) < 0) {
		*out = NULL;
		return lora_errf(err, "out of memory");
	}
	return 0;
}

/*
 * Open a PEFT folder, a .lora package or a store ref (lora_adapter_open), and
 * decide what the merge records: the ref (the absolute path of a folder or a
 * file, else the resolved NAME:TAG) and a digest (the store's manifest
 * digest; for a folder, folder_digest(); for a file, its SHA-256).
 */
static int adapter_open(const char *store_dir, const char *spec, struct lora_merge_adapter *a,
			struct lora_err *err)
{
	struct lora_adapter_src *src = calloc(1, sizeof(*src));
	int is_dir = lora_is_dir(spec), is_file = !is_dir && lora_is_file(spec);
	char hex[65];

	if (!src)
		return lora_errf(err, "out of memory");
	if (!is_dir && !is_file && !store_dir) {
		free(src);
		return lora_errf(err, "cannot open adapter '%s': no such folder or file", spec);
	}
	if (lora_adapter_open(store_dir, spec, src, err) < 0) {
		free(src);
		return -1;
	}
	a->src = src;
	a->peft = src->peft;
	if (src->base_fingerprint && !(a->base_fingerprint = strdup(src->base_fingerprint)))
		return lora_errf(err, "out of memory");
	if (!is_dir && !is_file) {
		a->ref = strdup(src->ref);
		a->digest = strdup(src->digest);
		return a->ref && a->digest ? 0 : lora_errf(err, "out of memory");
	}
	if (!(a->ref = realpath(spec, NULL)))
		return lora_errf(err, "cannot resolve '%s': %s", spec, strerror(errno));
	if (src->digest[0])
		return (a->digest = strdup(src->digest)) ? 0 : lora_errf(err, "out of memory");
	if (is_dir)
		return folder_digest(a->ref, &a->digest, err);
	if (lora_sha256_file(a->ref, hex, NULL, err) < 0)
		return -1;
	return asprintf(&a->digest, "sha256:%s", hex) < 0 ? lora_errf(err, "out of memory") : 0;
}

static void adapter_close(struct lora_merge_adapter *a)
{
	if (a->src) {
		lora_adapter_close(a->src);   /* closes a->peft too */
		free(a->src);
	} else if (a->peft) {
		lora_peft_close(a->peft);
	}
	free(a->ref);
	free(a->digest);
	free(a->base_fingerprint);
	memset(a, 0, sizeof(*a));
}

int lora_merge_set_add(struct lora_merge_set *set, const char *store_dir, const char *spec,
		       double weight, struct lora_err *err)
{
	struct lora_merge_adapter a = { 0 }, *na;

	if (!isfinite(weight))
		return lora_errc(err, LORA_EUSAGE, "weight of '%s' is not a finite number", spec);
	na = realloc(set->a, (set->n + 1) * sizeof(*na));
	if (!na)
		return lora_errf(err, "out of memory");
	set->a = na;
	a.weight = weight;
	if (adapter_open(store_dir, spec, &a, err) < 0) {
		adapter_close(&a);
		return -1;
	}
	set->a[set->n++] = a;
	return 0;
}

void lora_merge_set_free(struct lora_merge_set *set)
{
	for (size_t i = 0; i < set->n; i++)
		adapter_close(&set->a[i]);
	free(set->a);
	set->a = NULL;
	set->n = 0;
}

/* ------------------------------------------------------------------ dtypes */

int lora_merge_dtype_parse(const char *s, enum lora_dtype *out)
{
	if (!strcmp(s, "auto"))
		*out = LORA_DT_INVALID;
	else if (!strcmp(s, "bf16") || !strcmp(s, "bfloat16"))
		*out = LORA_DT_BF16;
	else if (!strcmp(s, "fp16") || !strcmp(s, "float16") || !strcmp(s, "f16"))
		*out = LORA_DT_F16;
	else if (!strcmp(s, "fp32") || !strcmp(s, "float32") || !strcmp(s, "f32"))
		*out = LORA_DT_F32;
	else
		return -1;
	return 0;
}

const char *lora_merge_dtype_label(enum lora_dtype dt)
{
	switch (dt) {
	case LORA_DT_BF16: return "bf16";
	case LORA_DT_F16: return "fp16";
	case LORA_DT_F32: return "fp32";
	default: return "auto";
	}
}

static int is_merge_float(enum lora_dtype dt)
{
	return dt == LORA_DT_F16 || dt == LORA_DT_BF16 || dt == LORA_DT_F32;
}

enum lora_dtype lora_merge_out_dtype(enum lora_dtype dt, enum lora_dtype chosen)
{
	return chosen != LORA_DT_INVALID && is_merge_float(dt) ? chosen : dt;
}

/* Pages of a read-only file mapping: dropping them costs a page-cache refault at most. */
void lora_merge_drop_pages(const void *p, size_t n)
{
	long pg = sysconf(_SC_PAGESIZE);   /* a libc read, no lazy static: threads call this */
	uintptr_t a, b;

	a = ((uintptr_t)p + (uintptr_t)pg - 1) & ~(uintptr_t)(pg - 1);
	b = ((uintptr_t)p + n) & ~(uintptr_t)(pg - 1);
	if (b > a)
		madvise((void *)a, b - a, MADV_DONTNEED);
}

/* -------------------------------------------------------------------- plan */

static int target_cmp(const void *a, const void *b)
{
	return strcmp(((const struct lora_merge_target *)a)->module,
		      ((const struct lora_merge_target *)b)->module);
}

struct lora_merge_target *lora_merge_plan_find(const struct lora_merge_plan *p, const char *module)
{
	struct lora_merge_target key = { .module = (char *)module };

	if (!p->n)
		return NULL;
	return bsearch(&key, p->t, p->n, sizeof(*p->t), target_cmp);
}

static struct lora_merge_target *plan_get(struct lora_merge_plan *p, const char *module,
					  const struct lora_st_tensor *bt, struct lora_err *err)
{
	struct lora_merge_target *t = lora_merge_plan_find(p, module), *nt;
	size_t at = 0;

	if (t)
		return t;
	while (at < p->n && strcmp(p->t[at].module, module) < 0)
		at++;
	nt = realloc(p->t, (p->n + 1) * sizeof(*nt));
	if (!nt) {
		lora_errf(err, "out of memory");
		return NULL;
	}
	p->t = nt;
	memmove(&p->t[at + 1], &p->t[at], (p->n - at) * sizeof(*nt));
	t = &p->t[at];
	memset(t, 0, sizeof(*t));
	p->n++;
	t->module = strdup(module);
	t->name = t->module ? malloc(strlen(module) + 8) : NULL;
	if (!t->name) {
		lora_errf(err, "out of memory");
		return NULL;   /* freed with the plan */
	}
	sprintf(t->name, "%s.weight", module);
	t->rows = bt->shape[0];
	t->cols = bt->shape[1];
	return t;
}

static void fmt_shape(const struct lora_st_tensor *t, char *buf, size_t n)
{
	size_t k = 0;

	k += (size_t)snprintf(buf + k, n - k, "[");
	for (int d = 0; d < t->ndim && k < n; d++)
		k += (size_t)snprintf(buf + k, n - k, "%s%llu", d ? ", " : "",
				      (unsigned long long)t->shape[d]);
	if (k < n)
		snprintf(buf + k, n - k, "]");
}

static int check_module(const struct lora_merge_adapter *a, const struct lora_peft_module *mod,
			const struct lora_model *m, const char *label, const char *name,
			const struct lora_st_tensor **out, struct lora_err *err)
{
	const struct lora_model_tensor *mt = lora_model_find(m, name);
	const struct lora_st_tensor *T, *A = mod->A, *B = mod->B;
	uint64_t r, in, outd, e0, e1;
	char s1[96], s2[96];
	int fifo = a->peft->cfg.fan_in_fan_out;

	if (!mt)
		return lora_errf(err, "adapter '%s' targets '%s', which base '%s' does not have",
				 a->ref, mod->name, label);
	T = mt->t;
	if (!A || !B || A->ndim != 2 || B->ndim != 2 || A->shape[0] != B->shape[1] ||
	    !lora_dtype_is_float(A->dtype) || !lora_dtype_is_float(B->dtype) ||
	    A->dtype == LORA_DT_F64 || B->dtype == LORA_DT_F64)
		return lora_errf(err, "adapter '%s': module '%s' has malformed lora_A/lora_B tensors",
				 a->ref, mod->name);
	r = A->shape[0];
	in = A->shape[1];
	outd = B->shape[0];
	if (r == 0 || r > 65536)
		return lora_errf(err, "adapter '%s': module '%s' has rank %llu", a->ref, mod->name,
				 (unsigned long long)r);
	if (T->ndim != 2 || !is_merge_float(T->dtype)) {
		fmt_shape(T, s1, sizeof(s1));
		return lora_errf(err, "adapter '%s' targets '%s', but base tensor '%s' is %s %s, not a "
				      "2-d F16/BF16/F32 weight", a->ref, mod->name, name,
				 lora_dtype_name(T->dtype), s1);
	}
	e0 = fifo ? in : outd;
	e1 = fifo ? outd : in;
	if (T->shape[0] != e0 || T->shape[1] != e1) {
		fmt_shape(T, s1, sizeof(s1));
		snprintf(s2, sizeof(s2), "[%llu, %llu]", (unsigned long long)e0, (unsigned long long)e1);
		return lora_errf(err, "shape mismatch: adapter '%s' makes a %s update for '%s', but "
				      "base '%s' has it as %s", a->ref, s2, name, label, s1);
	}
	if (T->shape[0] > INT_MAX || T->shape[1] > INT_MAX)
		return lora_errf(err, "tensor '%s' is too large for BLAS", name);
	*out = T;
	return 0;
}

int lora_merge_plan_add(struct lora_merge_plan *p, const struct lora_model *m, const char *label,
			const struct lora_merge_set *set, double sign, struct lora_err *err)
{
	for (size_t i = 0; i < set->n; i++) {
		const struct lora_merge_adapter *a = &set->a[i];
		const struct lora_peft *P = a->peft;

		if (P->n_extra)
			return lora_errf(err, "adapter '%s' holds %zu tensors besides lora_A/lora_B "
					      "(modules_to_save or biases, e.g. '%s'); merge does not "
					      "support them", a->ref, P->n_extra, P->extra[0]->name);
		if (P->n_modules == 0)
			return lora_errf(err, "adapter '%s' has no LoRA modules", a->ref);
		for (size_t j = 0; j < P->n_modules; j++) {
			const struct lora_peft_module *mod = &P->modules[j];
			const struct lora_st_tensor *T = NULL;
			struct lora_merge_target *t;
			struct lora_merge_term *nt;
			char *name = malloc(strlen(mod->name) + 8);

			if (!name)
				return lora_errf(err, "out of memory");
			sprintf(name, "%s.weight", mod->name);
			if (check_module(a, mod, m, label, name, &T, err) < 0) {
				free(name);
				return -1;
			}
			free(name);
			if (!(t = plan_get(p, mod->name, T, err)))
				return -1;
			nt = realloc(t->terms, (t->n_terms + 1) * sizeof(*nt));
			if (!nt)
				return lora_errf(err, "out of memory");
			t->terms = nt;
			nt[t->n_terms].mod = mod;
			nt[t->n_terms].coef = sign * a->weight * mod->scale;
			nt[t->n_terms].fifo = P->cfg.fan_in_fan_out;
			t->n_terms++;
		}
	}
	return 0;
}

void lora_merge_plan_free(struct lora_merge_plan *p)
{
	for (size_t i = 0; i < p->n; i++) {
		free(p->t[i].module);
		free(p->t[i].name);
		free(p->t[i].terms);
	}
	free(p->t);
	p->t = NULL;
	p->n = 0;
}

/* ------------------------------------------------------------ fingerprints */

static void line_from_digest(const struct lora_st_tensor *t, const unsigned char md[32], char line[128])
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
	line_from_digest(t, md, line);
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

static int valid_line(const char *s);

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

static char *cache_dir(void)
{
	const char *x = getenv("XDG_CACHE_HOME"), *h = getenv("HOME"), *off = getenv("LORA_NO_CACHE");
	char *d = NULL;

	if (off && *off && strcmp(off, "0"))
		return NULL;
	if (x && *x == '/')
		return asprintf(&d, "%s/lora/tensor-lines", x) < 0 ? NULL : d;
	if (h && *h == '/')
		return asprintf(&d, "%s/.cache/lora/tensor-lines", h) < 0 ? NULL : d;
	return NULL;
}

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
		if (valid_line(tab + 1) && lc_append(c, p, tab + 1) < 0)
			break;
	}
	free(text);
}

struct lora_linecache *lora_linecache_open(const struct lora_model *m)
{
	struct lora_linecache *c = calloc(1, sizeof(*c));
	char *dir = cache_dir();

	if (!c || !(c->s = calloc(m->n_shards ? m->n_shards : 1, sizeof(*c->s)))) {
		free(c);
		free(dir);
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
	free(dir);
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
	line_from_digest(t, (const unsigned char *)"\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"
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
		if (gpu->init(&e->cuda, msg, sizeof(msg)) < 0) {
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

/* ----------------------------------------------------------------- records */

void lora_merge_fmt_double(double v, char out[32])
{
	for (int prec = 15; prec <= 17; prec++) {
		snprintf(out, 32, "%.*g", prec, v);
		if (strtod(out, NULL) == v)
			return;
	}
}

int lora_merge_record_set_adapters(struct lora_merge_record *r, const struct lora_merge_set *set,
				   struct lora_err *err)
{
	r->adapters = calloc(set->n ? set->n : 1, sizeof(*r->adapters));
	if (!r->adapters)
		return lora_errf(err, "out of memory");
	r->n_adapters = set->n;
	for (size_t i = 0; i < set->n; i++) {
		r->adapters[i].ref = strdup(set->a[i].ref);
		r->adapters[i].digest = strdup(set->a[i].digest);
		r->adapters[i].weight = set->a[i].weight;
		if (!r->adapters[i].ref || !r->adapters[i].digest)
			return lora_errf(err, "out of memory");
	}
	return 0;
}

int lora_merge_record_set_tensors(struct lora_merge_record *r, const struct lora_merge_plan *p,
				  struct lora_err *err)
{
	r->modules = calloc(p->n ? p->n : 1, sizeof(char *));
	r->lines = calloc(p->n ? p->n : 1, sizeof(char *));
	if (!r->modules || !r->lines)
		return lora_errf(err, "out of memory");
	r->n_tensors = p->n;
	for (size_t i = 0; i < p->n; i++) {
		if (!p->t[i].line[0])
			return lora_errf(err, "internal error: no fingerprint line for '%s'", p->t[i].name);
		r->modules[i] = strdup(p->t[i].module);
		r->lines[i] = strdup(p->t[i].line);
		if (!r->modules[i] || !r->lines[i])
			return lora_errf(err, "out of memory");
	}
	lora_merge_fingerprint_lines((const char *const *)r->modules, (const char *const *)r->lines,
				     r->n_tensors, r->fingerprint);
	return 0;
}

static void json_lines(struct lora_buf *b, const char *key, size_t n, char *const *mods,
		       char *const *lines)
{
	lora_buf_printf(b, ",\n  \"%s\": {", key);
	for (size_t i = 0; i < n; i++) {
		lora_buf_printf(b, "%s\n    ", i ? "," : "");
		/* Module names come from safetensors keys: valid UTF-8, escaped as JSON. */
		{
			struct lora_buf k = LORA_BUF_INIT;
			lora_buf_printf(&k, "%s.weight", mods[i]);
			lora_buf_json_str(b, k.oom ? "" : k.data);
			if (k.oom)
				b->oom = 1;
			lora_buf_free(&k);
		}
		lora_buf_puts(b, ": ");
		lora_buf_json_str(b, lines[i]);
	}
	lora_buf_printf(b, "%s}", n ? "\n  " : "");
}

int lora_merge_record_json(const struct lora_merge_record *r, int compact, struct lora_buf *b,
			   struct lora_err *err)
{
	const char *nl = compact ? "" : "\n", *i1 = compact ? "" : "  ", *i2 = compact ? "" : "    ";
	const char *sp = compact ? "" : " ";
	char w[32];

	lora_buf_printf(b, "{%s%s\"format\":%s\"lora-merge/1\",%s", nl, i1, sp, nl);
	lora_buf_printf(b, "%s\"base\":%s{%s%s\"path\":%s", i1, sp, nl, i2, sp);
	lora_buf_json_str(b, r->base_path);
	lora_buf_printf(b, ",%s%s\"fingerprint\":%s", nl, i2, sp);
	lora_buf_json_str(b, r->fingerprint);
	lora_buf_printf(b, "%s%s},%s", nl, i1, nl);
	lora_buf_printf(b, "%s\"dtype\":%s\"%s\",%s", i1, sp, lora_merge_dtype_label(r->dtype), nl);
	if (r->drift)
		lora_buf_printf(b, "%s\"drift\":%s%d,%s", i1, sp, r->drift, nl);
	lora_buf_printf(b, "%s\"adapters\":%s[", i1, sp);
	for (size_t i = 0; i < r->n_adapters; i++) {
		lora_buf_printf(b, "%s%s%s{\"ref\":%s", i ? "," : "", nl, i2, sp);
		lora_buf_json_str(b, r->adapters[i].ref);
		lora_buf_printf(b, ",%s\"digest\":%s", sp, sp);
		lora_buf_json_str(b, r->adapters[i].digest);
		lora_merge_fmt_double(r->adapters[i].weight, w);
		lora_buf_printf(b, ",%s\"weight\":%s%s}", sp, sp, w);
	}
	lora_buf_printf(b, "%s%s]", r->n_adapters ? nl : "", r->n_adapters ? i1 : "");
	if (!compact) {
		json_lines(b, "tensors", r->n_tensors, r->modules, r->lines);
		if (r->n_drifted)
			json_lines(b, "drifted", r->n_drifted, r->drifted_modules, r->drifted_lines);
	}
	lora_buf_printf(b, "%s}%s", nl, nl);
	if (b->oom)
		return lora_errf(err, "out of memory");
	return 0;
}

void lora_merge_record_free(struct lora_merge_record *r)
{
	free(r->base_path);
	for (size_t i = 0; i < r->n_adapters; i++) {
		free(r->adapters[i].ref);
		free(r->adapters[i].digest);
	}
	free(r->adapters);
	for (size_t i = 0; i < r->n_tensors; i++) {
		free(r->modules ? r->modules[i] : NULL);
		free(r->lines ? r->lines[i] : NULL);
	}
	free(r->modules);
	free(r->lines);
	for (size_t i = 0; i < r->n_drifted; i++) {
		free(r->drifted_modules ? r->drifted_modules[i] : NULL);
		free(r->drifted_lines ? r->drifted_lines[i] : NULL);
	}
	free(r->drifted_modules);
	free(r->drifted_lines);
	memset(r, 0, sizeof(*r));
}

static int valid_digest(const char *s)
{
	if (strncmp(s, "sha256:", 7) || strlen(s) != 71)
		return 0;
	for (const char *p = s + 7; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return 0;
	return 1;
}

/* "<DTYPE> <d0>x<d1> <64 hex>" */
static int valid_line(const char *s)
{
	const char *sp1 = strchr(s, ' '), *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
	char tmp[80];

	if (!sp1 || !sp2 || strlen(sp2 + 1) != 64 || (size_t)(sp2 - sp1) > 60)
		return 0;
	memcpy(tmp, "sha256:", 7);
	memcpy(tmp + 7, sp2 + 1, 65);
	if (!valid_digest(tmp))
		return 0;
	return lora_dtype_parse(s, sp1 - s) != LORA_DT_INVALID;
}

struct mod_line {
	char *mod, *line;
};

static int mod_line_cmp(const void *a, const void *b)
{
	return strcmp(((const struct mod_line *)a)->mod, ((const struct mod_line *)b)->mod);
}

/* {"<module>.weight": "<line>", ...} into sorted module and line arrays. */
static int parse_lines(const cJSON *obj, const char *path, size_t *n_out, char ***mods, char ***lines,
		       struct lora_err *err)
{
	size_t n = (size_t)cJSON_GetArraySize(obj), k = 0;
	struct mod_line *v = calloc(n ? n : 1, sizeof(*v));
	const cJSON *it;
	int rc = -1;

	*mods = calloc(n ? n : 1, sizeof(char *));
	*lines = calloc(n ? n : 1, sizeof(char *));
	if (!v || !*mods || !*lines) {
		free(v);
		return lora_errf(err, "out of memory");
	}
	cJSON_ArrayForEach(it, obj) {
		size_t l = strlen(it->string);
		if (!cJSON_IsString(it) || l <= 7 || strcmp(it->string + l - 7, ".weight") ||
		    !valid_line(it->valuestring)) {
			lora_errf(err, "'%s': tensor entry '%s' is malformed", path, it->string);
			goto out;
		}
		v[k].mod = strndup(it->string, l - 7);
		v[k].line = strdup(it->valuestring);
		k++;
		if (!v[k - 1].mod || !v[k - 1].line) {
			lora_errf(err, "out of memory");
			goto out;
		}
	}
	qsort(v, k, sizeof(*v), mod_line_cmp);
	for (size_t i = 1; i < k; i++)
		if (!strcmp(v[i].mod, v[i - 1].mod)) {
			lora_errf(err, "'%s': tensor '%s.weight' is listed twice", path, v[i].mod);
			goto out;
		}
	rc = 0;
out:
	/* The arrays take every string, so that the record's free releases them. */
	for (size_t i = 0; i < k; i++) {
		(*mods)[i] = v[i].mod;
		(*lines)[i] = v[i].line;
	}
	*n_out = k;
	free(v);
	return rc;
}

static int record_parse(const char *text, size_t len, const char *path, struct lora_merge_record *r,
			struct lora_err *err)
{
	cJSON *root = cJSON_ParseWithLength(text, len), *it;
	const cJSON *base, *v, *ads, *ts;
	size_t n, k = 0;
	int rc = -1;

	memset(r, 0, sizeof(*r));
	if (!root || !cJSON_IsObject(root)) {
		lora_errf(err, "'%s' is not a JSON object", path);
		goto out;
	}
	v = cJSON_GetObjectItemCaseSensitive(root, "format");
	if (!cJSON_IsString(v) || strcmp(v->valuestring, "lora-merge/1")) {
		lora_errf(err, "'%s' is not a lora-merge/1 record", path);
		goto out;
	}
	base = cJSON_GetObjectItemCaseSensitive(root, "base");
	v = cJSON_GetObjectItemCaseSensitive(base, "path");
	if (!cJSON_IsString(v) || !(r->base_path = strdup(v->valuestring))) {
		lora_errf(err, "'%s': base.path is missing", path);
		goto out;
	}
	v = cJSON_GetObjectItemCaseSensitive(base, "fingerprint");
	if (!cJSON_IsString(v) || !valid_digest(v->valuestring)) {
		lora_errf(err, "'%s': base.fingerprint is missing or malformed", path);
		goto out;
	}
	memcpy(r->fingerprint, v->valuestring, 72);
	v = cJSON_GetObjectItemCaseSensitive(root, "dtype");
	if (!cJSON_IsString(v) || lora_merge_dtype_parse(v->valuestring, &r->dtype) < 0) {
		lora_errf(err, "'%s': dtype is missing or unknown", path);
		goto out;
	}
	v = cJSON_GetObjectItemCaseSensitive(root, "drift");
	if (v) {
		if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 1e9) {
			lora_errf(err, "'%s': drift is malformed", path);
			goto out;
		}
		r->drift = (int)v->valuedouble;
	}
	ads = cJSON_GetObjectItemCaseSensitive(root, "adapters");
	if (!cJSON_IsArray(ads)) {
		lora_errf(err, "'%s': adapters is missing", path);
		goto out;
	}
	n = (size_t)cJSON_GetArraySize(ads);
	r->adapters = calloc(n ? n : 1, sizeof(*r->adapters));
	if (!r->adapters) {
		lora_errf(err, "out of memory");
		goto out;
	}
	cJSON_ArrayForEach(it, ads) {
		const cJSON *ref = cJSON_GetObjectItemCaseSensitive(it, "ref");
		const cJSON *dg = cJSON_GetObjectItemCaseSensitive(it, "digest");
		const cJSON *w = cJSON_GetObjectItemCaseSensitive(it, "weight");
		if (!cJSON_IsString(ref) || !cJSON_IsString(dg) || !valid_digest(dg->valuestring) ||
		    !cJSON_IsNumber(w) || !isfinite(w->valuedouble)) {
			lora_errf(err, "'%s': adapter %zu is malformed", path, k);
			goto out;
		}
		r->adapters[k].ref = strdup(ref->valuestring);
		r->adapters[k].digest = strdup(dg->valuestring);
		r->adapters[k].weight = w->valuedouble;
		r->n_adapters = ++k;
		if (!r->adapters[k - 1].ref || !r->adapters[k - 1].digest) {
			lora_errf(err, "out of memory");
			goto out;
		}
	}
	ts = cJSON_GetObjectItemCaseSensitive(root, "tensors");
	if (!cJSON_IsObject(ts)) {
		lora_errf(err, "'%s': tensors is missing", path);
		goto out;
	}
	if (parse_lines(ts, path, &r->n_tensors, &r->modules, &r->lines, err) < 0)
		goto out;
	ts = cJSON_GetObjectItemCaseSensitive(root, "drifted");
	if (ts && (!cJSON_IsObject(ts) ||
		   parse_lines(ts, path, &r->n_drifted, &r->drifted_modules, &r->drifted_lines, err) < 0)) {
		if (!cJSON_IsObject(ts))
			lora_errf(err, "'%s': drifted is malformed", path);
		goto out;
	}
	rc = 0;
out:
	cJSON_Delete(root);
	if (rc < 0)
		lora_merge_record_free(r);
	return rc;
}

int lora_merge_record_read(const char *dir, struct lora_merge_record *r, struct lora_err *err)
{
	char *path = lora_path_join(dir, LORA_MERGE_JSON), *text = NULL;
	size_t len = 0;
	int rc;

	memset(r, 0, sizeof(*r));
	if (!path)
		return lora_errf(err, "out of memory");
	if (!lora_is_file(path)) {
		lora_errf(err, "'%s' was not written by lora merge (no %s)", dir, LORA_MERGE_JSON);
		free(path);
		return -1;
	}
	if (lora_read_file(path, 64u << 20, &text, &len, err) < 0) {
		free(path);
		return -1;
	}
	rc = record_parse(text, len, path, r, err);
	free(text);
	free(path);
	return rc;
}

/* ----------------------------------------------------------- shard headers */

int lora_merge_shard_header(const struct lora_st *shard, const enum lora_dtype *out_dt,
			    const char *rec, uint64_t target, unsigned char **out, size_t *out_len,
			    struct lora_err *err)
{
	struct lora_st_spec *specs = calloc(shard->n_tensors ? shard->n_tensors : 1, sizeof(*specs));
	const char **keys = calloc(shard->n_meta + 1, sizeof(char *));
	const char **vals = calloc(shard->n_meta + 1, sizeof(char *));
	unsigned char *h0 = NULL, *h1 = NULL, *p;
	size_t l0, l1, nm = 0;
	uint64_t dl0, dl1;
	int rc = -1;

	*out = NULL;
	if (!specs || !keys || !vals) {
		lora_errf(err, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < shard->n_tensors; i++) {
		const struct lora_st_tensor *t = &shard->tensors[i];
		specs[i].name = t->name;
		specs[i].dtype = out_dt ? out_dt[i] : t->dtype;
		specs[i].ndim = t->ndim;
		memcpy(specs[i].shape, t->shape, sizeof(t->shape));
	}
	for (size_t i = 0; i < shard->n_meta; i++)
		if (strcmp(shard->meta_keys[i], LORA_MERGE_META_KEY)) {
			keys[nm] = shard->meta_keys[i];
			vals[nm++] = shard->meta_vals[i];
		}
	if (lora_st_build_header(specs, shard->n_tensors, keys, vals, nm, &h0, &l0, &dl0, err) < 0)
		goto out;
	if (target == 0)
		target = ((uint64_t)l0 + LORA_MERGE_RESERVE + 7) & ~(uint64_t)7;
	keys[nm] = LORA_MERGE_META_KEY;
	vals[nm++] = rec;
	if (lora_st_build_header(specs, shard->n_tensors, keys, vals, nm, &h1, &l1, &dl1, err) < 0)
		goto out;
	if (l1 > target) {
		lora_errf(err, "'%s': the merge record (%zu bytes) does not fit the space kept for it "
			       "in the header; use fewer adapters or shorter paths", shard->path,
			  strlen(rec));
		goto out;
	}
	if (target > LORA_ST_MAX_HEADER) {
		lora_errf(err, "'%s': header would exceed the safetensors limit", shard->path);
		goto out;
	}
	p = realloc(h1, (size_t)target);
	if (!p) {
		lora_errf(err, "out of memory");
		goto out;
	}
	h1 = p;
	memset(h1 + l1, ' ', (size_t)target - l1);
	for (int i = 0; i < 8; i++)
		h1[i] = (unsigned char)(((target - 8) >> (8 * i)) & 0xff);
	*out = h1;
	*out_len = (size_t)target;
	h1 = NULL;
	rc = 0;
out:
	free(h0);
	free(h1);
	free(specs);
	free(keys);
	free(vals);
	return rc;
}

/* ------------------------------------------------------------------- merge */

/* One output shard, written straight into the staging folder. */
struct shard_out {
	int fd;
	char *what;       /* the final path, for messages */
};

struct merge_job {
	const struct lora_merge_opts *o;
	const struct lora_merge_set *set;
	struct lora_model *base;
	struct lora_merge_plan plan;
	struct lora_merge_engine eng;
	char *stage;               /* hidden folder beside out_dir */
	char *base_abs;
	struct shard_out *outs;    /* one per shard */
	unsigned char **headers;   /* placeholder headers */
	size_t *header_len;
	enum lora_dtype **out_dt;  /* per shard, per tensor in data order */
	int dtype_changed;         /* some tensor changes dtype */
	struct lora_linecache *cache;
};

/* Compare the adapters' recorded base fingerprints with this base's. */
/* The lines the fingerprint checks need and the cache lacks, hashed by worker threads. */
static int fill_lines(struct merge_job *j, struct lora_err *err)
{
	const struct lora_st_tensor **ts = calloc(j->plan.n + 1, sizeof(*ts));
	char **lines = calloc(j->plan.n + 1, sizeof(*lines));
	size_t n = 0;
	int rc;

	if (!ts || !lines) {
		free(ts);
		free(lines);
		return lora_errf(err, "out of memory");
	}
	for (size_t k = 0; k < j->plan.n; k++) {
		struct lora_merge_target *t = &j->plan.t[k];
		int needed = 0;
		for (size_t i = 0; i < j->set->n && !needed; i++)
			needed = j->set->a[i].base_fingerprint &&
				 lora_peft_find(j->set->a[i].peft, t->module) != NULL;
		if (needed && !t->line[0]) {
			ts[n] = lora_model_find(j->base, t->name)->t;
			lines[n++] = t->line;
		}
	}
	rc = lora_merge_tensor_lines(ts, lines, n, err);
	free(ts);
	free(lines);
	return rc;
}

static int check_fingerprints(struct merge_job *j, struct lora_merge_stats *stats, struct lora_err *err)
{
	if (fill_lines(j, err) < 0)
		return -1;
	for (size_t i = 0; i < j->set->n; i++) {
		const struct lora_merge_adapter *a = &j->set->a[i];
		const struct lora_peft *P = a->peft;
		const char **mods, **lines;
		char fp[72];

		if (!a->base_fingerprint)
			continue;
		mods = calloc(P->n_modules, sizeof(char *));
		lines = calloc(P->n_modules, sizeof(char *));
		if (!mods || !lines) {
			free(mods);
			free(lines);
			return lora_errf(err, "out of memory");
		}
		for (size_t k = 0; k < P->n_modules; k++) {
			struct lora_merge_target *t = lora_merge_plan_find(&j->plan, P->modules[k].name);
			const struct lora_model_tensor *mt = lora_model_find(j->base, t->name);
			if (!t->line[0] && lora_merge_tensor_line(mt->t, t->line, err) < 0) {
				free(mods);
				free(lines);
				return -1;
			}
			mods[k] = t->module;
			lines[k] = t->line;
		}
		lora_merge_fingerprint_lines(mods, lines, P->n_modules, fp);
		free(mods);
		free(lines);
		if (strcmp(fp, a->base_fingerprint)) {
			if (!j->o->force)
				return lora_errc(err, LORA_EVERIFY,
						 "adapter '%s' was made for another base: it records %.19s…, "
						 "base '%s' has %.19s… (--force merges anyway)",
						 a->ref, a->base_fingerprint, j->o->base_dir, fp);
			stats->n_forced++;
		}
	}
	return 0;
}

static int is_weight_file(const char *name)
{
	static const char *const pre[] = { "pytorch_model", "tf_model", "flax_model", NULL };
	static const char *const suf[] = { ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf",
					   ".safetensors", NULL };
	size_t n = strlen(name);

	for (int i = 0; pre[i]; i++)
		if (!strncmp(name, pre[i], strlen(pre[i])))
			return 1;
	for (int i = 0; suf[i]; i++) {
		size_t l = strlen(suf[i]);
		if (n > l && !strcmp(name + n - l, suf[i]))
			return 1;
	}
	return 0;
}

static int copy_file(const char *src, const char *dst, const char *what, struct lora_err *err)
{
	struct stat sb;
	int in = open(src, O_RDONLY | O_CLOEXEC), out;

	if (in < 0)
		return lora_errf(err, "cannot open '%s': %s", src, strerror(errno));
	if (fstat(in, &sb) < 0) {
		close(in);
		return lora_errf(err, "cannot stat '%s': %s", src, strerror(errno));
	}
	out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (out < 0) {
		close(in);
		return lora_errf(err, "cannot create '%s': %s", what, strerror(errno));
	}
	if (lora_copy_range(out, in, 0, (uint64_t)sb.st_size, what, err) < 0) {
		close(in);
		close(out);
		return -1;
	}
	if (fsync(out) < 0) {
		lora_errf(err, "cannot write '%s': %s", what,
			  errno == ENOSPC ? "no space left on device" : strerror(errno));
		close(in);
		close(out);
		return -1;
	}
	close(in);
	if (close(out) < 0)
		return lora_errf(err, "cannot write '%s': %s", what, strerror(errno));
	return 0;
}

/* Is this base file one of the model's shards (or its index)? */
static int is_shard(const struct lora_model *m, const char *name)
{
	for (size_t i = 0; i < m->n_shards; i++)
		if (!strcmp(m->shard_names[i], name))
			return 1;
	return !strcmp(name, "model.safetensors.index.json");
}

static const char *torch_dtype_name(enum lora_dtype dt)
{
	return dt == LORA_DT_BF16 ? "bfloat16" : dt == LORA_DT_F16 ? "float16" : "float32";
}

/* config.json with torch_dtype (and dtype, where present) set to the output dtype. */
static int write_config(struct merge_job *j, const char *src, const char *dst, const char *what,
			struct lora_err *err)
{
	char *text = NULL, *outs;
	size_t len;
	cJSON *root;
	int rc;

	if (lora_read_file(src, 64u << 20, &text, &len, err) < 0)
		return -1;
	root = cJSON_ParseWithLength(text, len);
	free(text);
	if (!root || !cJSON_IsObject(root)) {
		cJSON_Delete(root);
		return lora_errf(err, "'%s' is not a JSON object", src);
	}
	/* transformers < 5 writes "torch_dtype", later ones "dtype": set those present. */
	for (int k = 0, found = 0; k < 3; k++) {
		const char *key = k == 1 ? "dtype" : "torch_dtype";
		cJSON *v;
		if (k == 2 && found)
			break;
		v = cJSON_CreateString(torch_dtype_name(j->o->dtype));
		if (!v) {
			cJSON_Delete(root);
			return lora_errf(err, "out of memory");
		}
		if (k == 2) {
			cJSON_AddItemToObject(root, key, v);
		} else if (cJSON_GetObjectItemCaseSensitive(root, key)) {
			cJSON_ReplaceItemInObjectCaseSensitive(root, key, v);
			found = 1;
		} else {
			cJSON_Delete(v);
		}
	}
	outs = cJSON_Print(root);
	cJSON_Delete(root);
	if (!outs)
		return lora_errf(err, "out of memory");
	rc = lora_write_file_atomic(dst, outs, strlen(outs), 0644, err);
	free(outs);
	if (rc < 0)
		lora_err_prefix(err, "cannot write '%s'", what);
	return rc;
}

/* The index with metadata.total_size updated for the new dtypes. */
static int write_index(struct merge_job *j, const char *src, const char *dst, uint64_t total,
		       struct lora_err *err)
{
	char *text = NULL, *outs;
	size_t len;
	cJSON *root, *meta;
	int rc;

	(void)j;
	if (lora_read_file(src, 256u << 20, &text, &len, err) < 0)
		return -1;
	root = cJSON_ParseWithLength(text, len);
	free(text);
	if (!root || !cJSON_IsObject(root)) {
		cJSON_Delete(root);
		return lora_errf(err, "'%s' is not a JSON object", src);
	}
	meta = cJSON_GetObjectItemCaseSensitive(root, "metadata");
	if (cJSON_IsObject(meta)) {
		cJSON *v = cJSON_CreateNumber((double)total);
		if (v && cJSON_GetObjectItemCaseSensitive(meta, "total_size"))
			cJSON_ReplaceItemInObjectCaseSensitive(meta, "total_size", v);
		else
			cJSON_Delete(v);
	}
	outs = cJSON_Print(root);
	cJSON_Delete(root);
	if (!outs)
		return lora_errf(err, "out of memory");
	rc = lora_write_file_atomic(dst, outs, strlen(outs), 0644, err);
	free(outs);
	return rc;
}

static int copy_other_files(struct merge_job *j, uint64_t total_data, struct lora_err *err)
{
	const char *bdir = j->o->base_dir;
	DIR *d = opendir(bdir);
	struct dirent *e;
	int rc = 0;

	if (!d)
		return lora_errf(err, "cannot open directory '%s': %s", bdir, strerror(errno));
	while (rc == 0 && (e = readdir(d))) {
		char *src, *dst, *what;
		const char *n = e->d_name;
		int index = !strcmp(n, "model.safetensors.index.json");

		if (n[0] == '.' || !strcmp(n, LORA_MERGE_JSON) ||
		    (!index && (is_shard(j->base, n) || is_weight_file(n))))
			continue;
		src = lora_path_join(bdir, n);
		dst = lora_path_join(j->stage, n);
		what = lora_path_join(j->o->out_dir, n);
		if (!src || !dst || !what)
			rc = lora_errf(err, "out of memory");
		else if (!lora_is_file(src))
			;   /* folders and specials stay behind: transformers reads the top level */
		else if (index && j->dtype_changed)
			rc = write_index(j, src, dst, total_data, err);
		else if (!strcmp(n, "config.json") && j->dtype_changed)
			rc = write_config(j, src, dst, what, err);
		else
			rc = copy_file(src, dst, what, err);
		free(src);
		free(dst);
		free(what);
	}
	closedir(d);
	return rc;
}

/* Remove staging folders of earlier merges into the same place that were killed. */
static void clean_stale(const char *parent, const char *prefix)
{
	DIR *d = opendir(parent);
	struct dirent *e;
	size_t pl = strlen(prefix);

	if (!d)
		return;
	while ((e = readdir(d))) {
		char *end, *p;
		long pid;
		if (strncmp(e->d_name, prefix, pl))
			continue;
		pid = strtol(e->d_name + pl, &end, 10);
		if (*end || pid <= 0 || (kill((pid_t)pid, 0) == 0 || errno != ESRCH))
			continue;
		if ((p = lora_path_join(parent, e->d_name))) {
			lora_rm_rf(p, NULL);
			free(p);
		}
	}
	closedir(d);
}

static int make_stage(struct merge_job *j, struct lora_err *err)
{
	char *parent = lora_dirname(j->o->out_dir), *prefix = NULL;
	const char *name = strrchr(j->o->out_dir, '/');
	size_t nl;

	name = name ? name + 1 : j->o->out_dir;
	nl = strlen(name);
	if (!parent)
		return lora_errf(err, "out of memory");
	if (nl == 0 || !strcmp(name, ".") || !strcmp(name, "..")) {
		free(parent);
		return lora_errc(err, LORA_EUSAGE, "bad output folder '%s'", j->o->out_dir);
	}
	if (!lora_is_dir(parent)) {
		lora_errf(err, "cannot create '%s': folder '%s' does not exist", j->o->out_dir, parent);
		free(parent);
		return -1;
	}
	if (asprintf(&prefix, ".%s.lora-merge-", name) < 0) {
		free(parent);
		return lora_errf(err, "out of memory");
	}
	clean_stale(parent, prefix);
	if (asprintf(&j->stage, "%s/%s%ld", parent, prefix, (long)getpid()) < 0) {
		j->stage = NULL;
		free(parent);
		free(prefix);
		return lora_errf(err, "out of memory");
	}
	free(parent);
	free(prefix);
	lora_rm_rf(j->stage, NULL);
	if (mkdir(j->stage, 0755) < 0) {
		int e = errno;
		free(j->stage);
		j->stage = NULL;
		if (e == ENOSPC)
			return lora_errf(err, "cannot create '%s': no space left on device", j->o->out_dir);
		return lora_errf(err, "cannot create '%s': %s", j->o->out_dir, strerror(e));
	}
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
		line_from_digest(src, md, tg->line);
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
		    !is_merge_float(src->dtype) || !is_merge_float(out_dt))
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
	if (!is_merge_float(src->dtype) || !is_merge_float(out_dt))
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

/* Every shard's tensors, in data order; out_off starts after the header. */
static int run_tasks(struct merge_job *j, struct lora_merge_stats *stats, struct lora_err *err)
{
	struct lora_merge_batch *b = lora_merge_batch_new();
	int *in_fd = calloc(j->base->n_shards ? j->base->n_shards : 1, sizeof(int));
	char **in_path = calloc(j->base->n_shards ? j->base->n_shards : 1, sizeof(char *));
	int rc = -1;

	if (!b || !in_fd || !in_path) {
		lora_errf(err, "out of memory");
		goto out;
	}
	for (size_t s = 0; s < j->base->n_shards; s++)
		in_fd[s] = -1;
	for (size_t s = 0; s < j->base->n_shards; s++) {
		const struct lora_st *st = j->base->shards[s];
		uint64_t off = j->header_len[s];

		in_path[s] = lora_path_join(j->base->dir, j->base->shard_names[s]);
		in_fd[s] = in_path[s] ? open(in_path[s], O_RDONLY | O_CLOEXEC) : -1;
		if (in_fd[s] < 0) {
			lora_errf(err, "cannot open '%s': %s",
				  in_path[s] ? in_path[s] : j->base->shard_names[s], strerror(errno));
			goto out;
		}
		for (size_t i = 0; i < st->n_tensors; i++) {
			const struct lora_st_tensor *t = &st->tensors[i];
			size_t nl = strlen(t->name);
			struct lora_merge_target *tg = NULL;
			enum lora_dtype odt = j->out_dt[s][i];

			if (nl > 7 && !strcmp(t->name + nl - 7, ".weight")) {
				char *mod = strndup(t->name, nl - 7);
				if (!mod) {
					lora_errf(err, "out of memory");
					goto out;
				}
				tg = lora_merge_plan_find(&j->plan, mod);
				free(mod);
			}
			if (tg)
				stats->n_merged++;
			else if (odt == t->dtype)
				stats->n_copied++;
			else
				stats->n_converted++;
			if (lora_merge_batch_add(b, t, in_fd[s], in_path[s], tg, odt, j->outs[s].fd, off,
						 j->outs[s].what, err) < 0)
				goto out;
			off += t->nelem * lora_dtype_bits(odt) / 8;
		}
		stats->bytes_out += off - j->header_len[s];
	}
	rc = lora_merge_batch_run(b, j->o->threads, &j->eng, j->o->progress, j->o->progress_ctx, err);
out:
	for (size_t s = 0; in_fd && s < j->base->n_shards; s++)
		if (in_fd[s] >= 0)
			close(in_fd[s]);
	for (size_t s = 0; in_path && s < j->base->n_shards; s++)
		free(in_path[s]);
	free(in_fd);
	free(in_path);
	lora_merge_batch_free(b);
	return rc;
}

/* Decide output dtypes and write every shard (headers carry a placeholder fingerprint). */
static int write_shards(struct merge_job *j, struct lora_merge_stats *stats, struct lora_err *err)
{
	struct lora_merge_record rec = { 0 };
	struct lora_buf meta = LORA_BUF_INIT;
	const struct lora_model *m = j->base;
	int rc = -1;

	rec.base_path = j->base_abs;
	memcpy(rec.fingerprint, "sha256:", 7);
	memset(rec.fingerprint + 7, '0', 64);
	rec.dtype = j->o->dtype;
	if (lora_merge_record_set_adapters(&rec, j->set, err) < 0 ||
	    lora_merge_record_json(&rec, 1, &meta, err) < 0)
		goto out;
	for (size_t s = 0; s < m->n_shards; s++) {
		const struct lora_st *st = m->shards[s];
		struct shard_out *so = &j->outs[s];
		char *path = lora_path_join(j->stage, m->shard_names[s]);

		so->what = lora_path_join(j->o->out_dir, m->shard_names[s]);
		if (!path || !so->what) {
			free(path);
			lora_errf(err, "out of memory");
			goto out;
		}
		if (strchr(m->shard_names[s], '/')) {
			free(path);
			lora_errf(err, "shard name '%s' is not a plain file name", m->shard_names[s]);
			goto out;
		}
		so->fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
		free(path);
		if (so->fd < 0) {
			lora_errf(err, "cannot create '%s': %s", so->what, strerror(errno));
			goto out;
		}
		if (lora_merge_shard_header(st, j->out_dt[s], meta.data, 0, &j->headers[s],
					    &j->header_len[s], err) < 0 ||
		    lora_write_all(so->fd, j->headers[s], j->header_len[s], so->what, err) < 0)
			goto out;
	}
	if (run_tasks(j, stats, err) < 0)
		goto out;
	rc = 0;
out:
	rec.base_path = NULL;
	lora_merge_record_free(&rec);
	lora_buf_free(&meta);
	return rc;
}

/* Put the real record into every header, write lora-merge.json, sync everything. */
static int finish_stage(struct merge_job *j, struct lora_merge_stats *stats, struct lora_err *err)
{
	struct lora_merge_record rec = { 0 };
	struct lora_buf meta = LORA_BUF_INIT, full = LORA_BUF_INIT;
	const struct lora_model *m = j->base;
	char *path = NULL;
	int rc = -1;

	rec.base_path = j->base_abs;
	rec.dtype = j->o->dtype;
	if (lora_merge_record_set_adapters(&rec, j->set, err) < 0 ||
	    lora_merge_record_set_tensors(&rec, &j->plan, err) < 0 ||
	    lora_merge_record_json(&rec, 1, &meta, err) < 0 ||
	    lora_merge_record_json(&rec, 0, &full, err) < 0)
		goto out;
	memcpy(stats->fingerprint, rec.fingerprint, 72);
	for (size_t s = 0; s < m->n_shards; s++) {
		struct shard_out *so = &j->outs[s];
		unsigned char *h = NULL;
		size_t hl = 0;

		if (lora_merge_shard_header(m->shards[s], j->out_dt[s], meta.data, j->header_len[s], &h,
					    &hl, err) < 0)
			goto out;
		if (hl != j->header_len[s]) {
			free(h);
			lora_errf(err, "internal error: header of '%s' changed size", so->what);
			goto out;
		}
		if (lora_pwrite_all(so->fd, h, hl, 0, so->what, err) < 0) {
			free(h);
			goto out;
		}
		free(h);
		if (fsync(so->fd) < 0) {
			lora_errf(err, "cannot write '%s': %s", so->what,
				  errno == ENOSPC ? "no space left on device" : strerror(errno));
			goto out;
		}
		if (close(so->fd) < 0) {
			so->fd = -1;
			lora_errf(err, "cannot write '%s': %s", so->what, strerror(errno));
			goto out;
		}
		so->fd = -1;
	}
	path = lora_path_join(j->stage, LORA_MERGE_JSON);
	if (!path) {
		lora_errf(err, "out of memory");
		goto out;
	}
	if (lora_write_file_atomic(path, full.data, full.len, 0644, err) < 0) {
		lora_err_prefix(err, "cannot write '%s/%s'", j->o->out_dir, LORA_MERGE_JSON);
		goto out;
	}
	if (lora_fsync_dir(j->stage, err) < 0)
		goto out;
	rc = 0;
out:
	free(path);
	rec.base_path = NULL;
	lora_merge_record_free(&rec);
	lora_buf_free(&meta);
	lora_buf_free(&full);
	return rc;
}

static int plan_dtypes(struct merge_job *j, uint64_t *total_data, struct lora_err *err)
{
	const struct lora_model *m = j->base;

	*total_data = 0;
	for (size_t s = 0; s < m->n_shards; s++) {
		const struct lora_st *st = m->shards[s];
		j->out_dt[s] = calloc(st->n_tensors ? st->n_tensors : 1, sizeof(enum lora_dtype));
		if (!j->out_dt[s])
			return lora_errf(err, "out of memory");
		for (size_t i = 0; i < st->n_tensors; i++) {
			const struct lora_st_tensor *t = &st->tensors[i];
			enum lora_dtype o = lora_merge_out_dtype(t->dtype, j->o->dtype);
			j->out_dt[s][i] = o;
			if (o != t->dtype)
				j->dtype_changed = 1;
			*total_data += t->nelem * lora_dtype_bits(o) / 8;
		}
	}
	return 0;
}

static void job_free(struct merge_job *j)
{
	if (j->outs)
		for (size_t s = 0; s < j->base->n_shards; s++) {
			if (j->outs[s].fd >= 0)
				close(j->outs[s].fd);
			free(j->outs[s].what);
		}
	if (j->out_dt)
		for (size_t s = 0; s < j->base->n_shards; s++)
			free(j->out_dt[s]);
	if (j->headers)
		for (size_t s = 0; s < j->base->n_shards; s++)
			free(j->headers[s]);
	free(j->outs);
	free(j->out_dt);
	free(j->headers);
	free(j->header_len);
	if (j->stage) {
		lora_rm_rf(j->stage, NULL);
		free(j->stage);
	}
	free(j->base_abs);
	lora_linecache_close(j->cache, 0);
	lora_merge_plan_free(&j->plan);
	lora_merge_engine_free(&j->eng);
	if (j->base)
		lora_model_close(j->base);
}

static int merge_run(const struct lora_merge_opts *o, const struct lora_merge_set *set,
		     struct lora_merge_stats *stats, struct lora_err *err);

int lora_merge(const struct lora_merge_opts *o, const struct lora_merge_set *set,
	       struct lora_merge_stats *stats, struct lora_err *err)
{
	struct lora_merge_opts o2 = *o;
	char *out = strdup(o->out_dir ? o->out_dir : "");
	size_t n;
	int rc;

	if (!out)
		return lora_errf(err, "out of memory");
	n = strlen(out);
	while (n > 1 && out[n - 1] == '/')   /* "out/" names the folder "out" */
		out[--n] = '\0';
	o2.out_dir = out;
	rc = merge_run(&o2, set, stats, err);
	free(out);
	return rc;
}

static int merge_run(const struct lora_merge_opts *o, const struct lora_merge_set *set,
		     struct lora_merge_stats *stats, struct lora_err *err)
{
	struct merge_job j = { .o = o, .set = set };
	struct stat sb;
	uint64_t total_data = 0;
	int rc = -1;

	memset(stats, 0, sizeof(*stats));
	if (lstat(o->out_dir, &sb) == 0)
		return lora_errf(err, "output folder '%s' already exists", o->out_dir);
	if (lora_merged_recover(o->base_dir, err) < 0)
		return -1;
	if (lora_model_open(o->base_dir, 0, &j.base, err) < 0)
		return -1;
	if (!(j.base_abs = realpath(o->base_dir, NULL))) {
		lora_errf(err, "cannot resolve '%s': %s", o->base_dir, strerror(errno));
		goto out;
	}
	if (lora_merge_plan_add(&j.plan, j.base, o->base_dir, set, 1.0, err) < 0)
		goto out;
	j.cache = lora_linecache_open(j.base);
	for (size_t i = 0; i < j.plan.n; i++) {
		const char *l = lora_linecache_get(j.cache, lora_model_find(j.base, j.plan.t[i].name));
		if (l)
			snprintf(j.plan.t[i].line, sizeof(j.plan.t[i].line), "%s", l);
	}
	if (check_fingerprints(&j, stats, err) < 0)
		goto out;
	if (lora_merge_engine_init(&j.eng, o->device, o->gpu, err) < 0)
		goto out;
	stats->n_shards = j.base->n_shards;
	j.outs = calloc(j.base->n_shards, sizeof(*j.outs));
	j.out_dt = calloc(j.base->n_shards, sizeof(*j.out_dt));
	j.headers = calloc(j.base->n_shards, sizeof(*j.headers));
	j.header_len = calloc(j.base->n_shards, sizeof(*j.header_len));
	if (!j.outs || !j.out_dt || !j.headers || !j.header_len) {
		lora_errf(err, "out of memory");
		goto out;
	}
	for (size_t s = 0; s < j.base->n_shards; s++)
		j.outs[s].fd = -1;
	if (plan_dtypes(&j, &total_data, err) < 0 || make_stage(&j, err) < 0)
		goto out;
	if (copy_other_files(&j, total_data, err) < 0 || write_shards(&j, stats, err) < 0 ||
	    finish_stage(&j, stats, err) < 0)
		goto out;
	if (renameat2(AT_FDCWD, j.stage, AT_FDCWD, o->out_dir, RENAME_NOREPLACE) < 0) {
		if (errno == EEXIST)
			lora_errf(err, "output folder '%s' already exists", o->out_dir);
		else
			lora_errf(err, "cannot rename the merged model into '%s': %s", o->out_dir,
				  strerror(errno));
		goto out;
	}
	free(j.stage);
	j.stage = NULL;
	for (size_t i = 0; i < j.plan.n; i++)
		lora_linecache_put(j.cache, lora_model_find(j.base, j.plan.t[i].name), j.plan.t[i].line);
	lora_linecache_close(j.cache, 1);
	j.cache = NULL;
	{
		char *parent = lora_dirname(o->out_dir);
		rc = parent ? lora_fsync_dir(parent, err) : lora_errf(err, "out of memory");
		free(parent);
	}
out:
	job_free(&j);
	return rc;
}
