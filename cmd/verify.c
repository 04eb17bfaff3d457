/* verify.c - lora verify: re-hash every file, check the signature and the signer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cmd/cmd.h"
#include "libadapter/store/manifest.h"
#include "libadapter/store/store.h"

static const char *state_name(enum lora_check_state s)
{
	return s == LORA_CHECK_OK ? "ok" : s == LORA_CHECK_FAIL ? "failed" : "skipped";
}

static void print_json(const char *spec, const struct lora_verify_report *rep, const struct lora_err *err)
{
	cJSON *o = cJSON_CreateObject(), *checks;
	char *text;

	if (!o)
		return;
	cJSON_AddStringToObject(o, "ref", rep->ref[0] ? rep->ref : spec);
	if (rep->digest[0])
		cJSON_AddStringToObject(o, "digest", rep->digest);
	else
		cJSON_AddNullToObject(o, "digest");
	cJSON_AddBoolToObject(o, "valid", rep->valid);
	if (rep->identity[0])
		cJSON_AddStringToObject(o, "signer", rep->identity);
	else
		cJSON_AddNullToObject(o, "signer");
	if (rep->key_fingerprint[0])
		cJSON_AddStringToObject(o, "key_fingerprint", rep->key_fingerprint);
	else
		cJSON_AddNullToObject(o, "key_fingerprint");
	checks = cJSON_AddArrayToObject(o, "checks");
	for (int c = 0; checks && c < LORA_N_CHECKS; c++) {
		cJSON *k = cJSON_CreateObject();
		if (!k)
			break;
		cJSON_AddStringToObject(k, "check", lora_check_name(c));
		cJSON_AddStringToObject(k, "status", state_name(rep->state[c]));
		cJSON_AddStringToObject(k, "detail", rep->detail[c]);
		cJSON_AddItemToArray(checks, k);
	}
	if (rep->valid)
		cJSON_AddNullToObject(o, "error");
	else
		cJSON_AddStringToObject(o, "error", err->msg);
	text = lora_json_pretty(o);
	if (text)
		printf("%s\n", text);
	free(text);
	cJSON_Delete(o);
}

static const struct cmd_opt opts[] = {
	{ "json", 'j', NULL, "one JSON document on stdout", 'j', CMD_OPT_SHORT_UNLISTED, 0 },
	{ 0 }
};

static CMD(verify)
{
	struct lora_err err = { 0 };
	struct lora_verify_report rep;
	int c, json = 0;

	while ((c = cmd_getopt(ctx, argc, argv)) != -1) {
		switch (c) {
		case 'j': json = 1; break;
		default: return 2;
		}
	}
	if (optind + 1 != argc)
		return cmd_usage(ctx, optind >= argc ? "verify needs a REF or FILE.lora" : "verify takes one REF");
	if (lora_store_verify(ctx->store, argv[optind], &rep, &err) < 0)
		return cmd_fail(&err);
	if (json) {
		print_json(argv[optind], &rep, &err);
	} else {
		printf("%s%s%s\n", rep.ref[0] ? rep.ref : argv[optind], rep.digest[0] ? " " : "", rep.digest);
		for (int k = 0; k < LORA_N_CHECKS; k++)
			printf("  %-7s %-9s %s\n", state_name(rep.state[k]), lora_check_name(k), rep.detail[k]);
	}
	if (!rep.valid) {
		if (!err.msg[0])
			snprintf(err.msg, sizeof(err.msg), "%s: verification failed", argv[optind]);
		err.code = LORA_EVERIFY;
		return cmd_fail(&err);
	}
	return 0;
}

const struct cmd_def cmd_verify_entry = {
	"verify", cmd_verify, CMD_NEED_STORE, "check digests, signature and signer of an adapter",
	"lora verify (REF | FILE.lora) [--json]",
	opts, 16, NULL
};
