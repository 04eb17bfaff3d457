/* inspect.c - `lora inspect`: what an adapter folder, a model folder or a stored adapter is. */
#include <errno.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cmd/cmd.h"
#include "libadapter/format/modeldir.h"
#include "libadapter/format/peft.h"
#include "libadapter/base/fsutil.h"
#include "libadapter/algebra/lowrank.h"
#include "libadapter/store/store.h"

static void print_bytes(FILE *f, double b)
{
	const char *u[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	int i = 0;

	while (b >= 1024 && i < 4) {
		b /= 1024;
		i++;
	}
	fprintf(f, i ? "%.1f %s" : "%.0f %s", b, u[i]);
}

/* Comma-joined target modules (list form) or the regex. */
static void print_targets(const struct lora_peft_config *c)
{
	if (c->target_regex) {
		printf("%s (regex)", c->target_regex);
		return;
	}
	for (size_t i = 0; i < c->n_target_modules; i++)
		printf("%s%s", i ? ", " : "", c->target_modules[i]);
	if (!c->n_target_modules)
		printf("-");
}

static cJSON *targets_json(const struct lora_peft_config *c)
{
	cJSON *a;

	if (c->target_regex)
		return cJSON_CreateString(c->target_regex);
	a = cJSON_CreateArray();
	for (size_t i = 0; i < c->n_target_modules; i++)
		cJSON_AddItemToArray(a, cJSON_CreateString(c->target_modules[i]));
	return a;
}

/* sv: NULL, or per module its m->r singular values (--spectrum) */
static int adapter_json(const struct lora_peft *p, const double *norms, double *const *sv,
			cJSON *stored)
{
	cJSON *o = cJSON_CreateObject(), *mods;

	cJSON_AddStringToObject(o, "kind", "adapter");
	cJSON_AddStringToObject(o, "path", p->dir ? p->dir : "");
	if (p->cfg.base_model)
		cJSON_AddStringToObject(o, "base", p->cfg.base_model);
	else
		cJSON_AddNullToObject(o, "base");
	cJSON_AddStringToObject(o, "peft_type", p->cfg.peft_type);
	cJSON_AddNumberToObject(o, "r", p->cfg.r);
	cJSON_AddNumberToObject(o, "alpha", p->cfg.lora_alpha);
	cJSON_AddBoolToObject(o, "use_rslora", p->cfg.use_rslora);
	cJSON_AddBoolToObject(o, "fan_in_fan_out", p->cfg.fan_in_fan_out);
	cJSON_AddItemToObject(o, "target_modules", targets_json(&p->cfg));
	cJSON_AddNumberToObject(o, "parameters", (double)p->n_params);
	cJSON_AddNumberToObject(o, "bytes", (double)p->bytes);
	cJSON_AddStringToObject(o, "dtype", lora_dtype_name(p->dtype));
	mods = cJSON_AddArrayToObject(o, "modules");
	for (size_t i = 0; i < p->n_modules; i++) {
		const struct lora_peft_module *m = &p->modules[i];
		cJSON *j = cJSON_CreateObject();
		cJSON_AddStringToObject(j, "name", m->name);
		cJSON_AddNumberToObject(j, "r", m->r);
		cJSON_AddNumberToObject(j, "alpha", m->alpha);
		cJSON_AddNumberToObject(j, "scale", m->scale);
		cJSON_AddNumberToObject(j, "delta_norm", norms[i]);
		cJSON_AddNumberToObject(j, "in", (double)m->in);
		cJSON_AddNumberToObject(j, "out", (double)m->out);
		if (sv) {
			cJSON_AddItemToObject(j, "singular_values", cJSON_CreateDoubleArray(sv[i], m->r));
			cJSON_AddNumberToObject(j, "effective_rank", lora_effective_rank(sv[i], m->r));
		}
		cJSON_AddItemToArray(mods, j);
	}
	if (stored) {
		/* A stored adapter or package: ref, digest, manifest, signer, verification, files. */
		const char *keys[] = { "ref", "digest", "manifest", "signer", "verified", "verify_error", "files" };
		for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
			cJSON *v = cJSON_DetachItemFromObjectCaseSensitive(stored, keys[k]);
			if (v)
				cJSON_AddItemToObject(o, keys[k], v);
		}
		if (!p->cfg.base_model) {
			cJSON *m = cJSON_GetObjectItemCaseSensitive(o, "manifest");
			cJSON *b = m ? cJSON_GetObjectItemCaseSensitive(m, "base_model") : NULL;
			cJSON *bn = cJSON_IsObject(b) ? cJSON_GetObjectItemCaseSensitive(b, "name") : NULL;
			if (cJSON_IsString(bn))
				cJSON_ReplaceItemInObjectCaseSensitive(o, "base", cJSON_CreateString(bn->valuestring));
		}
	}
	return cmd_print_json(o);
}

static const char *jstr(const cJSON *o, const char *k)
{
	const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL;
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* jstr, or def when absent. */
static const char *jstr_or(const cJSON *o, const char *k, const char *def)
{
	const char *s = jstr(o, k);
	return s ? s : def;
}

/* "label value" when the string is present. */
static void line(const char *label, const char *value)
{
	if (value)
		printf("%-11s %s\n", label, value);
}

/* The store's part of the text: ref, digest, signer, verification, files. */
static void stored_text(const cJSON *st)
{
	const cJSON *m = cJSON_GetObjectItemCaseSensitive(st, "manifest");
	const cJSON *sg = cJSON_GetObjectItemCaseSensitive(st, "signer");
	const cJSON *files = cJSON_GetObjectItemCaseSensitive(st, "files"), *f;
	const cJSON *base = m ? cJSON_GetObjectItemCaseSensitive(m, "base_model") : NULL;

	printf("ref         %s\n", jstr_or(st, "ref", "-"));
	line("digest", jstr(st, "digest"));
	line("description", jstr(m, "description"));
	line("created", jstr(m, "created"));
	if (cJSON_IsObject(base))
		line("base print", jstr(base, "fingerprint"));
	if (cJSON_IsObject(sg))
		printf("signer      %s (%s, %s)\n", jstr_or(sg, "identity", "?"),
		       jstr_or(sg, "key_fingerprint", "?"),
		       cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(sg, "trusted")) ? "trusted" : "not trusted");
	else
		printf("signer      (unsigned)\n");
	if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(st, "verified")))
		printf("verified    yes\n");
	else
		printf("verified    NO: %s\n", jstr_or(st, "verify_error", "?"));
	cJSON_ArrayForEach(f, files)
		printf("  file      %-28s %10.0f  %.16s...\n", jstr_or(f, "name", "?"),
		       cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(f, "size")),
		       jstr_or(f, "sha256", ""));
}

static void adapter_text(const struct lora_peft *p, const double *norms, double *const *sv,
			 const cJSON *stored)
{
	const struct lora_peft_config *c = &p->cfg;

	if (stored)
		stored_text(stored);
	else
		printf("adapter     %s\n", p->dir ? p->dir : "");
	printf("base        %s\n", c->base_model ? c->base_model : "(not recorded)");
	printf("type        %s%s%s\n", c->peft_type, c->use_rslora ? ", rsLoRA" : "",
	       c->fan_in_fan_out ? ", fan_in_fan_out" : "");
	printf("r           %d\nalpha       %g\n", c->r, c->lora_alpha);
	if (c->n_rank_pattern || c->n_alpha_pattern)
		printf("patterns    %zu rank, %zu alpha\n", c->n_rank_pattern, c->n_alpha_pattern);
	printf("targets     ");
	print_targets(c);
	printf("\nparameters  %llu (", (unsigned long long)p->n_params);
	print_bytes(stdout, (double)p->bytes);
	printf(", %s)\nmodules     %zu\n\n", lora_dtype_name(p->dtype), p->n_modules);
	printf("%-48s %5s %8s %9s %11s\n", "MODULE", "R", "ALPHA", "SCALE", "|dW|_F");
	for (size_t i = 0; i < p->n_modules; i++) {
		const struct lora_peft_module *m = &p->modules[i];
		printf("%-48s %5d %8g %9.4g %11.5g\n", m->name, m->r, m->alpha, m->scale, norms[i]);
	}
	if (!sv)
		return;
	printf("\nspectrum: singular values of each dW, largest first; effective rank = exp(entropy of s/sum s)\n");
	printf("%-48s %8s  %s\n", "MODULE", "EFF.RANK", "SINGULAR VALUES");
	for (size_t i = 0; i < p->n_modules; i++) {
		const struct lora_peft_module *m = &p->modules[i];
		printf("%-48s %8.2f ", m->name, lora_effective_rank(sv[i], m->r));
		for (int k = 0; k < m->r && k < 8; k++)
			printf(" %.4g", sv[i][k]);
		if (m->r > 8)
			printf(" ... (%d more; --json has all)", m->r - 8);
		putchar('\n');
	}
}

static int show_adapter(const struct lora_peft *p, int json, int spectrum, cJSON *stored)
{
	struct lora_err err = { 0 };
	double *norms, **sv = NULL;
	int rc = 0;

	norms = calloc(p->n_modules + 1, sizeof(double));
	if (!norms)
		return cmd_error("out of memory");
	if (spectrum && !(sv = calloc(p->n_modules + 1, sizeof(*sv)))) {
		rc = cmd_error("out of memory");
		goto out;
	}
	if (lora_peft_figures(p, norms, sv, &err) < 0) {
		rc = cmd_fail(&err);
		goto out;
	}
	if (json)
		rc = adapter_json(p, norms, sv, stored);
	else
		adapter_text(p, norms, sv, stored);
out:
	for (size_t i = 0; sv && i < p->n_modules; i++)
		free(sv[i]);
	free(sv);
	free(norms);
	return rc;
}

static int inspect_adapter(const char *dir, int json, int spectrum)
{
	struct lora_err err = { 0 };
	struct lora_peft *p;
	int rc;

	if (lora_peft_open(dir, &p, &err) < 0)
		return cmd_fail(&err);
	rc = show_adapter(p, json, spectrum, NULL);
	lora_peft_close(p);
	return rc;
}

/* A store REF or a .lora file: the adapter plus what the store knows of it. */
static int inspect_stored(const struct cmd_ctx *ctx, const char *spec, int json, int spectrum)
{
	struct lora_err err = { 0 };
	struct lora_adapter_src a = { 0 };
	cJSON *d = NULL;
	int rc;

	if (lora_store_describe(ctx->store, spec, &d, &err) < 0)
		return cmd_fail(&err);
	if (lora_adapter_open(ctx->store, ctx->tmp_dir, spec, &a, &err) < 0) {
		/* Unverifiable package: still show what the store says, then fail. */
		if (!json)
			stored_text(d);
		cJSON_Delete(d);
		return cmd_fail(&err);
	}
	rc = show_adapter(a.peft, json, spectrum, d);
	lora_adapter_close(&a);
	cJSON_Delete(d);
	return rc;
}

static int model_json(const struct lora_model *m)
{
	const struct lora_model_config *c = &m->cfg;
	cJSON *o = cJSON_CreateObject(), *sh;

	cJSON_AddStringToObject(o, "kind", "model");
	cJSON_AddStringToObject(o, "path", m->dir);
	cJSON_AddStringToObject(o, "architecture", c->architecture);
	cJSON_AddStringToObject(o, "model_type", c->model_type);
	cJSON_AddNumberToObject(o, "layers", c->num_hidden_layers);
	cJSON_AddNumberToObject(o, "hidden_size", c->hidden_size);
	cJSON_AddNumberToObject(o, "intermediate_size", c->intermediate_size);
	cJSON_AddNumberToObject(o, "heads", c->num_attention_heads);
	cJSON_AddNumberToObject(o, "kv_heads", c->num_key_value_heads);
	cJSON_AddNumberToObject(o, "head_dim", c->head_dim);
	cJSON_AddNumberToObject(o, "vocab_size", c->vocab_size);
	cJSON_AddBoolToObject(o, "tie_word_embeddings", c->tie_word_embeddings);
	cJSON_AddStringToObject(o, "dtype", lora_dtype_name(lora_model_dtype(m)));
	cJSON_AddNumberToObject(o, "parameters", (double)m->n_params);
	cJSON_AddNumberToObject(o, "bytes", (double)m->total_bytes);
	cJSON_AddNumberToObject(o, "tensors", (double)m->n_tensors);
	sh = cJSON_AddArrayToObject(o, "shards");
	for (size_t i = 0; i < m->n_shards; i++) {
		cJSON *j = cJSON_CreateObject();
		cJSON_AddStringToObject(j, "file", m->shard_names[i]);
		cJSON_AddNumberToObject(j, "tensors", (double)m->shards[i]->n_tensors);
		cJSON_AddNumberToObject(j, "bytes", (double)m->shards[i]->size);
		cJSON_AddItemToArray(sh, j);
	}
	return cmd_print_json(o);
}

static void model_text(const struct lora_model *m)
{
	const struct lora_model_config *c = &m->cfg;

	printf("model         %s\n", m->dir);
	printf("architecture  %s%s%s%s\n", c->architecture[0] ? c->architecture : "(no config.json)",
	       c->model_type[0] ? " (" : "", c->model_type, c->model_type[0] ? ")" : "");
	printf("layers        %d\nhidden size   %d (intermediate %d)\n", c->num_hidden_layers,
	       c->hidden_size, c->intermediate_size);
	printf("heads         %d (kv heads %d, head dim %d)\nvocab         %d%s\n",
	       c->num_attention_heads, c->num_key_value_heads, c->head_dim, c->vocab_size,
	       c->tie_word_embeddings ? " (tied embeddings)" : "");
	printf("dtype         %s\nparameters    %llu\nsize          ", lora_dtype_name(lora_model_dtype(m)),
	       (unsigned long long)m->n_params);
	print_bytes(stdout, (double)m->total_bytes);
	printf("\nshards        %zu\n", m->n_shards);
	for (size_t i = 0; i < m->n_shards; i++) {
		printf("  %-40s %6zu tensors  ", m->shard_names[i], m->shards[i]->n_tensors);
		print_bytes(stdout, (double)m->shards[i]->size);
		putchar('\n');
	}
}

static int inspect_model(const char *dir, int json)
{
	struct lora_err err = { 0 };
	struct lora_model *m;
	int rc = 0;

	if (lora_model_open(dir, 0, &m, &err) < 0)
		return cmd_fail(&err);
	if (json)
		rc = model_json(m);
	else
		model_text(m);
	lora_model_close(m);
	return rc;
}

/* A bare .safetensors file: its tensors and metadata. */
static int inspect_file(const char *path, int json)
{
	struct lora_err err = { 0 };
	struct lora_st *st;
	cJSON *o, *arr, *meta;

	if (lora_st_open(path, &st, &err) < 0)
		return cmd_fail(&err);
	if (!json) {
		printf("file        %s\ntensors     %zu\nheader      %llu bytes\n", path, st->n_tensors,
		       (unsigned long long)st->header_len);
		for (size_t i = 0; i < st->n_meta; i++)
			printf("metadata    %s = %s\n", st->meta_keys[i], st->meta_vals[i]);
		for (size_t i = 0; i < st->n_tensors; i++) {
			const struct lora_st_tensor *t = &st->tensors[i];
			printf("  %-56s %-7s [", t->name, lora_dtype_name(t->dtype));
			for (int d = 0; d < t->ndim; d++)
				printf("%s%llu", d ? ", " : "", (unsigned long long)t->shape[d]);
			printf("]\n");
		}
		lora_st_close(st);
		return 0;
	}
	o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "kind", "safetensors");
	cJSON_AddStringToObject(o, "path", path);
	meta = cJSON_AddObjectToObject(o, "metadata");
	for (size_t i = 0; i < st->n_meta; i++)
		cJSON_AddStringToObject(meta, st->meta_keys[i], st->meta_vals[i]);
	arr = cJSON_AddArrayToObject(o, "tensors");
	for (size_t i = 0; i < st->n_tensors; i++) {
		const struct lora_st_tensor *t = &st->tensors[i];
		cJSON *j = cJSON_CreateObject(), *sh = cJSON_CreateArray();
		cJSON_AddStringToObject(j, "name", t->name);
		cJSON_AddStringToObject(j, "dtype", lora_dtype_name(t->dtype));
		for (int d = 0; d < t->ndim; d++)
			cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t->shape[d]));
		cJSON_AddItemToObject(j, "shape", sh);
		cJSON_AddNumberToObject(j, "offset", (double)t->file_offset);
		cJSON_AddNumberToObject(j, "bytes", (double)(t->end - t->begin));
		cJSON_AddItemToArray(arr, j);
	}
	lora_st_close(st);
	return cmd_print_json(o);
}

static int has_file(const char *dir, const char *name)
{
	char *p = lora_path_join(dir, name);
	int r = p && lora_is_file(p);
	free(p);
	return r;
}

static const struct cmd_opt opts[] = {
	{ "json", 0, NULL, "one JSON document on stdout", 'j', 0, 0 },
	{ "spectrum", 0, NULL, "singular values per module and an effective rank", 's', 0, 0 },
	{ 0 }
};

static CMD(inspect)
{
	int c, json = 0, spectrum = 0;
	const char *path;

	while ((c = cmd_getopt(ctx, argc, argv)) != -1) {
		switch (c) {
		case 'j': json = 1; break;
		case 's': spectrum = 1; break;
		default: return 2;
		}
	}
	if (optind != argc - 1)
		return cmd_usage(ctx, "inspect takes one PATH or REF");
	path = argv[optind];
	if (lora_is_dir(path)) {
		if (has_file(path, "adapter_config.json"))
			return inspect_adapter(path, json, spectrum);
		if (has_file(path, "config.json") || has_file(path, "model.safetensors") ||
		    has_file(path, "model.safetensors.index.json"))
			return inspect_model(path, json);
		if (has_file(path, "adapter_model.safetensors") || has_file(path, "adapter_model.bin"))
			return inspect_adapter(path, json, spectrum);
		return inspect_model(path, json);  /* explains what is missing (pickle, nothing) */
	}
	{
		size_t n = strlen(path);
		if (n > 12 && !strcmp(path + n - 12, ".safetensors") && lora_is_file(path))
			return inspect_file(path, json);
		if ((n > 4 && !strcmp(path + n - 4, ".bin")) || (n > 3 && !strcmp(path + n - 3, ".pt")))
			return cmd_error("'%s' is a pickle file, which lora refuses (loading pickle runs "
					 "arbitrary code); convert it to safetensors", path);
	}
	{
		struct stat sb;
		/* Something that exists but is neither folder nor file, or a path that is not there. */
		if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode))
			return cmd_error("'%s' is not a regular file or folder", path);
		if (stat(path, &sb) < 0 && (strchr(path, '/') || strstr(path, ".safetensors")))
			return cmd_error("cannot open '%s': %s", path, strerror(errno));
	}
	return inspect_stored(ctx, path, json, spectrum);
}

const struct cmd_def cmd_inspect_entry = {
	"inspect", cmd_inspect, CMD_NEED_STORE, "describe an adapter or a model folder",
	"lora inspect (PATH | REF) [--json] [--spectrum]",
	opts, 16, NULL
};
