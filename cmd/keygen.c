/* keygen.c - lora keygen: make the default Ed25519 signing key of the store. */
#include <stdio.h>
#include <stdlib.h>

#include "cmd/cmd.h"
#include "libadapter/store/store.h"

CMD(keygen)
{
	static const struct option longopts[] = {
		{ "name", required_argument, NULL, 'n' },
		{ "force", no_argument, NULL, 'f' },
		{ NULL, 0, NULL, 0 },
	};
	struct lora_err err = { 0 };
	const char *id = NULL;
	char *line = NULL;
	int c, force = 0;

	while ((c = cmd_getopt(ctx, argc, argv, "n:f", longopts)) != -1) {
		switch (c) {
		case 'n': id = optarg; break;
		case 'f': force = 1; break;
		default: return 2;
		}
	}
	if (optind != argc)
		return cmd_usage(ctx, "unexpected argument '%s'", argv[optind]);
	if (lora_store_keygen(ctx->store, id, force, &line, &err) < 0)
		return cmd_fail(&err);
	printf("%s\n", line);
	free(line);
	return 0;
}
