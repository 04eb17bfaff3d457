/* cuda.c - finding and loading liblora_cuda.so, and checking its table (see cuda.h). */
#include "train/cuda.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PLUGIN "liblora_cuda.so"

static const struct lora_cuda_abi *api;
static int loaded;            /* 1 ok, -1 failed */
static char why[PATH_MAX + 1024];
static char plugin_path[PATH_MAX + 64];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

/* Candidate paths: the one named, else beside the executable, ../lib/lora, and the parent (build trees). */
static void *open_plugin(const char *named)
{
	char exe[PATH_MAX], path[PATH_MAX + 64];
	const char *rel[] = { "", "../lib/lora/", "../" };
	ssize_t n;
	void *h;

	if (named && *named) {
		snprintf(plugin_path, sizeof(plugin_path), "%s", named);
		if ((h = dlopen(named, RTLD_NOW | RTLD_LOCAL)))
			return h;
		snprintf(why, sizeof(why), "cannot load the CUDA plugin %s: %s", named, dlerror());
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
		snprintf(plugin_path, sizeof(plugin_path), "%s", path);
		if ((h = dlopen(path, RTLD_NOW | RTLD_LOCAL)))
			return h;
		snprintf(why, sizeof(why), "cannot load the CUDA plugin %s: %s", path, dlerror());
		return NULL;
	}
	return NULL;
}

int lora_cuda_check_table(const struct lora_cuda_abi *t, const char *path, char *msg, size_t msglen)
{
	if (!t) {
		snprintf(msg, msglen, "the CUDA plugin %s returned no table", path);
		return -1;
	}
	if (t->version != LORA_CUDA_ABI_VERSION) {
		snprintf(msg, msglen,
			 "the CUDA plugin %s has ABI version %d, this lora needs %d: install the "
			 "liblora_cuda.so built with this lora", path, t->version, LORA_CUDA_ABI_VERSION);
		return -1;
	}
	if (t->size != sizeof(*t)) {
		snprintf(msg, msglen, "the CUDA plugin %s has a %u-byte table, this lora expects %zu "
			 "(same ABI version %d): rebuild it", path, t->size, sizeof(*t), t->version);
		return -1;
	}
	return 0;
}

/* The table of the plugin at handle h, checked. */
static const struct lora_cuda_abi *table_of(void *h)
{
	lora_cuda_plugin_fn fn;
	void *p = dlsym(h, "lora_cuda_plugin");
	const struct lora_cuda_abi *t;

	if (!p) {
		snprintf(why, sizeof(why), "%s is not a lora CUDA plugin (it lacks lora_cuda_plugin)", plugin_path);
		return NULL;
	}
	memcpy(&fn, &p, sizeof(fn));
	t = fn(LORA_CUDA_ABI_VERSION);
	return lora_cuda_check_table(t, plugin_path, why, sizeof(why)) == 0 ? t : NULL;
}

const struct lora_cuda_abi *lora_cuda_api(const char *plugin, char *msg, size_t msglen)
{
	void *h;

	pthread_mutex_lock(&lock);
	if (!loaded) {
		loaded = -1;
		h = open_plugin(plugin);
		if (h && (api = table_of(h)))
			loaded = 1;
		else if (h)
			dlclose(h);
	}
	pthread_mutex_unlock(&lock);
	if (loaded == 1)
		return api;
	snprintf(msg, msglen, "%s", why);
	return NULL;
}

int lora_cuda_device(const char *plugin, struct lora_cuda_info *info, char *msg, size_t msglen)
{
	const struct lora_cuda_abi *a;

	memset(info, 0, sizeof(*info));
	/* No NVIDIA driver: say so without mapping the CUDA libraries at all. */
	if (!(plugin && *plugin) && access("/dev/nvidiactl", F_OK) != 0 &&
	    access("/proc/driver/nvidia/version", F_OK) != 0) {
		snprintf(msg, msglen, "no NVIDIA driver on this machine");
		return 0;
	}
	a = lora_cuda_api(plugin, msg, msglen);
	if (!a)
		return 0;
	return a->query(info, msg, msglen);
}

static int lazy_init(const struct lora_merge_gpu *self, void **ctx, char *msg, size_t len)
{
	const struct lora_cuda_merge_hook *h = (const struct lora_cuda_merge_hook *)self;
	const struct lora_cuda_abi *a = lora_cuda_api(h->plugin, msg, len);
	return a ? a->merge_init(ctx, msg, len) : -1;
}
static void lazy_reset(void *ctx) { api->merge_reset(ctx); }
static void lazy_free(void *ctx) { api->merge_free(ctx); }
static int lazy_delta(void *ctx, int f64, int trans, int M, int N, int K, double coef, const void *m1,
		      size_t n1, size_t off1, int ld1, const void *m2, size_t n2, int ld2, int acc,
		      void *out, char *msg, size_t len)
{
	return api->merge_delta(ctx, f64, trans, M, N, K, coef, m1, n1, off1, ld1, m2, n2, ld2, acc, out,
			       msg, len);
}

/* reset/free/delta only run after a successful init, so the plugin is loaded by then. */
const struct lora_merge_gpu *lora_cuda_merge_hook(struct lora_cuda_merge_hook *h, const char *plugin)
{
	h->ops.init = lazy_init;
	h->ops.reset = lazy_reset;
	h->ops.delta = lazy_delta;
	h->ops.free = lazy_free;
	h->plugin = plugin;
	return &h->ops;
}
