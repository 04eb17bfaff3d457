#define _GNU_SOURCE
/*
 * test_store_api.c - the store as other parts of lora use it: lora_adapter_open
 * on a REF, a folder and a .lora file; lora_store_add_peft_dir with options;
 * lora_store_describe; REF parsing.
 */
#include "tests/t.h"

#include <sys/stat.h>
#include <unistd.h>

#include "libadapter/base/fsutil.h"
#include "libadapter/store/store.h"

static char store[64], work[64];
static const char *FP = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

static char *adapter_dir(void)
{
	return t_fixture("store/roundtrip/adapter");
}

TEST(setup_store)
{
	struct lora_err err = { 0 };
	char *line = NULL, *ad = adapter_dir(), digest[72];
	struct lora_import_opts o = { 0 };
	char extra[128];

	CHECK(lora_store_check_signing_key(store, NULL, &err) < 0 && strstr(err.msg, "lora keygen"));
	CHECKF(lora_store_keygen(store, "api@example.com", 0, &line, &err) == 0, "%s", err.msg);
	CHECK(line && !strncmp(line, "ssh-ed25519 ", 12));
	CHECK(lora_store_check_signing_key(store, NULL, &err) == 0);
	snprintf(extra, sizeof(extra), "%s/training_log.jsonl", work);
	lora_write_file_atomic(extra, "{\"step\": 1}\n", 12, 0644, &err);
	const char *extras[] = { extra };
	o.description = "api test";
	o.base_fingerprint = FP;
	o.provenance_json = "{\"trainer\": \"test\", \"final_loss\": 1.5}";
	o.extra_files = extras;
	o.n_extra = 1;
	CHECKF(lora_store_add_peft_dir(store, ad, "api:v1", &o, digest, &err) == 0, "%s", err.msg);
	CHECK(!strncmp(digest, "sha256:", 7) && strlen(digest) == 71);
	o.provenance_json = "[1, 2]";
	CHECK(lora_store_add_peft_dir(store, ad, "api:v2", &o, digest, &err) < 0 && strstr(err.msg, "provenance"));
	o.provenance_json = NULL;
	o.base_fingerprint = "sha256:xyz";
	CHECK(lora_store_add_peft_dir(store, ad, "api:v2", &o, digest, &err) < 0);
	CHECK(lora_store_add_peft_dir(store, ad, "sha256:12345678", NULL, digest, &err) < 0 &&
	      err.code == LORA_EUSAGE);
	free(line);
	free(ad);
}

TEST(open_by_ref_folder_and_file)
{
	struct lora_adapter_src a;
	struct lora_err err = { 0 };
	char *ad = adapter_dir(), pkg[128], digest[72];

	CHECKF(lora_adapter_open(store, NULL, "api:v1", &a, &err) == 0, "%s", err.msg);
	CHECK(a.peft && a.peft->n_modules == 6 && a.peft->cfg.r == 4);
	CHECK(!strcmp(a.ref, "api:v1") && !strncmp(a.digest, "sha256:", 7));
	CHECK(a.base_name && !strcmp(a.base_name, "oracle/tiny-llama-store"));
	CHECK(a.base_fingerprint && !strcmp(a.base_fingerprint, FP));
	CHECK(a.tmpdir == NULL);
	CHECK(lora_store_resolve(store, "api:v1", digest, NULL, &err) == 0 && !strcmp(digest, a.digest));
	lora_adapter_close(&a);
	lora_adapter_close(&a);  /* twice is fine */

	CHECKF(lora_adapter_open(store, NULL, ad, &a, &err) == 0, "%s", err.msg);
	CHECK(a.peft && a.digest[0] == 0 && !a.base_fingerprint && !strcmp(a.ref, ad));
	lora_adapter_close(&a);

	snprintf(pkg, sizeof(pkg), "%s/api.lora", work);
	CHECK(lora_store_export_lora(store, "api:v1", pkg, &err) == 0);
	CHECKF(lora_adapter_open(store, NULL, pkg, &a, &err) == 0, "%s", err.msg);
	CHECK(a.peft && a.peft->n_modules == 6 && a.tmpdir && lora_is_dir(a.tmpdir));
	CHECK(a.base_fingerprint && !strcmp(a.base_fingerprint, FP));
	char *td = strdup(a.tmpdir);
	lora_adapter_close(&a);
	CHECK(!lora_is_dir(td));
	free(td);

	/* prefixes of the digest work; unknown names say so */
	char pre[20];
	snprintf(pre, sizeof(pre), "%.15s", digest);
	CHECKF(lora_adapter_open(store, NULL, pre, &a, &err) == 0, "%s", err.msg);
	lora_adapter_close(&a);
	CHECK(lora_adapter_open(store, NULL, "nope:v9", &a, &err) < 0 && strstr(err.msg, "no adapter 'nope:v9'"));
	CHECK(lora_adapter_open(store, NULL, "./no/such/dir", &a, &err) < 0 && strstr(err.msg, "no adapter folder"));
	CHECK(a.peft == NULL);
	free(ad);
}

TEST(describe)
{
	cJSON *d = NULL, *f;
	struct lora_err err = { 0 };
	char pkg[128];

	CHECKF(lora_store_describe(store, "api:v1", &d, &err) == 0, "%s", err.msg);
	CHECK(cJSON_IsTrue(cJSON_GetObjectItem(d, "verified")));
	CHECK(cJSON_IsNull(cJSON_GetObjectItem(d, "verify_error")));
	f = cJSON_GetObjectItem(d, "manifest");
	CHECK(f && !strcmp(cJSON_GetObjectItem(f, "description")->valuestring, "api test"));
	CHECK(cJSON_GetObjectItem(cJSON_GetObjectItem(f, "provenance"), "final_loss")->valuedouble == 1.5);
	f = cJSON_GetObjectItem(d, "signer");
	CHECK(f && !strcmp(cJSON_GetObjectItem(f, "identity")->valuestring, "api@example.com"));
	CHECK(cJSON_IsTrue(cJSON_GetObjectItem(f, "trusted")));
	f = cJSON_GetObjectItem(d, "files");
	/* manifest.json, its signature, config, weights, peft's README.md and the extra log */
	CHECKF(cJSON_GetArraySize(f) == 6, "%d files", cJSON_GetArraySize(f));
	int log = 0;
	cJSON *x;
	cJSON_ArrayForEach(x, f)
		log |= !strcmp(cJSON_GetObjectItem(x, "name")->valuestring, "training_log.jsonl");
	CHECK(log);
	cJSON_Delete(d);

	/* a tampered package: described, not verified, the failed check named */
	snprintf(pkg, sizeof(pkg), "%s/api.lora", work);
	char *text;
	size_t n;
	CHECK(lora_read_file(pkg, 1 << 20, &text, &n, &err) == 0);
	char *pos = memmem(text, n, "api test", 8);
	CHECK(pos != NULL);
	if (pos)
		pos[0] = 'A';
	snprintf(pkg, sizeof(pkg), "%s/tampered.lora", work);
	lora_write_file_atomic(pkg, text, n, 0644, &err);
	free(text);
	CHECK(lora_store_describe(store, pkg, &d, &err) == 0);
	CHECK(d && cJSON_IsFalse(cJSON_GetObjectItem(d, "verified")));
	x = d ? cJSON_GetObjectItem(d, "verify_error") : NULL;
	CHECKF(cJSON_IsString(x) && strstr(x->valuestring, "signature check failed"), "%s",
	       cJSON_IsString(x) ? x->valuestring : "(none)");
	cJSON_Delete(d);
	CHECK(lora_store_describe(store, "missing:tag", &d, &err) < 0 && d == NULL);
}

TEST(refs)
{
	struct lora_ref r;
	struct lora_err err = { 0 };

	CHECK(lora_ref_parse("sql", &r, &err) == 0 && !strcmp(r.name, "sql") && !strcmp(r.tag, "latest"));
	CHECK(lora_ref_parse("sql:v2", &r, &err) == 0 && !strcmp(r.tag, "v2") && !r.is_digest);
	CHECK(lora_ref_parse("sha256:abcdef01", &r, &err) == 0 && r.is_digest);
	static const char *const bad[] = { "", ":v1", "sql:", "a:b:c", "sha256:abc", "sha256:ABCDEF01",
					   "sha256:abcdefgh", "x/y", "-x", "sha256" };
	for (int i = 0; i < 10; i++)
		CHECKF(lora_ref_parse(bad[i], &r, &err) < 0 && err.code == LORA_EUSAGE, "accepted '%s'", bad[i]);
}

int main(void)
{
	snprintf(store, sizeof(store), "/tmp/lora-t-api.XXXXXX");
	snprintf(work, sizeof(work), "/tmp/lora-t-apiw.XXXXXX");
	if (!mkdtemp(store) || !mkdtemp(work))
		return 1;
	RUN(setup_store);
	RUN(open_by_ref_folder_and_file);
	RUN(describe);
	RUN(refs);
	lora_rm_rf(store, NULL);
	lora_rm_rf(work, NULL);
	return t_done();
}
