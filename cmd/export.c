/* export.c - lora export: a stored adapter as a .lora file, a PEFT folder, a llama.cpp GGUF or an Ollama folder. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cmd/cmd.h"
#include "libadapter/store/gguf_export.h"
#include "libadapter/store/store.h"

CMD(export)
{
	static const struct option longopts[] = {
		{ "output", required_argument, NULL, 'o' },
		{ "format", required_argument, NULL, 'f' },
		{ "base", required_argument, NULL, 'b' },
		{ "from", required_argument, NULL, 'F' },
		{ NULL, 0, NULL, 0 },
	};
	struct lora_err err = { 0 };
	const char *out = NULL, *format = NULL, *base = NULL, *from = NULL;
	int c, rc;

	while ((c = cmd_getopt(ctx, argc, argv, "o:f:b:", longopts)) != -1) {
		switch (c) {
		case 'o': out = optarg; break;
		case 'f': format = optarg; break;
		case 'b': base = optarg; break;
		case 'F': from = optarg; break;
		default: return 2;
		}
	}
	if (optind + 1 != argc)
		return cmd_usage(ctx, optind >= argc ? "export needs a REF" : "export takes one REF");
	if (!out)
		return cmd_usage(ctx, "export needs -o PATH");
	if (!format)
		format = "lora";
	if ((base || from) && strcmp(format, "gguf") && strcmp(format, "ollama"))
		return cmd_usage(ctx, "--base and --from are for --format gguf or ollama");
	if (from && strcmp(format, "ollama"))
		return cmd_usage(ctx, "--from is for --format ollama");
	if (!strcmp(format, "lora")) {
		if (!strcmp(out, "-") && isatty(STDOUT_FILENO))
			return cmd_usage(ctx, "refusing to write a package to a terminal");
		fflush(stdout);
		rc = lora_store_export_lora(ctx->store, argv[optind], out, &err);
	} else if (!strcmp(format, "peft")) {
		if (!strcmp(out, "-"))
			return cmd_usage(ctx, "--format peft writes a folder; give -o DIR");
		rc = lora_store_export_peft(ctx->store, argv[optind], out, &err);
	} else if (!strcmp(format, "gguf") || !strcmp(format, "ollama")) {
		if (!base)
			return cmd_usage(ctx, "--format %s needs --base DIR (the base model folder)", format);
		if (!strcmp(out, "-"))
			return cmd_usage(ctx, "--format %s writes a %s; give -o %s", format,
					 *format == 'g' ? "file" : "folder", *format == 'g' ? "FILE.gguf" : "DIR");
		if (*format == 'g')
			rc = lora_store_export_gguf(ctx->store, argv[optind], base, out, &err);
		else
			rc = lora_store_export_ollama(ctx->store, argv[optind], base, from, out, &err);
	} else {
		return cmd_usage(ctx, "bad value '%s' for --format (lora, peft, gguf or ollama)", format);
	}
	return rc < 0 ? cmd_fail(&err) : 0;
}
