/* rm.c - lora rm: remove an adapter name (and blobs nothing else uses). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/cmd.h"
#include "libadapter/store/store.h"
#include "train/ckpt.h"

static CMD(rm)
{
	struct lora_err err = { 0 };
	char *removed = NULL;
	int c, rc = 0;

	while ((c = cmd_getopt(ctx, argc, argv)) != -1)
		return 2;
	if (optind + 1 != argc)
		return cmd_usage(ctx, optind >= argc ? "rm needs a REF" : "rm takes one REF");
	if (lora_store_rm(ctx->store, argv[optind], &removed, &err) < 0) {
		/* No such adapter, but maybe an unfinished training run of that name. */
		struct lora_err werr = { 0 };
		int w = strncmp(argv[optind], "sha256:", 7) ? lora_work_remove(ctx->store, argv[optind], &werr) : 0;
		if (w == 1) {
			printf("removed the unfinished training run of %s\n", argv[optind]);
			return 0;
		}
		return cmd_fail(w < 0 ? &werr : &err);
	}
	for (char *p = removed, *nl; p && *p; p = nl ? nl + 1 : NULL) {
		char ref[512];
		int w;
		nl = strchr(p, '\n');
		snprintf(ref, sizeof(ref), "%.*s", nl ? (int)(nl - p) : (int)strlen(p), p);
		printf("removed %s\n", ref);
		/* Its training work area (checkpoints of a --resume-able run), if any. */
		w = lora_work_remove(ctx->store, ref, &err);
		if (w < 0)
			rc = cmd_fail(&err);
		else if (w == 1)
			printf("removed the training work area of %s\n", ref);
		if (!nl)
			break;
	}
	free(removed);
	return rc;
}

const struct cmd_def cmd_rm_entry = {
	"rm", cmd_rm, CMD_NEED_STORE, "remove an adapter name from the store",
	"lora rm REF",
	NULL, 0, NULL
};
