/* combine.c - `lora combine`: one adapter from a weighted set of adapters. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cmd/cmd.h"
#include "libadapter/combine.h"
#include "libadapter/fsutil.h"
#include "libadapter/peft.h"

struct input {
	struct lora_peft *peft;
	char *ref;                    /* the spec without its @WEIGHT */
	char digest[80];
	double weight;
};

/* "PATH" or "REF@W": a path that exists is taken whole, else the last '@' starts a weight. */
static int split_weight(const struct cmd_ctx *ctx, const char *spec, struct input *in)
{
	const char *at = strrchr(spec, '@');
	char *end;

	in->weight = 1.0;
	if (lora_is_dir(spec) || !at)
		return (in->ref = strdup(spec)) ? 0 : cmd_error("out of memory");
	errno = 0;
	in->weight = strtod(at + 1, &end);
	if (errno || end == at + 1 || *end || !isfinite(in->weight))
		return cmd_usage(ctx, "bad weight in '%s' (REF@WEIGHT, e.g. adapter@0.5)", spec);
	return (in->ref = strndup(spec, (size_t)(at - spec))) ? 0 : cmd_error("out of memory");
}

static int open_input(const char *ref, struct input *in, struct lora_err *err)
{
	char *w, hex[65];
	int rc;

	if (!lora_is_dir(ref))
		return lora_errf(err, "'%s' is not an adapter folder (stored adapters are not "
				      "available in this build)", ref);
	if (lora_peft_open(ref, &in->peft, err) < 0)
		return -1;
	/* a folder's identity for the provenance: the digest of its weights */
	if (!(w = lora_path_join(ref, "adapter_model.safetensors")))
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

static int report(const char *out, int method, const struct lora_combine_result *r, int json)
{
	if (json) {
		cJSON *o = cJSON_CreateObject(), *mods = NULL;
		char *s;
		cJSON_AddStringToObject(o, "path", out);
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
		s = cJSON_PrintUnformatted(o);
		cJSON_Delete(o);
		if (!s)
			return cmd_error("out of memory");
		puts(s);
		free(s);
		return 0;
	}
	printf("wrote %s: method %s, r=%d, %zu modules\n", out, lora_combine_method_name(method), r->r,
	       r->n_modules);
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

CMD(combine)
{
	static const struct option opts[] = {
		{ "method", required_argument, NULL, 'm' },
		{ "rank", required_argument, NULL, 'r' },
		{ "name", required_argument, NULL, 'n' },
		{ "output", required_argument, NULL, 'o' },
		{ "dtype", required_argument, NULL, 'd' },
		{ "json", no_argument, NULL, 'j' },
		{ 0 }
	};
	struct lora_combine_params p = { .method = -1, .dtype = LORA_DT_F32 };
	struct lora_combine_result res = { 0 };
	struct lora_combine_input *ci = NULL;
	struct lora_err err = { 0 };
	struct input *in = NULL;
	const char *name = NULL, *out = NULL;
	int c, json = 0, rc = 1, n = 0;
	long rank = 0;

	while ((c = cmd_getopt(ctx, argc, argv, "o:", opts)) != -1) {
		switch (c) {
		case 'm':
			if ((p.method = lora_combine_method_parse(optarg)) < 0)
				return cmd_usage(ctx, "unknown method '%s' (cat, svd or linear)", optarg);
			break;
		case 'r':
			if (cmd_parse_long(ctx, "--rank", optarg, 1, 1000000, &rank) < 0)
				return 2;
			break;
		case 'n': name = optarg; break;
		case 'o': out = optarg; break;
		case 'd':
			if (!(p.dtype = parse_dtype(optarg)))
				return cmd_usage(ctx, "unknown dtype '%s' (fp32, bf16 or fp16)", optarg);
			break;
		case 'j': json = 1; break;
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
	if (name)
		return cmd_error("storing adapters is not available in this build yet; write a "
				 "folder with -o DIR");
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
		if (open_input(in[i].ref, &in[i], &err) < 0) {
			rc = cmd_fail(&err);
			goto out;
		}
		ci[i] = (struct lora_combine_input){ in[i].peft, in[i].weight, in[i].ref, NULL, in[i].digest };
	}
	if (lora_combine(ci, (size_t)n, &p, out, &res, &err) < 0) {
		rc = cmd_fail(&err);
		goto out;
	}
	rc = report(out, p.method, &res, json);
	lora_combine_result_free(&res);
out:
	for (int i = 0; in && i < n; i++) {
		lora_peft_close(in[i].peft);
		free(in[i].ref);
	}
	free(in);
	free(ci);
	return rc;
}
