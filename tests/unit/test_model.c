/*
 * test_model.c - model folders: what transformers saved (tests/oracle/st_model.py
 * wrote tests/fixtures/st/model_{sharded,single}/ and their expected.json),
 * and broken folders built here at test time.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "libadapter/base/fsutil.h"
#include "libadapter/format/modeldir.h"
#include "tests/t.h"
#include "tests/unit/t_json.h"
#include "tests/unit/run_lora.h"

static char tmpdir[256];

static void check_against_transformers(const char *rel)
{
	char *dir = t_fixture(rel), *ep = lora_path_join(dir, "expected.json");
	cJSON *e = t_read_json(ep), *t, *sh;
	struct lora_model *m = NULL;
	struct lora_err err = { 0 };
	const struct lora_model_config *c;
	uint64_t shard_bytes = 0;
	int n = 0;

	CHECK(e != NULL);
	if (!e)
		goto out;
	CHECKF(lora_model_open(dir, 1, &m, &err) == 0, "%s", err.msg);
	if (!m)
		goto out;
	c = &m->cfg;
	CHECK(m->has_config);
	CHECKF(!strcmp(c->architecture, cJSON_GetObjectItem(e, "architecture")->valuestring), "%s", c->architecture);
	CHECKF(!strcmp(c->model_type, cJSON_GetObjectItem(e, "model_type")->valuestring), "%s", c->model_type);
	CHECK(c->hidden_size == t_num(e, "hidden_size"));
	CHECK(c->intermediate_size == t_num(e, "intermediate_size"));
	CHECK(c->num_hidden_layers == t_num(e, "num_hidden_layers"));
	CHECK(c->num_attention_heads == t_num(e, "num_attention_heads"));
	CHECK(c->num_key_value_heads == t_num(e, "num_key_value_heads"));
	CHECK(c->head_dim == t_num(e, "head_dim"));
	CHECK(c->vocab_size == t_num(e, "vocab_size"));
	CHECK(c->max_position_embeddings == t_num(e, "max_position_embeddings"));
	CHECK_NEAR(c->rms_norm_eps, t_num(e, "rms_norm_eps"), 0, 1e-12);
	CHECK_NEAR(c->rope_theta, t_num(e, "rope_theta"), 0, 1e-12);
	CHECK(c->tie_word_embeddings == cJSON_IsTrue(cJSON_GetObjectItem(e, "tie_word_embeddings")));
	{
		const char *rt = cJSON_GetObjectItem(e, "rope_type")->valuestring;
		enum lora_rope_type want = !strcmp(rt, "llama3") ? LORA_ROPE_LLAMA3
					  : !strcmp(rt, "linear") ? LORA_ROPE_LINEAR : LORA_ROPE_DEFAULT;
		CHECKF(c->rope_type == want, "rope type %d, transformers says %s", c->rope_type, rt);
		if (cJSON_IsNumber(cJSON_GetObjectItem(e, "rope_factor")))
			CHECK_NEAR(c->rope_factor, t_num(e, "rope_factor"), 0, 1e-12);
	}
	CHECKF(m->n_params == (uint64_t)t_num(e, "parameters"), "%llu parameters, python %.0f",
	       (unsigned long long)m->n_params, t_num(e, "parameters"));
	CHECK(!strcmp(lora_dtype_name(lora_model_dtype(m)), cJSON_GetObjectItem(e, "dtype")->valuestring));

	cJSON_ArrayForEach(sh, cJSON_GetObjectItem(e, "shards")) {
		const char *file = cJSON_GetObjectItem(sh, "file")->valuestring;
		size_t k = 0;
		while (k < m->n_shards && strcmp(m->shard_names[k], file))
			k++;
		CHECKF(k < m->n_shards, "shard %s not opened", file);
		if (k < m->n_shards)
			CHECK(m->shards[k]->n_tensors == (size_t)t_num(sh, "tensors"));
		shard_bytes += (uint64_t)t_num(sh, "bytes");
	}
	CHECK(m->n_shards == (size_t)cJSON_GetArraySize(cJSON_GetObjectItem(e, "shards")));
	CHECK(m->total_bytes == shard_bytes);

	cJSON_ArrayForEach(t, cJSON_GetObjectItem(e, "tensors")) {
		const struct lora_model_tensor *mt = lora_model_find(m, t->string);
		const cJSON *d;
		int i = 0;
		n++;
		CHECKF(mt != NULL, "tensor %s not found", t->string);
		if (!mt)
			continue;
		CHECK(!strcmp(lora_dtype_name(mt->t->dtype), cJSON_GetObjectItem(t, "dtype")->valuestring));
		CHECK(!strcmp(m->shard_names[mt->shard], cJSON_GetObjectItem(t, "shard")->valuestring));
		cJSON_ArrayForEach(d, cJSON_GetObjectItem(t, "shape"))
			CHECK(i < mt->t->ndim && mt->t->shape[i++] == (uint64_t)d->valuedouble);
		CHECK(i == mt->t->ndim);
	}
	CHECK(m->n_tensors == (size_t)n);
	CHECK(lora_model_find(m, "model.layers.99.self_attn.q_proj.weight") == NULL);
out:
	lora_model_close(m);
	cJSON_Delete(e);
	free(ep);
	free(dir);
}

/* `lora inspect --json DIR` on the same folders, against transformers' numbers. */
static void check_inspect(const char *rel)
{
	char *dir = t_fixture(rel), *ep = lora_path_join(dir, "expected.json"), *args = malloc(strlen(dir) + 32);
	cJSON *e = t_read_json(ep), *j = NULL, *sh;
	struct lora_run r;
	double bytes = 0;

	sprintf(args, "inspect --json '%s'", dir);
	CHECK(run_lora(args, &r) == 0);
	CHECKF(r.rc == 0 && r.err && !r.err[0], "%s: exit %d: %s", rel, r.rc, r.err ? r.err : "");
	j = r.out ? cJSON_Parse(r.out) : NULL;
	CHECKF(j != NULL, "%s: not JSON: %s", rel, r.out ? r.out : "");
	if (!j || !e)
		goto out;
	CHECK(!strcmp(cJSON_GetObjectItem(j, "architecture")->valuestring, cJSON_GetObjectItem(e, "architecture")->valuestring));
	CHECK(t_num(j, "layers") == t_num(e, "num_hidden_layers"));
	CHECK(t_num(j, "hidden_size") == t_num(e, "hidden_size"));
	CHECK(t_num(j, "heads") == t_num(e, "num_attention_heads"));
	CHECK(t_num(j, "kv_heads") == t_num(e, "num_key_value_heads"));
	CHECK(t_num(j, "vocab_size") == t_num(e, "vocab_size"));
	CHECK(t_num(j, "parameters") == t_num(e, "parameters"));
	CHECK(!strcmp(cJSON_GetObjectItem(j, "dtype")->valuestring, cJSON_GetObjectItem(e, "dtype")->valuestring));
	cJSON_ArrayForEach(sh, cJSON_GetObjectItem(e, "shards"))
		bytes += t_num(sh, "bytes");
	CHECK(t_num(j, "bytes") == bytes);
	CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(j, "shards")) == cJSON_GetArraySize(cJSON_GetObjectItem(e, "shards")));
out:
	cJSON_Delete(j);
	cJSON_Delete(e);
	run_free(&r);
	free(args);
	free(ep);
	free(dir);
}

TEST(inspect_json_of_model_folders)
{
	check_inspect("st/model_sharded");
	check_inspect("st/model_single");
}

TEST(sharded_bf16_model_saved_by_transformers) { check_against_transformers("st/model_sharded"); }
TEST(single_file_tied_llama3_rope_model_saved_by_transformers) { check_against_transformers("st/model_single"); }

/* ------------------------------------------------------ broken folders */

static void put(const char *dir, const char *name, const char *text)
{
	char *p = lora_path_join(dir, name);
	struct lora_err err;
	if (lora_write_file_atomic(p, text, strlen(text), 0644, &err) < 0)
		fprintf(stderr, "  %s\n", err.msg);
	free(p);
}

/* A shard holding U8 tensors of 4 bytes, named by the NULL-terminated list. */
static void put_shard(const char *dir, const char *name, const char *const *tensors)
{
	struct lora_st_spec s[8];
	struct lora_st_writer w;
	struct lora_err err;
	char *p = lora_path_join(dir, name);
	size_t n = 0;

	for (; tensors[n]; n++)
		s[n] = (struct lora_st_spec){ tensors[n], LORA_DT_U8, 1, { 4 } };
	if (lora_st_writer_open(&w, p, s, n, NULL, NULL, 0, &err) < 0)
		fprintf(stderr, "  %s\n", err.msg);
	for (size_t i = 0; i < n; i++)
		lora_st_writer_write(&w, "abcd", 4, &err);
	lora_st_writer_commit(&w, &err);
	free(p);
}

static char *fresh_dir(const char *name)
{
	char *d = lora_path_join(tmpdir, name);
	mkdir(d, 0755);
	return d;
}

static const char *CONFIG = "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\","
			    "\"hidden_size\":8,\"num_hidden_layers\":1,\"num_attention_heads\":2,\"vocab_size\":4}";

/* Open must fail, with one line that contains `want`. */
static void expect_open_fails(const char *dir, int need_config, const char *want)
{
	struct lora_model *m = (struct lora_model *)1;
	struct lora_err err = { 0 };
	int rc = lora_model_open(dir, need_config, &m, &err);

	CHECKF(rc == -1, "%s: opened", dir);
	CHECK(m == NULL);
	CHECKF(strstr(err.msg, want) != NULL, "message lacks '%s': %s", want, err.msg);
	CHECK(strchr(err.msg, '\n') == NULL);
}

TEST(index_naming_a_missing_shard)
{
	char *d = fresh_dir("missing_shard");
	static const char *const a[] = { "a", NULL };
	put(d, "config.json", CONFIG);
	put_shard(d, "model-00001-of-00002.safetensors", a);
	put(d, "model.safetensors.index.json",
	    "{\"metadata\":{},\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\","
	    "\"b\":\"model-00002-of-00002.safetensors\"}}");
	expect_open_fails(d, 1, "model-00002-of-00002.safetensors");
	free(d);
}

TEST(index_naming_a_tensor_its_shard_lacks)
{
	char *d = fresh_dir("tensor_not_in_shard");
	static const char *const a[] = { "a", NULL }, *const b[] = { "b", NULL };
	put_shard(d, "s1.safetensors", a);
	put_shard(d, "s2.safetensors", b);
	put(d, "model.safetensors.index.json", "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s1.safetensors\",\"c\":\"s2.safetensors\"}}");
	expect_open_fails(d, 0, "'b'");
	free(d);
}

TEST(tensor_in_two_shards)
{
	char *d = fresh_dir("dup_across_shards");
	static const char *const a[] = { "a", "x", NULL }, *const b[] = { "b", "x", NULL };
	put_shard(d, "s1.safetensors", a);
	put_shard(d, "s2.safetensors", b);
	put(d, "model.safetensors.index.json", "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\",\"x\":\"s1.safetensors\"}}");
	expect_open_fails(d, 0, "'x'");
	free(d);
}

TEST(index_shard_names_cannot_leave_the_folder)
{
	char *d = fresh_dir("escape"), *outside = lora_path_join(tmpdir, "outside.safetensors");
	static const char *const a[] = { "a", NULL };
	put_shard(tmpdir, "outside.safetensors", a);
	put(d, "model.safetensors.index.json", "{\"weight_map\":{\"a\":\"../outside.safetensors\"}}");
	expect_open_fails(d, 0, "../outside.safetensors");
	put(d, "model.safetensors.index.json", "{\"weight_map\":{\"a\":\"/etc/passwd\"}}");
	expect_open_fails(d, 0, "/etc/passwd");
	free(outside);
	free(d);
}

TEST(index_not_json_or_without_weight_map)
{
	char *d = fresh_dir("bad_index");
	put(d, "model.safetensors.index.json", "{\"weight_map\":");
	expect_open_fails(d, 0, "model.safetensors.index.json");
	put(d, "model.safetensors.index.json", "{\"metadata\":{}}");
	expect_open_fails(d, 0, "weight_map");
	put(d, "model.safetensors.index.json", "{\"weight_map\":{\"a\":7}}");
	expect_open_fails(d, 0, "'a'");
	free(d);
}

TEST(pickle_weights_refused_saying_why)
{
	char *d = fresh_dir("pickle");
	put(d, "config.json", CONFIG);
	put(d, "pytorch_model.bin", "PK\003\004 not really a zip");
	expect_open_fails(d, 1, "pickle");
	expect_open_fails(d, 1, "pytorch_model.bin");
	expect_open_fails(d, 1, "arbitrary code");
	free(d);
}

TEST(empty_folder_and_missing_config)
{
	char *d = fresh_dir("empty");
	static const char *const a[] = { "a", NULL };
	struct lora_model *m = NULL;
	struct lora_err err = { 0 };

	expect_open_fails(d, 0, "model.safetensors");
	put_shard(d, "model.safetensors", a);
	expect_open_fails(d, 1, "config.json");
	CHECKF(lora_model_open(d, 0, &m, &err) == 0, "%s", err.msg);  /* config optional */
	if (m) {
		CHECK(!m->has_config && m->n_tensors == 1 && m->n_params == 4);
		lora_model_close(m);
	}
	expect_open_fails("/nonexistent/model", 0, "/nonexistent/model");
	free(d);
}

TEST(bad_shard_names_its_file)
{
	char *d = fresh_dir("bad_shard");
	put(d, "config.json", CONFIG);
	put(d, "model.safetensors", "\x10\0\0\0\0\0\0\0{\"a\":1}");
	expect_open_fails(d, 1, "model.safetensors");
	free(d);
}

TEST(config_not_json_or_wrong_types)
{
	char *d = fresh_dir("bad_config");
	static const char *const a[] = { "a", NULL };
	struct lora_model_config c;
	struct lora_err err = { 0 };

	put_shard(d, "model.safetensors", a);
	put(d, "config.json", "{\"hidden_size\": ");
	expect_open_fails(d, 1, "config.json");
	put(d, "config.json", "[]");
	expect_open_fails(d, 1, "config.json");
	put(d, "config.json", "{\"hidden_size\": \"big\"}");
	expect_open_fails(d, 1, "hidden_size");
	/* defaults where fields are absent */
	CHECKF(lora_model_config_parse(CONFIG, strlen(CONFIG), "c", &c, &err) == 0, "%s", err.msg);
	CHECK(c.num_key_value_heads == 2 && c.head_dim == 4);
	CHECK_NEAR(c.rms_norm_eps, 1e-6, 0, 1e-12);
	CHECK_NEAR(c.rope_theta, 10000.0, 0, 0);
	CHECK(c.bos_token_id == -1 && c.eos_token_id == -1);
	free(d);
}

int main(void)
{
	const char *base = getenv("TMPDIR");
	struct lora_err err;

	snprintf(tmpdir, sizeof(tmpdir), "%s/lora-model.XXXXXX", base && *base ? base : "/tmp");
	if (!mkdtemp(tmpdir))
		return 1;
	RUN(sharded_bf16_model_saved_by_transformers);
	RUN(single_file_tied_llama3_rope_model_saved_by_transformers);
	RUN(inspect_json_of_model_folders);
	RUN(index_naming_a_missing_shard);
	RUN(index_naming_a_tensor_its_shard_lacks);
	RUN(tensor_in_two_shards);
	RUN(index_shard_names_cannot_leave_the_folder);
	RUN(index_not_json_or_without_weight_map);
	RUN(pickle_weights_refused_saying_why);
	RUN(empty_folder_and_missing_config);
	RUN(bad_shard_names_its_file);
	RUN(config_not_json_or_wrong_types);
	lora_rm_rf(tmpdir, &err);
	return t_done();
}
