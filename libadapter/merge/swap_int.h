/*
 * swap_int.h - what swap.c (writes journals) and journal.c (replays them) share.
 */
#ifndef LORA_SWAP_INT_H
#define LORA_SWAP_INT_H

#include <stdint.h>

#include <unistd.h>

#include "libadapter/base/err.h"
#include "libadapter/merge/merge.h"

#define J_MAGIC "LORAJNL1"
#define J_TRAILER "LORAEND1"
#define J_HEAD 64u
#define J_ENTRY 32u
#define J_MAX_ENTRIES 1000000u
#define J_MAX_FILE (64u << 20)     /* whole-file entries (lora-merge.json) */
#define TMP_JSON_PREFIX "." LORA_MERGE_JSON ".tmp."

enum { J_RANGE = 1, J_FILE = 2, J_PLAN = 3 };
#define J_PLAN_NAME "lora-swap-plan"

struct jentry {
	int kind;
	const char *name;         /* plain file name in the folder */
	uint64_t target_off, len, src_off;
};

/* Little-endian fields of the journal. */
static inline void put64(unsigned char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static inline void put32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static inline uint64_t get64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

static inline uint32_t get32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void pause_us(unsigned us)
{
	if (us)
		usleep(us);
}

/* journal.c: flock the folder itself (no lock file); one swap or recovery at a time. */
int lora_swap_lock_dir(const char *dir, int *fd, struct lora_err *err);
void lora_swap_unlock_dir(int fd);
/* journal.c: finish or roll back an interrupted swap of dir, which the caller holds locked. */
int lora_swap_recover_locked(const char *dir, struct lora_err *err);
/* journal.c: replay the committed journal of dir (idempotent), then remove it. */
int lora_swap_journal_apply(const char *dir, unsigned pause, int verify, lora_progress_fn progress,
			    void *progress_ctx, struct lora_err *err);

#endif
