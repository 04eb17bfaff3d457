/* swap.c - `lora swap`: change the adapters merged into a model folder, in place. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/cmd.h"
#include "libadapter/merge/merge.h"
#include "libadapter/merge/swap.h"
#include "libadapter/base/fsutil.h"
#include "libadapter/format/modeldir.h"

int cmd_merge_open_set(struct cmd_ctx *ctx, char **args, int n, struct lora_merge_set *set);

static void on_progress(void *ctx, uint64_t done, uint64_t total)
{
	struct cmd_progress *p = ctx;
	char extra[48];

	p->total = (double)total;
	snprintf(extra, sizeof(extra), "%.0f/%.0f MB", done / 1e6, total / 1e6);
	cmd_progress_update(p, (double)done, extra);
}

/* `lora swap DIR --recover`: finish what a killed swap left, nothing more. */
static int recover_only(struct cmd_ctx *ctx, const char *dir, int extra)
{
	struct lora_err err = { 0 };
	char *j = NULL, *jn = NULL;
	int pending;

	if (extra)
		return cmd_usage(ctx, "--recover takes only the model folder");
	if (!lora_is_dir(dir))
		return cmd_error("'%s' is not a folder", dir);
	j = lora_path_join(dir, LORA_SWAP_JOURNAL);
	jn = lora_path_join(dir, LORA_SWAP_JOURNAL_NEW);
	if (!j || !jn) {
		free(j);
		free(jn);
		return cmd_error("out of memory");
	}
	pending = lora_is_file(j) || lora_is_file(jn);
	free(j);
	free(jn);
	if (lora_merged_recover(dir, &err) < 0)
		return cmd_fail(&err);
	if (pending)
		printf("recovered %s: the interrupted swap is finished or rolled back\n", dir);
	else
		printf("nothing to recover in %s\n", dir);
	return 0;
}

static const struct cmd_opt opts[] = {
	{ "none", 0, NULL, "remove every adapter (the base's tensors)", 'n', 0, 0 },
	{ "base", 'b', "DIR", "recompute from this base (default: the recorded one)", 'b', CMD_OPT_SHORT_UNLISTED, 0 },
	{ "recover", 0, NULL, "only finish (or roll back) an interrupted swap", 'r', 0, 0 },
	{ 0 }
};

static CMD(swap)
{
	struct lora_swap_opts o = { 0 };
	struct lora_merge_set set = { 0 };
	struct lora_swap_stats st;
	struct lora_err err = { 0 };
	struct cmd_progress prog;
	const char *pause = getenv("LORA_TEST_SWAP_PAUSE_US");
	int c, rc, none = 0, recover = 0;

	o.store_dir = ctx->store;
	o.cache_dir = ctx->cache_dir;
	o.tmp_dir = ctx->tmp_dir;
	while ((c = cmd_getopt(ctx, argc, argv)) != -1) {
		switch (c) {
		case 'b': o.base_dir = optarg; break;
		case 'n': none = 1; break;
		case 'r': recover = 1; break;
		default: return 2;
		}
	}
	if (optind >= argc)
		return cmd_usage(ctx, "name the merged model folder");
	o.model_dir = argv[optind++];
	if (recover)
		return recover_only(ctx, o.model_dir, none || o.base_dir || optind < argc);
	if (none && optind < argc)
		return cmd_usage(ctx, "--none takes no adapters");
	if (!none && optind >= argc)
		return cmd_usage(ctx, "name the adapters to swap in, or --none");
	if (pause && *pause)
		o.pause_us = (unsigned)strtoul(pause, NULL, 10);   /* test hook, see lora-swap(1) */
	if ((rc = cmd_merge_open_set(ctx, argv + optind, argc - optind, &set)) != 0) {
		lora_merge_set_free(&set);
		return rc;
	}
	cmd_progress_start(&prog, ctx, "swapping", 1);
	o.progress = on_progress;
	o.progress_ctx = &prog;
	rc = lora_swap(&o, &set, &st, &err);
	cmd_progress_end(&prog);
	if (rc < 0) {
		lora_merge_set_free(&set);
		return cmd_fail(&err);
	}
	if (!st.exact)
		cmd_warn("%s", st.note);
	if (set.n)
		printf("swapped %zu adapter%s into %s: %zu tensors rewritten (%.1f MB)%s\n", set.n,
		       set.n == 1 ? "" : "s", o.model_dir, st.n_rewritten, st.bytes_rewritten / 1e6,
		       st.exact ? "" : ", not bit-exact");
	else
		printf("removed the adapters from %s: %zu tensors restored (%.1f MB)%s\n", o.model_dir,
		       st.n_rewritten, st.bytes_rewritten / 1e6, st.exact ? "" : ", not bit-exact");
	lora_merge_set_free(&set);
	return 0;
}

const struct cmd_def cmd_swap_entry = {
	"swap", cmd_swap, CMD_NEED_STORE, "change the adapters merged into a model folder in place",
	"lora swap MODEL_DIR (REF[@WEIGHT]... | --none) [--base DIR]\nlora swap MODEL_DIR --recover",
	opts, 20, NULL
};
