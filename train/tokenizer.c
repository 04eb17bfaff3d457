/*
 * tokenizer.c - Hugging Face tokenizer.json BPE: load, encode, decode.
 *
 * The pipeline mirrors `tokenizers` step by step, so the ids match it:
 *   1. split the text on added tokens that match the raw text (normalized=false)
 *   2. normalize each remaining piece, then split on normalized added tokens
 *   3. pre-tokenize each piece (regex splits, byte-level mapping, metaspace)
 *   4. run BPE on each pre-token: chars -> vocab ids (byte fallback / unk),
 *      then merge the adjacent pair of lowest rank until none is left
 *   5. post-process: BOS/EOS from the template or tokenizer_config.json
 * Every byte of a normalized string carries the offset of the input byte it
 * came from, so each token knows where it begins in the input (chat and
 * prompt/completion label masking use that).
 */
#define _GNU_SOURCE   /* memmem */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "libadapter/base/fsutil.h"
#include "train/tokenizer.h"
#include "train/tokenizer_int.h"

#define TOK_JSON_MAX ((size_t)1 << 30)   /* 1 GiB: far above any real tokenizer.json */

/* ============================================================ hash tables */

static uint64_t hash_bytes(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ULL;   /* FNV-1a */
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= 1099511628211ULL;
	}
	return h ^ (h >> 29);
}

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	return x ^ (x >> 33);
}

/* string -> id, open addressing; keys point into storage owned elsewhere */
struct strmap {
	const char **key;
	uint32_t *klen;
	int32_t *val;
	size_t cap;   /* power of two; 0 when empty */
	size_t n;
};

static int strmap_init(struct strmap *m, size_t n)
{
	size_t cap = 16;
	while (cap < n * 2 + 1)
		cap <<= 1;
	m->key = calloc(cap, sizeof(*m->key));
	m->klen = calloc(cap, sizeof(*m->klen));
	m->val = calloc(cap, sizeof(*m->val));
	m->cap = cap;
	m->n = 0;
	return m->key && m->klen && m->val ? 0 : -1;
}

static void strmap_free(struct strmap *m)
{
	free(m->key);
	free(m->klen);
	free(m->val);
	memset(m, 0, sizeof(*m));
}

static int32_t strmap_get(const struct strmap *m, const char *s, size_t n)
{
	if (!m->cap)
		return -1;
	for (size_t i = hash_bytes(s, n) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
		if (!m->key[i])
			return -1;
		if (m->klen[i] == n && !memcmp(m->key[i], s, n))
			return m->val[i];
	}
}

/* Insert (keeps the first value for a duplicate key).  The table never fills: init sized it. */
static void strmap_put(struct strmap *m, const char *s, size_t n, int32_t v)
{
	for (size_t i = hash_bytes(s, n) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
		if (!m->key[i]) {
			m->key[i] = s;
			m->klen[i] = (uint32_t)n;
			m->val[i] = v;
			m->n++;
			return;
		}
		if (m->klen[i] == n && !memcmp(m->key[i], s, n))
			return;
	}
}

/* (left id, right id) -> (rank, merged id) */
struct pairmap {
	uint64_t *key;   /* (a << 32 | b) + 1; 0 = empty */
	int32_t *rank, *merged;
	size_t cap;
};

static int pairmap_init(struct pairmap *m, size_t n)
{
	size_t cap = 16;
	while (cap < n * 2 + 1)
		cap <<= 1;
	m->key = calloc(cap, sizeof(*m->key));
	m->rank = calloc(cap, sizeof(*m->rank));
	m->merged = calloc(cap, sizeof(*m->merged));
	m->cap = cap;
	return m->key && m->rank && m->merged ? 0 : -1;
}

static void pairmap_free(struct pairmap *m)
{
	free(m->key);
	free(m->rank);
	free(m->merged);
	memset(m, 0, sizeof(*m));
}

static inline uint64_t pair_key(int32_t a, int32_t b)
{
	return (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
}

static int pairmap_get(const struct pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *merged)
{
	uint64_t k = pair_key(a, b);
	if (!m->cap)
		return 0;
	for (size_t i = mix64(k) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
		if (!m->key[i])
			return 0;
		if (m->key[i] == k) {
			*rank = m->rank[i];
			*merged = m->merged[i];
			return 1;
		}
	}
}

/* Keeps the first (lowest) rank of a duplicated merge, as `tokenizers` does. */
static void pairmap_put(struct pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t merged)
{
	uint64_t k = pair_key(a, b);
	for (size_t i = mix64(k) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
		if (!m->key[i]) {
			m->key[i] = k;
			m->rank[i] = rank;
			m->merged[i] = merged;
			return;
		}
		if (m->key[i] == k)
			return;
	}
}

/* ================================================================ UTF-8 */


/*
 * Length of the maximal prefix of a valid sequence at s (at least 1): the
 * unit that from_utf8_lossy replaces by one U+FFFD.
 */
static size_t utf8_bad_prefix(const unsigned char *s, size_t n)
{
	unsigned c = s[0];
	unsigned lo = 0x80, hi = 0xBF;
	size_t need, i;

	if (c >= 0xC2 && c < 0xE0)
		need = 2;
	else if (c >= 0xE0 && c < 0xF0)
		need = 3;
	else if (c >= 0xF0 && c < 0xF5)
		need = 4;
	else
		return 1;
	if (c == 0xE0)
		lo = 0xA0;
	else if (c == 0xED)
		hi = 0x9F;
	else if (c == 0xF0)
		lo = 0x90;
	else if (c == 0xF4)
		hi = 0x8F;
	for (i = 1; i < need && i < n; i++) {
		unsigned b = s[i];
		if (i == 1 ? (b < lo || b > hi) : (b & 0xC0) != 0x80)
			break;
	}
	return i;
}

static void utf8_lossy_append(struct lora_buf *b, const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0, run = 0;

	while (i < n) {
		size_t k = utf8_seq(u + i, n - i);
		if (k) {
			i += k;
			continue;
		}
		lora_buf_add(b, s + run, i - run);
		lora_buf_add(b, "\xEF\xBF\xBD", 3);
		i += utf8_bad_prefix(u + i, n - i);
		run = i;
	}
	lora_buf_add(b, s + run, n - run);
}

static int utf8_valid(const char *s, size_t n, size_t *bad)
{
	size_t i = 0;
	while (i < n) {
		size_t k = utf8_seq((const unsigned char *)s + i, n - i);
		if (!k) {
			*bad = i;
			return 0;
		}
		i += k;
	}
	return 1;
}




/* ============================================================ the model */

enum dec_kind { DEC_BYTELEVEL, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_METASPACE,
		DEC_WORDPIECE, DEC_BPE };
struct dec_op {
	enum dec_kind kind;
	char *a, *b;              /* REPLACE pattern / content; STRIP content; METASPACE replacement;
				     WORDPIECE prefix; BPE suffix */
	size_t a_len, b_len;
	int start, stop;          /* STRIP */
	int cleanup;              /* WORDPIECE */
	enum prepend_scheme scheme;
};

struct added {
	char *content;
	size_t len;
	int32_t id;
	unsigned special : 1, normalized : 1, lstrip : 1, rstrip : 1, single_word : 1;
};

struct lora_tok {
	/* model */
	int32_t n_ids;            /* one past the largest id */
	char **id_str;            /* (n_ids) token strings (an added token's content wins), NULL for holes */
	uint32_t *id_len;
	char **own;               /* other strings the vocab map points to (duplicate ids, displaced) */
	size_t n_own;
	uint8_t *id_special;      /* (n_ids) 1 for special added tokens */
	struct strmap vocab;      /* model vocab */
	struct pairmap merges;
	int byte_fallback, fuse_unk, ignore_merges;
	char *prefix_str, *suffix_str;   /* continuing_subword_prefix, end_of_word_suffix; NULL = none */
	size_t prefix_len, suffix_len;
	int32_t unk_id;
	int32_t byte_id[256];     /* "<0xXX>" ids, -1 when absent */
	/* added tokens */
	struct added *added;
	size_t n_added;
	struct strmap added_map;
	int any_raw_added, any_norm_added;
	uint8_t added_first[2][256];  /* [normalized][byte]: some added token starts with it */
	/* normalizers, pre-tokenizers (train/tokenizer_pre.c) */
	struct tok_pipe pipe;
	struct dec_op *dec;
	size_t n_dec;
	int has_decoder;
	/* post-processing */
	int32_t *prefix, *suffix;
	size_t n_prefix, n_suffix;
	/* tokenizer_config.json */
	int32_t bos, eos, pad;
	char *bos_str, *eos_str;
	int32_t *stop;            /* eos and generation_config.json's eos_token_id(s) */
	size_t n_stop;
	char *chat_template;
};

/* --------------------------------------------------------------- loading */

static int parse_decoder(struct lora_tok *t, const cJSON *j, const char *label, struct lora_err *err)
{
	const char *type;
	struct dec_op *op;

	if (!j || cJSON_IsNull(j))
		return 0;
	t->has_decoder = 1;
	type = tok_jstr(j, "type");
	if (!type)
		return lora_errf(err, "%s: decoder without a type", label);
	if (!strcmp(type, "Sequence")) {
		const cJSON *e, *arr = cJSON_GetObjectItemCaseSensitive(j, "decoders");
		if (!cJSON_IsArray(arr))
			return lora_errf(err, "%s: Sequence decoder without 'decoders'", label);
		cJSON_ArrayForEach(e, arr)
			if (parse_decoder(t, e, label, err) < 0)
				return -1;
		return 0;
	}
	op = tok_grow((void **)&t->dec, &t->n_dec, sizeof(*op));
	if (!op)
		return lora_errf(err, "out of memory");
	if (!strcmp(type, "ByteLevel")) {
		op->kind = DEC_BYTELEVEL;
	} else if (!strcmp(type, "ByteFallback")) {
		op->kind = DEC_BYTEFALLBACK;
	} else if (!strcmp(type, "Fuse")) {
		op->kind = DEC_FUSE;
	} else if (!strcmp(type, "Strip")) {
		const char *c = tok_jstr(j, "content");
		const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "start");
		const cJSON *b = cJSON_GetObjectItemCaseSensitive(j, "stop");
		op->kind = DEC_STRIP;
		if (!c || !*c || !cJSON_IsNumber(a) || !cJSON_IsNumber(b) || a->valuedouble < 0 ||
		    b->valuedouble < 0 || a->valuedouble > 1e6 || b->valuedouble > 1e6)
			return lora_errf(err, "%s: Strip decoder needs 'content', 'start' and 'stop'", label);
		op->a_len = strlen(c);
		op->a = tok_strndup(c, op->a_len);
		op->start = (int)a->valuedouble;
		op->stop = (int)b->valuedouble;
		if (!op->a)
			return lora_errf(err, "out of memory");
	} else if (!strcmp(type, "Replace")) {
		const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "pattern");
		const char *s = tok_jstr(p, "String"), *c = tok_jstr(j, "content");
		op->kind = DEC_REPLACE;
		if (tok_jstr(p, "Regex"))
			return lora_errf(err, "%s: decoder Replace with a Regex pattern is not supported", label);
		if (!s || !*s || !c)
			return lora_errf(err, "%s: Replace decoder needs a string pattern and 'content'", label);
		op->a_len = strlen(s);
		op->b_len = strlen(c);
		op->a = tok_strndup(s, op->a_len);
		op->b = tok_strndup(c, op->b_len);
		if (!op->a || !op->b)
			return lora_errf(err, "out of memory");
	} else if (!strcmp(type, "Metaspace")) {
		char r[8];
		size_t rl;
		op->kind = DEC_METASPACE;
		if (tok_parse_replacement(j, r, &rl, label, err) < 0 || tok_parse_scheme(j, &op->scheme, label, err) < 0)
			return -1;
		op->a = tok_strndup(r, rl);
		op->a_len = rl;
		if (!op->a)
			return lora_errf(err, "out of memory");
	} else if (!strcmp(type, "WordPiece") || !strcmp(type, "BPEDecoder")) {
		int wp = !strcmp(type, "WordPiece");
		const char *a = tok_jstr(j, wp ? "prefix" : "suffix");
		op->kind = wp ? DEC_WORDPIECE : DEC_BPE;
		if (!a)
			a = wp ? "##" : "</w>";
		op->cleanup = tok_jbool(j, "cleanup", 1);
		op->a_len = strlen(a);
		op->a = tok_strndup(a, op->a_len);
		if (!op->a)
			return lora_errf(err, "out of memory");
	} else {
		return lora_errf(err,
				 "%s: decoder type '%s' is not supported (Sequence, ByteLevel, Replace, ByteFallback, "
				 "Fuse, Strip, Metaspace, WordPiece, BPEDecoder are)", label, type);
	}
	return 0;
}

/* id of a token string as `tokenizers` resolves it: added tokens, then vocab */
int32_t lora_tok_token_to_id(const struct lora_tok *t, const char *s)
{
	size_t n = strlen(s);
	int32_t id = strmap_get(&t->added_map, s, n);
	return id >= 0 ? id : strmap_get(&t->vocab, s, n);
}

static int push_id(int32_t **arr, size_t *n, int32_t id)
{
	int32_t *p = realloc(*arr, (*n + 1) * sizeof(*p));
	if (!p)
		return -1;
	p[(*n)++] = id;
	*arr = p;
	return 0;
}

/* TemplateProcessing "single": specials before $A go to prefix, after it to suffix. */
static int parse_post(struct lora_tok *t, const cJSON *j, const char *label, struct lora_err *err)
{
	const char *type;

	if (!j || cJSON_IsNull(j))
		return 0;
	type = tok_jstr(j, "type");
	if (!type)
		return lora_errf(err, "%s: post_processor without a type", label);
	if (!strcmp(type, "ByteLevel"))
		return 0;   /* offsets only */
	if (!strcmp(type, "Sequence")) {
		const cJSON *e, *arr = cJSON_GetObjectItemCaseSensitive(j, "processors");
		if (!cJSON_IsArray(arr))
			return lora_errf(err, "%s: Sequence post_processor without 'processors'", label);
		cJSON_ArrayForEach(e, arr)
			if (parse_post(t, e, label, err) < 0)
				return -1;
		return 0;
	}
	if (!strcmp(type, "BertProcessing") || !strcmp(type, "RobertaProcessing")) {
		const cJSON *cls = cJSON_GetObjectItemCaseSensitive(j, "cls");
		const cJSON *sep = cJSON_GetObjectItemCaseSensitive(j, "sep");
		const cJSON *ci = cJSON_GetArrayItem(cls, 1), *si = cJSON_GetArrayItem(sep, 1);
		if (!cJSON_IsNumber(ci) || !cJSON_IsNumber(si) || ci->valuedouble < 0 || si->valuedouble < 0 ||
		    ci->valuedouble > INT32_MAX || si->valuedouble > INT32_MAX)
			return lora_errf(err, "%s: %s needs 'cls' and 'sep'", label, type);
		if (push_id(&t->prefix, &t->n_prefix, (int32_t)ci->valuedouble) < 0 ||
		    push_id(&t->suffix, &t->n_suffix, (int32_t)si->valuedouble) < 0)
			return lora_errf(err, "out of memory");
		return 0;
	}
	if (!strcmp(type, "TemplateProcessing")) {
		const cJSON *single = cJSON_GetObjectItemCaseSensitive(j, "single");
		const cJSON *specials = cJSON_GetObjectItemCaseSensitive(j, "special_tokens");
		const cJSON *e;
		int seen_a = 0;
		if (!cJSON_IsArray(single))
			return lora_errf(err, "%s: TemplateProcessing without 'single'", label);
		cJSON_ArrayForEach(e, single) {
			const cJSON *st = cJSON_GetObjectItemCaseSensitive(e, "SpecialToken");
			const cJSON *sq = cJSON_GetObjectItemCaseSensitive(e, "Sequence");
			const char *name;
			const cJSON *spec, *ids, *id;
			if (sq) {
				seen_a = 1;
				continue;
			}
			name = tok_jstr(st, "id");
			if (!name)
				return lora_errf(err, "%s: bad TemplateProcessing piece", label);
			spec = cJSON_GetObjectItemCaseSensitive(specials, name);
			ids = cJSON_GetObjectItemCaseSensitive(spec, "ids");
			if (!cJSON_IsArray(ids))
				return lora_errf(err, "%s: TemplateProcessing names '%s' without ids", label, name);
			cJSON_ArrayForEach(id, ids) {
				if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble > INT32_MAX)
					return lora_errf(err, "%s: bad id for '%s'", label, name);
				if (push_id(seen_a ? &t->suffix : &t->prefix, seen_a ? &t->n_suffix : &t->n_prefix,
					    (int32_t)id->valuedouble) < 0)
					return lora_errf(err, "out of memory");
			}
		}
		return 0;
	}
	return lora_errf(err, "%s: post_processor type '%s' is not supported (TemplateProcessing, ByteLevel, "
			 "BertProcessing, RobertaProcessing, Sequence are)", label, type);
}

/* Keep p alive until lora_tok_free (the vocab map may point to it). */
static int keep(struct lora_tok *t, char *p)
{
	char **o = realloc(t->own, (t->n_own + 1) * sizeof(*o));
	if (!o) {
		free(p);
		return -1;
	}
	o[t->n_own++] = p;
	t->own = o;
	return 0;
}

/* The string of an id; a later call (an added token) replaces an earlier one, as HF decodes. */
static int set_id(struct lora_tok *t, int32_t id, const char *s, size_t n, const char *label,
		  struct lora_err *err)
{
	if (id < 0 || id >= t->n_ids)
		return lora_errf(err, "%s: token id %d out of range", label, id);
	if (t->id_str[id]) {
		if (t->id_len[id] == n && !memcmp(t->id_str[id], s, n))
			return 0;
		if (keep(t, t->id_str[id]) < 0)
			return lora_errf(err, "out of memory");
	}
	t->id_str[id] = tok_strndup(s, n);
	t->id_len[id] = (uint32_t)n;
	return t->id_str[id] ? 0 : lora_errf(err, "out of memory");
}

static int parse_merge(const cJSON *m, const char **a, size_t *al, const char **b, size_t *bl)
{
	if (cJSON_IsString(m)) {
		const char *s = m->valuestring, *sp = strchr(s, ' ');
		if (!sp || strchr(sp + 1, ' '))
			return -1;
		*a = s;
		*al = (size_t)(sp - s);
		*b = sp + 1;
		*bl = strlen(sp + 1);
		return 0;
	}
	if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(cJSON_GetArrayItem(m, 0)) &&
	    cJSON_IsString(cJSON_GetArrayItem(m, 1))) {
		*a = cJSON_GetArrayItem(m, 0)->valuestring;
		*b = cJSON_GetArrayItem(m, 1)->valuestring;
		*al = strlen(*a);
		*bl = strlen(*b);
		return 0;
	}
	return -1;
}

/*
 * continuing_subword_prefix / end_of_word_suffix: null or "" mean none (what
 * transformers 5 writes for GPT-2-style files); others are glued to the chars
 * of a word before the vocab lookup.  A non-null dropout is refused: it makes
 * encoding random.
 */
static int parse_affixes(struct lora_tok *t, const cJSON *model, const char *label, struct lora_err *err)
{
	static const char *keys[] = { "continuing_subword_prefix", "end_of_word_suffix" };
	const cJSON *d = cJSON_GetObjectItemCaseSensitive(model, "dropout");

	if (d && !cJSON_IsNull(d)) {
		if (!cJSON_IsNumber(d))
			return lora_errf(err, "%s: model.dropout is not a number", label);
		if (d->valuedouble != 0)
			return lora_errf(err, "%s: model.dropout %g is not supported (BPE dropout makes ids random; "
					 "set it to null)", label, d->valuedouble);
	}
	for (int k = 0; k < 2; k++) {
		const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, keys[k]);
		char **dst = k ? &t->suffix_str : &t->prefix_str;
		size_t *len = k ? &t->suffix_len : &t->prefix_len;
		if (!v || cJSON_IsNull(v))
			continue;
		if (!cJSON_IsString(v))
			return lora_errf(err, "%s: model.%s is not a string", label, keys[k]);
		if (!*v->valuestring)
			continue;
		*len = strlen(v->valuestring);
		if (*len > 64)
			return lora_errf(err, "%s: model.%s of %zu bytes is implausibly long", label, keys[k], *len);
		if (!(*dst = tok_strndup(v->valuestring, *len)))
			return lora_errf(err, "out of memory");
	}
	return 0;
}

static int parse_model(struct lora_tok *t, const cJSON *model, const cJSON *added, const char *label,
		       struct lora_err *err)
{
	const char *type = tok_jstr(model, "type");
	const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
	const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
	const cJSON *e;
	int64_t max_id = -1;
	size_t nv = 0, nm, rank = 0;
	char *buf = NULL;
	size_t bufcap = 0;

	if (!model)
		return lora_errf(err, "%s: no 'model'", label);
	if (!type) /* very old files leave out the type of a BPE model */
		type = merges ? "BPE" : "?";
	if (strcmp(type, "BPE"))
		return lora_errf(err, "%s: model type '%s' is not supported (only BPE is)", label, type);
	if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges))
		return lora_errf(err, "%s: BPE model needs 'vocab' (object) and 'merges' (array)", label);
	if (parse_affixes(t, model, label, err) < 0)
		return -1;
	t->byte_fallback = tok_jbool(model, "byte_fallback", 0);
	t->fuse_unk = tok_jbool(model, "fuse_unk", 0);
	t->ignore_merges = tok_jbool(model, "ignore_merges", 0);

	cJSON_ArrayForEach(e, vocab) {
		if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= INT32_MAX ||
		    e->valuedouble != (double)(int32_t)e->valuedouble)
			return lora_errf(err, "%s: vocab entry '%s' has a bad id", label, e->string);
		if (e->valuedouble > max_id)
			max_id = (int64_t)e->valuedouble;
		nv++;
	}
	cJSON_ArrayForEach(e, added) {
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
		if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= INT32_MAX ||
		    !tok_jstr(e, "content") || !*tok_jstr(e, "content"))
			return lora_errf(err, "%s: bad entry in added_tokens", label);
		if (id->valuedouble > max_id)
			max_id = (int64_t)id->valuedouble;
	}
	if (max_id < 0)
		return lora_errf(err, "%s: empty vocab", label);
	if (max_id > 16 * 1024 * 1024)   /* real vocabs are < 300k; a bigger id is a broken file */
		return lora_errf(err, "%s: token id %lld is implausibly large", label, (long long)max_id);
	t->n_ids = (int32_t)max_id + 1;
	t->id_str = calloc((size_t)t->n_ids, sizeof(*t->id_str));
	t->id_len = calloc((size_t)t->n_ids, sizeof(*t->id_len));
	t->id_special = calloc((size_t)t->n_ids, 1);
	if (!t->id_str || !t->id_len || !t->id_special || strmap_init(&t->vocab, nv) < 0)
		return lora_errf(err, "out of memory");
	cJSON_ArrayForEach(e, vocab) {
		int32_t id = (int32_t)e->valuedouble;
		size_t n = strlen(e->string);
		if (t->id_str[id]) {   /* two strings, one id: both encode to it; the first decodes */
			char *dup = tok_strndup(e->string, n);
			if (!dup || keep(t, dup) < 0)
				return lora_errf(err, "out of memory");
			strmap_put(&t->vocab, dup, n, id);
			continue;
		}
		if (set_id(t, id, e->string, n, label, err) < 0)
			return -1;
		strmap_put(&t->vocab, t->id_str[id], n, id);
	}
	for (int b = 0; b < 256; b++) {
		char name[8];
		snprintf(name, sizeof(name), "<0x%02X>", b);
		t->byte_id[b] = strmap_get(&t->vocab, name, 6);
	}
	{
		const char *unk = tok_jstr(model, "unk_token");
		t->unk_id = unk ? strmap_get(&t->vocab, unk, strlen(unk)) : -1;
		if (unk && t->unk_id < 0)
			return lora_errf(err, "%s: unk_token '%s' is not in the vocab", label, unk);
	}

	nm = (size_t)cJSON_GetArraySize(merges);
	if (pairmap_init(&t->merges, nm) < 0)
		return lora_errf(err, "out of memory");
	cJSON_ArrayForEach(e, merges) {
		const char *a, *b;
		size_t al, bl;
		int32_t ia, ib, im;
		if (parse_merge(e, &a, &al, &b, &bl) < 0) {
			free(buf);
			return lora_errf(err, "%s: merge %zu is neither \"a b\" nor [\"a\", \"b\"]", label, rank);
		}
		if (al + bl + 1 > bufcap) {
			char *nb = realloc(buf, (bufcap = (al + bl + 1) * 2));
			if (!nb) {
				free(buf);
				return lora_errf(err, "out of memory");
			}
			buf = nb;
		}
		ia = strmap_get(&t->vocab, a, al);
		ib = strmap_get(&t->vocab, b, bl);
		/* `tokenizers`: the merged token is a + b less the prefix that b carries */
		if (t->prefix_len) {
			if (bl < t->prefix_len || memcmp(b, t->prefix_str, t->prefix_len)) {
				lora_errf(err, "%s: merge %zu ('%.*s' '%.*s'): the right side lacks the "
					  "continuing_subword_prefix", label, rank, (int)al, a, (int)bl, b);
				free(buf);
				return -1;
			}
			b += t->prefix_len;
			bl -= t->prefix_len;
		}
		memcpy(buf, a, al);
		memcpy(buf + al, b, bl);
		im = strmap_get(&t->vocab, buf, al + bl);
		if (ia < 0 || ib < 0 || im < 0) {
			lora_errf(err, "%s: merge %zu ('%.*s' '%.*s') uses a token that is not in the vocab", label,
				  rank, (int)al, a, (int)bl, b);
			free(buf);
			return -1;
		}
		pairmap_put(&t->merges, ia, ib, (int32_t)rank, im);
		rank++;
	}
	free(buf);
	return 0;
}

static int parse_added(struct lora_tok *t, const cJSON *added, const char *label, struct lora_err *err)
{
	const cJSON *e;
	size_t n = (size_t)cJSON_GetArraySize(added), i = 0;

	if (!n)
		return 0;
	t->added = calloc(n, sizeof(*t->added));
	if (!t->added || strmap_init(&t->added_map, n) < 0)
		return lora_errf(err, "out of memory");
	cJSON_ArrayForEach(e, added) {
		struct added *a = &t->added[i++];
		const char *c = tok_jstr(e, "content");
		a->id = (int32_t)cJSON_GetObjectItemCaseSensitive(e, "id")->valuedouble;
		a->len = strlen(c);
		a->content = tok_strndup(c, a->len);
		if (!a->content)
			return lora_errf(err, "out of memory");
		a->special = tok_jbool(e, "special", 0);
		a->normalized = tok_jbool(e, "normalized", !a->special);
		a->lstrip = tok_jbool(e, "lstrip", 0);
		a->rstrip = tok_jbool(e, "rstrip", 0);
		a->single_word = tok_jbool(e, "single_word", 0);
		if (a->special)
			t->id_special[a->id] = 1;
		if (a->normalized && t->pipe.n_norm)
			t->any_norm_added = 1;
		else
			t->any_raw_added = 1;
		if (a->normalized && !t->pipe.n_norm)
			a->normalized = 0;   /* no normalizer: both passes are the same; match on the raw text */
		if (set_id(t, a->id, a->content, a->len, label, err) < 0)
			return -1;
		strmap_put(&t->added_map, a->content, a->len, a->id);
		t->added_first[a->normalized][(unsigned char)a->content[0]] = 1;
	}
	t->n_added = n;
	return 0;
}

/* "<s>" or {"content": "<s>", ...} */
static const char *cfg_token(const cJSON *cfg, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
	if (cJSON_IsString(v))
		return v->valuestring;
	if (cJSON_IsObject(v))
		return tok_jstr(v, "content");
	return NULL;
}

static int remove_id(int32_t *arr, size_t *n, int32_t id)
{
	size_t o = 0;
	for (size_t i = 0; i < *n; i++)
		if (arr[i] != id)
			arr[o++] = arr[i];
	*n = o;
	return 0;
}

static int parse_config(struct lora_tok *t, const char *cfg, size_t cfg_len, const char *label,
			struct lora_err *err)
{
	cJSON *c;
	const char *s;
	const cJSON *v;

	t->bos = t->eos = t->pad = -1;
	if (!cfg)
		goto defaults;
	c = cJSON_ParseWithLength(cfg, cfg_len);
	if (!cJSON_IsObject(c)) {
		cJSON_Delete(c);
		return lora_errf(err, "%s: tokenizer_config.json is not a JSON object", label);
	}
	if ((s = cfg_token(c, "bos_token")) && !(t->bos_str = strdup(s)))
		goto oom;
	if ((s = cfg_token(c, "eos_token")) && !(t->eos_str = strdup(s)))
		goto oom;
	if (t->bos_str)
		t->bos = lora_tok_token_to_id(t, t->bos_str);
	if (t->eos_str)
		t->eos = lora_tok_token_to_id(t, t->eos_str);
	if ((s = cfg_token(c, "pad_token")))
		t->pad = lora_tok_token_to_id(t, s);
	v = cJSON_GetObjectItemCaseSensitive(c, "chat_template");
	if (cJSON_IsString(v)) {
		if (!(t->chat_template = strdup(v->valuestring)))
			goto oom;
	} else if (cJSON_IsArray(v)) {
		const cJSON *e;
		cJSON_ArrayForEach(e, v) {
			const char *name = tok_jstr(e, "name"), *tpl = tok_jstr(e, "template");
			if (name && tpl && !strcmp(name, "default") && !(t->chat_template = strdup(tpl)))
				goto oom;
		}
	}
	/* add_bos_token / add_eos_token, when present, decide (transformers rebuilds the template) */
	v = cJSON_GetObjectItemCaseSensitive(c, "add_bos_token");
	if (cJSON_IsBool(v) && t->bos >= 0) {
		remove_id(t->prefix, &t->n_prefix, t->bos);
		if (cJSON_IsTrue(v)) {
			int32_t *p = realloc(t->prefix, (t->n_prefix + 1) * sizeof(*p));
			if (!p)
				goto oom;
			memmove(p + 1, p, t->n_prefix * sizeof(*p));
			p[0] = t->bos;
			t->prefix = p;
			t->n_prefix++;
		}
	}
	v = cJSON_GetObjectItemCaseSensitive(c, "add_eos_token");
	if (cJSON_IsBool(v) && t->eos >= 0) {
		remove_id(t->suffix, &t->n_suffix, t->eos);
		if (cJSON_IsTrue(v) && push_id(&t->suffix, &t->n_suffix, t->eos) < 0)
			goto oom;
	}
	cJSON_Delete(c);
defaults:
	/* Without a config, the template's first special token is the BOS. */
	if (t->bos < 0 && t->n_prefix) {
		t->bos = t->prefix[0];
		if (t->id_str[t->bos] && !(t->bos_str = strdup(t->id_str[t->bos])))
			return lora_errf(err, "out of memory");
	}
	return 0;
oom:
	cJSON_Delete(c);
	return lora_errf(err, "out of memory");
}

void lora_tok_free(struct lora_tok *t)
{
	if (!t)
		return;
	for (int32_t i = 0; i < t->n_ids; i++)
		free(t->id_str ? t->id_str[i] : NULL);
	free(t->id_str);
	free(t->id_len);
	for (size_t i = 0; i < t->n_own; i++)
		free(t->own[i]);
	free(t->own);
	free(t->id_special);
	free(t->prefix_str);
	free(t->suffix_str);
	strmap_free(&t->vocab);
	pairmap_free(&t->merges);
	for (size_t i = 0; i < t->n_added; i++)
		free(t->added[i].content);
	free(t->added);
	strmap_free(&t->added_map);
	tok_pipe_free(&t->pipe);
	for (size_t i = 0; i < t->n_dec; i++) {
		free(t->dec[i].a);
		free(t->dec[i].b);
	}
	free(t->dec);
	free(t->prefix);
	free(t->suffix);
	free(t->bos_str);
	free(t->eos_str);
	free(t->stop);
	free(t->chat_template);
	free(t);
}

/* An id from a JSON number (or the first of an array of them); -1 if none. */
static int32_t json_id(const cJSON *v, int32_t n_ids)
{
	if (cJSON_IsArray(v))
		v = cJSON_GetArrayItem(v, 0);
	if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= n_ids ||
	    v->valuedouble != (double)(int32_t)v->valuedouble)
		return -1;
	return (int32_t)v->valuedouble;
}

static int add_stop(struct lora_tok *t, int32_t id)
{
	for (size_t i = 0; i < t->n_stop; i++)
		if (t->stop[i] == id)
			return 0;
	return push_id(&t->stop, &t->n_stop, id);
}

int lora_tok_apply_generation_config(struct lora_tok *t, const char *json, size_t len, const char *label,
				     struct lora_err *err)
{
	cJSON *c = cJSON_ParseWithLength(json, len);
	const cJSON *e, *eos, *bos;
	int rc = 0;

	if (!cJSON_IsObject(c)) {
		cJSON_Delete(c);
		return lora_errf(err, "%s: not a JSON object (generation_config.json)", label);
	}
	bos = cJSON_GetObjectItemCaseSensitive(c, "bos_token_id");
	eos = cJSON_GetObjectItemCaseSensitive(c, "eos_token_id");
	if ((bos && !cJSON_IsNull(bos) && json_id(bos, t->n_ids) < 0) ||
	    (eos && !cJSON_IsNull(eos) && json_id(eos, t->n_ids) < 0)) {
		cJSON_Delete(c);
		return lora_errf(err, "%s: bos_token_id/eos_token_id is not a token id of this tokenizer", label);
	}
	/* tokenizer_config.json's tokens win; the generation config fills what it leaves out */
	if (t->bos < 0 && json_id(bos, t->n_ids) >= 0) {
		t->bos = json_id(bos, t->n_ids);
		free(t->bos_str);
		if (t->id_str[t->bos] && !(t->bos_str = strdup(t->id_str[t->bos])))
			rc = -1;
	}
	if (t->eos < 0 && json_id(eos, t->n_ids) >= 0) {
		t->eos = json_id(eos, t->n_ids);
		free(t->eos_str);
		if (t->id_str[t->eos] && !(t->eos_str = strdup(t->id_str[t->eos])))
			rc = -1;
		if (!rc && add_stop(t, t->eos) < 0)
			rc = -1;
	}
	if (cJSON_IsArray(eos)) {
		cJSON_ArrayForEach(e, eos)
			if (!rc && json_id(e, t->n_ids) >= 0 && add_stop(t, json_id(e, t->n_ids)) < 0)
				rc = -1;
	} else if (!rc && json_id(eos, t->n_ids) >= 0 && add_stop(t, json_id(eos, t->n_ids)) < 0) {
		rc = -1;
	}
	cJSON_Delete(c);
	return rc < 0 ? lora_errf(err, "out of memory") : 0;
}

int lora_tok_load_mem(const char *json, size_t len, const char *cfg, size_t cfg_len, const char *label,
		      struct lora_tok **out, struct lora_err *err)
{
	struct lora_tok *t;
	cJSON *j;
	const cJSON *added;

	*out = NULL;
	tok_bl_init();
	j = cJSON_ParseWithLength(json, len);
	if (!cJSON_IsObject(j)) {
		cJSON_Delete(j);
		return lora_errf(err, "%s: not a JSON object (tokenizer.json)", label);
	}
	t = calloc(1, sizeof(*t));
	if (!t) {
		cJSON_Delete(j);
		return lora_errf(err, "out of memory");
	}
	added = cJSON_GetObjectItemCaseSensitive(j, "added_tokens");
	if (added && !cJSON_IsArray(added) && !cJSON_IsNull(added)) {
		lora_errf(err, "%s: 'added_tokens' is not an array", label);
		goto fail;
	}
	if (parse_model(t, cJSON_GetObjectItemCaseSensitive(j, "model"), added, label, err) < 0 ||
	    tok_parse_normalizer(&t->pipe, cJSON_GetObjectItemCaseSensitive(j, "normalizer"), label, err) < 0 ||
	    tok_parse_pre(&t->pipe, cJSON_GetObjectItemCaseSensitive(j, "pre_tokenizer"), label, err) < 0 ||
	    parse_decoder(t, cJSON_GetObjectItemCaseSensitive(j, "decoder"), label, err) < 0 ||
	    parse_added(t, added, label, err) < 0 ||
	    parse_post(t, cJSON_GetObjectItemCaseSensitive(j, "post_processor"), label, err) < 0)
		goto fail;
	for (size_t i = 0; i < t->n_prefix; i++)
		if (t->prefix[i] < 0 || t->prefix[i] >= t->n_ids) {
			lora_errf(err, "%s: post_processor id %d out of range", label, t->prefix[i]);
			goto fail;
		}
	for (size_t i = 0; i < t->n_suffix; i++)
		if (t->suffix[i] < 0 || t->suffix[i] >= t->n_ids) {
			lora_errf(err, "%s: post_processor id %d out of range", label, t->suffix[i]);
			goto fail;
		}
	if (parse_config(t, cfg, cfg_len, label, err) < 0)
		goto fail;
	if (t->eos >= 0 && add_stop(t, t->eos) < 0) {
		lora_errf(err, "out of memory");
		goto fail;
	}
	cJSON_Delete(j);
	*out = t;
	return 0;
fail:
	cJSON_Delete(j);
	lora_tok_free(t);
	return -1;
}

int lora_tok_load(const char *dir, struct lora_tok **out, struct lora_err *err)
{
	char *p = lora_path_join(dir, "tokenizer.json"), *pc = lora_path_join(dir, "tokenizer_config.json");
	char *pj = lora_path_join(dir, "chat_template.jinja"), *pt = lora_path_join(dir, "chat_template.json");
	char *pg = lora_path_join(dir, "generation_config.json");
	char *json = NULL, *cfg = NULL, *tpl = NULL;
	size_t len = 0, cfg_len = 0, tpl_len = 0;
	int rc = -1;

	*out = NULL;
	if (!p || !pc || !pj || !pt || !pg) {
		lora_errf(err, "out of memory");
		goto done;
	}
	if (!lora_is_file(p)) {
		lora_errf(err, "%s: no tokenizer.json (only Hugging Face tokenizer.json files are supported)",
			  dir);
		goto done;
	}
	if (lora_read_file(p, TOK_JSON_MAX, &json, &len, err) < 0)
		goto done;
	if (lora_is_file(pc) && lora_read_file(pc, 64 << 20, &cfg, &cfg_len, err) < 0)
		goto done;
	if (lora_is_file(pj)) {
		if (lora_read_file(pj, 16 << 20, &tpl, &tpl_len, err) < 0)
			goto done;
	} else if (pt && lora_is_file(pt)) {
		/* transformers 4.4x: chat_template.json = {"chat_template": "..."} */
		char *js = NULL;
		size_t jl = 0;
		cJSON *j;
		if (lora_read_file(pt, 16 << 20, &js, &jl, err) < 0)
			goto done;
		j = cJSON_ParseWithLength(js, jl);
		free(js);
		if (cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "chat_template")))
			tpl = strdup(cJSON_GetObjectItemCaseSensitive(j, "chat_template")->valuestring);
		cJSON_Delete(j);
	}
	rc = lora_tok_load_mem(json, len, cfg, cfg_len, p, out, err);
	if (rc == 0 && pg && lora_is_file(pg)) {
		char *g = NULL;
		size_t gl = 0;
		rc = lora_read_file(pg, 1 << 20, &g, &gl, err);
		if (rc == 0)
			rc = lora_tok_apply_generation_config(*out, g, gl, pg, err);
		free(g);
		if (rc < 0) {
			lora_tok_free(*out);
			*out = NULL;
		}
	}
	if (rc == 0 && tpl) {
		free((*out)->chat_template);
		(*out)->chat_template = tpl;
		tpl = NULL;
	}
done:
	free(p);
	free(pc);
	free(pj);
	free(pt);
	free(pg);
	free(json);
	free(cfg);
	free(tpl);
	return rc;
}

/* ============================================================ encoding */

void lora_tokens_free(struct lora_tokens *t)
{
	free(t->ids);
	free(t->start);
	memset(t, 0, sizeof(*t));
}

int lora_tokens_push(struct lora_tokens *t, int32_t id, int64_t start, struct lora_err *err)
{
	if (t->n == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 64;
		int32_t *ids = realloc(t->ids, cap * sizeof(*ids));
		int64_t *st;
		if (!ids)
			return lora_errf(err, "out of memory");
		t->ids = ids;
		st = realloc(t->start, cap * sizeof(*st));
		if (!st)
			return lora_errf(err, "out of memory");
		t->start = st;
		t->cap = cap;
	}
	t->ids[t->n] = id;
	t->start[t->n] = start;
	t->n++;
	return 0;
}

static int is_word(uint32_t c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
	       (c >= 0x80 && !tok_is_ws(c));
}

/* ------------------------------------------------------------------ BPE */

struct sym {
	int32_t id;
	int32_t prev, next;   /* -1 at the ends */
	int64_t start;        /* input offset */
};

struct cand {
	int32_t rank, pos, right, a, b, merged;
};

static int cand_less(const struct cand *x, const struct cand *y)
{
	return x->rank != y->rank ? x->rank < y->rank : x->pos < y->pos;
}

struct heap {
	struct cand *v;
	size_t n, cap;
};

static int heap_push(struct heap *h, struct cand c)
{
	size_t i;
	if (h->n == h->cap) {
		size_t cap = h->cap ? h->cap * 2 : 64;
		struct cand *v = realloc(h->v, cap * sizeof(*v));
		if (!v)
			return -1;
		h->v = v;
		h->cap = cap;
	}
	i = h->n++;
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (!cand_less(&c, &h->v[p]))
			break;
		h->v[i] = h->v[p];
		i = p;
	}
	h->v[i] = c;
	return 0;
}

static struct cand heap_pop(struct heap *h)
{
	struct cand top = h->v[0], last = h->v[--h->n];
	size_t i = 0;
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		const struct cand *best = &last;
		if (l < h->n && cand_less(&h->v[l], best)) {
			m = l;
			best = &h->v[l];
		}
		if (r < h->n && cand_less(&h->v[r], best))
			m = r;
		if (m == i)
			break;
		h->v[i] = h->v[m];
		i = m;
	}
	if (h->n)
		h->v[i] = last;
	return top;
}

static int try_pair(const struct lora_tok *t, struct heap *h, const struct sym *s, int32_t pos)
{
	int32_t rank, merged, right = s[pos].next;
	if (right < 0 || !pairmap_get(&t->merges, s[pos].id, s[right].id, &rank, &merged))
		return 0;
	return heap_push(h, (struct cand){ rank, pos, right, s[pos].id, s[right].id, merged });
}

/* BPE on one pre-token s[0, len) (valid UTF-8 of model symbols). */
static int bpe_word(const struct lora_tok *t, const char *s, const int64_t *al, size_t len,
		    struct lora_tokens *out, struct heap *h, struct lora_err *err)
{
	struct sym *sy;
	char aff[64 + 4 + 64];   /* prefix + one char + suffix; parse_affixes caps each at 64 */
	int32_t n = 0;
	int rc = 0;

	if (t->ignore_merges) {
		int32_t id = strmap_get(&t->vocab, s, len);
		if (id >= 0)
			return lora_tokens_push(out, id, al[0], err);
	}
	/* byte fallback can give one symbol per byte of prefix + char + suffix */
	if (len * (1 + t->prefix_len) + t->suffix_len > INT32_MAX)
		return lora_errf(err, "a word of %zu bytes is too long to encode", len);
	sy = malloc((len * (1 + t->prefix_len) + t->suffix_len) * sizeof(*sy));
	if (!sy)
		return lora_errf(err, "out of memory");
	for (size_t i = 0; i < len;) {
		size_t cl = utf8_len1((unsigned char)s[i]), kl;
		const char *key = s + i;
		int32_t id;
		if (cl > len - i)
			cl = len - i;
		kl = cl;
		if ((t->prefix_len && i > 0) || (t->suffix_len && i + cl == len)) {
			/* `tokenizers`: prefix on every char but the first, suffix on the last */
			kl = 0;
			if (i > 0 && t->prefix_len) {
				memcpy(aff, t->prefix_str, t->prefix_len);
				kl = t->prefix_len;
			}
			memcpy(aff + kl, s + i, cl);
			kl += cl;
			if (i + cl == len && t->suffix_len) {
				memcpy(aff + kl, t->suffix_str, t->suffix_len);
				kl += t->suffix_len;
			}
			key = aff;
		}
		id = strmap_get(&t->vocab, key, kl);
		if (id < 0 && t->byte_fallback) {
			size_t k;
			for (k = 0; k < kl && t->byte_id[(unsigned char)key[k]] >= 0; k++)
				;
			if (k == kl) {
				for (k = 0; k < kl; k++) {
					sy[n] = (struct sym){ t->byte_id[(unsigned char)key[k]], n - 1, -1, al[i] };
					n++;
				}
				i += cl;
				continue;
			}
		}
		if (id < 0) {
			id = t->unk_id;
			if (id < 0) {   /* no unk token: the char is dropped, as `tokenizers` does */
				i += cl;
				continue;
			}
			if (t->fuse_unk && n > 0 && sy[n - 1].id == id) {
				i += cl;
				continue;
			}
		}
		sy[n] = (struct sym){ id, n - 1, -1, al[i] };
		n++;
		i += cl;
	}
	for (int32_t i = 0; i + 1 < n; i++)
		sy[i].next = i + 1;
	h->n = 0;
	for (int32_t i = 0; i + 1 < n && !rc; i++)
		rc = try_pair(t, h, sy, i);
	while (h->n && !rc) {
		struct cand c = heap_pop(h);
		int32_t r = c.right;
		if (sy[c.pos].id != c.a || sy[c.pos].next != r || sy[r].id != c.b)
			continue;   /* stale: one side has merged since */
		sy[c.pos].id = c.merged;
		sy[c.pos].next = sy[r].next;
		if (sy[r].next >= 0)
			sy[sy[r].next].prev = c.pos;
		sy[r].id = -1;
		sy[r].next = -1;
		if (sy[c.pos].prev >= 0)
			rc = try_pair(t, h, sy, sy[c.pos].prev);
		if (!rc)
			rc = try_pair(t, h, sy, c.pos);
	}
	if (rc)
		rc = lora_errf(err, "out of memory");
	for (int32_t i = n ? 0 : -1; i >= 0 && !rc; i = sy[i].next)
		rc = lora_tokens_push(out, sy[i].id, sy[i].start, err);
	free(sy);
	return rc;
}

/* ------------------------------------------------------- added tokens */

/*
 * Leftmost-longest match of the added tokens of one pass (raw or normalized)
 * in s[from, len).  Returns the index into t->added, or -1.
 */
static long find_added(const struct lora_tok *t, int normalized, const char *s, size_t len, size_t from,
		       size_t *at)
{
	const uint8_t *first = t->added_first[normalized];
	for (size_t i = from; i < len; i++) {
		long best = -1;
		if (!first[(unsigned char)s[i]])
			continue;
		for (size_t k = 0; k < t->n_added; k++) {
			const struct added *a = &t->added[k];
			if (a->normalized != normalized || a->content[0] != s[i] || a->len > len - i ||
			    (best >= 0 && a->len <= t->added[best].len) || memcmp(a->content, s + i, a->len))
				continue;
			best = (long)k;
		}
		if (best >= 0) {
			*at = i;
			return best;
		}
	}
	return -1;
}

static uint32_t last_cp(const char *s, size_t n)
{
	uint32_t cp = 0;
	size_t i = n;
	while (i > 0 && ((unsigned char)s[i - 1] & 0xC0) == 0x80)
		i--;
	if (i > 0)
		i--;
	if (n)
		utf8_dec(s + i, &cp);
	return cp;
}

/*
 * Split `in` on the added tokens of one pass; call `each` for text parts and
 * push ids for token parts.
 */
typedef int (*part_fn)(const struct lora_tok *t, const struct nstr *part, struct lora_tokens *out,
		       struct heap *h, struct lora_err *err);

static int split_added(const struct lora_tok *t, int normalized, const struct nstr *in, part_fn each,
		       struct lora_tokens *out, struct heap *h, struct lora_err *err)
{
	size_t from = 0, done = 0, at;
	long k;

	while ((k = find_added(t, normalized, in->s, in->len, from, &at)) >= 0) {
		const struct added *a = &t->added[k];
		size_t start = at, stop = at + a->len;
		uint32_t cp;
		if (a->single_word) {
			uint32_t before = at ? last_cp(in->s, at) : ' ', after = ' ';
			if (stop < in->len)
				utf8_dec(in->s + stop, &after);
			if (is_word(before) || is_word(after)) {
				from = at + 1;
				continue;
			}
		}
		if (a->lstrip)
			while (start > done && (cp = last_cp(in->s, start), tok_is_ws(cp))) {
				char tmp[4];
				start -= utf8_enc(cp, tmp);
			}
		if (a->rstrip)
			while (stop < in->len) {
				size_t l = utf8_dec(in->s + stop, &cp);
				if (!tok_is_ws(cp))
					break;
				stop += l;
			}
		if (start > done) {
			struct plist p = { 0 };
			int rc;
			if (plist_add(&p, in, done, start) < 0)
				return lora_errf(err, "out of memory");
			rc = each(t, &p.p[0], out, h, err);
			plist_free(&p);
			if (rc < 0)
				return -1;
		}
		if (lora_tokens_push(out, a->id, in->al[at], err) < 0)
			return -1;
		done = from = stop;
	}
	if (done < in->len) {
		struct plist p = { 0 };
		int rc;
		if (plist_add(&p, in, done, in->len) < 0)
			return lora_errf(err, "out of memory");
		rc = each(t, &p.p[0], out, h, err);
		plist_free(&p);
		return rc;
	}
	return 0;
}

/* A normalized text part: pre-tokenize, BPE each piece. */
static int encode_normalized(const struct lora_tok *t, const struct nstr *part, struct lora_tokens *out,
			     struct heap *h, struct lora_err *err)
{
	struct plist pieces = { 0 };
	int rc = 0;

	if (tok_pre_tokenize(&t->pipe, part, &pieces, err) < 0)
		return -1;
	for (size_t i = 0; i < pieces.n && !rc; i++)
		rc = bpe_word(t, pieces.p[i].s, pieces.p[i].al, pieces.p[i].len, out, h, err);
	plist_free(&pieces);
	return rc;
}

/* A raw text part: normalize, split on normalized added tokens, encode. */
static int encode_raw(const struct lora_tok *t, const struct nstr *part, struct lora_tokens *out,
		      struct heap *h, struct lora_err *err)
{
	struct nstr n = { 0 };
	int rc;

	if (nstr_addal(&n, part->s, part->al, part->len) < 0)
		return lora_errf(err, "out of memory");
	rc = tok_normalize(&t->pipe, &n, err);
	if (!rc && n.len)
		rc = t->any_norm_added ? split_added(t, 1, &n, encode_normalized, out, h, err)
				       : encode_normalized(t, &n, out, h, err);
	nstr_free(&n);
	return rc;
}

int lora_tok_encode(const struct lora_tok *t, const char *text, size_t len, unsigned flags,
		    struct lora_tokens *out, struct lora_err *err)
{
	struct nstr in = { 0 };
	struct heap h = { 0 };
	size_t bad;
	int rc = 0;

	if (len > INT32_MAX / 4)   /* symbol indexes are int32; 512 MiB per call is plenty */
		return lora_errf(err, "text of %zu bytes is too long to encode at once", len);
	if (!utf8_valid(text, len, &bad))
		return lora_errf(err, "text is not valid utf-8 (byte %zu)", bad);
	if (flags & LORA_TOK_ADD_SPECIAL)
		for (size_t i = 0; i < t->n_prefix && !rc; i++)
			rc = lora_tokens_push(out, t->prefix[i], -1, err);
	if (rc)
		return -1;
	if (len) {
		if (nstr_reserve(&in, len) < 0)
			return lora_errf(err, "out of memory");
		memcpy(in.s, text, len);
		for (size_t i = 0; i < len; i++)
			in.al[i] = (int64_t)i;
		in.len = len;
		in.s[len] = 0;
		rc = t->any_raw_added ? split_added(t, 0, &in, encode_raw, out, &h, err)
				      : encode_raw(t, &in, out, &h, err);
		nstr_free(&in);
		free(h.v);
		if (rc)
			return -1;
	}
	if (flags & LORA_TOK_ADD_SPECIAL)
		for (size_t i = 0; i < t->n_suffix && !rc; i++)
			rc = lora_tokens_push(out, t->suffix[i], -1, err);
	return rc;
}

/* ============================================================ decoding */

struct strv {
	char **s;
	size_t *len;
	size_t n, cap;
};

static void strv_free(struct strv *v)
{
	for (size_t i = 0; i < v->n; i++)
		free(v->s[i]);
	free(v->s);
	free(v->len);
	memset(v, 0, sizeof(*v));
}

/* Append a copy of s (or take ownership when own is set). */
static int strv_add(struct strv *v, const char *s, size_t n, int own)
{
	char *c;
	if (v->n == v->cap) {
		size_t cap = v->cap ? v->cap * 2 : 16;
		char **ns = realloc(v->s, cap * sizeof(*ns));
		size_t *nl;
		if (!ns)
			goto fail;
		v->s = ns;
		nl = realloc(v->len, cap * sizeof(*nl));
		if (!nl)
			goto fail;
		v->len = nl;
		v->cap = cap;
	}
	c = own ? (char *)s : tok_strndup(s, n);
	if (!c)
		return -1;
	v->s[v->n] = c;
	v->len[v->n++] = n;
	return 0;
fail:
	if (own)
		free((char *)s);
	return -1;
}

static int buf_to_strv(struct strv *v, struct lora_buf *b)
{
	size_t n = b->len;
	char *s;
	if (b->oom)
		return -1;
	s = lora_buf_take(b);
	if (!s)
		s = tok_strndup("", 0);
	return s ? strv_add(v, s, n, 1) : -1;
}

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static int dec_bytelevel(const struct strv *in, struct strv *out)
{
	struct lora_buf raw = LORA_BUF_INIT, txt = LORA_BUF_INIT;
	int rc;

	for (size_t i = 0; i < in->n; i++) {
		const char *s = in->s[i];
		size_t n = in->len[i], k = 0, mark = raw.len;
		for (k = 0; k < n;) {
			uint32_t cp;
			k += utf8_dec(s + k, &cp);
			if (cp >= 512 || tok_bl_cp2byte[cp] < 0)
				break;
			char b = (char)tok_bl_cp2byte[cp];
			lora_buf_add(&raw, &b, 1);
		}
		if (k < n) {
			raw.len = mark;   /* a char outside the alphabet: the token's own bytes */
			lora_buf_add(&raw, s, n);
		}
	}
	utf8_lossy_append(&txt, raw.data ? raw.data : "", raw.len);
	lora_buf_add(&txt, "", 0);
	lora_buf_free(&raw);
	rc = buf_to_strv(out, &txt);
	lora_buf_free(&txt);
	return rc;
}

static int dec_bytefallback(const struct strv *in, struct strv *out)
{
	struct lora_buf pend = LORA_BUF_INIT;
	int rc = 0;

	for (size_t i = 0; i <= in->n && !rc; i++) {
		const char *s = i < in->n ? in->s[i] : NULL;
		if (s && in->len[i] == 6 && !memcmp(s, "<0x", 3) && s[5] == '>' && hexval(s[3]) >= 0 &&
		    hexval(s[4]) >= 0) {
			char b = (char)(hexval(s[3]) * 16 + hexval(s[4]));
			lora_buf_add(&pend, &b, 1);
			continue;
		}
		if (pend.len) {
			size_t bad;
			if (utf8_valid(pend.data, pend.len, &bad)) {
				rc = strv_add(out, pend.data, pend.len, 0);
			} else {
				for (size_t k = 0; k < pend.len && !rc; k++)
					rc = strv_add(out, "\xEF\xBF\xBD", 3, 0);
			}
			pend.len = 0;
		}
		if (s && !rc)
			rc = strv_add(out, s, in->len[i], 0);
	}
	if (pend.oom)
		rc = -1;
	lora_buf_free(&pend);
	return rc;
}

/* Every occurrence of `from` in s[0, n) replaced by `to`, appended to b (from non-empty). */
static void replace_str(struct lora_buf *b, const char *s, size_t n, const char *from, size_t from_len,
			const char *to, size_t to_len)
{
	for (size_t i = 0; i < n;) {
		if (from_len && i + from_len <= n && !memcmp(s + i, from, from_len)) {
			lora_buf_add(b, to, to_len);
			i += from_len;
		} else {
			lora_buf_add(b, s + i, 1);
			i++;
		}
	}
}

/* `tokenizers`' WordPiece decoder cleanup: spaces before punctuation and in contractions */
static int wordpiece_cleanup(struct lora_buf *b)
{
	static const char *rules[][2] = { { " .", "." }, { " ?", "?" }, { " !", "!" }, { " ,", "," },
					 { " ' ", "'" }, { " n't", "n't" }, { " 'm", "'m" },
					 { " do not", " don't" }, { " 's", "'s" }, { " 've", "'ve" },
					 { " 're", "'re" } };
	for (size_t r = 0; r < sizeof(rules) / sizeof(rules[0]); r++) {
		struct lora_buf o = LORA_BUF_INIT;
		if (!b->len || !memmem(b->data, b->len, rules[r][0], strlen(rules[r][0])))
			continue;
		replace_str(&o, b->data, b->len, rules[r][0], strlen(rules[r][0]), rules[r][1], strlen(rules[r][1]));
		if (o.oom) {
			lora_buf_free(&o);
			return -1;
		}
		lora_buf_free(b);
		*b = o;
	}
	return 0;
}

static int dec_one(const struct dec_op *op, size_t idx, size_t count, const char *s, size_t n, struct strv *out)
{
	struct lora_buf b = LORA_BUF_INIT;
	int rc;

	switch (op->kind) {
	case DEC_WORDPIECE:
		if (idx && n >= op->a_len && !memcmp(s, op->a, op->a_len)) {
			s += op->a_len;
			n -= op->a_len;
		} else if (idx) {
			lora_buf_add(&b, " ", 1);
		}
		lora_buf_add(&b, s, n);
		if (op->cleanup && wordpiece_cleanup(&b) < 0)
			b.oom = 1;
		break;
	case DEC_BPE:
		replace_str(&b, s, n, op->a, op->a_len, idx + 1 == count ? "" : " ", idx + 1 == count ? 0 : 1);
		break;
	case DEC_REPLACE:
		for (size_t i = 0; i < n;) {
			if (i + op->a_len <= n && !memcmp(s + i, op->a, op->a_len)) {
				lora_buf_add(&b, op->b, op->b_len);
				i += op->a_len;
			} else {
				lora_buf_add(&b, s + i, 1);
				i++;
			}
		}
		break;
	case DEC_METASPACE:
		for (size_t i = 0; i < n;) {
			if (i + op->a_len <= n && !memcmp(s + i, op->a, op->a_len)) {
				if (!(idx == 0 && op->scheme != PREPEND_NEVER))
					lora_buf_add(&b, " ", 1);
				i += op->a_len;
			} else {
				lora_buf_add(&b, s + i, 1);
				i++;
			}
		}
		break;
	case DEC_STRIP: {
		size_t a = 0, z = n;
		for (int k = 0; k < op->start && z - a >= op->a_len && !memcmp(s + a, op->a, op->a_len); k++)
			a += op->a_len;
		for (int k = 0; k < op->stop && z - a >= op->a_len && !memcmp(s + z - op->a_len, op->a, op->a_len); k++)
			z -= op->a_len;
		lora_buf_add(&b, s + a, z - a);
		break;
	}
	default:
		break;
	}
	lora_buf_add(&b, "", 0);
	rc = buf_to_strv(out, &b);
	lora_buf_free(&b);
	return rc;
}

int lora_tok_decode(const struct lora_tok *t, const int32_t *ids, size_t n, unsigned flags, struct lora_buf *out,
		    struct lora_err *err)
{
	struct strv v = { 0 };
	int rc = 0;

	for (size_t i = 0; i < n; i++) {
		int32_t id = ids[i];
		if (id < 0 || id >= t->n_ids || !t->id_str[id]) {
			strv_free(&v);
			return lora_errf(err, "token id %d is not in the vocabulary", id);
		}
		if ((flags & LORA_TOK_SKIP_SPECIAL) && t->id_special[id])
			continue;
		if (strv_add(&v, t->id_str[id], t->id_len[id], 0) < 0) {
			strv_free(&v);
			return lora_errf(err, "out of memory");
		}
	}
	if (!t->has_decoder) {
		for (size_t i = 0; i < v.n; i++) {
			if (i)
				lora_buf_add(out, " ", 1);
			lora_buf_add(out, v.s[i], v.len[i]);
		}
		strv_free(&v);
		return out->oom ? lora_errf(err, "out of memory") : 0;
	}
	for (size_t k = 0; k < t->n_dec && !rc; k++) {
		const struct dec_op *op = &t->dec[k];
		struct strv o = { 0 };
		if (op->kind == DEC_BYTELEVEL) {
			rc = dec_bytelevel(&v, &o);
		} else if (op->kind == DEC_BYTEFALLBACK) {
			rc = dec_bytefallback(&v, &o);
		} else if (op->kind == DEC_FUSE) {
			struct lora_buf b = LORA_BUF_INIT;
			for (size_t i = 0; i < v.n; i++)
				lora_buf_add(&b, v.s[i], v.len[i]);
			lora_buf_add(&b, "", 0);
			rc = buf_to_strv(&o, &b);
			lora_buf_free(&b);
		} else {
			for (size_t i = 0; i < v.n && !rc; i++)
				rc = dec_one(op, i, v.n, v.s[i], v.len[i], &o);
		}
		strv_free(&v);
		v = o;
	}
	for (size_t i = 0; i < v.n && !rc; i++)
		lora_buf_add(out, v.s[i], v.len[i]);
	strv_free(&v);
	if (rc || out->oom)
		return lora_errf(err, "out of memory");
	return 0;
}

/* ============================================================ accessors */

int32_t lora_tok_vocab_size(const struct lora_tok *t) { return t->n_ids; }
int32_t lora_tok_bos(const struct lora_tok *t) { return t->bos; }
int32_t lora_tok_eos(const struct lora_tok *t) { return t->eos; }
int32_t lora_tok_pad(const struct lora_tok *t) { return t->pad; }
const char *lora_tok_bos_str(const struct lora_tok *t) { return t->bos_str ? t->bos_str : ""; }
const char *lora_tok_eos_str(const struct lora_tok *t) { return t->eos_str ? t->eos_str : ""; }
const char *lora_tok_chat_template(const struct lora_tok *t) { return t->chat_template; }

const char *lora_tok_id_to_token(const struct lora_tok *t, int32_t id)
{
	return id >= 0 && id < t->n_ids ? t->id_str[id] : NULL;
}

int lora_tok_is_special(const struct lora_tok *t, int32_t id)
{
	return id >= 0 && id < t->n_ids && t->id_special[id];
}

int lora_tok_adds_bos(const struct lora_tok *t)
{
	return t->bos >= 0 && t->n_prefix && t->prefix[0] == t->bos;
}

int lora_tok_is_stop(const struct lora_tok *t, int32_t id)
{
	for (size_t i = 0; i < t->n_stop; i++)
		if (t->stop[i] == id)
			return 1;
	return 0;
}

int lora_tok_adds_eos(const struct lora_tok *t)
{
	return t->eos >= 0 && t->n_suffix && t->suffix[t->n_suffix - 1] == t->eos;
}
