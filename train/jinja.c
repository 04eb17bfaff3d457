/*
 * jinja.c - the Jinja subset of Hugging Face chat templates (see jinja.h).
 *
 * Three parts: a lexer that applies jinja2's whitespace rules as it cuts the
 * source into tokens, a recursive-descent parser to a tree of nodes, and a
 * tree-walking evaluator whose values live in one arena per render (freed at
 * once when the render ends).  Semantics follow jinja2 3.1 as transformers
 * configures it; where Python semantics show through (str(), repr of lists,
 * json.dumps, slicing, floor division) they are Python's.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/jinja.h"

/* ================================================================ tokens */

enum tk { TK_EOF, TK_TEXT, TK_VAR_BEGIN, TK_VAR_END, TK_BLOCK_BEGIN, TK_BLOCK_END, TK_NAME, TK_STR, TK_INT,
	  TK_FLOAT, TK_OP };

struct token {
	enum tk k;
	int line;
	char *s;          /* TEXT, NAME, STR (decoded), OP: malloc'd */
	size_t n;         /* length of s */
	int64_t i;
	double f;
};

/* ================================================================ tree */

enum nk {
	/* statements */
	N_BODY, N_TEXT, N_OUT, N_IF, N_FOR, N_SET, N_SETBLOCK, N_MACRO, N_BREAK, N_CONTINUE, N_GEN,
	/* expressions */
	E_LIT, E_NAME, E_ATTR, E_ITEM, E_SLICE, E_CALL, E_FILTER, E_TEST, E_BIN, E_NEG, E_POS, E_NOT, E_AND, E_OR,
	E_COND, E_LIST, E_TUPLE, E_DICT, E_CMP
};

enum { L_NONE, L_TRUE, L_FALSE, L_INT, L_FLOAT, L_STR };

struct node {
	enum nk k;
	int line;
	int op;                 /* E_BIN: operator char / code; E_CMP: see cmp ops; E_TEST: negated; L_* for E_LIT */
	char *s;                /* names, text, string literal */
	size_t n;               /* length of s */
	int64_t i;
	double f;
	struct node **a;        /* children */
	size_t na;
	char **kw;              /* keyword names for the last nkw children of a call (E_CALL/E_FILTER/E_TEST) */
	size_t nkw;
	struct node *x, *y, *z, *w;   /* operands / bodies */
};

struct lora_jinja {
	struct node *root;
	struct lora_jinja_limits lim;
	int has_generation;
};

/* ================================================================ errors */

#define ERRMAX 512

static void vfmt(char *dst, int line, const char *fmt, va_list ap)
{
	int k = line > 0 ? snprintf(dst, ERRMAX, "template line %d: ", line) : 0;
	if (k < 0 || k >= ERRMAX)
		k = 0;
	vsnprintf(dst + k, ERRMAX - (size_t)k, fmt, ap);
}

/* ================================================================ lexer */

struct lexer {
	const char *src;
	size_t n, p;
	int line;
	struct token *t;
	size_t nt, ct;
	char msg[ERRMAX];
	int lstrip_next;        /* after a `-` close: strip leading whitespace of the next text */
	int trim_next;          /* after a block/comment close (trim_blocks): drop one newline */
	int oom;
};

static int lex_fail(struct lexer *L, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfmt(L->msg, L->line, fmt, ap);
	va_end(ap);
	return -1;
}

static struct token *lex_push(struct lexer *L, enum tk k)
{
	if (L->nt == L->ct) {
		size_t c = L->ct ? L->ct * 2 : 256;
		struct token *t = realloc(L->t, c * sizeof(*t));
		if (!t) {
			L->oom = 1;
			return NULL;
		}
		L->t = t;
		L->ct = c;
	}
	memset(&L->t[L->nt], 0, sizeof(L->t[0]));
	L->t[L->nt].k = k;
	L->t[L->nt].line = L->line;
	return &L->t[L->nt++];
}

static char *dupn(const char *s, size_t n)
{
	char *d = malloc(n + 1);
	if (d) {
		memcpy(d, s, n);
		d[n] = 0;
	}
	return d;
}

static int count_lines(const char *s, size_t n)
{
	int c = 0;
	for (size_t i = 0; i < n; i++)
		c += s[i] == '\n';
	return c;
}

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

/* Emit text src[a, b) after whitespace control; `strip_right` = the next tag has `-`, `lstrip` = lstrip_blocks applies. */
static int lex_text(struct lexer *L, size_t a, size_t b, int strip_right, int lstrip)
{
	size_t a0 = a, b0 = b;
	struct token *t;

	if (L->lstrip_next) {
		while (a < b && is_ws(L->src[a]))
			a++;
	} else if (L->trim_next && a < b && L->src[a] == '\n') {
		a++;
	}
	L->lstrip_next = L->trim_next = 0;
	if (strip_right) {
		while (b > a && is_ws(L->src[b - 1]))
			b--;
	} else if (lstrip) {
		/* only spaces/tabs between the start of the line and the tag */
		size_t q = b;
		while (q > a0 && L->src[q - 1] != '\n' && is_ws(L->src[q - 1]))
			q--;
		if (q < b && (q == 0 || L->src[q - 1] == '\n') && q >= a)
			b = q;
	}
	if (b > a) {
		if (!(t = lex_push(L, TK_TEXT)) || !(t->s = dupn(L->src + a, b - a)))
			return L->oom = 1, -1;
		t->n = b - a;
	}
	L->line += count_lines(L->src + a0, b0 - a0);
	return 0;
}

static int utf8_put(char *o, uint32_t c)
{
	if (c < 0x80) { o[0] = (char)c; return 1; }
	if (c < 0x800) { o[0] = (char)(0xC0 | (c >> 6)); o[1] = (char)(0x80 | (c & 63)); return 2; }
	if (c < 0x10000) { o[0] = (char)(0xE0 | (c >> 12)); o[1] = (char)(0x80 | ((c >> 6) & 63)); o[2] = (char)(0x80 | (c & 63)); return 3; }
	o[0] = (char)(0xF0 | (c >> 18)); o[1] = (char)(0x80 | ((c >> 12) & 63));
	o[2] = (char)(0x80 | ((c >> 6) & 63)); o[3] = (char)(0x80 | (c & 63));
	return 4;
}

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* A string literal at L->p (the quote): Python unicode-escape decoding, as jinja2 does. */
static int lex_string(struct lexer *L)
{
	char q = L->src[L->p];
	size_t i = L->p + 1, cap;
	char *o;
	size_t n = 0;
	struct token *t;
	int line0 = L->line;

	for (; i < L->n && L->src[i] != q; i++)
		if (L->src[i] == '\\')
			i++;
	if (i >= L->n)
		return lex_fail(L, "unterminated string literal");
	cap = i - L->p + 1;
	if (!(o = malloc(cap)))
		return L->oom = 1, -1;
	for (size_t j = L->p + 1; j < i; j++) {
		char c = L->src[j];
		if (c == '\n')
			L->line++;
		if (c != '\\') {
			o[n++] = c;
			continue;
		}
		c = L->src[++j];
		switch (c) {
		case 'n': o[n++] = '\n'; break;
		case 't': o[n++] = '\t'; break;
		case 'r': o[n++] = '\r'; break;
		case 'a': o[n++] = '\a'; break;
		case 'b': o[n++] = '\b'; break;
		case 'f': o[n++] = '\f'; break;
		case 'v': o[n++] = '\v'; break;
		case '\\': o[n++] = '\\'; break;
		case '\'': o[n++] = '\''; break;
		case '"': o[n++] = '"'; break;
		case '\n': L->line++; break;   /* line continuation */
		case 'x': case 'u': case 'U': {
			int w = c == 'x' ? 2 : c == 'u' ? 4 : 8;
			uint32_t v = 0;
			for (int k = 0; k < w; k++) {
				int h = j + 1 + (size_t)k < i ? hexval(L->src[j + 1 + k]) : -1;
				if (h < 0) {
					free(o);
					return lex_fail(L, "bad \\%c escape in a string literal", c);
				}
				v = v * 16 + (uint32_t)h;
			}
			if (v > 0x10FFFF || (v >= 0xD800 && v < 0xE000)) {
				free(o);
				return lex_fail(L, "escape \\%c%X is not a unicode scalar value", c, v);
			}
			j += (size_t)w;
			n += (size_t)utf8_put(o + n, v);   /* w+2 source bytes >= encoded bytes */
			break;
		}
		default:
			if (c >= '0' && c <= '7') {
				uint32_t v = 0;
				int k = 0;
				for (; k < 3 && j < i && L->src[j] >= '0' && L->src[j] <= '7'; k++, j++)
					v = v * 8 + (uint32_t)(L->src[j] - '0');
				j--;
				n += (size_t)utf8_put(o + n, v);
			} else {
				o[n++] = '\\';
				o[n++] = c;
			}
		}
	}
	o[n] = 0;
	if (!(t = lex_push(L, TK_STR))) {
		free(o);
		return -1;
	}
	t->line = line0;
	t->s = o;
	t->n = n;
	L->p = i + 1;
	return 0;
}

static const char *const ops3[] = { "**", "//", "==", "!=", "<=", ">=", NULL };

/* Tokens inside a tag up to its end; `kind` 'v' for {{ }}, 'b' for {% %}. */
static int lex_tag(struct lexer *L, char kind)
{
	int depth = 0;
	struct token *t;

	for (;;) {
		const char *s;
		while (L->p < L->n && is_ws(L->src[L->p])) {
			if (L->src[L->p] == '\n')
				L->line++;
			L->p++;
		}
		if (L->p >= L->n)
			return lex_fail(L, "unexpected end of template inside %s", kind == 'v' ? "{{ }}" : "{% %}");
		s = L->src + L->p;
		if (depth == 0) {
			const char *close = kind == 'v' ? "}}" : "%}";
			int sign = (s[0] == '-' || (s[0] == '+' && kind == 'b')) && L->p + 2 < L->n && !memcmp(s + 1, close, 2);
			if (sign || (L->p + 1 < L->n && !memcmp(s, close, 2))) {
				if (!lex_push(L, kind == 'v' ? TK_VAR_END : TK_BLOCK_END))
					return -1;
				L->p += sign ? 3 : 2;
				if (sign && s[0] == '-')
					L->lstrip_next = 1;
				else if (kind == 'b' && !sign)
					L->trim_next = 1;
				return 0;
			}
		}
		if (*s == '\'' || *s == '"') {
			if (lex_string(L) < 0)
				return -1;
			continue;
		}
		if (isalpha((unsigned char)*s) || *s == '_') {
			size_t k = 1;
			while (L->p + k < L->n && (isalnum((unsigned char)s[k]) || s[k] == '_'))
				k++;
			if (!(t = lex_push(L, TK_NAME)) || !(t->s = dupn(s, k)))
				return L->oom = 1, -1;
			t->n = k;
			L->p += k;
			continue;
		}
		if (isdigit((unsigned char)*s)) {
			size_t k = 0;
			int fl = 0;
			char buf[64];
			size_t bn = 0;
			while (L->p + k < L->n && (isdigit((unsigned char)s[k]) || s[k] == '_'))
				k++;
			if (L->p + k + 1 < L->n && s[k] == '.' && isdigit((unsigned char)s[k + 1])) {
				fl = 1;
				k++;
				while (L->p + k < L->n && (isdigit((unsigned char)s[k]) || s[k] == '_'))
					k++;
			}
			if (L->p + k < L->n && (s[k] == 'e' || s[k] == 'E')) {
				size_t e = k + 1;
				if (L->p + e < L->n && (s[e] == '+' || s[e] == '-'))
					e++;
				if (L->p + e < L->n && isdigit((unsigned char)s[e])) {
					fl = 1;
					k = e;
					while (L->p + k < L->n && isdigit((unsigned char)s[k]))
						k++;
				}
			}
			for (size_t j = 0; j < k && bn < sizeof(buf) - 1; j++)
				if (s[j] != '_')
					buf[bn++] = s[j];
			buf[bn] = 0;
			if (k >= sizeof(buf) - 1)
				return lex_fail(L, "number literal too long");
			if (!(t = lex_push(L, fl ? TK_FLOAT : TK_INT)))
				return -1;
			errno = 0;
			if (fl)
				t->f = strtod(buf, NULL);
			else
				t->i = strtoll(buf, NULL, 10);
			if (errno)
				return lex_fail(L, "number literal out of range");
			L->p += k;
			continue;
		}
		{
			size_t k = 1;
			for (int j = 0; ops3[j]; j++)
				if (L->p + 1 < L->n && !memcmp(s, ops3[j], 2))
					k = 2;
			if (k == 1 && !strchr("+-*/%~<>=.,:|()[]{}!", *s))
				return lex_fail(L, "unexpected character '%c'", *s);
			if (k == 1 && *s == '!')
				return lex_fail(L, "unexpected character '!'");
			if (*s == '(' || *s == '[' || *s == '{')
				depth++;
			else if (*s == ')' || *s == ']' || *s == '}') {
				if (depth == 0)
					return lex_fail(L, "unexpected '%c'", *s);
				depth--;
			}
			if (!(t = lex_push(L, TK_OP)) || !(t->s = dupn(s, k)))
				return L->oom = 1, -1;
			t->n = k;
			L->p += k;
		}
	}
}

static int lex(struct lexer *L)
{
	while (L->p < L->n) {
		const char *s = L->src + L->p, *q = s;
		size_t at;
		char kind;
		int minus, plus;

		/* next tag opening */
		for (;;) {
			q = memchr(q, '{', L->n - (size_t)(q - L->src));
			if (!q || (size_t)(q - L->src) + 1 >= L->n) {
				q = NULL;
				break;
			}
			if (q[1] == '{' || q[1] == '%' || q[1] == '#')
				break;
			q++;
		}
		if (!q)
			return lex_text(L, L->p, L->n, 0, 0);
		at = (size_t)(q - L->src);
		kind = q[1] == '{' ? 'v' : q[1] == '%' ? 'b' : 'c';
		minus = at + 2 < L->n && q[2] == '-';
		plus = at + 2 < L->n && q[2] == '+';
		if (lex_text(L, L->p, at, minus, kind != 'v' && !plus) < 0)
			return -1;
		L->p = at + 2 + (minus || plus);
		if (kind == 'c') {
			const char *e = NULL;
			for (size_t j = L->p; j + 1 < L->n; j++)
				if (L->src[j] == '#' && L->src[j + 1] == '}') {
					e = L->src + j;
					break;
				}
			if (!e)
				return lex_fail(L, "unterminated comment");
			L->line += count_lines(L->src + L->p, (size_t)(e - L->src) - L->p);
			if (e > L->src + L->p && e[-1] == '-')
				L->lstrip_next = 1;
			else if (!(e > L->src + L->p && e[-1] == '+'))
				L->trim_next = 1;
			L->p = (size_t)(e - L->src) + 2;
			continue;
		}
		if (!lex_push(L, kind == 'v' ? TK_VAR_BEGIN : TK_BLOCK_BEGIN))
			return -1;
		if (lex_tag(L, kind) < 0)
			return -1;
	}
	return 0;
}

/* ================================================================ parser */

struct parser {
	struct token *t;
	size_t nt, i;
	int depth, max_depth;
	int has_generation;
	char msg[ERRMAX];
	jmp_buf jb;
	struct node **all;      /* every node, for freeing */
	size_t nall, call;
};

static _Noreturn void pfail(struct parser *P, const char *fmt, ...)
{
	va_list ap;
	int line = P->i < P->nt ? P->t[P->i].line : P->nt ? P->t[P->nt - 1].line : 1;
	va_start(ap, fmt);
	vfmt(P->msg, line, fmt, ap);
	va_end(ap);
	longjmp(P->jb, 1);
}

static struct node *mk(struct parser *P, enum nk k)
{
	struct node *n;
	if (P->nall == P->call) {
		size_t c = P->call ? P->call * 2 : 256;
		struct node **a = realloc(P->all, c * sizeof(*a));
		if (!a)
			pfail(P, "out of memory");
		P->all = a;
		P->call = c;
	}
	if (!(n = calloc(1, sizeof(*n))))
		pfail(P, "out of memory");
	P->all[P->nall++] = n;
	n->k = k;
	n->line = P->i < P->nt ? P->t[P->i].line : 0;
	return n;
}

static void add_child(struct parser *P, struct node *p, struct node *c)
{
	struct node **a = realloc(p->a, (p->na + 1) * sizeof(*a));
	if (!a)
		pfail(P, "out of memory");
	a[p->na++] = c;
	p->a = a;
}

static void add_kw(struct parser *P, struct node *p, const char *name)
{
	char **k = realloc(p->kw, (p->nkw + 1) * sizeof(*k));
	if (!k)
		pfail(P, "out of memory");
	p->kw = k;
	if (!(k[p->nkw] = strdup(name)))
		pfail(P, "out of memory");
	p->nkw++;
}

static struct token *cur(struct parser *P) { return &P->t[P->i < P->nt ? P->i : P->nt - 1]; }
static int is_op(struct parser *P, const char *op) { return cur(P)->k == TK_OP && !strcmp(cur(P)->s, op); }
static int is_name(struct parser *P, const char *nm) { return cur(P)->k == TK_NAME && !strcmp(cur(P)->s, nm); }

static void expect_op(struct parser *P, const char *op)
{
	if (!is_op(P, op))
		pfail(P, "expected '%s'", op);
	P->i++;
}

static char *take_name(struct parser *P)
{
	if (cur(P)->k != TK_NAME)
		pfail(P, "expected a name");
	return P->t[P->i++].s;
}

static char *sdup(struct parser *P, const char *s)
{
	char *d = strdup(s);
	if (!d)
		pfail(P, "out of memory");
	return d;
}

static void enter(struct parser *P)
{
	if (++P->depth > P->max_depth)
		pfail(P, "template nests deeper than %d", P->max_depth);
}

static struct node *p_expr(struct parser *P);
static struct node *p_or(struct parser *P);
static struct node *p_unary(struct parser *P, int with_filter);

static void p_call_args(struct parser *P, struct node *c)
{
	expect_op(P, "(");
	while (!is_op(P, ")")) {
		if (c->na)
			expect_op(P, ",");
		if (is_op(P, ")"))
			break;
		if (cur(P)->k == TK_NAME && P->i + 1 < P->nt && P->t[P->i + 1].k == TK_OP &&
		    !strcmp(P->t[P->i + 1].s, "=")) {
			add_kw(P, c, take_name(P));
			P->i++;
			add_child(P, c, p_expr(P));
		} else {
			if (c->nkw)
				pfail(P, "positional argument after keyword argument");
			add_child(P, c, p_expr(P));
		}
	}
	P->i++;
}

static struct node *p_primary(struct parser *P)
{
	struct token *t = cur(P);
	struct node *n;

	enter(P);
	if (t->k == TK_NAME) {
		const char *s = t->s;
		n = mk(P, E_LIT);
		if (!strcmp(s, "true") || !strcmp(s, "True"))
			n->op = L_TRUE;
		else if (!strcmp(s, "false") || !strcmp(s, "False"))
			n->op = L_FALSE;
		else if (!strcmp(s, "none") || !strcmp(s, "None"))
			n->op = L_NONE;
		else {
			n->k = E_NAME;
			n->s = sdup(P, s);
		}
		P->i++;
	} else if (t->k == TK_STR) {
		struct lora_buf b = LORA_BUF_INIT;
		n = mk(P, E_LIT);
		n->op = L_STR;
		while (cur(P)->k == TK_STR) {   /* adjacent literals concatenate */
			lora_buf_add(&b, cur(P)->s, cur(P)->n);
			P->i++;
		}
		lora_buf_add(&b, "", 0);
		if (b.oom) {
			lora_buf_free(&b);
			pfail(P, "out of memory");
		}
		n->n = b.len;
		n->s = lora_buf_take(&b);
	} else if (t->k == TK_INT || t->k == TK_FLOAT) {
		n = mk(P, E_LIT);
		n->op = t->k == TK_INT ? L_INT : L_FLOAT;
		n->i = t->i;
		n->f = t->f;
		P->i++;
	} else if (is_op(P, "(")) {
		P->i++;
		if (is_op(P, ")")) {
			n = mk(P, E_TUPLE);
		} else {
			struct node *e = p_expr(P);
			if (is_op(P, ",")) {
				n = mk(P, E_TUPLE);
				add_child(P, n, e);
				while (is_op(P, ",")) {
					P->i++;
					if (is_op(P, ")"))
						break;
					add_child(P, n, p_expr(P));
				}
			} else {
				n = e;
			}
		}
		expect_op(P, ")");
	} else if (is_op(P, "[")) {
		n = mk(P, E_LIST);
		P->i++;
		while (!is_op(P, "]")) {
			if (n->na)
				expect_op(P, ",");
			if (is_op(P, "]"))
				break;
			add_child(P, n, p_expr(P));
		}
		P->i++;
	} else if (is_op(P, "{")) {
		n = mk(P, E_DICT);
		P->i++;
		while (!is_op(P, "}")) {
			if (n->na)
				expect_op(P, ",");
			if (is_op(P, "}"))
				break;
			add_child(P, n, p_expr(P));
			expect_op(P, ":");
			add_child(P, n, p_expr(P));
		}
		P->i++;
	} else {
		pfail(P, t->k == TK_VAR_END || t->k == TK_BLOCK_END ? "expected an expression" : "unexpected '%s'",
		      t->s ? t->s : "end of tag");
	}
	P->depth--;
	return n;
}

static struct node *p_postfix(struct parser *P, struct node *n)
{
	for (;;) {
		if (is_op(P, ".")) {
			struct node *a = mk(P, E_ATTR);
			P->i++;
			a->x = n;
			if (cur(P)->k == TK_INT) {   /* x.0 is x[0] */
				a->k = E_ITEM;
				a->y = mk(P, E_LIT);
				a->y->op = L_INT;
				a->y->i = cur(P)->i;
				P->i++;
			} else {
				a->s = sdup(P, take_name(P));
			}
			n = a;
		} else if (is_op(P, "[")) {
			struct node *sl[3] = { NULL, NULL, NULL };
			int k = 0, colon = 0;
			P->i++;
			for (;;) {
				if (is_op(P, "]"))
					break;
				if (is_op(P, ":")) {
					if (++k > 2)
						pfail(P, "bad slice");
					colon = 1;
					P->i++;
					continue;
				}
				if (sl[k])
					pfail(P, "expected ']'");
				sl[k] = p_expr(P);
			}
			P->i++;
			if (colon) {
				struct node *a = mk(P, E_SLICE);
				a->x = n;
				a->y = sl[0];
				a->z = sl[1];
				a->w = sl[2];
				n = a;
			} else {
				struct node *a = mk(P, E_ITEM);
				if (!sl[0])
					pfail(P, "empty subscript");
				a->x = n;
				a->y = sl[0];
				n = a;
			}
		} else if (is_op(P, "(")) {
			struct node *c = mk(P, E_CALL);
			c->x = n;
			p_call_args(P, c);
			n = c;
		} else {
			return n;
		}
	}
}

static struct node *p_filters(struct parser *P, struct node *n)
{
	for (;;) {
		if (is_op(P, "|")) {
			struct node *f = mk(P, E_FILTER);
			P->i++;
			f->s = sdup(P, take_name(P));
			f->x = n;
			if (is_op(P, "("))
				p_call_args(P, f);
			n = f;
		} else if (is_name(P, "is")) {
			struct node *f = mk(P, E_TEST);
			struct token *t;
			P->i++;
			if (is_name(P, "not")) {
				f->op = 1;
				P->i++;
			}
			f->s = sdup(P, take_name(P));
			f->x = n;
			t = cur(P);
			if (is_op(P, "(")) {
				p_call_args(P, f);
			} else if ((t->k == TK_NAME || t->k == TK_STR || t->k == TK_INT || t->k == TK_FLOAT ||
				    is_op(P, "[") || is_op(P, "{")) &&
				   !is_name(P, "else") && !is_name(P, "or") && !is_name(P, "and") && !is_name(P, "if")) {
				if (is_name(P, "is"))
					pfail(P, "you cannot chain multiple tests with is");
				add_child(P, f, p_postfix(P, p_primary(P)));
			}
			n = f;
		} else if (is_op(P, "(")) {
			struct node *c = mk(P, E_CALL);
			c->x = n;
			p_call_args(P, c);
			n = c;
		} else {
			return n;
		}
	}
}

static struct node *p_unary(struct parser *P, int with_filter)
{
	struct node *n;
	enter(P);
	if (is_op(P, "-") || is_op(P, "+")) {
		n = mk(P, is_op(P, "-") ? E_NEG : E_POS);
		P->i++;
		n->x = p_unary(P, 0);
	} else {
		n = p_postfix(P, p_primary(P));
	}
	if (with_filter)
		n = p_filters(P, n);
	P->depth--;
	return n;
}

static struct node *bin(struct parser *P, int op, struct node *l, struct node *r)
{
	struct node *n = mk(P, E_BIN);
	n->op = op;
	n->x = l;
	n->y = r;
	return n;
}

/* operator codes beyond single chars */
enum { OP_POW = 256, OP_FLOORDIV };

static struct node *p_pow(struct parser *P)
{
	struct node *n = p_unary(P, 1);
	while (is_op(P, "**")) {
		P->i++;
		n = bin(P, OP_POW, n, p_unary(P, 1));
	}
	return n;
}

static struct node *p_math2(struct parser *P)
{
	struct node *n = p_pow(P);
	for (;;) {
		int op = is_op(P, "*") ? '*' : is_op(P, "/") ? '/' : is_op(P, "//") ? OP_FLOORDIV : is_op(P, "%") ? '%' : 0;
		if (!op)
			return n;
		P->i++;
		n = bin(P, op, n, p_pow(P));
	}
}

static struct node *p_concat(struct parser *P)
{
	struct node *n = p_math2(P);
	while (is_op(P, "~")) {
		P->i++;
		n = bin(P, '~', n, p_math2(P));
	}
	return n;
}

static struct node *p_math1(struct parser *P)
{
	struct node *n = p_concat(P);
	for (;;) {
		int op = is_op(P, "+") ? '+' : is_op(P, "-") ? '-' : 0;
		if (!op)
			return n;
		P->i++;
		n = bin(P, op, n, p_concat(P));
	}
}

enum { C_EQ = 1, C_NE, C_LT, C_GT, C_LE, C_GE, C_IN, C_NOTIN };

static struct node *p_compare(struct parser *P)
{
	struct node *n = p_math1(P), *c = NULL;
	for (;;) {
		int op = is_op(P, "==") ? C_EQ : is_op(P, "!=") ? C_NE : is_op(P, "<") ? C_LT : is_op(P, ">") ? C_GT
		       : is_op(P, "<=") ? C_LE : is_op(P, ">=") ? C_GE : is_name(P, "in") ? C_IN : 0;
		if (!op && is_name(P, "not") && P->i + 1 < P->nt && P->t[P->i + 1].k == TK_NAME &&
		    !strcmp(P->t[P->i + 1].s, "in")) {
			op = C_NOTIN;
			P->i++;
		}
		if (!op)
			return c ? c : n;
		P->i++;
		if (!c) {
			c = mk(P, E_CMP);
			add_child(P, c, n);
		}
		{
			struct node *o = mk(P, E_LIT);   /* the operator, kept as a child's op */
			o->op = op;
			add_child(P, c, o);
		}
		add_child(P, c, p_math1(P));
	}
}

static struct node *p_not(struct parser *P)
{
	if (is_name(P, "not")) {
		struct node *n = mk(P, E_NOT);
		enter(P);
		P->i++;
		n->x = p_not(P);
		P->depth--;
		return n;
	}
	return p_compare(P);
}

static struct node *p_and(struct parser *P)
{
	struct node *n = p_not(P);
	while (is_name(P, "and")) {
		struct node *a = mk(P, E_AND);
		P->i++;
		a->x = n;
		a->y = p_not(P);
		n = a;
	}
	return n;
}

static struct node *p_or(struct parser *P)
{
	struct node *n = p_and(P);
	while (is_name(P, "or")) {
		struct node *a = mk(P, E_OR);
		P->i++;
		a->x = n;
		a->y = p_and(P);
		n = a;
	}
	return n;
}

static struct node *p_expr(struct parser *P)
{
	struct node *n;
	enter(P);
	n = p_or(P);
	while (is_name(P, "if")) {
		struct node *c = mk(P, E_COND);
		P->i++;
		c->x = p_or(P);    /* condition */
		c->y = n;          /* then */
		if (is_name(P, "else")) {
			P->i++;
			c->z = p_expr(P);
		}
		n = c;
	}
	P->depth--;
	return n;
}

/* `a`, `a.b` or `a, b` (for/set targets) as E_NAME / E_ATTR / E_TUPLE */
static struct node *p_target(struct parser *P, int allow_attr)
{
	struct node *n = mk(P, E_NAME), *t;
	n->s = sdup(P, take_name(P));
	if (allow_attr && is_op(P, ".")) {
		struct node *a = mk(P, E_ATTR);
		P->i++;
		a->x = n;
		a->s = sdup(P, take_name(P));
		return a;
	}
	if (!is_op(P, ","))
		return n;
	t = mk(P, E_TUPLE);
	add_child(P, t, n);
	while (is_op(P, ",")) {
		struct node *m;
		P->i++;
		m = mk(P, E_NAME);
		m->s = sdup(P, take_name(P));
		add_child(P, t, m);
	}
	return t;
}

static void expect_block_end(struct parser *P)
{
	if (cur(P)->k != TK_BLOCK_END)
		pfail(P, "expected '%%}'");
	P->i++;
}

/* Parse statements until one of `ends` (NULL-terminated) opens a block tag; leaves P at that name. */
static struct node *p_body(struct parser *P, const char *const *ends);

static struct node *p_stmt(struct parser *P)
{
	struct token *t = cur(P);
	struct node *n;
	const char *kw;

	if (t->k != TK_NAME)
		pfail(P, "expected a statement name");
	kw = t->s;
	P->i++;
	if (!strcmp(kw, "if")) {
		static const char *const ends[] = { "elif", "else", "endif", NULL };
		struct node *cur_if;
		n = cur_if = mk(P, N_IF);
		cur_if->x = p_expr(P);
		expect_block_end(P);
		for (;;) {
			cur_if->y = p_body(P, ends);
			if (is_name(P, "elif")) {
				struct node *e = mk(P, N_IF);
				P->i++;
				e->x = p_expr(P);
				expect_block_end(P);
				cur_if->z = e;
				cur_if = e;
				continue;
			}
			if (is_name(P, "else")) {
				static const char *const end2[] = { "endif", NULL };
				P->i++;
				expect_block_end(P);
				cur_if->z = p_body(P, end2);
			}
			P->i++;   /* endif */
			expect_block_end(P);
			return n;
		}
	}
	if (!strcmp(kw, "for")) {
		static const char *const ends[] = { "else", "endfor", NULL };
		n = mk(P, N_FOR);
		n->x = p_target(P, 0);
		if (!is_name(P, "in"))
			pfail(P, "expected 'in'");
		P->i++;
		n->y = p_or(P);
		if (is_name(P, "if")) {
			P->i++;
			n->w = p_or(P);
		}
		if (is_name(P, "recursive"))
			pfail(P, "recursive loops are not supported");
		expect_block_end(P);
		add_child(P, n, p_body(P, ends));
		if (is_name(P, "else")) {
			static const char *const end2[] = { "endfor", NULL };
			P->i++;
			expect_block_end(P);
			n->z = p_body(P, end2);
		}
		P->i++;
		expect_block_end(P);
		return n;
	}
	if (!strcmp(kw, "set")) {
		struct node *tg = p_target(P, 1);
		if (cur(P)->k == TK_BLOCK_END) {
			static const char *const ends[] = { "endset", NULL };
			if (tg->k != E_NAME)
				pfail(P, "a block set assigns one name");
			n = mk(P, N_SETBLOCK);
			n->x = tg;
			P->i++;
			n->y = p_body(P, ends);
			P->i++;
			expect_block_end(P);
			return n;
		}
		n = mk(P, N_SET);
		n->x = tg;
		expect_op(P, "=");
		{
			struct node *e = p_expr(P);
			if (is_op(P, ",")) {   /* set a, b = 1, 2 */
				struct node *tu = mk(P, E_TUPLE);
				add_child(P, tu, e);
				while (is_op(P, ",")) {
					P->i++;
					add_child(P, tu, p_expr(P));
				}
				e = tu;
			}
			n->y = e;
		}
		expect_block_end(P);
		return n;
	}
	if (!strcmp(kw, "macro")) {
		static const char *const ends[] = { "endmacro", NULL };
		n = mk(P, N_MACRO);
		n->s = sdup(P, take_name(P));
		expect_op(P, "(");
		/* parameters: children are E_NAME nodes, each with its default in ->x */
		while (!is_op(P, ")")) {
			struct node *pn;
			if (n->na)
				expect_op(P, ",");
			pn = mk(P, E_NAME);
			pn->s = sdup(P, take_name(P));
			if (is_op(P, "=")) {
				P->i++;
				pn->x = p_expr(P);
			}
			add_child(P, n, pn);
		}
		P->i++;
		expect_block_end(P);
		n->y = p_body(P, ends);
		P->i++;
		expect_block_end(P);
		return n;
	}
	if (!strcmp(kw, "generation")) {
		static const char *const ends[] = { "endgeneration", NULL };
		n = mk(P, N_GEN);
		expect_block_end(P);
		n->y = p_body(P, ends);
		P->i++;
		expect_block_end(P);
		P->has_generation = 1;
		return n;
	}
	if (!strcmp(kw, "break") || !strcmp(kw, "continue")) {
		n = mk(P, kw[0] == 'b' ? N_BREAK : N_CONTINUE);
		expect_block_end(P);
		return n;
	}
	P->i--;
	pfail(P, "'%s' is not supported%s", kw,
	      !strcmp(kw, "endif") || !strcmp(kw, "endfor") || !strcmp(kw, "else") || !strcmp(kw, "elif") ||
	      !strcmp(kw, "endmacro") || !strcmp(kw, "endset") || !strcmp(kw, "endgeneration")
	      ? " here (no block is open to close)" : "");
}

/* "'else' or 'endfor'": the tags that close the open block. */
static const char *ends_str(const char *const *ends, char *buf, size_t n)
{
	size_t w = 0;

	buf[0] = 0;
	for (int j = 0; ends[j] && w < n; j++) {
		int k = snprintf(buf + w, n - w, "%s'%s'", j ? " or " : "", ends[j]);

		if (k < 0)
			break;
		w += (size_t)k;
	}
	return buf;
}

static struct node *p_body(struct parser *P, const char *const *ends)
{
	struct node *b = mk(P, N_BODY);
	enter(P);
	for (;;) {
		struct token *t = cur(P);
		if (t->k == TK_EOF) {
			if (ends) {
				char want[128];

				pfail(P, "unexpected end of template (expected %s)", ends_str(ends, want, sizeof(want)));
			}
			break;
		}
		if (t->k == TK_TEXT) {
			struct node *x = mk(P, N_TEXT);
			x->s = t->s;   /* owned by the token */
			x->n = t->n;
			add_child(P, b, x);
			P->i++;
		} else if (t->k == TK_VAR_BEGIN) {
			struct node *x = mk(P, N_OUT);
			P->i++;
			x->x = p_expr(P);
			if (cur(P)->k != TK_VAR_END)
				pfail(P, "expected '}}'");
			P->i++;
			add_child(P, b, x);
		} else if (t->k == TK_BLOCK_BEGIN) {
			P->i++;
			if (ends && cur(P)->k == TK_NAME) {
				const char *kw = cur(P)->s;

				for (int j = 0; ends[j]; j++)
					if (!strcmp(kw, ends[j])) {
						P->depth--;
						return b;
					}
				if (!strncmp(kw, "end", 3) || !strcmp(kw, "else") || !strcmp(kw, "elif")) {
					char want[128];

					pfail(P, "unexpected '%s' (expected %s)", kw, ends_str(ends, want, sizeof(want)));
				}
			}
			add_child(P, b, p_stmt(P));
		} else {
			pfail(P, "unexpected token");
		}
	}
	P->depth--;
	return b;
}

/* ================================================================ values */

enum jt { J_UNDEF, J_NONE, J_BOOL, J_INT, J_FLOAT, J_STR, J_LIST, J_DICT, J_NS, J_MACRO, J_FUNC, J_LOOP };

struct jlist;
struct jdict;
struct loopst;

struct jv {
	enum jt t;
	int tuple;                     /* J_LIST made by a tuple (repr with parentheses) */
	int gen;                       /* J_LIST standing for a Python generator (select, map...) */
	int safe;                      /* J_STR that is markupsafe.Markup (after |safe) */
	union {
		int b;
		int64_t i;
		double f;
		struct { const char *s; size_t n; } s;
		struct jlist *l;
		struct jdict *d;
		const struct node *m;  /* J_MACRO */
		struct loopst *lp;
	} u;
	int fn;                        /* J_FUNC: which builtin */
	struct jv *self;               /* J_FUNC: bound object (string, dict) */
	const char *name;              /* J_UNDEF: what was missing, for messages */
};

struct jlist { struct jv *v; size_t n, cap; };
struct jdict { struct jv *k, *v; size_t n, cap; };
struct loopst { size_t i, n; struct jv *items; };

static const struct jv UNDEF = { .t = J_UNDEF };
static const struct jv NONE = { .t = J_NONE };

/* ================================================================ render state */

struct frame {
	struct jdict vars;
	struct frame *parent;
};

struct arena_blk { struct arena_blk *next; size_t used, cap; char data[]; };

struct rs {
	const struct lora_jinja *tpl;
	struct arena_blk *blk;
	size_t mem;
	uint64_t steps;
	int depth;
	int line;
	struct lora_buf *out;
	struct lora_buf *top;      /* the caller's buffer */
	size_t top0;               /* its length at entry */
	size_t out_total;
	size_t *gen;
	size_t ngen, cgen;
	int want_gen;
	const struct tm *now;
	struct frame *root;
	char msg[ERRMAX];
	jmp_buf jb;
	int brk;                   /* 1 break, 2 continue pending */
	struct frame *cur;         /* innermost scope */
	struct lora_buf **tmp;     /* live scratch buffers, freed if an error unwinds */
	size_t ntmp, ctmp;
};

static _Noreturn void rfail(struct rs *R, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfmt(R->msg, R->line, fmt, ap);
	va_end(ap);
	longjmp(R->jb, 1);
}

static void tpush(struct rs *R, struct lora_buf *b)
{
	if (R->ntmp == R->ctmp) {
		size_t c = R->ctmp ? R->ctmp * 2 : 16;
		struct lora_buf **t = realloc(R->tmp, c * sizeof(*t));
		if (!t)
			rfail(R, "out of memory");
		R->tmp = t;
		R->ctmp = c;
	}
	R->tmp[R->ntmp++] = b;
}

/* a scratch buffer in the arena, freed by tpop or when an error unwinds the render */
static void *ar_alloc(struct rs *R, size_t n);
static struct lora_buf *tnew(struct rs *R)
{
	struct lora_buf *b = ar_alloc(R, sizeof(*b));
	memset(b, 0, sizeof(*b));
	tpush(R, b);
	return b;
}

/* free the scratch buffer b (the innermost one) */
static void tpop(struct rs *R, struct lora_buf *b)
{
	lora_buf_free(b);
	if (R->ntmp && R->tmp[R->ntmp - 1] == b)
		R->ntmp--;
}

static void *ar_alloc(struct rs *R, size_t n)
{
	struct arena_blk *b = R->blk;
	n = (n + 15) & ~(size_t)15;
	if (n > R->tpl->lim.max_memory || R->mem > R->tpl->lim.max_memory - n)
		rfail(R, "template uses more than %zu bytes of memory", R->tpl->lim.max_memory);
	if (!b || b->cap - b->used < n) {
		size_t cap = n > 65536 ? n : 65536;
		b = malloc(sizeof(*b) + cap);
		if (!b)
			rfail(R, "out of memory");
		b->next = R->blk;
		b->used = 0;
		b->cap = cap;
		R->blk = b;
		R->mem += cap;
	}
	b->used += n;
	return b->data + b->used - n;
}

static void step(struct rs *R)
{
	if (++R->steps > R->tpl->lim.max_steps)
		rfail(R, "template runs more than %llu steps", (unsigned long long)R->tpl->lim.max_steps);
}

static struct jv mkstr(struct rs *R, const char *s, size_t n)
{
	struct jv v = { .t = J_STR };
	char *d = ar_alloc(R, n + 1);
	memcpy(d, s, n);
	d[n] = 0;
	v.u.s.s = d;
	v.u.s.n = n;
	return v;
}

static struct jv cstr(struct rs *R, const char *s) { return mkstr(R, s, strlen(s)); }
static struct jv mkint(int64_t i) { struct jv v = { .t = J_INT }; v.u.i = i; return v; }
static struct jv mkbool(int b) { struct jv v = { .t = J_BOOL }; v.u.b = !!b; return v; }
static struct jv mkfloat(double f) { struct jv v = { .t = J_FLOAT }; v.u.f = f; return v; }

static struct jv mklist(struct rs *R, size_t cap)
{
	struct jv v = { .t = J_LIST };
	v.u.l = ar_alloc(R, sizeof(struct jlist));
	v.u.l->n = 0;
	v.u.l->cap = cap;
	v.u.l->v = cap ? ar_alloc(R, cap * sizeof(struct jv)) : NULL;
	return v;
}

static void list_push(struct rs *R, struct jlist *l, struct jv x)
{
	if (l->n == l->cap) {
		size_t c = l->cap ? l->cap * 2 : 8;
		struct jv *nv;
		if (c > SIZE_MAX / sizeof(struct jv) / 2)
			rfail(R, "list too long");
		nv = ar_alloc(R, c * sizeof(struct jv));
		if (l->n)
			memcpy(nv, l->v, l->n * sizeof(struct jv));
		l->v = nv;
		l->cap = c;
	}
	l->v[l->n++] = x;
}

static struct jv mkdict(struct rs *R)
{
	struct jv v = { .t = J_DICT };
	v.u.d = ar_alloc(R, sizeof(struct jdict));
	memset(v.u.d, 0, sizeof(struct jdict));
	return v;
}

static int streq(const struct jv *a, const char *s, size_t n)
{
	return a->t == J_STR && a->u.s.n == n && !memcmp(a->u.s.s, s, n);
}

static int v_eq(const struct jv *a, const struct jv *b);

static struct jv *dict_find(const struct jdict *d, const struct jv *k)
{
	for (size_t i = 0; i < d->n; i++)
		if (v_eq(&d->k[i], k))
			return &d->v[i];
	return NULL;
}

static struct jv *dict_get(const struct jdict *d, const char *s)
{
	size_t n = strlen(s);
	for (size_t i = 0; i < d->n; i++)
		if (streq(&d->k[i], s, n))
			return &d->v[i];
	return NULL;
}

static void dict_set(struct rs *R, struct jdict *d, struct jv k, struct jv v)
{
	struct jv *p = dict_find(d, &k);
	if (p) {
		*p = v;
		return;
	}
	if (d->n == d->cap) {
		size_t c = d->cap ? d->cap * 2 : 8;
		struct jv *nk = ar_alloc(R, c * sizeof(struct jv)), *nv = ar_alloc(R, c * sizeof(struct jv));
		if (d->n) {
			memcpy(nk, d->k, d->n * sizeof(struct jv));
			memcpy(nv, d->v, d->n * sizeof(struct jv));
		}
		d->k = nk;
		d->v = nv;
		d->cap = c;
	}
	d->k[d->n] = k;
	d->v[d->n++] = v;
}

static struct jv from_json(struct rs *R, const cJSON *j, int depth)
{
	struct jv v;
	const cJSON *c;
	if (depth > R->tpl->lim.max_depth)
		rfail(R, "variables nest deeper than %d", R->tpl->lim.max_depth);
	if (!j || cJSON_IsNull(j))
		return NONE;
	if (cJSON_IsBool(j))
		return mkbool(cJSON_IsTrue(j));
	if (cJSON_IsNumber(j)) {
		double d = j->valuedouble;
		if (d == floor(d) && fabs(d) < 9007199254740992.0)
			return mkint((int64_t)d);
		return mkfloat(d);
	}
	if (cJSON_IsString(j))
		return cstr(R, j->valuestring);
	if (cJSON_IsArray(j)) {
		v = mklist(R, 0);
		cJSON_ArrayForEach(c, j) list_push(R, v.u.l, from_json(R, c, depth + 1));
		return v;
	}
	if (cJSON_IsObject(j)) {
		v = mkdict(R);
		cJSON_ArrayForEach(c, j) dict_set(R, v.u.d, cstr(R, c->string ? c->string : ""), from_json(R, c, depth + 1));
		return v;
	}
	return NONE;
}

/* ---------------------------------------------------------------- utf-8 */

static size_t u8len(const char *s, size_t n)
{
	size_t c = 0;
	for (size_t i = 0; i < n; i++)
		c += ((unsigned char)s[i] & 0xC0) != 0x80;
	return c;
}

/* byte offset of code point k (k <= count) */
static size_t u8off(const char *s, size_t n, size_t k)
{
	size_t i = 0;
	while (k > 0 && i < n) {
		i++;
		while (i < n && ((unsigned char)s[i] & 0xC0) == 0x80)
			i++;
		k--;
	}
	return i;
}

/* Python str.isspace, for the char at s: its byte length or 0 */
static size_t py_space(const unsigned char *s, size_t n)
{
	if (n >= 1 && ((s[0] >= 9 && s[0] <= 13) || (s[0] >= 0x1c && s[0] <= 0x20)))
		return 1;
	if (n >= 2 && s[0] == 0xC2 && (s[1] == 0x85 || s[1] == 0xA0))
		return 2;
	if (n >= 3 && s[0] == 0xE1 && s[1] == 0x9A && s[2] == 0x80)
		return 3;
	if (n >= 3 && s[0] == 0xE2 && s[1] == 0x80 && (s[2] <= 0x8A || s[2] == 0xA8 || s[2] == 0xA9 || s[2] == 0xAF))
		return 3;
	if (n >= 3 && s[0] == 0xE2 && s[1] == 0x81 && s[2] == 0x9F)
		return 3;
	if (n >= 3 && s[0] == 0xE3 && s[1] == 0x80 && s[2] == 0x80)
		return 3;
	return 0;
}

static size_t u8clen(const char *s, size_t n)
{
	unsigned char c = (unsigned char)s[0];
	size_t k = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
	return k > n ? n : k;
}

/* does the char at s (len k) occur in set? */
static int in_chars(const char *s, size_t k, const struct jv *set)
{
	for (size_t i = 0; i < set->u.s.n; ) {
		size_t m = u8clen(set->u.s.s + i, set->u.s.n - i);
		if (m == k && !memcmp(set->u.s.s + i, s, k))
			return 1;
		i += m;
	}
	return 0;
}

/* Python str.strip/lstrip/rstrip; chars NULL or None = whitespace. which: 1 left, 2 right, 3 both */
static struct jv py_strip(struct rs *R, const struct jv *s, const struct jv *chars, int which)
{
	const char *p = s->u.s.s;
	size_t a = 0, b = s->u.s.n;
	int ws = !chars || chars->t == J_NONE;
	if (!ws && chars->t != J_STR)
		rfail(R, "strip arg must be None or str");
	if (which & 1)
		while (a < b) {
			size_t k = ws ? py_space((const unsigned char *)p + a, b - a) : 0;
			if (!ws) {
				size_t m = u8clen(p + a, b - a);
				k = in_chars(p + a, m, chars) ? m : 0;
			}
			if (!k)
				break;
			a += k;
		}
	if (which & 2)
		while (b > a) {
			size_t st = b - 1, k;
			while (st > a && ((unsigned char)p[st] & 0xC0) == 0x80)
				st--;
			k = ws ? (py_space((const unsigned char *)p + st, b - st) == b - st) : in_chars(p + st, b - st, chars);
			if (!k)
				break;
			b = st;
		}
	return mkstr(R, p + a, b - a);
}

/* ---------------------------------------------------------------- printing */

static void put(struct rs *R, struct lora_buf *b, const char *s, size_t n)
{
	if (b == R->out || b == R->top) {
		if (n > R->tpl->lim.max_output || R->out_total > R->tpl->lim.max_output - n)
			rfail(R, "template output exceeds %zu bytes", R->tpl->lim.max_output);
		R->out_total += n;
	} else if (b->len + n > R->tpl->lim.max_memory) {
		rfail(R, "template uses more than %zu bytes of memory", R->tpl->lim.max_memory);
	}
	lora_buf_add(b, s, n);
	if (b->oom)
		rfail(R, "out of memory");
}

static void puts_(struct rs *R, struct lora_buf *b, const char *s) { put(R, b, s, strlen(s)); }

/* Python repr(float) / str(float): the shortest digits that round-trip */
static void fmt_float(char *o, size_t cap, double f)
{
	if (isnan(f)) {
		snprintf(o, cap, "nan");
		return;
	}
	if (isinf(f)) {
		snprintf(o, cap, f < 0 ? "-inf" : "inf");
		return;
	}
	for (int p = 1; p <= 17; p++) {
		snprintf(o, cap, "%.*g", p, f);
		if (strtod(o, NULL) == f)
			break;
	}
	/* Python: exponent form when exp < -4 or >= 16; "1e+16" written as 1e+16; ensure ".0" */
	{
		char *e = strchr(o, 'e');
		if (e) {
			/* %g gave exponent form: Python uses it for exp >= 16 or < -4; %g switches at precision */
			int ex = atoi(e + 1);
			if (ex >= -4 && ex < 16) {
				snprintf(o, cap, "%.*f", ex < 0 ? 17 : 1, f);
				/* reprint with enough decimals to round-trip */
				for (int p = 0; p <= 20; p++) {
					snprintf(o, cap, "%.*f", p, f);
					if (strtod(o, NULL) == f)
						break;
				}
				if (!strchr(o, '.'))
					strncat(o, ".0", cap - strlen(o) - 1);
			} else {
				/* mantissa like 1e+16 → Python "1e+16"; exponent at least 2 digits */
				char mant[40], *m = o;
				int k = (int)(e - o);
				memcpy(mant, m, (size_t)k);
				mant[k] = 0;
				snprintf(o, cap, "%se%c%02d", mant, ex < 0 ? '-' : '+', ex < 0 ? -ex : ex);
			}
		} else if (!strchr(o, '.') && !strchr(o, 'n') && !strchr(o, 'i')) {
			strncat(o, ".0", cap - strlen(o) - 1);
		}
	}
}

static void repr_str(struct rs *R, struct lora_buf *b, const char *s, size_t n)
{
	char q = memchr(s, '\'', n) && !memchr(s, '"', n) ? '"' : '\'';
	put(R, b, &q, 1);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		char e[8];
		if (c == '\\' || c == (unsigned char)q) {
			e[0] = '\\';
			e[1] = (char)c;
			put(R, b, e, 2);
		} else if (c == '\n') {
			put(R, b, "\\n", 2);
		} else if (c == '\r') {
			put(R, b, "\\r", 2);
		} else if (c == '\t') {
			put(R, b, "\\t", 2);
		} else if (c < 0x20 || c == 0x7f) {
			snprintf(e, sizeof(e), "\\x%02x", c);
			put(R, b, e, 4);
		} else {
			put(R, b, (const char *)&s[i], 1);
		}
	}
	put(R, b, &q, 1);
}

static void v_str(struct rs *R, struct lora_buf *b, const struct jv *v, int repr);

static void repr_seq(struct rs *R, struct lora_buf *b, const struct jv *v)
{
	step(R);
	if (++R->depth > R->tpl->lim.max_depth)
		rfail(R, "value nests deeper than %d", R->tpl->lim.max_depth);
	if (v->t == J_LIST) {
		put(R, b, v->tuple ? "(" : "[", 1);
		for (size_t i = 0; i < v->u.l->n; i++) {
			if (i)
				put(R, b, ", ", 2);
			v_str(R, b, &v->u.l->v[i], 1);
		}
		if (v->tuple && v->u.l->n == 1)
			put(R, b, ",", 1);
		put(R, b, v->tuple ? ")" : "]", 1);
	} else {
		if (v->t == J_NS)
			puts_(R, b, "<Namespace ");
		put(R, b, "{", 1);
		for (size_t i = 0; i < v->u.d->n; i++) {
			if (i)
				put(R, b, ", ", 2);
			v_str(R, b, &v->u.d->k[i], 1);
			put(R, b, ": ", 2);
			v_str(R, b, &v->u.d->v[i], 1);
		}
		put(R, b, "}", 1);
		if (v->t == J_NS)
			puts_(R, b, ">");
	}
	R->depth--;
}

/* str(v) (repr=0) or repr(v) (repr=1) as Python prints it */
static void v_str(struct rs *R, struct lora_buf *b, const struct jv *v, int repr)
{
	char num[64];
	switch (v->t) {
	case J_UNDEF: break;
	case J_NONE: puts_(R, b, "None"); break;
	case J_BOOL: puts_(R, b, v->u.b ? "True" : "False"); break;
	case J_INT: snprintf(num, sizeof(num), "%lld", (long long)v->u.i); puts_(R, b, num); break;
	case J_FLOAT: fmt_float(num, sizeof(num), v->u.f); puts_(R, b, num); break;
	case J_STR:
		if (repr)
			repr_str(R, b, v->u.s.s, v->u.s.n);
		else
			put(R, b, v->u.s.s, v->u.s.n);
		break;
	case J_LIST: case J_DICT: case J_NS: repr_seq(R, b, v); break;
	case J_MACRO: puts_(R, b, "<Macro>"); break;
	case J_FUNC: puts_(R, b, "<built-in function>"); break;
	case J_LOOP: puts_(R, b, "<LoopContext>"); break;
	}
}

static struct jv to_str(struct rs *R, const struct jv *v)
{
	struct lora_buf *b = tnew(R);
	struct jv r;
	if (v->t == J_STR)
		return *v;
	v_str(R, b, v, 0);
	r = mkstr(R, b->data ? b->data : "", b->len);
	tpop(R, b);
	return r;
}

/* ---------------------------------------------------------------- json */

struct jopt { int indent; const char *item_sep, *key_sep; int sort_keys, ensure_ascii; };

static void json_str(struct rs *R, struct lora_buf *b, const char *s, size_t n, int ascii)
{
	put(R, b, "\"", 1);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		char e[16];
		switch (c) {
		case '"': put(R, b, "\\\"", 2); break;
		case '\\': put(R, b, "\\\\", 2); break;
		case '\n': put(R, b, "\\n", 2); break;
		case '\r': put(R, b, "\\r", 2); break;
		case '\t': put(R, b, "\\t", 2); break;
		case '\b': put(R, b, "\\b", 2); break;
		case '\f': put(R, b, "\\f", 2); break;
		default:
			if (c < 0x20) {
				snprintf(e, sizeof(e), "\\u%04x", c);
				put(R, b, e, 6);
			} else if (c >= 0x80 && ascii) {
				size_t k = u8clen(s + i, n - i);
				uint32_t cp = k == 2 ? (c & 31u) : k == 3 ? (c & 15u) : (c & 7u);
				for (size_t j = 1; j < k; j++)
					cp = (cp << 6) | ((unsigned char)s[i + j] & 63u);
				if (cp >= 0x10000) {
					cp -= 0x10000;
					snprintf(e, sizeof(e), "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
					put(R, b, e, 12);
				} else {
					snprintf(e, sizeof(e), "\\u%04x", cp);
					put(R, b, e, 6);
				}
				i += k - 1;
			} else {
				put(R, b, (const char *)&s[i], 1);
			}
		}
	}
	put(R, b, "\"", 1);
}

static void json_nl(struct rs *R, struct lora_buf *b, const struct jopt *o, int level)
{
	put(R, b, "\n", 1);
	for (int i = 0; i < o->indent * level; i++)
		put(R, b, " ", 1);
}

static int key_cmp(const void *a, const void *b);

static void to_json(struct rs *R, struct lora_buf *b, const struct jv *v, const struct jopt *o, int level)
{
	char num[64];
	step(R);
	if (level > R->tpl->lim.max_depth)
		rfail(R, "value nests deeper than %d", R->tpl->lim.max_depth);
	switch (v->t) {
	case J_NONE: puts_(R, b, "null"); return;
	case J_BOOL: puts_(R, b, v->u.b ? "true" : "false"); return;
	case J_INT: snprintf(num, sizeof(num), "%lld", (long long)v->u.i); puts_(R, b, num); return;
	case J_FLOAT:
		if (isnan(v->u.f))
			puts_(R, b, "NaN");
		else if (isinf(v->u.f))
			puts_(R, b, v->u.f < 0 ? "-Infinity" : "Infinity");
		else
			fmt_float(num, sizeof(num), v->u.f), puts_(R, b, num);
		return;
	case J_STR: json_str(R, b, v->u.s.s, v->u.s.n, o->ensure_ascii); return;
	case J_LIST:
		if (v->gen)
			rfail(R, "tojson: object of type generator is not JSON serializable");
		if (!v->u.l->n) {
			puts_(R, b, "[]");
			return;
		}
		put(R, b, "[", 1);
		for (size_t i = 0; i < v->u.l->n; i++) {
			if (i)
				puts_(R, b, o->item_sep);
			if (o->indent >= 0)
				json_nl(R, b, o, level + 1);
			to_json(R, b, &v->u.l->v[i], o, level + 1);
		}
		if (o->indent >= 0)
			json_nl(R, b, o, level);
		put(R, b, "]", 1);
		return;
	case J_DICT: {
		size_t n = v->u.d->n, *ix;
		if (!n) {
			puts_(R, b, "{}");
			return;
		}
		ix = ar_alloc(R, n * sizeof(size_t) * 2);
		for (size_t i = 0; i < n; i++)
			ix[i] = i;
		for (size_t i = 0; i < n; i++) {
			const struct jv *k = &v->u.d->k[i];
			if (k->t != J_STR && k->t != J_INT && k->t != J_FLOAT && k->t != J_BOOL && k->t != J_NONE)
				rfail(R, "tojson: keys must be str, int, float, bool or None");
		}
		if (o->sort_keys) {
			/* insertion sort by key bytes (strings only, as json.dumps with str keys) */
			for (size_t i = 1; i < n; i++)
				for (size_t j = i; j > 0; j--) {
					const struct jv *a = &v->u.d->k[ix[j - 1]], *c = &v->u.d->k[ix[j]];
					if (a->t != J_STR || c->t != J_STR)
						rfail(R, "tojson: sort_keys needs str keys");
					if (key_cmp(a, c) <= 0)
						break;
					size_t t = ix[j];
					ix[j] = ix[j - 1];
					ix[j - 1] = t;
				}
		}
		put(R, b, "{", 1);
		for (size_t i = 0; i < n; i++) {
			const struct jv *k = &v->u.d->k[ix[i]];
			if (i)
				puts_(R, b, o->item_sep);
			if (o->indent >= 0)
				json_nl(R, b, o, level + 1);
			if (k->t == J_STR) {
				json_str(R, b, k->u.s.s, k->u.s.n, o->ensure_ascii);
			} else {
				struct lora_buf *kb = tnew(R);
				to_json(R, kb, k, o, level + 1);
				json_str(R, b, kb->data ? kb->data : "", kb->len, 0);
				tpop(R, kb);
			}
			puts_(R, b, o->key_sep);
			to_json(R, b, &v->u.d->v[ix[i]], o, level + 1);
		}
		if (o->indent >= 0)
			json_nl(R, b, o, level);
		put(R, b, "}", 1);
		return;
	}
	case J_UNDEF: rfail(R, "tojson: %s is undefined", v->name ? v->name : "value");
	default: rfail(R, "tojson: object of this type is not JSON serializable");
	}
}

static int key_cmp(const void *a, const void *b)
{
	const struct jv *x = a, *y = b;
	size_t n = x->u.s.n < y->u.s.n ? x->u.s.n : y->u.s.n;
	int c = memcmp(x->u.s.s, y->u.s.s, n);
	return c ? c : (x->u.s.n > y->u.s.n) - (x->u.s.n < y->u.s.n);
}

/* ---------------------------------------------------------------- truth, equality, order */

static int truthy(const struct jv *v)
{
	switch (v->t) {
	case J_UNDEF: case J_NONE: return 0;
	case J_BOOL: return v->u.b;
	case J_INT: return v->u.i != 0;
	case J_FLOAT: return v->u.f != 0;
	case J_STR: return v->u.s.n != 0;
	case J_LIST: return v->u.l->n != 0;
	case J_DICT: return v->u.d->n != 0;
	default: return 1;
	}
}

static int is_num(const struct jv *v) { return v->t == J_INT || v->t == J_FLOAT || v->t == J_BOOL; }
static double num(const struct jv *v) { return v->t == J_FLOAT ? v->u.f : v->t == J_INT ? (double)v->u.i : v->u.b; }
static int64_t inum(const struct jv *v) { return v->t == J_INT ? v->u.i : v->u.b; }

static int v_eq(const struct jv *a, const struct jv *b)
{
	if (is_num(a) && is_num(b)) {
		if (a->t != J_FLOAT && b->t != J_FLOAT)
			return inum(a) == inum(b);
		return num(a) == num(b);
	}
	if (a->t != b->t)
		return 0;
	switch (a->t) {
	case J_UNDEF: case J_NONE: return 1;
	case J_STR: return a->u.s.n == b->u.s.n && !memcmp(a->u.s.s, b->u.s.s, a->u.s.n);
	case J_LIST:
		if (a->u.l->n != b->u.l->n || a->tuple != b->tuple)
			return 0;
		for (size_t i = 0; i < a->u.l->n; i++)
			if (!v_eq(&a->u.l->v[i], &b->u.l->v[i]))
				return 0;
		return 1;
	case J_DICT:
		if (a->u.d->n != b->u.d->n)
			return 0;
		for (size_t i = 0; i < a->u.d->n; i++) {
			struct jv *o = dict_find(b->u.d, &a->u.d->k[i]);
			if (!o || !v_eq(&a->u.d->v[i], o))
				return 0;
		}
		return 1;
	case J_NS: return a->u.d == b->u.d;
	case J_MACRO: return a->u.m == b->u.m;
	case J_LOOP: return a->u.lp == b->u.lp;
	case J_FUNC: return a->fn == b->fn && a->self == b->self;
	default: return 0;
	}
}

/* <0, 0, >0; fails on unorderable types as Python does */
static int v_cmp(struct rs *R, const struct jv *a, const struct jv *b)
{
	if (is_num(a) && is_num(b)) {
		if (a->t != J_FLOAT && b->t != J_FLOAT)
			return (inum(a) > inum(b)) - (inum(a) < inum(b));
		return (num(a) > num(b)) - (num(a) < num(b));
	}
	if (a->t == J_STR && b->t == J_STR)
		return key_cmp(a, b);
	if (a->t == J_LIST && b->t == J_LIST) {
		size_t n = a->u.l->n < b->u.l->n ? a->u.l->n : b->u.l->n;
		for (size_t i = 0; i < n; i++) {
			int c;
			if (v_eq(&a->u.l->v[i], &b->u.l->v[i]))
				continue;
			c = v_cmp(R, &a->u.l->v[i], &b->u.l->v[i]);
			return c;
		}
		return (a->u.l->n > b->u.l->n) - (a->u.l->n < b->u.l->n);
	}
	rfail(R, "'<' not supported between these types");
}

static const char *type_name(const struct jv *v)
{
	static const char *const n[] = { "undefined", "none", "bool", "int", "float", "str", "list", "dict",
					 "namespace", "macro", "function", "loop" };
	return n[v->t];
}

/* ================================================================ evaluation */

static struct jv eval(struct rs *R, const struct node *n);
static void exec_body(struct rs *R, const struct node *b);

static struct jv lookup(struct rs *R, struct frame *f, const char *name)
{
	for (; f; f = f->parent) {
		struct jv *v = dict_get(&f->vars, name);
		if (v)
			return *v;
	}
	(void)R;
	{
		struct jv u = UNDEF;
		u.name = name;
		return u;
	}
}

/* builtin functions: globals and bound methods */
enum {
	F_RANGE = 1, F_NAMESPACE, F_DICT, F_RAISE, F_STRFTIME,
	M_STRIP, M_LSTRIP, M_RSTRIP, M_STARTSWITH, M_ENDSWITH, M_SPLIT, M_RSPLIT, M_REPLACE, M_UPPER, M_LOWER,
	M_TITLE, M_CAPITALIZE, M_FIND, M_COUNT, M_JOIN, M_FORMAT,
	M_GET, M_ITEMS, M_KEYS, M_VALUES
};

static const struct { const char *name; int fn; int on; } methods[] = {
	{ "strip", M_STRIP, J_STR }, { "lstrip", M_LSTRIP, J_STR }, { "rstrip", M_RSTRIP, J_STR },
	{ "startswith", M_STARTSWITH, J_STR }, { "endswith", M_ENDSWITH, J_STR }, { "split", M_SPLIT, J_STR },
	{ "rsplit", M_RSPLIT, J_STR }, { "replace", M_REPLACE, J_STR }, { "upper", M_UPPER, J_STR },
	{ "lower", M_LOWER, J_STR }, { "title", M_TITLE, J_STR }, { "capitalize", M_CAPITALIZE, J_STR },
	{ "find", M_FIND, J_STR }, { "count", M_COUNT, J_STR }, { "join", M_JOIN, J_STR },
	{ "format", M_FORMAT, J_STR },
	{ "get", M_GET, J_DICT }, { "items", M_ITEMS, J_DICT }, { "keys", M_KEYS, J_DICT },
	{ "values", M_VALUES, J_DICT }, { NULL, 0, 0 }
};

static struct jv bound(struct rs *R, const struct jv *self, const char *name)
{
	for (int i = 0; methods[i].name; i++)
		if ((int)self->t == methods[i].on && !strcmp(methods[i].name, name)) {
			struct jv f = { .t = J_FUNC };
			f.fn = methods[i].fn;
			f.self = ar_alloc(R, sizeof(struct jv));
			*f.self = *self;
			return f;
		}
	{
		struct jv u = UNDEF;
		u.name = name;
		return u;
	}
}

static struct jv loop_attr(struct rs *R, struct loopst *l, const char *a)
{
	if (!strcmp(a, "index")) return mkint((int64_t)l->i + 1);
	if (!strcmp(a, "index0")) return mkint((int64_t)l->i);
	if (!strcmp(a, "revindex")) return mkint((int64_t)(l->n - l->i));
	if (!strcmp(a, "revindex0")) return mkint((int64_t)(l->n - l->i - 1));
	if (!strcmp(a, "first")) return mkbool(l->i == 0);
	if (!strcmp(a, "last")) return mkbool(l->i + 1 == l->n);
	if (!strcmp(a, "length")) return mkint((int64_t)l->n);
	if (!strcmp(a, "depth")) return mkint(1);
	if (!strcmp(a, "depth0")) return mkint(0);
	if (!strcmp(a, "previtem")) { if (l->i) return l->items[l->i - 1]; struct jv u = UNDEF; u.name = "loop.previtem"; return u; }
	if (!strcmp(a, "nextitem")) { if (l->i + 1 < l->n) return l->items[l->i + 1]; struct jv u = UNDEF; u.name = "loop.nextitem"; return u; }
	rfail(R, "loop.%s is not supported", a);
}

static struct jv getattr_(struct rs *R, const struct jv *o, const char *name)
{
	struct jv u = UNDEF;
	u.name = name;
	switch (o->t) {
	case J_UNDEF:
		rfail(R, "'%s' is undefined (reading its attribute '%s')", o->name ? o->name : "value", name);
	case J_DICT: {
		struct jv m = bound(R, o, name), *v;
		if (m.t == J_FUNC)
			return m;
		v = dict_get(o->u.d, name);
		return v ? *v : u;
	}
	case J_NS: {
		struct jv *v = dict_get(o->u.d, name);
		return v ? *v : u;
	}
	case J_STR: return bound(R, o, name);
	case J_LOOP: return loop_attr(R, o->u.lp, name);
	default: return u;
	}
}

/* Python index: negative counts from the end; returns -1 when out of range */
static int64_t py_index(int64_t i, size_t n)
{
	if (i < 0)
		i += (int64_t)n;
	return i < 0 || i >= (int64_t)n ? -1 : i;
}

static struct jv getitem(struct rs *R, const struct jv *o, const struct jv *k)
{
	struct jv u = UNDEF;
	u.name = k->t == J_STR ? k->u.s.s : "item";
	switch (o->t) {
	case J_UNDEF:
		rfail(R, "'%s' is undefined (reading an item of it)", o->name ? o->name : "value");
	case J_DICT: case J_NS: {
		struct jv *v = dict_find(o->u.d, k);
		if (v)
			return *v;
		if (k->t == J_STR && o->t == J_DICT)
			return bound(R, o, k->u.s.s);
		return u;
	}
	case J_LIST:
		if (o->gen)
			rfail(R, "'generator' object is not subscriptable");
		if (k->t == J_INT || k->t == J_BOOL) {
			int64_t i = py_index(inum(k), o->u.l->n);
			return i < 0 ? u : o->u.l->v[i];
		}
		return u;
	case J_STR:
		if (k->t == J_INT || k->t == J_BOOL) {
			size_t len = u8len(o->u.s.s, o->u.s.n);
			int64_t i = py_index(inum(k), len);
			size_t a, b;
			if (i < 0)
				return u;
			a = u8off(o->u.s.s, o->u.s.n, (size_t)i);
			b = a + u8clen(o->u.s.s + a, o->u.s.n - a);
			return mkstr(R, o->u.s.s + a, b - a);
		}
		if (k->t == J_STR)
			return bound(R, o, k->u.s.s);
		return u;
	case J_LOOP:
		if (k->t == J_STR)
			return loop_attr(R, o->u.lp, k->u.s.s);
		return u;
	default:
		return u;
	}
}

static int64_t want_int(struct rs *R, const struct jv *v, const char *what)
{
	if (v->t != J_INT && v->t != J_BOOL)
		rfail(R, "%s must be an integer, not %s", what, type_name(v));
	return inum(v);
}

/* Python slice indices for length n */
static void slice_ix(struct rs *R, const struct jv *a, const struct jv *b, const struct jv *c, size_t n, int64_t *start,
		     int64_t *stop, int64_t *stepv)
{
	int64_t st = c && c->t != J_NONE ? want_int(R, c, "slice step") : 1, len = (int64_t)n;
	if (st == 0)
		rfail(R, "slice step cannot be zero");
	if (!a || a->t == J_NONE) {
		*start = st > 0 ? 0 : len - 1;
	} else {
		int64_t x = want_int(R, a, "slice index");
		if (x < 0) x += len;
		if (x < 0) x = st > 0 ? 0 : -1;
		if (x > len) x = st > 0 ? len : len - 1;
		if (x == len && st < 0) x = len - 1;
		*start = x;
	}
	if (!b || b->t == J_NONE) {
		*stop = st > 0 ? len : -1;
	} else {
		int64_t x = want_int(R, b, "slice index");
		if (x < 0) x += len;
		if (x < 0) x = st > 0 ? 0 : -1;
		if (x > len) x = len;
		*stop = x;
	}
	*stepv = st;
}

static struct jv do_slice(struct rs *R, const struct jv *o, const struct jv *a, const struct jv *b, const struct jv *c)
{
	int64_t s, e, st;
	if (o->t == J_LIST) {
		struct jv r = mklist(R, 0);
		slice_ix(R, a, b, c, o->u.l->n, &s, &e, &st);
		for (int64_t i = s; st > 0 ? i < e : i > e; i += st) {
			step(R);
			list_push(R, r.u.l, o->u.l->v[i]);
		}
		r.tuple = o->tuple;
		return r;
	}
	if (o->t == J_STR) {
		size_t len = u8len(o->u.s.s, o->u.s.n);
		struct lora_buf *bb = tnew(R);
		struct jv r;
		slice_ix(R, a, b, c, len, &s, &e, &st);
		if (st == 1) {
			size_t x = u8off(o->u.s.s, o->u.s.n, (size_t)s), y = e > s ? u8off(o->u.s.s, o->u.s.n, (size_t)e) : x;
			return mkstr(R, o->u.s.s + x, y > x ? y - x : 0);
		}
		for (int64_t i = s; st > 0 ? i < e : i > e; i += st) {
			size_t x = u8off(o->u.s.s, o->u.s.n, (size_t)i);
			step(R);
			lora_buf_add(bb, o->u.s.s + x, u8clen(o->u.s.s + x, o->u.s.n - x));
			if (bb->len > R->tpl->lim.max_memory) {
				tpop(R, bb);
				rfail(R, "template uses more than %zu bytes of memory", R->tpl->lim.max_memory);
			}
		}
		if (bb->oom) {
			tpop(R, bb);
			rfail(R, "out of memory");
		}
		r = mkstr(R, bb->data ? bb->data : "", bb->len);
		tpop(R, bb);
		return r;
	}
	if (o->t == J_UNDEF)
		rfail(R, "'%s' is undefined (slicing it)", o->name ? o->name : "value");
	rfail(R, "cannot slice a %s", type_name(o));
}

/* the items of an iterable, as a list (dict: keys; str: chars; undefined: empty) */
static struct jv iter_list(struct rs *R, const struct jv *v)
{
	struct jv r;
	switch (v->t) {
	case J_LIST: return *v;
	case J_UNDEF: case J_NONE:
		if (v->t == J_NONE)
			rfail(R, "'NoneType' object is not iterable");
		return mklist(R, 0);
	case J_DICT: case J_NS:
		r = mklist(R, v->u.d->n);
		for (size_t i = 0; i < v->u.d->n; i++)
			list_push(R, r.u.l, v->u.d->k[i]);
		return r;
	case J_STR:
		r = mklist(R, 0);
		for (size_t i = 0; i < v->u.s.n; ) {
			size_t k = u8clen(v->u.s.s + i, v->u.s.n - i);
			step(R);
			list_push(R, r.u.l, mkstr(R, v->u.s.s + i, k));
			i += k;
		}
		return r;
	default:
		rfail(R, "'%s' object is not iterable", type_name(v));
	}
}

static struct jv str_concat(struct rs *R, const struct jv *a, const struct jv *b)
{
	size_t n = a->u.s.n + b->u.s.n;
	char *d;
	struct jv v = { .t = J_STR };
	if (n < a->u.s.n)
		rfail(R, "string too long");
	d = ar_alloc(R, n + 1);
	memcpy(d, a->u.s.s, a->u.s.n);
	memcpy(d + a->u.s.n, b->u.s.s, b->u.s.n);
	d[n] = 0;
	v.u.s.s = d;
	v.u.s.n = n;
	return v;
}

static int64_t floordiv(int64_t a, int64_t b)
{
	int64_t q = a / b;
	if ((a % b != 0) && ((a < 0) != (b < 0)))
		q--;
	return q;
}

static struct jv str_replace(struct rs *R, const struct jv *s, const struct jv *old, const struct jv *nw, int64_t count);

/* markupsafe.escape: a Markup stays as it is */
static struct jv html_escape(struct rs *R, const struct jv *v)
{
	static const char *const from[] = { "&", "<", ">", "\"", "'" }, *const to[] = { "&amp;", "&lt;", "&gt;", "&#34;", "&#39;" };
	struct jv r = to_str(R, v);
	if (v->t == J_STR && v->safe)
		return *v;
	for (int k = 0; k < 5; k++) {
		struct jv f = cstr(R, from[k]), t = cstr(R, to[k]);
		r = str_replace(R, &r, &f, &t, -1);
	}
	r.safe = 1;
	return r;
}

static struct jv arith(struct rs *R, int op, const struct jv *a, const struct jv *b)
{
	if (op == '~') {
		struct jv x = to_str(R, a), y = to_str(R, b);
		return str_concat(R, &x, &y);
	}
	if (a->t == J_UNDEF || b->t == J_UNDEF)
		rfail(R, "'%s' is undefined (in arithmetic)",
		      a->t == J_UNDEF ? (a->name ? a->name : "value") : (b->name ? b->name : "value"));
	if (op == '+' && a->t == J_STR && b->t == J_STR) {
		struct jv x = *a, y = *b, r;
		if (a->safe != b->safe) {   /* Markup + str escapes the str */
			if (!a->safe) x = html_escape(R, a);
			if (!b->safe) y = html_escape(R, b);
		}
		r = str_concat(R, &x, &y);
		r.safe = a->safe || b->safe;
		return r;
	}
	if (op == '+' && a->t == J_LIST && b->t == J_LIST) {
		struct jv r = mklist(R, a->u.l->n + b->u.l->n);
		for (size_t i = 0; i < a->u.l->n; i++)
			list_push(R, r.u.l, a->u.l->v[i]);
		for (size_t i = 0; i < b->u.l->n; i++)
			list_push(R, r.u.l, b->u.l->v[i]);
		return r;
	}
	if (op == '*' && ((a->t == J_STR && (b->t == J_INT || b->t == J_BOOL)) || (b->t == J_STR && (a->t == J_INT || a->t == J_BOOL)))) {
		const struct jv *s = a->t == J_STR ? a : b;
		int64_t k = inum(a->t == J_STR ? b : a);
		char *d;
		struct jv v = { .t = J_STR };
		if (k <= 0 || !s->u.s.n)
			return mkstr(R, "", 0);
		if ((uint64_t)k > R->tpl->lim.max_memory / s->u.s.n)
			rfail(R, "template uses more than %zu bytes of memory", R->tpl->lim.max_memory);
		d = ar_alloc(R, s->u.s.n * (size_t)k + 1);
		for (int64_t i = 0; i < k; i++)
			memcpy(d + (size_t)i * s->u.s.n, s->u.s.s, s->u.s.n);
		d[s->u.s.n * (size_t)k] = 0;
		v.u.s.s = d;
		v.u.s.n = s->u.s.n * (size_t)k;
		return v;
	}
	if (!is_num(a) || !is_num(b))
		rfail(R, "unsupported operand types for %s: %s and %s",
		      op == OP_POW ? "**" : op == OP_FLOORDIV ? "//" : (char[]){ (char)op, 0 }, type_name(a), type_name(b));
	if (a->t != J_FLOAT && b->t != J_FLOAT && op != '/') {
		int64_t x = inum(a), y = inum(b), r;
		switch (op) {
		case '+': if (__builtin_add_overflow(x, y, &r)) rfail(R, "integer overflow"); return mkint(r);
		case '-': if (__builtin_sub_overflow(x, y, &r)) rfail(R, "integer overflow"); return mkint(r);
		case '*': if (__builtin_mul_overflow(x, y, &r)) rfail(R, "integer overflow"); return mkint(r);
		case OP_FLOORDIV: case '%':
			if (y == 0)
				rfail(R, "integer division or modulo by zero");
			if (x == INT64_MIN && y == -1)
				rfail(R, "integer overflow");
			r = floordiv(x, y);
			return mkint(op == '%' ? x - r * y : r);
		case OP_POW:
			if (y < 0)
				return mkfloat(pow((double)x, (double)y));
			r = 1;
			for (int64_t i = 0; i < y; i++) {
				step(R);
				if (__builtin_mul_overflow(r, x, &r))
					rfail(R, "integer overflow");
				if (r == 0 || r == 1)
					break;
			}
			return mkint(r);
		}
	}
	{
		double x = num(a), y = num(b);
		switch (op) {
		case '+': return mkfloat(x + y);
		case '-': return mkfloat(x - y);
		case '*': return mkfloat(x * y);
		case '/': if (y == 0) rfail(R, "division by zero"); return mkfloat(x / y);
		case OP_FLOORDIV: if (y == 0) rfail(R, "float floor division by zero"); return mkfloat(floor(x / y));
		case '%': { if (y == 0) rfail(R, "float modulo"); double m = fmod(x, y); if (m != 0 && ((m < 0) != (y < 0))) m += y; return mkfloat(m); }
		case OP_POW: return mkfloat(pow(x, y));
		}
	}
	rfail(R, "bad operator");
}

static int contains(struct rs *R, const struct jv *needle, const struct jv *hay)
{
	switch (hay->t) {
	case J_STR:
		if (needle->t != J_STR)
			rfail(R, "'in <string>' requires string as left operand, not %s", type_name(needle));
		if (!needle->u.s.n)
			return 1;
		if (needle->u.s.n > hay->u.s.n)
			return 0;
		for (size_t i = 0; i + needle->u.s.n <= hay->u.s.n; i++)
			if (!memcmp(hay->u.s.s + i, needle->u.s.s, needle->u.s.n))
				return 1;
		return 0;
	case J_LIST:
		for (size_t i = 0; i < hay->u.l->n; i++) {
			step(R);
			if (v_eq(needle, &hay->u.l->v[i]))
				return 1;
		}
		return 0;
	case J_DICT: case J_NS: return dict_find(hay->u.d, needle) != NULL;
	case J_UNDEF: return 0;
	default: rfail(R, "argument of type '%s' is not iterable", type_name(hay));
	}
}

/* ---------------------------------------------------------------- call arguments */

struct args {
	struct jv pos[8];
	size_t npos;
	const char *kwn[8];
	struct jv kwv[8];
	size_t nkw;
};

static void eval_args(struct rs *R, const struct node *c, size_t skip, struct args *a)
{
	size_t np = c->na - c->nkw;
	memset(a, 0, sizeof(*a));
	if (np - skip > 8 || c->nkw > 8)
		rfail(R, "too many arguments");
	for (size_t i = skip; i < np; i++)
		a->pos[a->npos++] = eval(R, c->a[i]);
	for (size_t i = 0; i < c->nkw; i++) {
		a->kwn[a->nkw] = c->kw[i];
		a->kwv[a->nkw++] = eval(R, c->a[np + i]);
	}
}

/* argument `name` by keyword only; NULL if absent */
static const struct jv *kwarg(const struct args *a, const char *name)
{
	for (size_t k = 0; k < a->nkw; k++)
		if (!strcmp(a->kwn[k], name))
			return &a->kwv[k];
	return NULL;
}

/* argument `i` by position or `name` by keyword; NULL if absent */
static const struct jv *arg(const struct args *a, size_t i, const char *name)
{
	if (i < a->npos)
		return &a->pos[i];
	for (size_t k = 0; k < a->nkw; k++)
		if (name && !strcmp(a->kwn[k], name))
			return &a->kwv[k];
	return NULL;
}

static const struct jv *want_str(struct rs *R, const struct jv *v, const char *what)
{
	if (!v || v->t != J_STR)
		rfail(R, "%s must be a string%s%s", what, v ? ", not " : "", v ? type_name(v) : "");
	return v;
}

/* ---------------------------------------------------------------- string helpers */

static struct jv case_map(struct rs *R, const struct jv *s, int mode)   /* 1 upper, 2 lower, 3 title, 4 capitalize */
{
	struct jv r = mkstr(R, s->u.s.s, s->u.s.n);
	char *d = (char *)r.u.s.s;
	int prev_alpha = 0;
	for (size_t i = 0; i < r.u.s.n; i++) {
		unsigned char c = (unsigned char)d[i];
		int alpha = c >= 0x80 ? prev_alpha : isalpha(c) != 0;   /* ASCII case mapping only */
		if (c < 0x80) {
			if (mode == 1 || ((mode == 3 && !prev_alpha) || (mode == 4 && i == 0)))
				d[i] = (char)toupper(c);
			else if (mode == 2 || mode == 3 || mode == 4)
				d[i] = (char)tolower(c);
		}
		prev_alpha = c >= 0x80 ? 1 : alpha;
	}
	return r;
}

static size_t find_sub(const char *h, size_t hn, const char *n, size_t nn, size_t from)
{
	if (nn > hn)
		return SIZE_MAX;
	for (size_t i = from; i + nn <= hn; i++)
		if (!memcmp(h + i, n, nn))
			return i;
	return SIZE_MAX;
}

static struct jv str_replace(struct rs *R, const struct jv *s, const struct jv *old, const struct jv *nw, int64_t count)
{
	struct lora_buf *b = tnew(R);
	struct jv r;
	size_t i = 0;
	int64_t done = 0;
	if (!old->u.s.n) {
		/* Python inserts `new` between every char and at both ends */
		for (size_t k = 0; k <= s->u.s.n && (count < 0 || done < count); ) {
			step(R);
			lora_buf_add(b, nw->u.s.s, nw->u.s.n);
			done++;
			if (k == s->u.s.n) { k++; break; }
			size_t m = u8clen(s->u.s.s + k, s->u.s.n - k);
			lora_buf_add(b, s->u.s.s + k, m);
			k += m;
			i = k;
		}
		if (i < s->u.s.n)
			lora_buf_add(b, s->u.s.s + i, s->u.s.n - i);
	} else {
		for (;;) {
			size_t j = (count >= 0 && done >= count) ? SIZE_MAX : find_sub(s->u.s.s, s->u.s.n, old->u.s.s, old->u.s.n, i);
			step(R);
			if (j == SIZE_MAX) {
				lora_buf_add(b, s->u.s.s + i, s->u.s.n - i);
				break;
			}
			lora_buf_add(b, s->u.s.s + i, j - i);
			lora_buf_add(b, nw->u.s.s, nw->u.s.n);
			i = j + old->u.s.n;
			done++;
			if (b->len > R->tpl->lim.max_memory)
				break;
		}
	}
	if (b->oom || b->len > R->tpl->lim.max_memory) {
		tpop(R, b);
		rfail(R, "template uses more than %zu bytes of memory", R->tpl->lim.max_memory);
	}
	r = mkstr(R, b->data ? b->data : "", b->len);
	tpop(R, b);
	return r;
}

static struct jv str_split(struct rs *R, const struct jv *s, const struct jv *sep, int64_t maxsplit, int right)
{
	struct jv r = mklist(R, 0);
	const char *p = s->u.s.s;
	size_t n = s->u.s.n;
	if (sep && sep->t != J_NONE) {
		want_str(R, sep, "split separator");
		if (!sep->u.s.n)
			rfail(R, "empty separator");
		if (!right) {
			size_t i = 0;
			int64_t k = 0;
			for (;;) {
				size_t j = (maxsplit >= 0 && k >= maxsplit) ? SIZE_MAX : find_sub(p, n, sep->u.s.s, sep->u.s.n, i);
				step(R);
				if (j == SIZE_MAX) {
					list_push(R, r.u.l, mkstr(R, p + i, n - i));
					break;
				}
				list_push(R, r.u.l, mkstr(R, p + i, j - i));
				i = j + sep->u.s.n;
				k++;
			}
		} else {
			/* rsplit: collect from the right, then reverse */
			size_t e = n;
			int64_t k = 0;
			struct jv t = mklist(R, 0);
			for (;;) {
				size_t j = SIZE_MAX;
				step(R);
				if (!(maxsplit >= 0 && k >= maxsplit) && e >= sep->u.s.n)
					for (size_t q = e - sep->u.s.n + 1; q-- > 0; )
						if (!memcmp(p + q, sep->u.s.s, sep->u.s.n)) {
							j = q;
							break;
						}
				if (j == SIZE_MAX) {
					list_push(R, t.u.l, mkstr(R, p, e));
					break;
				}
				list_push(R, t.u.l, mkstr(R, p + j + sep->u.s.n, e - j - sep->u.s.n));
				e = j;
				k++;
			}
			for (size_t q = t.u.l->n; q-- > 0; )
				list_push(R, r.u.l, t.u.l->v[q]);
		}
		return r;
	}
	/* whitespace split (maxsplit honoured left to right only) */
	{
		size_t i = 0;
		int64_t k = 0;
		for (;;) {
			size_t w, a;
			while (i < n && (w = py_space((const unsigned char *)p + i, n - i)))
				i += w;
			if (i >= n)
				break;
			step(R);
			if (maxsplit >= 0 && k >= maxsplit && !right) {
				size_t e = n;
				while (e > i) {
					size_t st = e - 1;
					while (st > i && ((unsigned char)p[st] & 0xC0) == 0x80)
						st--;
					if (py_space((const unsigned char *)p + st, e - st) != e - st)
						break;
					e = st;
				}
				list_push(R, r.u.l, mkstr(R, p + i, e - i));
				break;
			}
			a = i;
			while (i < n && !py_space((const unsigned char *)p + i, n - i))
				i += u8clen(p + i, n - i);
			list_push(R, r.u.l, mkstr(R, p + a, i - a));
			k++;
		}
	}
	return r;
}

/* str.format with "{}", "{0}", "{name}" fields and "{{", "}}" */
static struct jv str_format(struct rs *R, const struct jv *s, const struct args *a)
{
	struct lora_buf *b = tnew(R);
	struct jv r;
	size_t auto_i = 0;
	const char *p = s->u.s.s;
	for (size_t i = 0; i < s->u.s.n; i++) {
		if (p[i] == '{' && i + 1 < s->u.s.n && p[i + 1] == '{') { lora_buf_add(b, "{", 1); i++; continue; }
		if (p[i] == '}' && i + 1 < s->u.s.n && p[i + 1] == '}') { lora_buf_add(b, "}", 1); i++; continue; }
		if (p[i] == '{') {
			const char *e = memchr(p + i, '}', s->u.s.n - i);
			const struct jv *v = NULL;
			struct jv sv;
			size_t fl;
			if (!e) { tpop(R, b); rfail(R, "format: single '{' encountered"); }
			fl = (size_t)(e - p) - i - 1;
			if (fl == 0) {
				v = arg(a, auto_i++, NULL);
			} else if (isdigit((unsigned char)p[i + 1])) {
				v = arg(a, (size_t)atoi(p + i + 1), NULL);
			} else {
				for (size_t k = 0; k < a->nkw; k++)
					if (strlen(a->kwn[k]) == fl && !memcmp(a->kwn[k], p + i + 1, fl))
						v = &a->kwv[k];
			}
			if (!v) { tpop(R, b); rfail(R, "format: missing argument for field %zu", auto_i); }
			sv = to_str(R, v);
			lora_buf_add(b, sv.u.s.s, sv.u.s.n);
			i = (size_t)(e - p);
			continue;
		}
		lora_buf_add(b, p + i, 1);
	}
	r = mkstr(R, b->data ? b->data : "", b->len);
	tpop(R, b);
	return r;
}

static struct jv join_list(struct rs *R, const struct jv *items, const struct jv *sep, const char *attr)
{
	struct lora_buf *b = tnew(R);
	struct jv r, l = iter_list(R, items);
	for (size_t i = 0; i < l.u.l->n; i++) {
		struct jv x = l.u.l->v[i];
		step(R);
		if (attr)
			x = getattr_(R, &x, attr);
		x = to_str(R, &x);
		if (i)
			lora_buf_add(b, sep->u.s.s, sep->u.s.n);
		lora_buf_add(b, x.u.s.s, x.u.s.n);
		if (b->len > R->tpl->lim.max_memory) {
			tpop(R, b);
			rfail(R, "template uses more than %zu bytes of memory", R->tpl->lim.max_memory);
		}
	}
	if (b->oom) { tpop(R, b); rfail(R, "out of memory"); }
	r = mkstr(R, b->data ? b->data : "", b->len);
	tpop(R, b);
	return r;
}

/* ---------------------------------------------------------------- function calls */

static struct jv call_macro(struct rs *R, const struct jv *m, const struct args *a);

static struct jv call_value(struct rs *R, const struct jv *f, const struct args *a)
{
	const struct jv *s = f->self;
	if (f->t == J_MACRO)
		return call_macro(R, f, a);
	if (f->t == J_UNDEF)
		rfail(R, "'%s' is undefined (called as a function)", f->name ? f->name : "value");
	if (f->t != J_FUNC)
		rfail(R, "%s %s is not callable", strchr("aeiou", type_name(f)[0]) ? "an" : "a", type_name(f));
	switch (f->fn) {
	case F_RANGE: {
		int64_t lo = 0, hi, st = 1;
		struct jv r;
		if (a->npos == 1) hi = want_int(R, &a->pos[0], "range()");
		else if (a->npos >= 2) {
			lo = want_int(R, &a->pos[0], "range()");
			hi = want_int(R, &a->pos[1], "range()");
			if (a->npos > 2) st = want_int(R, &a->pos[2], "range()");
		} else rfail(R, "range expected at least 1 argument");
		if (st == 0)
			rfail(R, "range() arg 3 must not be zero");
		r = mklist(R, 0);
		for (int64_t i = lo; st > 0 ? i < hi : i > hi; i += st) {
			step(R);
			list_push(R, r.u.l, mkint(i));
			if (__builtin_add_overflow(i, st, &(int64_t){0}))
				break;
		}
		return r;
	}
	case F_NAMESPACE: case F_DICT: {
		struct jv d = mkdict(R);
		if (f->fn == F_NAMESPACE)
			d.t = J_NS;
		for (size_t i = 0; i < a->npos; i++) {
			if (a->pos[i].t != J_DICT && a->pos[i].t != J_NS)
				rfail(R, "%s() takes a dict as positional argument", f->fn == F_DICT ? "dict" : "namespace");
			for (size_t k = 0; k < a->pos[i].u.d->n; k++)
				dict_set(R, d.u.d, a->pos[i].u.d->k[k], a->pos[i].u.d->v[k]);
		}
		for (size_t k = 0; k < a->nkw; k++) {
			if (f->fn == F_NAMESPACE && a->kwn[k][0] == '_')
				rfail(R, "chat templates cannot store underscore-prefixed attributes on a namespace, but got '%s'", a->kwn[k]);
			dict_set(R, d.u.d, cstr(R, a->kwn[k]), a->kwv[k]);
		}
		return d;
	}
	case F_RAISE: {
		const struct jv *m = arg(a, 0, "message");
		struct jv ms = m ? to_str(R, m) : cstr(R, "");
		rfail(R, "raise_exception: %s", ms.u.s.s);
	}
	case F_STRFTIME: {
		const struct jv *fm = want_str(R, arg(a, 0, "format"), "strftime_now format");
		char out[512];
		size_t k;
		if (!R->now)
			rfail(R, "strftime_now: no date was given");
		k = strftime(out, sizeof(out), fm->u.s.s, R->now);
		if (!k && fm->u.s.n)
			rfail(R, "strftime_now: format too long");
		return mkstr(R, out, k);
	}
	case M_STRIP: return py_strip(R, s, arg(a, 0, "chars"), 3);
	case M_LSTRIP: return py_strip(R, s, arg(a, 0, "chars"), 1);
	case M_RSTRIP: return py_strip(R, s, arg(a, 0, "chars"), 2);
	case M_STARTSWITH: case M_ENDSWITH: {
		const struct jv *p = arg(a, 0, NULL);
		struct jv one;
		const struct jv *list;
		size_t cnt;
		if (!p)
			rfail(R, "%s takes one argument", f->fn == M_STARTSWITH ? "startswith" : "endswith");
		if (p->t == J_LIST) {
			list = p->u.l->v;
			cnt = p->u.l->n;
		} else {
			one = *want_str(R, p, "startswith/endswith argument");
			list = &one;
			cnt = 1;
		}
		for (size_t i = 0; i < cnt; i++) {
			const struct jv *x = want_str(R, &list[i], "startswith/endswith argument");
			if (x->u.s.n <= s->u.s.n &&
			    !memcmp(s->u.s.s + (f->fn == M_STARTSWITH ? 0 : s->u.s.n - x->u.s.n), x->u.s.s, x->u.s.n))
				return mkbool(1);
		}
		return mkbool(0);
	}
	case M_SPLIT: case M_RSPLIT: {
		const struct jv *ms = arg(a, 1, "maxsplit");
		return str_split(R, s, arg(a, 0, "sep"), ms ? want_int(R, ms, "maxsplit") : -1, f->fn == M_RSPLIT);
	}
	case M_REPLACE: {
		const struct jv *c = arg(a, 2, "count");
		return str_replace(R, s, want_str(R, arg(a, 0, "old"), "replace()"), want_str(R, arg(a, 1, "new"), "replace()"),
				   c ? want_int(R, c, "count") : -1);
	}
	case M_UPPER: return case_map(R, s, 1);
	case M_LOWER: return case_map(R, s, 2);
	case M_TITLE: return case_map(R, s, 3);
	case M_CAPITALIZE: return case_map(R, s, 4);
	case M_FIND: {
		const struct jv *x = want_str(R, arg(a, 0, "sub"), "find()");
		size_t j = find_sub(s->u.s.s, s->u.s.n, x->u.s.s, x->u.s.n, 0);
		return mkint(j == SIZE_MAX ? -1 : (int64_t)u8len(s->u.s.s, j));
	}
	case M_COUNT: {
		const struct jv *x = want_str(R, arg(a, 0, "sub"), "count()");
		int64_t c = 0;
		if (!x->u.s.n)
			return mkint((int64_t)u8len(s->u.s.s, s->u.s.n) + 1);
		for (size_t j = 0; (j = find_sub(s->u.s.s, s->u.s.n, x->u.s.s, x->u.s.n, j)) != SIZE_MAX; j += x->u.s.n)
			c++;
		return mkint(c);
	}
	case M_JOIN: {
		const struct jv *l = arg(a, 0, "iterable");
		if (!l)
			rfail(R, "join() takes one argument");
		return join_list(R, l, s, NULL);
	}
	case M_FORMAT: return str_format(R, s, a);
	case M_GET: {
		const struct jv *k = arg(a, 0, "key"), *d = arg(a, 1, "default");
		struct jv *v;
		if (!k)
			rfail(R, "get() takes a key");
		v = dict_find(s->u.d, k);
		return v ? *v : d ? *d : NONE;
	}
	case M_ITEMS: case M_KEYS: case M_VALUES: {
		struct jv r = mklist(R, s->u.d->n);
		for (size_t i = 0; i < s->u.d->n; i++) {
			if (f->fn == M_ITEMS) {
				struct jv t = mklist(R, 2);
				t.tuple = 1;
				list_push(R, t.u.l, s->u.d->k[i]);
				list_push(R, t.u.l, s->u.d->v[i]);
				list_push(R, r.u.l, t);
			} else {
				list_push(R, r.u.l, f->fn == M_KEYS ? s->u.d->k[i] : s->u.d->v[i]);
			}
		}
		return r;
	}
	}
	rfail(R, "bad function");
}

/* ---------------------------------------------------------------- tests */

static int run_test(struct rs *R, const char *name, const struct jv *v, const struct args *a)
{
	const struct jv *x = arg(a, 0, NULL);
#define NEEDARG() do { if (!x) rfail(R, "test '%s' needs an argument", name); } while (0)
	if (!strcmp(name, "defined")) return v->t != J_UNDEF;
	if (!strcmp(name, "undefined")) return v->t == J_UNDEF;
	if (!strcmp(name, "none")) return v->t == J_NONE;
	if (!strcmp(name, "string")) return v->t == J_STR;
	if (!strcmp(name, "mapping")) return v->t == J_DICT;
	if (!strcmp(name, "number")) return v->t == J_INT || v->t == J_FLOAT || v->t == J_BOOL;
	if (!strcmp(name, "integer")) return v->t == J_INT;
	if (!strcmp(name, "float")) return v->t == J_FLOAT;
	if (!strcmp(name, "boolean")) return v->t == J_BOOL;
	if (!strcmp(name, "true")) return v->t == J_BOOL && v->u.b;
	if (!strcmp(name, "false")) return v->t == J_BOOL && !v->u.b;
	if (!strcmp(name, "sequence")) return v->t == J_LIST || v->t == J_STR || v->t == J_DICT;
	if (!strcmp(name, "iterable")) return v->t == J_LIST || v->t == J_STR || v->t == J_DICT || v->t == J_NS || v->t == J_UNDEF;
	if (!strcmp(name, "callable")) return v->t == J_MACRO || v->t == J_FUNC;
	if (!strcmp(name, "escaped")) return 0;
	if (!strcmp(name, "lower")) { struct jv s = to_str(R, v), l = case_map(R, &s, 2); return v_eq(&s, &l); }
	if (!strcmp(name, "upper")) { struct jv s = to_str(R, v), l = case_map(R, &s, 1); return v_eq(&s, &l); }
	if (!strcmp(name, "odd") || !strcmp(name, "even")) {
		int64_t i = want_int(R, v, "odd/even test value");
		return (name[0] == 'o') == (i % 2 != 0);
	}
	if (!strcmp(name, "divisibleby")) {
		int64_t d;
		NEEDARG();
		d = want_int(R, x, "divisibleby");
		if (!d) rfail(R, "integer division or modulo by zero");
		return want_int(R, v, "divisibleby value") % d == 0;
	}
	if (!strcmp(name, "eq") || !strcmp(name, "equalto") || !strcmp(name, "==")) { NEEDARG(); return v_eq(v, x); }
	if (!strcmp(name, "ne") || !strcmp(name, "!=")) { NEEDARG(); return !v_eq(v, x); }
	if (!strcmp(name, "sameas")) { NEEDARG(); return v->t == x->t && (v->t == J_NONE || v->t == J_UNDEF || v_eq(v, x)); }
	if (!strcmp(name, "in")) { NEEDARG(); return contains(R, v, x); }
	if (!strcmp(name, "lt") || !strcmp(name, "<") || !strcmp(name, "lessthan")) { NEEDARG(); return v_cmp(R, v, x) < 0; }
	if (!strcmp(name, "le") || !strcmp(name, "<=")) { NEEDARG(); return v_cmp(R, v, x) <= 0; }
	if (!strcmp(name, "gt") || !strcmp(name, ">") || !strcmp(name, "greaterthan")) { NEEDARG(); return v_cmp(R, v, x) > 0; }
	if (!strcmp(name, "ge") || !strcmp(name, ">=")) { NEEDARG(); return v_cmp(R, v, x) >= 0; }
#undef NEEDARG
	rfail(R, "no test named '%s'", name);
}

/* ---------------------------------------------------------------- filters */

static struct jv apply_filter(struct rs *R, const char *name, const struct jv *v, const struct args *a);

/* select/reject/selectattr/rejectattr over `v` */
static struct jv select_items(struct rs *R, const struct jv *v, const struct args *a, int by_attr, int keep)
{
	struct jv l = truthy(v) ? iter_list(R, v) : mklist(R, 0), r = mklist(R, 0);
	const struct jv *attr = by_attr ? want_str(R, arg(a, 0, NULL), "selectattr attribute") : NULL;
	const struct jv *tn = arg(a, by_attr ? 1 : 0, NULL);
	struct args ta;
	memset(&ta, 0, sizeof(ta));
	for (size_t k = (size_t)by_attr + 1; k < a->npos; k++)
		ta.pos[ta.npos++] = a->pos[k];
	if (tn)
		want_str(R, tn, "test name");
	for (size_t i = 0; i < l.u.l->n; i++) {
		struct jv x = l.u.l->v[i];
		int t;
		step(R);
		if (attr)
			x = getattr_(R, &x, attr->u.s.s);
		t = tn ? run_test(R, tn->u.s.s, &x, &ta) : truthy(&x);
		if (t == keep)
			list_push(R, r.u.l, l.u.l->v[i]);
	}
	r.gen = 1;
	return r;
}

static int sort_cmp_attr(struct rs *R, const struct jv *x, const struct jv *y, const char *attr, int ci)
{
	struct jv a = attr ? getattr_(R, x, attr) : *x, b = attr ? getattr_(R, y, attr) : *y;
	if (ci && a.t == J_STR && b.t == J_STR) {
		a = case_map(R, &a, 2);
		b = case_map(R, &b, 2);
	}
	return v_cmp(R, &a, &b);
}

static struct jv sorted(struct rs *R, const struct jv *v, int reverse, const char *attr, int ci)
{
	struct jv l = iter_list(R, v), r = mklist(R, l.u.l->n);
	for (size_t i = 0; i < l.u.l->n; i++)
		list_push(R, r.u.l, l.u.l->v[i]);
	/* stable insertion sort (chat templates sort a handful of items); steps bound it */
	for (size_t i = 1; i < r.u.l->n; i++)
		for (size_t j = i; j > 0; j--) {
			int c;
			step(R);
			c = sort_cmp_attr(R, &r.u.l->v[j - 1], &r.u.l->v[j], attr, ci);
			if (reverse ? c >= 0 : c <= 0)
				break;
			struct jv t = r.u.l->v[j];
			r.u.l->v[j] = r.u.l->v[j - 1];
			r.u.l->v[j - 1] = t;
		}
	return r;
}

static struct jv f_indent(struct rs *R, const struct jv *v, const struct args *a)
{
	const struct jv *w = arg(a, 0, "width"), *first = arg(a, 1, "first"), *blank = arg(a, 2, "blank");
	struct jv s = to_str(R, v), pad, r;
	struct lora_buf *b = tnew(R);
	int64_t n = 4;
	if (w && w->t == J_STR)
		pad = *w;
	else {
		if (w) n = want_int(R, w, "indent width");
		if (n < 0) n = 0;
		if (n > 4096) rfail(R, "indent width too large");
		char *d = ar_alloc(R, (size_t)n + 1);
		memset(d, ' ', (size_t)n);
		d[n] = 0;
		pad.t = J_STR;
		pad.u.s.s = d;
		pad.u.s.n = (size_t)n;
	}
	/* jinja2: lines = s.splitlines(); first line indented only with first=True; blank lines only with blank=True */
	{
		size_t i = 0, line = 0;
		while (i <= s.u.s.n) {
			size_t j = i;
			while (j < s.u.s.n && s.u.s.s[j] != '\n')
				j++;
			step(R);
			int empty = j == i;
			if ((line > 0 || (first && truthy(first))) && (!empty || (blank && truthy(blank))))
				lora_buf_add(b, pad.u.s.s, pad.u.s.n);
			lora_buf_add(b, s.u.s.s + i, j - i);
			if (j >= s.u.s.n)
				break;
			lora_buf_add(b, "\n", 1);
			i = j + 1;
			line++;
			if (b->len > R->tpl->lim.max_memory) break;
		}
	}
	if (b->oom || b->len > R->tpl->lim.max_memory) { tpop(R, b); rfail(R, "template uses too much memory"); }
	r = mkstr(R, b->data ? b->data : "", b->len);
	tpop(R, b);
	return r;
}

static struct jv apply_filter(struct rs *R, const char *name, const struct jv *v, const struct args *a)
{
	step(R);
	if (!strcmp(name, "trim")) {
		struct jv s = to_str(R, v);
		return py_strip(R, &s, arg(a, 0, "chars"), 3);
	}
	if (!strcmp(name, "length") || !strcmp(name, "count")) {
		switch (v->t) {
		case J_STR: return mkint((int64_t)u8len(v->u.s.s, v->u.s.n));
		case J_LIST:
			if (v->gen)
				rfail(R, "object of type 'generator' has no len()");
			return mkint((int64_t)v->u.l->n);
		case J_DICT: case J_NS: return mkint((int64_t)v->u.d->n);
		case J_UNDEF: return mkint(0);
		default: rfail(R, "object of type '%s' has no len()", type_name(v));
		}
	}
	if (!strcmp(name, "tojson")) {
		const struct jv *ind = arg(a, 1, "indent"), *sep = arg(a, 2, "separators"), *sk = arg(a, 4, "sort_keys"),
				*ea = arg(a, 0, "ensure_ascii");
		struct jopt o = { -1, ", ", ": ", 0, 0 };
		struct lora_buf *b = tnew(R);
		struct jv r;
		if (ind && ind->t != J_NONE) {
			int64_t k = want_int(R, ind, "tojson indent");
			o.indent = k < 0 ? 0 : k > 64 ? 64 : (int)k;
			o.item_sep = ",";
		}
		if (sep && sep->t != J_NONE) {
			if (sep->t != J_LIST || sep->u.l->n != 2)
				rfail(R, "tojson separators must be a pair of strings");
			o.item_sep = want_str(R, &sep->u.l->v[0], "separator")->u.s.s;
			o.key_sep = want_str(R, &sep->u.l->v[1], "separator")->u.s.s;
		}
		o.sort_keys = sk && truthy(sk);
		o.ensure_ascii = ea && truthy(ea);
		to_json(R, b, v, &o, 0);
		r = mkstr(R, b->data ? b->data : "", b->len);
		tpop(R, b);
		return r;
	}
	if (!strcmp(name, "upper") || !strcmp(name, "lower") || !strcmp(name, "title") || !strcmp(name, "capitalize")) {
		struct jv s = to_str(R, v);
		return case_map(R, &s, name[0] == 'u' ? 1 : name[0] == 'l' ? 2 : name[0] == 't' ? 3 : 4);
	}
	if (!strcmp(name, "default") || !strcmp(name, "d")) {
		const struct jv *dv = arg(a, 0, "default_value"), *bo = arg(a, 1, "boolean");
		struct jv empty = mkstr(R, "", 0);
		if (v->t == J_UNDEF || (bo && truthy(bo) && !truthy(v)))
			return dv ? *dv : empty;
		return *v;
	}
	if (!strcmp(name, "join")) {
		const struct jv *sep = arg(a, 0, "d"), *at = arg(a, 1, "attribute");
		struct jv s = sep ? to_str(R, sep) : mkstr(R, "", 0);
		return join_list(R, v, &s, at ? want_str(R, at, "join attribute")->u.s.s : NULL);
	}
	if (!strcmp(name, "selectattr") || !strcmp(name, "rejectattr"))
		return select_items(R, v, a, 1, name[0] == 's');
	if (!strcmp(name, "select") || !strcmp(name, "reject"))
		return select_items(R, v, a, 0, name[0] == 's');
	if (!strcmp(name, "map")) {
		const struct jv *at = kwarg(a, "attribute"), *df = kwarg(a, "default");
		struct jv l = truthy(v) ? iter_list(R, v) : mklist(R, 0), r = mklist(R, l.u.l->n);
		struct args fa;
		memset(&fa, 0, sizeof(fa));
		r.gen = 1;
		if (!at) {
			const struct jv *fn = want_str(R, arg(a, 0, NULL), "map filter name");
			for (size_t k = 1; k < a->npos; k++)
				fa.pos[fa.npos++] = a->pos[k];
			for (size_t i = 0; i < l.u.l->n; i++)
				list_push(R, r.u.l, apply_filter(R, fn->u.s.s, &l.u.l->v[i], &fa));
			return r;
		}
		want_str(R, at, "map attribute");
		for (size_t i = 0; i < l.u.l->n; i++) {
			struct jv x = getattr_(R, &l.u.l->v[i], at->u.s.s);
			step(R);
			if (x.t == J_UNDEF && df)
				x = *df;
			list_push(R, r.u.l, x);
		}
		return r;
	}
	if (!strcmp(name, "first") || !strcmp(name, "last")) {
		struct jv l = iter_list(R, v), u = UNDEF;
		u.name = name;
		if (!l.u.l->n)
			return u;
		return l.u.l->v[name[0] == 'f' ? 0 : l.u.l->n - 1];
	}
	if (!strcmp(name, "list")) {
		struct jv l = iter_list(R, v), r = mklist(R, l.u.l->n);
		r.gen = 0;
		for (size_t i = 0; i < l.u.l->n; i++)
			list_push(R, r.u.l, l.u.l->v[i]);
		return r;
	}
	if (!strcmp(name, "string"))
		return to_str(R, v);
	if (!strcmp(name, "safe")) {
		struct jv s = to_str(R, v);
		s.safe = 1;
		return s;
	}
	if (!strcmp(name, "e") || !strcmp(name, "escape"))
		return html_escape(R, v);
	if (!strcmp(name, "int")) {
		const struct jv *df = arg(a, 0, "default");
		if (v->t == J_INT) return *v;
		if (v->t == J_BOOL) return mkint(v->u.b);
		if (v->t == J_FLOAT && isfinite(v->u.f) && fabs(v->u.f) < 9.2e18) return mkint((int64_t)v->u.f);
		if (v->t == J_STR) {
			char *e;
			struct jv t = py_strip(R, v, NULL, 3);
			long long x;
			errno = 0;
			x = strtoll(t.u.s.s, &e, 10);
			if (t.u.s.n && !*e && !errno)
				return mkint(x);
			double d = strtod(t.u.s.s, &e);
			if (t.u.s.n && !*e && isfinite(d) && fabs(d) < 9.2e18)
				return mkint((int64_t)d);
		}
		return df ? *df : mkint(0);
	}
	if (!strcmp(name, "float")) {
		const struct jv *df = arg(a, 0, "default");
		if (is_num(v)) return mkfloat(num(v));
		if (v->t == J_STR) {
			char *e;
			double d = strtod(v->u.s.s, &e);
			if (v->u.s.n && !*e) return mkfloat(d);
		}
		return df ? *df : mkfloat(0);
	}
	if (!strcmp(name, "abs")) {
		if (v->t == J_INT) { if (v->u.i == INT64_MIN) rfail(R, "integer overflow"); return mkint(v->u.i < 0 ? -v->u.i : v->u.i); }
		if (is_num(v)) return mkfloat(fabs(num(v)));
		rfail(R, "bad operand type for abs(): '%s'", type_name(v));
	}
	if (!strcmp(name, "round")) {
		const struct jv *pr = arg(a, 0, "precision"), *me = arg(a, 1, "method");
		double x, m;
		int64_t p = pr ? want_int(R, pr, "round precision") : 0;
		if (!is_num(v)) rfail(R, "round needs a number");
		if (p < 0 || p > 15) rfail(R, "round precision out of range");
		m = pow(10, (double)p);
		x = num(v) * m;
		if (me && streq(me, "floor", 5)) x = floor(x);
		else if (me && streq(me, "ceil", 4)) x = ceil(x);
		else x = nearbyint(x);   /* Python's round() on the scaled value: half to even */
		return mkfloat(x / m);
	}
	if (!strcmp(name, "items")) {
		struct jv self = *v;
		struct jv f = { .t = J_FUNC };
		struct args none;
		if (v->t == J_UNDEF) return mklist(R, 0);
		if (v->t != J_DICT) rfail(R, "items filter needs a mapping, not %s", type_name(v));
		memset(&none, 0, sizeof(none));
		f.fn = M_ITEMS;
		f.self = &self;
		return call_value(R, &f, &none);
	}
	if (!strcmp(name, "dictsort")) {
		struct jv self = *v, f = { .t = J_FUNC }, items;
		struct args none;
		if (v->t != J_DICT) rfail(R, "dictsort needs a mapping");
		memset(&none, 0, sizeof(none));
		f.fn = M_ITEMS;
		f.self = &self;
		items = call_value(R, &f, &none);
		return sorted(R, &items, 0, NULL, 1);
	}
	if (!strcmp(name, "replace")) {
		const struct jv *c = arg(a, 2, "count");
		struct jv s = to_str(R, v), o = to_str(R, want_str(R, arg(a, 0, "old"), "replace()")),
			  n = to_str(R, want_str(R, arg(a, 1, "new"), "replace()"));
		return str_replace(R, &s, &o, &n, c && c->t != J_NONE ? want_int(R, c, "count") : -1);
	}
	if (!strcmp(name, "indent"))
		return f_indent(R, v, a);
	if (!strcmp(name, "reverse")) {
		if (v->t == J_STR) {
			struct jv m1 = mkint(-1);
			return do_slice(R, v, NULL, NULL, &m1);
		}
		{
			struct jv l = iter_list(R, v), r = mklist(R, l.u.l->n);
			for (size_t i = l.u.l->n; i-- > 0; )
				list_push(R, r.u.l, l.u.l->v[i]);
			return r;
		}
	}
	if (!strcmp(name, "sort")) {
		const struct jv *rv = arg(a, 0, "reverse"), *cs = arg(a, 1, "case_sensitive"), *at = arg(a, 2, "attribute");
		return sorted(R, v, rv && truthy(rv), at ? want_str(R, at, "sort attribute")->u.s.s : NULL, !(cs && truthy(cs)));
	}
	if (!strcmp(name, "unique")) {
		struct jv l = iter_list(R, v), r = mklist(R, 0);
		for (size_t i = 0; i < l.u.l->n; i++)
			if (!contains(R, &l.u.l->v[i], &r))
				list_push(R, r.u.l, l.u.l->v[i]);
		return r;
	}
	if (!strcmp(name, "sum")) {
		const struct jv *at = arg(a, 0, "attribute"), *st = arg(a, 1, "start");
		struct jv l = iter_list(R, v), acc = st ? *st : mkint(0);
		for (size_t i = 0; i < l.u.l->n; i++) {
			struct jv x = at ? getattr_(R, &l.u.l->v[i], want_str(R, at, "sum attribute")->u.s.s) : l.u.l->v[i];
			acc = arith(R, '+', &acc, &x);
		}
		return acc;
	}
	if (!strcmp(name, "min") || !strcmp(name, "max")) {
		struct jv l = iter_list(R, v), u = UNDEF, best;
		if (!l.u.l->n) return u;
		best = l.u.l->v[0];
		for (size_t i = 1; i < l.u.l->n; i++) {
			int c = v_cmp(R, &l.u.l->v[i], &best);
			if (name[1] == 'i' ? c < 0 : c > 0) best = l.u.l->v[i];
		}
		return best;
	}
	if (!strcmp(name, "wordcount")) {
		struct jv s = to_str(R, v), w = str_split(R, &s, NULL, -1, 0);
		return mkint((int64_t)w.u.l->n);
	}
	rfail(R, "no filter named '%s'", name);
}

/* ---------------------------------------------------------------- expressions */

static struct jv eval_name(struct rs *R, const struct node *n);

static struct jv eval(struct rs *R, const struct node *n)
{
	struct jv r = { .t = J_UNDEF };
	int line0 = R->line;
	step(R);
	if (++R->depth > R->tpl->lim.max_depth)
		rfail(R, "template nests deeper than %d", R->tpl->lim.max_depth);
	if (n->line)
		R->line = n->line;
	switch (n->k) {
	case E_LIT:
		switch (n->op) {
		case L_NONE: r = NONE; break;
		case L_TRUE: r = mkbool(1); break;
		case L_FALSE: r = mkbool(0); break;
		case L_INT: r = mkint(n->i); break;
		case L_FLOAT: r = mkfloat(n->f); break;
		default: r.t = J_STR; r.u.s.s = n->s; r.u.s.n = n->n; break;
		}
		break;
	case E_NAME: r = eval_name(R, n); break;
	case E_ATTR: { struct jv o = eval(R, n->x); r = getattr_(R, &o, n->s); break; }
	case E_ITEM: { struct jv o = eval(R, n->x), k = eval(R, n->y); r = getitem(R, &o, &k); break; }
	case E_SLICE: {
		struct jv o = eval(R, n->x), a = n->y ? eval(R, n->y) : NONE, b = n->z ? eval(R, n->z) : NONE,
			  c = n->w ? eval(R, n->w) : NONE;
		r = do_slice(R, &o, &a, &b, &c);
		break;
	}
	case E_CALL: {
		struct jv f = eval(R, n->x);
		struct args a;
		eval_args(R, n, 0, &a);
		R->line = n->line;
		r = call_value(R, &f, &a);
		break;
	}
	case E_FILTER: {
		struct jv v = eval(R, n->x);
		struct args a;
		eval_args(R, n, 0, &a);
		R->line = n->line;
		r = apply_filter(R, n->s, &v, &a);
		break;
	}
	case E_TEST: {
		struct jv v = eval(R, n->x);
		struct args a;
		eval_args(R, n, 0, &a);
		R->line = n->line;
		r = mkbool(run_test(R, n->s, &v, &a) != n->op);
		break;
	}
	case E_BIN: { struct jv a = eval(R, n->x), b = eval(R, n->y); R->line = n->line; r = arith(R, n->op, &a, &b); break; }
	case E_NEG: case E_POS: {
		struct jv a = eval(R, n->x);
		if (!is_num(&a))
			rfail(R, "bad operand type for unary %c: '%s'", n->k == E_NEG ? '-' : '+', type_name(&a));
		if (n->k == E_POS) r = a.t == J_BOOL ? mkint(a.u.b) : a;
		else if (a.t == J_FLOAT) r = mkfloat(-a.u.f);
		else { if (inum(&a) == INT64_MIN) rfail(R, "integer overflow"); r = mkint(-inum(&a)); }
		break;
	}
	case E_NOT: { struct jv a = eval(R, n->x); r = mkbool(!truthy(&a)); break; }
	case E_AND: { r = eval(R, n->x); if (truthy(&r)) r = eval(R, n->y); break; }
	case E_OR: { r = eval(R, n->x); if (!truthy(&r)) r = eval(R, n->y); break; }
	case E_COND: {
		struct jv c = eval(R, n->x);
		if (truthy(&c)) r = eval(R, n->y);
		else if (n->z) r = eval(R, n->z);
		else { r = UNDEF; r.name = "the else branch"; }
		break;
	}
	case E_LIST: case E_TUPLE:
		r = mklist(R, n->na);
		r.tuple = n->k == E_TUPLE;
		for (size_t i = 0; i < n->na; i++)
			list_push(R, r.u.l, eval(R, n->a[i]));
		break;
	case E_DICT:
		r = mkdict(R);
		for (size_t i = 0; i + 1 < n->na; i += 2) {
			struct jv k = eval(R, n->a[i]), v = eval(R, n->a[i + 1]);
			dict_set(R, r.u.d, k, v);
		}
		break;
	case E_CMP: {
		struct jv l = eval(R, n->a[0]);
		r = mkbool(1);
		for (size_t i = 1; i + 1 < n->na; i += 2) {
			int op = n->a[i]->op, ok;
			struct jv rr = eval(R, n->a[i + 1]);
			R->line = n->line;
			switch (op) {
			case C_EQ: ok = v_eq(&l, &rr); break;
			case C_NE: ok = !v_eq(&l, &rr); break;
			case C_IN: ok = contains(R, &l, &rr); break;
			case C_NOTIN: ok = !contains(R, &l, &rr); break;
			default: {
				int c;
				if (l.t == J_UNDEF || rr.t == J_UNDEF)
					rfail(R, "'%s' is undefined (in a comparison)",
					      l.t == J_UNDEF ? (l.name ? l.name : "value") : (rr.name ? rr.name : "value"));
				c = v_cmp(R, &l, &rr);
				ok = op == C_LT ? c < 0 : op == C_GT ? c > 0 : op == C_LE ? c <= 0 : c >= 0;
			}
			}
			if (!ok) { r = mkbool(0); break; }
			l = rr;
		}
		break;
	}
	default:
		rfail(R, "bad expression");
	}
	R->depth--;
	R->line = line0;
	return r;
}

/* ---------------------------------------------------------------- statements */

static void set_var(struct rs *R, const char *name, struct jv v)
{
	dict_set(R, &R->cur->vars, cstr(R, name), v);
}

static struct jv eval_name(struct rs *R, const struct node *n)
{
	return lookup(R, R->cur, n->s);
}

static void assign(struct rs *R, const struct node *tg, const struct jv *v)
{
	if (tg->k == E_NAME) {
		set_var(R, tg->s, *v);
	} else if (tg->k == E_ATTR) {
		struct jv o = lookup(R, R->cur, tg->x->s);
		if (o.t != J_NS)
			rfail(R, "cannot assign attribute on non-namespace object '%s'", tg->x->s);
		if (tg->s[0] == '_')
			rfail(R, "chat templates cannot store underscore-prefixed attributes on a namespace, but got '%s'", tg->s);
		dict_set(R, o.u.d, cstr(R, tg->s), *v);
	} else {
		struct jv l = iter_list(R, v);
		if (l.u.l->n != tg->na)
			rfail(R, "%s values to unpack (expected %zu, got %zu)", l.u.l->n > tg->na ? "too many" : "not enough",
			      tg->na, l.u.l->n);
		for (size_t i = 0; i < tg->na; i++)
			set_var(R, tg->a[i]->s, l.u.l->v[i]);
	}
}

static void render_into(struct rs *R, const struct node *body, struct lora_buf *b)
{
	struct lora_buf *saved = R->out;
	R->out = b;
	exec_body(R, body);
	R->out = saved;
}

static struct jv call_macro(struct rs *R, const struct jv *m, const struct args *a)
{
	const struct node *mn = m->u.m;
	struct frame f = { { 0 }, R->root }, *saved = R->cur;
	struct lora_buf *b = tnew(R);
	struct jv r;
	int saved_brk = R->brk;

	if (a->npos > mn->na)
		rfail(R, "macro '%s' takes not more than %zu argument(s)", mn->s, mn->na);
	if (++R->depth > R->tpl->lim.max_depth)
		rfail(R, "macro calls nest deeper than %d", R->tpl->lim.max_depth);
	/* defaults are evaluated in the macro's own frame, after earlier parameters */
	R->cur = &f;
	for (size_t i = 0; i < mn->na; i++) {
		const struct node *p = mn->a[i];
		const struct jv *v = i < a->npos ? &a->pos[i] : NULL;
		struct jv x;
		for (size_t k = 0; !v && k < a->nkw; k++)
			if (!strcmp(a->kwn[k], p->s))
				v = &a->kwv[k];
		if (v) x = *v;
		else if (p->x) x = eval(R, p->x);
		else { x = UNDEF; x.name = p->s; }
		set_var(R, p->s, x);
	}
	for (size_t k = 0; k < a->nkw; k++) {
		int found = 0;
		for (size_t i = 0; i < mn->na; i++)
			found |= !strcmp(a->kwn[k], mn->a[i]->s);
		if (!found)
			rfail(R, "macro '%s' takes no keyword argument '%s'", mn->s, a->kwn[k]);
	}
	R->brk = 0;
	{
		struct lora_buf *saved_out = R->out;
		R->out = b;
		/* b is owned here; on an error longjmp it leaks unless freed: track it in the arena instead */
		exec_body(R, mn->y);
		R->out = saved_out;
	}
	R->brk = saved_brk;
	R->cur = saved;
	R->depth--;
	r = mkstr(R, b->data ? b->data : "", b->len);
	tpop(R, b);
	return r;
}

static void exec_for(struct rs *R, const struct node *n)
{
	struct jv it = eval(R, n->y), l = iter_list(R, &it), items;
	struct frame f = { { 0 }, R->cur }, *saved = R->cur;
	struct loopst st;
	struct jv lv = { .t = J_LOOP };

	if (++R->depth > R->tpl->lim.max_depth)
		rfail(R, "loops nest deeper than %d", R->tpl->lim.max_depth);
	/* the `if` filter first, so loop.length counts what is left */
	if (n->w) {
		items = mklist(R, 0);
		R->cur = &f;
		for (size_t i = 0; i < l.u.l->n; i++) {
			struct jv c;
			f.vars.n = 0;
			assign(R, n->x, &l.u.l->v[i]);
			c = eval(R, n->w);
			if (truthy(&c))
				list_push(R, items.u.l, l.u.l->v[i]);
		}
		R->cur = saved;
	} else {
		items = l;
	}
	st.n = items.u.l->n;
	st.items = items.u.l->v;
	lv.u.lp = &st;
	if (!st.n) {
		if (n->z)
			exec_body(R, n->z);
		R->depth--;
		return;
	}
	R->cur = &f;
	for (st.i = 0; st.i < st.n; st.i++) {
		step(R);
		f.vars.n = 0;   /* each iteration starts afresh, as jinja2's loop scope does */
		set_var(R, "loop", lv);
		assign(R, n->x, &st.items[st.i]);
		exec_body(R, n->a[0]);
		if (R->brk == 1) {
			R->brk = 0;
			break;
		}
		R->brk = 0;
	}
	R->cur = saved;
	R->depth--;
}

static void exec_body(struct rs *R, const struct node *b)
{
	for (size_t i = 0; i < b->na && !R->brk; i++) {
		const struct node *n = b->a[i];
		step(R);
		R->line = n->line;
		switch (n->k) {
		case N_TEXT: put(R, R->out, n->s, n->n); break;
		case N_OUT: {
			struct jv v = eval(R, n->x);
			struct jv s = to_str(R, &v);
			put(R, R->out, s.u.s.s, s.u.s.n);
			break;
		}
		case N_IF: {
			const struct node *c = n;
			while (c && c->k == N_IF) {
				struct jv t = eval(R, c->x);
				if (truthy(&t)) {
					exec_body(R, c->y);
					break;
				}
				c = c->z;
			}
			if (c && c->k == N_BODY)
				exec_body(R, c);
			break;
		}
		case N_FOR: exec_for(R, n); break;
		case N_SET: { struct jv v = eval(R, n->y); assign(R, n->x, &v); break; }
		case N_SETBLOCK: {
			struct lora_buf *bb = tnew(R);
			struct jv s;
			render_into(R, n->y, bb);
			s = mkstr(R, bb->data ? bb->data : "", bb->len);
			tpop(R, bb);
			set_var(R, n->x->s, s);
			break;
		}
		case N_MACRO: { struct jv m = { .t = J_MACRO }; m.u.m = n; set_var(R, n->s, m); break; }
		case N_BREAK: R->brk = 1; break;
		case N_CONTINUE: R->brk = 2; break;
		case N_GEN: {
			size_t a = R->out->len;
			exec_body(R, n->y);
			if (R->out == R->top && R->want_gen) {
				if (R->ngen + 2 > R->cgen) {
					size_t c = R->cgen ? R->cgen * 2 : 16;
					size_t *g = realloc(R->gen, c * sizeof(*g));
					if (!g)
						rfail(R, "out of memory");
					R->gen = g;
					R->cgen = c;
				}
				R->gen[R->ngen++] = a - R->top0;
				R->gen[R->ngen++] = R->out->len - R->top0;
			}
			break;
		}
		default: rfail(R, "bad statement");
		}
	}
}

/* ================================================================ api */

static void free_tokens(struct token *t, size_t n, int keep_text)
{
	for (size_t i = 0; i < n; i++)
		if (!(keep_text && t[i].k == TK_TEXT))
			free(t[i].s);
	free(t);
}

struct lora_jinja_priv {
	struct lora_jinja pub;
	struct node **all;
	size_t nall;
	char **texts;      /* TEXT token strings the tree points at */
	size_t ntexts;
};

int lora_jinja_parse(const char *src, size_t n, const struct lora_jinja_limits *lim, struct lora_jinja **out,
		     struct lora_err *err)
{
	struct lexer L = { 0 };
	struct parser P = { 0 };
	struct lora_jinja_priv *t;
	char *norm;
	size_t m = 0;

	*out = NULL;
	/* newlines normalised to \n; one trailing newline dropped (keep_trailing_newline=False) */
	if (!(norm = malloc(n + 1)))
		return lora_errf(err, "out of memory");
	for (size_t i = 0; i < n; i++) {
		if (src[i] == '\r') {
			norm[m++] = '\n';
			if (i + 1 < n && src[i + 1] == '\n')
				i++;
		} else {
			norm[m++] = src[i];
		}
	}
	if (m && norm[m - 1] == '\n')
		m--;
	norm[m] = 0;
	L.src = norm;
	L.n = m;
	L.line = 1;
	if (lex(&L) < 0 || !lex_push(&L, TK_EOF)) {
		free(norm);
		free_tokens(L.t, L.nt, 0);
		return L.oom ? lora_errf(err, "out of memory") : lora_errf(err, "%s", L.msg);
	}
	free(norm);
	if (!(t = calloc(1, sizeof(*t)))) {
		free_tokens(L.t, L.nt, 0);
		return lora_errf(err, "out of memory");
	}
	t->pub.lim.max_depth = lim && lim->max_depth ? lim->max_depth : 256;
	t->pub.lim.max_steps = lim && lim->max_steps ? lim->max_steps : 20000000;
	t->pub.lim.max_output = lim && lim->max_output ? lim->max_output : (size_t)64 << 20;
	t->pub.lim.max_memory = lim && lim->max_memory ? lim->max_memory : (size_t)256 << 20;
	P.t = L.t;
	P.nt = L.nt;
	P.max_depth = t->pub.lim.max_depth;
	if (setjmp(P.jb)) {
		for (size_t i = 0; i < P.nall; i++) {
			struct node *x = P.all[i];
			if (x->k != N_TEXT)
				free(x->s);
			for (size_t k = 0; k < x->nkw; k++)
				free(x->kw[k]);
			free(x->kw);
			free(x->a);
			free(x);
		}
		free(P.all);
		free_tokens(L.t, L.nt, 0);
		free(t);
		return lora_errf(err, "%s", P.msg);
	}
	t->pub.root = p_body(&P, NULL);
	t->pub.has_generation = P.has_generation;
	t->all = P.all;
	t->nall = P.nall;
	/* keep the TEXT strings (the tree points at them), free the rest */
	for (size_t i = 0; i < L.nt; i++)
		if (L.t[i].k == TK_TEXT)
			t->ntexts++;
	t->texts = malloc((t->ntexts + 1) * sizeof(char *));
	if (!t->texts) {
		t->ntexts = 0;
		free_tokens(L.t, L.nt, 0);
		/* the tree's N_TEXT pointers are now dangling: drop them */
		for (size_t i = 0; i < t->nall; i++)
			if (t->all[i]->k == N_TEXT)
				t->all[i]->s = NULL;
		lora_jinja_free(&t->pub);
		return lora_errf(err, "out of memory");
	}
	t->ntexts = 0;
	for (size_t i = 0; i < L.nt; i++)
		if (L.t[i].k == TK_TEXT)
			t->texts[t->ntexts++] = L.t[i].s;
	free_tokens(L.t, L.nt, 1);
	*out = &t->pub;
	return 0;
}

void lora_jinja_free(struct lora_jinja *pub)
{
	struct lora_jinja_priv *t = (struct lora_jinja_priv *)pub;
	if (!t)
		return;
	for (size_t i = 0; i < t->nall; i++) {
		struct node *x = t->all[i];
		if (x->k != N_TEXT)
			free(x->s);
		for (size_t k = 0; k < x->nkw; k++)
			free(x->kw[k]);
		free(x->kw);
		free(x->a);
		free(x);
	}
	for (size_t i = 0; i < t->ntexts; i++)
		free(t->texts[i]);
	free(t->texts);
	free(t->all);
	free(t);
}

int lora_jinja_has_generation(const struct lora_jinja *t) { return t && t->has_generation; }

static void global_fn(struct rs *R, const char *name, int fn)
{
	struct jv f = { .t = J_FUNC };
	f.fn = fn;
	set_var(R, name, f);
}

int lora_jinja_render(const struct lora_jinja *t, const cJSON *vars, const struct tm *now, struct lora_buf *out,
		      size_t **gen, size_t *n_gen, struct lora_err *err)
{
	struct rs *R = calloc(1, sizeof(*R));
	struct frame root = { { 0 }, NULL };
	size_t len0 = out->len;
	volatile int rc = 0;

	if (gen) {
		*gen = NULL;
		*n_gen = 0;
	}
	if (!R)
		return lora_errf(err, "out of memory");
	R->tpl = t;
	R->out = R->top = out;
	R->top0 = out->len;
	R->now = now;
	R->root = &root;
	R->gen = NULL;
	R->want_gen = gen != NULL;
	if (setjmp(R->jb)) {
		rc = lora_errf(err, "%s", R->msg);
		out->len = len0;
		if (out->data)
			out->data[len0] = 0;
		free(R->gen);
		R->gen = NULL;
		R->ngen = 0;
	} else {
		const cJSON *c;
		R->cur = &root;
		global_fn(R, "range", F_RANGE);
		global_fn(R, "namespace", F_NAMESPACE);
		global_fn(R, "dict", F_DICT);
		global_fn(R, "raise_exception", F_RAISE);
		if (now)   /* else undefined: `strftime_now is defined` is false and templates take their fallback */
			global_fn(R, "strftime_now", F_STRFTIME);
		if (vars)
			cJSON_ArrayForEach(c, vars) if (c->string) set_var(R, c->string, from_json(R, c, 0));
		exec_body(R, t->root);
		put(R, out, "", 0);
		lora_buf_add(out, "", 0);
		if (out->oom)
			rc = lora_errf(err, "out of memory");
	}
	for (size_t i = 0; i < R->ntmp; i++)
		lora_buf_free(R->tmp[i]);
	free(R->tmp);
	while (R->blk) {
		struct arena_blk *b = R->blk->next;
		free(R->blk);
		R->blk = b;
	}
	if (gen && rc == 0) {
		*gen = R->gen;
		*n_gen = R->ngen / 2;
	} else {
		free(R->gen);
	}
	free(R);
	return rc;
}
