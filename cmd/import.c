/* import.c - lora import: add a .lora package or a PEFT folder to the store. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/cmd.h"
#include "libadapter/base/fsutil.h"
#include "libadapter/store/manifest.h"
#include "libadapter/format/modeldir.h"
#include "libadapter/format/peft.h"
#include "libadapter/store/gguf_export.h"
#include "libadapter/store/store.h"

/* The name a folder gets without --name: its last path component. */
static int default_name(const char *path, char out[129])
{
	size_t n = strlen(path);
	const char *b;

	while (n > 1 && path[n - 1] == '/')
		n--;
	b = path + n;
	while (b > path && b[-1] != '/')
		b--;
	if ((size_t)(path + n - b) >= 129)
		return -1;
	snprintf(out, 129, "%.*s", (int)(path + n - b), b);
	return lora_name_ok(out) ? 0 : -1;
}

/* sha256 fingerprint of the base tensors the adapter in dir targets. */
static int base_fingerprint(const char *base, const char *dir, char out[72], struct lora_err *err)
{
	struct lora_model *m = NULL;
	struct lora_peft *p = NULL;
	const char **names = NULL;
	int rc = -1;

	if (lora_peft_open(dir, &p, err) < 0 || lora_model_open(base, 0, &m, err) < 0)
		goto out;
	names = calloc(p->n_modules ? p->n_modules : 1, sizeof(*names));
	if (!names) {
		lora_errf(err, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < p->n_modules; i++)
		names[i] = p->modules[i].name;
	rc = lora_model_fingerprint(m, names, p->n_modules, out, err);
out:
	free(names);
	lora_model_close(m);
	lora_peft_close(p);
	return rc;
}

/* Progress of a large import on a terminal (cmd_progress is quiet otherwise). */
static void on_progress(void *ctx, double done, double total)
{
	struct cmd_progress *p = ctx;

	p->total = total;
	cmd_progress_update(p, done, NULL);
}

static const struct cmd_opt opts[] = {
	{ "name", 'n', "NAME[:TAG]", "store it under this name (tag 'latest' when absent)", 'n', CMD_OPT_SHORT_UNLISTED, 0 },
	{ "allow-untrusted", 0, NULL, "accept an unsigned package or an unknown signer", 'u', 0, 0 },
	{ "key", 'k', "FILE", "sign a folder with this OpenSSH ed25519 key", 'k', CMD_OPT_SHORT_UNLISTED, 0 },
	{ "description", 'd', "TEXT", "a description for the manifest of a folder", 'd', CMD_OPT_SHORT_UNLISTED, 0 },
	{ "base", 'b', "DIR", "record the fingerprint of this base model (needed for a .gguf file)", 'b', CMD_OPT_SHORT_UNLISTED, 0 },
	{ 0 }
};

static CMD(import)
{
	struct lora_err err = { 0 };
	const char *name = NULL, *key = NULL, *desc = NULL, *base = NULL, *path;
	char ref[LORA_REF_MAX], digest[72], fp[72];
	struct cmd_progress prog;
	int c, allow = 0, rc;

	while ((c = cmd_getopt(ctx, argc, argv)) != -1) {
		switch (c) {
		case 'n': name = optarg; break;
		case 'u': allow = 1; break;
		case 'k': key = optarg; break;
		case 'd': desc = optarg; break;
		case 'b': base = optarg; break;
		default: return 2;
		}
	}
	if (optind + 1 != argc)
		return cmd_usage(ctx, optind >= argc ? "import needs a PATH" : "import takes one PATH");
	path = argv[optind];
	cmd_progress_start(&prog, ctx, "import", 0);
	if (lora_is_dir(path)) {
		struct lora_import_opts o = { 0 };
		struct lora_ref r;
		char nm[129];

		if (allow)
			return cmd_usage(ctx, "--allow-untrusted is for .lora packages; a folder is signed by you");
		if (!name) {
			if (default_name(path, nm) < 0)
				return cmd_usage(ctx, "cannot make an adapter name from '%s'; give --name NAME[:TAG]",
						 path);
			name = nm;
		}
		if (lora_ref_parse(name, &r, &err) < 0 || r.is_digest)
			return r.is_digest ? cmd_usage(ctx, "--name wants NAME[:TAG]") : cmd_fail(&err);
		if (base) {
			if (base_fingerprint(base, path, fp, &err) < 0)
				return cmd_fail(&err);
			o.base_fingerprint = fp;
		}
		o.key_path = key;
		o.description = desc;
		o.progress = on_progress;
		o.progress_ctx = &prog;
		o.user = ctx->user;
		o.created = ctx->created;
		rc = lora_store_add_peft_dir(ctx->store, path, name, &o, digest, &err);
		cmd_progress_end(&prog);
		if (rc < 0)
			return cmd_fail(&err);
		snprintf(ref, sizeof(ref), "%s:%s", r.name, r.tag);
		if (key) {
			/* signing with a key nobody trusts yet makes an adapter that verify refuses */
			struct lora_verify_report rep;
			struct lora_err e2 = { 0 };
			if (lora_store_verify(ctx->store, ref, &rep, &e2) == 0 &&
			    rep.state[LORA_CHK_SIGNER] == LORA_CHECK_FAIL)
				cmd_warn("the key of '%s' is not in allowed_signers; run 'lora trust add %s %s.pub'",
					 rep.identity, rep.identity, key);
		}
	} else if (lora_is_file(path) && lora_is_gguf_file(path)) {
		struct lora_import_opts o = { 0 };
		struct lora_ref r;
		char nm[129];

		if (allow)
			return cmd_usage(ctx, "--allow-untrusted is for .lora packages; a GGUF file is signed by you");
		if (!base)
			return cmd_usage(ctx, "a GGUF adapter needs --base DIR (the base model it applies to)");
		if (!name) {
			size_t l = strlen(path);
			char stem[256];
			snprintf(stem, sizeof(stem), "%.*s", (int)(l > 5 && !strcmp(path + l - 5, ".gguf") ? l - 5 : l), path);
			if (default_name(stem, nm) < 0)
				return cmd_usage(ctx, "cannot make an adapter name from '%s'; give --name NAME[:TAG]",
						 path);
			name = nm;
		}
		if (lora_ref_parse(name, &r, &err) < 0 || r.is_digest)
			return r.is_digest ? cmd_usage(ctx, "--name wants NAME[:TAG]") : cmd_fail(&err);
		o.key_path = key;
		o.description = desc;
		o.user = ctx->user;
		o.created = ctx->created;
		rc = lora_store_import_gguf(ctx->store, path, base, name, &o, ctx->tmp_dir, digest, &err);
		cmd_progress_end(&prog);
		if (rc < 0)
			return cmd_fail(&err);
		snprintf(ref, sizeof(ref), "%s:%s", r.name, r.tag);
	} else if (lora_is_file(path)) {
		if (key || desc || base)
			return cmd_usage(ctx, "--key, --description and --base are for folders; a package is "
					 "already signed");
		rc = lora_store_import_package_progress(ctx->store, path, name, allow, ref, digest, on_progress,
							&prog, &err);
		cmd_progress_end(&prog);
		if (rc < 0)
			return cmd_fail(&err);
	} else {
		return cmd_error("cannot import '%s': no such file or folder", path);
	}
	printf("%s %s\n", ref, digest);
	return 0;
}

const struct cmd_def cmd_import_entry = {
	"import", cmd_import, CMD_NEED_STORE, "add a .lora package or a PEFT folder to the store",
	"lora import PATH [--name NAME[:TAG]] [--allow-untrusted] [--key FILE] [--description TEXT] [--base DIR]\n"
	"lora import FILE.gguf --base DIR [--name NAME[:TAG]] [--key FILE] [--description TEXT]",
	opts, 22, NULL
};
