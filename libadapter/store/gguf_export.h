/*
 * gguf_export.h - stored adapters to and from llama.cpp / Ollama.
 *
 * The GGUF mapping itself is format/gguf_lora.h; this joins it to the store:
 * resolve a REF, check the base model against the fingerprint the manifest
 * recorded (when it did), write the file or folder atomically, and bring a
 * GGUF adapter back in as a signed package.
 *
 * An Ollama folder holds adapter.gguf and a Modelfile:
 *     FROM <base>
 *     ADAPTER ./adapter.gguf
 * (Ollama's Modelfile: one INSTRUCTION and its argument a line, FROM
 * required, ADAPTER a path relative to the Modelfile), for
 * `ollama create NAME -f DIR/Modelfile`.
 */
#ifndef LORA_GGUF_EXPORT_H
#define LORA_GGUF_EXPORT_H

#include "libadapter/base/err.h"
#include "libadapter/store/store.h"

/* REF as a llama.cpp LoRA GGUF file; base_dir is the base model folder (config and tensors). */
int lora_store_export_gguf(const char *store_dir, const char *tmp_dir, const char *spec, const char *base_dir,
			   const char *out_path, struct lora_err *err);

/*
 * REF as an Ollama folder out_dir (must not exist or be empty): adapter.gguf
 * and a Modelfile whose FROM is `from` (an Ollama model name such as
 * "llama3.2:1b", or a path), or the absolute path of base_dir when NULL.
 */
int lora_store_export_ollama(const char *store_dir, const char *tmp_dir, const char *spec, const char *base_dir,
			     const char *from, const char *out_dir, struct lora_err *err);

/*
 * Import a llama.cpp LoRA GGUF file as ref (NAME[:TAG]), signed like a
 * folder import (opts), with the base fingerprint of base_dir.  work_dir is
 * an existing folder for the intermediate PEFT folder (made and removed
 * inside it).
 */
int lora_store_import_gguf(const char *store_dir, const char *gguf_path, const char *base_dir, const char *ref,
			   const struct lora_import_opts *opts, const char *work_dir, char digest_out[72],
			   struct lora_err *err);

/* Does the file at path begin with the GGUF magic? */
int lora_is_gguf_file(const char *path);

#endif
