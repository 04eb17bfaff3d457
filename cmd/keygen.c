/* keygen.c - lora keygen: make the default Ed25519 signing key of the store. */
#include <stdio.h>
#include <stdlib.h>

#include "cmd/cmd.h"
#include "libadapter/store/store.h"

static const struct cmd_opt opts[] = {
	{ "name", 'n', "ID", "the signer identity (default $USER@hostname)", 'n', CMD_OPT_SHORT_UNLISTED, 0 },
	{ "force", 'f', NULL, "replace an existing default key", 'f', CMD_OPT_SHORT_UNLISTED, 0 },
	{ 0 }
};

static CMD(keygen)
{
	struct lora_err err = { 0 };
	const char *id = NULL;
	char *line = NULL, ident[256];
	int c, force = 0;

	while ((c = cmd_getopt(ctx, argc, argv)) != -1) {
		switch (c) {
		case 'n': id = optarg; break;
		case 'f': force = 1; break;
		default: return 2;
		}
	}
	if (optind != argc)
		return cmd_usage(ctx, "unexpected argument '%s'", argv[optind]);
	if (!id) {   /* the default identity, $USER@hostname */
		lora_store_default_identity(ctx->user, ident);
		id = ident;
	}
	if (lora_store_keygen(ctx->store, id, force, &line, &err) < 0)
		return cmd_fail(&err);
	printf("%s\n", line);
	free(line);
	return 0;
}

const struct cmd_def cmd_keygen_entry = {
	"keygen", cmd_keygen, CMD_NEED_STORE, "make the default Ed25519 signing key",
	"lora keygen [--name ID] [--force]",
	opts, 16, NULL
};
