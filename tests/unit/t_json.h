/*
 * t_json.h - reading the JSON fixtures the oracle scripts wrote (tests only).
 */
#ifndef LORA_T_JSON_H
#define LORA_T_JSON_H

#include <stdio.h>
#include <stdlib.h>

#include <cjson/cJSON.h>

#include "libadapter/base/fsutil.h"
#include "tests/t.h"

/* Parse a JSON file (NULL, with the reason on stderr, when it cannot be read). */
static inline cJSON *t_read_json(const char *path)
{
	struct lora_err err;
	char *text;
	size_t len;
	cJSON *j;

	if (lora_read_file(path, 1 << 24, &text, &len, &err) < 0) {
		fprintf(stderr, "  %s\n", err.msg);
		return NULL;
	}
	j = cJSON_ParseWithLength(text, len);
	free(text);
	return j;
}

/* The same for a path under the fixtures folder. */
static inline cJSON *t_read_json_fixture(const char *rel)
{
	char *path = t_fixture(rel);
	cJSON *j = t_read_json(path);

	free(path);
	return j;
}

/* A number member, or -12345 (never a real expected value) when absent. */
static inline double t_num(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsNumber(v) ? v->valuedouble : -12345;
}

#endif
