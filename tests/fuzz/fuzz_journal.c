/*
 * fuzz_journal.c - libFuzzer target for swap journals (libadapter/merge/swap.c):
 * a journal is read from whatever folder lora opens, so a downloaded model
 * folder can carry a hostile one.  Each input is written as the
 * .lora-swap.journal of a small folder, and lora_merged_recover() replays
 * it.  The harness fixes the two checksums (the entry table's, and a plan's
 * own SHA-256) so that mutations reach the parsers behind them.  Beyond "no
 * crash, no leak, no undefined behaviour": a replay that fails says why and
 * leaves the journal in place; one that succeeds removes it.
 *
 *   make fuzz FUZZ_SECONDS=60   (seeds: tests/fuzz/mk_journal_seeds.py)
 *
 * The fixed base folder lives in /tmp/lora-fuzz-journal/base (the seeds'
 * plans name it); the target folder is /tmp/lora-fuzz-journal/m.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "libadapter/base/fsutil.h"
#include "libadapter/merge/swap.h"

#define REQUIRE(c) do { if (!(c)) __builtin_trap(); } while (0)
#define ROOT "/tmp/lora-fuzz-journal"

/* The one shard every folder holds: w.weight, BF16 [8, 16], bytes (i*37+11) & 0xff. */
static unsigned char shard[8 + 80 + 256];
static size_t shard_len;

static void build_shard(void)
{
	const char *h = "{\"w.weight\":{\"dtype\":\"BF16\",\"shape\":[8,16],\"data_offsets\":[0,256]}}";
	size_t n = strlen(h), pad = (8 - n % 8) % 8;

	memset(shard, ' ', sizeof(shard));
	for (int i = 0; i < 8; i++)
		shard[i] = (unsigned char)((n + pad) >> (8 * i));
	memcpy(shard + 8, h, n);
	for (int i = 0; i < 256; i++)
		shard[8 + n + pad + i] = (unsigned char)(i * 37 + 11);
	shard_len = 8 + n + pad + 256;
}

static void put(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	REQUIRE(fd >= 0 && write(fd, data, len) == (ssize_t)len);
	close(fd);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	build_shard();
	mkdir(ROOT, 0755);
	mkdir(ROOT "/base", 0755);
	mkdir(ROOT "/m", 0755);
	put(ROOT "/base/model.safetensors", shard, shard_len);
	put(ROOT "/base/config.json", "{}", 2);
	return 0;
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* Make the checksums agree with the (mutated) bytes, where the layout allows. */
static void fix_digests(uint8_t *d, size_t n)
{
	uint64_t tl, pos = 64;
	unsigned int len = 0;

	if (n < 64)
		return;
	tl = get64(d + 16);
	if (tl > n - 64)
		return;
	EVP_Digest(d + 64, (size_t)tl, d + 32, &len, EVP_sha256(), NULL);
	for (uint32_t i = 0; i < (uint32_t)(d[8] | d[9] << 8) && pos + 32 <= 64 + tl; i++) {
		uint32_t nl = (uint32_t)(d[pos + 4] | d[pos + 5] << 8 | d[pos + 6] << 16 | (uint32_t)d[pos + 7] << 24);
		uint64_t blen = get64(d + pos + 16), off = get64(d + pos + 24);
		if (d[pos] == 3 && off <= n && blen >= 32 && blen <= n - off) {
			EVP_Digest(d + off + 32, (size_t)(blen - 32), d + off, &len, EVP_sha256(), NULL);
			EVP_Digest(d + 64, (size_t)tl, d + 32, &len, EVP_sha256(), NULL);
		}
		if (nl > tl)
			break;
		pos += 32 + ((nl + 7) & ~7u);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *d = malloc(size ? size : 1);
	struct lora_err err = { 0 };
	struct stat sb;
	int rc;

	REQUIRE(d);
	memcpy(d, data, size);
	fix_digests(d, size);
	put(ROOT "/m/model.safetensors", shard, shard_len);
	put(ROOT "/m/lora-merge.json", "{}", 2);
	put(ROOT "/m/" LORA_SWAP_JOURNAL, d, size);
	free(d);
	rc = lora_merged_recover(ROOT "/m", &err);
	if (getenv("FUZZ_JOURNAL_VERBOSE"))
		fprintf(stderr, "replay: %s\n", rc < 0 ? err.msg : "done");
	if (rc < 0) {
		REQUIRE(err.msg[0]);
		REQUIRE(lstat(ROOT "/m/" LORA_SWAP_JOURNAL, &sb) == 0);
	} else {
		REQUIRE(lstat(ROOT "/m/" LORA_SWAP_JOURNAL, &sb) < 0);
	}
	/* Whole-file entries may have created other files: start clean next time. */
	lora_rm_rf(ROOT "/m", NULL);
	mkdir(ROOT "/m", 0755);
	return 0;
}
