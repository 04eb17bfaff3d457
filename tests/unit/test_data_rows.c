/*
 * test_data_rows.c - bad rows, skipping, pre-tokenized rows, the shuffle,
 * the eval split, packing and padding, and resuming from a saved position.
 */
#include "tests/t.h"
#include "train/data.h"

static struct lora_tok *gpt2(void)
{
	char *dir = t_fixture("tok/gpt2");
	struct lora_tok *tok = NULL;
	struct lora_err err = { 0 };
	CHECKF(lora_tok_load(dir, &tok, &err) == 0, "%s", err.msg);
	free(dir);
	return tok;
}

static int parse(const char *s, const struct lora_data_opts *o, struct lora_dataset **d, struct lora_err *err)
{
	return lora_data_parse(s, strlen(s), "d.jsonl", o, d, err);
}

TEST(bad_rows_name_line_and_reason)
{
	struct lora_tok *tok = gpt2();
	struct lora_data_opts o = { .tok = tok };
	static const struct { const char *rows, *want; } c[] = {
		{ "{\"text\":\"ok\"}\n{\"text\": 5}\n", "d.jsonl:2: 'text' is not a string" },
		{ "{\"text\":\"ok\"}\n\n{\"text\":\"a\"\n", "d.jsonl:3: not valid JSON" },
		{ "[1,2]\n", "d.jsonl:1: not a JSON object" },
		{ "{\"text\":\"\"}\n", "d.jsonl:1: 'text' is empty" },
		{ "{\"txt\":\"a\"}\n", "d.jsonl:1: no \"text\"" },
		{ "{\"text\":\"a\",\"messages\":[]}\n", "d.jsonl:1: more than one of" },
		{ "{\"completion\":\"a\"}\n", "d.jsonl:1: 'completion' without 'prompt'" },
		{ "{\"prompt\":\"a\",\"completion\":\"\"}\n", "d.jsonl:1: 'completion' is empty" },
		{ "{\"prompt\":\"a\"}\n", "d.jsonl:1: 'prompt' and 'completion' must both be strings" },
		{ "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}\n", "d.jsonl:1: {\"messages\"} rows need a chat template: no template here" },
		{ "{\"messages\":[]}\n", "d.jsonl:1: 'messages' is not a non-empty array" },
		{ "{\"input_ids\":[1,2],\"labels\":[1]}\n", "d.jsonl:1: 'labels' is not an array as long as 'input_ids' (2)" },
		{ "{\"input_ids\":[1,99999999]}\n", "d.jsonl:1: input_ids[1] is not a token id below" },
		{ "{\"input_ids\":[1,2.5]}\n", "d.jsonl:1: input_ids[1]" },
		{ "{\"input_ids\":[1,2],\"labels\":[-100,-7]}\n", "d.jsonl:1: labels[1] is neither -100 nor a token id" },
		{ "{\"input_ids\":[1,2],\"labels\":[-100,-100]}\n", "d.jsonl:1: no token to learn from" },
		{ "\n  \n", "d.jsonl: no rows" },
	};
	o.chat_error = "no template here";
	for (size_t i = 0; tok && i < sizeof(c) / sizeof(c[0]); i++) {
		struct lora_dataset *d = NULL;
		struct lora_err err = { 0 };
		CHECKF(parse(c[i].rows, &o, &d, &err) < 0 && !d, "case %zu loaded", i);
		CHECKF(!strncmp(err.msg, c[i].want, strlen(c[i].want)), "case %zu: '%s' (want '%s')", i, err.msg, c[i].want);
	}
	lora_tok_free(tok);
}

TEST(ids_outside_the_model_vocab_are_bad_rows)
{
	struct lora_tok *tok = gpt2();
	struct lora_data_opts o = { .tok = tok, .vocab_size = 100 };
	struct lora_dataset *d = NULL;
	struct lora_err err = { 0 };

	/* the model's embedding is smaller than the tokenizer: "ab" is token 414 */
	CHECK(parse("{\"text\":\"ab\"}\n{\"text\":\"zzzz\"}\n", &o, &d, &err) < 0);
	CHECKF(strstr(err.msg, "d.jsonl:1: token id") && strstr(err.msg, "outside the model's vocabulary (100)"), "%s",
	       err.msg);
	o.vocab_size = 0;
	CHECKF(parse("{\"text\":\"ab\"}\n", &o, &d, &err) == 0, "%s", err.msg);
	lora_data_free(d);
	lora_tok_free(tok);
}

TEST(chat_rows_with_a_template)
{
	struct lora_tok *tok = gpt2();
	struct lora_chat ch;
	struct lora_data_opts o = { .tok = tok, .chat = &ch };
	struct lora_dataset *d = NULL;
	struct lora_err err = { 0 };

	CHECK(lora_chat_by_name("chatml", NULL, &ch, &err) == 0);
	CHECK(parse("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}\n", &o, &d, &err) < 0);
	CHECKF(strstr(err.msg, "d.jsonl:1: no assistant message"), "%s", err.msg);
	CHECK(parse("{\"messages\":[{\"role\":\"robot\",\"content\":\"hi\"}]}\n", &o, &d, &err) < 0);
	CHECKF(strstr(err.msg, "d.jsonl:1:") && strstr(err.msg, "role 'robot'"), "%s", err.msg);
	CHECK(parse("{\"messages\":[{\"role\":\"user\"}]}\n", &o, &d, &err) < 0);
	CHECKF(strstr(err.msg, "message 1 needs"), "%s", err.msg);
	CHECK(parse("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"yo\"}]}",
		    &o, &d, &err) == 0);
	if (d)
		CHECK(d->n_rows == 1 && d->n_kind[LORA_ROW_CHAT] == 1 && d->n_loss_tokens > 0);
	lora_data_free(d);
	lora_chat_free(&ch);
	lora_tok_free(tok);
}

TEST(skip_bad_rows_counts_them)
{
	struct lora_tok *tok = gpt2();
	struct lora_data_opts o = { .tok = tok, .skip_bad_rows = 1 };
	struct lora_dataset *d = NULL;
	struct lora_err err = { 0 };
	const char *rows = "{\"text\":\"one\"}\nnot json\n{\"text\":\"two\"}\n\n{\"text\":7}\n{\"prompt\":\"a\",\"completion\":\"b\"}\n";

	CHECKF(parse(rows, &o, &d, &err) == 0, "%s", err.msg);
	if (d) {
		CHECK(d->n_rows == 3 && d->n_skipped == 2 && d->n_lines == 6);
		CHECKF(!strncmp(d->first_skip, "d.jsonl:2: not valid JSON", 25), "%s", d->first_skip);
		CHECK(d->line[0] == 1 && d->line[1] == 3 && d->line[2] == 6);
		CHECK(d->n_kind[LORA_ROW_TEXT] == 2 && d->n_kind[LORA_ROW_PROMPT] == 1);
	}
	lora_data_free(d);
	CHECK(parse("oops\n{]\n", &o, &d, &err) < 0);
	CHECKF(strstr(err.msg, "no usable rows (2 skipped; the first: d.jsonl:1: not valid JSON"), "%s", err.msg);
	lora_tok_free(tok);
}

TEST(pretokenized_rows_need_no_tokenizer)
{
	struct lora_data_opts o = { .vocab_size = 100 };
	struct lora_dataset *d = NULL;
	struct lora_err err = { 0 };

	CHECKF(parse("{\"input_ids\":[5,6,7],\"labels\":[-100,6,7]}\r\n{\"input_ids\":[9,8]}\n", &o, &d, &err) == 0,
	       "%s", err.msg);
	if (d) {
		CHECK(d->n_rows == 2 && d->off[2] == 5 && d->n_tokens == 5 && d->n_loss_tokens == 4);
		CHECK(d->ids[0] == 5 && d->labels[0] == LORA_IGNORE && d->labels[2] == 7);
		CHECK(d->ids[3] == 9 && d->labels[3] == 9 && d->labels[4] == 8);
	}
	lora_data_free(d);
	CHECK(parse("{\"input_ids\":[5,100]}\n", &o, &d, &err) < 0);
	CHECK(parse("{\"text\":\"hello\"}\n", &o, &d, &err) < 0);
	CHECKF(strstr(err.msg, "d.jsonl:1: {\"text\"} rows need a tokenizer"), "%s", err.msg);
}

TEST(order_matches_the_documented_prng)
{
	/* from tests/oracle/tok_data_order.py */
	static const size_t e0[] = { 1, 2, 6, 4, 0, 3, 9, 8, 7, 5 }, e1[] = { 0, 5, 2, 8, 4, 6, 7, 3, 9, 1 };
	static const size_t s0[] = { 5, 4, 6, 0, 3, 2, 1 }, sp[] = { 0, 9, 5, 8, 6, 4, 7, 2, 1, 3 };
	size_t o[10];
	lora_data_order(10, 42, 0, o);
	CHECK(!memcmp(o, e0, sizeof(e0)));
	lora_data_order(10, 42, 1, o);
	CHECK(!memcmp(o, e1, sizeof(e1)));
	lora_data_order(7, 0, 0, o);
	CHECK(!memcmp(o, s0, sizeof(s0)));
	lora_data_order(10, 42, UINT64_MAX, o);
	CHECK(!memcmp(o, sp, sizeof(sp)));
}

/* n rows of input_ids: row r is r+1 tokens of value 1000*(r+1) + i */
static struct lora_dataset *rows_of(int n)
{
	struct lora_buf b = LORA_BUF_INIT;
	struct lora_data_opts o = { 0 };
	struct lora_dataset *d = NULL;
	struct lora_err err = { 0 };
	for (int r = 0; r < n; r++) {
		lora_buf_puts(&b, "{\"input_ids\":[");
		for (int i = 0; i <= r; i++)
			lora_buf_printf(&b, "%s%d", i ? "," : "", 1000 * (r + 1) + i);
		lora_buf_puts(&b, "]}\n");
	}
	CHECKF(lora_data_parse(b.data, b.len, "rows", &o, &d, &err) == 0, "%s", err.msg);
	lora_buf_free(&b);
	return d;
}

TEST(eval_split_is_seeded_and_disjoint)
{
	struct lora_dataset *d = rows_of(10), *e = NULL;
	struct lora_err err = { 0 };
	size_t seen[11] = { 0 };

	if (!d)
		return;
	CHECK(lora_data_split(d, 0.2, 42, &e, &err) == 0);
	if (e) {
		/* rows 0 and 9 are the first two of the seed-42 "epoch UINT64_MAX" order */
		CHECK(e->n_rows == 2 && d->n_rows == 8);
		CHECK(e->ids[e->off[0]] == 1000 && e->ids[e->off[1]] == 10000);
		for (size_t r = 0; r < d->n_rows; r++)
			seen[d->ids[d->off[r]] / 1000]++;
		for (size_t r = 0; r < e->n_rows; r++)
			seen[e->ids[e->off[r]] / 1000]++;
		for (int k = 1; k <= 10; k++)
			CHECK(seen[k] == 1);
		CHECK(d->n_tokens + e->n_tokens == 55);
	}
	lora_data_free(e);
	CHECK(lora_data_split(d, 1.5, 1, &e, &err) < 0);
	lora_data_free(d);
}

TEST(packing_fills_every_sequence)
{
	struct lora_dataset *d = rows_of(10);   /* 55 tokens */
	struct lora_batcher_opts o = { .batch = 2, .seq_len = 8, .shuffle = 0 };
	struct lora_batcher *bt = NULL;
	struct lora_data_batch b;
	struct lora_err err = { 0 };
	int32_t stream[64];
	size_t k = 0;

	if (!d)
		return;
	CHECK(lora_batcher_new(d, &o, &bt, &err) == 0);
	CHECK(lora_data_batch_init(&b, 2, 8, &err) == 0);
	CHECK(lora_batcher_epoch_batches(bt) == 4);   /* ceil(55 / 16) */
	for (int s = 0; s < 4; s++) {
		CHECK(lora_batcher_next(bt, &b, &err) == 1);
		CHECK(b.len[0] == 8 && b.len[1] == 8);
		for (int i = 0; i < 16; i++)
			stream[k++] = b.ids[i];
	}
	/* file order, laid end to end: 1000, 2000 2001, 3000 3001 3002, ... then epoch 2 */
	CHECK(stream[0] == 1000 && stream[1] == 2000 && stream[2] == 2001 && stream[3] == 3000);
	CHECK(stream[54] == 10009 && stream[55] == 1000 && stream[56] == 2000);
	{
		struct lora_data_pos p;
		lora_batcher_get_pos(bt, &p);
		CHECK(p.epoch == 1 && p.row == 3 && p.tok == 3);   /* 64 - 55 = 9 = 1 + 2 + 3 + 3 */
	}
	lora_data_batch_free(&b);
	lora_batcher_free(bt);
	lora_data_free(d);
}

TEST(no_pack_pads_and_truncates)
{
	struct lora_dataset *d = rows_of(5);
	struct lora_batcher_opts o = { .batch = 2, .seq_len = 4, .no_pack = 1, .one_pass = 1, .pad_id = 7 };
	struct lora_batcher *bt = NULL;
	struct lora_data_batch b;
	struct lora_err err = { 0 };
	int n = 0;

	if (!d)
		return;
	CHECK(lora_batcher_new(d, &o, &bt, &err) == 0);
	CHECK(lora_data_batch_init(&b, 2, 4, &err) == 0);
	CHECK(lora_batcher_epoch_batches(bt) == 3);
	while (lora_batcher_next(bt, &b, &err) == 1) {
		if (n == 0) {
			CHECK(b.len[0] == 1 && b.len[1] == 2);
			CHECK(b.ids[0] == 1000 && b.ids[1] == 7 && b.labels[1] == LORA_IGNORE);
			CHECK(b.ids[4] == 2000 && b.ids[5] == 2001 && b.ids[6] == 7 && b.labels[6] == LORA_IGNORE);
			CHECK(b.n_targets == 1);
		}
		if (n == 2) {
			CHECK(b.len[0] == 4 && b.len[1] == 0);   /* row 5 cut to 4; nothing after it */
			CHECK(b.ids[3] == 5003 && b.ids[4] == 7 && b.labels[4] == LORA_IGNORE);
		}
		n++;
	}
	CHECK(n == 3 && lora_batcher_truncated(bt) == 1);
	lora_data_batch_free(&b);
	lora_batcher_free(bt);
	lora_data_free(d);
}

TEST(one_pass_eval_sees_every_token_once)
{
	struct lora_dataset *d = rows_of(10);
	struct lora_batcher_opts o = { .batch = 3, .seq_len = 5, .one_pass = 1, .pad_id = 0 };
	struct lora_batcher *bt = NULL;
	struct lora_data_batch b;
	struct lora_err err = { 0 };
	int64_t real = 0, batches = 0;

	if (!d)
		return;
	CHECK(lora_batcher_new(d, &o, &bt, &err) == 0);
	CHECK(lora_data_batch_init(&b, 3, 5, &err) == 0);
	while (lora_batcher_next(bt, &b, &err) == 1) {
		for (int i = 0; i < 3; i++)
			real += b.len[i];
		batches++;
	}
	CHECK(real == 55 && batches == 4 && (uint64_t)batches == lora_batcher_epoch_batches(bt));
	CHECK(lora_batcher_next(bt, &b, &err) == 0);
	lora_data_batch_free(&b);
	lora_batcher_free(bt);
	lora_data_free(d);
}

TEST(resume_from_a_position_is_identical)
{
	struct lora_dataset *d = rows_of(9);
	struct lora_batcher_opts o = { .batch = 2, .seq_len = 7, .shuffle = 1, .seed = 1234 };
	struct lora_batcher *a = NULL, *c = NULL;
	struct lora_data_batch ba, bc;
	struct lora_data_pos p;
	struct lora_err err = { 0 };
	int same = 1;

	if (!d)
		return;
	CHECK(lora_batcher_new(d, &o, &a, &err) == 0 && lora_batcher_new(d, &o, &c, &err) == 0);
	CHECK(lora_data_batch_init(&ba, 2, 7, &err) == 0 && lora_data_batch_init(&bc, 2, 7, &err) == 0);
	for (int s = 0; s < 5; s++)
		lora_batcher_next(a, &ba, &err);
	lora_batcher_get_pos(a, &p);
	CHECK(lora_batcher_set_pos(c, &p, &err) == 0);
	for (int s = 0; s < 20; s++) {   /* several epochs: each one's order differs */
		lora_batcher_next(a, &ba, &err);
		lora_batcher_next(c, &bc, &err);
		same &= !memcmp(ba.ids, bc.ids, 14 * sizeof(int32_t)) && !memcmp(ba.labels, bc.labels, 14 * sizeof(int32_t));
	}
	CHECK(same);
	p.row = 99;
	CHECK(lora_batcher_set_pos(c, &p, &err) < 0);
	CHECKF(strstr(err.msg, "does not fit"), "%s", err.msg);
	lora_data_batch_free(&ba);
	lora_data_batch_free(&bc);
	lora_batcher_free(a);
	lora_batcher_free(c);
	lora_data_free(d);
}

TEST(shuffled_epochs_are_permutations)
{
	struct lora_dataset *d = rows_of(6);   /* 21 tokens */
	struct lora_batcher_opts o = { .batch = 1, .seq_len = 21, .shuffle = 1, .seed = 7 };
	struct lora_batcher *bt = NULL;
	struct lora_data_batch b;
	struct lora_err err = { 0 };
	int64_t sum0 = 0, sum1 = 0, diff = 0;
	int32_t first[21];

	if (!d)
		return;
	CHECK(lora_batcher_new(d, &o, &bt, &err) == 0 && lora_data_batch_init(&b, 1, 21, &err) == 0);
	lora_batcher_next(bt, &b, &err);
	memcpy(first, b.ids, sizeof(first));
	for (int i = 0; i < 21; i++)
		sum0 += b.ids[i];
	lora_batcher_next(bt, &b, &err);
	for (int i = 0; i < 21; i++) {
		sum1 += b.ids[i];
		diff += b.ids[i] != first[i];
	}
	CHECK(sum0 == sum1 && sum0 == 1000 + 2 * 2000 + 1 + 3 * 3000 + 3 + 4 * 4000 + 6 + 5 * 5000 + 10 + 6 * 6000 + 15);
	CHECK(diff > 0);
	lora_data_batch_free(&b);
	lora_batcher_free(bt);
	lora_data_free(d);
}

int main(void)
{
	RUN(bad_rows_name_line_and_reason);
	RUN(ids_outside_the_model_vocab_are_bad_rows);
	RUN(chat_rows_with_a_template);
	RUN(skip_bad_rows_counts_them);
	RUN(pretokenized_rows_need_no_tokenizer);
	RUN(order_matches_the_documented_prng);
	RUN(eval_split_is_seeded_and_disjoint);
	RUN(packing_fills_every_sequence);
	RUN(no_pack_pads_and_truncates);
	RUN(one_pass_eval_sees_every_token_once);
	RUN(resume_from_a_position_is_identical);
	RUN(shuffled_epochs_are_permutations);
	return t_done();
}
