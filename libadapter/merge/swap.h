/*
 * swap.h - changing the adapters merged into a model folder, in place.
 *
 * `lora swap` rewrites only the tensors that the old set or the new set
 * targets, at their offsets in the existing shards, plus each shard's header
 * (same size: see merge.h) and lora-merge.json.
 *
 * Two ways to compute the new tensors:
 *   exact   the base is at hand (the recorded path, or one given): every
 *           rewritten tensor is recomputed from the pristine base, checked
 *           tensor by tensor against the recorded fingerprint lines first, so
 *           the folder ends bit-identical to a fresh `lora merge` of the new set;
 *   drift   no base: W' = W_merged − Σ old + Σ new in fp32, rounded once.  W_merged
 *           was itself rounded, so each such swap moves a changed weight by up
 *           to about one ulp of the output dtype from the exact result (half an
 *           ulp from the earlier rounding, half from this one); lora-merge.json
 *           counts these swaps in "drift".  The next exact swap removes it.
 *
 * Crash safety: a redo journal.  Everything the swap will write goes first
 * into MODEL_DIR/.lora-swap.journal.new, which is fsynced and renamed to
 * MODEL_DIR/.lora-swap.journal: that rename is the commit.  Only then are the
 * shards changed; when all is written and fsynced the journal is removed.
 * A swap killed before the commit leaves the old set (the .new file is
 * deleted on recovery); killed after it, recovery replays the journal, which
 * is idempotent, and finishes the new set.  Never a mix.
 *
 * What the journal holds depends on the mode.  Exact: the plan (one J_PLAN
 * entry), so the tensors are written once, straight into the shards, by
 * worker threads; replaying it recomputes them from the base, which must then
 * still match the recorded lines (checked before anything is written; while
 * the base is missing or changed, recovery fails and keeps the journal).
 * Drift: the new tensor bytes (W - old + new is not idempotent), copied into
 * place.  Both: the new shard headers (ranges) and lora-merge.json (a file).
 *
 * The journal, byte by byte (little-endian):
 *   0   "LORAJNL1"                     magic
 *   8   u32 n_entries, u32 0
 *   16  u64 table_len                  bytes of the entry table
 *   24  u64 data_start                 64 + table_len
 *   32  32 bytes                       SHA-256 of the entry table
 *   64  entry table, n_entries of:
 *         u8 kind (1: bytes at an offset of a file; 2: a whole file, replaced
 *         atomically; 3: the plan of an exact swap, at most one), 3 zero
 *         bytes, u32 name_len, u64 target_off, u64 len, u64 src_off (in the
 *         journal), name (a plain file name in MODEL_DIR; "lora-swap-plan"
 *         for kind 3), zero-padded to 8 bytes
 *   data_start  the bytes of every entry
 *   end - 8     "LORAEND1"
 *
 * A plan (kind 3) is the SHA-256 of the rest, then a safetensors file: the
 * factors of every term ("<row>.<term>.A", ".B", as stored in the adapter),
 * and in its metadata "lora.swap" = {"base": absolute path, "tensors": [{
 * "name", "line" (the base tensor's fingerprint line), "file", "offset",
 * "dtype" (where and how it goes in the folder), "terms": [{"coef", "fifo",
 * "A", "B"}]}]}; a row without terms is the base tensor copied (or converted).
 *
 * One swap or recovery at a time per folder: they hold flock(LOCK_EX) on
 * the folder itself (no lock file, so the folder stays byte-identical).
 * Readers that mapped a shard before the swap see its tensors change in place.
 */
#ifndef LORA_SWAP_H
#define LORA_SWAP_H

#include <stddef.h>
#include <stdint.h>

#include "libadapter/base/err.h"
#include "libadapter/merge/merge.h"

/* LORA_SWAP_JOURNAL and LORA_SWAP_JOURNAL_NEW: the journal's names, in format/modeldir.h. */

struct lora_swap_opts {
	const char *store_dir;    /* for store refs; may be NULL */
	const char *model_dir;    /* a folder lora merge wrote */
	const char *base_dir;     /* the base to recompute from, or NULL for the recorded path */
	lora_progress_fn progress;
	void *progress_ctx;
	unsigned pause_us;        /* test hook: sleep after each step that writes (0: none) */
	const char *cache_dir;    /* fingerprint line cache (lora_linecache_open); NULL: none */
	const char *tmp_dir;      /* where recorded .lora adapters are unpacked; NULL: /tmp */
};

struct lora_swap_stats {
	int exact;                /* recomputed from the base */
	char note[512];           /* when not exact: why, for a warning */
	size_t n_rewritten;       /* tensors rewritten */
	uint64_t bytes_rewritten;
	char fingerprint[72];     /* base fingerprint of the new set */
};

/*
 * Replace the adapters merged into o->model_dir by `set` (n = 0: none, the
 * folder then holds the base's tensors).  Finishes an interrupted swap first.
 */
int lora_swap(const struct lora_swap_opts *o, const struct lora_merge_set *set,
	      struct lora_swap_stats *stats, struct lora_err *err);

/*
 * Finish (or roll back) a swap of model_dir that was interrupted.  Cheap when
 * there is nothing to do (a stat or two and one readdir); safe on any folder,
 * merged or not.  Only commands that write call it (lora merge on its base,
 * lora swap, `lora swap DIR --recover`); lora_model_open refuses a folder
 * that needs it, so read-only commands never write.
 */
int lora_merged_recover(const char *model_dir, struct lora_err *err);

#endif
