/* tag.c - lora tag: give a stored adapter another NAME[:TAG]. */
#include <stdio.h>

#include "cmd/cmd.h"
#include "libadapter/store/store.h"

static CMD(tag)
{
	struct lora_err err = { 0 };
	struct lora_ref r;
	char digest[72];
	int c;

	while ((c = cmd_getopt(ctx, argc, argv)) != -1)
		return 2;
	if (optind + 2 != argc)
		return cmd_usage(ctx, "tag needs REF and NAME[:TAG]");
	if (lora_ref_parse(argv[optind + 1], &r, &err) < 0)
		return cmd_fail(&err);
	if (r.is_digest)
		return cmd_usage(ctx, "the new name is NAME[:TAG], not a digest");
	if (lora_store_tag(ctx->store, argv[optind], argv[optind + 1], &err) < 0)
		return cmd_fail(&err);
	if (lora_store_resolve(ctx->store, argv[optind + 1], digest, NULL, &err) < 0)
		return cmd_fail(&err);
	printf("%s:%s %s\n", r.name, r.tag, digest);
	return 0;
}

const struct cmd_def cmd_tag_entry = {
	"tag", cmd_tag, CMD_NEED_STORE, "give a stored adapter another name",
	"lora tag REF NAME[:TAG]",
	NULL, 0, NULL
};
