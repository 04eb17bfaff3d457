/* list.c - lora list: the adapters in the store, one a line (or --json). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cmd/cmd.h"
#include "libadapter/base/buf.h"
#include "libadapter/store/manifest.h"
#include "libadapter/store/store.h"

static const cJSON *jget(const cJSON *o, const char *a, const char *b)
{
	const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, a) : NULL;
	return b && v ? cJSON_GetObjectItemCaseSensitive(v, b) : v;
}

static const char *jstr(const cJSON *o, const char *a, const char *b)
{
	const cJSON *v = jget(o, a, b);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void human_size(uint64_t n, char out[16])
{
	static const char *const u[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double v = (double)n;
	int i = 0;

	while (v >= 1024 && i < 4) {
		v /= 1024;
		i++;
	}
	if (i == 0)
		snprintf(out, 16, "%llu B", (unsigned long long)n);
	else
		snprintf(out, 16, "%.1f %s", v, u[i]);
}

/* "q_proj,v_proj" (or the regex) into b */
static void targets_text(const cJSON *t, struct lora_buf *b)
{
	const cJSON *x;

	if (cJSON_IsString(t)) {
		lora_buf_puts(b, t->valuestring);
		return;
	}
	cJSON_ArrayForEach(x, t)
		if (cJSON_IsString(x))
			lora_buf_printf(b, "%s%s", b->len ? "," : "", x->valuestring);
	if (!b->len)
		lora_buf_puts(b, "-");
}

static int print_json(const struct lora_store_item *it, size_t n)
{
	cJSON *a = cJSON_CreateArray();
	char *text;

	for (size_t i = 0; a && i < n; i++) {
		const cJSON *m = it[i].manifest, *r = jget(m, "lora", "r"), *al = jget(m, "lora", "lora_alpha");
		const cJSON *t = jget(m, "lora", "target_modules");
		const char *colon = strrchr(it[i].ref, ':'), *s;
		cJSON *o = cJSON_CreateObject();

		if (!o)
			break;
		{
			char nm[LORA_REF_MAX];
			size_t nl = colon ? (size_t)(colon - it[i].ref) : strlen(it[i].ref);
			snprintf(nm, sizeof(nm), "%.*s", (int)nl, it[i].ref);
			cJSON_AddStringToObject(o, "name", nm);
			cJSON_AddStringToObject(o, "tag", colon ? colon + 1 : "");
		}
		cJSON_AddStringToObject(o, "digest", it[i].digest);
		s = jstr(m, "base_model", "name");
		cJSON_AddItemToObject(o, "base", s ? cJSON_CreateString(s) : cJSON_CreateNull());
		cJSON_AddItemToObject(o, "r", cJSON_IsNumber(r) ? cJSON_CreateNumber(r->valuedouble) : cJSON_CreateNull());
		cJSON_AddItemToObject(o, "alpha",
				      cJSON_IsNumber(al) ? cJSON_CreateNumber(al->valuedouble) : cJSON_CreateNull());
		cJSON_AddItemToObject(o, "target_modules", t ? cJSON_Duplicate(t, 1) : cJSON_CreateNull());
		cJSON_AddNumberToObject(o, "size", (double)it[i].size);
		s = it[i].has_signature ? jstr(m, "signer", "identity") : NULL;
		cJSON_AddItemToObject(o, "signer", s ? cJSON_CreateString(s) : cJSON_CreateNull());
		s = jstr(m, "created", NULL);
		cJSON_AddItemToObject(o, "created", s ? cJSON_CreateString(s) : cJSON_CreateNull());
		cJSON_AddItemToArray(a, o);
	}
	text = a ? lora_json_pretty(a) : NULL;
	cJSON_Delete(a);
	if (!text)
		return cmd_error("out of memory");
	fputs(text, stdout);
	fputc('\n', stdout);
	free(text);
	return 0;
}

static const struct cmd_opt opts[] = {
	{ "json", 'j', NULL, "one JSON document on stdout", 'j', CMD_OPT_SHORT_UNLISTED, 0 },
	{ 0 }
};

static CMD(list)
{
	struct lora_err err = { 0 };
	struct lora_store_item *it;
	size_t n;
	int c, json = 0, w_ref = 8, w_base = 4, w_t = 7, w_sig = 6;

	while ((c = cmd_getopt(ctx, argc, argv)) != -1) {
		switch (c) {
		case 'j': json = 1; break;
		default: return 2;
		}
	}
	if (optind != argc)
		return cmd_usage(ctx, "unexpected argument '%s'", argv[optind]);
	if (lora_store_list(ctx->store, &it, &n, &err) < 0)
		return cmd_fail(&err);
	if (json) {
		c = print_json(it, n);
		lora_store_items_free(it, n);
		return c;
	}
	/* two passes: column widths, then the lines */
	for (int pass = 0; pass < 2 && n; pass++) {
		if (pass == 1)
			printf("%-*s  %-12s  %-*s  %4s  %-*s  %10s  %-*s  %s\n", w_ref, "NAME:TAG", "DIGEST", w_base,
			       "BASE", "R", w_t, "TARGETS", "SIZE", w_sig, "SIGNER", "CREATED");
		for (size_t i = 0; i < n; i++) {
			const cJSON *m = it[i].manifest, *r = jget(m, "lora", "r");
			const char *base = jstr(m, "base_model", "name"), *sig = jstr(m, "signer", "identity");
			const char *cr = jstr(m, "created", NULL);
			struct lora_buf t = LORA_BUF_INIT;
			char sz[16], rs[16];
			int l;

			targets_text(jget(m, "lora", "target_modules"), &t);
			if (t.len > 40 && !t.oom)  /* a long list or regex: the JSON has it all */
				strcpy(t.data + 37, "...");
			if (!base)
				base = "-";
			if (!sig || !it[i].has_signature)
				sig = "(unsigned)";
			if (pass == 0) {
				if ((l = (int)strlen(it[i].ref)) > w_ref)
					w_ref = l;
				if ((l = (int)strlen(base)) > w_base)
					w_base = l < 40 ? l : 40;
				if ((l = (int)t.len) > w_t)
					w_t = l < 40 ? l : 40;
				if ((l = (int)strlen(sig)) > w_sig)
					w_sig = l;
			} else {
				human_size(it[i].size, sz);
				if (cJSON_IsNumber(r))
					snprintf(rs, sizeof(rs), "%g", r->valuedouble);
				else
					strcpy(rs, "-");
				printf("%-*s  %.12s  %-*s  %4s  %-*s  %10s  %-*s  %s\n", w_ref, it[i].ref,
				       it[i].digest + 7, w_base, base, rs, w_t, t.data ? t.data : "-", sz, w_sig, sig,
				       cr ? cr : "-");
			}
			lora_buf_free(&t);
		}
	}
	lora_store_items_free(it, n);
	return 0;
}

const struct cmd_def cmd_list_entry = {
	"list", cmd_list, CMD_NEED_STORE, "list the adapters in the store",
	"lora list [--json]",
	opts, 16, NULL
};
