/* diff.c - `lora diff A B`: how two adapters differ, module by module. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cmd/cmd.h"
#include "libadapter/algebra/diff.h"
#include "libadapter/base/fsutil.h"
#include "libadapter/format/peft.h"
#include "libadapter/store/store.h"

struct input {
	struct lora_adapter_src src;
	char *provenance;             /* JSON text from the package manifest, or NULL */
	struct lora_diff_side side;
};

/* JSON text of the "provenance" member of a manifest, or NULL. */
static char *manifest_provenance(const cJSON *manifest)
{
	const cJSON *p = cJSON_GetObjectItemCaseSensitive(manifest, "provenance");
	return p && !cJSON_IsNull(p) ? cJSON_PrintUnformatted(p) : NULL;
}

/*
 * The manifest's provenance of a stored adapter (from the index, which is
 * cheap) or of a .lora file (described, which re-reads it); NULL for a
 * folder or when it cannot be had.
 */
static char *provenance_of(const char *store, const char *spec, const struct lora_adapter_src *src)
{
	struct lora_err err = { 0 };
	struct lora_store_item *items = NULL;
	size_t n = 0;
	cJSON *d = NULL;
	char *s = NULL;

	if (lora_is_dir(spec))
		return NULL;
	if (src->digest[0]) {
		if (lora_store_list(store, &items, &n, &err) < 0)
			return NULL;
		for (size_t i = 0; i < n && !s; i++)
			if (!strcmp(items[i].digest, src->digest) && items[i].manifest)
				s = manifest_provenance(items[i].manifest);
		lora_store_items_free(items, n);
		return s;
	}
	if (lora_store_describe(store, spec, &d, &err) < 0)
		return NULL;
	s = manifest_provenance(cJSON_GetObjectItemCaseSensitive(d, "manifest"));
	cJSON_Delete(d);
	return s;
}

static int open_input(const struct cmd_ctx *ctx, const char *spec, struct input *in,
		      struct lora_err *err)
{
	memset(in, 0, sizeof(*in));
	if (lora_adapter_open(ctx->store, ctx->tmp_dir, spec, &in->src, err) < 0)
		return -1;
	in->provenance = provenance_of(ctx->store, spec, &in->src);
	in->side.peft = in->src.peft;
	in->side.label = spec;
	in->side.ref = in->src.digest[0] ? in->src.ref : NULL;
	in->side.digest = in->src.digest[0] ? in->src.digest : NULL;
	in->side.base_name = in->src.base_name;
	in->side.base_fingerprint = in->src.base_fingerprint;
	in->side.provenance_json = in->provenance;
	return 0;
}

static void close_input(struct input *in)
{
	lora_adapter_close(&in->src);
	cJSON_free(in->provenance);
}

/* ---------------------------------------------------------------- text */

static void num(double v, const char *fmt, int width)
{
	if (isnan(v))
		printf("%*s", width, "-");
	else
		printf(fmt, width, v);
}

/* A bar for c in [-1, 1]: 10 cells each side of a centre mark. */
static void bar(double c)
{
	char s[24];
	int cells = isnan(c) ? 0 : (int)lround(fabs(c) * 10);

	memset(s, ' ', 21);
	s[10] = '|';
	s[21] = 0;
	for (int i = 1; i <= cells && i <= 10; i++)
		s[c < 0 ? 10 - i : 10 + i] = '#';
	printf("[%s]", s);
}

static void side_line(const char *tag, const struct lora_diff_side *s)
{
	const struct lora_peft_config *c = &s->peft->cfg;

	printf("%s  %s", tag, s->label);
	if (s->ref && strcmp(s->ref, s->label))
		printf(" (%s)", s->ref);
	printf("  r=%d alpha=%g, %zu modules, %s\n", c->r, c->lora_alpha, s->peft->n_modules,
	       lora_dtype_name(s->peft->dtype));
}

static void print_text(const struct lora_diff_side *a, const struct lora_diff_side *b,
		       const struct lora_diff *d, const struct lora_diff_layer *L, size_t nl)
{
	int any = 0;

	side_line("a", a);
	side_line("b", b);
	for (size_t i = 0; i < d->n_settings; i++) {
		const struct lora_diff_setting *s = &d->settings[i];
		if (s->same)
			continue;
		if (!any++)
			printf("\nsettings that differ\n");
		printf("  %-17s a: %s\n  %-17s b: %s\n", s->key, s->a, "", s->b);
	}
	if (!any)
		printf("\nsettings: the same\n");

	printf("\n%-44s %10s %10s %10s %8s %8s\n", "MODULE", "|dW_A|", "|dW_B|", "DISTANCE", "COSINE",
	       "OVERLAP");
	for (size_t i = 0; i < d->n_modules; i++) {
		const struct lora_diff_module *m = &d->modules[i];
		printf("%-44s ", m->name);
		num(m->cmp.norm_a, "%*.4g", 10);
		putchar(' ');
		num(m->cmp.norm_b, "%*.4g", 10);
		putchar(' ');
		num(m->cmp.distance, "%*.4g", 10);
		putchar(' ');
		num(m->cmp.cosine, "%*.4f", 8);
		putchar(' ');
		num(m->cmp.overlap, "%*.4f", 8);
		if (m->where == LORA_DIFF_ONLY_A)
			printf("  only in a");
		else if (m->where == LORA_DIFF_ONLY_B)
			printf("  only in b");
		else if (m->shape_differs)
			printf("  shapes differ");
		else if (m->identical)
			printf("  identical");
		putchar('\n');
	}

	printf("\ncosine by layer (all modules of the layer as one vector; '|' is 0, left is negative)\n");
	for (size_t i = 0; i < nl; i++) {
		double c = lora_diff_layer_cosine(&L[i]), rel = sqrt(L[i].d2) / fmax(sqrt(L[i].na2), sqrt(L[i].nb2));
		if (L[i].idx >= 0)
			printf("  layer %-5ld ", L[i].idx);
		else
			printf("  %-11s ", "other");
		num(c, "%*.3f", 7);
		putchar(' ');
		bar(c);
		printf("  distance ");
		num(sqrt(L[i].d2), "%*.4g", 9);
		printf(" (");
		num(rel, "%*.3f", 1);
		printf(" of the larger norm)\n");
	}

	printf("\nsummary\n  modules        %zu in both (%zu identical), %zu only in a, %zu only in b\n",
	       d->n_common, d->n_identical, d->n_only_a, d->n_only_b);
	printf("  norm           a %.6g, b %.6g, distance %.6g\n", d->norm_a, d->norm_b, d->distance);
	printf("  cosine         ");
	num(d->cosine, "%*.6f", 1);
	printf(" (whole adapter), ");
	num(d->weighted_cosine, "%*.6f", 1);
	printf(" (mean over common modules, weighted by |dW_A||dW_B|)\n  overlap        ");
	num(d->mean_overlap, "%*.6f", 1);
	printf(" (mean over common modules)\n");
	for (int w = 0; w < 2; w++) {
		enum lora_diff_where want = w ? LORA_DIFF_ONLY_B : LORA_DIFF_ONLY_A;
		size_t n = w ? d->n_only_b : d->n_only_a;
		if (!n)
			continue;
		printf("  only in %c      ", w ? 'b' : 'a');
		for (size_t i = 0, k = 0; i < d->n_modules; i++)
			if (d->modules[i].where == want)
				printf("%s%s", k++ ? ", " : "", d->modules[i].name);
		putchar('\n');
	}
}

/* ---------------------------------------------------------------- json */

static cJSON *jnum(double v)
{
	return isnan(v) || isinf(v) ? cJSON_CreateNull() : cJSON_CreateNumber(v);
}

static cJSON *jstr(const char *s)
{
	return s ? cJSON_CreateString(s) : cJSON_CreateNull();
}

static cJSON *side_json(const struct lora_diff_side *s)
{
	cJSON *o = cJSON_CreateObject();

	cJSON_AddItemToObject(o, "label", jstr(s->label));
	cJSON_AddItemToObject(o, "ref", jstr(s->ref));
	cJSON_AddItemToObject(o, "digest", jstr(s->digest));
	cJSON_AddItemToObject(o, "path", jstr(s->peft->dir));
	return o;
}

static cJSON *raw(const char *json)
{
	cJSON *v = cJSON_Parse(json);
	return v ? v : cJSON_CreateNull();
}

static int print_json(const struct lora_diff_side *a, const struct lora_diff_side *b,
		      const struct lora_diff *d, const struct lora_diff_layer *L, size_t nl)
{
	cJSON *o = cJSON_CreateObject(), *set, *mods, *sum, *oa, *ob, *lay;

	cJSON_AddItemToObject(o, "a", side_json(a));
	cJSON_AddItemToObject(o, "b", side_json(b));
	set = cJSON_AddObjectToObject(o, "settings");
	for (size_t i = 0; i < d->n_settings; i++) {
		cJSON *e = cJSON_CreateObject();
		cJSON_AddItemToObject(e, "a", raw(d->settings[i].a));
		cJSON_AddItemToObject(e, "b", raw(d->settings[i].b));
		cJSON_AddBoolToObject(e, "same", d->settings[i].same);
		cJSON_AddItemToObject(set, d->settings[i].key, e);
	}
	mods = cJSON_AddArrayToObject(o, "modules");
	for (size_t i = 0; i < d->n_modules; i++) {
		const struct lora_diff_module *m = &d->modules[i];
		cJSON *e = cJSON_CreateObject(), *shape = cJSON_CreateArray();
		cJSON_AddStringToObject(e, "name", m->name);
		cJSON_AddStringToObject(e, "in", m->where == LORA_DIFF_BOTH ? "both" :
						 m->where == LORA_DIFF_ONLY_A ? "a" : "b");
		cJSON_AddItemToObject(e, "norm_a", jnum(m->cmp.norm_a));
		cJSON_AddItemToObject(e, "norm_b", jnum(m->cmp.norm_b));
		cJSON_AddItemToObject(e, "distance", jnum(m->cmp.distance));
		cJSON_AddItemToObject(e, "cosine", jnum(m->cmp.cosine));
		cJSON_AddItemToObject(e, "overlap", jnum(m->cmp.overlap));
		cJSON_AddItemToObject(e, "inner", jnum(m->where == LORA_DIFF_BOTH && !m->shape_differs ?
						      m->cmp.inner : NAN));
		cJSON_AddNumberToObject(e, "r_a", m->r_a);
		cJSON_AddNumberToObject(e, "r_b", m->r_b);
		cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)m->out));
		cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)m->in));
		cJSON_AddItemToObject(e, "shape", shape);
		cJSON_AddBoolToObject(e, "identical", m->identical);
		cJSON_AddBoolToObject(e, "shape_differs", m->shape_differs);
		cJSON_AddItemToArray(mods, e);
	}
	sum = cJSON_AddObjectToObject(o, "summary");
	cJSON_AddNumberToObject(sum, "modules_a", (double)a->peft->n_modules);
	cJSON_AddNumberToObject(sum, "modules_b", (double)b->peft->n_modules);
	cJSON_AddNumberToObject(sum, "common", (double)d->n_common);
	cJSON_AddNumberToObject(sum, "identical", (double)d->n_identical);
	oa = cJSON_AddArrayToObject(sum, "only_a");
	ob = cJSON_AddArrayToObject(sum, "only_b");
	for (size_t i = 0; i < d->n_modules; i++)
		if (d->modules[i].where != LORA_DIFF_BOTH)
			cJSON_AddItemToArray(d->modules[i].where == LORA_DIFF_ONLY_A ? oa : ob,
					     cJSON_CreateString(d->modules[i].name));
	cJSON_AddItemToObject(sum, "norm_a", jnum(d->norm_a));
	cJSON_AddItemToObject(sum, "norm_b", jnum(d->norm_b));
	cJSON_AddItemToObject(sum, "distance", jnum(d->distance));
	cJSON_AddItemToObject(sum, "cosine", jnum(d->cosine));
	cJSON_AddItemToObject(sum, "weighted_cosine", jnum(d->weighted_cosine));
	cJSON_AddItemToObject(sum, "mean_overlap", jnum(d->mean_overlap));
	lay = cJSON_AddArrayToObject(sum, "layers");
	for (size_t i = 0; i < nl; i++) {
		cJSON *e = cJSON_CreateObject();
		cJSON_AddItemToObject(e, "layer", L[i].idx >= 0 ? cJSON_CreateNumber((double)L[i].idx) :
								 cJSON_CreateNull());
		cJSON_AddNumberToObject(e, "modules", (double)L[i].n);
		cJSON_AddItemToObject(e, "cosine", jnum(lora_diff_layer_cosine(&L[i])));
		cJSON_AddItemToObject(e, "distance", jnum(sqrt(L[i].d2)));
		cJSON_AddItemToArray(lay, e);
	}
	return cmd_print_json(o);
}

/* ----------------------------------------------------------------- main */

static const struct cmd_opt opts[] = {
	{ "json", 0, NULL, "one JSON document on stdout", 'j', 0, 0 },
	{ "threads", 0, "N", "worker threads (default: one per CPU)", 't', 0, 0 },
	{ 0 }
};

static CMD(diff)
{
	struct lora_err err = { 0 };
	struct input a = { 0 }, b = { 0 };
	struct lora_diff d;
	struct lora_diff_layer *L = NULL;
	size_t nl = 0;
	int c, json = 0, rc;
	long threads = 0;

	while ((c = cmd_getopt(ctx, argc, argv)) != -1) {
		switch (c) {
		case 'j': json = 1; break;
		case 't':
			if (cmd_optarg_long(ctx, 0, 64, &threads) < 0)
				return 2;
			break;
		default: return 2;
		}
	}
	if (optind != argc - 2)
		return cmd_usage(ctx, "diff takes two adapters");
	if (open_input(ctx, argv[optind], &a, &err) < 0)
		return cmd_fail(&err);
	if (open_input(ctx, argv[optind + 1], &b, &err) < 0) {
		close_input(&a);
		return cmd_fail(&err);
	}
	if (lora_diff_run(&a.side, &b.side, (int)threads, &d, &err) < 0) {
		rc = cmd_fail(&err);
		goto out;
	}
	L = lora_diff_layers(&d, &nl);
	if (!L) {
		rc = cmd_error("out of memory");
	} else if (json) {
		rc = print_json(&a.side, &b.side, &d, L, nl);
	} else {
		print_text(&a.side, &b.side, &d, L, nl);
		rc = 0;
	}
	free(L);
	lora_diff_free(&d);
out:
	close_input(&a);
	close_input(&b);
	return rc;
}

const struct cmd_def cmd_diff_entry = {
	"diff", cmd_diff, CMD_NEED_STORE, "compare two adapters module by module",
	"lora diff REF REF [--json] [--threads N]",
	opts, 16, NULL
};
