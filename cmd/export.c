/* export.c - lora export: a stored adapter as a .lora file, a PEFT folder, a llama.cpp GGUF or an Ollama folder. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cmd/cmd.h"
#include "libadapter/store/gguf_export.h"
#include "libadapter/store/store.h"

static const struct cmd_opt opts[] = {
	{ "output", 'o', "PATH", "the .lora file ('-' for stdout), the folder or the .gguf file to write", 'o', 0, 0 },
	{ "format", 'f', "FORMAT", "lora (a package, default), peft (a folder), gguf (a llama.cpp\n"
				   "LoRA adapter) or ollama (adapter.gguf and a Modelfile)", 'f', CMD_OPT_SHORT_UNLISTED, 0 },
	{ "base", 'b', "DIR", "the base model folder (gguf, ollama): names, heads, fingerprint", 'b', CMD_OPT_SHORT_UNLISTED, 0 },
	{ "from", 0, "MODEL", "the Modelfile's FROM (ollama; default: the absolute --base path)", 'F', 0, 0 },
	{ 0 }
};

static CMD(export)
{
	struct lora_err err = { 0 };
	const char *out = NULL, *format = NULL, *base = NULL, *from = NULL;
	int c, rc;

	while ((c = cmd_getopt(ctx, argc, argv)) != -1) {
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
			rc = lora_store_export_gguf(ctx->store, ctx->tmp_dir, argv[optind], base, out, &err);
		else
			rc = lora_store_export_ollama(ctx->store, ctx->tmp_dir, argv[optind], base, from, out, &err);
	} else {
		return cmd_usage(ctx, "bad value '%s' for --format (lora, peft, gguf or ollama)", format);
	}
	return rc < 0 ? cmd_fail(&err) : 0;
}

const struct cmd_def cmd_export_entry = {
	"export", cmd_export, CMD_NEED_STORE, "write a stored adapter as a .lora file or PEFT folder",
	"lora export REF -o PATH [--format lora|peft]\n"
	"lora export REF -o FILE.gguf --format gguf --base DIR\n"
	"lora export REF -o DIR --format ollama --base DIR [--from MODEL]",
	opts, 22, NULL
};
