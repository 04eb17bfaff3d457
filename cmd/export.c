/* export.c - lora export: a stored adapter as a .lora file or a PEFT folder. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cmd/cmd.h"
#include "libadapter/store/store.h"

static const struct cmd_opt opts[] = {
	{ "output", 'o', "PATH", "the .lora file ('-' for stdout) or the folder to write", 'o', 0, 0 },
	{ "format", 'f', "lora|peft", "a package (default) or a PEFT folder", 'f', CMD_OPT_SHORT_UNLISTED, 0 },
	{ 0 }
};

static CMD(export)
{
	struct lora_err err = { 0 };
	const char *out = NULL, *format = NULL;
	int c, rc;

	while ((c = cmd_getopt(ctx, argc, argv)) != -1) {
		switch (c) {
		case 'o': out = optarg; break;
		case 'f': format = optarg; break;
		default: return 2;
		}
	}
	if (optind + 1 != argc)
		return cmd_usage(ctx, optind >= argc ? "export needs a REF" : "export takes one REF");
	if (!out)
		return cmd_usage(ctx, "export needs -o PATH");
	if (!format)
		format = "lora";
	if (!strcmp(format, "lora")) {
		if (!strcmp(out, "-") && isatty(STDOUT_FILENO))
			return cmd_usage(ctx, "refusing to write a package to a terminal");
		fflush(stdout);
		rc = lora_store_export_lora(ctx->store, argv[optind], out, &err);
	} else if (!strcmp(format, "peft")) {
		if (!strcmp(out, "-"))
			return cmd_usage(ctx, "--format peft writes a folder; give -o DIR");
		rc = lora_store_export_peft(ctx->store, argv[optind], out, &err);
	} else {
		return cmd_usage(ctx, "bad value '%s' for --format (lora or peft)", format);
	}
	return rc < 0 ? cmd_fail(&err) : 0;
}

const struct cmd_def cmd_export_entry = {
	"export", cmd_export, CMD_NEED_STORE, "write a stored adapter as a .lora file or PEFT folder",
	"lora export REF -o PATH [--format lora|peft]",
	opts, 22, NULL
};
