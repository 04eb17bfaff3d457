/*
 * fake_plugin.c - a liblora_cuda.so of another ABI version (FAKE_VERSION),
 * for the loader's refusal test (tests/sh/cuda_plugin.sh).  Its table has
 * only the header: a loader that called anything in it would crash.
 */
#include <stddef.h>

struct fake_table {
	int version;
	unsigned size;
	const char *build;
};

static const struct fake_table table = {FAKE_VERSION, sizeof(struct fake_table), "fake"};

const void *lora_cuda_plugin(int abi_version)
{
	(void)abi_version;
	return &table;
}
