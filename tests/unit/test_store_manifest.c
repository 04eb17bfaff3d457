/* test_store_manifest.c - manifest.json: what is accepted, what is refused and why. */
#include "tests/t.h"

#include "libadapter/store/manifest.h"
#include "libadapter/store/package.h"

static const char *const SHA = "9c18a244d3aea2f6ddd3d6fbed77f6403c3ed4df143296aad60d874bba1726d2";

/* A valid manifest with one substitution: "@FILES@" etc. in the template. */
static char *valid(void)
{
	static char buf[4096];
	snprintf(buf, sizeof(buf),
		 "{\n  \"lora_package\": 1, \"name\": \"sql\", \"tag\": \"v1\", \"description\": \"d\",\n"
		 "  \"created\": \"2025-01-01T00:00:00Z\",\n"
		 "  \"base_model\": {\"name\": \"tiny\", \"fingerprint\": \"sha256:%s\"},\n"
		 "  \"lora\": {\"r\": 4}, \"provenance\": {\"steps\": 10},\n"
		 "  \"files\": [{\"name\": \"adapter_config.json\", \"size\": 305, \"sha256\": \"%s\"},\n"
		 "            {\"name\": \"adapter_model.safetensors\", \"size\": 4608, \"sha256\": \"%s\"}],\n"
		 "  \"signer\": {\"identity\": \"a@b\", \"key_fingerprint\": \"SHA256:abc\"}\n}\n",
		 SHA, SHA, SHA);
	return buf;
}

/* valid() with the first occurrence of `from` replaced by `to` */
static char *subst(const char *from, const char *to)
{
	static char out[8192];
	const char *v = valid(), *p = strstr(v, from);
	if (!p)
		abort();
	snprintf(out, sizeof(out), "%.*s%s%s", (int)(p - v), v, to, p + strlen(from));
	return out;
}

TEST(valid_manifest)
{
	struct lora_manifest m;
	struct lora_err err = { 0 };
	const char *v = valid();

	CHECKF(lora_manifest_parse(v, strlen(v), &m, &err) == 0, "%s", err.msg);
	CHECK(!strcmp(m.name, "sql") && !strcmp(m.tag, "v1") && !strcmp(m.description, "d"));
	CHECK(!strcmp(m.base_name, "tiny") && !strncmp(m.base_fingerprint, "sha256:", 7));
	CHECK(m.n_files == 2 && m.files[1].size == 4608 && !strcmp(m.files[1].sha256, SHA));
	CHECK(lora_manifest_find(&m, "adapter_config.json") == &m.files[0]);
	CHECK(!strcmp(m.signer_identity, "a@b") && !strcmp(m.signer_fp, "SHA256:abc"));
	CHECK(m.lora && m.provenance);
	lora_manifest_free(&m);
	/* tag defaults to latest; signer and description may be null */
	const char *t = subst("\"tag\": \"v1\", ", "");
	CHECK(lora_manifest_parse(t, strlen(t), &m, &err) == 0 && !strcmp(m.tag, "latest"));
	lora_manifest_free(&m);
	t = subst("\"signer\": {\"identity\": \"a@b\", \"key_fingerprint\": \"SHA256:abc\"}", "\"signer\": null");
	CHECK(lora_manifest_parse(t, strlen(t), &m, &err) == 0 && !m.signer_identity);
	lora_manifest_free(&m);
}

TEST(refused_manifests)
{
	static const char *const cases[][3] = {
		{ "\"lora_package\": 1", "\"lora_package\": 2", "lora_package" },
		{ "\"name\": \"sql\"", "\"name\": \"../sql\"", "name" },
		{ "\"name\": \"sql\"", "\"name\": \"sha256\"", "name" },
		{ "\"name\": \"sql\"", "\"name\": 5", "name" },
		{ "\"tag\": \"v1\"", "\"tag\": \"v 1\"", "tag" },
		{ "\"created\": \"2025-01-01T00:00:00Z\",", "", "created" },
		{ "\"name\": \"adapter_config.json\"", "\"name\": \"../x\"", "not allowed" },
		{ "\"name\": \"adapter_config.json\"", "\"name\": \"manifest.json\"", "not allowed" },
		{ "\"name\": \"adapter_config.json\"", "\"name\": \"README.md\"", "must list" },
		{ "\"name\": \"adapter_config.json\"", "\"name\": \"adapter_model.safetensors\"", "twice" },
		{ "\"size\": 305", "\"size\": -1", "size" },
		{ "\"size\": 305", "\"size\": 30.5", "size" },
		{ "\"size\": 305", "\"size\": 1e300", "size" },
		{ "\"size\": 305", "\"size\": \"305\"", "size" },
		{ "\"sha256\": \"9c18", "\"sha256\": \"9C18", "hex" },
		{ "\"fingerprint\": \"sha256:", "\"fingerprint\": \"md5:", "fingerprint" },
		{ "\"key_fingerprint\": \"SHA256:abc\"", "\"key_fingerprint\": \"MD5:abc\"", "signer" },
		{ "\"lora\": {\"r\": 4}", "\"lora\": [4]", "lora" },
		{ "\"provenance\": {\"steps\": 10}", "\"provenance\": \"x\"", "provenance" },
		{ "\"description\": \"d\"", "\"description\": \"d\", \"name\": \"other\"", "twice" },
		{ "\"provenance\": {\"steps\": 10}", "\"provenance\": {\"a\": {\"k\": 1, \"k\": 2}}", "twice" },
		{ "\"description\": \"d\"", "\"description\": \"\xc3\x28\"", "UTF-8" },
		{ "\"lora_package\": 1", "\"lora_package\": 1,,", "JSON" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct lora_manifest m;
		struct lora_err err = { 0 };
		const char *t = subst(cases[i][0], cases[i][1]);
		int rc = lora_manifest_parse(t, strlen(t), &m, &err);
		CHECKF(rc < 0, "case %zu accepted", i);
		CHECKF(err.code == LORA_EVERIFY && strstr(err.msg, cases[i][2]), "case %zu: %s", i, err.msg);
		lora_manifest_free(&m);
	}
	struct lora_manifest m;
	struct lora_err err = { 0 };
	const char *v = valid();
	char *trail = malloc(strlen(v) + 4);
	sprintf(trail, "%sxx", v);
	CHECK(lora_manifest_parse(trail, strlen(trail), &m, &err) < 0 && strstr(err.msg, "after"));
	lora_manifest_free(&m);
	CHECK(lora_manifest_parse("[1]", 3, &m, &err) < 0);
	lora_manifest_free(&m);
	CHECK(lora_manifest_parse("", 0, &m, &err) < 0);
	lora_manifest_free(&m);
	/* a NUL inside the text */
	char nul[] = "{\"a\":\"x\0y\"}";
	CHECK(lora_manifest_parse(nul, sizeof(nul) - 1, &m, &err) < 0);
	lora_manifest_free(&m);
	free(trail);
}

TEST(build_then_parse)
{
	struct lora_manifest_file f[3] = {
		{ "adapter_config.json", 10, "" }, { "adapter_model.safetensors", 5000000000ull, "" }, { "README.md", 0, "" },
	};
	struct lora_manifest_spec s = { 0 };
	struct lora_manifest m;
	struct lora_err err = { 0 };
	cJSON *prov = cJSON_Parse("{\"loss\": 1.25, \"data\": \"sha256:x\"}");
	char *text;

	for (int i = 0; i < 3; i++)
		strcpy(f[i].sha256, SHA);
	s.name = "n";
	s.tag = "t";
	s.created = "2025-02-03T04:05:06Z";
	s.description = "quote \" and \xc3\xa9";
	s.provenance = prov;
	s.files = f;
	s.n_files = 3;
	s.signer_identity = "me@x";
	s.signer_fp = "SHA256:zz";
	text = lora_manifest_build(&s, &err);
	CHECK(text && text[strlen(text) - 1] == '\n');
	CHECKF(text && lora_manifest_parse(text, strlen(text), &m, &err) == 0, "%s", err.msg);
	CHECK(m.n_files == 3 && m.files[1].size == 5000000000ull && !strcmp(m.files[2].name, "README.md"));
	CHECK(!strcmp(m.description, s.description) && !strcmp(m.created, s.created));
	CHECK(!m.base_name && !m.base_fingerprint);
	CHECK(lora_pkg_mtime(m.created) == 1738555506);
	lora_manifest_free(&m);
	free(text);
	cJSON_Delete(prov);
}

TEST(names)
{
	CHECK(lora_name_ok("sql") && lora_name_ok("a.b_c-9") && lora_name_ok("9x"));
	CHECK(!lora_name_ok("") && !lora_name_ok(".x") && !lora_name_ok("-x") && !lora_name_ok("a/b") &&
	      !lora_name_ok("a:b") && !lora_name_ok("sha256"));
	CHECK(lora_tag_ok("latest") && lora_tag_ok("_x") && lora_tag_ok("v1.2"));
	CHECK(!lora_tag_ok("") && !lora_tag_ok(".x") && !lora_tag_ok("a b"));
	CHECK(lora_pkg_name_ok("README.md") && !lora_pkg_name_ok(".hidden") && !lora_pkg_name_ok("a/b") &&
	      !lora_pkg_name_ok(".."));
}

int main(void)
{
	RUN(valid_manifest);
	RUN(refused_manifests);
	RUN(build_then_parse);
	RUN(names);
	return t_done();
}
