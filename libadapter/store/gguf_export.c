/* gguf_export.c - stored adapters as llama.cpp GGUF files and Ollama folders, and back; see gguf_export.h. */
#include "libadapter/store/gguf_export.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "libadapter/base/fsutil.h"
#include "libadapter/format/gguf.h"
#include "libadapter/format/gguf_lora.h"
#include "libadapter/format/modeldir.h"

int lora_is_gguf_file(const char *path)
{
	unsigned char m[4];
	int fd = open(path, O_RDONLY | O_CLOEXEC), ok;

	if (fd < 0)
		return 0;
	ok = read(fd, m, 4) == 4 && !memcmp(m, LORA_GGUF_MAGIC, 4);
	close(fd);
	return ok;
}

/* The base must be the one the adapter was made for, when the manifest says which. */
static int check_base(const struct lora_adapter_src *a, const struct lora_model *m, struct lora_err *err)
{
	const char **names;
	char fp[72];
	int rc;

	if (!a->base_fingerprint)
		return 0;
	if (!(names = calloc(a->peft->n_modules ? a->peft->n_modules : 1, sizeof(*names))))
		return lora_errf(err, "out of memory");
	for (size_t i = 0; i < a->peft->n_modules; i++)
		names[i] = a->peft->modules[i].name;
	rc = lora_model_fingerprint(m, names, a->peft->n_modules, fp, err);
	free(names);
	if (rc < 0)
		return lora_err_prefix(err, "base '%s' does not fit adapter '%s'", m->dir, a->ref);
	if (strcmp(fp, a->base_fingerprint))
		return lora_errf(err, "base '%s' is not the model adapter '%s' was made for (fingerprint %.19s..., "
				 "recorded %.19s...)", m->dir, a->ref, fp, a->base_fingerprint);
	return 0;
}

int lora_store_export_gguf(const char *store_dir, const char *tmp_dir, const char *spec, const char *base_dir,
			   const char *out_path, struct lora_err *err)
{
	struct lora_adapter_src a = { 0 };
	struct lora_model *m = NULL;
	char name[256];
	int rc = -1;

	if (lora_adapter_open(store_dir, tmp_dir, spec, &a, err) < 0)
		return -1;
	if (lora_model_open(base_dir, 1, &m, err) < 0 || check_base(&a, m, err) < 0)
		goto out;
	snprintf(name, sizeof(name), "%s", a.ref);
	rc = lora_gguf_export_peft(a.peft, &m->cfg, name, out_path, err);
	if (rc < 0)
		lora_err_prefix(err, "adapter '%s'", a.ref);
out:
	lora_model_close(m);
	lora_adapter_close(&a);
	return rc;
}

static int dir_usable(const char *dir, struct lora_err *err)
{
	DIR *d;
	struct dirent *de;

	if (!lora_is_dir(dir)) {
		if (access(dir, F_OK) == 0)
			return lora_errf(err, "'%s' exists and is not a folder", dir);
		return lora_mkdir_p(dir, 0755, err);
	}
	if (!(d = opendir(dir)))
		return lora_errf(err, "cannot open '%s': %s", dir, strerror(errno));
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
			closedir(d);
			return lora_errf(err, "'%s' is not empty", dir);
		}
	closedir(d);
	return 0;
}

int lora_store_export_ollama(const char *store_dir, const char *tmp_dir, const char *spec, const char *base_dir,
			     const char *from, const char *out_dir, struct lora_err *err)
{
	char absbase[PATH_MAX], *gg = NULL, *mf = NULL, *txt = NULL;
	size_t n;
	int rc = -1;

	if (!from) {
		if (!realpath(base_dir, absbase))
			return lora_errf(err, "cannot resolve '%s': %s", base_dir, strerror(errno));
		from = absbase;
	}
	/* a Modelfile argument is the rest of one line */
	if (!*from || strpbrk(from, "\n\r\t \"")) {
		return lora_errf(err, "cannot write a Modelfile FROM '%s': it holds a space, quote or line break "
				 "(give --from NAME)", from);
	}
	if (dir_usable(out_dir, err) < 0)
		return -1;
	gg = lora_path_join(out_dir, "adapter.gguf");
	mf = lora_path_join(out_dir, "Modelfile");
	n = strlen(from) + strlen(spec) + 128;
	txt = malloc(n);
	if (!gg || !mf || !txt) {
		lora_errf(err, "out of memory");
		goto out;
	}
	if (lora_store_export_gguf(store_dir, tmp_dir, spec, base_dir, gg, err) < 0)
		goto out;
	snprintf(txt, n, "# lora export --format ollama of %s; ollama create NAME -f Modelfile\nFROM %s\n"
		 "ADAPTER ./adapter.gguf\n", spec, from);
	rc = lora_write_file_atomic(mf, txt, strlen(txt), 0644, err);
	if (rc < 0)
		unlink(gg);
out:
	free(gg);
	free(mf);
	free(txt);
	return rc;
}

int lora_store_import_gguf(const char *store_dir, const char *gguf_path, const char *base_dir, const char *ref,
			   const struct lora_import_opts *opts, const char *work_dir, char digest_out[72],
			   struct lora_err *err)
{
	struct lora_import_opts o = opts ? *opts : (struct lora_import_opts){ 0 };
	struct lora_model *m = NULL;
	struct lora_peft *p = NULL;
	const char **names = NULL;
	char fp[72], *tmp = NULL;
	int rc = -1;

	if (!(tmp = lora_path_join(work_dir, "lora-gguf-XXXXXX")))
		return lora_errf(err, "out of memory");
	if (!mkdtemp(tmp)) {
		lora_errf(err, "cannot create a work folder in '%s': %s", work_dir, strerror(errno));
		free(tmp);
		return -1;
	}
	if (lora_model_open(base_dir, 1, &m, err) < 0 || lora_gguf_to_peft(gguf_path, m, tmp, err) < 0 ||
	    lora_peft_open(tmp, &p, err) < 0)
		goto out;
	if (!(names = calloc(p->n_modules ? p->n_modules : 1, sizeof(*names)))) {
		lora_errf(err, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < p->n_modules; i++)
		names[i] = p->modules[i].name;
	if (lora_model_fingerprint(m, names, p->n_modules, fp, err) < 0)
		goto out;
	o.base_fingerprint = fp;
	rc = lora_store_add_peft_dir(store_dir, tmp, ref, &o, digest_out, err);
out:
	free(names);
	lora_peft_close(p);
	lora_model_close(m);
	lora_rm_rf(tmp, NULL);
	free(tmp);
	return rc;
}
