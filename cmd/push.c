/* push.c - lora push: send a stored adapter to an OCI registry. */
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
	{ "insecure", 0, NULL, "plain http (loopback hosts may use it without this)", 'i', 0, 0 },
	{ "chunk-size", 0, "BYTES", "upload blobs larger than this in chunks of it (64 MiB)", 'c', 0, 0 },
	{ "json", 0, NULL, "one JSON document on stdout", 'j', 0, 0 },
	{ 0 }
};

static CMD(push)
{
	struct lora_err err = { 0 };
	struct lora_registry_opts o = { 0 };
	struct lora_push_result res;
	struct cmd_progress prog;
	char *cfg;
	long chunk = 0;
	int c, json = 0, rc;

	while ((c = cmd_getopt(ctx, argc, argv)) != -1) {
		switch (c) {
		case 'i': o.insecure = 1; break;
		case 'c':
			if (cmd_optarg_long(ctx, 1024, 1L << 40, &chunk) < 0)
				return 2;
			break;
		case 'j': json = 1; break;
		default: return 2;
		}
	}
	if (optind + 2 != argc)
		return cmd_usage(ctx, optind + 2 > argc ? "push needs a REF and a destination HOST/REPOSITORY:TAG"
						        : "push takes one REF and one destination");
	cfg = cmd_docker_config();
	o.docker_config = cfg;
	o.chunk_size = (uint64_t)chunk;
	cmd_progress_start(&prog, ctx, "push", 0);
	o.progress = on_progress;
	o.progress_ctx = &prog;
	rc = lora_registry_push(ctx->store, argv[optind], argv[optind + 1], &o, &res, &err);
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
		cJSON_AddStringToObject(j, "destination", argv[optind + 1]);
		cJSON_AddNumberToObject(j, "blobs", (double)res.n_blobs);
		cJSON_AddNumberToObject(j, "uploaded", (double)res.n_uploaded);
		cJSON_AddNumberToObject(j, "bytes_uploaded", (double)res.bytes_uploaded);
		return cmd_print_json(j);
	}
	printf("%s %s (%zu of %zu blobs uploaded, %llu bytes)\n", argv[optind + 1], res.digest, res.n_uploaded,
	       res.n_blobs, (unsigned long long)res.bytes_uploaded);
	return 0;
}

const struct cmd_def cmd_push_entry = {
	"push", cmd_push, CMD_NEED_STORE, "send a stored adapter to an OCI registry",
	"lora push REF HOST[:PORT]/REPOSITORY[:TAG] [--insecure] [--chunk-size BYTES] [--json]",
	opts, 22, NULL
};
