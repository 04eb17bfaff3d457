/*
 * test_tok_families.c - tokenizer.json files of the families people fine-tune,
 * as `tokenizers` 0.23 / transformers 5 write them, against `tokenizers`.
 *
 * tests/oracle/tok_families.py wrote tests/fixtures/tok/families/<name>/ (the
 * files, origin.json saying where they came from, and expect.jsonl).  For
 * each line of the mixed corpus: ids without special tokens equal
 * `tokenizers`' exactly; ids with them equal both `tokenizers`' and
 * transformers' AutoTokenizer's (so the tokenizer_config.json switches are
 * read as transformers reads them); decode equals `tokenizers`' decode, and
 * gives the text back exactly where `tokenizers`' does.  Then random id
 * sequences decode as `tokenizers` decodes them.
 */
#include <cjson/cJSON.h>

#include "libadapter/base/fsutil.h"
#include "tests/t.h"
#include "train/tokenizer.h"

static int ids_equal(const struct lora_tokens *t, const cJSON *arr)
{
	const cJSON *e;
	size_t i = 0;
	if (!cJSON_IsArray(arr) || (size_t)cJSON_GetArraySize(arr) != t->n)
		return 0;
	cJSON_ArrayForEach(e, arr)
		if (!cJSON_IsNumber(e) || (int32_t)e->valuedouble != t->ids[i++])
			return 0;
	return 1;
}

static void show_diff(const char *what, const struct lora_tokens *t, const cJSON *want)
{
	char *w = cJSON_PrintUnformatted(want);
	fprintf(stderr, "    %s ours:", what);
	for (size_t i = 0; i < t->n && i < 40; i++)
		fprintf(stderr, " %d", t->ids[i]);
	fprintf(stderr, "\n    %s want: %.300s\n", what, w ? w : "?");
	free(w);
}

/* Decode ids; returns the text (caller frees) or NULL with the error printed. */
static char *decode(const struct lora_tok *tok, const cJSON *ids, unsigned flags)
{
	struct lora_err err = { 0 };
	struct lora_buf b = LORA_BUF_INIT;
	int32_t *v = calloc((size_t)cJSON_GetArraySize(ids) + 1, sizeof(*v));
	const cJSON *e;
	size_t n = 0;

	cJSON_ArrayForEach(e, ids)
		v[n++] = (int32_t)e->valuedouble;
	if (lora_tok_decode(tok, v, n, flags, &b, &err) < 0) {
		fprintf(stderr, "    decode: %s\n", err.msg);
		lora_buf_free(&b);
		free(v);
		return NULL;
	}
	free(v);
	if (!b.data)
		return strdup("");
	return lora_buf_take(&b);
}

static int decode_is(const struct lora_tok *tok, const cJSON *ids, unsigned flags, const char *want)
{
	char *got = decode(tok, ids, flags);
	int ok = got && !strcmp(got, want);
	if (got && !ok)
		fprintf(stderr, "    decode: got '%.200s'\n    want    '%.200s'\n", got, want);
	free(got);
	return ok;
}

static const char *str(const cJSON *j, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, k);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void check_family(const char *name)
{
	char rel[256];
	char *dir, *path, *text = NULL, *save = NULL;
	size_t len = 0, lines = 0, decodes = 0, trips = 0, bad = 0;
	struct lora_tok *tok = NULL;
	struct lora_err err = { 0 };

	snprintf(rel, sizeof(rel), "tok/families/%s", name);
	dir = t_fixture(rel);
	snprintf(rel, sizeof(rel), "tok/families/%s/expect.jsonl", name);
	path = t_fixture(rel);
	CHECKF(lora_tok_load(dir, &tok, &err) == 0, "%s: %s", name, err.msg);
	CHECKF(lora_read_file(path, 1 << 24, &text, &len, &err) == 0, "%s", err.msg);
	for (char *line = tok && text ? strtok_r(text, "\n", &save) : NULL; line && bad < 5;
	     line = strtok_r(NULL, "\n", &save)) {
		cJSON *j = cJSON_Parse(line);
		const char *s = str(j, "text");
		struct lora_tokens a = LORA_TOKENS_INIT, b = LORA_TOKENS_INIT;
		size_t bad0 = bad;

		if (!s) {   /* {"decode_ids": [...], "decode": ..., "decode_skip": ...} */
			const cJSON *ids = cJSON_GetObjectItemCaseSensitive(j, "decode_ids");
			decodes++;
			bad += !decode_is(tok, ids, 0, str(j, "decode"));
			bad += !decode_is(tok, ids, LORA_TOK_SKIP_SPECIAL, str(j, "decode_skip"));
			CHECKF(bad == bad0, "%s: decode of random ids %zu", name, decodes);
			cJSON_Delete(j);
			continue;
		}
		lines++;
		CHECKF(lora_tok_encode(tok, s, strlen(s), 0, &a, &err) == 0, "%s: %s", name, err.msg);
		CHECKF(lora_tok_encode(tok, s, strlen(s), LORA_TOK_ADD_SPECIAL, &b, &err) == 0, "%s: %s", name, err.msg);
		if (!ids_equal(&a, cJSON_GetObjectItemCaseSensitive(j, "ids"))) {
			CHECKF(0, "%s: ids differ for '%.80s'", name, s);
			show_diff("ids", &a, cJSON_GetObjectItemCaseSensitive(j, "ids"));
			bad++;
		}
		if (!ids_equal(&b, cJSON_GetObjectItemCaseSensitive(j, "ids_special"))) {
			CHECKF(0, "%s: ids with special tokens differ for '%.80s'", name, s);
			show_diff("special", &b, cJSON_GetObjectItemCaseSensitive(j, "ids_special"));
			bad++;
		}
		if (!ids_equal(&b, cJSON_GetObjectItemCaseSensitive(j, "ids_transformers"))) {
			CHECKF(0, "%s: ids differ from transformers' for '%.80s'", name, s);
			bad++;
		}
		if (!decode_is(tok, cJSON_GetObjectItemCaseSensitive(j, "ids"), 0, str(j, "decode"))) {
			CHECKF(0, "%s: decode of '%.80s'", name, s);
			bad++;
		}
		if (!decode_is(tok, cJSON_GetObjectItemCaseSensitive(j, "ids_special"), LORA_TOK_SKIP_SPECIAL,
			       str(j, "decode_skip"))) {
			CHECKF(0, "%s: decode (skip special) of '%.80s'", name, s);
			bad++;
		}
		if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "roundtrip"))) {
			/* where `tokenizers` gives the text back, so must we */
			CHECKF(decode_is(tok, cJSON_GetObjectItemCaseSensitive(j, "ids"), 0, s), "%s: no round trip", name);
			trips++;
		}
		lora_tokens_free(&a);
		lora_tokens_free(&b);
		cJSON_Delete(j);
	}
	CHECKF(lines >= 100 && decodes >= 30, "%s: only %zu corpus lines, %zu decodes", name, lines, decodes);
	printf("  %-14s vocab %6d: %zu lines (%zu round-trip), %zu random decodes\n", name,
	       tok ? lora_tok_vocab_size(tok) : 0, lines, trips, decodes);
	lora_tok_free(tok);
	free(text);
	free(dir);
	free(path);
}

TEST(smollm2_real_gguf) { check_family("smollm2_real"); }
TEST(llama2_metaspace_first) { check_family("llama2"); }
TEST(mistral_metaspace_always) { check_family("mistral_always"); }
TEST(llama_metaspace_never) { check_family("llama_never"); }
TEST(metaspace_legacy_split) { check_family("metaspace_legacy"); }
TEST(phi3_legacy_normalizer_rstrip) { check_family("phi3"); }
TEST(gemma_split_merged_with_previous) { check_family("gemma"); }
TEST(qwen3_nfc_split) { check_family("qwen3"); }
TEST(llama3_tiktoken) { check_family("llama3"); }
TEST(gpt2_empty_affixes) { check_family("gpt2"); }
TEST(clip_suffix_lowercase) { check_family("clip"); }
TEST(wordpiece_prefix_nfkc) { check_family("wordpiece_bpe"); }
TEST(nfkd_suffix_bpedecoder) { check_family("nfkd_suffix"); }

/* What the generation configs of the fixtures say: stop ids, and BOS/EOS kept from tokenizer_config.json. */
TEST(generation_config_stop_ids)
{
	static const char *names[] = { "llama3", "qwen3", "phi3" };
	static const char *stops[][3] = { { "<|end_of_text|>", "<|eom_id|>", "<|eot_id|>" },
					  { "<|im_end|>", "<|endoftext|>", NULL },
					  { "<|endoftext|>", "<|end|>", NULL } };
	static const char *eos[] = { "<|eot_id|>", "<|im_end|>", "<|endoftext|>" };
	for (int k = 0; k < 3; k++) {
		char rel[128], *dir;
		struct lora_tok *tok = NULL;
		struct lora_err err = { 0 };
		snprintf(rel, sizeof(rel), "tok/families/%s", names[k]);
		dir = t_fixture(rel);
		CHECKF(lora_tok_load(dir, &tok, &err) == 0, "%s", err.msg);
		free(dir);
		if (!tok)
			continue;
		CHECKF(!strcmp(lora_tok_eos_str(tok), eos[k]), "%s: eos '%s'", names[k], lora_tok_eos_str(tok));
		for (int i = 0; i < 3 && stops[k][i]; i++)
			CHECKF(lora_tok_is_stop(tok, lora_tok_token_to_id(tok, stops[k][i])), "%s: %s is no stop id",
			       names[k], stops[k][i]);
		CHECK(!lora_tok_is_stop(tok, lora_tok_token_to_id(tok, "a")));
		lora_tok_free(tok);
	}
}

int main(void)
{
	RUN(smollm2_real_gguf);
	RUN(llama2_metaspace_first);
	RUN(mistral_metaspace_always);
	RUN(llama_metaspace_never);
	RUN(metaspace_legacy_split);
	RUN(phi3_legacy_normalizer_rstrip);
	RUN(gemma_split_merged_with_previous);
	RUN(qwen3_nfc_split);
	RUN(llama3_tiktoken);
	RUN(gpt2_empty_affixes);
	RUN(clip_suffix_lowercase);
	RUN(wordpiece_prefix_nfkc);
	RUN(nfkd_suffix_bpedecoder);
	RUN(generation_config_stop_ids);
	return t_done();
}
