/*
 * tokenizer_unicode.c - Unicode normalization forms and lowercase for the
 * tokenizer's normalizers (NFC, NFD, NFKC, NFKD, Lowercase).
 *
 * The tables (train/tokenizer_unicode_data.h) come from Python's unicodedata
 * by tests/oracle/tok_gen_unicode.py; Hangul syllables are decomposed and
 * composed arithmetically.  The algorithm is Unicode's: full decomposition
 * (canonical, or compatibility for the K forms), canonical ordering of each
 * run of non-starters, then for NFC/NFKC canonical composition.  Lowercase is
 * Rust's char::to_lowercase applied char by char, as `tokenizers` does (so no
 * final-sigma rule).
 */
#include <stdlib.h>
#include <string.h>

#include "train/tokenizer_int.h"
#include "train/tokenizer_unicode_data.h"

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))
enum { H_SBASE = 0xAC00, H_LBASE = 0x1100, H_VBASE = 0x1161, H_TBASE = 0x11A7, H_LCOUNT = 19,
       H_VCOUNT = 21, H_TCOUNT = 28, H_NCOUNT = H_VCOUNT * H_TCOUNT, H_SCOUNT = H_LCOUNT * H_NCOUNT };

static int uni_class(uint32_t cp)
{
	size_t lo = 0, hi = N_ELEMS(uni_ccc);
	if (cp < 0x300)
		return 0;
	while (lo < hi) {
		size_t m = (lo + hi) / 2;
		if (cp < uni_ccc[m][0])
			hi = m;
		else if (cp > uni_ccc[m][1])
			lo = m + 1;
		else
			return (int)uni_ccc[m][2];
	}
	return 0;
}

/* Binary search of a (code point, offset, length) table. */
static const uint32_t *uni_find(const uint32_t (*tab)[3], size_t n, uint32_t cp)
{
	size_t lo = 0, hi = n;
	while (lo < hi) {
		size_t m = (lo + hi) / 2;
		if (cp < tab[m][0])
			hi = m;
		else if (cp > tab[m][0])
			lo = m + 1;
		else
			return tab[m];
	}
	return NULL;
}

static uint32_t uni_compose(uint32_t a, uint32_t b)
{
	size_t lo = 0, hi = N_ELEMS(uni_comp);
	if (a - H_LBASE < H_LCOUNT && b - H_VBASE < H_VCOUNT)
		return H_SBASE + ((a - H_LBASE) * H_VCOUNT + (b - H_VBASE)) * H_TCOUNT;
	if (a - H_SBASE < H_SCOUNT && (a - H_SBASE) % H_TCOUNT == 0 && b - H_TBASE - 1 < H_TCOUNT - 1)
		return a + (b - H_TBASE);
	while (lo < hi) {
		size_t m = (lo + hi) / 2;
		if (a < uni_comp[m][0] || (a == uni_comp[m][0] && b < uni_comp[m][1]))
			hi = m;
		else if (a > uni_comp[m][0] || b > uni_comp[m][1])
			lo = m + 1;
		else
			return uni_comp[m][2];
	}
	return 0;
}

/* code points with their input offsets */
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

static int decompose(struct cpv *v, uint32_t cp, int64_t al, int compat)
{
	const uint32_t *d = NULL;
	if (cp - H_SBASE < H_SCOUNT) {
		uint32_t s = cp - H_SBASE, t = s % H_TCOUNT;
		if (cpv_push(v, H_LBASE + s / H_NCOUNT, al) < 0 || cpv_push(v, H_VBASE + (s % H_NCOUNT) / H_TCOUNT, al) < 0)
			return -1;
		return t ? cpv_push(v, H_TBASE + t, al) : 0;
	}
	if (compat)
		d = uni_find(uni_nfkd, N_ELEMS(uni_nfkd), cp);
	if (!d)
		d = uni_find(uni_nfd, N_ELEMS(uni_nfd), cp);
	if (!d)
		return cpv_push(v, cp, al);
	for (uint32_t k = 0; k < d[2]; k++)
		if (cpv_push(v, uni_pool[d[1] + k], al) < 0)
			return -1;
	return 0;
}

/* canonical ordering: stable insertion sort of each run of non-starters */
static void reorder(struct cpv *v)
{
	for (size_t i = 1; i < v->n; i++) {
		int c = uni_class(v->cp[i]);
		size_t k = i;
		uint32_t cp = v->cp[i];
		int64_t a = v->al[i];
		if (!c)
			continue;
		while (k > 0 && uni_class(v->cp[k - 1]) > c) {
			v->cp[k] = v->cp[k - 1];
			v->al[k] = v->al[k - 1];
			k--;
		}
		v->cp[k] = cp;
		v->al[k] = a;
	}
}

/* canonical composition: a char joins the last starter unless blocked */
static void compose(struct cpv *v)
{
	size_t starter = 0, w = 1;
	int last_class;

	if (!v->n)
		return;
	last_class = uni_class(v->cp[0]) ? 256 : 0;
	if (last_class)
		starter = (size_t)-1;
	for (size_t i = 1; i < v->n; i++) {
		uint32_t cp = v->cp[i], c2;
		int c = uni_class(cp);
		if (starter != (size_t)-1 && (last_class < c || last_class == 0) &&
		    (c2 = uni_compose(v->cp[starter], cp)) != 0 && !(last_class == 0 && w - 1 != starter)) {
			v->cp[starter] = c2;
			continue;
		}
		if (c == 0) {
			starter = w;
			last_class = 0;
		} else {
			last_class = c;
		}
		v->cp[w] = cp;
		v->al[w++] = v->al[i];
	}
	v->n = w;
}

static int emit(const struct cpv *v, struct nstr *o)
{
	for (size_t i = 0; i < v->n; i++) {
		char b[4];
		size_t n = utf8_enc(v->cp[i], b);
		if (nstr_add(o, b, n, v->al[i]) < 0)
			return -1;
	}
	return nstr_reserve(o, 0);
}

int tok_uni_normalize(enum tok_uni_form form, const struct nstr *in, struct nstr *out)
{
	struct cpv v = { 0 };
	struct nstr o = { 0 };
	/* text below U+0300 is already NFC; ASCII is already in every form */
	unsigned char lim = form == UNI_NFC ? 0xCC : 0x80;
	int compat = form == UNI_NFKC || form == UNI_NFKD, rc = -1;
	size_t i;

	for (i = 0; i < in->len && (unsigned char)in->s[i] < lim; i++)
		;
	if (i == in->len) {
		if (nstr_addal(&o, in->s, in->al, in->len) < 0 || nstr_reserve(&o, 0) < 0)
			goto done;
		rc = 0;
		goto done;
	}
	for (i = 0; i < in->len;) {
		uint32_t cp;
		int64_t a = in->al[i];
		i += utf8_dec(in->s + i, &cp);
		if (decompose(&v, cp, a, compat) < 0)
			goto done;
	}
	reorder(&v);
	if (form == UNI_NFC || form == UNI_NFKC)
		compose(&v);
	rc = emit(&v, &o);
done:
	free(v.cp);
	free(v.al);
	if (rc < 0) {
		nstr_free(&o);
		return -1;
	}
	nstr_free(out);
	*out = o;
	return 0;
}

int tok_uni_lowercase(const struct nstr *in, struct nstr *out)
{
	struct nstr o = { 0 };

	if (nstr_reserve(&o, in->len) < 0)
		return -1;
	for (size_t i = 0; i < in->len;) {
		uint32_t cp;
		int64_t a = in->al[i];
		size_t l = utf8_dec(in->s + i, &cp);
		const uint32_t *m = cp < 0x80 ? NULL : uni_find(uni_lower, N_ELEMS(uni_lower), cp);
		if (cp >= 'A' && cp <= 'Z') {
			char c = (char)(cp + 32);
			if (nstr_add(&o, &c, 1, a) < 0)
				goto oom;
		} else if (m) {
			for (uint32_t k = 0; k < m[2]; k++) {
				char b[4];
				if (nstr_add(&o, b, utf8_enc(uni_pool[m[1] + k], b), a) < 0)
					goto oom;
			}
		} else if (nstr_addal(&o, in->s + i, in->al + i, l) < 0) {
			goto oom;
		}
		i += l;
	}
	nstr_free(out);
	*out = o;
	return 0;
oom:
	nstr_free(&o);
	return -1;
}
