/*
 * chat.c - chat rendering with loss spans: the model's Jinja template, or the
 * built-in ChatML and Llama-3 (see chat.h).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "libadapter/base/fsutil.h"
#include "train/chat.h"
#include "train/jinja.h"

void lora_chat_free(struct lora_chat *c)
{
	free(c->default_system);
	free(c->bos);
	free(c->eos);
	lora_jinja_free(c->jinja);
	memset(c, 0, sizeof(*c));
}

const char *lora_chat_name(const struct lora_chat *c)
{
	return c->fmt == LORA_CHAT_CHATML ? "chatml" : c->fmt == LORA_CHAT_LLAMA3 ? "llama3"
	       : c->fmt == LORA_CHAT_JINJA ? c->family : "none";
}

static int set_bos(struct lora_chat *c, const char *bos, struct lora_err *err)
{
	c->bos = strdup(bos ? bos : "");
	return c->bos ? 0 : lora_errf(err, "out of memory");
}

int lora_chat_by_name(const char *name, const char *bos, struct lora_chat *out, struct lora_err *err)
{
	memset(out, 0, sizeof(*out));
	if (!strcmp(name, "chatml"))
		out->fmt = LORA_CHAT_CHATML;
	else if (!strcmp(name, "llama3") || !strcmp(name, "llama-3"))
		out->fmt = LORA_CHAT_LLAMA3;
	else
		return lora_errc(err, LORA_EUSAGE, "unknown chat template '%s' (chatml or llama3)", name);
	return set_bos(out, bos, err);
}

/* the end-of-turn markers of common families, most specific first */
static const struct { const char *marker, *family; } families[] = {
	{ "<|im_end|>", "chatml" }, { "<|eot_id|>", "llama3" }, { "<end_of_turn>", "gemma" },
	{ "<|end|>", "phi3" }, { "[/INST]", "mistral" }, { "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>", "deepseek" },
	{ "<|END_OF_TURN_TOKEN|>", "command-r" },
};

int lora_chat_jinja(const char *tpl, const char *bos, const char *eos, struct lora_chat *out, struct lora_err *err)
{
	memset(out, 0, sizeof(*out));
	if (!tpl || !*tpl)
		return lora_errf(err, "the model has no chat_template; name one (chatml, llama3 or a template file)");
	if (lora_jinja_parse(tpl, strlen(tpl), NULL, &out->jinja, err) < 0) {
		char m[sizeof(err->msg)];
		snprintf(m, sizeof(m), "%s", err ? err->msg : "");
		return lora_errf(err, "chat template: %s", m);
	}
	out->fmt = LORA_CHAT_JINJA;
	out->family = "jinja";
	for (size_t i = 0; i < sizeof(families) / sizeof(families[0]); i++)
		if (strstr(tpl, families[i].marker)) {
			out->family = families[i].family;
			/* Mistral's turns end with eos_token */
			out->end_marker = strcmp(families[i].family, "mistral") ? families[i].marker : NULL;
			break;
		}
	out->bos = strdup(bos ? bos : "");
	out->eos = strdup(eos ? eos : "");
	if (!out->bos || !out->eos) {
		lora_chat_free(out);
		return lora_errf(err, "out of memory");
	}
	return 0;
}

int lora_chat_detect(const char *tpl, const char *bos, struct lora_chat *out, struct lora_err *err)
{
	return lora_chat_jinja(tpl, bos, NULL, out, err);
}

int lora_chat_open(const char *spec, const char *bos, const char *eos, struct lora_chat *out, struct lora_err *err)
{
	char *src = NULL;
	size_t n;
	size_t sl = strlen(spec);
	int rc;

	if (!strcmp(spec, "chatml") || !strcmp(spec, "llama3") || !strcmp(spec, "llama-3"))
		return lora_chat_by_name(spec, bos, out, err);
	memset(out, 0, sizeof(*out));
	if (!lora_is_file(spec))
		return lora_errc(err, LORA_EUSAGE, "--chat-template '%s' is neither chatml, llama3 nor a template file",
				 spec);
	if (lora_read_file(spec, (size_t)16 << 20, &src, &n, err) < 0)
		return -1;
	if (memchr(src, 0, n)) {
		free(src);
		return lora_errf(err, "chat template '%s' holds a NUL byte", spec);
	}
	if (sl > 5 && !strcmp(spec + sl - 5, ".json")) {
		cJSON *j = cJSON_ParseWithLength(src, n);
		const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "chat_template");
		free(src);
		src = cJSON_IsString(t) ? strdup(t->valuestring) : NULL;
		cJSON_Delete(j);
		if (!src)
			return lora_errf(err, "'%s' has no \"chat_template\" string", spec);
	}
	rc = lora_chat_jinja(src, bos, eos, out, err);
	free(src);
	if (rc < 0 && err) {
		char m[sizeof(err->msg)];
		snprintf(m, sizeof(m), "%s", err->msg);
		return lora_errf(err, "%s: %s", spec, m);
	}
	return rc;
}

/* Python's str.isspace for one char at s; returns its byte length or 0. */
static size_t py_space(const unsigned char *s, size_t n)
{
	if (n >= 1 && ((s[0] >= 9 && s[0] <= 13) || (s[0] >= 0x1c && s[0] <= 0x20)))
		return 1;
	if (n >= 2 && s[0] == 0xC2 && (s[1] == 0x85 || s[1] == 0xA0))
		return 2;
	if (n >= 3 && s[0] == 0xE1 && s[1] == 0x9A && s[2] == 0x80)
		return 3;   /* U+1680 */
	if (n >= 3 && s[0] == 0xE2 && s[1] == 0x80 && (s[2] <= 0x8A || s[2] == 0xA8 || s[2] == 0xA9 || s[2] == 0xAF))
		return 3;   /* U+2000..200A, 2028, 2029, 202F */
	if (n >= 3 && s[0] == 0xE2 && s[1] == 0x81 && s[2] == 0x9F)
		return 3;   /* U+205F */
	if (n >= 3 && s[0] == 0xE3 && s[1] == 0x80 && s[2] == 0x80)
		return 3;   /* U+3000 */
	return 0;
}

/* Jinja's |trim (Python str.strip()): the [a, b) range of s without outer whitespace. */
static void trim(const char *s, size_t *a, size_t *b)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t n = strlen(s), i = 0, k;

	while (i < n && (k = py_space(u + i, n - i)))
		i += k;
	*a = i;
	*b = n;
	/* scan forward remembering the end of the last non-space char */
	for (size_t j = i, last = i; j <= n; ) {
		if (j == n) {
			*b = last;
			break;
		}
		k = py_space(u + j, n - j);
		if (k) {
			j += k;
		} else {
			j += (u[j] < 0x80) ? 1 : (u[j] < 0xE0) ? 2 : (u[j] < 0xF0) ? 3 : 4;
			if (j > n)
				j = n;
			last = j;
		}
	}
}

static int span_add(struct lora_span **v, size_t *n, size_t a, size_t b)
{
	struct lora_span *p = realloc(*v, (*n + 1) * sizeof(*p));
	if (!p)
		return -1;
	p[*n] = (struct lora_span){ a, b };
	*v = p;
	(*n)++;
	return 0;
}

static int role_ok(const char *r)
{
	return r && (!strcmp(r, "system") || !strcmp(r, "user") || !strcmp(r, "assistant") || !strcmp(r, "tool"));
}

static int add_copy(cJSON *o, const char *k, const cJSON *v)
{
	cJSON *d = cJSON_Duplicate(v, 1);

	if (d && cJSON_AddItemToObject(o, k, d))
		return 1;
	cJSON_Delete(d);
	return 0;
}

/*
 * A message as apply_chat_template gives it to the template: keys whose value
 * is null dropped, and the reasoning (reasoning_content, else thinking, else
 * reasoning) under both "thinking" (first, unless the message has one) and
 * "reasoning_content", as transformers aliases them.
 */
static cJSON *message_var(const cJSON *msg)
{
	static const char *const rf[] = { "reasoning_content", "thinking", "reasoning" };
	const cJSON *reason = NULL, *k;
	cJSON *e = cJSON_CreateObject();
	int ok = e != NULL;

	for (int j = 0; j < 3 && !reason; j++) {
		const cJSON *r = cJSON_GetObjectItemCaseSensitive(msg, rf[j]);

		if (r && !cJSON_IsNull(r))
			reason = r;
	}
	if (reason) {
		const cJSON *t = cJSON_GetObjectItemCaseSensitive(msg, "thinking");

		ok = ok && add_copy(e, "thinking", t && !cJSON_IsNull(t) ? t : reason);
	}
	cJSON_ArrayForEach(k, msg) {
		if (!ok)
			break;
		if (!k->string || cJSON_IsNull(k) || (reason && !strcmp(k->string, "thinking")))
			continue;
		ok = add_copy(e, k->string, reason && !strcmp(k->string, "reasoning_content") ? reason : k);
	}
	if (ok && reason && !cJSON_GetObjectItemCaseSensitive(e, "reasoning_content"))
		ok = add_copy(e, "reasoning_content", reason);
	if (!ok) {
		cJSON_Delete(e);
		return NULL;
	}
	return e;
}

/* The template's variables for messages m[0, n), as apply_chat_template passes them. */
static cJSON *jinja_vars(const struct lora_chat *c, const struct lora_chat_msg *m, size_t n, const cJSON *tools,
			 int agp)
{
	cJSON *v = cJSON_CreateObject(), *msgs = cJSON_AddArrayToObject(v, "messages");
	int ok = v && msgs;
	for (size_t i = 0; ok && i < n; i++) {
		cJSON *e = m[i].json ? message_var(m[i].json) : cJSON_CreateObject();
		if (e && !m[i].json && (!cJSON_AddStringToObject(e, "role", m[i].role ? m[i].role : "") ||
					!cJSON_AddStringToObject(e, "content", m[i].content ? m[i].content : "")))
			ok = 0;
		ok = ok && e && cJSON_AddItemToArray(msgs, e);
	}
	if (ok && tools) {
		cJSON *t = cJSON_Duplicate(tools, 1);

		ok = t && cJSON_AddItemToObject(v, "tools", t);
		if (!ok)
			cJSON_Delete(t);
	} else {
		ok = ok && cJSON_AddNullToObject(v, "tools");
	}
	ok = ok && cJSON_AddNullToObject(v, "documents") &&
	     cJSON_AddBoolToObject(v, "add_generation_prompt", agp) &&
	     cJSON_AddStringToObject(v, "bos_token", c->bos ? c->bos : "") &&
	     cJSON_AddStringToObject(v, "eos_token", c->eos ? c->eos : "");
	if (!ok) {
		cJSON_Delete(v);
		return NULL;
	}
	return v;
}

/* render m[0, n) into a fresh buffer (spans of {% generation %} when gen != NULL) */
static int jinja_one(const struct lora_chat *c, const struct lora_chat_msg *m, size_t n, const cJSON *tools,
		     int agp, struct lora_buf *out, size_t **gen, size_t *ngen, struct lora_err *err)
{
	cJSON *v = jinja_vars(c, m, n, tools, agp);
	int rc;
	if (!v)
		return lora_errf(err, "out of memory");
	rc = lora_jinja_render(c->jinja, v, /*now=*/NULL, out, gen, ngen, err);
	cJSON_Delete(v);
	return rc;
}

/* The first (or, with last, the last) occurrence of nd[0, nl) in h[from, to), or SIZE_MAX. */
static size_t find(const char *h, size_t from, size_t to, const char *nd, size_t nl, int last)
{
	size_t r = SIZE_MAX;

	for (size_t at = from; nl && at <= to && to - at >= nl; at++)
		if (!memcmp(h + at, nd, nl)) {
			r = at;
			if (!last)
				break;
		}
	return r;
}

/*
 * Where assistant turn i lies in the whole conversation's text T[0, tl), from
 * p = render(m[:i], generation prompt) and f = render(m[:i+1]), `prev` being
 * where the turn before it ended.  When p is a prefix of f and f of T, the
 * turn starts after the generation prompt.  Templates that render a turn
 * differently once later messages follow work while one of the two is still a
 * prefix of T: p, perhaps less trailing white space (Qwen3 drops the reasoning
 * of earlier turns; DeepSeek's prompt ends in a newline) - the turn starts
 * after it; f (Mistral moves the system prompt to the last user turn) - the
 * turn starts after the longest end of p (up to 256 bytes, at least 4) found
 * in f, or else where its answer last appears before f's end.  The turn ends
 * with the first end of turn after its answer (the family's marker, or
 * eos_token where turns end with it: Mistral), marker included, or else where
 * f ends.  The answer is the content as templates print it: after any
 * </think>, less surrounding white space.  0 when the turn cannot be found.
 */
static int find_turn(const struct lora_chat *c, const char *T, size_t tl, const struct lora_buf *p,
		     const struct lora_buf *f, const char *content, size_t prev, size_t *a, size_t *b)
{
	const char *mk = c->end_marker ? c->end_marker : c->eos && *c->eos ? c->eos : NULL;
	const char *ans = content ? content : "", *th;
	size_t al, q = SIZE_MAX, fe = 0, e, pl = p->len;
	int p_ok = pl <= tl && pl >= prev && (!pl || !memcmp(T, p->data, pl));
	int f_ok = f->len <= tl && (!f->len || !memcmp(T, f->data, f->len));

	/* a generation prompt may end in layout the turn does not start with (DeepSeek's "<｜Assistant｜>\n") */
	if (!p_ok) {
		while (pl && strchr(" \t\r\n", p->data[pl - 1]))
			pl--;
		p_ok = pl < p->len && pl <= tl && pl >= prev && (!pl || !memcmp(T, p->data, pl));
	}

	if ((th = strstr(ans, "</think>")))
		ans = th + strlen("</think>");
	while (*ans && strchr(" \t\r\n", *ans))
		ans++;
	al = strlen(ans);
	while (al && strchr(" \t\r\n", ans[al - 1]))
		al--;
	if (f_ok) {
		fe = f->len;
		while (fe > prev && fe > (p_ok ? pl : 0) && strchr(" \t\r\n", T[fe - 1]))
			fe--;
	}
	if (p_ok) {
		*a = pl;
		q = find(T, *a, f_ok ? fe : tl, ans, al, 0);
	} else if (f_ok && fe > prev) {
		/* the end of the prompt (the user's last words and the generation prompt) as the whole text has it */
		size_t k = p->len < 256 ? p->len : 256, at = SIZE_MAX;

		for (; k >= 4 && (at = find(T, prev, fe, p->data + p->len - k, k, 1)) == SIZE_MAX; k--)
			;
		if (at != SIZE_MAX && k >= 4)
			*a = at + k;
		else if ((q = find(T, prev, fe, ans, al, 1)) != SIZE_MAX)
			*a = q;
		else
			return 0;
		if (q == SIZE_MAX)
			q = find(T, *a, fe, ans, al, 0);
	} else {
		return 0;
	}
	if (mk) {
		e = find(T, q != SIZE_MAX ? q + al : *a, f_ok ? fe : tl, mk, strlen(mk), 0);
		if (e != SIZE_MAX) {
			*b = e + strlen(mk);
			return 1;
		}
	}
	*b = fe;
	return f_ok && fe >= *a;
}

static int render_jinja(const struct lora_chat *c, const struct lora_chat_msg *m, size_t n, const cJSON *tools,
			int agp, struct lora_buf *text, struct lora_span **loss, size_t *n_loss, struct lora_err *err)
{
	size_t t0 = text->len, *gen = NULL, ngen = 0;
	struct lora_span *sp = NULL;
	size_t nsp = 0;
	int has_gen = lora_jinja_has_generation(c->jinja);

	if (jinja_one(c, m, n, tools, agp, text, loss && has_gen ? &gen : NULL, &ngen, err) < 0)
		return -1;
	if (!loss)
		return 0;
	if (has_gen) {
		sp = malloc((ngen ? ngen : 1) * sizeof(*sp));
		if (!sp) {
			free(gen);
			return lora_errf(err, "out of memory");
		}
		for (size_t i = 0; i < ngen; i++)
			sp[nsp++] = (struct lora_span){ t0 + gen[2 * i], t0 + gen[2 * i + 1] };
		free(gen);
	} else {
		for (size_t i = 0; i < n; i++) {
			struct lora_buf p = LORA_BUF_INIT, f = LORA_BUF_INIT;
			size_t a, b;
			struct lora_span *g;
			if (!m[i].role || strcmp(m[i].role, "assistant"))
				continue;
			/* a conversation cannot start with an empty prompt for every template: then from 0 */
			if (i > 0 && jinja_one(c, m, i, tools, 1, &p, NULL, NULL, err) < 0)
				goto fail;
			if (jinja_one(c, m, i + 1, tools, 0, &f, NULL, NULL, err) < 0)
				goto fail;
			if (!find_turn(c, text->data + t0, text->len - t0, &p, &f, m[i].content,
				       nsp ? sp[nsp - 1].end - t0 : 0, &a, &b)) {
				lora_buf_free(&p);
				lora_buf_free(&f);
				free(sp);
				return lora_errf(err, "chat template renders message %zu differently once later messages "
						      "follow, so its loss span cannot be found by rendering the conversation "
						      "incrementally (a template with {%% generation %%} blocks can mark it)",
						 i + 1);
			}
			lora_buf_free(&p);
			lora_buf_free(&f);
			if (!(g = realloc(sp, (nsp + 1) * sizeof(*sp)))) {
				free(sp);
				return lora_errf(err, "out of memory");
			}
			sp = g;
			sp[nsp++] = (struct lora_span){ t0 + a, t0 + b };
			continue;
fail:
			lora_buf_free(&p);
			lora_buf_free(&f);
			free(sp);
			return -1;
		}
	}
	*loss = sp;
	*n_loss = nsp;
	return 0;
}

int lora_chat_render(const struct lora_chat *c, const struct lora_chat_msg *m, size_t n,
		     int add_generation_prompt, struct lora_buf *text, struct lora_span **loss,
		     size_t *n_loss, struct lora_err *err)
{
	return lora_chat_render_tools(c, m, n, NULL, add_generation_prompt, text, loss, n_loss, err);
}

int lora_chat_render_tools(const struct lora_chat *c, const struct lora_chat_msg *m, size_t n, const cJSON *tools,
			   int add_generation_prompt, struct lora_buf *text, struct lora_span **loss, size_t *n_loss,
			   struct lora_err *err)
{
	struct lora_span *sp = NULL;
	size_t nsp = 0;

	if (c->fmt == LORA_CHAT_JINJA)
		return render_jinja(c, m, n, tools, add_generation_prompt, text, loss, n_loss, err);
	if (tools && cJSON_GetArraySize(tools) > 0)
		return lora_errf(err, "the built-in %s template takes no tools (name a Jinja template that does)",
				 lora_chat_name(c));

	for (size_t i = 0; i < n; i++) {
		if (!role_ok(m[i].role))
			return lora_errf(err, "message %zu: role '%s' is not system, user, assistant or tool", i + 1,
					 m[i].role ? m[i].role : "(none)");
		if (!m[i].content)
			return lora_errf(err, "message %zu: no content", i + 1);
	}
	if (c->fmt == LORA_CHAT_CHATML) {
		if (c->default_system && (n == 0 || strcmp(m[0].role, "system")))
			lora_buf_printf(text, "<|im_start|>system\n%s<|im_end|>\n", c->default_system);
		for (size_t i = 0; i < n; i++) {
			size_t a;
			lora_buf_printf(text, "<|im_start|>%s\n", m[i].role);
			a = text->len;
			lora_buf_puts(text, m[i].content);
			lora_buf_puts(text, "<|im_end|>");
			if (!strcmp(m[i].role, "assistant") && span_add(&sp, &nsp, a, text->len) < 0)
				goto oom;
			lora_buf_puts(text, "\n");
		}
		if (add_generation_prompt)
			lora_buf_puts(text, "<|im_start|>assistant\n");
	} else if (c->fmt == LORA_CHAT_LLAMA3) {
		for (size_t i = 0; i < n; i++) {
			size_t a, b, s;
			if (i == 0)
				lora_buf_puts(text, c->bos ? c->bos : "");
			lora_buf_printf(text, "<|start_header_id|>%s<|end_header_id|>\n\n", m[i].role);
			trim(m[i].content, &a, &b);
			s = text->len;
			lora_buf_add(text, m[i].content + a, b - a);
			lora_buf_puts(text, "<|eot_id|>");
			if (!strcmp(m[i].role, "assistant") && span_add(&sp, &nsp, s, text->len) < 0)
				goto oom;
		}
		if (add_generation_prompt)
			lora_buf_puts(text, "<|start_header_id|>assistant<|end_header_id|>\n\n");
	} else {
		return lora_errf(err, "no chat template");
	}
	lora_buf_add(text, "", 0);
	if (text->oom)
		goto oom;
	if (loss) {
		*loss = sp;
		*n_loss = nsp;
	} else {
		free(sp);
	}
	return 0;
oom:
	free(sp);
	return lora_errf(err, "out of memory");
}
