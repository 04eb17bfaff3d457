/* cuda.c - finding and loading liblora_cuda.so (see cuda.h). */
#include "train/cuda.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PLUGIN "liblora_cuda.so"

static struct lora_cuda_api api;
static int loaded;            /* 1 ok, -1 failed */
static char why[PATH_MAX + 1024];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

/* Candidate paths: $LORA_CUDA_PLUGIN, beside the executable, ../lib/lora, and the parent (build trees). */
static void *open_plugin(void)
{
	char exe[PATH_MAX], path[PATH_MAX + 64];
	const char *env = getenv("LORA_CUDA_PLUGIN");
	const char *rel[] = { "", "../lib/lora/", "../" };
	ssize_t n;
	void *h;

	if (env && *env) {
		if ((h = dlopen(env, RTLD_NOW | RTLD_LOCAL)))
			return h;
		snprintf(why, sizeof(why), "cannot load the CUDA plugin %s: %s", env, dlerror());
		return NULL;
	}
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0) {
		snprintf(why, sizeof(why), "cannot find the lora executable to look for %s", PLUGIN);
		return NULL;
	}
	exe[n] = '\0';
	*strrchr(exe, '/') = '\0';
	snprintf(why, sizeof(why), "this lora has no CUDA plugin: %s is not beside it", PLUGIN);
	for (size_t i = 0; i < sizeof(rel) / sizeof(rel[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s%s", exe, rel[i], PLUGIN);
		if (access(path, F_OK) != 0)
			continue;
		if ((h = dlopen(path, RTLD_NOW | RTLD_LOCAL)))
			return h;
		snprintf(why, sizeof(why), "cannot load the CUDA plugin %s: %s", path, dlerror());
		return NULL;
	}
	return NULL;
}

static int sym(void *h, const char *name, void *out)
{
	void *p = dlsym(h, name);

	if (!p) {
		snprintf(why, sizeof(why), "the CUDA plugin lacks %s", name);
		return -1;
	}
	memcpy(out, &p, sizeof(p));
	return 0;
}

const struct lora_cuda_api *lora_cuda_api(char *msg, size_t msglen)
{
	void *h;

	pthread_mutex_lock(&lock);
	if (!loaded) {
		loaded = -1;
		h = open_plugin();
		if (h && sym(h, "lora_cuda_query", &api.query) == 0 &&
		    sym(h, "lora_cuda_merge_init", &api.merge.init) == 0 &&
		    sym(h, "lora_cuda_merge_reset", &api.merge.reset) == 0 &&
		    sym(h, "lora_cuda_merge_delta", &api.merge.delta) == 0 &&
		    sym(h, "lora_cuda_merge_free", &api.merge.free) == 0)
			loaded = 1;
	}
	pthread_mutex_unlock(&lock);
	if (loaded == 1)
		return &api;
	snprintf(msg, msglen, "%s", why);
	return NULL;
}

int lora_cuda_device(struct lora_cuda_info *info, char *msg, size_t msglen)
{
	const struct lora_cuda_api *a;

	memset(info, 0, sizeof(*info));
	/* No NVIDIA driver: say so without mapping the CUDA libraries at all. */
	if (!getenv("LORA_CUDA_PLUGIN") && access("/dev/nvidiactl", F_OK) != 0 &&
	    access("/proc/driver/nvidia/version", F_OK) != 0) {
		snprintf(msg, msglen, "no NVIDIA driver on this machine");
		return 0;
	}
	a = lora_cuda_api(msg, msglen);
	if (!a)
		return 0;
	return a->query(info, msg, msglen);
}

static int lazy_init(void **ctx, char *msg, size_t len)
{
	const struct lora_cuda_api *a = lora_cuda_api(msg, len);
	return a ? a->merge.init(ctx, msg, len) : -1;
}
static void lazy_reset(void *ctx) { api.merge.reset(ctx); }
static void lazy_free(void *ctx) { api.merge.free(ctx); }
static int lazy_delta(void *ctx, int f64, int trans, int M, int N, int K, double coef, const void *m1,
		      size_t n1, size_t off1, int ld1, const void *m2, size_t n2, int ld2, int acc,
		      void *out, char *msg, size_t len)
{
	return api.merge.delta(ctx, f64, trans, M, N, K, coef, m1, n1, off1, ld1, m2, n2, ld2, acc, out,
			       msg, len);
}

/* reset/free/delta only run after a successful init, so the plugin is loaded by then. */
const struct lora_merge_gpu lora_cuda_merge_lazy = { lazy_init, lazy_reset, lazy_delta, lazy_free };
