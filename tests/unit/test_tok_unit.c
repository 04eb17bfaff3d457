/*
 * test_tok_unit.c - tokenizer behaviour that the oracle fixtures do not
 * cover: refusals by name, hostile files, offsets, BOS/EOS from the config,
 * and the load time of a 128k vocabulary.
 */
#include <time.h>

#include "tests/t.h"
#include "train/tokenizer.h"

static const char *byte_chars[256];
static char byte_store[256][4];

/* GPT-2's byte -> char map, written out independently of the tokenizer. */
static void init_bytes(void)
{
	int n = 0;
	for (int b = 0; b < 256; b++) {
		int keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
		unsigned cp = keep ? (unsigned)b : 256u + (unsigned)n++;
		if (cp < 0x80) {
			byte_store[b][0] = (char)cp;
		} else {
			byte_store[b][0] = (char)(0xC0 | (cp >> 6));
			byte_store[b][1] = (char)(0x80 | (cp & 0x3F));
		}
		byte_chars[b] = byte_store[b];
	}
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A byte-level tokenizer.json with 128,000 tokens: 256 bytes, all 65,536 byte
 * pairs, then (pair, byte) triples. */
static char *big_tokenizer(size_t *len)
{
	struct lora_buf b = LORA_BUF_INIT, tmp = LORA_BUF_INIT;
	int id = 0;

	lora_buf_puts(&b, "{\"added_tokens\":[{\"id\":128000,\"content\":\"<|end|>\",\"special\":true}],"
			  "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true},"
			  "\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\",\"vocab\":{");
	for (int a = 0; a < 256; a++) {
		lora_buf_printf(&b, "%s", a ? "," : "");
		lora_buf_json_str(&b, byte_chars[a]);
		lora_buf_printf(&b, ":%d", id++);
	}
	for (int a = 0; a < 256; a++)
		for (int c = 0; c < 256; c++) {
			tmp.len = 0;
			lora_buf_printf(&tmp, "%s%s", byte_chars[a], byte_chars[c]);
			lora_buf_puts(&b, ",");
			lora_buf_json_str(&b, tmp.data);
			lora_buf_printf(&b, ":%d", id++);
		}
	for (int k = 0; id < 128000; k++) {
		tmp.len = 0;
		lora_buf_printf(&tmp, "%s%s%s", byte_chars[(k / 256) % 256], byte_chars[k % 256], byte_chars[(k * 7) % 256]);
		lora_buf_puts(&b, ",");
		lora_buf_json_str(&b, tmp.data);
		lora_buf_printf(&b, ":%d", id++);
	}
	lora_buf_puts(&b, "},\"merges\":[");
	for (int a = 0, first = 1; a < 256; a++)
		for (int c = 0; c < 256; c++) {
			tmp.len = 0;
			lora_buf_printf(&tmp, "%s %s", byte_chars[a], byte_chars[c]);
			lora_buf_puts(&b, first ? "" : ",");
			first = 0;
			lora_buf_json_str(&b, tmp.data);
		}
	for (int k = 0; k < 128000 - 256 - 65536; k++) {
		tmp.len = 0;
		lora_buf_printf(&tmp, "%s%s %s", byte_chars[(k / 256) % 256], byte_chars[k % 256], byte_chars[(k * 7) % 256]);
		lora_buf_puts(&b, ",");
		lora_buf_json_str(&b, tmp.data);
	}
	lora_buf_puts(&b, "]}}");
	lora_buf_free(&tmp);
	*len = b.len;
	return lora_buf_take(&b);
}

#if defined(__SANITIZE_ADDRESS__)
#define SLOW 4.0   /* ASan + UBSan run several times slower */
#else
#define SLOW 1.0
#endif

TEST(vocab_128k_loads_fast)
{
	size_t len;
	char *json = big_tokenizer(&len);
	struct lora_tok *tok = NULL;
	struct lora_err err = { 0 };
	struct lora_tokens t = LORA_TOKENS_INIT;
	struct lora_buf out = LORA_BUF_INIT;
	double t0 = now(), dt;
	static const char text[] = "Hello there, general Kenobi! 12345 <|end|>";

	CHECKF(lora_tok_load_mem(json, len, NULL, 0, "big", &tok, &err) == 0, "%s", err.msg);
	dt = now() - t0;
	printf("  128k vocab (%.1f MB json): loaded in %.3f s\n", len / 1e6, dt);
	CHECKF(dt < 0.6 * SLOW, "load took %.3f s", dt);
	if (tok) {
		CHECK(lora_tok_vocab_size(tok) == 128001);
		CHECK(lora_tok_encode(tok, text, strlen(text), 0, &t, &err) == 0);
		/* every pair of bytes merges first, then (pair, byte) triples may follow */
		CHECK(t.n > 0 && t.n < strlen(text));
		CHECK(t.ids[t.n - 1] == 128000);
		CHECK(lora_tok_decode(tok, t.ids, t.n, 0, &out, &err) == 0);
		CHECK(out.data && !strcmp(out.data, text));
	}
	lora_buf_free(&out);
	lora_tokens_free(&t);
	lora_tok_free(tok);
	free(json);
}

static const char *mini(const char *model_type)
{
	static char buf[512];
	snprintf(buf, sizeof(buf), "{\"model\":{\"type\":\"%s\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\"]}}",
		 model_type);
	return buf;
}

TEST(refuses_other_models_by_name)
{
	struct lora_tok *tok = NULL;
	struct lora_err err = { 0 };
	const char *s = mini("WordPiece");

	CHECK(lora_tok_load_mem(s, strlen(s), NULL, 0, "x.json", &tok, &err) < 0 && !tok);
	CHECKF(strstr(err.msg, "WordPiece") && strstr(err.msg, "x.json"), "%s", err.msg);
	s = mini("Unigram");
	CHECK(lora_tok_load_mem(s, strlen(s), NULL, 0, "x.json", &tok, &err) < 0);
	CHECKF(strstr(err.msg, "Unigram"), "%s", err.msg);
	s = mini("BPE");
	CHECKF(lora_tok_load_mem(s, strlen(s), NULL, 0, "x.json", &tok, &err) == 0, "%s", err.msg);
	lora_tok_free(tok);
}

/* A tokenizer.json with vocab {a, b, ab, ##b} and one merge, plus extra top-level members. */
static char *with(const char *model_extra, const char *extra)
{
	static char buf[2048];
	snprintf(buf, sizeof(buf), "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"##b\":3},"
		 "\"merges\":[\"a b\"]%s}%s}", model_extra, extra);
	return buf;
}

/* Each refusal names the field and the value, after the file's name. */
TEST(refusals_name_field_and_value)
{
	static const struct {
		const char *model, *extra, *want;
	} cases[] = {
		{ "", ",\"normalizer\":{\"type\":\"Precompiled\",\"precompiled_charsmap\":\"\"}",
		  "x/tokenizer.json: normalizer type 'Precompiled' is not supported" },
		{ "", ",\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFC\"},{\"type\":\"BertNormalizer\"}]}",
		  "x/tokenizer.json: normalizer type 'BertNormalizer' is not supported" },
		{ "", ",\"normalizer\":{\"type\":\"StripAccents\"}", "normalizer type 'StripAccents' is not supported" },
		{ "", ",\"pre_tokenizer\":{\"type\":\"UnicodeScripts\"}", "pre_tokenizer type 'UnicodeScripts' is not supported" },
		{ "", ",\"pre_tokenizer\":{\"type\":\"FixedLength\",\"length\":5}", "pre_tokenizer type 'FixedLength' is not supported" },
		{ "", ",\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"String\":\" \"},\"behavior\":\"Sideways\"}",
		  "pre_tokenizer Split behavior 'Sideways' is not supported" },
		{ "", ",\"pre_tokenizer\":{\"type\":\"Punctuation\",\"behavior\":\"Upwards\"}",
		  "pre_tokenizer Punctuation behavior 'Upwards' is not supported" },
		{ "", ",\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"_\",\"prepend_scheme\":\"sometimes\"}",
		  "Metaspace prepend_scheme 'sometimes' is not supported" },
		{ "", ",\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"__\",\"prepend_scheme\":\"always\"}",
		  "Metaspace replacement '__' is not supported" },
		{ "", ",\"decoder\":{\"type\":\"CTC\",\"pad_token\":\"<pad>\"}", "decoder type 'CTC' is not supported" },
		{ "", ",\"decoder\":{\"type\":\"Replace\",\"pattern\":{\"Regex\":\" +\"},\"content\":\" \"}",
		  "decoder Replace with a Regex pattern is not supported" },
		{ "", ",\"post_processor\":{\"type\":\"Whatever\"}", "post_processor type 'Whatever' is not supported" },
		{ ",\"dropout\":0.1", "", "model.dropout 0.1 is not supported" },
		{ ",\"continuing_subword_prefix\":7", "", "model.continuing_subword_prefix is not a string" },
		{ ",\"continuing_subword_prefix\":\"##\"", "", "merge 0 ('a' 'b'): the right side lacks the "
		  "continuing_subword_prefix" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *json = with(cases[i].model, cases[i].extra);
		struct lora_tok *tok = NULL;
		struct lora_err err = { 0 };
		CHECKF(lora_tok_load_mem(json, strlen(json), NULL, 0, "x/tokenizer.json", &tok, &err) < 0 && !tok,
		       "case %zu loaded", i);
		CHECKF(strstr(err.msg, cases[i].want) && !strncmp(err.msg, "x/tokenizer.json: ", 18),
		       "case %zu: '%s', want '%s'", i, err.msg, cases[i].want);
		lora_tok_free(tok);
	}
	/* what means "none" loads: empty prefix/suffix, dropout null */
	{
		const char *json = with(",\"dropout\":null,\"continuing_subword_prefix\":\"\",\"end_of_word_suffix\":\"\"", "");
		struct lora_tok *tok = NULL;
		struct lora_err err = { 0 };
		struct lora_tokens t = LORA_TOKENS_INIT;
		CHECKF(lora_tok_load_mem(json, strlen(json), NULL, 0, "x", &tok, &err) == 0, "%s", err.msg);
		CHECK(tok && lora_tok_encode(tok, "abb", 3, 0, &t, &err) == 0 && t.n == 2 && t.ids[0] == 2 && t.ids[1] == 1);
		lora_tokens_free(&t);
		lora_tok_free(tok);
	}
}

/* A real prefix: "a" then "##b" merge into "ab"; a lone "b" after "a" is "##b". */
TEST(continuing_subword_prefix_is_glued)
{
	const char *json = "{\"model\":{\"type\":\"BPE\",\"continuing_subword_prefix\":\"##\",\"end_of_word_suffix\":null,"
			   "\"vocab\":{\"a\":0,\"b\":1,\"##a\":2,\"##b\":3,\"ab\":4},\"merges\":[[\"a\",\"##b\"]]},"
			   "\"decoder\":{\"type\":\"WordPiece\",\"prefix\":\"##\",\"cleanup\":true}}";
	struct lora_tok *tok = NULL;
	struct lora_err err = { 0 };
	struct lora_tokens t = LORA_TOKENS_INIT;
	struct lora_buf out = LORA_BUF_INIT;

	CHECKF(lora_tok_load_mem(json, strlen(json), NULL, 0, "x", &tok, &err) == 0, "%s", err.msg);
	if (!tok)
		return;
	CHECK(lora_tok_encode(tok, "abba", 4, 0, &t, &err) == 0);
	CHECKF(t.n == 3 && t.ids[0] == 4 && t.ids[1] == 3 && t.ids[2] == 2, "n %zu", t.n);
	CHECK(lora_tok_decode(tok, t.ids, t.n, 0, &out, &err) == 0 && out.data && !strcmp(out.data, "abba"));
	lora_buf_free(&out);
	lora_tokens_free(&t);
	lora_tok_free(tok);
}

/* Strip's sides, with Prepend after it; the ids are what `tokenizers` 0.23 gives for the same file. */
TEST(strip_normalizer_sides)
{
	static const struct {
		const char *flags;
		int32_t want[6];
		size_t n;
	} cases[] = {
		{ "\"strip_left\":false,\"strip_right\":true", { 0, 2, 1, 2, 3 }, 5 },
		{ "\"strip_left\":true,\"strip_right\":false", { 0, 1, 2, 3, 2, 2 }, 6 },
	};
	for (size_t k = 0; k < 2; k++) {
		char json[512];
		struct lora_tok *tok = NULL;
		struct lora_err err = { 0 };
		struct lora_tokens t = LORA_TOKENS_INIT;
		snprintf(json, sizeof(json), "{\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Strip\",%s},"
			 "{\"type\":\"Prepend\",\"prepend\":\"^\"}]},\"model\":{\"type\":\"BPE\",\"vocab\":{\"^\":0,\"a\":1,"
			 "\" \":2,\"b\":3},\"merges\":[]}}", cases[k].flags);
		CHECKF(lora_tok_load_mem(json, strlen(json), NULL, 0, "x", &tok, &err) == 0, "%s", err.msg);
		CHECK(tok && lora_tok_encode(tok, " a b  ", 6, 0, &t, &err) == 0);
		CHECKF(t.n == cases[k].n && !memcmp(t.ids, cases[k].want, t.n * sizeof(int32_t)), "case %zu: %zu ids", k, t.n);
		lora_tokens_free(&t);
		lora_tok_free(tok);
	}
}

/* generation_config.json fills in the EOS that tokenizer_config.json leaves out. */
TEST(generation_config_fills_eos)
{
	const char *json = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"<e>\":1,\"<f>\":2},\"merges\":[]}}";
	const char *gen = "{\"bos_token_id\":null,\"eos_token_id\":[2,1]}";
	struct lora_tok *tok = NULL;
	struct lora_err err = { 0 };

	CHECKF(lora_tok_load_mem(json, strlen(json), NULL, 0, "x", &tok, &err) == 0, "%s", err.msg);
	if (!tok)
		return;
	CHECK(lora_tok_eos(tok) == -1 && !lora_tok_is_stop(tok, 1));
	CHECKF(lora_tok_apply_generation_config(tok, gen, strlen(gen), "g", &err) == 0, "%s", err.msg);
	CHECK(lora_tok_eos(tok) == 2 && !strcmp(lora_tok_eos_str(tok), "<f>") && lora_tok_bos(tok) == -1);
	CHECK(lora_tok_is_stop(tok, 1) && lora_tok_is_stop(tok, 2) && !lora_tok_is_stop(tok, 0));
	CHECK(lora_tok_apply_generation_config(tok, "{\"eos_token_id\":99}", 19, "g", &err) < 0);
	CHECKF(strstr(err.msg, "g: bos_token_id/eos_token_id"), "%s", err.msg);
	lora_tok_free(tok);
}

TEST(hostile_files_fail_cleanly)
{
	static const char *bad[] = {
		"", "[]", "{", "{\"model\":{}}",
		"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a b\"]}}",          /* b missing */
		"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-1},\"merges\":[]}}",
		"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":1e12},\"merges\":[]}}",
		"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"abc\"]}}",
		"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},\"pre_tokenizer\":{\"type\":\"UnicodeScripts\"}}",
		"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},\"pre_tokenizer\":"
		"{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"},\"behavior\":\"Isolated\"}}",
		"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},\"normalizer\":{\"type\":\"Precompiled\"}}",
		"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},\"added_tokens\":[{\"id\":5}]}",
		"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},\"post_processor\":"
		"{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\"}}],\"special_tokens\":{}}}",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct lora_tok *tok = NULL;
		struct lora_err err = { 0 };
		CHECKF(lora_tok_load_mem(bad[i], strlen(bad[i]), NULL, 0, "bad.json", &tok, &err) < 0 && !tok,
		       "case %zu loaded", i);
		CHECKF(err.msg[0] != 0, "case %zu: no message", i);
		lora_tok_free(tok);
	}
}

static struct lora_tok *fixture(const char *name)
{
	char rel[64];
	char *dir;
	struct lora_tok *tok = NULL;
	struct lora_err err = { 0 };
	snprintf(rel, sizeof(rel), "tok/%s", name);
	dir = t_fixture(rel);
	CHECKF(lora_tok_load(dir, &tok, &err) == 0, "%s", err.msg);
	free(dir);
	return tok;
}

TEST(offsets_point_into_the_input)
{
	const char *names[] = { "gpt2", "llama3", "spm", "spm_meta", "qwen2" };
	const char *text = "Hello  wörld<|endoftext|>안녕 e\xcc\x81 x";
	for (size_t k = 0; k < 5; k++) {
		struct lora_tok *tok = fixture(names[k]);
		struct lora_tokens t = LORA_TOKENS_INIT;
		struct lora_err err = { 0 };
		if (!tok)
			continue;
		CHECK(lora_tok_encode(tok, text, strlen(text), LORA_TOK_ADD_SPECIAL, &t, &err) == 0);
		for (size_t i = 0; i < t.n; i++) {
			CHECKF(t.start[i] >= -1 && t.start[i] < (int64_t)strlen(text), "%s: start %lld", names[k],
			       (long long)t.start[i]);
			if (i && t.start[i] >= 0 && t.start[i - 1] >= 0)
				CHECKF(t.start[i] >= t.start[i - 1], "%s: offsets go back", names[k]);
		}
		/* the byte where "x" begins starts the last text token (spm: "▁x" starts at the space) */
		CHECKF(t.n && (t.start[t.n - 1] == (int64_t)strlen(text) - 1 ||
			      t.start[t.n - 1] == (int64_t)strlen(text) - 2 || t.start[t.n - 1] == -1),
		       "%s: last start %lld", names[k], (long long)t.start[t.n - 1]);
		lora_tokens_free(&t);
		lora_tok_free(tok);
	}
}

TEST(invalid_utf8_is_an_error)
{
	struct lora_tok *tok = fixture("gpt2");
	struct lora_tokens t = LORA_TOKENS_INIT;
	struct lora_err err = { 0 };
	if (!tok)
		return;
	CHECK(lora_tok_encode(tok, "ab\xff", 3, 0, &t, &err) < 0);
	CHECKF(strstr(err.msg, "utf-8") && strstr(err.msg, "byte 2"), "%s", err.msg);
	CHECK(lora_tok_encode(tok, "\xed\xa0\x80", 3, 0, &t, &err) < 0);   /* a surrogate */
	lora_tokens_free(&t);
	lora_tok_free(tok);
}

TEST(special_ids_from_config)
{
	struct lora_tok *g = fixture("gpt2"), *l = fixture("llama3"), *s = fixture("spm"), *q = fixture("qwen2");
	if (!g || !l || !s || !q)
		goto done;
	CHECK(lora_tok_eos(g) == lora_tok_token_to_id(g, "<|endoftext|>") && lora_tok_eos(g) >= 0);
	CHECK(!lora_tok_adds_bos(g) && !lora_tok_adds_eos(g));
	CHECK(lora_tok_bos(l) == lora_tok_token_to_id(l, "<|begin_of_text|>") && lora_tok_adds_bos(l));
	CHECK(lora_tok_eos(l) == lora_tok_token_to_id(l, "<|eot_id|>"));
	CHECK(lora_tok_bos(s) == 1 && lora_tok_eos(s) == 2 && lora_tok_adds_bos(s) && !lora_tok_adds_eos(s));
	CHECK(lora_tok_bos(q) == -1 && !strcmp(lora_tok_bos_str(q), "") && lora_tok_pad(q) >= 0);
	CHECK(lora_tok_is_special(s, 1) && !lora_tok_is_special(s, 300));
	CHECK(lora_tok_chat_template(q) && strstr(lora_tok_chat_template(q), "<|im_start|>"));
	CHECK(!strcmp(lora_tok_id_to_token(s, 3 + 0x41), "<0x41>"));
done:
	lora_tok_free(g);
	lora_tok_free(l);
	lora_tok_free(s);
	lora_tok_free(q);
}

TEST(duplicate_vocab_ids_load)
{
	/* "b" and "c" share id 1 (seen in the wild): both encode to it, the first decodes */
	const char *json = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"c\":1,\"ab\":2},"
			   "\"merges\":[\"a b\"]}}";
	struct lora_tok *tok = NULL;
	struct lora_tokens t = LORA_TOKENS_INIT;
	struct lora_err err = { 0 };

	CHECKF(lora_tok_load_mem(json, strlen(json), NULL, 0, "t", &tok, &err) == 0, "%s", err.msg);
	if (!tok)
		return;
	CHECK(lora_tok_encode(tok, "cab", 3, 0, &t, &err) == 0);
	CHECK(t.n == 2 && t.ids[0] == 1 && t.ids[1] == 2);
	CHECK(!strcmp(lora_tok_id_to_token(tok, 1), "b"));
	lora_tokens_free(&t);
	lora_tok_free(tok);
}

TEST(add_eos_token_in_config_is_honoured)
{
	const char *json = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"<s>\":0,\"</s>\":1,\"a\":2},\"merges\":[]},"
			   "\"added_tokens\":[{\"id\":0,\"content\":\"<s>\",\"special\":true},"
			   "{\"id\":1,\"content\":\"</s>\",\"special\":true}],"
			   "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\"}},"
			   "{\"Sequence\":{\"id\":\"A\"}}],\"special_tokens\":{\"<s>\":{\"id\":\"<s>\",\"ids\":[0]}}}}";
	const char *cfg = "{\"bos_token\":\"<s>\",\"eos_token\":{\"content\":\"</s>\"},\"add_bos_token\":false,"
			  "\"add_eos_token\":true}";
	struct lora_tok *tok = NULL;
	struct lora_tokens t = LORA_TOKENS_INIT;
	struct lora_err err = { 0 };

	CHECKF(lora_tok_load_mem(json, strlen(json), cfg, strlen(cfg), "t", &tok, &err) == 0, "%s", err.msg);
	if (!tok)
		return;
	CHECK(lora_tok_encode(tok, "aa", 2, LORA_TOK_ADD_SPECIAL, &t, &err) == 0);
	CHECK(t.n == 3 && t.ids[0] == 2 && t.ids[1] == 2 && t.ids[2] == 1 && t.start[2] == -1);
	lora_tokens_free(&t);
	lora_tok_free(tok);
}

#include "libadapter/base/fsutil.h"

/* Random byte edits of real fixture files: loading either fails with a
 * message or gives a tokenizer that encodes and decodes (ASan watches). */
TEST(mutated_files_never_crash)
{
	static const char *names[] = { "tok/llama3/tokenizer.json", "tok/spm/tokenizer.json", "tok/qwen2/tokenizer.json",
				       "tok/families/wordpiece_bpe/tokenizer.json",
				       "tok/families/nfkd_suffix/tokenizer.json", "tok/families/clip/tokenizer.json" };
	uint64_t rng = 0x1234567;
	int loaded = 0, failed = 0, rounds = getenv("LORA_TEST_MUTATIONS") ? atoi(getenv("LORA_TEST_MUTATIONS")) : 60;

	for (size_t f = 0; f < sizeof(names) / sizeof(names[0]); f++) {
		char *path = t_fixture(names[f]), *orig = NULL;
		size_t len = 0;
		struct lora_err err = { 0 };
		CHECK(lora_read_file(path, 1 << 24, &orig, &len, &err) == 0);
		for (int k = 0; orig && k < rounds; k++) {
			char *m = malloc(len);
			struct lora_tok *tok = NULL;
			memcpy(m, orig, len);
			for (int e = 0; e < 1 + k % 4; e++) {
				rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
				static const char alpha[] = "aZ09 \xc3\xff\x80<>-.\\\"{}[]";
				m[(rng >> 33) % len] = alpha[(rng >> 20) % (sizeof(alpha) - 1)];
			}
			if (lora_tok_load_mem(m, len, NULL, 0, "m", &tok, &err) == 0) {
				struct lora_tokens t = LORA_TOKENS_INIT;
				struct lora_buf b = LORA_BUF_INIT;
				const char *txt = "Hello wörld 안녕 😀 <s> 123\n\n  x";
				loaded++;
				if (lora_tok_encode(tok, txt, strlen(txt), LORA_TOK_ADD_SPECIAL, &t, &err) == 0)
					lora_tok_decode(tok, t.ids, t.n, 0, &b, &err);
				lora_buf_free(&b);
				lora_tokens_free(&t);
				lora_tok_free(tok);
			} else {
				failed++;
				CHECK(err.msg[0] != 0);
			}
			free(m);
		}
		free(orig);
		free(path);
	}
	printf("  mutations: %d loaded, %d refused\n", loaded, failed);
	CHECK(loaded > 0 && failed > 0);
}

int main(void)
{
	init_bytes();
	RUN(vocab_128k_loads_fast);
	RUN(refuses_other_models_by_name);
	RUN(refusals_name_field_and_value);
	RUN(continuing_subword_prefix_is_glued);
	RUN(generation_config_fills_eos);
	RUN(strip_normalizer_sides);
	RUN(hostile_files_fail_cleanly);
	RUN(offsets_point_into_the_input);
	RUN(invalid_utf8_is_an_error);
	RUN(special_ids_from_config);
	RUN(duplicate_vocab_ids_load);
	RUN(add_eos_token_in_config_is_honoured);
	RUN(mutated_files_never_crash);
	return t_done();
}
