/* extract.c - `lora extract`: a LoRA adapter from a full fine-tune. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cmd/cmd.h"
#include "libadapter/algebra/extract.h"
#include "libadapter/base/fsutil.h"
#include "libadapter/store/store.h"

static void on_progress(void *ctx, double done, double total)
{
	struct cmd_progress *p = ctx;

	p->total = total;
	cmd_progress_update(p, done, NULL);
}

/* "q_proj,v_proj" -> malloc'd array of n strings pointing into the malloc'd copy *buf. */
static const char **split_list(const char *s, size_t *n, char **buf)
{
	const char **v;
	size_t cap = 1;
	char *tok, *save = NULL;

	for (const char *c = s; *c; c++)
		cap += *c == ',';
	*n = 0;
	if (!(*buf = strdup(s)) || !(v = calloc(cap + 1, sizeof(*v)))) {
		free(*buf);
		*buf = NULL;
		return NULL;
	}
	for (tok = strtok_r(*buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
		if (*tok)
			v[(*n)++] = tok;
	return v;
}

static int report(const char *out, const char *ref, const char *digest,
		  const struct lora_extract_result *r, int json)
{
	if (json) {
		cJSON *o = cJSON_CreateObject(), *mods;
		if (ref) {
			cJSON_AddStringToObject(o, "ref", ref);
			cJSON_AddStringToObject(o, "digest", digest);
		} else {
			cJSON_AddStringToObject(o, "path", out);
		}
		cJSON_AddNumberToObject(o, "r", r->r);
		cJSON_AddNumberToObject(o, "written", (double)r->n_written);
		cJSON_AddStringToObject(o, "base_fingerprint", r->base_fingerprint);
		mods = cJSON_AddArrayToObject(o, "modules");
		for (size_t i = 0; i < r->n_modules; i++) {
			const struct lora_extract_module *m = &r->modules[i];
			cJSON *e = cJSON_CreateObject(), *shape = cJSON_CreateArray();
			cJSON_AddStringToObject(e, "name", m->name);
			cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)m->out));
			cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)m->in));
			cJSON_AddItemToObject(e, "shape", shape);
			cJSON_AddNumberToObject(e, "r", m->r);
			cJSON_AddNumberToObject(e, "norm", m->norm);
			if (isnan(m->energy))
				cJSON_AddNullToObject(e, "energy");
			else
				cJSON_AddNumberToObject(e, "energy", m->energy);
			cJSON_AddBoolToObject(e, "unchanged", m->unchanged);
			cJSON_AddItemToArray(mods, e);
		}
		return cmd_print_json(o);
	}
	printf("%-44s %13s %11s %9s\n", "MODULE", "SHAPE", "|dW|_F", "CAPTURED");
	for (size_t i = 0; i < r->n_modules; i++) {
		const struct lora_extract_module *m = &r->modules[i];
		char shape[48];
		snprintf(shape, sizeof(shape), "%llux%llu", (unsigned long long)m->out,
			 (unsigned long long)m->in);
		printf("%-44s %13s %11.5g ", m->name, shape, m->norm);
		if (m->unchanged)
			printf("%9s\n", "unchanged");
		else
			printf("%8.3f%%\n", 100 * m->energy);
	}
	if (ref)
		printf("\n%s %s\n", ref, digest);
	else
		printf("\nwrote %s\n", out);
	printf("r=%d, %zu modules (%zu unchanged left out), base fingerprint %s\n", r->r, r->n_written,
	       r->n_modules - r->n_written, r->base_fingerprint);
	return 0;
}

static const struct cmd_opt opts[] = {
	{ "base", 0, "DIR", NULL, 'b', 0, 0 },
	{ "tuned", 0, "DIR", NULL, 't', 0, 0 },
	{ "rank", 0, "R", "rank of the adapter", 'r', 0, 0 },
	{ "targets", 0, "LIST", "comma-separated module names (q_proj,v_proj); default: every\n"
				"2-d weight inside numbered layers (all linear layers)", 'T', 0, 0 },
	{ "name", 0, "NAME[:TAG]", "add the result to the store, signed", 'n', 0, 0 },
	{ "output", 'o', "DIR", "write a PEFT folder instead", 'o', 0, 0 },
	{ "iters", 0, "N", "power iterations of the randomized SVD (default 2)", 'i', 0, 0 },
	{ "oversample", 0, "P", "extra random directions (default 10)", 'p', 0, 0 },
	{ "seed", 0, "S", "random seed (default 0)", 's', 0, 0 },
	{ "dtype", 0, "D", "dtype of the written tensors (default fp32)", 'd', 0, 0 },
	{ "key", 0, "FILE", "signing key (default: the store's key)", 'k', 0, 0 },
	{ "description", 0, "T", "description recorded in the manifest", 'D', 0, 0 },
	{ "json", 0, NULL, "one JSON document on stdout", 'j', 0, 0 },
	{ 0 }
};

static CMD(extract)
{
	struct lora_extract_params p = { .oversample = -1, .iters = -1, .dtype = LORA_DT_F32 };
	struct lora_extract_result res = { 0 };
	struct lora_err err = { 0 };
	struct cmd_progress prog;
	const char *base = NULL, *tuned = NULL, *name = NULL, *out = NULL, *targets = NULL;
	const char *key = NULL, *desc = NULL;
	char ref[LORA_REF_MAX] = "", digest[72] = "", *tbuf = NULL, *tmp = NULL, *dir = NULL;
	long v;
	int c, json = 0, rc;

	while ((c = cmd_getopt(ctx, argc, argv)) != -1) {
		switch (c) {
		case 'b': base = optarg; break;
		case 't': tuned = optarg; break;
		case 'T': targets = optarg; break;
		case 'n': name = optarg; break;
		case 'o': out = optarg; break;
		case 'j': json = 1; break;
		case 'k': key = optarg; break;
		case 'D': desc = optarg; break;
		case 'r':
			if (cmd_optarg_long(ctx, 1, 100000, &v) < 0)
				return 2;
			p.rank = (int)v;
			break;
		case 'i':
			if (cmd_optarg_long(ctx, 0, 20, &v) < 0)
				return 2;
			p.iters = (int)v;
			break;
		case 'p':
			if (cmd_optarg_long(ctx, 0, 1000, &v) < 0)
				return 2;
			p.oversample = (int)v;
			break;
		case 's':
			if (cmd_optarg_long(ctx, 0, 0x7fffffffL, &v) < 0)
				return 2;
			p.seed = (uint64_t)v;
			break;
		case 'd':
			if (!strcmp(optarg, "fp32") || !strcmp(optarg, "f32"))
				p.dtype = LORA_DT_F32;
			else if (!strcmp(optarg, "bf16"))
				p.dtype = LORA_DT_BF16;
			else if (!strcmp(optarg, "fp16") || !strcmp(optarg, "f16"))
				p.dtype = LORA_DT_F16;
			else
				return cmd_usage(ctx, "unknown dtype '%s' (fp32, bf16 or fp16)", optarg);
			break;
		default: return 2;
		}
	}
	if (optind != argc)
		return cmd_usage(ctx, "unexpected argument '%s'", argv[optind]);
	if (!base || !tuned || !p.rank)
		return cmd_usage(ctx, "--base, --tuned and --rank are required");
	if (!name == !out)
		return cmd_usage(ctx, "give exactly one of --name NAME[:TAG] and -o DIR");
	if (name) {
		struct lora_ref r;
		size_t n = strlen(ctx->tmp_dir) + 32;
		if (lora_ref_parse(name, &r, &err) < 0 || r.is_digest)
			return r.is_digest ? cmd_usage(ctx, "--name wants NAME[:TAG]") : cmd_fail(&err);
		snprintf(ref, sizeof(ref), "%s:%s", r.name, r.tag);
		/* before the long part: no key, no point */
		if (lora_store_check_signing_key(ctx->store, key, &err) < 0)
			return cmd_fail(&err);
		if (!(tmp = malloc(n)))
			return cmd_error("out of memory");
		snprintf(tmp, n, "%s/lora-extract-XXXXXX", ctx->tmp_dir);
		if (!mkdtemp(tmp) || !(dir = lora_path_join(tmp, "adapter"))) {
			free(tmp);
			return cmd_error("cannot create a temporary folder");
		}
		out = dir;
	}
	if (targets) {
		p.targets = split_list(targets, &p.n_targets, &tbuf);
		if (!p.targets || !p.n_targets) {
			rc = p.targets ? cmd_usage(ctx, "--targets needs at least one module name") :
					 cmd_error("out of memory");
			goto out;
		}
	}
	cmd_progress_start(&prog, ctx, "extract", 1);
	p.progress = on_progress;
	p.progress_ctx = &prog;
	rc = lora_extract(base, tuned, &p, out, &res, &err);
	cmd_progress_end(&prog);
	if (rc < 0) {
		rc = cmd_fail(&err);
		goto out;
	}
	if (name) {
		struct lora_import_opts o = { 0 };
		o.key_path = key;
		o.description = desc;
		o.base_fingerprint = res.base_fingerprint;
		o.provenance_json = res.provenance_json;
		o.user = ctx->user;
		o.created = ctx->created;
		if (lora_store_add_peft_dir(ctx->store, dir, ref, &o, digest, &err) < 0) {
			rc = cmd_fail(&err);
			lora_extract_result_free(&res);
			goto out;
		}
	}
	rc = report(out, name ? ref : NULL, digest, &res, json);
	lora_extract_result_free(&res);
out:
	free(tbuf);
	free((void *)p.targets);
	if (tmp)
		lora_rm_rf(tmp, NULL);
	free(tmp);
	free(dir);
	return rc;
}

const struct cmd_def cmd_extract_entry = {
	"extract", cmd_extract, CMD_NEED_STORE, "turn a full fine-tune into an adapter",
	"lora extract --base DIR --tuned DIR --rank R [--targets LIST] (--name NAME[:TAG] | -o DIR)\n"
	"      [--iters N] [--oversample P] [--seed S] [--dtype fp32|bf16|fp16]\n"
	"      [--key FILE] [--description TEXT] [--json]",
	opts, 19, NULL
};
