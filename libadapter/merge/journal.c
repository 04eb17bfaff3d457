/*
 * journal.c - the redo journal of `lora swap`: the folder lock, replaying a
 * journal (byte ranges, whole files, an exact swap's plan recomputed from the
 * base) and recovery of an interrupted swap.  The format is in swap.h; swap.c
 * writes journals, this file reads and applies them.
 */
#define _GNU_SOURCE
#include "libadapter/merge/swap.h"
#include "libadapter/merge/swap_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <openssl/evp.h>

#include "libadapter/base/fsutil.h"
#include "libadapter/format/modeldir.h"
#include "libadapter/format/safetensors.h"


static int plain_name(const char *s, size_t n)
{
	if (n == 0 || n > 255 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
		return 0;
	for (size_t i = 0; i < n; i++)
		if (s[i] == '/' || s[i] == '\0')
			return 0;
	return 1;
}

/* ------------------------------------------------------------------- lock */

/*
 * The folder this process holds locked, if any: a lora_merged_recover() on it
 * from inside a swap (through a model open, say) must not wait for itself.
 */
static dev_t held_dev;
static ino_t held_ino;
static int held;

int lora_swap_lock_dir(const char *dir, int *fd, struct lora_err *err)
{
	struct stat sb;

	*fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (*fd < 0)
		return lora_errf(err, "cannot open folder '%s': %s", dir, strerror(errno));
	while (flock(*fd, LOCK_EX) < 0) {
		if (errno == EINTR)
			continue;
		close(*fd);
		*fd = -1;
		return lora_errf(err, "cannot lock folder '%s': %s", dir, strerror(errno));
	}
	if (fstat(*fd, &sb) == 0) {
		held_dev = sb.st_dev;
		held_ino = sb.st_ino;
		held = 1;
	}
	return 0;
}

void lora_swap_unlock_dir(int fd)
{
	if (fd >= 0) {
		held = 0;
		close(fd);   /* releases the flock */
	}
}

static int held_by_us(const char *dir)
{
	struct stat sb;
	return held && stat(dir, &sb) == 0 && sb.st_dev == held_dev && sb.st_ino == held_ino;
}

/* ------------------------------------------------------ recompute entries */

/*
 * An exact swap's journal holds no tensor bytes: its J_PLAN entry is a small
 * safetensors file with the new set's factors, and in its metadata
 * ("lora.swap") the plan: the base folder, and for every rewritten tensor
 * its name in the base, the base's fingerprint line for it, where it goes in
 * the folder (file, offset, dtype) and its terms (coef, fan_in_fan_out, the
 * names of A and B in the blob).  Applying it recomputes the tensors from the
 * base, so replaying it twice writes the same bytes.
 */
struct plan_run {
	unsigned char *blob;
	struct lora_st *st;
	cJSON *root;
	struct lora_model *base;
	size_t n;
	struct lora_merge_target *tg;       /* n; NULL terms: a copy or conversion of src */
	const struct lora_st_tensor **src;  /* n, in the base */
	enum lora_dtype *out_dt;
	uint64_t *out_off;
	size_t *file;                       /* n: index into fnames/ffd */
	size_t n_terms;
	struct lora_merge_term *terms;
	struct lora_peft_module *mods;
	char **fnames;                      /* target files, each opened once */
	int *ffd;
	size_t nf;
	int *bfd;                           /* base shards */
	size_t *bshard;                     /* n: the base shard of src */
};

static void plan_free(struct plan_run *r)
{
	for (size_t i = 0; i < r->nf; i++)
		if (r->ffd[i] >= 0)
			close(r->ffd[i]);
	if (r->base && r->bfd)
		for (size_t s = 0; s < r->base->n_shards; s++)
			if (r->bfd[s] >= 0)
				close(r->bfd[s]);
	free(r->ffd);
	free(r->fnames);
	free(r->bfd);
	free(r->tg);
	free(r->src);
	free(r->out_dt);
	free(r->out_off);
	free(r->file);
	free(r->bshard);
	free(r->terms);
	free(r->mods);
	if (r->base)
		lora_model_close(r->base);
	cJSON_Delete(r->root);
	if (r->st)
		lora_st_close(r->st);
	free(r->blob);
}

static int json_u64(const cJSON *o, const char *key, uint64_t *out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	double d;

	if (!cJSON_IsNumber(v))
		return -1;
	d = v->valuedouble;
	if (!(d >= 0 && d <= 9007199254740992.0) || d != (double)(uint64_t)d)
		return -1;
	*out = (uint64_t)d;
	return 0;
}

static const char *json_str(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* The target file `name`, opened once for writing. */
static int plan_file(struct plan_run *r, const char *dir, const char *name, size_t *idx,
		     struct lora_err *err)
{
	char *p;

	for (size_t i = 0; i < r->nf; i++)
		if (!strcmp(r->fnames[i], name)) {
			*idx = i;
			return 0;
		}
	p = lora_path_join(dir, name);
	if (!p)
		return lora_errf(err, "out of memory");
	r->ffd[r->nf] = open(p, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
	if (r->ffd[r->nf] < 0) {
		lora_errf(err, "cannot finish the swap of '%s': cannot open '%s': %s", dir, name,
			  strerror(errno));
		free(p);
		return -1;
	}
	free(p);
	r->fnames[r->nf] = (char *)name;
	*idx = r->nf++;
	return 0;
}

/* One factor of a term: a float matrix in the blob. */
static const struct lora_st_tensor *plan_factor(const struct plan_run *r, const cJSON *term,
						const char *key)
{
	const char *name = json_str(term, key);
	const struct lora_st_tensor *t = name ? lora_st_find(r->st, name) : NULL;

	if (!t || t->ndim != 2 || !t->shape[0] || !t->shape[1] ||
	    (t->dtype != LORA_DT_F16 && t->dtype != LORA_DT_BF16 && t->dtype != LORA_DT_F32))
		return NULL;
	return t;
}

/* Decode and check one tensor of the plan: everything is bounded before anything is written. */
static int plan_tensor(struct plan_run *r, const char *dir, const cJSON *tj, size_t i, size_t *tc,
		       int verify, int *damaged, struct lora_err *err)
{
	const char *name = json_str(tj, "name"), *line = json_str(tj, "line");
	const char *file = json_str(tj, "file"), *dts = json_str(tj, "dtype");
	const cJSON *terms = cJSON_GetObjectItemCaseSensitive(tj, "terms"), *term;
	const struct lora_model_tensor *mt;
	const struct lora_st_tensor *bt;
	struct lora_merge_target *tg = &r->tg[i];
	uint64_t off, len;
	struct stat fs;

	*damaged = 1;
	if (!name || !line || !file || !dts || !cJSON_IsArray(terms) || json_u64(tj, "offset", &off) < 0 ||
	    !plain_name(file, strlen(file)) || strlen(line) >= sizeof(tg->line))
		return -1;
	r->out_dt[i] = lora_dtype_parse(dts, (long)strlen(dts));
	if (r->out_dt[i] != LORA_DT_F16 && r->out_dt[i] != LORA_DT_BF16 && r->out_dt[i] != LORA_DT_F32)
		return -1;
	*damaged = 0;
	if (!(mt = lora_model_find(r->base, name)))
		return lora_errf(err, "cannot finish the swap of '%s': its base '%s' has no tensor '%s'",
				 dir, r->base->dir, name);
	bt = mt->t;
	if (bt->dtype != LORA_DT_F16 && bt->dtype != LORA_DT_BF16 && bt->dtype != LORA_DT_F32)
		return lora_errf(err, "cannot finish the swap of '%s': base tensor '%s' is not a float "
				      "tensor", dir, name);
	if (verify) {
		/* Recovery: the base must still be the one the swap began with. */
		char got[128];
		if (lora_merge_tensor_line(bt, got, err) < 0)
			return -1;
		if (strcmp(got, line))
			return lora_errf(err, "cannot finish the swap of '%s': tensor '%s' of its base '%s' "
					      "has changed since the swap began", dir, name, r->base->dir);
	}
	if (plan_file(r, dir, file, &r->file[i], err) < 0)
		return -1;
	len = bt->nelem * (lora_dtype_bits(r->out_dt[i]) / 8);
	if (fstat(r->ffd[r->file[i]], &fs) < 0 || !S_ISREG(fs.st_mode) || off > (uint64_t)fs.st_size ||
	    len > (uint64_t)fs.st_size - off)
		return lora_errf(err, "cannot finish the swap of '%s': '%s' is not the file the journal "
				      "was written for", dir, file);
	r->src[i] = mt->t;
	r->bshard[i] = mt->shard;
	r->out_off[i] = off;
	snprintf(tg->line, sizeof(tg->line), "%s", line);
	tg->name = tg->module = (char *)name;
	if (cJSON_GetArraySize(terms) == 0)
		return 0;
	*damaged = 1;
	if (bt->ndim != 2)
		return -1;
	tg->rows = bt->shape[0];
	tg->cols = bt->shape[1];
	tg->terms = r->terms + *tc;
	cJSON_ArrayForEach(term, terms) {
		const cJSON *coef = cJSON_GetObjectItemCaseSensitive(term, "coef");
		const cJSON *fifo = cJSON_GetObjectItemCaseSensitive(term, "fifo");
		const struct lora_st_tensor *A = plan_factor(r, term, "A"), *B = plan_factor(r, term, "B");
		struct lora_peft_module *mod = &r->mods[*tc];
		struct lora_merge_term *tm = &r->terms[*tc];
		int fi = cJSON_IsTrue(fifo);

		if (*tc >= r->n_terms || !cJSON_IsNumber(coef) || !isfinite(coef->valuedouble) ||
		    !cJSON_IsBool(fifo) || !A || !B || A->shape[0] != B->shape[1] || A->shape[0] > INT_MAX)
			return -1;
		/* W [out, in] = B [out, r] · A [r, in]; with fan_in_fan_out W is [in, out]. */
		if (fi ? A->shape[1] != tg->rows || B->shape[0] != tg->cols
		       : B->shape[0] != tg->rows || A->shape[1] != tg->cols)
			return -1;
		mod->name = tg->name;
		mod->A = A;
		mod->B = B;
		mod->r = (int)A->shape[0];
		mod->in = A->shape[1];
		mod->out = B->shape[0];
		tm->mod = mod;
		tm->coef = coef->valuedouble;
		tm->fifo = fi;
		tg->n_terms++;
		(*tc)++;
	}
	*damaged = 0;
	return 0;
}

/*
 * Apply the J_PLAN entry e of the journal jfd: recompute every tensor it lists
 * from the base and write it in place (worker threads), then fsync.  verify:
 * check the base against the recorded lines first (recovery; a live swap has
 * just checked them).
 */
static int apply_plan(const char *dir, const char *jpath, int jfd, const struct jentry *e, int verify,
		      unsigned pause, lora_progress_fn progress, void *progress_ctx, struct lora_err *err)
{
	struct plan_run r = { 0 };
	const cJSON *tensors, *tj;
	const char *meta, *base;
	size_t i = 0, tc = 0, nt = 0;
	int rc = -1, damaged = 0;

	if (e->len > SIZE_MAX / 2)
		goto damaged;
	r.blob = malloc(e->len ? (size_t)e->len : 1);
	if (!r.blob)
		return lora_errf(err, "out of memory");
	if (lora_pread_all(jfd, r.blob, (size_t)e->len, e->src_off, jpath, err) < 0)
		goto out;
	if (e->len < 32)
		goto damaged;
	{
		unsigned char md[32];
		unsigned int mdlen = 0;
		if (!EVP_Digest(r.blob + 32, (size_t)e->len - 32, md, &mdlen, EVP_sha256(), NULL) ||
		    memcmp(md, r.blob, 32))
			goto damaged;
	}
	if (lora_st_open_mem(r.blob + 32, (size_t)e->len - 32, jpath, &r.st, err) < 0 ||
	    !(meta = lora_st_meta(r.st, "lora.swap")) || !(r.root = cJSON_Parse(meta)) ||
	    !(base = json_str(r.root, "base")) || base[0] != '/' ||
	    !cJSON_IsArray(tensors = cJSON_GetObjectItemCaseSensitive(r.root, "tensors")))
		goto damaged;
	r.n = (size_t)cJSON_GetArraySize(tensors);
	cJSON_ArrayForEach(tj, tensors) {
		const cJSON *terms = cJSON_GetObjectItemCaseSensitive(tj, "terms");
		nt += cJSON_IsArray(terms) ? (size_t)cJSON_GetArraySize(terms) : 0;
	}
	r.n_terms = nt;
	r.tg = calloc(r.n + 1, sizeof(*r.tg));
	r.src = calloc(r.n + 1, sizeof(*r.src));
	r.bshard = calloc(r.n + 1, sizeof(*r.bshard));
	r.out_dt = calloc(r.n + 1, sizeof(*r.out_dt));
	r.out_off = calloc(r.n + 1, sizeof(*r.out_off));
	r.file = calloc(r.n + 1, sizeof(*r.file));
	r.fnames = calloc(r.n + 1, sizeof(*r.fnames));
	r.ffd = calloc(r.n + 1, sizeof(*r.ffd));
	r.terms = calloc(nt + 1, sizeof(*r.terms));
	r.mods = calloc(nt + 1, sizeof(*r.mods));
	if (!r.tg || !r.src || !r.bshard || !r.out_dt || !r.out_off || !r.file || !r.fnames || !r.ffd ||
	    !r.terms || !r.mods) {
		lora_errf(err, "out of memory");
		goto out;
	}
	if (lora_model_open(base, 0, &r.base, err) < 0) {
		struct lora_err e2 = *err;
		lora_errf(err, "cannot finish the swap of '%s': it recomputes tensors from the base '%s', "
			       "which cannot be opened (%s); put the base back and run 'lora swap %s "
			       "--recover'", dir, base, e2.msg, dir);
		goto out;
	}
	r.bfd = malloc((r.base->n_shards + 1) * sizeof(int));
	if (!r.bfd) {
		lora_errf(err, "out of memory");
		goto out;
	}
	for (size_t s = 0; s < r.base->n_shards; s++)
		r.bfd[s] = -1;
	cJSON_ArrayForEach(tj, tensors) {
		if (plan_tensor(&r, dir, tj, i++, &tc, verify, &damaged, err) < 0) {
			if (damaged)
				goto damaged;
			goto out;
		}
	}
	for (size_t s = 0; s < r.base->n_shards; s++) {
		char *p = lora_path_join(r.base->dir, r.base->shard_names[s]);
		r.bfd[s] = p ? open(p, O_RDONLY | O_CLOEXEC) : -1;
		free(p);
		if (r.bfd[s] < 0) {
			lora_errf(err, "cannot open '%s/%s': %s", r.base->dir, r.base->shard_names[s],
				  strerror(errno));
			goto out;
		}
	}
	/* All checked: write.  With the test pause, one tensor at a time. */
	for (size_t k = 0; k < r.n;) {
		struct lora_merge_batch *b = lora_merge_batch_new();
		size_t end = pause ? k + 1 : r.n;
		int brc = b ? 0 : lora_errf(err, "out of memory");
		for (; brc == 0 && k < end; k++) {
			size_t f = r.file[k];
			brc = lora_merge_batch_add(b, r.src[k], r.bfd[r.bshard[k]], r.base->dir,
						   r.tg[k].n_terms ? &r.tg[k] : NULL, r.out_dt[k],
						   r.ffd[f], r.out_off[k], r.fnames[f], err);
		}
		if (brc == 0)
			brc = lora_merge_batch_run(b, 0, NULL, progress, progress_ctx, err);
		lora_merge_batch_free(b);
		if (brc < 0)
			goto out;
		pause_us(pause);
	}
	for (size_t f = 0; f < r.nf; f++)
		if (fsync(r.ffd[f]) < 0) {
			lora_errf(err, "cannot sync '%s/%s': %s", dir, r.fnames[f], strerror(errno));
			goto out;
		}
	rc = 0;
	goto out;
damaged:
	lora_errf(err, "'%s' is damaged; the swap it records cannot be finished (the folder may need "
		       "a fresh lora merge)", jpath);
out:
	plan_free(&r);
	return rc;
}

/* ----------------------------------------------------------- apply/replay */

/*
 * Check a committed journal completely, then write every entry into place
 * (tensors recomputed from the base first, then byte ranges), fsync, replace
 * whole files, and remove the journal.  Idempotent: replaying it twice gives
 * the same files.  verify: recovery (the base is checked again).
 */
int lora_swap_journal_apply(const char *dir, unsigned pause, int verify, lora_progress_fn progress,
			 void *progress_ctx, struct lora_err *err)
{
	char *jpath = lora_path_join(dir, LORA_SWAP_JOURNAL);
	unsigned char head[J_HEAD], md[32], *table = NULL;
	struct jentry *ents = NULL;
	int jfd = -1, *fds = NULL, rc = -1;
	uint64_t jsize, table_len, data_start, n = 0, n_plan = 0;
	struct stat sb;
	unsigned int mdlen = 0;
	char trailer[8];

	if (!jpath)
		return lora_errf(err, "out of memory");
	jfd = open(jpath, O_RDONLY | O_CLOEXEC);
	if (jfd < 0) {
		lora_errf(err, "cannot open '%s': %s", jpath, strerror(errno));
		goto out;
	}
	if (fstat(jfd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		lora_errf(err, "'%s' is not a regular file", jpath);
		goto out;
	}
	jsize = (uint64_t)sb.st_size;
	if (jsize < J_HEAD + 8 || pread(jfd, head, J_HEAD, 0) != J_HEAD || memcmp(head, J_MAGIC, 8) ||
	    pread(jfd, trailer, 8, (off_t)(jsize - 8)) != 8 || memcmp(trailer, J_TRAILER, 8))
		goto damaged;
	n = get32(head + 8);
	table_len = get64(head + 16);
	data_start = get64(head + 24);
	if (n == 0 || n > J_MAX_ENTRIES || table_len > jsize || data_start != J_HEAD + table_len ||
	    data_start > jsize - 8)
		goto damaged;
	table = malloc((size_t)table_len);
	ents = calloc((size_t)n, sizeof(*ents));
	fds = malloc((size_t)n * sizeof(int));
	if (!table || !ents || !fds) {
		lora_errf(err, "out of memory");
		goto out;
	}
	for (uint64_t i = 0; i < n; i++)
		fds[i] = -1;
	if (pread(jfd, table, (size_t)table_len, J_HEAD) != (ssize_t)table_len)
		goto damaged;
	EVP_Digest(table, (size_t)table_len, md, &mdlen, EVP_sha256(), NULL);
	if (memcmp(md, head + 32, 32))
		goto damaged;
	/* Decode and bound-check every entry before changing anything. */
	for (uint64_t i = 0, pos = 0; i < n; i++) {
		struct jentry *e = &ents[i];
		uint32_t nl;
		if (table_len - pos < J_ENTRY)
			goto damaged;
		e->kind = table[pos];
		nl = get32(table + pos + 4);
		e->target_off = get64(table + pos + 8);
		e->len = get64(table + pos + 16);
		e->src_off = get64(table + pos + 24);
		pos += J_ENTRY;
		if (nl > table_len - pos || !plain_name((const char *)table + pos, nl))
			goto damaged;
		e->name = (const char *)table + pos;
		pos += (nl + 7u) & ~7u;
		if (pos > table_len || (e->kind != J_RANGE && e->kind != J_FILE && e->kind != J_PLAN) ||
		    e->src_off < data_start || e->src_off > jsize - 8 || e->len > jsize - 8 - e->src_off ||
		    (e->kind == J_FILE && e->len > J_MAX_FILE) || (e->kind == J_PLAN && n_plan++))
			goto damaged;
	}
	/* Names are not NUL-terminated in the table: copy them out. */
	for (uint64_t i = 0; i < n; i++) {
		uint32_t nl = get32((const unsigned char *)ents[i].name - J_ENTRY + 4);
		char *s = strndup(ents[i].name, nl);
		if (!s) {
			lora_errf(err, "out of memory");
			goto out;
		}
		ents[i].name = s;
		ents[i].kind |= 0x100;   /* owned copy */
	}
	/* Tensors recomputed from the base, in place. */
	for (uint64_t i = 0; i < n; i++)
		if ((ents[i].kind & 0xff) == J_PLAN &&
		    apply_plan(dir, jpath, jfd, &ents[i], verify, pause, progress, progress_ctx, err) < 0)
			goto out;
	/* Ranges: into the existing files, at their offsets. */
	for (uint64_t i = 0; i < n; i++) {
		struct jentry *e = &ents[i];
		char *p;
		struct stat fs;
		if ((e->kind & 0xff) != J_RANGE)
			continue;
		p = lora_path_join(dir, e->name);
		fds[i] = p ? open(p, O_WRONLY | O_CLOEXEC | O_NOFOLLOW) : -1;
		if (fds[i] < 0) {
			lora_errf(err, "cannot finish the swap of '%s': cannot open '%s': %s", dir,
				  e->name, strerror(errno));
			free(p);
			goto out;
		}
		if (fstat(fds[i], &fs) < 0 || !S_ISREG(fs.st_mode) ||
		    e->target_off > (uint64_t)fs.st_size || e->len > (uint64_t)fs.st_size - e->target_off) {
			lora_errf(err, "cannot finish the swap of '%s': '%s' is not the file the journal "
				       "was written for", dir, p);
			free(p);
			goto out;
		}
		if (lseek(fds[i], (off_t)e->target_off, SEEK_SET) < 0) {
			lora_errf(err, "cannot seek in '%s': %s", p, strerror(errno));
			free(p);
			goto out;
		}
		if (lora_copy_range(fds[i], jfd, e->src_off, e->len, p, err) < 0) {
			free(p);
			goto out;
		}
		free(p);
		pause_us(pause);
	}
	for (uint64_t i = 0; i < n; i++)
		if (fds[i] >= 0) {
			if (fsync(fds[i]) < 0) {
				lora_errf(err, "cannot sync '%s/%s': %s", dir, ents[i].name, strerror(errno));
				goto out;
			}
		}
	/* Whole files: replaced atomically. */
	for (uint64_t i = 0; i < n; i++) {
		struct jentry *e = &ents[i];
		char *p, *buf;
		int r;
		if ((e->kind & 0xff) != J_FILE)
			continue;
		buf = malloc(e->len ? (size_t)e->len : 1);
		p = lora_path_join(dir, e->name);
		if (!buf || !p) {
			free(buf);
			free(p);
			lora_errf(err, "out of memory");
			goto out;
		}
		if (pread(jfd, buf, (size_t)e->len, (off_t)e->src_off) != (ssize_t)e->len) {
			free(buf);
			free(p);
			goto damaged;
		}
		r = lora_write_file_atomic(p, buf, (size_t)e->len, 0644, err);
		free(buf);
		free(p);
		if (r < 0)
			goto out;
		pause_us(pause);
	}
	if (unlink(jpath) < 0) {
		lora_errf(err, "cannot remove '%s': %s", jpath, strerror(errno));
		goto out;
	}
	rc = lora_fsync_dir(dir, err);
	goto out;
damaged:
	lora_errf(err, "'%s' is damaged; the swap it records cannot be finished (the folder may need "
		       "a fresh lora merge)", jpath);
out:
	if (fds)
		for (uint64_t i = 0; i < n; i++)
			if (fds[i] >= 0)
				close(fds[i]);
	if (ents)
		for (uint64_t i = 0; i < n; i++)
			if (ents[i].kind & 0x100)
				free((char *)ents[i].name);
	if (jfd >= 0)
		close(jfd);
	free(fds);
	free(ents);
	free(table);
	free(jpath);
	return rc;
}

/* ---------------------------------------------------------------- recover */

/* Leftovers of an interrupted swap: 1 when there is something to do. */
static int has_leftovers(const char *dir)
{
	char *p = lora_path_join(dir, LORA_SWAP_JOURNAL), *q = lora_path_join(dir, LORA_SWAP_JOURNAL_NEW);
	struct stat sb;
	int found = (p && lstat(p, &sb) == 0) || (q && lstat(q, &sb) == 0);
	DIR *d;
	struct dirent *e;

	free(p);
	free(q);
	if (found || !(d = opendir(dir)))
		return found;
	while (!found && (e = readdir(d)))
		found = !strncmp(e->d_name, TMP_JSON_PREFIX, strlen(TMP_JSON_PREFIX));
	closedir(d);
	return found;
}

/* With the folder locked: replay a committed journal, drop uncommitted leftovers. */
int lora_swap_recover_locked(const char *dir, struct lora_err *err)
{
	char *p;
	struct stat sb;
	DIR *d;
	struct dirent *e;
	int changed = 0;

	if (!has_leftovers(dir))
		return 0;
	if (access(dir, W_OK) < 0)
		return lora_errf(err, "'%s' holds an interrupted lora swap, and finishing it needs write "
				      "access to the folder", dir);
	p = lora_path_join(dir, LORA_SWAP_JOURNAL);
	if (!p)
		return lora_errf(err, "out of memory");
	if (lstat(p, &sb) == 0) {
		free(p);
		if (lora_swap_journal_apply(dir, 0, 1, NULL, NULL, err) < 0)
			return -1;
		changed = 1;
	} else {
		free(p);
	}
	/* Not committed: the folder still holds the old set. */
	p = lora_path_join(dir, LORA_SWAP_JOURNAL_NEW);
	if (p && unlink(p) == 0)
		changed = 1;
	free(p);
	if ((d = opendir(dir))) {
		while ((e = readdir(d)))
			if (!strncmp(e->d_name, TMP_JSON_PREFIX, strlen(TMP_JSON_PREFIX)) &&
			    (p = lora_path_join(dir, e->d_name))) {
				if (unlink(p) == 0)
					changed = 1;
				free(p);
			}
		closedir(d);
	}
	return changed ? lora_fsync_dir(dir, err) : 0;
}

int lora_merged_recover(const char *model_dir, struct lora_err *err)
{
	int fd, rc;

	if (!lora_is_dir(model_dir) || held_by_us(model_dir) || !has_leftovers(model_dir))
		return 0;
	if (lora_swap_lock_dir(model_dir, &fd, err) < 0)
		return -1;
	rc = lora_swap_recover_locked(model_dir, err);
	lora_swap_unlock_dir(fd);
	return rc;
}

