/* pull.c - lora pull: fetch an adapter from an OCI registry into the store. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cmd/cmd.h"
#include "cmd/registry_env.h"
#include "libadapter/store/registry.h"

static void on_progress(void *ctx, double done, double total)
{
	struct cmd_progress *p = ctx;

	p->total = total;
	cmd_progress_update(p, done, NULL);
}

static const struct cmd_opt opts[] = {
	{ "name", 'n', "NAME[:TAG]", "store it under this name (default: the repository's last\n"
				     "component and the tag)", 'n', CMD_OPT_SHORT_UNLISTED, 0 },
	{ "insecure", 0, NULL, "plain http (loopback hosts may use it without this)", 'i', 0, 0 },
	{ "allow-untrusted", 0, NULL, "accept an unsigned adapter or an unknown signer", 'u', 0, 0 },
	{ "json", 0, NULL, "one JSON document on stdout", 'j', 0, 0 },
	{ 0 }
};

static CMD(pull)
{
	struct lora_err err = { 0 };
	struct lora_registry_opts o = { 0 };
	struct lora_pull_result res;
	struct cmd_progress prog;
	const char *name = NULL;
	char *cfg;
	int c, json = 0, allow = 0, rc;

	while ((c = cmd_getopt(ctx, argc, argv)) != -1) {
		switch (c) {
		case 'n': name = optarg; break;
		case 'i': o.insecure = 1; break;
		case 'u': allow = 1; break;
		case 'j': json = 1; break;
		default: return 2;
		}
	}
	if (optind + 1 != argc)
		return cmd_usage(ctx, optind >= argc ? "pull needs a source HOST/REPOSITORY:TAG" : "pull takes one source");
	cfg = cmd_docker_config();
	o.docker_config = cfg;
	cmd_progress_start(&prog, ctx, "pull", 0);
	o.progress = on_progress;
	o.progress_ctx = &prog;
	rc = lora_registry_pull(ctx->store, argv[optind], name, allow, &o, &res, &err);
	cmd_progress_end(&prog);
	free(cfg);
	if (rc < 0)
		return cmd_fail(&err);
	if (json) {
		cJSON *j = cJSON_CreateObject();
		if (!j)
			return cmd_error("out of memory");
		cJSON_AddStringToObject(j, "ref", res.ref);
		cJSON_AddStringToObject(j, "digest", res.digest);
		cJSON_AddStringToObject(j, "source", argv[optind]);
		cJSON_AddNumberToObject(j, "blobs", (double)res.n_blobs);
		cJSON_AddNumberToObject(j, "downloaded", (double)res.n_downloaded);
		cJSON_AddNumberToObject(j, "bytes_downloaded", (double)res.bytes_downloaded);
		return cmd_print_json(j);
	}
	printf("%s %s\n", res.ref, res.digest);
	return 0;
}

const struct cmd_def cmd_pull_entry = {
	"pull", cmd_pull, CMD_NEED_STORE, "fetch an adapter from an OCI registry into the store",
	"lora pull HOST[:PORT]/REPOSITORY[:TAG|@sha256:DIGEST] [--name NAME[:TAG]] [--insecure] [--allow-untrusted] [--json]",
	opts, 22, NULL
};
