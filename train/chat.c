/*
 * chat.c - ChatML and Llama-3 chat rendering with loss spans (see chat.h).
 */
#include <stdlib.h>
#include <string.h>

#include "train/chat.h"

void lora_chat_free(struct lora_chat *c)
{
	free(c->default_system);
	free(c->bos);
	memset(c, 0, sizeof(*c));
}

const char *lora_chat_name(const struct lora_chat *c)
{
	return c->fmt == LORA_CHAT_CHATML ? "chatml" : c->fmt == LORA_CHAT_LLAMA3 ? "llama3" : "none";
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

/*
 * The system prompt a ChatML template inserts when the conversation has
 * none: a string literal '<|im_start|>system\n....<|im_end|>' in the Jinja
 * source whose body is plain text (no quotes, no expressions).
 */
static int default_system(const char *tpl, char **out)
{
	static const char open[] = "<|im_start|>system", close[] = "<|im_end|>";
	const char *p = tpl;

	*out = NULL;
	while ((p = strstr(p, open))) {
		/* the newline after the role: an escape in the Jinja literal, or a real one */
		const char *body = p + strlen(open), *end;
		size_t n;
		char *s, *o;
		p = body;
		if (body[0] == '\\' && body[1] == 'n')
			body += 2;
		else if (body[0] == '\n')
			body += 1;
		else
			continue;
		end = strstr(body, close);
		if (!end || end == body || strcspn(body, "'\"{}+") < (size_t)(end - body))
			continue;
		n = (size_t)(end - body);
		s = o = malloc(n + 1);
		if (!s)
			return -1;
		for (size_t i = 0; i < n; i++) {
			if (body[i] == '\\' && i + 1 < n) {
				char e = body[++i];
				*o++ = e == 'n' ? '\n' : e == 't' ? '\t' : e;
			} else {
				*o++ = body[i];
			}
		}
		*o = 0;
		*out = s;
		return 0;
	}
	return 0;
}

static const char *family_of(const char *tpl)
{
	if (strstr(tpl, "[INST]"))
		return "llama-2/mistral ([INST])";
	if (strstr(tpl, "<start_of_turn>"))
		return "gemma (<start_of_turn>)";
	if (strstr(tpl, "<\xef\xbd\x9cUser\xef\xbd\x9c>"))
		return "deepseek (<\xef\xbd\x9cUser\xef\xbd\x9c>)";
	if (strstr(tpl, "<|user|>"))
		return "zephyr/phi-3 (<|user|>)";
	if (strstr(tpl, "<|START_OF_TURN_TOKEN|>"))
		return "command-r";
	if (strstr(tpl, "### Instruction") || strstr(tpl, "### Response"))
		return "alpaca (### Instruction)";
	return NULL;
}

int lora_chat_detect(const char *tpl, const char *bos, struct lora_chat *out, struct lora_err *err)
{
	const char *fam;

	memset(out, 0, sizeof(*out));
	if (!tpl || !*tpl)
		return lora_errf(err, "the model has no chat_template; name one (chatml or llama3)");
	if (strstr(tpl, "<|start_header_id|>") && strstr(tpl, "<|eot_id|>")) {
		if (strstr(tpl, "Cutting Knowledge Date"))
			return lora_errf(err, "chat template is llama-3.1+ (it adds a 'Cutting Knowledge Date' system "
					      "header); only plain chatml and llama-3 templates are supported "
					      "(name one: chatml or llama3)");
		out->fmt = LORA_CHAT_LLAMA3;
		return set_bos(out, strstr(tpl, "bos_token") ? bos : "", err);
	}
	if (strstr(tpl, "<|im_start|>") && strstr(tpl, "<|im_end|>")) {
		if (strstr(tpl, "<think>"))
			return lora_errf(err, "chat template is chatml with <think> reasoning turns (qwen3 style); "
					      "only plain chatml and llama-3 templates are supported "
					      "(name one: chatml or llama3)");
		out->fmt = LORA_CHAT_CHATML;
		if (default_system(tpl, &out->default_system) < 0)
			return lora_errf(err, "out of memory");
		return set_bos(out, "", err);
	}
	fam = family_of(tpl);
	if (fam)
		return lora_errf(err, "chat template is %s; only chatml and llama-3 templates are supported "
				      "(name one: chatml or llama3)", fam);
	{
		char head[48];
		size_t n = 0;
		for (; tpl[n] && n < 40; n++)
			head[n] = (unsigned char)tpl[n] < 0x20 ? ' ' : tpl[n];
		while (n > 0 && tpl[n] && ((unsigned char)tpl[n] & 0xC0) == 0x80)
			n--;   /* do not cut a UTF-8 char */
		head[n] = 0;
		return lora_errf(err, "chat template is not one lora knows (it begins '%s'); only chatml and "
				      "llama-3 templates are supported (name one: chatml or llama3)", head);
	}
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

int lora_chat_render(const struct lora_chat *c, const struct lora_chat_msg *m, size_t n,
		     int add_generation_prompt, struct lora_buf *text, struct lora_span **loss,
		     size_t *n_loss, struct lora_err *err)
{
	struct lora_span *sp = NULL;
	size_t nsp = 0;

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
