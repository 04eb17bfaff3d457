/*
 * tokenizer_int.h - what the tokenizer's files share; not an API.
 *
 *   train/tokenizer.c          the model (BPE), added tokens, loading,
 *                              post-processing, tokenizer_config.json, decoders
 *   train/tokenizer_pre.c      normalizers and pre-tokenizers: parsing and running
 *   train/tokenizer_unicode.c  NFC / NFD / NFKC / NFKD and lowercase
 *
 * Text moves through the pipeline as a `struct nstr`: bytes, each with the
 * offset of the input byte it came from.
 */
#ifndef LORA_TOKENIZER_INT_H
#define LORA_TOKENIZER_INT_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "libadapter/base/err.h"

/* ================================================================ UTF-8 */

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 if invalid. */
static inline size_t utf8_seq(const unsigned char *s, size_t n)
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

static inline size_t utf8_enc(uint32_t cp, char *o)
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
static inline size_t utf8_dec(const char *s, uint32_t *cp)
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

static inline size_t utf8_len1(unsigned char c)
{
	return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

/* Rust's char::is_whitespace (the Unicode White_Space property). */
static inline int tok_is_ws(uint32_t c)
{
	return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
	       (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
	       c == 0x3000;
}

/* ============================================== strings with alignments */

struct nstr {
	char *s;
	int64_t *al;   /* (len) input offset of each byte */
	size_t len, cap;
};

void nstr_free(struct nstr *n);
int nstr_reserve(struct nstr *n, size_t more);   /* also keeps s NUL-terminated */
int nstr_add(struct nstr *n, const char *s, size_t len, int64_t al);
int nstr_addal(struct nstr *n, const char *s, const int64_t *al, size_t len);

/* A list of pieces (pre-tokens). */
struct plist {
	struct nstr *p;
	size_t n, cap;
};

void plist_free(struct plist *l);
/* Append a copy of src[a, b) as a new piece (empty ranges are dropped). */
int plist_add(struct plist *l, const struct nstr *src, size_t a, size_t b);

/* ======================================================== the pipeline */

enum split_behavior { SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_PREV, SPLIT_NEXT, SPLIT_CONTIGUOUS };

struct pattern {
	pcre2_code *re;   /* regex, or NULL for a literal */
	char *lit;
	size_t lit_len;
};

enum norm_kind { NORM_PREPEND, NORM_REPLACE, NORM_UNICODE, NORM_LOWER, NORM_STRIP };
struct norm_op {
	enum norm_kind kind;
	struct pattern pat;       /* REPLACE */
	char *str;                /* PREPEND text / REPLACE replacement */
	size_t str_len;
	int form;                 /* UNICODE: enum tok_uni_form */
	int left, right;          /* STRIP */
};

enum pre_kind { PRE_BYTELEVEL, PRE_SPLIT, PRE_METASPACE };
enum prepend_scheme { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER };
struct pre_op {
	enum pre_kind kind;
	struct pattern pat;       /* SPLIT (Split, Digits, Whitespace, ...); BYTELEVEL with use_regex */
	enum split_behavior behavior;
	int invert;
	int add_prefix_space;     /* BYTELEVEL */
	char repl[8];             /* METASPACE replacement char (UTF-8) */
	size_t repl_len;
	enum prepend_scheme scheme;
	int split;                /* METASPACE */
};

struct tok_pipe {
	struct norm_op *norm;
	size_t n_norm;
	struct pre_op *pre;
	size_t n_pre;
	int byte_level;           /* a ByteLevel pre-tokenizer maps bytes to chars */
};

/* ------------------------------------------------ helpers for parsing */

char *tok_strndup(const char *s, size_t n);
const char *tok_jstr(const cJSON *o, const char *k);
int tok_jbool(const cJSON *o, const char *k, int dflt);
/* Append a zeroed element to a growable array; returns it or NULL. */
void *tok_grow(void **arr, size_t *n, size_t size);
int tok_parse_scheme(const cJSON *j, enum prepend_scheme *s, const char *label, struct lora_err *err);
int tok_parse_replacement(const cJSON *j, char *out, size_t *len, const char *label, struct lora_err *err);

/* "normalizer" / "pre_tokenizer" of tokenizer.json (NULL or null: none). */
int tok_parse_normalizer(struct tok_pipe *p, const cJSON *j, const char *label, struct lora_err *err);
int tok_parse_pre(struct tok_pipe *p, const cJSON *j, const char *label, struct lora_err *err);
void tok_pipe_free(struct tok_pipe *p);

/* Run the normalizers on n in place. */
int tok_normalize(const struct tok_pipe *p, struct nstr *n, struct lora_err *err);
/* Run the pre-tokenizers on one normalized piece; the pieces go to *out. */
int tok_pre_tokenize(const struct tok_pipe *p, const struct nstr *in, struct plist *out, struct lora_err *err);

/* GPT-2's byte <-> char map (the ByteLevel alphabet). */
extern int16_t tok_bl_cp2byte[512];
void tok_bl_init(void);

/* =============================================================== Unicode */

enum tok_uni_form { UNI_NFC, UNI_NFD, UNI_NFKC, UNI_NFKD };

/*
 * Normalize s[0, len) to a Unicode normalization form (or, with lower set,
 * lowercase it char by char).  Each output byte keeps the offset of the input
 * char it came from; a composite keeps its starter's.  *out is replaced.
 */
int tok_uni_normalize(enum tok_uni_form form, const struct nstr *in, struct nstr *out);
int tok_uni_lowercase(const struct nstr *in, struct nstr *out);

#endif
