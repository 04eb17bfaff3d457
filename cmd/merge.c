/* merge.c - `lora merge`: adapters merged into a new base model folder. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/cmd.h"
#include "libadapter/merge/merge.h"
#include "libadapter/merge/swap.h"
#include "train/cuda.h"

static void on_progress(void *ctx, uint64_t done, uint64_t total)
{
	struct cmd_progress *p = ctx;
	char extra[48];

	p->total = (double)total;
	snprintf(extra, sizeof(extra), "%.0f/%.0f MB", done / 1e6, total / 1e6);
	cmd_progress_update(p, (double)done, extra);
}

/* Parse REF[@WEIGHT] arguments into an opened set; returns an exit code, 0 ok. */
int cmd_merge_open_set(struct cmd_ctx *ctx, char **args, int n, struct lora_merge_set *set);
int cmd_merge_open_set(struct cmd_ctx *ctx, char **args, int n, struct lora_merge_set *set)
{
	struct lora_err err = { 0 };

	set->tmp_dir = ctx->tmp_dir;
	for (int i = 0; i < n; i++) {
		char *spec;
		double w;
		if (lora_merge_parse_arg(args[i], &spec, &w, &err) < 0 ||
		    lora_merge_set_add(set, ctx->store, spec, w, &err) < 0) {
			free(spec);
			return cmd_fail(&err);
		}
		free(spec);
	}
	return 0;
}

static const struct cmd_opt opts[] = {
	{ "base", 'b', "DIR", "the base model folder", 'b', CMD_OPT_SHORT_UNLISTED, 0 },
	{ "output", 'o', "DIR", "the merged folder to create (must not exist)", 'o', 0, 0 },
	{ "dtype", 0, "TYPE", "output dtype of float tensors (auto: each keeps its own)", 'd', 0, 0 },
	{ "device", 0, "DEV", "cpu (default) or cuda for the B·A products", 'D', 0, 0 },
	{ "force", 0, NULL, "merge adapters made for another base (fingerprint)", 'f', 0, 0 },
	{ NULL, 0, "REF@WEIGHT", "a PEFT folder, .lora file or stored adapter, times WEIGHT", 0, 0, 0 },
	{ 0 }
};

static CMD(merge)
{
	struct lora_merge_opts o = { 0 };
	struct lora_merge_set set = { 0 };
	struct lora_merge_stats st;
	struct lora_err err = { 0 };
	struct cmd_progress prog;
	struct lora_cuda_merge_hook hook;
	int c, rc;

	o.store_dir = ctx->store;
	o.cache_dir = ctx->cache_dir;
	o.dtype = LORA_DT_INVALID;
	o.gpu = lora_cuda_merge_hook(&hook, ctx->cuda_plugin);
	while ((c = cmd_getopt(ctx, argc, argv)) != -1) {
		switch (c) {
		case 'b': o.base_dir = optarg; break;
		case 'o': o.out_dir = optarg; break;
		case 'd':
			if (lora_merge_dtype_parse(optarg, &o.dtype) < 0)
				return cmd_usage(ctx, "bad value '%s' for --dtype (auto, bf16, fp16 or fp32)",
						 optarg);
			break;
		case 'D':
			if (!strcmp(optarg, "cpu"))
				o.device = LORA_DEVICE_CPU;
			else if (!strcmp(optarg, "cuda"))
				o.device = LORA_DEVICE_CUDA;   /* o.gpu loads the plugin only then */
			else
				return cmd_usage(ctx, "bad value '%s' for --device (cpu or cuda)", optarg);
			break;
		case 'f': o.force = 1; break;
		default: return 2;
		}
	}
	if (!o.base_dir)
		return cmd_usage(ctx, "--base DIR is required");
	if (!o.out_dir)
		return cmd_usage(ctx, "-o OUTDIR is required");
	if (optind >= argc)
		return cmd_usage(ctx, "name at least one adapter to merge");
	if ((rc = cmd_merge_open_set(ctx, argv + optind, argc - optind, &set)) != 0) {
		lora_merge_set_free(&set);
		return rc;
	}
	/* A base whose swap was interrupted is finished first (merge is a command that writes). */
	if (lora_merged_recover(o.base_dir, &err) < 0) {
		lora_merge_set_free(&set);
		return cmd_fail(&err);
	}
	cmd_progress_start(&prog, ctx, "merging", 1);
	o.progress = on_progress;
	o.progress_ctx = &prog;
	rc = lora_merge(&o, &set, &st, &err);
	cmd_progress_end(&prog);
	if (rc < 0) {
		lora_merge_set_free(&set);
		return cmd_fail(&err);
	}
	if (st.n_forced)
		cmd_warn("%zu adapter%s made for another base merged anyway (--force)", st.n_forced,
			 st.n_forced == 1 ? " was" : "s were");
	printf("merged %zu adapter%s into %s: %zu tensors merged, %zu copied, %zu converted (%zu shard%s)\n",
	       set.n, set.n == 1 ? "" : "s", o.out_dir, st.n_merged, st.n_copied, st.n_converted,
	       st.n_shards, st.n_shards == 1 ? "" : "s");
	lora_merge_set_free(&set);
	return 0;
}

const struct cmd_def cmd_merge_entry = {
	"merge", cmd_merge, CMD_NEED_STORE, "merge adapters into a new base model folder",
	"lora merge --base DIR REF[@WEIGHT]... -o OUTDIR [--dtype auto|bf16|fp16|fp32] [--device cpu|cuda] [--force]",
	opts, 20, NULL
};
