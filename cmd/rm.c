/* rm.c - lora rm: remove an adapter name (and blobs nothing else uses). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/cmd.h"
#include "libadapter/store.h"

CMD(rm)
{
	static const struct option longopts[] = { { NULL, 0, NULL, 0 } };
	struct lora_err err = { 0 };
	char *removed = NULL;
	int c;

	while ((c = cmd_getopt(ctx, argc, argv, "", longopts)) != -1)
		return 2;
	if (optind + 1 != argc)
		return cmd_usage(ctx, optind >= argc ? "rm needs a REF" : "rm takes one REF");
	if (lora_store_rm(ctx->store, argv[optind], &removed, &err) < 0)
		return cmd_fail(&err);
	for (char *p = removed, *nl; p && *p; p = nl ? nl + 1 : NULL) {
		nl = strchr(p, '\n');
		printf("removed %.*s\n", nl ? (int)(nl - p) : (int)strlen(p), p);
		if (!nl)
			break;
	}
	free(removed);
	return 0;
}
