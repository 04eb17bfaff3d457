/*
 * merge.c - merging LoRA adapters into a base model folder (see merge.h).
 *
 * This file is the merge job itself (staging folder, fingerprint checks,
 * shards, config and index, the final rename).  The rest of the room:
 * set.c (adapter sets), plan.c (the plan), fpline.c (fingerprint lines and
 * their cache), engine.c (row blocks and parallel batches), record.c
 * (lora-merge.json, shard metadata and headers), swap.c (swaps in place).
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
	if (lora_model_open(o->base_dir, 0, &j.base, err) < 0)
		return -1;
	if (!(j.base_abs = realpath(o->base_dir, NULL))) {
		lora_errf(err, "cannot resolve '%s': %s", o->base_dir, strerror(errno));
		goto out;
	}
	if (lora_merge_plan_add(&j.plan, j.base, o->base_dir, set, 1.0, err) < 0)
		goto out;
	j.cache = lora_linecache_open(j.base, o->cache_dir);
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

