/*
 * test_tok_oracle.c - our tokenizer against Hugging Face `tokenizers`.
 *
 * tests/oracle/tok_fixtures.py wrote, for each fixture tokenizer, the ids
 * `tokenizers` gives for every corpus line (with and without special tokens)
 * and its decode of them.  Ids must be equal exactly; decode must give the
 * same text, and the text back where `tokenizers` gives it back.
 */
#include <cjson/cJSON.h>

#include "libadapter/base/fsutil.h"
#include "tests/t.h"
#include "train/tokenizer.h"

static int ids_equal(const struct lora_tokens *t, const cJSON *arr)
{
	const cJSON *e;
	size_t i = 0;
	if ((size_t)cJSON_GetArraySize(arr) != t->n)
		return 0;
	cJSON_ArrayForEach(e, arr)
		if (!cJSON_IsNumber(e) || (int32_t)e->valuedouble != t->ids[i++])
			return 0;
	return 1;
}

static void print_ids(const char *what, const struct lora_tokens *t)
{
	fprintf(stderr, "    %s:", what);
	for (size_t i = 0; i < t->n; i++)
		fprintf(stderr, " %d", t->ids[i]);
	fputc('\n', stderr);
}

static int decode_eq(const struct lora_tok *tok, const cJSON *ids, unsigned flags, const char *want)
{
	struct lora_err err = { 0 };
	struct lora_buf b = LORA_BUF_INIT;
	int32_t *v = calloc((size_t)cJSON_GetArraySize(ids) + 1, sizeof(*v));
	const cJSON *e;
	size_t n = 0;
	int ok;

	cJSON_ArrayForEach(e, ids)
		v[n++] = (int32_t)e->valuedouble;
	ok = lora_tok_decode(tok, v, n, flags, &b, &err) == 0 && !strcmp(b.data ? b.data : "", want);
	if (!ok)
		fprintf(stderr, "    decode: got '%s' want '%s' (%s)\n", b.data ? b.data : "", want, err.msg);
	lora_buf_free(&b);
	free(v);
	return ok;
}

static void check_dir(const char *name)
{
	char rel[256];
	char *dir, *path, *text = NULL;
	size_t len = 0, lines = 0;
	struct lora_tok *tok = NULL;
	struct lora_err err = { 0 };

	snprintf(rel, sizeof(rel), "tok/%s", name);
	dir = t_fixture(rel);
	snprintf(rel, sizeof(rel), "tok/%s/expect.jsonl", name);
	path = t_fixture(rel);
	CHECKF(lora_tok_load(dir, &tok, &err) == 0, "%s: %s", name, err.msg);
	CHECKF(lora_read_file(path, 1 << 24, &text, &len, &err) == 0, "%s", err.msg);
	if (!tok || !text)
		goto done;
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
		cJSON *j = cJSON_Parse(line);
		const char *s = cJSON_GetObjectItem(j, "text")->valuestring;
		struct lora_tokens a = LORA_TOKENS_INIT, b = LORA_TOKENS_INIT;
		lines++;
		CHECKF(lora_tok_encode(tok, s, strlen(s), 0, &a, &err) == 0, "%s", err.msg);
		CHECKF(lora_tok_encode(tok, s, strlen(s), LORA_TOK_ADD_SPECIAL, &b, &err) == 0, "%s", err.msg);
		if (!ids_equal(&a, cJSON_GetObjectItem(j, "ids"))) {
			CHECKF(0, "%s: ids differ for '%s'", name, s);
			print_ids("ours", &a);
			fprintf(stderr, "    want: %s\n", cJSON_PrintUnformatted(cJSON_GetObjectItem(j, "ids")));
		}
		CHECKF(ids_equal(&b, cJSON_GetObjectItem(j, "ids_special")), "%s: special ids differ for '%s'", name, s);
		CHECKF(decode_eq(tok, cJSON_GetObjectItem(j, "ids"), 0, cJSON_GetObjectItem(j, "decode")->valuestring),
		       "%s: decode of '%s'", name, s);
		CHECKF(decode_eq(tok, cJSON_GetObjectItem(j, "ids_special"), LORA_TOK_SKIP_SPECIAL,
				 cJSON_GetObjectItem(j, "decode_skip")->valuestring), "%s: decode (skip) of '%s'", name, s);
		lora_tokens_free(&a);
		lora_tokens_free(&b);
		cJSON_Delete(j);
	}
	CHECKF(lines >= 70, "%s: only %zu corpus lines", name, lines);
	free(text);
	text = NULL;
	free(path);
	snprintf(rel, sizeof(rel), "tok/%s/decode.jsonl", name);
	path = t_fixture(rel);
	CHECKF(lora_read_file(path, 1 << 24, &text, &len, &err) == 0, "%s", err.msg);
	lines = 0;
	for (char *line = text ? strtok(text, "\n") : NULL; line; line = strtok(NULL, "\n")) {
		cJSON *j = cJSON_Parse(line);
		lines++;
		CHECKF(decode_eq(tok, cJSON_GetObjectItem(j, "ids"), 0, cJSON_GetObjectItem(j, "decode")->valuestring),
		       "%s: decode case %zu", name, lines);
		CHECKF(decode_eq(tok, cJSON_GetObjectItem(j, "ids"), LORA_TOK_SKIP_SPECIAL,
				 cJSON_GetObjectItem(j, "decode_skip")->valuestring), "%s: decode case %zu (skip)", name, lines);
		cJSON_Delete(j);
	}
	CHECKF(lines >= 40, "%s: only %zu decode cases", name, lines);
done:
	lora_tok_free(tok);
	free(text);
	free(dir);
	free(path);
}

TEST(gpt2_bytelevel) { check_dir("gpt2"); }
TEST(llama3_split_regex) { check_dir("llama3"); }
TEST(spm_byte_fallback) { check_dir("spm"); }
TEST(spm_metaspace) { check_dir("spm_meta"); }
TEST(chatml_added_tokens) { check_dir("chatml"); }
TEST(qwen2_nfc) { check_dir("qwen2"); }
TEST(smollm2_digits) { check_dir("smollm2"); }
TEST(split_behaviours) { check_dir("splits"); }

int main(void)
{
	RUN(gpt2_bytelevel);
	RUN(llama3_split_regex);
	RUN(spm_byte_fallback);
	RUN(spm_metaspace);
	RUN(chatml_added_tokens);
	RUN(qwen2_nfc);
	RUN(smollm2_digits);
	RUN(split_behaviours);
	return t_done();
}
