/*
 * test_data_oracle.c - rows to (ids, labels) against tests/oracle/tok_data.py:
 * the chat text against transformers' apply_chat_template, ids against
 * `tokenizers`, labels (prompt/completion and assistant-turn masking)
 * against the oracle's own prefix-rendering computation.
 */
#include <cjson/cJSON.h>

#include "libadapter/base/fsutil.h"
#include "tests/t.h"
#include "train/data.h"

static struct lora_tok *load_tok(const char *name)
{
	char rel[64], *dir;
	struct lora_tok *tok = NULL;
	struct lora_err err = { 0 };
	snprintf(rel, sizeof(rel), "tok/%s", name);
	dir = t_fixture(rel);
	CHECKF(lora_tok_load(dir, &tok, &err) == 0, "%s", err.msg);
	free(dir);
	return tok;
}

static int arr_eq(const cJSON *a, const int32_t *v, size_t n)
{
	const cJSON *e;
	size_t i = 0;
	if ((size_t)cJSON_GetArraySize(a) != n)
		return 0;
	cJSON_ArrayForEach(e, a)
		if ((int32_t)e->valuedouble != v[i++])
			return 0;
	return 1;
}

static void dump(const char *what, const int32_t *v, size_t n)
{
	fprintf(stderr, "    %s:", what);
	for (size_t i = 0; i < n; i++)
		fprintf(stderr, " %d", v[i]);
	fputc('\n', stderr);
}

/* Load rows with the tokenizer and compare each row with the expect file. */
static void compare(const char *tokname, const char *rows, const char *expect, int chat)
{
	struct lora_tok *tok = load_tok(tokname);
	struct lora_chat ch = { 0 };
	struct lora_data_opts o = { 0 };
	struct lora_dataset *d = NULL;
	struct lora_err err = { 0 };
	char *rp = t_fixture(rows), *ep = t_fixture(expect), *text = NULL;
	size_t len, r = 0;

	if (!tok)
		goto done;
	o.tok = tok;
	if (chat) {
		CHECKF(lora_chat_detect(lora_tok_chat_template(tok), lora_tok_bos_str(tok), &ch, &err) == 0, "%s",
		       err.msg);
		o.chat = &ch;
	}
	CHECKF(lora_data_load(rp, &o, &d, &err) == 0, "%s", err.msg);
	CHECK(lora_read_file(ep, 1 << 24, &text, &len, &err) == 0);
	if (!d || !text)
		goto done;
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"), r++) {
		cJSON *j = cJSON_Parse(line);
		const int32_t *ids = d->ids + d->off[r], *lab = d->labels + d->off[r];
		size_t n = d->off[r + 1] - d->off[r];
		CHECKF(r < d->n_rows, "%s: fewer rows than expected", tokname);
		if (r >= d->n_rows)
			break;
		if (!arr_eq(cJSON_GetObjectItem(j, "ids"), ids, n)) {
			CHECKF(0, "%s %s row %zu: ids differ", tokname, rows, r);
			dump("ours", ids, n);
		}
		if (!arr_eq(cJSON_GetObjectItem(j, "labels"), lab, n)) {
			CHECKF(0, "%s %s row %zu: labels differ", tokname, rows, r);
			dump("ours", lab, n);
		}
		if (chat) {
			/* the rendered text must be apply_chat_template's */
			struct lora_buf b = LORA_BUF_INIT;
			const char *want = cJSON_GetObjectItem(j, "text")->valuestring;
			char *rtext = NULL;
			size_t rlen;
			cJSON *row, *e;
			struct lora_chat_msg m[16] = { { 0 } };
			size_t nm = 0, k = 0;
			/* re-read the r-th input row directly */
			CHECK(lora_read_file(rp, 1 << 24, &rtext, &rlen, &err) == 0);
			{
				char *save = NULL, *ln = strtok_r(rtext, "\n", &save);
				for (k = 0; ln && k < r; k++)
					ln = strtok_r(NULL, "\n", &save);
				row = cJSON_Parse(ln);
			}
			cJSON_ArrayForEach(e, cJSON_GetObjectItem(row, "messages")) {
				m[nm].role = cJSON_GetObjectItem(e, "role")->valuestring;
				m[nm++].content = cJSON_GetObjectItem(e, "content")->valuestring;
			}
			CHECK(lora_chat_render(&ch, m, nm, 0, &b, NULL, NULL, &err) == 0);
			CHECKF(b.data && !strcmp(b.data, want), "%s row %zu: rendered\n%s\nwant\n%s", tokname, r,
			       b.data ? b.data : "", want);
			lora_buf_free(&b);
			cJSON_Delete(row);
			free(rtext);
		}
		cJSON_Delete(j);
	}
	CHECKF(r == d->n_rows && r >= 4, "%s: %zu expected rows, %zu loaded", tokname, r, d->n_rows);
done:
	lora_data_free(d);
	lora_chat_free(&ch);
	lora_tok_free(tok);
	free(rp);
	free(ep);
	free(text);
}

TEST(text_and_prompt_rows_gpt2) { compare("gpt2", "tok/data/rows_plain.jsonl", "tok/data/expect_gpt2.jsonl", 0); }
TEST(text_and_prompt_rows_llama3) { compare("llama3", "tok/data/rows_plain.jsonl", "tok/data/expect_llama3.jsonl", 0); }
TEST(text_and_prompt_rows_spm) { compare("spm", "tok/data/rows_plain.jsonl", "tok/data/expect_spm.jsonl", 0); }
TEST(text_and_prompt_rows_qwen2) { compare("qwen2", "tok/data/rows_plain.jsonl", "tok/data/expect_qwen2.jsonl", 0); }
TEST(chat_chatml) { compare("chatml", "tok/data/rows_chat.jsonl", "tok/data/chat_chatml.jsonl", 1); }
TEST(chat_chatml_default_system_qwen2) { compare("qwen2", "tok/data/rows_chat.jsonl", "tok/data/chat_qwen2.jsonl", 1); }
TEST(chat_llama3) { compare("llama3", "tok/data/rows_chat.jsonl", "tok/data/chat_llama3.jsonl", 1); }

int main(void)
{
	RUN(text_and_prompt_rows_gpt2);
	RUN(text_and_prompt_rows_llama3);
	RUN(text_and_prompt_rows_spm);
	RUN(text_and_prompt_rows_qwen2);
	RUN(chat_chatml);
	RUN(chat_chatml_default_system_qwen2);
	RUN(chat_llama3);
	return t_done();
}
