/*
 * chat.h - chat templates for {"messages": [...]} rows: ChatML and Llama-3.
 *
 * We do not run Jinja.  A model's own `chat_template` is recognised as one of
 * the two families and rendered by C code that produces the same text as
 * transformers' apply_chat_template (tests/oracle/tok_chat.py checks it):
 *
 *   ChatML   <|im_start|>{role}\n{content}<|im_end|>\n ...
 *            [+ a default system turn when the template inserts one and the
 *            conversation has none, e.g. Qwen2 and SmolLM2]
 *   Llama-3  {bos}<|start_header_id|>{role}<|end_header_id|>\n\n{content|trim}<|eot_id|> ...
 *
 * add_generation_prompt appends the opening of an assistant turn.  Any other
 * template is an error that names the family when it can tell (Llama-2
 * [INST], Gemma, Llama-3.1 date header, Qwen3 <think>, ...).
 *
 * Rendering also reports which byte ranges of the text are the model's to
 * learn: each assistant turn's content plus its end-of-turn marker.
 */
#ifndef LORA_CHAT_H
#define LORA_CHAT_H

#include <stddef.h>

#include "libadapter/base/buf.h"
#include "libadapter/base/err.h"

enum lora_chat_format { LORA_CHAT_CHATML = 1, LORA_CHAT_LLAMA3 = 2 };

struct lora_chat {
	enum lora_chat_format fmt;
	char *default_system;   /* ChatML: system text added when there is no system turn; NULL = none */
	char *bos;              /* Llama-3: text of bos_token that starts the conversation ("" = none) */
};

struct lora_chat_msg {
	const char *role;       /* "system", "user", "assistant", "tool" */
	const char *content;
};

/* [start, end) byte range of a rendered text */
struct lora_span {
	size_t start, end;
};

/*
 * Recognise a Jinja chat template.  `bos` is the tokenizer's bos_token text
 * (used by Llama-3's {{ bos_token }}; may be NULL).  On an unsupported
 * template: -1 and a message naming it.
 */
int lora_chat_detect(const char *tpl, const char *bos, struct lora_chat *out, struct lora_err *err);
/* "chatml" or "llama3" (also "llama-3"); no default system prompt. */
int lora_chat_by_name(const char *name, const char *bos, struct lora_chat *out, struct lora_err *err);
void lora_chat_free(struct lora_chat *c);
const char *lora_chat_name(const struct lora_chat *c);

/*
 * Render messages to `text` (appended) and, when loss is not NULL, the loss
 * spans (malloc'd array; free it).  Roles are checked: system, user,
 * assistant, tool.
 */
int lora_chat_render(const struct lora_chat *c, const struct lora_chat_msg *m, size_t n,
		     int add_generation_prompt, struct lora_buf *text, struct lora_span **loss,
		     size_t *n_loss, struct lora_err *err);

#endif
