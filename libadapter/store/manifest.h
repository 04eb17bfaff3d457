/*
 * manifest.h - manifest.json, the signed description of an adapter package
 * (lora-package(5)).  One JSON object, UTF-8, no duplicate keys anywhere:
 *
 *   {
 *     "lora_package": 1,                           format version (required)
 *     "name": "sql", "tag": "v1",                  NAME and TAG (tag optional: "latest")
 *     "description": "..." | null,
 *     "created": "2025-01-31T12:00:00Z",           RFC 3339 UTC (required)
 *     "base_model": {"name": "..." | null,
 *                    "fingerprint": "sha256:<64 hex>" | null},
 *     "lora": {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_rslora": false,
 *              "target_modules": [...] | "regex", "modules": 28, "params": 123456,
 *              "dtype": "F32"},                     informational (from adapter_config.json)
 *     "provenance": {...},                          any object (trainer settings, data digest, loss)
 *     "files": [{"name": "adapter_config.json", "size": 612, "sha256": "<64 hex>"}, ...],
 *     "signer": {"identity": "alice@example.com", "key_fingerprint": "SHA256:..."} | null
 *   }
 *
 * "files" lists every file of the package except manifest.json and
 * manifest.json.sig, in package order; it must include adapter_config.json
 * and adapter_model.safetensors.  File names are 1 to 100 characters of
 * [A-Za-z0-9._-] not starting with '.'.  Sizes are integers below 2^53.
 */
#ifndef LORA_MANIFEST_H
#define LORA_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "libadapter/base/err.h"

#define LORA_MANIFEST_MAX (1u << 20)   /* bytes of manifest.json we read */
#define LORA_MANIFEST_MAX_FILES 62     /* + manifest.json + manifest.json.sig = 64 entries */
#define LORA_PKG_MANIFEST "manifest.json"
#define LORA_PKG_SIG "manifest.json.sig"
#define LORA_PKG_CONFIG "adapter_config.json"
#define LORA_PKG_WEIGHTS "adapter_model.safetensors"

struct lora_manifest_file {
	const char *name;             /* points into the parsed JSON (or the caller's string) */
	uint64_t size;
	char sha256[65];              /* lowercase hex */
};

struct lora_manifest {
	cJSON *root;
	const char *name, *tag;       /* tag "latest" when absent */
	const char *description;      /* may be NULL */
	const char *created;
	const char *base_name;        /* may be NULL */
	const char *base_fingerprint; /* may be NULL */
	const cJSON *lora;            /* may be NULL */
	const cJSON *provenance;      /* may be NULL */
	size_t n_files;
	struct lora_manifest_file *files;
	const char *signer_identity;  /* NULL when the package is unsigned */
	const char *signer_fp;
};

/*
 * Parse and validate manifest.json text (any bytes: it comes from a
 * package).  Errors carry LORA_EVERIFY and say what is wrong.
 */
int lora_manifest_parse(const char *json, size_t len, struct lora_manifest *m, struct lora_err *err);
void lora_manifest_free(struct lora_manifest *m);
const struct lora_manifest_file *lora_manifest_find(const struct lora_manifest *m, const char *name);

/* Is `name` an acceptable package file name (see above)? */
int lora_pkg_name_ok(const char *name);
/* NAME and TAG syntax of store.h. */
int lora_name_ok(const char *name);
int lora_tag_ok(const char *tag);

struct lora_manifest_spec {
	const char *name, *tag;
	const char *description;      /* may be NULL */
	const char *created;          /* NULL: now (the program passes $SOURCE_DATE_EPOCH's time) */
	const char *base_name;        /* may be NULL */
	const char *base_fingerprint; /* may be NULL */
	const cJSON *lora;            /* copied; may be NULL */
	const cJSON *provenance;      /* copied; may be NULL */
	const struct lora_manifest_file *files;
	size_t n_files;
	const char *signer_identity;  /* NULL: unsigned */
	const char *signer_fp;
};
/* The manifest.json text (malloc'd, ends with a newline). */
char *lora_manifest_build(const struct lora_manifest_spec *s, struct lora_err *err);

/* JSON text with 2-space indentation (arrays of scalars on one line), no final newline; malloc'd. */
char *lora_json_pretty(const cJSON *j);

/* "YYYY-MM-DDTHH:MM:SSZ" for t. */
void lora_rfc3339(int64_t t, char out[32]);

#endif
