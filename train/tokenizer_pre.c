/*
 * tokenizer_pre.c - the normalizers and pre-tokenizers of tokenizer.json, as
 * Hugging Face `tokenizers` runs them.
 *
 *   normalizers     Sequence, Prepend, Replace (string or regex), Strip,
 *                   Lowercase, NFC, NFD, NFKC, NFKD
 *   pre-tokenizers  Sequence, ByteLevel (GPT-2 regex when use_regex), Split
 *                   (regex or string, every behaviour, invert), Metaspace
 *                   (prepend_scheme, split), Digits, Whitespace,
 *                   WhitespaceSplit, Punctuation, CharDelimiterSplit,
 *                   BertPreTokenizer
 * Anything else is refused by its type name.  `tokenizers` runs regexes with
 * Oniguruma; we use PCRE2 in UTF + UCP mode, and where a class differs
 * between the two (\w, \s) the built-in patterns spell it out.
 */
#define _GNU_SOURCE   /* memmem */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/tokenizer_int.h"

/* =============================================== the byte-level alphabet */

/*
 * GPT-2's byte <-> char map: printable bytes ('!'..'~', 0xA1..0xAC,
 * 0xAE..0xFF) stand for themselves; the other 68 bytes become U+0100 + n in
 * byte order.  Every char is at most U+0143, so a 512-entry table inverts it.
 */
static uint16_t bl_byte2cp[256];
int16_t tok_bl_cp2byte[512];
static char bl_utf8[256][3];   /* UTF-8 of each byte's char */
static uint8_t bl_utf8_len[256];

static void bl_init_once(void)
{
	int n = 0;
	for (int i = 0; i < 512; i++)
		tok_bl_cp2byte[i] = -1;
	for (int b = 0; b < 256; b++) {
		int keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
		uint16_t cp = keep ? (uint16_t)b : (uint16_t)(256 + n++);
		bl_byte2cp[b] = cp;
		tok_bl_cp2byte[cp] = (int16_t)b;
		bl_utf8_len[b] = (uint8_t)utf8_enc(cp, bl_utf8[b]);
	}
}

void tok_bl_init(void)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	pthread_once(&once, bl_init_once);
}

/* ============================================== strings with alignments */


void nstr_free(struct nstr *n)
{
	free(n->s);
	free(n->al);
	memset(n, 0, sizeof(*n));
}

int nstr_reserve(struct nstr *n, size_t more)
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

int nstr_add(struct nstr *n, const char *s, size_t len, int64_t al)
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

int nstr_addal(struct nstr *n, const char *s, const int64_t *al, size_t len)
{
	if (nstr_reserve(n, len) < 0)
		return -1;
	memcpy(n->s + n->len, s, len);
	memcpy(n->al + n->len, al, len * sizeof(*al));
	n->len += len;
	n->s[n->len] = 0;
	return 0;
}


void plist_free(struct plist *l)
{
	for (size_t i = 0; i < l->n; i++)
		nstr_free(&l->p[i]);
	free(l->p);
	memset(l, 0, sizeof(*l));
}

/* Append a copy of src[a, b) as a new piece (empty ranges are dropped). */
int plist_add(struct plist *l, const struct nstr *src, size_t a, size_t b)
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

char *tok_strndup(const char *s, size_t n)
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
		p->lit = tok_strndup(s->valuestring, p->lit_len);
		return p->lit ? 0 : lora_errf(err, "out of memory");
	}
	if (cJSON_IsString(r))
		return compile_re(r->valuestring, &p->re, label, err);
	return lora_errf(err, "%s: pattern is neither {\"String\"} nor {\"Regex\"}", label);
}

const char *tok_jstr(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

int tok_jbool(const cJSON *o, const char *k, int dflt)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

static const char GPT2_RE[] =
	"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* Append an op to a growable array of ops; returns the new slot or NULL. */
void *tok_grow(void **arr, size_t *n, size_t size)
{
	void *p = realloc(*arr, (*n + 1) * size);
	if (!p)
		return NULL;
	*arr = p;
	memset((char *)p + *n * size, 0, size);
	return (char *)p + (*n)++ * size;
}

int tok_parse_scheme(const cJSON *j, enum prepend_scheme *s, const char *label, struct lora_err *err)
{
	const char *v = tok_jstr(j, "prepend_scheme");
	if (!v) {
		/* older files: add_prefix_space */
		*s = tok_jbool(j, "add_prefix_space", 1) ? PREPEND_ALWAYS : PREPEND_NEVER;
		return 0;
	}
	if (!strcmp(v, "always"))
		*s = PREPEND_ALWAYS;
	else if (!strcmp(v, "first"))
		*s = PREPEND_FIRST;
	else if (!strcmp(v, "never"))
		*s = PREPEND_NEVER;
	else
		return lora_errf(err, "%s: Metaspace prepend_scheme '%s' is not supported (always, first, never are)",
				 label, v);
	return 0;
}

int tok_parse_replacement(const cJSON *j, char *out, size_t *len, const char *label, struct lora_err *err)
{
	const char *r = tok_jstr(j, "replacement");
	size_t n;
	if (!r)
		r = "\xE2\x96\x81";   /* U+2581 */
	n = strlen(r);
	if (!n || n > 4 || utf8_seq((const unsigned char *)r, n) != n)
		return lora_errf(err, "%s: Metaspace replacement '%s' is not supported (one character is)", label, r);
	memcpy(out, r, n);
	*len = n;
	return 0;
}

/* Rust's char::is_whitespace, Oniguruma's \w (Alphabetic, marks, decimal digits, connector
 * punctuation, joiners) and `tokenizers`' punctuation (ASCII punctuation or Unicode P*) */
#define WS_CLASS "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
#define WORD_CLASS "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}"
#define PUNCT_CLASS "\\p{P}!-/:-@\\[-`{-~"

static const char WHITESPACE_RE[] = "[" WORD_CLASS "]+|[^" WORD_CLASS WS_CLASS "]+";
static const char WS_RE[] = "[" WS_CLASS "]";
static const char PUNCT_RE[] = "[" PUNCT_CLASS "]";

static int parse_behavior(const char *b, enum split_behavior *out, const char *label, const char *type,
			  struct lora_err *err)
{
	static const char *names[] = { "Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous" };
	for (int i = 0; i < 5; i++)
		if (b && !strcmp(b, names[i])) {
			*out = (enum split_behavior)i;
			return 0;
		}
	if (!b)
		return lora_errf(err, "%s: %s pre_tokenizer without 'behavior'", label, type);
	return lora_errf(err, "%s: pre_tokenizer %s behavior '%s' is not supported", label, type, b);
}

int tok_parse_normalizer(struct tok_pipe *t, const cJSON *j, const char *label, struct lora_err *err)
{
	static const char *forms[] = { "NFC", "NFD", "NFKC", "NFKD" };
	const char *type;
	struct norm_op *op;

	if (!j || cJSON_IsNull(j))
		return 0;
	type = tok_jstr(j, "type");
	if (!type)
		return lora_errf(err, "%s: normalizer without a type", label);
	if (!strcmp(type, "Sequence")) {
		const cJSON *e, *arr = cJSON_GetObjectItemCaseSensitive(j, "normalizers");
		if (!cJSON_IsArray(arr))
			return lora_errf(err, "%s: Sequence normalizer without 'normalizers'", label);
		cJSON_ArrayForEach(e, arr)
			if (tok_parse_normalizer(t, e, label, err) < 0)
				return -1;
		return 0;
	}
	if (strcmp(type, "Prepend") && strcmp(type, "Replace") && strcmp(type, "NFC") && strcmp(type, "NFD") &&
	    strcmp(type, "NFKC") && strcmp(type, "NFKD") && strcmp(type, "Lowercase") && strcmp(type, "Strip"))
		return lora_errf(err, "%s: normalizer type '%s' is not supported (Sequence, Prepend, Replace, Strip, "
				 "Lowercase, NFC, NFD, NFKC, NFKD are)", label, type);
	op = tok_grow((void **)&t->norm, &t->n_norm, sizeof(*op));
	if (!op)
		return lora_errf(err, "out of memory");
	for (int i = 0; i < 4; i++)
		if (!strcmp(type, forms[i])) {
			op->kind = NORM_UNICODE;
			op->form = i;
			return 0;
		}
	if (!strcmp(type, "Lowercase")) {
		op->kind = NORM_LOWER;
		return 0;
	}
	if (!strcmp(type, "Strip")) {
		op->kind = NORM_STRIP;
		op->left = tok_jbool(j, "strip_left", 1);
		op->right = tok_jbool(j, "strip_right", 1);
		return 0;
	}
	if (!strcmp(type, "Prepend")) {
		const char *s = tok_jstr(j, "prepend");
		op->kind = NORM_PREPEND;
		if (!s)
			return lora_errf(err, "%s: Prepend normalizer without 'prepend'", label);
		op->str_len = strlen(s);
		op->str = tok_strndup(s, op->str_len);
		return op->str ? 0 : lora_errf(err, "out of memory");
	}
	op->kind = NORM_REPLACE;
	{
		const char *c = tok_jstr(j, "content");
		if (!c)
			return lora_errf(err, "%s: Replace normalizer without 'content'", label);
		op->str_len = strlen(c);
		op->str = tok_strndup(c, op->str_len);
		if (!op->str)
			return lora_errf(err, "out of memory");
	}
	return parse_pattern(cJSON_GetObjectItemCaseSensitive(j, "pattern"), &op->pat, label, err);
}

/* A pre-tokenizer that splits on a fixed regex or literal. */
static int add_split(struct tok_pipe *t, const char *re, const char *lit, enum split_behavior bh, int invert,
		     const char *label, struct lora_err *err)
{
	struct pre_op *op = tok_grow((void **)&t->pre, &t->n_pre, sizeof(*op));
	if (!op)
		return lora_errf(err, "out of memory");
	op->kind = PRE_SPLIT;
	op->behavior = bh;
	op->invert = invert;
	if (re)
		return compile_re(re, &op->pat.re, label, err);
	op->pat.lit_len = strlen(lit);
	op->pat.lit = tok_strndup(lit, op->pat.lit_len);
	return op->pat.lit ? 0 : lora_errf(err, "out of memory");
}

int tok_parse_pre(struct tok_pipe *t, const cJSON *j, const char *label, struct lora_err *err)
{
	const char *type;
	struct pre_op *op;

	if (!j || cJSON_IsNull(j))
		return 0;
	type = tok_jstr(j, "type");
	if (!type)
		return lora_errf(err, "%s: pre_tokenizer without a type", label);
	if (!strcmp(type, "Sequence")) {
		const cJSON *e, *arr = cJSON_GetObjectItemCaseSensitive(j, "pretokenizers");
		if (!cJSON_IsArray(arr))
			return lora_errf(err, "%s: Sequence pre_tokenizer without 'pretokenizers'", label);
		cJSON_ArrayForEach(e, arr)
			if (tok_parse_pre(t, e, label, err) < 0)
				return -1;
		return 0;
	}
	if (!strcmp(type, "Digits"))
		return add_split(t, "\\p{N}", NULL, tok_jbool(j, "individual_digits", 0) ? SPLIT_ISOLATED : SPLIT_CONTIGUOUS,
				 0, label, err);
	if (!strcmp(type, "Whitespace"))   /* \w+|[^\w\s]+, the rest removed */
		return add_split(t, WHITESPACE_RE, NULL, SPLIT_REMOVED, 1, label, err);
	if (!strcmp(type, "WhitespaceSplit"))
		return add_split(t, WS_RE, NULL, SPLIT_REMOVED, 0, label, err);
	if (!strcmp(type, "BertPreTokenizer"))
		return add_split(t, WS_RE, NULL, SPLIT_REMOVED, 0, label, err) < 0 ? -1
			: add_split(t, PUNCT_RE, NULL, SPLIT_ISOLATED, 0, label, err);
	if (!strcmp(type, "Punctuation")) {
		enum split_behavior bh = SPLIT_ISOLATED;
		if (tok_jstr(j, "behavior") && parse_behavior(tok_jstr(j, "behavior"), &bh, label, type, err) < 0)
			return -1;
		return add_split(t, PUNCT_RE, NULL, bh, 0, label, err);
	}
	if (!strcmp(type, "CharDelimiterSplit")) {
		const char *d = tok_jstr(j, "delimiter");
		if (!d || !*d || utf8_seq((const unsigned char *)d, strlen(d)) != strlen(d))
			return lora_errf(err, "%s: CharDelimiterSplit needs a one-character 'delimiter'", label);
		return add_split(t, NULL, d, SPLIT_REMOVED, 0, label, err);
	}
	if (strcmp(type, "ByteLevel") && strcmp(type, "Split") && strcmp(type, "Metaspace"))
		return lora_errf(err, "%s: pre_tokenizer type '%s' is not supported (Sequence, ByteLevel, Split, "
				 "Metaspace, Digits, Whitespace, WhitespaceSplit, Punctuation, CharDelimiterSplit, "
				 "BertPreTokenizer are)", label, type);
	op = tok_grow((void **)&t->pre, &t->n_pre, sizeof(*op));
	if (!op)
		return lora_errf(err, "out of memory");
	if (!strcmp(type, "ByteLevel")) {
		/* trim_offsets changes offsets only; ours point at the first byte anyway */
		op->kind = PRE_BYTELEVEL;
		op->add_prefix_space = tok_jbool(j, "add_prefix_space", 1);
		op->behavior = SPLIT_ISOLATED;
		t->byte_level = 1;
		if (tok_jbool(j, "use_regex", 1))
			return compile_re(GPT2_RE, &op->pat.re, label, err);
		return 0;
	}
	if (!strcmp(type, "Metaspace")) {
		op->kind = PRE_METASPACE;
		op->split = tok_jbool(j, "split", 1);
		if (tok_parse_replacement(j, op->repl, &op->repl_len, label, err) < 0)
			return -1;
		return tok_parse_scheme(j, &op->scheme, label, err);
	}
	op->kind = PRE_SPLIT;
	if (parse_behavior(tok_jstr(j, "behavior"), &op->behavior, label, type, err) < 0)
		return -1;
	op->invert = tok_jbool(j, "invert", 0);
	return parse_pattern(cJSON_GetObjectItemCaseSensitive(j, "pattern"), &op->pat, label, err);
}

void tok_pipe_free(struct tok_pipe *t)
{
	for (size_t i = 0; i < t->n_norm; i++) {
		pattern_free(&t->norm[i].pat);
		free(t->norm[i].str);
	}
	free(t->norm);
	for (size_t i = 0; i < t->n_pre; i++)
		pattern_free(&t->pre[i].pat);
	free(t->pre);
	memset(t, 0, sizeof(*t));
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

static int strip(const struct norm_op *op, const struct nstr *in, struct nstr *out)
{
	size_t a = 0, z = in->len;
	uint32_t cp;

	while (op->left && a < z) {
		size_t l = utf8_dec(in->s + a, &cp);
		if (!tok_is_ws(cp))
			break;
		a += l;
	}
	while (op->right && z > a) {
		size_t k = z - 1;
		while (k > a && ((unsigned char)in->s[k] & 0xC0) == 0x80)
			k--;
		utf8_dec(in->s + k, &cp);
		if (!tok_is_ws(cp))
			break;
		z = k;
	}
	if (nstr_addal(out, in->s + a, in->al + a, z - a) < 0)
		return -1;
	return nstr_reserve(out, 0);
}

int tok_normalize(const struct tok_pipe *t, struct nstr *n, struct lora_err *err)
{
	for (size_t i = 0; i < t->n_norm; i++) {
		const struct norm_op *op = &t->norm[i];
		struct nstr o = { 0 };
		int rc = 0;
		if (!n->len)
			return 0;
		switch (op->kind) {
		case NORM_PREPEND:
			if (nstr_add(&o, op->str, op->str_len, n->al[0]) < 0 || nstr_addal(&o, n->s, n->al, n->len) < 0)
				rc = lora_errf(err, "out of memory");
			break;
		case NORM_REPLACE:
			rc = replace_all(n, &op->pat, op->str, op->str_len, &o, err);
			break;
		case NORM_UNICODE:
			if (tok_uni_normalize((enum tok_uni_form)op->form, n, &o) < 0)
				rc = lora_errf(err, "out of memory");
			break;
		case NORM_LOWER:
			if (tok_uni_lowercase(n, &o) < 0)
				rc = lora_errf(err, "out of memory");
			break;
		case NORM_STRIP:
			if (strip(op, n, &o) < 0)
				rc = lora_errf(err, "out of memory");
			break;
		}
		if (rc < 0) {
			nstr_free(&o);
			return -1;
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

int tok_pre_tokenize(const struct tok_pipe *t, const struct nstr *in, struct plist *out, struct lora_err *err)
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
