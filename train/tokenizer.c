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
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "libadapter/base/fsutil.h"
#include "train/tokenizer.h"

/* nfc.c-style helper in this file's bottom section */
static int nfc_normalize(const char *s, size_t len, const int64_t *al, char **out_s, int64_t **out_al,
			 size_t *out_len);

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

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	unsigned c = s[0];
	if (c < 0x80)
		return 1;
	if (c < 0xC2)
		return 0;
	if (c < 0xE0)
		return n >= 2 && (s[1] & 0xC0) == 0x80 ? 2 : 0;
	if (c < 0xF0) {
		if (n < 3 || (s[2] & 0xC0) != 0x80)
			return 0;
		if (c == 0xE0 ? (s[1] < 0xA0 || s[1] > 0xBF) : c == 0xED ? (s[1] < 0x80 || s[1] > 0x9F)
								  : (s[1] & 0xC0) != 0x80)
			return 0;
		return 3;
	}
	if (c < 0xF5) {
		if (n < 4 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
			return 0;
		if (c == 0xF0 ? (s[1] < 0x90 || s[1] > 0xBF) : c == 0xF4 ? (s[1] < 0x80 || s[1] > 0x8F)
								  : (s[1] & 0xC0) != 0x80)
			return 0;
		return 4;
	}
	return 0;
}

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

static size_t utf8_enc(uint32_t cp, char *o)
{
	if (cp < 0x80) {
		o[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (char)(0xC0 | (cp >> 6));
		o[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (char)(0xE0 | (cp >> 12));
		o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		o[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	o[0] = (char)(0xF0 | (cp >> 18));
	o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
	o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
	o[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

/* Decode one valid UTF-8 char at s; returns its length. */
static size_t utf8_dec(const char *s, uint32_t *cp)
{
	const unsigned char *u = (const unsigned char *)s;
	if (u[0] < 0x80) {
		*cp = u[0];
		return 1;
	}
	if (u[0] < 0xE0) {
		*cp = ((uint32_t)(u[0] & 0x1F) << 6) | (u[1] & 0x3F);
		return 2;
	}
	if (u[0] < 0xF0) {
		*cp = ((uint32_t)(u[0] & 0x0F) << 12) | ((uint32_t)(u[1] & 0x3F) << 6) | (u[2] & 0x3F);
		return 3;
	}
	*cp = ((uint32_t)(u[0] & 0x07) << 18) | ((uint32_t)(u[1] & 0x3F) << 12) |
	      ((uint32_t)(u[2] & 0x3F) << 6) | (u[3] & 0x3F);
	return 4;
}

static size_t utf8_len1(unsigned char c)
{
	return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

/* =============================================== the byte-level alphabet */

/*
 * GPT-2's byte <-> char map: printable bytes ('!'..'~', 0xA1..0xAC,
 * 0xAE..0xFF) stand for themselves; the other 68 bytes become U+0100 + n in
 * byte order.  Every char is at most U+0143, so a 512-entry table inverts it.
 */
static uint16_t bl_byte2cp[256];
static int16_t bl_cp2byte[512];
static char bl_utf8[256][3];   /* UTF-8 of each byte's char */
static uint8_t bl_utf8_len[256];

static void bl_init_once(void)
{
	int n = 0;
	for (int i = 0; i < 512; i++)
		bl_cp2byte[i] = -1;
	for (int b = 0; b < 256; b++) {
		int keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
		uint16_t cp = keep ? (uint16_t)b : (uint16_t)(256 + n++);
		bl_byte2cp[b] = cp;
		bl_cp2byte[cp] = (int16_t)b;
		bl_utf8_len[b] = (uint8_t)utf8_enc(cp, bl_utf8[b]);
	}
}

static void bl_init(void)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	pthread_once(&once, bl_init_once);
}

/* ============================================== strings with alignments */

/* A normalized string: bytes, each with the input offset it came from. */
struct nstr {
	char *s;
	int64_t *al;   /* (len) */
	size_t len, cap;
};

static void nstr_free(struct nstr *n)
{
	free(n->s);
	free(n->al);
	memset(n, 0, sizeof(*n));
}

static int nstr_reserve(struct nstr *n, size_t more)
{
	size_t need = n->len + more + 1, cap;
	char *s;
	int64_t *al;

	if (need <= n->cap)
		return 0;
	cap = n->cap ? n->cap : 32;
	while (cap < need)
		cap *= 2;
	s = realloc(n->s, cap);
	if (!s)
		return -1;
	n->s = s;
	al = realloc(n->al, cap * sizeof(*al));
	if (!al)
		return -1;
	n->al = al;
	n->cap = cap;
	return 0;
}

static int nstr_add(struct nstr *n, const char *s, size_t len, int64_t al)
{
	if (nstr_reserve(n, len) < 0)
		return -1;
	memcpy(n->s + n->len, s, len);
	for (size_t i = 0; i < len; i++)
		n->al[n->len + i] = al;
	n->len += len;
	n->s[n->len] = 0;
	return 0;
}

static int nstr_addal(struct nstr *n, const char *s, const int64_t *al, size_t len)
{
	if (nstr_reserve(n, len) < 0)
		return -1;
	memcpy(n->s + n->len, s, len);
	memcpy(n->al + n->len, al, len * sizeof(*al));
	n->len += len;
	n->s[n->len] = 0;
	return 0;
}

/* A list of pieces (pre-tokens). */
struct plist {
	struct nstr *p;
	size_t n, cap;
};

static void plist_free(struct plist *l)
{
	for (size_t i = 0; i < l->n; i++)
		nstr_free(&l->p[i]);
	free(l->p);
	memset(l, 0, sizeof(*l));
}

/* Append a copy of src[a, b) as a new piece (empty ranges are dropped). */
static int plist_add(struct plist *l, const struct nstr *src, size_t a, size_t b)
{
	if (a >= b)
		return 0;
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 8;
		struct nstr *p = realloc(l->p, cap * sizeof(*p));
		if (!p)
			return -1;
		l->p = p;
		l->cap = cap;
	}
	memset(&l->p[l->n], 0, sizeof(l->p[l->n]));
	if (nstr_addal(&l->p[l->n], src->s + a, src->al + a, b - a) < 0) {
		nstr_free(&l->p[l->n]);
		return -1;
	}
	l->n++;
	return 0;
}

/* ============================================================ the model */

enum split_behavior { SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_PREV, SPLIT_NEXT, SPLIT_CONTIGUOUS };

struct pattern {
	pcre2_code *re;   /* regex, or NULL for a literal */
	char *lit;
	size_t lit_len;
};

enum norm_kind { NORM_PREPEND, NORM_REPLACE, NORM_NFC };
struct norm_op {
	enum norm_kind kind;
	struct pattern pat;
	char *str;   /* prepend / replacement */
	size_t str_len;
};

enum pre_kind { PRE_BYTELEVEL, PRE_SPLIT, PRE_METASPACE, PRE_DIGITS };
enum prepend_scheme { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER };
struct pre_op {
	enum pre_kind kind;
	struct pattern pat;       /* SPLIT; BYTELEVEL with use_regex (GPT-2 regex); DIGITS (\p{N}) */
	enum split_behavior behavior;
	int invert;
	int add_prefix_space;     /* BYTELEVEL */
	char repl[8];             /* METASPACE replacement char (UTF-8) */
	size_t repl_len;
	enum prepend_scheme scheme;
	int split;                /* METASPACE */
};

enum dec_kind { DEC_BYTELEVEL, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_METASPACE };
struct dec_op {
	enum dec_kind kind;
	char *a, *b;              /* REPLACE pattern / content; STRIP content; METASPACE replacement */
	size_t a_len, b_len;
	int start, stop;          /* STRIP */
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
	int32_t unk_id;
	int32_t byte_id[256];     /* "<0xXX>" ids, -1 when absent */
	/* added tokens */
	struct added *added;
	size_t n_added;
	struct strmap added_map;
	int any_raw_added, any_norm_added;
	uint8_t added_first[2][256];  /* [normalized][byte]: some added token starts with it */
	/* pipeline */
	struct norm_op *norm;
	size_t n_norm;
	struct pre_op *pre;
	size_t n_pre;
	int byte_level;           /* ByteLevel pre-tokenizer: map bytes to chars */
	struct dec_op *dec;
	size_t n_dec;
	int has_decoder;
	/* post-processing */
	int32_t *prefix, *suffix;
	size_t n_prefix, n_suffix;
	/* tokenizer_config.json */
	int32_t bos, eos, pad;
	char *bos_str, *eos_str;
	char *chat_template;
};

/* --------------------------------------------------------------- loading */

static char *xstrndup(const char *s, size_t n)
{
	char *p = malloc(n + 1);
	if (p) {
		memcpy(p, s, n);
		p[n] = 0;
	}
	return p;
}

static void pattern_free(struct pattern *p)
{
	if (p->re)
		pcre2_code_free(p->re);
	free(p->lit);
	memset(p, 0, sizeof(*p));
}

static int compile_re(const char *src, pcre2_code **out, const char *label, struct lora_err *err)
{
	int ec;
	PCRE2_SIZE off;
	pcre2_code *re = pcre2_compile((PCRE2_SPTR)src, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &ec,
				       &off, NULL);
	if (!re) {
		PCRE2_UCHAR msg[256];
		pcre2_get_error_message(ec, msg, sizeof(msg));
		return lora_errf(err, "%s: cannot compile regex at offset %zu: %s", label, (size_t)off,
				 (char *)msg);
	}
	pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);   /* optional speed-up; the interpreter works without */
	*out = re;
	return 0;
}

/* {"String": "x"} or {"Regex": "..."} */
static int parse_pattern(const cJSON *j, struct pattern *p, const char *label, struct lora_err *err)
{
	const cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "String");
	const cJSON *r = cJSON_GetObjectItemCaseSensitive(j, "Regex");

	if (cJSON_IsString(s)) {
		p->lit_len = strlen(s->valuestring);
		if (!p->lit_len)
			return lora_errf(err, "%s: empty split pattern", label);
		p->lit = xstrndup(s->valuestring, p->lit_len);
		return p->lit ? 0 : lora_errf(err, "out of memory");
	}
	if (cJSON_IsString(r))
		return compile_re(r->valuestring, &p->re, label, err);
	return lora_errf(err, "%s: pattern is neither {\"String\"} nor {\"Regex\"}", label);
}

static const char *jstr(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int jbool(const cJSON *o, const char *k, int dflt)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

static const char GPT2_RE[] =
	"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* Append an op to a growable array of ops; returns the new slot or NULL. */
static void *grow(void **arr, size_t *n, size_t size)
{
	void *p = realloc(*arr, (*n + 1) * size);
	if (!p)
		return NULL;
	*arr = p;
	memset((char *)p + *n * size, 0, size);
	return (char *)p + (*n)++ * size;
}

static int parse_scheme(const cJSON *j, enum prepend_scheme *s, const char *label, struct lora_err *err)
{
	const char *v = jstr(j, "prepend_scheme");
	if (!v) {
		/* older files: add_prefix_space */
		*s = jbool(j, "add_prefix_space", 1) ? PREPEND_ALWAYS : PREPEND_NEVER;
		return 0;
	}
	if (!strcmp(v, "always"))
		*s = PREPEND_ALWAYS;
	else if (!strcmp(v, "first"))
		*s = PREPEND_FIRST;
	else if (!strcmp(v, "never"))
		*s = PREPEND_NEVER;
	else
		return lora_errf(err, "%s: unknown prepend_scheme '%s'", label, v);
	return 0;
}

static int parse_replacement(const cJSON *j, char *out, size_t *len, const char *label, struct lora_err *err)
{
	const char *r = jstr(j, "replacement");
	size_t n;
	if (!r)
		r = "\xE2\x96\x81";   /* U+2581 */
	n = strlen(r);
	if (!n || n > 4 || utf8_seq((const unsigned char *)r, n) != n)
		return lora_errf(err, "%s: metaspace replacement must be one character", label);
	memcpy(out, r, n);
	*len = n;
	return 0;
}

static int parse_normalizer(struct lora_tok *t, const cJSON *j, const char *label, struct lora_err *err)
{
	const char *type;
	struct norm_op *op;

	if (!j || cJSON_IsNull(j))
		return 0;
	type = jstr(j, "type");
	if (!type)
		return lora_errf(err, "%s: normalizer without a type", label);
	if (!strcmp(type, "Sequence")) {
		const cJSON *e, *arr = cJSON_GetObjectItemCaseSensitive(j, "normalizers");
		if (!cJSON_IsArray(arr))
			return lora_errf(err, "%s: Sequence normalizer without 'normalizers'", label);
		cJSON_ArrayForEach(e, arr)
			if (parse_normalizer(t, e, label, err) < 0)
				return -1;
		return 0;
	}
	if (strcmp(type, "Prepend") && strcmp(type, "Replace") && strcmp(type, "NFC"))
		return lora_errf(err, "%s: normalizer '%s' is not supported (Prepend, Replace, NFC, Sequence are)",
				 label, type);
	op = grow((void **)&t->norm, &t->n_norm, sizeof(*op));
	if (!op)
		return lora_errf(err, "out of memory");
	if (!strcmp(type, "NFC")) {
		op->kind = NORM_NFC;
		return 0;
	}
	if (!strcmp(type, "Prepend")) {
		const char *s = jstr(j, "prepend");
		op->kind = NORM_PREPEND;
		if (!s)
			return lora_errf(err, "%s: Prepend normalizer without 'prepend'", label);
		op->str_len = strlen(s);
		op->str = xstrndup(s, op->str_len);
		return op->str ? 0 : lora_errf(err, "out of memory");
	}
	op->kind = NORM_REPLACE;
	{
		const char *c = jstr(j, "content");
		if (!c)
			return lora_errf(err, "%s: Replace normalizer without 'content'", label);
		op->str_len = strlen(c);
		op->str = xstrndup(c, op->str_len);
		if (!op->str)
			return lora_errf(err, "out of memory");
	}
	return parse_pattern(cJSON_GetObjectItemCaseSensitive(j, "pattern"), &op->pat, label, err);
}

static int parse_pre(struct lora_tok *t, const cJSON *j, const char *label, struct lora_err *err)
{
	const char *type;
	struct pre_op *op;

	if (!j || cJSON_IsNull(j))
		return 0;
	type = jstr(j, "type");
	if (!type)
		return lora_errf(err, "%s: pre_tokenizer without a type", label);
	if (!strcmp(type, "Sequence")) {
		const cJSON *e, *arr = cJSON_GetObjectItemCaseSensitive(j, "pretokenizers");
		if (!cJSON_IsArray(arr))
			return lora_errf(err, "%s: Sequence pre_tokenizer without 'pretokenizers'", label);
		cJSON_ArrayForEach(e, arr)
			if (parse_pre(t, e, label, err) < 0)
				return -1;
		return 0;
	}
	if (strcmp(type, "ByteLevel") && strcmp(type, "Split") && strcmp(type, "Metaspace") &&
	    strcmp(type, "Digits"))
		return lora_errf(err,
				 "%s: pre_tokenizer '%s' is not supported (ByteLevel, Split, Metaspace, Digits, "
				 "Sequence are)", label, type);
	op = grow((void **)&t->pre, &t->n_pre, sizeof(*op));
	if (!op)
		return lora_errf(err, "out of memory");
	if (!strcmp(type, "ByteLevel")) {
		op->kind = PRE_BYTELEVEL;
		op->add_prefix_space = jbool(j, "add_prefix_space", 1);
		op->behavior = SPLIT_ISOLATED;
		t->byte_level = 1;
		if (jbool(j, "use_regex", 1))
			return compile_re(GPT2_RE, &op->pat.re, label, err);
		return 0;
	}
	if (!strcmp(type, "Digits")) {
		op->kind = PRE_DIGITS;
		op->behavior = jbool(j, "individual_digits", 0) ? SPLIT_ISOLATED : SPLIT_CONTIGUOUS;
		return compile_re("\\p{N}", &op->pat.re, label, err);
	}
	if (!strcmp(type, "Metaspace")) {
		op->kind = PRE_METASPACE;
		op->split = jbool(j, "split", 1);
		if (parse_replacement(j, op->repl, &op->repl_len, label, err) < 0)
			return -1;
		return parse_scheme(j, &op->scheme, label, err);
	}
	op->kind = PRE_SPLIT;
	{
		const char *b = jstr(j, "behavior");
		if (!b)
			return lora_errf(err, "%s: Split pre_tokenizer without 'behavior'", label);
		if (!strcmp(b, "Removed"))
			op->behavior = SPLIT_REMOVED;
		else if (!strcmp(b, "Isolated"))
			op->behavior = SPLIT_ISOLATED;
		else if (!strcmp(b, "MergedWithPrevious"))
			op->behavior = SPLIT_PREV;
		else if (!strcmp(b, "MergedWithNext"))
			op->behavior = SPLIT_NEXT;
		else if (!strcmp(b, "Contiguous"))
			op->behavior = SPLIT_CONTIGUOUS;
		else
			return lora_errf(err, "%s: unknown split behavior '%s'", label, b);
	}
	op->invert = jbool(j, "invert", 0);
	return parse_pattern(cJSON_GetObjectItemCaseSensitive(j, "pattern"), &op->pat, label, err);
}

static int parse_decoder(struct lora_tok *t, const cJSON *j, const char *label, struct lora_err *err)
{
	const char *type;
	struct dec_op *op;

	if (!j || cJSON_IsNull(j))
		return 0;
	t->has_decoder = 1;
	type = jstr(j, "type");
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
	op = grow((void **)&t->dec, &t->n_dec, sizeof(*op));
	if (!op)
		return lora_errf(err, "out of memory");
	if (!strcmp(type, "ByteLevel")) {
		op->kind = DEC_BYTELEVEL;
	} else if (!strcmp(type, "ByteFallback")) {
		op->kind = DEC_BYTEFALLBACK;
	} else if (!strcmp(type, "Fuse")) {
		op->kind = DEC_FUSE;
	} else if (!strcmp(type, "Strip")) {
		const char *c = jstr(j, "content");
		const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "start");
		const cJSON *b = cJSON_GetObjectItemCaseSensitive(j, "stop");
		op->kind = DEC_STRIP;
		if (!c || !*c || !cJSON_IsNumber(a) || !cJSON_IsNumber(b) || a->valuedouble < 0 ||
		    b->valuedouble < 0 || a->valuedouble > 1e6 || b->valuedouble > 1e6)
			return lora_errf(err, "%s: Strip decoder needs 'content', 'start' and 'stop'", label);
		op->a_len = strlen(c);
		op->a = xstrndup(c, op->a_len);
		op->start = (int)a->valuedouble;
		op->stop = (int)b->valuedouble;
		if (!op->a)
			return lora_errf(err, "out of memory");
	} else if (!strcmp(type, "Replace")) {
		const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "pattern");
		const char *s = jstr(p, "String"), *c = jstr(j, "content");
		op->kind = DEC_REPLACE;
		if (!s || !*s || !c)
			return lora_errf(err, "%s: Replace decoder needs a string pattern and 'content'", label);
		op->a_len = strlen(s);
		op->b_len = strlen(c);
		op->a = xstrndup(s, op->a_len);
		op->b = xstrndup(c, op->b_len);
		if (!op->a || !op->b)
			return lora_errf(err, "out of memory");
	} else if (!strcmp(type, "Metaspace")) {
		char r[8];
		size_t rl;
		op->kind = DEC_METASPACE;
		if (parse_replacement(j, r, &rl, label, err) < 0 || parse_scheme(j, &op->scheme, label, err) < 0)
			return -1;
		op->a = xstrndup(r, rl);
		op->a_len = rl;
		if (!op->a)
			return lora_errf(err, "out of memory");
	} else {
		return lora_errf(err,
				 "%s: decoder '%s' is not supported (ByteLevel, Replace, ByteFallback, Fuse, "
				 "Strip, Metaspace, Sequence are)", label, type);
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
	type = jstr(j, "type");
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
			name = jstr(st, "id");
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
	return lora_errf(err, "%s: post_processor '%s' is not supported", label, type);
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
	t->id_str[id] = xstrndup(s, n);
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

static int parse_model(struct lora_tok *t, const cJSON *model, const cJSON *added, const char *label,
		       struct lora_err *err)
{
	const char *type = jstr(model, "type");
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
		return lora_errf(err, "%s: tokenizer model '%s' is not supported (only BPE is)", label, type);
	if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges))
		return lora_errf(err, "%s: BPE model needs 'vocab' (object) and 'merges' (array)", label);
	if (jstr(model, "continuing_subword_prefix") || jstr(model, "end_of_word_suffix"))
		return lora_errf(err, "%s: BPE with continuing_subword_prefix/end_of_word_suffix is not supported",
				 label);
	t->byte_fallback = jbool(model, "byte_fallback", 0);
	t->fuse_unk = jbool(model, "fuse_unk", 0);
	t->ignore_merges = jbool(model, "ignore_merges", 0);

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
		    !jstr(e, "content") || !*jstr(e, "content"))
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
			char *dup = xstrndup(e->string, n);
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
		const char *unk = jstr(model, "unk_token");
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
		memcpy(buf, a, al);
		memcpy(buf + al, b, bl);
		ia = strmap_get(&t->vocab, a, al);
		ib = strmap_get(&t->vocab, b, bl);
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
		const char *c = jstr(e, "content");
		a->id = (int32_t)cJSON_GetObjectItemCaseSensitive(e, "id")->valuedouble;
		a->len = strlen(c);
		a->content = xstrndup(c, a->len);
		if (!a->content)
			return lora_errf(err, "out of memory");
		a->special = jbool(e, "special", 0);
		a->normalized = jbool(e, "normalized", !a->special);
		a->lstrip = jbool(e, "lstrip", 0);
		a->rstrip = jbool(e, "rstrip", 0);
		a->single_word = jbool(e, "single_word", 0);
		if (a->special)
			t->id_special[a->id] = 1;
		if (a->normalized && t->n_norm)
			t->any_norm_added = 1;
		else
			t->any_raw_added = 1;
		if (a->normalized && !t->n_norm)
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
		return jstr(v, "content");
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
			const char *name = jstr(e, "name"), *tpl = jstr(e, "template");
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
	strmap_free(&t->vocab);
	pairmap_free(&t->merges);
	for (size_t i = 0; i < t->n_added; i++)
		free(t->added[i].content);
	free(t->added);
	strmap_free(&t->added_map);
	for (size_t i = 0; i < t->n_norm; i++) {
		pattern_free(&t->norm[i].pat);
		free(t->norm[i].str);
	}
	free(t->norm);
	for (size_t i = 0; i < t->n_pre; i++)
		pattern_free(&t->pre[i].pat);
	free(t->pre);
	for (size_t i = 0; i < t->n_dec; i++) {
		free(t->dec[i].a);
		free(t->dec[i].b);
	}
	free(t->dec);
	free(t->prefix);
	free(t->suffix);
	free(t->bos_str);
	free(t->eos_str);
	free(t->chat_template);
	free(t);
}

int lora_tok_load_mem(const char *json, size_t len, const char *cfg, size_t cfg_len, const char *label,
		      struct lora_tok **out, struct lora_err *err)
{
	struct lora_tok *t;
	cJSON *j;
	const cJSON *added;

	*out = NULL;
	bl_init();
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
	    parse_normalizer(t, cJSON_GetObjectItemCaseSensitive(j, "normalizer"), label, err) < 0 ||
	    parse_pre(t, cJSON_GetObjectItemCaseSensitive(j, "pre_tokenizer"), label, err) < 0 ||
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
	char *json = NULL, *cfg = NULL, *tpl = NULL;
	size_t len = 0, cfg_len = 0, tpl_len = 0;
	int rc = -1;

	*out = NULL;
	if (!p || !pc || !pj) {
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

/* Rust's char::is_whitespace (the Unicode White_Space property). */
static int is_ws(uint32_t c)
{
	return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
	       (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
	       c == 0x3000;
}

static int is_word(uint32_t c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
	       (c >= 0x80 && !is_ws(c));
}

/* ----------------------------------------------------- pattern matching */

struct range {
	size_t a, b;
	int match;
};

struct rlist {
	struct range *r;
	size_t n, cap;
};

static int rlist_add(struct rlist *l, size_t a, size_t b, int match)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 16;
		struct range *r = realloc(l->r, cap * sizeof(*r));
		if (!r)
			return -1;
		l->r = r;
		l->cap = cap;
	}
	l->r[l->n++] = (struct range){ a, b, match };
	return 0;
}

/* Cover s[0, len) with match / gap ranges of the pattern (empty matches skipped). */
static int find_matches(const struct pattern *p, const char *s, size_t len, struct rlist *out,
			struct lora_err *err)
{
	size_t prev = 0, pos = 0;

	out->n = 0;
	if (p->lit) {
		while (pos + p->lit_len <= len) {
			const char *m = memmem(s + pos, len - pos, p->lit, p->lit_len);
			size_t a;
			if (!m)
				break;
			a = (size_t)(m - s);
			if ((a > prev && rlist_add(out, prev, a, 0) < 0) || rlist_add(out, a, a + p->lit_len, 1) < 0)
				return lora_errf(err, "out of memory");
			prev = pos = a + p->lit_len;
		}
	} else {
		pcre2_match_data *md = pcre2_match_data_create_from_pattern(p->re, NULL);
		if (!md)
			return lora_errf(err, "out of memory");
		while (pos < len) {
			int rc = pcre2_match(p->re, (PCRE2_SPTR)s, len, pos, PCRE2_NO_UTF_CHECK, md, NULL);
			PCRE2_SIZE *ov;
			if (rc == PCRE2_ERROR_NOMATCH)
				break;
			if (rc < 0) {
				PCRE2_UCHAR msg[256];
				pcre2_match_data_free(md);
				pcre2_get_error_message(rc, msg, sizeof(msg));
				return lora_errf(err, "regex match failed: %s", (char *)msg);
			}
			ov = pcre2_get_ovector_pointer(md);
			if (ov[1] == ov[0]) {   /* empty match: step one char */
				pos = ov[0] + (ov[0] < len ? utf8_len1((unsigned char)s[ov[0]]) : 1);
				continue;
			}
			if ((ov[0] > prev && rlist_add(out, prev, ov[0], 0) < 0) || rlist_add(out, ov[0], ov[1], 1) < 0) {
				pcre2_match_data_free(md);
				return lora_errf(err, "out of memory");
			}
			prev = pos = ov[1];
		}
		pcre2_match_data_free(md);
	}
	if (prev < len && rlist_add(out, prev, len, 0) < 0)
		return lora_errf(err, "out of memory");
	return 0;
}

/*
 * Split one piece by a pattern with a `tokenizers` SplitDelimiterBehavior and
 * append the parts to `out`.
 */
static int split_piece(const struct nstr *in, const struct pattern *p, enum split_behavior bh, int invert,
		       struct plist *out, struct lora_err *err)
{
	struct rlist m = { 0 }, g = { 0 };
	int prev = 0, rc = -1;

	if (find_matches(p, in->s, in->len, &m, err) < 0)
		goto done;
	for (size_t i = 0; i < m.n; i++) {
		struct range r = m.r[i];
		if (invert)
			r.match = !r.match;
		switch (bh) {
		case SPLIT_REMOVED:
			if (!r.match && rlist_add(&g, r.a, r.b, 0) < 0)
				goto oom;
			break;
		case SPLIT_ISOLATED:
			if (rlist_add(&g, r.a, r.b, 0) < 0)
				goto oom;
			break;
		case SPLIT_CONTIGUOUS:
			if (r.match == prev && g.n)
				g.r[g.n - 1].b = r.b;
			else if (rlist_add(&g, r.a, r.b, 0) < 0)
				goto oom;
			break;
		case SPLIT_PREV:
			if (r.match && !prev && g.n)
				g.r[g.n - 1].b = r.b;
			else if (rlist_add(&g, r.a, r.b, 0) < 0)
				goto oom;
			break;
		case SPLIT_NEXT:
			/* a match joins the next part: start a part at a match, extend it by what follows */
			if (!r.match && prev && g.n)
				g.r[g.n - 1].b = r.b;
			else if (rlist_add(&g, r.a, r.b, 0) < 0)
				goto oom;
			break;
		}
		prev = r.match;
	}
	for (size_t i = 0; i < g.n; i++)
		if (plist_add(out, in, g.r[i].a, g.r[i].b) < 0)
			goto oom;
	rc = 0;
	goto done;
oom:
	rc = lora_errf(err, "out of memory");
done:
	free(m.r);
	free(g.r);
	return rc;
}

/* --------------------------------------------------------- normalizers */

static int replace_all(const struct nstr *in, const struct pattern *p, const char *with, size_t with_len,
		       struct nstr *out, struct lora_err *err)
{
	struct rlist m = { 0 };
	int rc = 0;

	if (find_matches(p, in->s, in->len, &m, err) < 0)
		return -1;
	for (size_t i = 0; i < m.n && rc == 0; i++) {
		struct range r = m.r[i];
		if (r.match)
			rc = nstr_add(out, with, with_len, in->al[r.a]);
		else
			rc = nstr_addal(out, in->s + r.a, in->al + r.a, r.b - r.a);
	}
	free(m.r);
	if (rc < 0 || nstr_reserve(out, 0) < 0)
		return lora_errf(err, "out of memory");
	return 0;
}

static int normalize(const struct lora_tok *t, struct nstr *n, struct lora_err *err)
{
	for (size_t i = 0; i < t->n_norm; i++) {
		const struct norm_op *op = &t->norm[i];
		struct nstr o = { 0 };
		if (!n->len)
			return 0;
		switch (op->kind) {
		case NORM_PREPEND:
			if (nstr_add(&o, op->str, op->str_len, n->al[0]) < 0 || nstr_addal(&o, n->s, n->al, n->len) < 0) {
				nstr_free(&o);
				return lora_errf(err, "out of memory");
			}
			break;
		case NORM_REPLACE:
			if (replace_all(n, &op->pat, op->str, op->str_len, &o, err) < 0) {
				nstr_free(&o);
				return -1;
			}
			break;
		case NORM_NFC:
			if (nfc_normalize(n->s, n->len, n->al, &o.s, &o.al, &o.len) < 0)
				return lora_errf(err, "out of memory");
			o.cap = o.len + 1;
			break;
		}
		nstr_free(n);
		*n = o;
	}
	return 0;
}

/* ------------------------------------------------------ pre-tokenizers */

static int byte_level_map(const struct nstr *in, struct nstr *out)
{
	for (size_t i = 0; i < in->len; i++) {
		unsigned char b = (unsigned char)in->s[i];
		if (nstr_add(out, bl_utf8[b], bl_utf8_len[b], in->al[i]) < 0)
			return -1;
	}
	return nstr_reserve(out, 0);
}

static int metaspace(const struct pre_op *op, const struct nstr *in, struct plist *out, struct lora_err *err)
{
	struct nstr o = { 0 };
	struct pattern sp = { NULL, (char *)" ", 1 }, rp = { NULL, (char *)op->repl, op->repl_len };
	int rc;

	if (replace_all(in, &sp, op->repl, op->repl_len, &o, err) < 0)
		return -1;
	if (o.len && (o.len < op->repl_len || memcmp(o.s, op->repl, op->repl_len)) &&
	    (op->scheme == PREPEND_ALWAYS || (op->scheme == PREPEND_FIRST && o.al[0] == 0))) {
		struct nstr p = { 0 };
		if (nstr_add(&p, op->repl, op->repl_len, o.al[0]) < 0 || nstr_addal(&p, o.s, o.al, o.len) < 0) {
			nstr_free(&p);
			nstr_free(&o);
			return lora_errf(err, "out of memory");
		}
		nstr_free(&o);
		o = p;
	}
	if (op->split)
		rc = split_piece(&o, &rp, SPLIT_NEXT, 0, out, err);
	else
		rc = plist_add(out, &o, 0, o.len) < 0 ? lora_errf(err, "out of memory") : 0;
	nstr_free(&o);
	return rc;
}

static int pre_one(const struct pre_op *op, const struct nstr *in, struct plist *out, struct lora_err *err)
{
	switch (op->kind) {
	case PRE_SPLIT:
	case PRE_DIGITS:
		return split_piece(in, &op->pat, op->behavior, op->invert, out, err);
	case PRE_METASPACE:
		return metaspace(op, in, out, err);
	case PRE_BYTELEVEL: {
		struct nstr pre = { 0 };
		struct plist parts = { 0 };
		int rc = 0;
		if (op->add_prefix_space && in->len && in->s[0] != ' ') {
			if (nstr_add(&pre, " ", 1, in->al[0]) < 0 || nstr_addal(&pre, in->s, in->al, in->len) < 0)
				rc = lora_errf(err, "out of memory");
		} else if (nstr_addal(&pre, in->s, in->al, in->len) < 0) {
			rc = lora_errf(err, "out of memory");
		}
		if (!rc) {
			if (op->pat.re)
				rc = split_piece(&pre, &op->pat, SPLIT_ISOLATED, 0, &parts, err);
			else if (plist_add(&parts, &pre, 0, pre.len) < 0)
				rc = lora_errf(err, "out of memory");
		}
		for (size_t i = 0; !rc && i < parts.n; i++) {
			struct nstr m = { 0 };
			if (byte_level_map(&parts.p[i], &m) < 0 || plist_add(out, &m, 0, m.len) < 0)
				rc = lora_errf(err, "out of memory");
			nstr_free(&m);
		}
		nstr_free(&pre);
		plist_free(&parts);
		return rc;
	}
	}
	return 0;
}

static int pre_tokenize(const struct lora_tok *t, const struct nstr *in, struct plist *out, struct lora_err *err)
{
	struct plist cur = { 0 };

	if (plist_add(&cur, in, 0, in->len) < 0)
		return lora_errf(err, "out of memory");
	for (size_t i = 0; i < t->n_pre; i++) {
		struct plist next = { 0 };
		for (size_t k = 0; k < cur.n; k++)
			if (pre_one(&t->pre[i], &cur.p[k], &next, err) < 0) {
				plist_free(&next);
				plist_free(&cur);
				return -1;
			}
		plist_free(&cur);
		cur = next;
	}
	*out = cur;
	return 0;
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
	int32_t n = 0;
	int rc = 0;

	if (t->ignore_merges) {
		int32_t id = strmap_get(&t->vocab, s, len);
		if (id >= 0)
			return lora_tokens_push(out, id, al[0], err);
	}
	sy = malloc(len * sizeof(*sy));
	if (!sy)
		return lora_errf(err, "out of memory");
	for (size_t i = 0; i < len;) {
		size_t cl = utf8_len1((unsigned char)s[i]);
		int32_t id;
		if (cl > len - i)
			cl = len - i;
		id = strmap_get(&t->vocab, s + i, cl);
		if (id < 0 && t->byte_fallback) {
			size_t k;
			for (k = 0; k < cl && t->byte_id[(unsigned char)s[i + k]] >= 0; k++)
				;
			if (k == cl) {
				for (k = 0; k < cl; k++) {
					sy[n] = (struct sym){ t->byte_id[(unsigned char)s[i + k]], n - 1, -1, al[i] };
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
			while (start > done && (cp = last_cp(in->s, start), is_ws(cp))) {
				char tmp[4];
				start -= utf8_enc(cp, tmp);
			}
		if (a->rstrip)
			while (stop < in->len) {
				size_t l = utf8_dec(in->s + stop, &cp);
				if (!is_ws(cp))
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

	if (pre_tokenize(t, part, &pieces, err) < 0)
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
	rc = normalize(t, &n, err);
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
	c = own ? (char *)s : xstrndup(s, n);
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
		s = xstrndup("", 0);
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
			if (cp >= 512 || bl_cp2byte[cp] < 0)
				break;
			char b = (char)bl_cp2byte[cp];
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

static int dec_one(const struct dec_op *op, size_t idx, const char *s, size_t n, struct strv *out)
{
	struct lora_buf b = LORA_BUF_INIT;
	int rc;

	switch (op->kind) {
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
				rc = dec_one(op, i, v.s[i], v.len[i], &o);
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

int lora_tok_adds_eos(const struct lora_tok *t)
{
	return t->eos >= 0 && t->n_suffix && t->suffix[t->n_suffix - 1] == t->eos;
}

/* ================================================================= NFC */

#include "train/tokenizer_nfc.h"

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))
enum { H_SBASE = 0xAC00, H_LBASE = 0x1100, H_VBASE = 0x1161, H_TBASE = 0x11A7, H_LCOUNT = 19,
       H_VCOUNT = 21, H_TCOUNT = 28, H_NCOUNT = H_VCOUNT * H_TCOUNT, H_SCOUNT = H_LCOUNT * H_NCOUNT };

static int nfc_class(uint32_t cp)
{
	size_t lo = 0, hi = N_ELEMS(nfc_ccc);
	if (cp < 0x300)
		return 0;
	while (lo < hi) {
		size_t m = (lo + hi) / 2;
		if (cp < nfc_ccc[m][0])
			hi = m;
		else if (cp > nfc_ccc[m][1])
			lo = m + 1;
		else
			return (int)nfc_ccc[m][2];
	}
	return 0;
}

static const uint32_t *nfc_dec_of(uint32_t cp)
{
	size_t lo = 0, hi = N_ELEMS(nfc_dec);
	while (lo < hi) {
		size_t m = (lo + hi) / 2;
		if (cp < nfc_dec[m][0])
			hi = m;
		else if (cp > nfc_dec[m][0])
			lo = m + 1;
		else
			return nfc_dec[m];
	}
	return NULL;
}

static uint32_t nfc_compose(uint32_t a, uint32_t b)
{
	size_t lo = 0, hi = N_ELEMS(nfc_comp);
	if (a - H_LBASE < H_LCOUNT && b - H_VBASE < H_VCOUNT)
		return H_SBASE + ((a - H_LBASE) * H_VCOUNT + (b - H_VBASE)) * H_TCOUNT;
	if (a - H_SBASE < H_SCOUNT && (a - H_SBASE) % H_TCOUNT == 0 && b - H_TBASE - 1 < H_TCOUNT - 1)
		return a + (b - H_TBASE);
	while (lo < hi) {
		size_t m = (lo + hi) / 2;
		if (a < nfc_comp[m][0] || (a == nfc_comp[m][0] && b < nfc_comp[m][1]))
			hi = m;
		else if (a > nfc_comp[m][0] || b > nfc_comp[m][1])
			lo = m + 1;
		else
			return nfc_comp[m][2];
	}
	return 0;
}

struct cpv {
	uint32_t *cp;
	int64_t *al;
	size_t n, cap;
};

static int cpv_push(struct cpv *v, uint32_t cp, int64_t al)
{
	if (v->n == v->cap) {
		size_t cap = v->cap ? v->cap * 2 : 64;
		uint32_t *c = realloc(v->cp, cap * sizeof(*c));
		int64_t *a;
		if (!c)
			return -1;
		v->cp = c;
		a = realloc(v->al, cap * sizeof(*a));
		if (!a)
			return -1;
		v->al = a;
		v->cap = cap;
	}
	v->cp[v->n] = cp;
	v->al[v->n++] = al;
	return 0;
}

static int nfc_decompose(struct cpv *v, uint32_t cp, int64_t al, int depth)
{
	const uint32_t *d;
	if (cp - H_SBASE < H_SCOUNT) {
		uint32_t s = cp - H_SBASE, t = s % H_TCOUNT;
		if (cpv_push(v, H_LBASE + s / H_NCOUNT, al) < 0 || cpv_push(v, H_VBASE + (s % H_NCOUNT) / H_TCOUNT, al) < 0)
			return -1;
		return t ? cpv_push(v, H_TBASE + t, al) : 0;
	}
	if (cp >= 0xC0 && depth < 8 && (d = nfc_dec_of(cp))) {
		if (nfc_decompose(v, d[1], al, depth + 1) < 0)
			return -1;
		return d[2] ? nfc_decompose(v, d[2], al, depth + 1) : 0;
	}
	return cpv_push(v, cp, al);
}

/*
 * NFC (Unicode's canonical decomposition, canonical ordering, canonical
 * composition).  Each output byte keeps the offset of the input char it came
 * from; a composite keeps its starter's.  Text below U+0300 is already NFC.
 */
static int nfc_normalize(const char *s, size_t len, const int64_t *al, char **out_s, int64_t **out_al,
			 size_t *out_len)
{
	struct cpv v = { 0 };
	struct nstr o = { 0 };
	size_t i, fast = 1;

	for (i = 0; i < len; i++)
		if ((unsigned char)s[i] >= 0xCC) {   /* lead bytes of U+0300 and above */
			fast = 0;
			break;
		}
	if (fast) {
		if (nstr_addal(&o, s, al, len) < 0 || nstr_reserve(&o, 0) < 0)
			goto oom;
		goto out;
	}
	for (i = 0; i < len;) {
		uint32_t cp;
		int64_t a = al[i];
		i += utf8_dec(s + i, &cp);
		if (nfc_decompose(&v, cp, a, 0) < 0)
			goto oom;
	}
	/* canonical ordering: stable insertion sort of each run of non-starters */
	for (i = 1; i < v.n; i++) {
		int c = nfc_class(v.cp[i]);
		size_t k = i;
		uint32_t cp = v.cp[i];
		int64_t a = v.al[i];
		if (!c)
			continue;
		while (k > 0 && nfc_class(v.cp[k - 1]) > c) {
			v.cp[k] = v.cp[k - 1];
			v.al[k] = v.al[k - 1];
			k--;
		}
		v.cp[k] = cp;
		v.al[k] = a;
	}
	/* composition */
	if (v.n) {
		size_t starter = 0, w = 1;
		int last_class = nfc_class(v.cp[0]) ? 256 : 0;
		if (last_class)
			starter = (size_t)-1;
		for (i = 1; i < v.n; i++) {
			uint32_t cp = v.cp[i], c2;
			int c = nfc_class(cp);
			if (starter != (size_t)-1 && (last_class < c || last_class == 0) &&
			    (c2 = nfc_compose(v.cp[starter], cp)) != 0 && !(last_class == 0 && w - 1 != starter)) {
				v.cp[starter] = c2;
				continue;
			}
			if (c == 0) {
				starter = w;
				last_class = 0;
			} else {
				last_class = c;
			}
			v.cp[w] = cp;
			v.al[w++] = v.al[i];
		}
		v.n = w;
	}
	for (i = 0; i < v.n; i++) {
		char b[4];
		size_t n = utf8_enc(v.cp[i], b);
		if (nstr_add(&o, b, n, v.al[i]) < 0)
			goto oom;
	}
	if (nstr_reserve(&o, 0) < 0)
		goto oom;
out:
	free(v.cp);
	free(v.al);
	*out_s = o.s;
	*out_al = o.al;
	*out_len = o.len;
	return 0;
oom:
	free(v.cp);
	free(v.al);
	nstr_free(&o);
	return -1;
}
