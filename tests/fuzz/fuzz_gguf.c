/*
 * fuzz_gguf.c - libFuzzer target for the GGUF reader (libadapter/format/gguf.h).
 *
 *   make fuzz FUZZ_SECONDS=60
 *
 * Each input is a whole file, parsed from memory.  Beyond "no crash, no
 * leak, no undefined behaviour", what the reader accepts must hold up: every
 * tensor's bytes lie inside the buffer, at the running padded offset, in file
 * order; every key and tensor can be found by name; the alignment is a power
 * of two.  The seed corpus is llama.cpp's converter output (tests/fixtures/gguf).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "libadapter/format/gguf.h"

#define REQUIRE(c) do { if (!(c)) __builtin_trap(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct lora_gguf *g = NULL;
	struct lora_err err;
	uint64_t off = 0;

	if (lora_gguf_open_mem(data, size, "fuzz", &g, &err) < 0) {
		REQUIRE(!strncmp(err.msg, "'fuzz'", 6) || !strncmp(err.msg, "out of memory", 13));
		return 0;
	}
	REQUIRE(g->alignment && !(g->alignment & (g->alignment - 1)));
	REQUIRE(g->data_start <= size);
	for (size_t i = 0; i < g->n_kv; i++)
		REQUIRE(lora_gguf_find_kv(g, g->kv[i].key) == &g->kv[i]);
	for (size_t i = 0; i < g->n_tensors; i++) {
		const struct lora_gguf_tensor *t = &g->tensors[i];
		uint64_t nb;
		REQUIRE(lora_gguf_find_tensor(g, t->name) == t);
		REQUIRE(t->offset == off);
		REQUIRE(lora_gguf_tensor_nbytes(t->type, t->n_dims, t->ne, &nb, NULL) == 0 && nb == t->nbytes);
		REQUIRE(t->data == data + g->data_start + t->offset);
		REQUIRE(t->nbytes <= size - g->data_start - t->offset);
		if (t->nbytes) {
			volatile uint8_t x = t->data[0];
			x ^= t->data[t->nbytes - 1];
			(void)x;
		}
		off = t->offset + t->nbytes + (g->alignment - t->nbytes % g->alignment) % g->alignment;
	}
	lora_gguf_close(g);
	return 0;
}
