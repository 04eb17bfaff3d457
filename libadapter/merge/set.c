/*
 * set.c - adapter sets (REF[@WEIGHT] arguments, opening adapters) and output dtypes.
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
static int adapter_open(const char *store_dir, const char *tmp_dir, const char *spec,
			struct lora_merge_adapter *a, struct lora_err *err)
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
	if (lora_adapter_open(store_dir, tmp_dir, spec, src, err) < 0) {
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
	if (adapter_open(store_dir, set->tmp_dir, spec, &a, err) < 0) {
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

int lora_merge_is_float(enum lora_dtype dt)
{
	return dt == LORA_DT_F16 || dt == LORA_DT_BF16 || dt == LORA_DT_F32;
}

enum lora_dtype lora_merge_out_dtype(enum lora_dtype dt, enum lora_dtype chosen)
{
	return chosen != LORA_DT_INVALID && lora_merge_is_float(dt) ? chosen : dt;
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

