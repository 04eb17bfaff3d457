/* ckpt.c - work areas of training runs and checkpoint files (see ckpt.h). */
#include "train/ckpt.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "libadapter/base/fsutil.h"
#include "libadapter/format/safetensors.h"
#include "libadapter/store/store.h"

#define CKPT_FORMAT "lora-checkpoint"
#define CKPT_VERSION "1"

static char *work_parent(const char *store_dir, const struct lora_ref *r)
{
	size_t n = strlen(store_dir) + strlen(r->name) + 16;
	char *p = malloc(n);

	if (p)
		snprintf(p, n, "%s/work/%s", store_dir, r->name);
	return p;
}

char *lora_work_dir(const char *store_dir, const char *ref, struct lora_err *err)
{
	struct lora_ref r;
	char *parent, *dir;

	if (lora_ref_parse(ref, &r, err) < 0)
		return NULL;
	if (r.is_digest) {
		lora_errc(err, LORA_EUSAGE, "a training run is named NAME[:TAG], not a digest ('%s')", ref);
		return NULL;
	}
	/* NAME and TAG are [A-Za-z0-9._-] and never "." or "..": safe as path parts */
	parent = work_parent(store_dir, &r);
	dir = parent ? lora_path_join(parent, r.tag) : NULL;
	free(parent);
	if (!dir)
		lora_errf(err, "out of memory");
	return dir;
}

static int lock_fd(const char *work_dir, int create, int *busy, struct lora_err *err)
{
	char *p = lora_path_join(work_dir, ".lock");
	int fd;

	if (!p)
		return lora_errf(err, "out of memory");
	fd = open(p, O_RDWR | O_CLOEXEC | O_NOFOLLOW | (create ? O_CREAT : 0), 0644);
	if (fd < 0) {
		lora_errf(err, "cannot open '%s': %s", p, strerror(errno));
		free(p);
		return -1;
	}
	while (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		if (errno == EINTR)
			continue;
		if (errno == EWOULDBLOCK) {
			*busy = 1;
			lora_errf(err, "another lora train is using '%s'", work_dir);
		}
		else
			lora_errf(err, "cannot lock '%s': %s", p, strerror(errno));
		close(fd);
		free(p);
		return -1;
	}
	free(p);
	return fd;
}

int lora_work_lock(const char *work_dir, struct lora_err *err)
{
	int busy = 0;

	if (lora_mkdir_p(work_dir, 0755, err) < 0)
		return -1;
	return lock_fd(work_dir, 1, &busy, err);
}

int lora_work_remove(const char *store_dir, const char *ref, struct lora_err *err)
{
	char *dir = lora_work_dir(store_dir, ref, err), *parent = NULL;
	int fd = -1, rc = -1, busy = 0;

	if (!dir)
		return -1;
	if (!lora_is_dir(dir)) {
		rc = 0;
		goto out;
	}
	/* a missing .lock (a work area made by hand) is no obstacle */
	fd = lock_fd(dir, 0, &busy, err);
	if (busy) {
		lora_errf(err, "a training run of '%s' is in progress (its work area is '%s')", ref, dir);
		goto out;
	}
	if (lora_rm_rf(dir, err) < 0)
		goto out;
	if ((parent = lora_dirname(dir)))
		rmdir(parent);   /* only when empty; failure is fine */
	rc = 1;
out:
	if (fd >= 0)
		close(fd);
	free(dir);
	free(parent);
	return rc;
}

/* ------------------------------------------------------------ checkpoint file */

int lora_ckpt_write(const char *path, const char *state, const float *params, const float *m,
		    const float *v, size_t n, struct lora_err *err)
{
	static const char *const names[3] = { "params", "adam.m", "adam.v" };
	const char *keys[3] = { "format", "version", "state" };
	const char *vals[3] = { CKPT_FORMAT, CKPT_VERSION, state };
	const float *data[3] = { params, m, v };
	struct lora_st_spec specs[3];
	struct lora_st_writer w;

	if (!n)
		return lora_errf(err, "nothing to checkpoint");
	memset(specs, 0, sizeof(specs));
	for (int i = 0; i < 3; i++) {
		specs[i].name = names[i];
		specs[i].dtype = LORA_DT_F32;
		specs[i].ndim = 1;
		specs[i].shape[0] = n;
	}
	if (lora_st_writer_open(&w, path, specs, 3, keys, vals, 3, err) < 0)
		return -1;
	for (int i = 0; i < 3; i++)
		if (lora_st_writer_write(&w, data[i], n * sizeof(float), err) < 0) {
			lora_st_writer_abort(&w);
			return -1;
		}
	return lora_st_writer_commit(&w, err);
}

static float *copy_vec(const struct lora_st *st, const char *name, size_t *n, struct lora_err *err)
{
	const struct lora_st_tensor *t = lora_st_find(st, name);
	float *out;

	if (!t || t->dtype != LORA_DT_F32 || t->ndim != 1 || !t->nelem) {
		lora_errf(err, "checkpoint '%s' has no F32 vector '%s'", st->path, name);
		return NULL;
	}
	if (*n && t->nelem != *n) {
		lora_errf(err, "checkpoint '%s': '%s' has %llu values, not %zu", st->path, name,
			  (unsigned long long)t->nelem, *n);
		return NULL;
	}
	if (t->nelem > SIZE_MAX / sizeof(float)) {
		lora_errf(err, "checkpoint '%s': '%s' is too large", st->path, name);
		return NULL;
	}
	*n = (size_t)t->nelem;
	if (!(out = malloc(*n * sizeof(float)))) {
		lora_errf(err, "out of memory for a checkpoint of %zu parameters", *n);
		return NULL;
	}
	memcpy(out, t->data, *n * sizeof(float));
	return out;
}

int lora_ckpt_read(const char *path, struct lora_ckpt *c, struct lora_err *err)
{
	struct lora_st *st = NULL;
	const char *fmt, *ver, *state;
	int rc = -1;

	memset(c, 0, sizeof(*c));
	if (lora_st_open(path, &st, err) < 0)
		return lora_err_prefix(err, "reading the checkpoint");
	fmt = lora_st_meta(st, "format");
	ver = lora_st_meta(st, "version");
	state = lora_st_meta(st, "state");
	if (!fmt || strcmp(fmt, CKPT_FORMAT)) {
		lora_errf(err, "'%s' is not a lora checkpoint", path);
		goto out;
	}
	if (!ver || strcmp(ver, CKPT_VERSION)) {
		lora_errf(err, "checkpoint '%s' has version %s; this lora reads version %s", path,
			  ver ? ver : "(none)", CKPT_VERSION);
		goto out;
	}
	if (!state || !(c->state = strdup(state))) {
		lora_errf(err, state ? "out of memory" : "checkpoint '%s' has no state", path);
		goto out;
	}
	if (!(c->params = copy_vec(st, "params", &c->n, err)) || !(c->m = copy_vec(st, "adam.m", &c->n, err)) ||
	    !(c->v = copy_vec(st, "adam.v", &c->n, err)))
		goto out;
	rc = 0;
out:
	lora_st_close(st);
	if (rc)
		lora_ckpt_free(c);
	return rc;
}

void lora_ckpt_free(struct lora_ckpt *c)
{
	free(c->state);
	free(c->params);
	free(c->m);
	free(c->v);
	memset(c, 0, sizeof(*c));
}
