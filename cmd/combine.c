/* combine.c - `lora combine`: one adapter from a weighted set of adapters. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cmd/cmd.h"
#include "libadapter/algebra/combine.h"
#include "libadapter/base/fsutil.h"
#include "libadapter/format/peft.h"
#include "libadapter/store/store.h"

struct input {
	struct lora_adapter_src src;
	char *spec;                   /* the spec without its @WEIGHT */
	char digest[80];
	double weight;
};

/* "PATH" or "REF@W": a path that exists is taken whole, else the last '@' starts a weight. */
static int split_weight(const struct cmd_ctx *ctx, const char *spec, struct input *in)
{
	const char *at = strrchr(spec, '@');
	char *end;

	in->weight = 1.0;
	if (lora_is_dir(spec) || lora_is_file(spec) || !at)
		return (in->spec = strdup(spec)) ? 0 : cmd_error("out of memory");
	errno = 0;
	in->weight = strtod(at + 1, &end);
	if (errno || end == at + 1 || *end || !isfinite(in->weight))
		return cmd_usage(ctx, "bad weight in '%s' (REF@WEIGHT, e.g. adapter@0.5)", spec);
	return (in->spec = strndup(spec, (size_t)(at - spec))) ? 0 : cmd_error("out of memory");
}

static int open_input(const struct cmd_ctx *ctx, struct input *in, struct lora_err *err)
{
	char *w, hex[65];
	int rc;

	if (lora_adapter_open(ctx->store, ctx->tmp_dir, in->spec, &in->src, err) < 0)
		return -1;
	if (in->src.digest[0]) {
		snprintf(in->digest, sizeof(in->digest), "%s", in->src.digest);
		return 0;
	}
	/* a folder has no adapter digest: name it by the digest of its weights */
	if (!(w = lora_path_join(in->src.peft->dir, "adapter_model.safetensors")))
		return lora_errf(err, "out of memory");
	rc = lora_sha256_file(w, hex, NULL, err);
	free(w);
	if (rc == 0)
		snprintf(in->digest, sizeof(in->digest), "sha256:%s", hex);
	return rc;
}

static enum lora_dtype parse_dtype(const char *s)
{
	if (!strcmp(s, "fp32") || !strcmp(s, "f32"))
		return LORA_DT_F32;
	if (!strcmp(s, "bf16"))
		return LORA_DT_BF16;
	if (!strcmp(s, "fp16") || !strcmp(s, "f16"))
		return LORA_DT_F16;
	return LORA_DT_INVALID;
}

static int report(const char *out, const char *ref, const char *digest, int method,
		  const struct lora_combine_result *r, int json)
{
	if (json) {
		cJSON *o = cJSON_CreateObject(), *mods = NULL;
		if (ref) {
			cJSON_AddStringToObject(o, "ref", ref);
			cJSON_AddStringToObject(o, "digest", digest);
		} else {
			cJSON_AddStringToObject(o, "path", out);
		}
		cJSON_AddStringToObject(o, "method", lora_combine_method_name(method));
		cJSON_AddNumberToObject(o, "r", r->r);
		mods = cJSON_AddArrayToObject(o, "modules");
		for (size_t i = 0; i < r->n_modules; i++) {
			cJSON *e = cJSON_CreateObject();
			cJSON_AddStringToObject(e, "name", r->modules[i].name);
			cJSON_AddNumberToObject(e, "inputs", r->modules[i].n_inputs);
			cJSON_AddNumberToObject(e, "norm", r->modules[i].norm);
			if (isnan(r->modules[i].kept))
				cJSON_AddNullToObject(e, "kept");
			else
				cJSON_AddNumberToObject(e, "kept", r->modules[i].kept);
			cJSON_AddItemToArray(mods, e);
		}
		return cmd_print_json(o);
	}
	if (ref)
		printf("%s %s\n", ref, digest);
	else
		printf("wrote %s\n", out);
	printf("method %s, r=%d, %zu modules\n", lora_combine_method_name(method), r->r, r->n_modules);
	if (method == LORA_COMBINE_SVD) {
		double worst = 1;
		const char *wn = "";
		for (size_t i = 0; i < r->n_modules; i++)
			if (r->modules[i].kept < worst) {
				worst = r->modules[i].kept;
				wn = r->modules[i].name;
			}
		printf("kept %.4f%% of |sum dW|^2 in the worst module%s%s\n", 100 * worst, *wn ? ", " : "", wn);
	}
	return 0;
}

/* The base fingerprint all inputs agree on, or NULL. */
static const char *common_fingerprint(const struct input *in, int n)
{
	const char *fp = in[0].src.base_fingerprint;

	for (int i = 1; fp && i < n; i++)
		if (!in[i].src.base_fingerprint || strcmp(fp, in[i].src.base_fingerprint))
			return NULL;
	return fp;
}

/* A fresh temporary folder; the adapter is built in <it>/adapter. */
static char *make_tmpdir(const char *td)
{
	size_t n = strlen(td) + 32;
	char *p = malloc(n);

	if (p) {
		snprintf(p, n, "%s/lora-combine-XXXXXX", td);
		if (!mkdtemp(p)) {
			free(p);
			p = NULL;
		}
	}
	return p;
}

static const struct cmd_opt opts[] = {
	{ "method", 0, "M", "cat: exact sum (rank = sum of ranks); svd: exact sum truncated\n"
			   "to rank R; linear: PEFT's linear (equal ranks, not the exact sum)", 'm', 0, 0 },
	{ "rank", 0, "R", "rank for --method svd (default: the largest input rank)", 'r', 0, 0 },
	{ "name", 0, "NAME[:TAG]", "add the result to the store, signed", 'n', 0, 0 },
	{ "output", 'o', "DIR", "write a PEFT folder instead", 'o', 0, 0 },
	{ "dtype", 0, "D", "dtype of the written tensors (default fp32)", 'd', 0, 0 },
	{ "key", 0, "FILE", "signing key (default: the store's key)", 'k', 0, 0 },
	{ "description", 0, "T", "description recorded in the manifest", 'D', 0, 0 },
	{ "json", 0, NULL, "one JSON document on stdout", 'j', 0, 0 },
	{ 0 }
};

static CMD(combine)
{
	struct lora_combine_params p = { .method = -1, .dtype = LORA_DT_F32 };
	struct lora_combine_result res = { 0 };
	struct lora_combine_input *ci = NULL;
	struct lora_err err = { 0 };
	struct input *in = NULL;
	const char *name = NULL, *out = NULL, *key = NULL, *desc = NULL;
	char ref[LORA_REF_MAX] = "", digest[72] = "", *tmp = NULL, *dir = NULL;
	int c, json = 0, rc = 1, n = 0;
	long rank = 0;

	while ((c = cmd_getopt(ctx, argc, argv)) != -1) {
		switch (c) {
		case 'm':
			if ((p.method = lora_combine_method_parse(optarg)) < 0)
				return cmd_usage(ctx, "unknown method '%s' (cat, svd or linear)", optarg);
			break;
		case 'r':
			if (cmd_optarg_long(ctx, 1, 1000000, &rank) < 0)
				return 2;
			break;
		case 'n': name = optarg; break;
		case 'o': out = optarg; break;
		case 'd':
			if (!(p.dtype = parse_dtype(optarg)))
				return cmd_usage(ctx, "unknown dtype '%s' (fp32, bf16 or fp16)", optarg);
			break;
		case 'j': json = 1; break;
		case 'k': key = optarg; break;
		case 'D': desc = optarg; break;
		default: return 2;
		}
	}
	if (p.method < 0)
		return cmd_usage(ctx, "--method is required (cat, svd or linear)");
	if (optind >= argc)
		return cmd_usage(ctx, "combine needs at least one adapter");
	if (!name == !out)
		return cmd_usage(ctx, "give exactly one of --name NAME[:TAG] and -o DIR");
	if (rank && p.method != LORA_COMBINE_SVD)
		return cmd_usage(ctx, "--rank applies to --method svd only");
	if (name) {
		struct lora_ref r;
		if (lora_ref_parse(name, &r, &err) < 0 || r.is_digest)
			return r.is_digest ? cmd_usage(ctx, "--name wants NAME[:TAG]") : cmd_fail(&err);
		snprintf(ref, sizeof(ref), "%s:%s", r.name, r.tag);
		if (lora_store_check_signing_key(ctx->store, key, &err) < 0)
			return cmd_fail(&err);
	}
	p.rank = (int)rank;
	n = argc - optind;
	in = calloc((size_t)n, sizeof(*in));
	ci = calloc((size_t)n, sizeof(*ci));
	if (!in || !ci) {
		rc = cmd_error("out of memory");
		goto out;
	}
	for (int i = 0; i < n; i++) {
		if ((rc = split_weight(ctx, argv[optind + i], &in[i])) != 0)
			goto out;
		if (open_input(ctx, &in[i], &err) < 0) {
			rc = cmd_fail(&err);
			goto out;
		}
		ci[i] = (struct lora_combine_input){ in[i].src.peft, in[i].weight, in[i].spec,
						     in[i].src.digest[0] ? in[i].src.ref : NULL, in[i].digest };
	}
	if (name) {
		if (!(tmp = make_tmpdir(ctx->tmp_dir)) || !(dir = lora_path_join(tmp, "adapter"))) {
			rc = cmd_error("cannot create a temporary folder");
			goto out;
		}
	}
	if (lora_combine(ci, (size_t)n, &p, name ? dir : out, &res, &err) < 0) {
		rc = cmd_fail(&err);
		goto out;
	}
	if (name) {
		struct lora_import_opts o = { 0 };
		char *prov2 = lora_combine_provenance(ci, (size_t)n, &p, res.r);
		o.key_path = key;
		o.description = desc;
		o.base_fingerprint = common_fingerprint(in, n);
		o.provenance_json = prov2;
		o.user = ctx->user;
		o.created = ctx->created;
		rc = lora_store_add_peft_dir(ctx->store, dir, ref, &o, digest, &err);
		free(prov2);
		if (rc < 0) {
			rc = cmd_fail(&err);
			lora_combine_result_free(&res);
			goto out;
		}
	}
	rc = report(out, name ? ref : NULL, digest, p.method, &res, json);
	lora_combine_result_free(&res);
out:
	for (int i = 0; in && i < n; i++) {
		lora_adapter_close(&in[i].src);
		free(in[i].spec);
	}
	free(in);
	free(ci);
	free(dir);
	if (tmp)
		lora_rm_rf(tmp, NULL);
	free(tmp);
	return rc;
}

const struct cmd_def cmd_combine_entry = {
	"combine", cmd_combine, CMD_NEED_STORE, "build one adapter from several",
	"lora combine REF[@W]... --method cat|svd|linear (--name NAME[:TAG] | -o DIR) [--rank R]\n"
	"      [--dtype fp32|bf16|fp16] [--key FILE] [--description TEXT] [--json]",
	opts, 19, NULL
};
