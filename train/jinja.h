/*
 * jinja.h - a Jinja interpreter for Hugging Face chat templates.
 *
 * Renders a model's own `chat_template` as transformers' apply_chat_template
 * does: jinja2's ImmutableSandboxedEnvironment with trim_blocks=True,
 * lstrip_blocks=True, the loopcontrols extension, keep_trailing_newline=False,
 * no autoescape, its `tojson` override (json.dumps with ensure_ascii=False,
 * indent, separators, sort_keys), and the globals raise_exception,
 * strftime_now, namespace, dict.  tests/unit/test_jinja.c checks the output
 * byte for byte against transformers on twelve families' templates and against
 * jinja2 feature by feature (fixtures written by tests/oracle/jinja_chat.py).
 *
 *   struct lora_jinja *t;
 *   if (lora_jinja_parse(src, strlen(src), NULL, &t, &err) < 0) ...   // "template line 3: ..."
 *   cJSON *vars = ...;   // {"messages": [...], "add_generation_prompt": true, "bos_token": "<s>", ...}
 *   lora_jinja_render(t, vars, &now, &out, &spans, &nspans, &err);
 *   lora_jinja_free(t);
 *
 * The subset (what chat templates use):
 *   syntax      {{ }}, {% %}, {# #}, whitespace control `-` and `+` on either
 *               side; trim_blocks/lstrip_blocks as above; one trailing newline
 *               of the source is dropped
 *   statements  if/elif/else, for (tuple targets `k, v`, `if` filter, else,
 *               loop.index/index0/revindex/revindex0/first/last/length/
 *               previtem/nextitem), break/continue, set (names, `ns.attr`,
 *               tuples, block set), macro (defaults; called as a function),
 *               generation (the spans it rendered are reported)
 *   expressions literals (str, int, float, true/false/none in any case), lists,
 *               tuples, dicts, `.attr`, `[item]`, slices `[a:b:c]`, calls with
 *               keyword arguments, + - * / // % **, ~, == != < > <= >=, in,
 *               not in, and, or, not, x if c else y, filters `|f(args)`,
 *               tests `is [not] t(args)`
 *   filters     abs capitalize count d default dictsort escape e first float
 *               indent int items join last length list lower map max min
 *               reject rejectattr replace reverse round safe select selectattr
 *               sort string sum title tojson trim unique upper wordcount
 *               (upper lower title capitalize, as filters, methods and
 *               tests, map ASCII letters only; Python maps all of Unicode)
 *   tests       boolean callable defined divisibleby eq equalto escaped even
 *               false float ge gt in integer iterable le lower lt mapping ne
 *               none number odd sameas sequence string true undefined upper ==
 *               != < > <= >=
 *   methods     str: strip lstrip rstrip startswith endswith split rsplit
 *               replace upper lower title capitalize find count join format
 *               ({} and {0} fields only); dict: get items keys values
 *   globals     range, namespace, dict, raise_exception, strftime_now (the time
 *               is the caller's, never the clock's; without one, undefined)
 *   undefined   jinja2's default Undefined: prints as "", is false, iterates
 *               empty, has length 0; an attribute of it, arithmetic on it and
 *               tojson of it are errors
 *
 * Values come from JSON (cJSON): objects keep their key order; a JSON number
 * that is integral is an int (cJSON does not keep "1.0" apart from "1"), so a
 * template that prints a float written as 1.0 in the data prints 1.
 * Strings are UTF-8 and are indexed, sliced and counted by code point.
 *
 * Not supported (an error naming it at parse time): extends/block/include/
 * import, call blocks, filter blocks, raw, recursive loops, loop.cycle,
 * macro varargs/kwargs/caller.
 *
 * Templates are hostile input.  Parsing nests at most `max_depth` deep;
 * rendering counts steps (statements and expression nodes), nesting (macro
 * calls, nested loops and expressions) and bytes (output and working memory)
 * and stops with an error at any limit, so every render ends in bounded time
 * and memory.  Errors name the template line: "template line 7: ...".
 */
#ifndef LORA_JINJA_H
#define LORA_JINJA_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "libadapter/base/buf.h"
#include "libadapter/base/err.h"

struct lora_jinja;

struct lora_jinja_limits {
	int max_depth;          /* parse nesting and render recursion (default 256) */
	uint64_t max_steps;     /* statements + expression nodes per render (default 20M) */
	size_t max_output;      /* bytes of output per render (default 64 MiB) */
	size_t max_memory;      /* bytes of working memory per render (default 256 MiB) */
};

/* Compile `src` (n bytes).  lim NULL = the defaults.  -1 and "template line N: ..." on error. */
int lora_jinja_parse(const char *src, size_t n, const struct lora_jinja_limits *lim, struct lora_jinja **out,
		     struct lora_err *err);
void lora_jinja_free(struct lora_jinja *t);

/* Whether the template has {% generation %} blocks. */
int lora_jinja_has_generation(const struct lora_jinja *t);

/*
 * Render with the variables of the JSON object `vars` (may be NULL), appending
 * to `out`.  `now` is what strftime_now formats (NULL: strftime_now is
 * undefined, so `strftime_now is defined` is false and calling it an error).  When gen is not NULL, the [start, end) byte ranges of `out` (counted
 * from out->len at entry) that {% generation %} blocks rendered are returned
 * as a malloc'd array of pairs (gen[2i], gen[2i+1]); free it.  A
 * raise_exception() in the template is an error whose message is the
 * template's ("template line N: raise_exception: MESSAGE").
 */
int lora_jinja_render(const struct lora_jinja *t, const cJSON *vars, const struct tm *now, struct lora_buf *out,
		      size_t **gen, size_t *n_gen, struct lora_err *err);

#endif
