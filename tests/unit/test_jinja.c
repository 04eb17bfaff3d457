/*
 * test_jinja.c - the Jinja interpreter (train/jinja.h) against jinja2.
 *
 * tests/oracle/jinja_chat.py wrote tests/fixtures/jinja/:
 *   chat.json      twelve families' chat templates (and one with {% generation %}
 *                  blocks) and conversations, with and without tools, as
 *                  transformers' apply_chat_template renders them (the exact
 *                  variables the template saw are stored with each case);
 *   features.json  one language feature per small template, rendered by
 *                  jinja2 in transformers' environment.
 * Every expected text must come out byte for byte; every case where jinja2
 * raised must come back as an error with a message ("template line N: ...")
 * and, for raise_exception, with the template's own message.  Then limits
 * (recursion, steps, output, nesting) and a fixed-seed mutation loop over
 * all the fixture templates: whatever the bytes, parse and render return,
 * and under `make SANITIZE=1` without a leak or a bad access.
 */
#include <stdint.h>
#include <time.h>

#include "tests/t.h"
#include "tests/unit/t_json.h"
#include "train/chat.h"
#include "train/jinja.h"

static struct tm fixture_now(const cJSON *doc)
{
	const cJSON *n = cJSON_GetObjectItemCaseSensitive(doc, "now");
	struct tm tm = { 0 };

	tm.tm_year = (int)t_num(n, "year") - 1900;
	tm.tm_mon = (int)t_num(n, "month") - 1;
	tm.tm_mday = (int)t_num(n, "day");
	tm.tm_hour = (int)t_num(n, "hour");
	tm.tm_min = (int)t_num(n, "minute");
	tm.tm_sec = (int)t_num(n, "second");
	timegm(&tm);   /* fills tm_wday, tm_yday */
	return tm;
}

static const char *str(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Where the two texts first differ, for the failure message. */
static size_t first_diff(const char *a, size_t na, const char *b, size_t nb)
{
	size_t i = 0;

	while (i < na && i < nb && a[i] == b[i])
		i++;
	return i;
}

/* Up to 48 bytes of s[0, n) from `at`, with newlines, tabs and quotes escaped, for a failure message. */
static const char *excerpt(const char *s, size_t n, size_t at, char buf[256])
{
	size_t w = 0;

	for (size_t i = at; i < n && i < at + 48; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '\n' || c == '\t' || c == '\r' || c == '"' || c == '\\') {
			buf[w++] = '\\';
			buf[w++] = c == '\n' ? 'n' : c == '\t' ? 't' : c == '\r' ? 'r' : (char)c;
		} else if (c < 0x20) {
			w += (size_t)snprintf(buf + w, 8, "\\x%02x", c);
		} else {
			buf[w++] = (char)c;
		}
	}
	buf[w] = 0;
	return buf;
}

/*
 * Parse and render `tpl` with `vars`; 0 and the text in *out, or -1 and the
 * message in *err.  *gen / *ngen get the {% generation %} spans when asked.
 */
static int render(const char *tpl, const cJSON *vars, const struct tm *now, const struct lora_jinja_limits *lim,
		  struct lora_buf *out, size_t **gen, size_t *ngen, struct lora_err *err)
{
	struct lora_jinja *t = NULL;
	int rc;

	if (lora_jinja_parse(tpl, strlen(tpl), lim, &t, err) < 0)
		return -1;
	rc = lora_jinja_render(t, vars, now, out, gen, ngen, err);
	lora_jinja_free(t);
	return rc;
}

/* One fixture case: its expected text, or an error when jinja2 raised. */
static void check_case(const char *label, const char *tpl, const cJSON *c, const struct tm *now, int *n_ok)
{
	const char *expect = str(c, "expect"), *jerr = str(c, "error");
	const cJSON *vars = cJSON_GetObjectItemCaseSensitive(c, "vars");
	const cJSON *gexp = cJSON_GetObjectItemCaseSensitive(c, "generation");
	struct lora_buf out = LORA_BUF_INIT;
	struct lora_err err = { 0 };
	size_t *gen = NULL, ngen = 0;
	int rc = render(tpl, vars, now, NULL, &out, gexp ? &gen : NULL, gexp ? &ngen : NULL, &err);

	if (expect) {
		size_t ne = strlen(expect), no = out.data ? out.len : 0;
		const char *o = out.data ? out.data : "";

		CHECKF(rc == 0, "%s: %s", label, err.msg);
		if (rc == 0) {
			size_t d = first_diff(o, no, expect, ne);

			char b1[256], b2[256];

			CHECKF(no == ne && d == ne, "%s: differs at byte %zu (got %zu bytes, want %zu)\n    got:  \"%s\"\n"
			       "    want: \"%s\"", label, d, no, ne, excerpt(o, no, d, b1), excerpt(expect, ne, d, b2));
			*n_ok += no == ne && d == ne;
		}
		if (gexp && rc == 0) {
			int i = 0;
			const cJSON *p;

			CHECKF(ngen == (size_t)cJSON_GetArraySize(gexp), "%s: %zu generation spans, want %d", label, ngen,
			       cJSON_GetArraySize(gexp));
			cJSON_ArrayForEach(p, gexp) {
				if ((size_t)i >= ngen)
					break;
				CHECKF(gen[2 * i] == (size_t)cJSON_GetArrayItem(p, 0)->valueint &&
				       gen[2 * i + 1] == (size_t)cJSON_GetArrayItem(p, 1)->valueint,
				       "%s: span %d is [%zu, %zu)", label, i, gen[2 * i], gen[2 * i + 1]);
				i++;
			}
		}
	} else {
		CHECKF(rc < 0, "%s: jinja2 raised '%s' but we rendered '%.80s'", label, jerr ? jerr : "?",
		       out.data ? out.data : "");
		if (rc < 0) {
			CHECKF(!strncmp(err.msg, "template line ", 14), "%s: message '%s'", label, err.msg);
			/* raise_exception: the template's own words come through */
			if (jerr && !strchr(jerr, ':'))
				CHECKF(strstr(err.msg, jerr) != NULL, "%s: '%s' lacks '%s'", label, err.msg, jerr);
			*n_ok += 1;
		}
	}
	free(gen);
	lora_buf_free(&out);
}

/* Twelve families' chat templates, through transformers' apply_chat_template. */
TEST(chat_templates_match_transformers)
{
	cJSON *doc = t_read_json_fixture("jinja/chat.json");
	const cJSON *tpls = cJSON_GetObjectItemCaseSensitive(doc, "templates");
	const cJSON *c;
	struct tm now;
	int n = 0, ok = 0, fams = 0;

	CHECK(doc != NULL);
	if (!doc)
		return;
	now = fixture_now(doc);
	cJSON_ArrayForEach(c, tpls)
		fams++;
	cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(doc, "cases")) {
		const char *name = str(c, "template"), *conv = str(c, "conversation");
		const char *tpl = str(cJSON_GetObjectItemCaseSensitive(tpls, name), "template");
		char label[160];

		snprintf(label, sizeof(label), "%s/%s/agp=%d%s", name, conv,
			 cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "add_generation_prompt")),
			 cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(c, "vars"), "enable_thinking")
			 ? "/thinking" : "");
		CHECKF(tpl != NULL, "%s: no template", label);
		if (!tpl)
			continue;
		check_case(label, tpl, c, &now, &ok);
		n++;
	}
	CHECKF(fams >= 6 && n >= 100, "%d templates, %d cases", fams, n);
	CHECKF(ok == n, "%d of %d cases as transformers", ok, n);
	cJSON_Delete(doc);
}

/*
 * The same conversations through chat.h, as training renders {"messages"}
 * rows: the text is transformers', and each assistant turn has a loss span
 * that holds its answer (after any </think>) and ends with the family's end
 * of turn.
 */
TEST(chat_rows_of_real_templates_and_their_loss_spans)
{
	cJSON *doc = t_read_json_fixture("jinja/chat.json");
	const cJSON *tpls = cJSON_GetObjectItemCaseSensitive(doc, "templates");
	const cJSON *c;
	int n = 0, multi = 0, ngen = 0;

	CHECK(doc != NULL);
	if (!doc)
		return;
	cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(doc, "cases")) {
		const char *name = str(c, "template"), *conv = str(c, "conversation"), *expect = str(c, "expect");
		const cJSON *vars = cJSON_GetObjectItemCaseSensitive(c, "vars");
		/* the messages as a row holds them (null fields, reasoning under other names) */
		const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(c, "input_messages"), *e;
		const cJSON *gexp = cJSON_GetObjectItemCaseSensitive(c, "generation");
		const char *tpl = str(cJSON_GetObjectItemCaseSensitive(tpls, name), "template");
		struct lora_chat_msg m[16];
		size_t nm = 0, na = 0, nsp = 0;
		struct lora_chat ch;
		struct lora_err err = { 0 };
		struct lora_buf b = LORA_BUF_INIT;
		struct lora_span *sp = NULL;

		const cJSON *tools = cJSON_GetObjectItemCaseSensitive(vars, "tools");

		/* what training renders: no generation prompt, no extra variables */
		if (!expect || !tpl || cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(vars, "add_generation_prompt")) ||
		    cJSON_GetArraySize(vars) != 6 + (str(vars, "unk_token") != NULL) + (str(vars, "pad_token") != NULL) +
		    (str(vars, "mask_token") != NULL) - (str(vars, "bos_token") == NULL))
			continue;
		cJSON_ArrayForEach(e, msgs) {
			if (nm == 16)
				break;
			m[nm].role = str(e, "role");
			m[nm].content = str(e, "content");
			m[nm].json = e;
			na += m[nm].role && !strcmp(m[nm].role, "assistant");
			nm++;
		}
		CHECK(lora_chat_jinja(tpl, str(vars, "bos_token"), str(vars, "eos_token"), &ch, &err) == 0);
		if (lora_chat_render_tools(&ch, m, nm, cJSON_IsNull(tools) ? NULL : tools, 0, &b, &sp, &nsp, &err) < 0) {
			CHECKF(0, "%s/%s: %s", name, conv, err.msg);
		} else {
			CHECKF(b.data && !strcmp(b.data, expect), "%s/%s: the text is not transformers'", name, conv);
			CHECKF(gexp || nsp == na, "%s/%s: %zu spans for %zu assistant turns", name, conv, nsp, na);
			if (gexp) {   /* {% generation %}: exactly return_assistant_tokens_mask's spans */
				size_t k = 0;
				const cJSON *g;

				CHECKF((size_t)cJSON_GetArraySize(gexp) == nsp, "%s/%s: %zu spans, transformers %d", name, conv,
				       nsp, cJSON_GetArraySize(gexp));
				cJSON_ArrayForEach(g, gexp) {
					if (k < nsp)
						CHECKF(sp[k].start == (size_t)cJSON_GetArrayItem(g, 0)->valueint &&
						       sp[k].end == (size_t)cJSON_GetArrayItem(g, 1)->valueint,
						       "%s/%s: span %zu [%zu, %zu)", name, conv, k, sp[k].start, sp[k].end);
					k++;
				}
				ngen++;
			}
			for (size_t i = 0, k = 0; !gexp && i < nm && k < nsp; i++) {
				const char *ans, *th;
				char want[512], got[2048];
				size_t wl, gl = sp[k].end - sp[k].start;

				if (!m[i].role || strcmp(m[i].role, "assistant"))
					continue;
				ans = m[i].content ? m[i].content : "";   /* a tool call's may be null */
				if ((th = strstr(ans, "</think>")))
					ans = th + strlen("</think>");
				while (*ans && strchr(" \t\r\n", *ans))
					ans++;
				wl = strlen(ans);
				while (wl && strchr(" \t\r\n", ans[wl - 1]))
					wl--;
				snprintf(want, sizeof(want), "%.*s", (int)wl, ans);
				snprintf(got, sizeof(got), "%.*s", (int)gl, b.data + sp[k].start);
				CHECKF(sp[k].start <= sp[k].end && sp[k].end <= b.len && (!k || sp[k - 1].end <= sp[k].start),
				       "%s/%s: span %zu [%zu, %zu)", name, conv, k, sp[k].start, sp[k].end);
				CHECKF(strstr(got, want) != NULL, "%s/%s: span %zu '%s' lacks '%s'", name, conv, k, got, want);
				if (ch.end_marker || *ch.eos) {
					const char *mk = ch.end_marker ? ch.end_marker : ch.eos;

					CHECKF(gl >= strlen(mk) && !strcmp(got + gl - strlen(mk), mk), "%s/%s: span %zu '%s' does "
					       "not end with %s", name, conv, k, got, mk);
				}
				k++;
			}
			n++;
			multi += na > 1;
		}
		free(sp);
		lora_buf_free(&b);
		lora_chat_free(&ch);
	}
	CHECKF(n >= 40 && multi >= 10 && ngen >= 5, "%d conversations, %d with several assistant turns, %d with "
	       "{%% generation %%}", n, multi, ngen);
	cJSON_Delete(doc);
}

/* One feature per template, through jinja2. */
TEST(features_match_jinja2)
{
	cJSON *doc = t_read_json_fixture("jinja/features.json");
	const cJSON *c;
	struct tm now;
	int n = 0, ok = 0;

	CHECK(doc != NULL);
	if (!doc)
		return;
	now = fixture_now(doc);
	cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(doc, "cases")) {
		const char *name = str(c, "name"), *tpl = str(c, "template");

		if (!name || !tpl)
			continue;
		check_case(name, tpl, c, &now, &ok);
		n++;
	}
	CHECKF(n >= 60, "%d cases", n);
	CHECKF(ok == n, "%d of %d cases as jinja2", ok, n);
	cJSON_Delete(doc);
}

/* An error, with a message naming the template line; never a crash. */
static void expect_error(const char *tpl, const cJSON *vars, const struct lora_jinja_limits *lim, const char *want)
{
	struct lora_buf out = LORA_BUF_INIT;
	struct lora_err err = { 0 };
	int rc = render(tpl, vars, NULL, lim, &out, NULL, NULL, &err);

	CHECKF(rc < 0, "'%.60s' rendered '%.60s'", tpl, out.data ? out.data : "");
	if (rc < 0)
		CHECKF(strstr(err.msg, "template line ") && (!want || strstr(err.msg, want)), "'%.60s': '%s' (want '%s')",
		       tpl, err.msg, want ? want : "");
	lora_buf_free(&out);
}

TEST(errors_come_back_with_a_message)
{
	cJSON *v = cJSON_Parse("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}");

	expect_error("{{ 'x' | nosuchfilter }}", v, NULL, "nosuchfilter");
	expect_error("{{ x is nosuchtest }}", v, NULL, "nosuchtest");
	expect_error("line1\n{{ raise_exception('Only user and assistant roles are supported!') }}", v, NULL,
		     "template line 2: raise_exception: Only user and assistant roles are supported!");
	expect_error("{{ messages[0].nope.deeper }}", v, NULL, NULL);   /* undefined deref */
	expect_error("{{ nosuch['k'] }}", v, NULL, NULL);
	expect_error("{{ nosuch | tojson }}", v, NULL, NULL);
	expect_error("{% for m in messages %}\n{{ m.content }}\n", v, NULL,
		     "template line 2: unexpected end of template (expected 'else' or 'endfor')");
	expect_error("{% if true %}{% for x in [1] %}{% endif %}", v, NULL,
		     "unexpected 'endif' (expected 'else' or 'endfor')");
	expect_error("{{ 3() }}", v, NULL, "an int is not callable");
	expect_error("{% macro f() %}x", v, NULL, NULL);
	expect_error("{% generation %}x", v, NULL, NULL);
	expect_error("{{ 'x' ", v, NULL, NULL);
	expect_error("{{ \"x }}", v, NULL, NULL);
	expect_error("{# x", v, NULL, NULL);
	expect_error("{% set %}", v, NULL, NULL);
	expect_error("{% endif %}", v, NULL, NULL);
	expect_error("{{ strftime_now('%Y') }}", v, NULL, NULL);   /* no time given */
	expect_error("{% include 'x' %}", v, NULL, "not supported");
	cJSON_Delete(v);
}

TEST(limits_stop_runaway_templates)
{
	struct lora_jinja_limits lim = { .max_depth = 64, .max_steps = 100000, .max_output = 1 << 16,
					 .max_memory = 1 << 22 };
	struct lora_buf deep = LORA_BUF_INIT;

	cJSON *big = cJSON_CreateObject();
	char kb[1001];

	memset(kb, 'y', 1000);
	kb[1000] = 0;
	cJSON_AddStringToObject(big, "kb", kb);
	/* unbounded recursion, with the default limits and tighter ones */
	expect_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", NULL, NULL, "nests deeper than 256");
	expect_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", NULL, &lim, "nests deeper than 64");
	/* loops that would run for hours */
	expect_error("{% for i in range(1000000000) %}{% for j in range(1000000000) %}{% endfor %}{% endfor %}", NULL,
		     NULL, NULL);
	lim.max_memory = 1 << 26;   /* (the range itself is a list in working memory) */
	expect_error("{% for i in range(200000) %}{% endfor %}", NULL, &lim, "runs more than 100000 steps");
	lim.max_memory = 1 << 22;
	/* output (few steps, many bytes) and working memory */
	expect_error("{% for i in range(100) %}{{ kb }}{% endfor %}", big, &lim, "output exceeds 65536 bytes");
	expect_error("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
		     "{{ ns.s | length }}", NULL, &lim, "bytes of memory");
	expect_error("{{ 'x' * 100000000 }}", NULL, &lim, "bytes of memory");
	cJSON_Delete(big);
	/* nesting deeper than the parser allows: a message, not a stack overflow */
	for (int i = 0; i < 100000; i++)
		lora_buf_puts(&deep, "(");
	{
		struct lora_jinja *t = NULL;
		struct lora_err err = { 0 };
		struct lora_buf src = LORA_BUF_INIT;

		lora_buf_puts(&src, "{{ ");
		lora_buf_add(&src, deep.data, deep.len);
		CHECK(lora_jinja_parse(src.data, src.len, NULL, &t, &err) < 0 && strstr(err.msg, "template line 1"));
		lora_buf_free(&src);
		for (int i = 0; i < 2000; i++)
			lora_buf_puts(&src, "{% if true %}");
		CHECK(lora_jinja_parse(src.data, src.len, NULL, &t, &err) < 0 && err.msg[0]);
		lora_buf_free(&src);
		for (int i = 0; i < 2000; i++)
			lora_buf_puts(&src, "{{ [");
		CHECK(lora_jinja_parse(src.data, src.len, NULL, &t, &err) < 0 && err.msg[0]);
		lora_buf_free(&src);
	}
	lora_buf_free(&deep);
	/* a template within the limits still renders under them */
	{
		struct lora_buf out = LORA_BUF_INIT;
		struct lora_err err = { 0 };

		CHECKF(render("{% for i in range(100) %}{{ i }}{% endfor %}", NULL, NULL, &lim, &out, NULL, NULL, &err) == 0,
		       "%s", err.msg);
		CHECK(out.len == 190);
		lora_buf_free(&out);
	}
}

/* xorshift64*: the same mutations on every run */
static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t rnd(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545f4914f6cdd1dULL;
}

static const char *const pieces[] = { "{{", "}}", "{%", "%}", "{#", "#}", "{%-", "-%}", "{{-", "-}}", "'", "\"",
	"(", ")", "[", "]", "{", "}", "|", ".", ",", ":", "endfor", "endif", "for x in", "if", "else", "set ns.x =",
	"macro m(a)", "endmacro", "generation", "endgeneration", "loop.", "| tojson", "| trim", "[::-1]", "1e308", "-",
	"**", "~", "\\", "\xff", "\xc3", "\xf0\x9f", "\0", "\n", "raise_exception(", "namespace(", "range(99999)" };

/* A mutated copy of src (malloc'd, n bytes in *len). */
static char *mutate(const char *src, size_t n, size_t *len)
{
	size_t cap = n + 256, m = n;
	char *s = malloc(cap);
	int k = 1 + (int)(rnd() % 4);

	if (!s)
		abort();
	memcpy(s, src, n);
	while (k--) {
		size_t at = m ? rnd() % m : 0;

		switch (rnd() % 5) {
		case 0:   /* truncate */
			m = at;
			break;
		case 1:   /* flip a byte */
			if (m)
				s[at] ^= (char)(1u << (rnd() % 8));
			break;
		case 2:   /* a random byte */
			if (m)
				s[at] = (char)rnd();
			break;
		case 3: { /* insert a piece of syntax */
			const char *p = pieces[rnd() % (sizeof(pieces) / sizeof(pieces[0]))];
			size_t pl = *p ? strlen(p) : 1;

			if (m + pl > cap)
				break;
			memmove(s + at + pl, s + at, m - at);
			memcpy(s + at, p, pl);
			m += pl;
			break;
		}
		default: { /* delete a run */
			size_t dl = rnd() % 16;

			if (at + dl > m)
				dl = m - at;
			memmove(s + at, s + at + dl, m - at - dl);
			m -= dl;
		}
		}
	}
	/* exactly m bytes, no NUL after them: a read past the end is one AddressSanitizer sees */
	{
		char *x = malloc(m ? m : 1);

		if (!x)
			abort();
		memcpy(x, s, m);
		free(s);
		*len = m;
		return x;
	}
}

static int fuzz_one(const char *src, size_t n, const cJSON *vars, const struct tm *now, int rounds)
{
	struct lora_jinja_limits lim = { .max_depth = 64, .max_steps = 200000, .max_output = 1 << 20,
					 .max_memory = 1 << 24 };
	int parsed = 0;

	for (int r = 0; r < rounds; r++) {
		size_t len;
		char *s = mutate(src, n, &len);
		struct lora_jinja *t = NULL;
		struct lora_err err = { 0 };

		if (lora_jinja_parse(s, len, &lim, &t, &err) == 0) {
			struct lora_buf out = LORA_BUF_INIT;
			size_t *gen = NULL, ngen = 0;

			parsed++;
			err.msg[0] = 0;
			if (lora_jinja_render(t, vars, now, &out, &gen, &ngen, &err) < 0)
				CHECKF(err.msg[0] != 0, "a failed render without a message");
			else
				for (size_t i = 0; i < ngen; i++)
					CHECKF(gen[2 * i] <= gen[2 * i + 1] && gen[2 * i + 1] <= out.len,
					       "span [%zu, %zu) outside %zu bytes", gen[2 * i], gen[2 * i + 1], out.len);
			free(gen);
			lora_buf_free(&out);
			lora_jinja_free(t);
		} else {
			CHECKF(err.msg[0] != 0, "a failed parse without a message");
		}
		free(s);
	}
	return parsed;
}

/* Truncations, byte flips, spliced syntax: every template returns, with a message when it fails. */
TEST(mutated_templates_never_crash)
{
	cJSON *chat = t_read_json_fixture("jinja/chat.json");
	cJSON *feat = t_read_json_fixture("jinja/features.json");
	const char *e = getenv("LORA_JINJA_FUZZ"), *seed = getenv("LORA_JINJA_SEED");   /* to explore further */
	int rounds = e ? atoi(e) : 600, total = 0, parsed = 0;
	const cJSON *c;
	struct tm now;

	CHECK(chat && feat);
	if (!chat || !feat) {
		cJSON_Delete(chat);
		cJSON_Delete(feat);
		return;
	}
	if (seed)
		rng_state = strtoull(seed, NULL, 0) * 2 + 1;
	now = fixture_now(chat);
	/* each chat template with the variables of its first case */
	cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(chat, "templates")) {
		const char *tpl = str(c, "template");
		const cJSON *vars = NULL, *k;

		cJSON_ArrayForEach(k, cJSON_GetObjectItemCaseSensitive(chat, "cases"))
			if (!strcmp(str(k, "template"), c->string)) {
				vars = cJSON_GetObjectItemCaseSensitive(k, "vars");
				break;
			}
		parsed += fuzz_one(tpl, strlen(tpl), vars, &now, rounds * 4);
		total += rounds * 4;
	}
	cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(feat, "cases")) {
		const char *tpl = str(c, "template");

		parsed += fuzz_one(tpl, strlen(tpl), cJSON_GetObjectItemCaseSensitive(c, "vars"), &now, rounds);
		total += rounds;
	}
	/* the loop means something only if a fair share of the mutants get past the parser */
	CHECKF(parsed > total / 10, "%d of %d mutants parsed", parsed, total);
	printf("  %d mutants, %d parsed\n", total, parsed);
	cJSON_Delete(chat);
	cJSON_Delete(feat);
}

int main(void)
{
	RUN(chat_templates_match_transformers);
	RUN(chat_rows_of_real_templates_and_their_loss_spans);
	RUN(features_match_jinja2);
	RUN(errors_come_back_with_a_message);
	RUN(limits_stop_runaway_templates);
	RUN(mutated_templates_never_crash);
	return t_done();
}
