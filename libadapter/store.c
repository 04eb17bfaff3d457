/* store.c - the OCI-layout adapter store (see store.h).  Stub: being written. */
#include "store.h"

#include <string.h>

int lora_adapter_open(const char *store_dir, const char *spec, struct lora_adapter_src *out,
		      struct lora_err *err)
{
	(void)store_dir;
	memset(out, 0, sizeof(*out));
	return lora_errf(err, "cannot open adapter '%s': the store is not implemented yet", spec);
}

void lora_adapter_close(struct lora_adapter_src *a)
{
	(void)a;
}

int lora_store_add_peft_dir(const char *store_dir, const char *peft_dir, const char *ref,
			    const struct lora_import_opts *opts, char digest_out[72], struct lora_err *err)
{
	(void)store_dir; (void)ref; (void)opts; (void)digest_out;
	return lora_errf(err, "cannot import '%s': the store is not implemented yet", peft_dir);
}

int lora_store_check_signing_key(const char *store_dir, const char *key_path, struct lora_err *err)
{
	(void)store_dir; (void)key_path;
	return lora_errf(err, "signing is not implemented yet");
}

int lora_store_describe(const char *store_dir, const char *spec, cJSON **out_json,
			struct lora_err *err)
{
	(void)store_dir; (void)out_json;
	return lora_errf(err, "cannot describe '%s': the store is not implemented yet", spec);
}
