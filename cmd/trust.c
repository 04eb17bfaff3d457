/* trust.c - lora trust add|list|rm: the allowed_signers file of the store. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cmd/cmd.h"
#include "libadapter/base/fsutil.h"
#include "libadapter/store/sshsig.h"
#include "libadapter/store/manifest.h"
#include "libadapter/store/store.h"

enum { SUB_ADD = 1, SUB_LIST = 2, SUB_RM = 4 };   /* which subcommand takes an option */
static const struct cmd_opt opts[] = {
	{ "key", 'k', "LINE", "the public key as text instead of PUBKEY_FILE", 'k', CMD_OPT_SHORT_UNLISTED, SUB_ADD },
	{ "json", 'j', NULL, "one JSON document on stdout", 'j', CMD_OPT_SHORT_UNLISTED, SUB_LIST },
	{ 0 }
};

static int trust_add(int argc, char **argv, struct cmd_ctx *ctx)
{
	struct lora_err err = { 0 };
	const char *key = NULL;
	char *text = NULL, fp[LORA_SSH_FP_MAX];
	unsigned char pk[32];
	int c, rc;

	while ((c = cmd_getopt_sub(ctx, argc, argv, SUB_ADD)) != -1) {
		switch (c) {
		case 'k': key = optarg; break;
		default: return 2;
		}
	}
	if (optind >= argc)
		return cmd_usage(ctx, "trust add needs an ID");
	if (!key && optind + 2 != argc)
		return cmd_usage(ctx, "trust add needs ID and PUBKEY_FILE (or --key 'ssh-ed25519 AAAA...')");
	if (key && optind + 1 != argc)
		return cmd_usage(ctx, "give either PUBKEY_FILE or --key, not both");
	if (!key) {
		if (lora_read_file(argv[optind + 1], 65536, &text, NULL, &err) < 0)
			return cmd_fail(&err);
		key = text;
	}
	if (lora_sshkey_parse_pub_line(key, pk, NULL, &err) < 0) {
		free(text);
		return cmd_error("cannot trust '%s': %s", argv[optind], err.msg);
	}
	rc = lora_store_trust_add(ctx->store, argv[optind], key, &err);
	free(text);
	if (rc < 0)
		return cmd_fail(&err);
	lora_sshkey_fingerprint(pk, fp);
	printf("trusted %s: ssh-ed25519 %s\n", argv[optind], fp);
	return 0;
}

static int trust_list(int argc, char **argv, struct cmd_ctx *ctx)
{
	struct lora_err err = { 0 };
	struct lora_signers s;
	char *path;
	int c, json = 0;

	while ((c = cmd_getopt_sub(ctx, argc, argv, SUB_LIST)) != -1) {
		switch (c) {
		case 'j': json = 1; break;
		default: return 2;
		}
	}
	if (optind != argc)
		return cmd_usage(ctx, "unexpected argument '%s'", argv[optind]);
	path = lora_store_allowed_signers_path(ctx->store);
	if (!path)
		return cmd_error("out of memory");
	if (lora_signers_load(path, &s, &err) < 0) {
		free(path);
		return cmd_fail(&err);
	}
	if (json) {
		cJSON *a = cJSON_CreateArray();
		char *text;
		for (size_t i = 0; a && i < s.n; i++) {
			const struct lora_signer *l = &s.v[i];
			cJSON *o = cJSON_CreateObject();
			if (!o)
				break;
			cJSON_AddStringToObject(o, "id", l->principals ? l->principals : "");
			cJSON_AddStringToObject(o, "key_type", l->keytype);
			if (l->fingerprint[0])
				cJSON_AddStringToObject(o, "fingerprint", l->fingerprint);
			else
				cJSON_AddNullToObject(o, "fingerprint");
			if (l->namespaces)
				cJSON_AddStringToObject(o, "namespaces", l->namespaces);
			else
				cJSON_AddNullToObject(o, "namespaces");
			cJSON_AddNumberToObject(o, "line", (double)l->line);
			if (l->error)
				cJSON_AddStringToObject(o, "error", l->error);
			else
				cJSON_AddNullToObject(o, "error");
			cJSON_AddItemToArray(a, o);
		}
		text = a ? lora_json_pretty(a) : NULL;
		if (text)
			printf("%s\n", text);
		free(text);
		cJSON_Delete(a);
	} else {
		for (size_t i = 0; i < s.n; i++) {
			const struct lora_signer *l = &s.v[i];
			if (l->error) {
				printf("%-24s (line %zu of %s is invalid: %s)\n", l->principals ? l->principals : "?",
				       l->line, path, l->error);
				continue;
			}
			printf("%-24s %-12s %s%s%s\n", l->principals, l->keytype,
			       l->fingerprint[0] ? l->fingerprint : "-",
			       l->namespaces ? "  namespaces=" : "", l->namespaces ? l->namespaces : "");
		}
	}
	lora_signers_free(&s);
	free(path);
	return 0;
}

static int trust_rm(int argc, char **argv, struct cmd_ctx *ctx)
{
	struct lora_err err = { 0 };
	int c, n;

	while ((c = cmd_getopt_sub(ctx, argc, argv, SUB_RM)) != -1)
		return 2;
	if (optind + 1 != argc)
		return cmd_usage(ctx, "trust rm needs one ID");
	n = lora_store_trust_rm(ctx->store, argv[optind], &err);
	if (n < 0)
		return cmd_fail(&err);
	printf("removed %s (%d key%s)\n", argv[optind], n, n == 1 ? "" : "s");
	return 0;
}

static CMD(trust)
{
	if (argc < 2)
		return cmd_usage(ctx, "trust needs a subcommand: add, list or rm");
	if (!strcmp(argv[1], "add"))
		return trust_add(argc - 1, argv + 1, ctx);
	if (!strcmp(argv[1], "list"))
		return trust_list(argc - 1, argv + 1, ctx);
	if (!strcmp(argv[1], "rm"))
		return trust_rm(argc - 1, argv + 1, ctx);
	return cmd_usage(ctx, "unknown trust subcommand '%s' (add, list or rm)", argv[1]);
}

const struct cmd_def cmd_trust_entry = {
	"trust", cmd_trust, CMD_NEED_STORE, "manage the signers you trust (allowed_signers)",
	"lora trust add ID (PUBKEY_FILE | --key 'ssh-ed25519 AAAA...')\n"
	"lora trust list [--json]\nlora trust rm ID",
	opts, 16, NULL
};
