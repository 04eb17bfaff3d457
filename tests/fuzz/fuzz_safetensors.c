/*
 * fuzz_safetensors.c - libFuzzer target for the safetensors header parser.
 *
 *   make fuzz FUZZ_SECONDS=60
 *
 * Each input is a whole file, parsed from memory.  Beyond "no crash, no
 * leak, no undefined behaviour", whatever the parser accepts must hold up:
 * every tensor's bytes lie inside the buffer, tile it in order, and can be
 * found by name; and lora's writer, given the parsed tensors and metadata,
 * builds a header that the parser reads back to the same tensors.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "libadapter/format/safetensors.h"

#define REQUIRE(c) do { if (!(c)) __builtin_trap(); } while (0)

static void round_trip(const struct lora_st *st, const uint8_t *data)
{
	struct lora_st_spec *specs = calloc(st->n_tensors + 1, sizeof(*specs));
	unsigned char *hdr = NULL, *buf;
	size_t hl;
	uint64_t dl;
	struct lora_st *back = NULL;
	struct lora_err err;
	uint64_t data_len = st->size - st->data_start;

	REQUIRE(specs);
	for (size_t i = 0; i < st->n_tensors; i++) {
		specs[i].name = st->tensors[i].name;
		specs[i].dtype = st->tensors[i].dtype;
		specs[i].ndim = st->tensors[i].ndim;
		memcpy(specs[i].shape, st->tensors[i].shape, sizeof(specs[i].shape));
	}
	if (lora_st_build_header(specs, st->n_tensors, (const char *const *)st->meta_keys,
				 (const char *const *)st->meta_vals, st->n_meta, &hdr, &hl, &dl, &err) < 0) {
		free(specs);
		return;  /* e.g. a header that would pass 100 MB once rewritten */
	}
	REQUIRE(dl == data_len);
	REQUIRE(hl % 8 == 0);
	buf = malloc(hl + dl + 1);
	REQUIRE(buf);
	memcpy(buf, hdr, hl);
	memcpy(buf + hl, data + st->data_start, dl);
	REQUIRE(lora_st_open_mem(buf, hl + dl, "rewritten", &back, &err) == 0);
	REQUIRE(back->n_tensors == st->n_tensors && back->n_meta == st->n_meta);
	for (size_t i = 0; i < st->n_tensors; i++) {
		const struct lora_st_tensor *a = &st->tensors[i], *b = &back->tensors[i];
		REQUIRE(!strcmp(a->name, b->name) && a->dtype == b->dtype && a->ndim == b->ndim);
		REQUIRE(a->begin == b->begin && a->end == b->end);
		REQUIRE(!memcmp(a->shape, b->shape, sizeof(a->shape)));
	}
	for (size_t i = 0; i < st->n_meta; i++)
		REQUIRE(!strcmp(lora_st_meta(back, st->meta_keys[i]), st->meta_vals[i]));
	lora_st_close(back);
	free(buf);
	free(hdr);
	free(specs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct lora_st *st = NULL;
	struct lora_err err;
	uint64_t pos = 0;

	if (lora_st_open_mem(data, size, "fuzz", &st, &err) < 0) {
		REQUIRE(st == NULL && err.msg[0]);
		return 0;
	}
	REQUIRE(st->data_start <= size);
	for (size_t i = 0; i < st->n_tensors; i++) {
		const struct lora_st_tensor *t = &st->tensors[i];
		REQUIRE(t->begin == pos && t->end >= t->begin);
		REQUIRE(t->data == data + st->data_start + t->begin);
		REQUIRE(t->data + (t->end - t->begin) <= data + size);
		REQUIRE(lora_st_find(st, t->name) == t);
		pos = t->end;
		if (lora_dtype_is_float(t->dtype)) {
			float *f = lora_st_to_f32(t, &err);  /* reads every element */
			REQUIRE(f);
			free(f);
		}
	}
	REQUIRE(st->data_start + pos == size);
	round_trip(st, data);
	lora_st_close(st);
	return 0;
}
