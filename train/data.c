/*
 * data.c - JSONL rows to token ids and labels, and the batcher (see data.h).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "libadapter/base/buf.h"
#include "libadapter/base/fsutil.h"
#include "train/data.h"

#define DATA_FILE_MAX ((size_t)1 << 40)

/* ================================================================ rows */

struct builder {
	struct lora_dataset *d;
	size_t cap_tok, cap_row;
};

static int builder_reserve(struct builder *b, size_t ntok)
{
	struct lora_dataset *d = b->d;
	size_t have = d->off[d->n_rows];

	if (have + ntok > b->cap_tok) {
		size_t cap = b->cap_tok ? b->cap_tok : 4096;
		int32_t *ids, *lab;
		while (cap < have + ntok)
			cap *= 2;
		ids = realloc(d->ids, cap * sizeof(*ids));
		if (!ids)
			return -1;
		d->ids = ids;
		lab = realloc(d->labels, cap * sizeof(*lab));
		if (!lab)
			return -1;
		d->labels = lab;
		b->cap_tok = cap;
	}
	if (d->n_rows + 2 > b->cap_row) {
		size_t cap = b->cap_row ? b->cap_row * 2 : 256;
		size_t *off = realloc(d->off, cap * sizeof(*off)), *line;
		if (!off)
			return -1;
		d->off = off;
		line = realloc(d->line, cap * sizeof(*line));
		if (!line)
			return -1;
		d->line = line;
		b->cap_row = cap;
	}
	return 0;
}

/* A row being built: ids + labels. */
struct row {
	int32_t *ids, *lab;
	size_t n, cap;
};

static int row_push(struct row *r, int32_t id, int32_t lab)
{
	if (r->n == r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 256;
		int32_t *a = realloc(r->ids, cap * sizeof(*a)), *b;
		if (!a)
			return -1;
		r->ids = a;
		b = realloc(r->lab, cap * sizeof(*b));
		if (!b)
			return -1;
		r->lab = b;
		r->cap = cap;
	}
	r->ids[r->n] = id;
	r->lab[r->n++] = lab;
	return 0;
}

/* Bad-row messages are written into `why` (the caller adds FILE:LINE). */
#define BAD(...) (snprintf(why, whylen, __VA_ARGS__), 1)

/*
 * Encode `text` and label it: prefix specials (BOS) no loss; a text token
 * has a loss when its start lies in one of the spans (NULL spans: all);
 * suffix specials (EOS from the post-processor) have a loss.
 */
static int encode_labeled(const struct lora_data_opts *o, const char *text, size_t len, unsigned flags,
			  const struct lora_span *sp, size_t nsp, int add_eos, struct row *r, char *why,
			  size_t whylen, struct lora_err *err)
{
	struct lora_tokens t = LORA_TOKENS_INIT;
	struct lora_err e2 = { 0 };
	int seen_text = 0, rc = 0, ends_eos = 0;
	int32_t eos = lora_tok_eos(o->tok);

	if (lora_tok_encode(o->tok, text, len, flags, &t, &e2) < 0) {
		lora_tokens_free(&t);
		if (strstr(e2.msg, "out of memory"))
			return lora_errf(err, "out of memory");
		return BAD("%.300s", e2.msg);
	}
	for (size_t i = 0; i < t.n && !rc; i++) {
		int loss;
		if (t.start[i] < 0) {
			loss = seen_text;
		} else {
			seen_text = 1;
			loss = !sp;
			for (size_t k = 0; k < nsp && !loss; k++)
				loss = (size_t)t.start[i] >= sp[k].start && (size_t)t.start[i] < sp[k].end;
		}
		rc = row_push(r, t.ids[i], loss ? t.ids[i] : LORA_IGNORE);
	}
	ends_eos = t.n && t.ids[t.n - 1] == eos && t.start[t.n - 1] < 0;
	if (!rc && add_eos && eos >= 0 && !ends_eos)
		rc = row_push(r, eos, eos);
	lora_tokens_free(&t);
	return rc ? lora_errf(err, "out of memory") : 0;
}

static int row_text(const struct lora_data_opts *o, const cJSON *v, struct row *r, char *why, size_t whylen,
		    struct lora_err *err)
{
	if (!cJSON_IsString(v))
		return BAD("'text' is not a string");
	if (!*v->valuestring)
		return BAD("'text' is empty");
	return encode_labeled(o, v->valuestring, strlen(v->valuestring), LORA_TOK_ADD_SPECIAL, NULL, 0, !o->no_eos,
			      r, why, whylen, err);
}

static int row_prompt(const struct lora_data_opts *o, const cJSON *p, const cJSON *c, struct row *r, char *why,
		      size_t whylen, struct lora_err *err)
{
	struct lora_buf b = LORA_BUF_INIT;
	struct lora_span sp;
	int rc;

	if (!cJSON_IsString(p) || !cJSON_IsString(c))
		return BAD("'prompt' and 'completion' must both be strings");
	if (!*c->valuestring)
		return BAD("'completion' is empty");
	lora_buf_puts(&b, p->valuestring);
	sp.start = b.len;
	lora_buf_puts(&b, c->valuestring);
	sp.end = b.len;
	if (b.oom) {
		lora_buf_free(&b);
		return lora_errf(err, "out of memory");
	}
	rc = encode_labeled(o, b.data, b.len, LORA_TOK_ADD_SPECIAL, &sp, 1, !o->no_eos, r, why, whylen, err);
	lora_buf_free(&b);
	return rc;
}

static int row_chat(const struct lora_data_opts *o, const cJSON *msgs, const cJSON *tools, struct row *r, char *why,
		    size_t whylen, struct lora_err *err)
{
	struct lora_chat_msg *m;
	struct lora_buf text = LORA_BUF_INIT;
	struct lora_span *sp = NULL;
	struct lora_err e2 = { 0 };
	size_t n, nsp = 0, i = 0, n_asst = 0;
	const cJSON *e;
	int rc;

	if (!cJSON_IsArray(msgs) || !(n = (size_t)cJSON_GetArraySize(msgs)))
		return BAD("'messages' is not a non-empty array");
	if (cJSON_IsNull(tools))
		tools = NULL;
	if (tools && !cJSON_IsArray(tools))
		return BAD("'tools' is not an array of tool schemas");
	if (!o->chat)
		return BAD("{\"messages\"} rows need a chat template: %s",
			   o->chat_error ? o->chat_error : "none was given");
	m = calloc(n, sizeof(*m));
	if (!m)
		return lora_errf(err, "out of memory");
	cJSON_ArrayForEach(e, msgs) {
		const cJSON *role = cJSON_GetObjectItemCaseSensitive(e, "role");
		const cJSON *content = cJSON_GetObjectItemCaseSensitive(e, "content");
		/* a tool call's content may be null or absent, as OpenAI-style rows write it */
		int tool_call = cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(e, "tool_calls")) &&
				(!content || cJSON_IsNull(content));
		if (!cJSON_IsObject(e) || !cJSON_IsString(role) || (!cJSON_IsString(content) && !tool_call)) {
			free(m);
			return BAD("message %zu needs \"role\" and \"content\" strings", i + 1);
		}
		if (strcmp(role->valuestring, "system") && strcmp(role->valuestring, "user") &&
		    strcmp(role->valuestring, "assistant") && strcmp(role->valuestring, "tool")) {
			free(m);
			return BAD("message %zu: role '%.40s' is not system, user, assistant or tool", i + 1,
				   role->valuestring);
		}
		m[i].role = role->valuestring;
		m[i].json = e;
		m[i++].content = tool_call ? NULL : content->valuestring;
		n_asst += !strcmp(role->valuestring, "assistant");
	}
	if (!n_asst) {
		free(m);
		return BAD("no assistant message (nothing to learn)");
	}
	if (lora_chat_render_tools(o->chat, m, n, tools, 0, &text, &sp, &nsp, &e2) < 0) {
		free(m);
		lora_buf_free(&text);
		return strstr(e2.msg, "out of memory") ? lora_errf(err, "out of memory") : BAD("%.300s", e2.msg);
	}
	rc = encode_labeled(o, text.data, text.len, 0, sp, nsp, 0, r, why, whylen, err);
	free(m);
	free(sp);
	lora_buf_free(&text);
	return rc;
}

static int row_tokens(const struct lora_data_opts *o, const cJSON *ids, const cJSON *labels, struct row *r,
		      char *why, size_t whylen, struct lora_err *err)
{
	int32_t vocab = o->vocab_size ? o->vocab_size : o->tok ? lora_tok_vocab_size(o->tok) : INT32_MAX;
	const cJSON *e, *l;
	size_t n, i = 0;

	if (!cJSON_IsArray(ids) || !(n = (size_t)cJSON_GetArraySize(ids)))
		return BAD("'input_ids' is not a non-empty array");
	if (labels && !cJSON_IsNull(labels) && !cJSON_IsArray(labels))
		return BAD("'labels' is not an array as long as 'input_ids' (%zu)", n);
	if (labels && cJSON_IsArray(labels) && (size_t)cJSON_GetArraySize(labels) != n)
		return BAD("'labels' is not an array as long as 'input_ids' (%zu): %d labels for %zu input_ids", n,
			   cJSON_GetArraySize(labels), n);
	l = labels && cJSON_IsArray(labels) ? labels->child : NULL;
	cJSON_ArrayForEach(e, ids) {
		double v = cJSON_IsNumber(e) ? e->valuedouble : -1, lv;
		if (!cJSON_IsNumber(e) || v != floor(v) || v < 0 || v >= vocab)
			return BAD("input_ids[%zu] is not a token id below %d", i, vocab);
		lv = v;
		if (l) {
			lv = cJSON_IsNumber(l) ? l->valuedouble : -2;
			if (lv != LORA_IGNORE && (lv != floor(lv) || lv < 0 || lv >= vocab))
				return BAD("labels[%zu] is neither -100 nor a token id below %d", i, vocab);
			l = l->next;
		}
		if (row_push(r, (int32_t)v, (int32_t)lv) < 0)
			return lora_errf(err, "out of memory");
		i++;
	}
	return 0;
}

static const char *const shape_keys[] = { "text", "prompt", "messages", "input_ids" };

/*
 * One line: 0 and a row in r; 1 and a reason in why (bad row); -1 on a real
 * error (out of memory).
 */
static int parse_row(const struct lora_data_opts *o, const char *line, size_t len, struct row *r,
		     enum lora_row_kind *kind, char *why, size_t whylen, struct lora_err *err)
{
	cJSON *j = cJSON_ParseWithLength(line, len);
	const cJSON *k[4];
	int nk = 0, rc;
	long has_loss = 0;

	r->n = 0;
	if (!j) {
		const char *at = cJSON_GetErrorPtr();
		if (at && at >= line && at <= line + len)
			return BAD("not valid JSON (at column %zu)", (size_t)(at - line) + 1);
		return BAD("not valid JSON");
	}
	if (!cJSON_IsObject(j)) {
		cJSON_Delete(j);
		return BAD("not a JSON object");
	}
	for (int i = 0; i < 4; i++)
		nk += (k[i] = cJSON_GetObjectItemCaseSensitive(j, shape_keys[i])) != NULL;
	if (!k[1] && cJSON_GetObjectItemCaseSensitive(j, "completion"))
		rc = BAD("'completion' without 'prompt'");
	else if (nk == 0)
		rc = BAD("no \"text\", \"prompt\"/\"completion\", \"messages\" or \"input_ids\"");
	else if (nk > 1)
		rc = BAD("more than one of \"text\", \"prompt\", \"messages\", \"input_ids\"");
	else if (!o->tok && !k[3])
		rc = BAD("%s rows need a tokenizer", k[0] ? "{\"text\"}" : k[1] ? "{\"prompt\"}" : "{\"messages\"}");
	else if (k[0])
		*kind = LORA_ROW_TEXT, rc = row_text(o, k[0], r, why, whylen, err);
	else if (k[1])
		*kind = LORA_ROW_PROMPT,
		rc = row_prompt(o, k[1], cJSON_GetObjectItemCaseSensitive(j, "completion"), r, why, whylen, err);
	else if (k[2])
		*kind = LORA_ROW_CHAT,
		rc = row_chat(o, k[2], cJSON_GetObjectItemCaseSensitive(j, "tools"), r, why, whylen, err);
	else
		*kind = LORA_ROW_TOKENS,
		rc = row_tokens(o, k[3], cJSON_GetObjectItemCaseSensitive(j, "labels"), r, why, whylen, err);
	cJSON_Delete(j);
	if (rc)
		return rc;
	for (size_t i = 0; i < r->n; i++) {
		if (o->vocab_size && r->ids[i] >= o->vocab_size)
			return BAD("token id %d is outside the model's vocabulary (%d)", r->ids[i], o->vocab_size);
		has_loss += r->lab[i] != LORA_IGNORE;
	}
	if (!has_loss && !o->keep_unlabelled)
		return BAD("no token to learn from (every label is -100)");
	return 0;
}

void lora_data_free(struct lora_dataset *d)
{
	if (!d)
		return;
	free(d->off);
	free(d->ids);
	free(d->labels);
	free(d->line);
	free(d);
}

static struct lora_dataset *data_new(void)
{
	struct lora_dataset *d = calloc(1, sizeof(*d));
	if (d && !(d->off = calloc(1, sizeof(*d->off)))) {
		free(d);
		return NULL;
	}
	return d;
}

int lora_data_parse(const char *buf, size_t len, const char *label, const struct lora_data_opts *o,
		    struct lora_dataset **out, struct lora_err *err)
{
	struct lora_dataset *d = data_new();
	struct builder b = { d, 0, 1 };
	struct row r = { 0 };
	char why[400];
	size_t pos = 0, lineno = 0;

	*out = NULL;
	if (!d)
		return lora_errf(err, "out of memory");
	while (pos < len) {
		const char *line = buf + pos, *nl = memchr(line, '\n', len - pos);
		size_t n = nl ? (size_t)(nl - line) : len - pos, blank = 1;
		enum lora_row_kind kind = LORA_ROW_TEXT;
		int rc;

		pos += n + (nl != NULL);
		lineno++;
		for (size_t i = 0; i < n && blank; i++)
			blank = line[i] == ' ' || line[i] == '\t' || line[i] == '\r';
		if (blank)
			continue;
		rc = parse_row(o, line, n, &r, &kind, why, sizeof(why), err);
		if (rc < 0)
			goto fail;
		if (rc > 0) {
#define AT (o->line_words ? "'%s' line %zu: %s" : "%s:%zu: %s")
			if (!o->skip_bad_rows) {
				lora_errf(err, AT, label, lineno, why);
				goto fail;
			}
			if (!d->n_skipped++)
				snprintf(d->first_skip, sizeof(d->first_skip), AT, label, lineno, why);
#undef AT
			continue;
		}
		if (builder_reserve(&b, r.n) < 0) {
			lora_errf(err, "out of memory");
			goto fail;
		}
		memcpy(d->ids + d->off[d->n_rows], r.ids, r.n * sizeof(*r.ids));
		memcpy(d->labels + d->off[d->n_rows], r.lab, r.n * sizeof(*r.lab));
		d->line[d->n_rows] = lineno;
		d->off[d->n_rows + 1] = d->off[d->n_rows] + r.n;
		d->n_rows++;
		d->n_kind[kind]++;
		d->n_tokens += r.n;
		for (size_t i = 0; i < r.n; i++)
			d->n_loss_tokens += r.lab[i] != LORA_IGNORE;
	}
	d->n_lines = lineno;
	if (!d->n_rows) {
		if (d->n_skipped)
			lora_errf(err, "%s: no usable rows (%zu skipped; the first: %s)", label, d->n_skipped,
				  d->first_skip);
		else
			lora_errf(err, "%s: no rows", label);
		goto fail;
	}
	free(r.ids);
	free(r.lab);
	*out = d;
	return 0;
fail:
	free(r.ids);
	free(r.lab);
	lora_data_free(d);
	return -1;
}

int lora_data_load(const char *path, const struct lora_data_opts *o, struct lora_dataset **out,
		   struct lora_err *err)
{
	char *buf = NULL;
	size_t len = 0;
	int rc;

	*out = NULL;
	if (lora_read_file(path, DATA_FILE_MAX, &buf, &len, err) < 0)
		return -1;
	rc = lora_data_parse(buf, len, path, o, out, err);
	free(buf);
	return rc;
}

/* ============================================================= shuffling */

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

static uint64_t next_below(uint64_t *s, uint64_t m)
{
	uint64_t lim = UINT64_MAX - (UINT64_MAX % m + 1) % m;   /* largest multiple of m, minus 1 */
	uint64_t r;
	do
		r = splitmix64(s);
	while (r > lim);
	return r % m;
}

void lora_data_order(size_t n, uint64_t seed, uint64_t epoch, size_t *order)
{
	uint64_t s = seed ^ (0x6A09E667F3BCC909ULL * (epoch + 1));
	for (size_t i = 0; i < n; i++)
		order[i] = i;
	for (size_t i = n; i > 1; i--) {
		size_t j = (size_t)next_below(&s, i), t = order[i - 1];
		order[i - 1] = order[j];
		order[j] = t;
	}
}

/* Copy the rows with keep[r] == want into a new dataset. */
static struct lora_dataset *subset(const struct lora_dataset *d, const unsigned char *keep, int want)
{
	struct lora_dataset *s = data_new();
	struct builder b = { s, 0, 1 };

	if (!s)
		return NULL;
	for (size_t r = 0; r < d->n_rows; r++) {
		size_t a = d->off[r], n = d->off[r + 1] - a;
		if (keep[r] != want)
			continue;
		if (builder_reserve(&b, n) < 0) {
			lora_data_free(s);
			return NULL;
		}
		memcpy(s->ids + s->off[s->n_rows], d->ids + a, n * sizeof(*d->ids));
		memcpy(s->labels + s->off[s->n_rows], d->labels + a, n * sizeof(*d->labels));
		s->line[s->n_rows] = d->line[r];
		s->off[s->n_rows + 1] = s->off[s->n_rows] + n;
		s->n_rows++;
		s->n_tokens += n;
		for (size_t i = 0; i < n; i++)
			s->n_loss_tokens += d->labels[a + i] != LORA_IGNORE;
	}
	return s;
}

int lora_data_split(struct lora_dataset *d, double frac, uint64_t seed, struct lora_dataset **eval,
		    struct lora_err *err)
{
	size_t k, *order;
	unsigned char *pick;
	struct lora_dataset *e, *t;

	*eval = NULL;
	if (!(frac > 0 && frac < 1))
		return lora_errc(err, LORA_EUSAGE, "eval split must be between 0 and 1 (got %g)", frac);
	if (d->n_rows < 2)
		return lora_errf(err, "cannot split %zu row(s) into train and eval sets", d->n_rows);
	k = (size_t)llround(frac * (double)d->n_rows);
	if (k < 1)
		k = 1;
	if (k > d->n_rows - 1)
		k = d->n_rows - 1;
	order = malloc(d->n_rows * sizeof(*order));
	pick = calloc(d->n_rows, 1);
	if (!order || !pick) {
		free(order);
		free(pick);
		return lora_errf(err, "out of memory");
	}
	lora_data_order(d->n_rows, seed, UINT64_MAX, order);
	for (size_t i = 0; i < k; i++)
		pick[order[i]] = 1;
	e = subset(d, pick, 1);
	t = subset(d, pick, 0);
	free(order);
	free(pick);
	if (!e || !t) {
		lora_data_free(e);
		lora_data_free(t);
		return lora_errf(err, "out of memory");
	}
	/* d keeps its counters of the whole file; its rows become the train side */
	free(d->off);
	free(d->ids);
	free(d->labels);
	free(d->line);
	d->off = t->off;
	d->ids = t->ids;
	d->labels = t->labels;
	d->line = t->line;
	d->n_rows = t->n_rows;
	d->n_tokens = t->n_tokens;
	d->n_loss_tokens = t->n_loss_tokens;
	free(t);
	e->n_lines = d->n_lines;
	*eval = e;
	return 0;
}

/* ============================================================== batches */

struct lora_batcher {
	const struct lora_dataset *d;
	struct lora_batcher_opts o;
	size_t *order;             /* (n_rows) this epoch's order */
	uint64_t order_epoch;      /* the epoch `order` was made for */
	struct lora_data_pos pos;
	uint64_t truncated;
	int done;                  /* one_pass: the epoch is used up */
};

int lora_data_batch_init(struct lora_data_batch *b, int B, int T, struct lora_err *err)
{
	memset(b, 0, sizeof(*b));
	if (B < 1 || T < 2 || (size_t)B * (size_t)T > ((size_t)1 << 34))
		return lora_errc(err, LORA_EUSAGE, "bad batch shape %d x %d", B, T);
	b->B = B;
	b->T = T;
	b->ids = malloc((size_t)B * T * sizeof(*b->ids));
	b->labels = malloc((size_t)B * T * sizeof(*b->labels));
	b->len = malloc((size_t)B * sizeof(*b->len));
	if (!b->ids || !b->labels || !b->len) {
		lora_data_batch_free(b);
		return lora_errf(err, "out of memory");
	}
	return 0;
}

void lora_data_batch_free(struct lora_data_batch *b)
{
	free(b->ids);
	free(b->labels);
	free(b->len);
	memset(b, 0, sizeof(*b));
}

static void make_order(struct lora_batcher *bt, uint64_t epoch)
{
	size_t n = bt->d->n_rows;
	if (bt->o.shuffle) {
		lora_data_order(n, bt->o.seed, epoch, bt->order);
	} else {
		for (size_t i = 0; i < n; i++)
			bt->order[i] = i;
	}
	bt->order_epoch = epoch;
}

int lora_batcher_new(const struct lora_dataset *d, const struct lora_batcher_opts *o, struct lora_batcher **out,
		     struct lora_err *err)
{
	struct lora_batcher *bt;

	*out = NULL;
	if (o->batch < 1 || o->seq_len < 2)
		return lora_errc(err, LORA_EUSAGE, "batch must be >= 1 and seq-len >= 2");
	if (!d->n_rows || !d->n_tokens)
		return lora_errf(err, "the dataset is empty");
	bt = calloc(1, sizeof(*bt));
	if (!bt || !(bt->order = malloc(d->n_rows * sizeof(*bt->order)))) {
		free(bt);
		return lora_errf(err, "out of memory");
	}
	bt->d = d;
	bt->o = *o;
	make_order(bt, 0);
	*out = bt;
	return 0;
}

void lora_batcher_free(struct lora_batcher *bt)
{
	if (!bt)
		return;
	free(bt->order);
	free(bt);
}

void lora_batcher_get_pos(const struct lora_batcher *bt, struct lora_data_pos *pos)
{
	*pos = bt->pos;
}

int lora_batcher_set_pos(struct lora_batcher *bt, const struct lora_data_pos *pos, struct lora_err *err)
{
	const struct lora_dataset *d = bt->d;
	int bad = pos->row > d->n_rows || (pos->row == d->n_rows && pos->tok);

	if (!bad && pos->row < d->n_rows) {
		/* tok counts tokens of the row at `row` in that epoch's order */
		size_t r;
		make_order(bt, pos->epoch);
		r = bt->order[pos->row];
		bad = pos->tok >= d->off[r + 1] - d->off[r];
	}
	if (bad) {
		make_order(bt, bt->pos.epoch);
		return lora_errf(err, "data position (epoch %llu, row %llu, token %llu) does not fit this data "
				      "(%zu rows); was the data file changed?", (unsigned long long)pos->epoch,
				 (unsigned long long)pos->row, (unsigned long long)pos->tok, d->n_rows);
	}
	bt->pos = *pos;
	bt->done = 0;
	if (pos->row == d->n_rows) {   /* saved at the very end of an epoch */
		if (bt->o.one_pass) {
			bt->done = 1;
		} else {
			bt->pos.epoch++;
			bt->pos.row = 0;
		}
	}
	make_order(bt, bt->pos.epoch);
	return 0;
}

uint64_t lora_batcher_epoch_batches(const struct lora_batcher *bt)
{
	uint64_t per = (uint64_t)bt->o.batch * (bt->o.no_pack ? 1 : (uint64_t)bt->o.seq_len);
	uint64_t n = bt->o.no_pack ? bt->d->n_rows : bt->d->n_tokens;
	return (n + per - 1) / per;
}

uint64_t lora_batcher_truncated(const struct lora_batcher *bt)
{
	return bt->truncated;
}

/* Move to the next row; at the end of the order, to the next epoch (or stop). */
static int advance_row(struct lora_batcher *bt)
{
	bt->pos.row++;
	bt->pos.tok = 0;
	if (bt->pos.row < bt->d->n_rows)
		return 1;
	if (bt->o.one_pass) {
		bt->done = 1;
		return 0;
	}
	bt->pos.epoch++;
	bt->pos.row = 0;
	make_order(bt, bt->pos.epoch);
	return 1;
}

/* Fill one sequence of T tokens from the stream; returns the tokens filled. */
static int fill_packed(struct lora_batcher *bt, int32_t *ids, int32_t *lab, int T)
{
	const struct lora_dataset *d = bt->d;
	int n = 0;

	while (n < T && !bt->done) {
		size_t r = bt->order[bt->pos.row];
		size_t a = d->off[r] + bt->pos.tok, left = d->off[r + 1] - a;
		size_t take = left < (size_t)(T - n) ? left : (size_t)(T - n);
		memcpy(ids + n, d->ids + a, take * sizeof(*ids));
		memcpy(lab + n, d->labels + a, take * sizeof(*lab));
		n += (int)take;
		bt->pos.tok += take;
		if (take == left)
			advance_row(bt);
	}
	return n;
}

static int fill_row(struct lora_batcher *bt, int32_t *ids, int32_t *lab, int T)
{
	const struct lora_dataset *d = bt->d;
	size_t r, a, n;

	if (bt->done)
		return 0;
	r = bt->order[bt->pos.row];
	a = d->off[r];
	n = d->off[r + 1] - a;
	if (n > (size_t)T) {
		n = (size_t)T;
		bt->truncated++;
	}
	memcpy(ids, d->ids + a, n * sizeof(*ids));
	memcpy(lab, d->labels + a, n * sizeof(*lab));
	advance_row(bt);
	return (int)n;
}

int lora_batcher_next(struct lora_batcher *bt, struct lora_data_batch *b, struct lora_err *err)
{
	int B = bt->o.batch, T = bt->o.seq_len, any = 0;

	if (b->B != B || b->T != T)
		return lora_errf(err, "batch is %d x %d, the batcher makes %d x %d", b->B, b->T, B, T);
	if (bt->done)
		return 0;
	b->n_targets = 0;
	for (int i = 0; i < B; i++) {
		int32_t *ids = b->ids + (size_t)i * T, *lab = b->labels + (size_t)i * T;
		int n = bt->o.no_pack ? fill_row(bt, ids, lab, T) : fill_packed(bt, ids, lab, T);
		for (int t = n; t < T; t++) {
			ids[t] = bt->o.pad_id;
			lab[t] = LORA_IGNORE;
		}
		b->len[i] = n;
		any |= n > 0;
		for (int t = 1; t < n; t++)
			b->n_targets += lab[t] != LORA_IGNORE;
	}
	return any ? 1 : 0;
}
