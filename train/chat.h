/*
 * chat.h - chat templates for {"messages": [...]} rows.
 *
 * A model's own `chat_template` (Jinja source) is run by the interpreter in
 * jinja.h, as transformers' apply_chat_template runs it, with the variables
 * messages, tools (none), documents (none), add_generation_prompt, bos_token
 * and eos_token (tests/unit/test_jinja.c checks the interpreter byte for byte
 * against transformers on real models' templates).  strftime_now is left undefined, so templates
 * that print today's date take their own fallback and a data set renders the
 * same on every day.
 *
 * Loss spans of a Jinja template: the ranges its {% generation %} blocks
 * rendered, as transformers' return_assistant_tokens_mask takes them; for a
 * template without them, each assistant turn i is found by rendering the
 * conversation incrementally: from the end of render(msgs[:i],
 * add_generation_prompt) to the first end-of-turn marker after the answer
 * (the family's, or eos_token where turns end with it), marker included, or
 * else to the end of render(msgs[:i+1]) less trailing white space (the
 * newline after the marker is layout the model never generates).  Templates
 * that render a turn differently once later turns follow still work while one
 * of the two renders is a prefix of the whole text: Qwen3 drops earlier
 * <think> blocks (the prompt is a prefix: the turn runs from it to its marker
 * in the whole text), Mistral moves the system prompt to the last user turn
 * (the turn is a prefix: it starts where its answer last appears).  Otherwise
 * it is an error naming the turn.  tests/unit/test_jinja.c checks the text and
 * the spans on twelve families' templates.
 *
 * Two templates are built in, by name, rendered by C code:
 *
 *   ChatML   <|im_start|>{role}\n{content}<|im_end|>\n ...
 *            [+ a default system turn when the template inserts one and the
 *            conversation has none, e.g. Qwen2 and SmolLM2]
 *   Llama-3  {bos}<|start_header_id|>{role}<|end_header_id|>\n\n{content|trim}<|eot_id|> ...
 *
 * add_generation_prompt appends the opening of an assistant turn.
 *
 * Rendering also reports which byte ranges of the text are the model's to
 * learn: each assistant turn's content plus its end-of-turn marker.
 */
#ifndef LORA_CHAT_H
#define LORA_CHAT_H

#include <stddef.h>

#include <cjson/cJSON.h>

#include "libadapter/base/buf.h"
#include "libadapter/base/err.h"

enum lora_chat_format { LORA_CHAT_CHATML = 1, LORA_CHAT_LLAMA3 = 2, LORA_CHAT_JINJA = 3 };

struct lora_jinja;

struct lora_chat {
	enum lora_chat_format fmt;
	char *default_system;   /* ChatML: system text added when there is no system turn; NULL = none */
	char *bos;              /* Llama-3, Jinja: text of bos_token ("" = none) */
	char *eos;              /* Jinja: text of eos_token ("" = none) */
	struct lora_jinja *jinja;   /* Jinja: the compiled template */
	const char *family;     /* Jinja: "chatml", "llama3", ... by its markers, or "jinja" */
	const char *end_marker; /* the text that ends an assistant turn ("<|im_end|>"...), NULL if unknown */
};

struct lora_chat_msg {
	const char *role;       /* "system", "user", "assistant", "tool" */
	const char *content;
	const cJSON *json;      /* Jinja: the whole message object (tool_calls...); NULL = {role, content} */
};

/* [start, end) byte range of a rendered text */
struct lora_span {
	size_t start, end;
};

/*
 * Compile a model's Jinja chat template.  `bos`/`eos` are the tokenizer's
 * bos_token/eos_token texts (may be NULL).  NULL or empty tpl, or a template
 * the interpreter cannot parse: -1 and a message ("template line N: ...").
 */
int lora_chat_jinja(const char *tpl, const char *bos, const char *eos, struct lora_chat *out, struct lora_err *err);
/* lora_chat_jinja without an eos_token. */
int lora_chat_detect(const char *tpl, const char *bos, struct lora_chat *out, struct lora_err *err);
/* "chatml" or "llama3" (also "llama-3"); no default system prompt. */
int lora_chat_by_name(const char *name, const char *bos, struct lora_chat *out, struct lora_err *err);
/*
 * What --chat-template names: "chatml"/"llama3", or a FILE holding a Jinja
 * template (a .json file: its "chat_template" string, as transformers 4.4x
 * writes chat_template.json).  An unreadable file is a usage error.
 */
int lora_chat_open(const char *spec, const char *bos, const char *eos, struct lora_chat *out, struct lora_err *err);
void lora_chat_free(struct lora_chat *c);
const char *lora_chat_name(const struct lora_chat *c);

/*
 * Render messages to `text` (appended) and, when loss is not NULL, the loss
 * spans (malloc'd array; free it), as byte offsets into `text`.  Built-in templates check roles (system, user, assistant, tool); a
 * Jinja template checks what it checks (raise_exception).
 */
int lora_chat_render(const struct lora_chat *c, const struct lora_chat_msg *m, size_t n,
		     int add_generation_prompt, struct lora_buf *text, struct lora_span **loss,
		     size_t *n_loss, struct lora_err *err);
/*
 * The same with the tool schemas a row carries (a JSON array, as
 * apply_chat_template's tools=; NULL = none).  Only a Jinja template takes
 * them; the built-in ones refuse a non-empty array.
 */
int lora_chat_render_tools(const struct lora_chat *c, const struct lora_chat_msg *m, size_t n, const cJSON *tools,
			   int add_generation_prompt, struct lora_buf *text, struct lora_span **loss, size_t *n_loss,
			   struct lora_err *err);

#endif
