/*
 * test_tok_chat.c - chat templates through chat.h: the model's own (Jinja)
 * and the two built in.  The rendered text of real conversations is checked
 * against transformers in test_data_oracle.c and test_jinja.c; here:
 * families, errors, loss spans (incremental and {% generation %}),
 * generation prompts.
 */
#include "tests/t.h"
#include "train/chat.h"

/* Qwen2.5's template (abridged: the tools branch kept, as it holds a second
 * '<|im_start|>system\n' that is not a default prompt). */
static const char qwen25[] =
	"{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}"
	"{{- messages[0]['content'] }}{%- else %}{{- 'You are Qwen, created by Alibaba Cloud. You are a helpful "
	"assistant.' }}{%- endif %}{%- else %}{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + "
	"messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by "
	"Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- endif %}"
	"{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + "
	"'\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

static const char llama3[] =
	"{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
	"message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 "
	"%}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}";

/* A model's own template runs as Jinja; its family is named by its end-of-turn marker. */
TEST(model_templates_run_as_jinja)
{
	struct lora_chat c;
	struct lora_err err = { 0 };
	struct lora_buf b = LORA_BUF_INIT;
	const struct lora_chat_msg m[] = { { .role = "user", .content = " Hi " } };

	CHECK(lora_chat_detect(qwen25, NULL, &c, &err) == 0);
	CHECK(c.fmt == LORA_CHAT_JINJA && !strcmp(lora_chat_name(&c), "chatml") && !strcmp(c.end_marker, "<|im_end|>"));
	CHECK(lora_chat_render(&c, m, 1, 1, &b, NULL, NULL, &err) == 0);
	CHECKF(b.data && !strcmp(b.data, "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
				 "assistant.<|im_end|>\n<|im_start|>user\n Hi <|im_end|>\n<|im_start|>assistant\n"),
	       "%s", b.data ? b.data : "");
	lora_buf_free(&b);
	lora_chat_free(&c);
	CHECK(lora_chat_jinja(llama3, "<|begin_of_text|>", "<|eot_id|>", &c, &err) == 0);
	CHECK(!strcmp(lora_chat_name(&c), "llama3"));
	CHECK(lora_chat_render(&c, m, 1, 0, &b, NULL, NULL, &err) == 0);
	CHECKF(b.data && !strcmp(b.data, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"),
	       "%s", b.data ? b.data : "");
	lora_buf_free(&b);
	lora_chat_free(&c);
	CHECK(lora_chat_detect("{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n{% endfor %}",
			       NULL, &c, &err) == 0);
	CHECK(!strcmp(lora_chat_name(&c), "gemma"));
	lora_chat_free(&c);
	CHECK(lora_chat_detect("{% for m in messages %}{{ m.content }}{% endfor %}", NULL, &c, &err) == 0);
	CHECK(!strcmp(lora_chat_name(&c), "jinja") && !c.end_marker);
	lora_chat_free(&c);
}

TEST(bad_templates_are_refused_with_the_line)
{
	struct lora_chat c;
	struct lora_err err = { 0 };

	CHECK(lora_chat_detect("", NULL, &c, &err) < 0);
	CHECKF(strstr(err.msg, "no chat_template"), "%s", err.msg);
	CHECK(lora_chat_detect("{% for m in messages %}\n{{ m.content }\n{% endfor %}", NULL, &c, &err) < 0);
	CHECKF(!strcmp(err.msg, "chat template: template line 2: unexpected '}'"), "%s", err.msg);
	CHECK(lora_chat_detect("{% for m in messages %}\n{% extends 'x' %}{% endfor %}", NULL, &c, &err) < 0);
	CHECKF(strstr(err.msg, "line 2: 'extends' is not supported"), "%s", err.msg);
}

/* Loss spans by incremental rendering: from the generation prompt to the end of the turn, less the newline. */
TEST(incremental_spans_of_a_model_template)
{
	static const char gemma[] =
		"{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
		"{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] "
		"| trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}";
	static const char qwen3ish[] =   /* earlier assistant turns lose their reasoning once a user turn follows */
		"{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' and loop.last %}<think></think>"
		"{% endif %}{{ m.content }}<|im_end|>\n{% endfor %}"
		"{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
	struct lora_chat c;
	struct lora_err err = { 0 };
	struct lora_buf b = LORA_BUF_INIT;
	struct lora_span *sp = NULL;
	size_t n = 0;
	const struct lora_chat_msg m[] = { { .role = "user", .content = "Hi" }, { .role = "assistant", .content = " Yo " },
					   { .role = "user", .content = "Bye" }, { .role = "assistant", .content = "Ciao" } };

	CHECK(lora_chat_jinja(gemma, "<bos>", "<eos>", &c, &err) == 0);
	lora_buf_puts(&b, "prefix:");
	CHECK(lora_chat_render(&c, m, 4, 0, &b, &sp, &n, &err) == 0);
	CHECKF(!strcmp(b.data, "prefix:<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nYo<end_of_turn>\n"
			       "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\nCiao<end_of_turn>\n"), "%s", b.data);
	CHECK(n == 2 && sp);
	if (n == 2 && sp) {
		CHECK(!strncmp(b.data + sp[0].start, "Yo<end_of_turn>", sp[0].end - sp[0].start) &&
		      sp[0].end - sp[0].start == strlen("Yo<end_of_turn>"));
		CHECK(!strncmp(b.data + sp[1].start, "Ciao<end_of_turn>", sp[1].end - sp[1].start) &&
		      sp[1].end - sp[1].start == strlen("Ciao<end_of_turn>"));
	}
	free(sp);
	sp = NULL;
	lora_buf_free(&b);
	lora_chat_free(&c);
	CHECK(lora_chat_jinja(qwen3ish, NULL, NULL, &c, &err) == 0);
	CHECK(lora_chat_render(&c, m, 2, 0, &b, &sp, &n, &err) == 0 && n == 1);   /* one turn: fine */
	free(sp);
	sp = NULL;
	lora_buf_free(&b);
	/* the earlier turn as the whole conversation renders it: from its prompt to its end marker */
	CHECKF(lora_chat_render(&c, m, 4, 0, &b, &sp, &n, &err) == 0, "%s", err.msg);
	CHECK(n == 2 && sp);
	if (n == 2 && sp) {
		CHECKF(sp[0].end - sp[0].start == strlen(" Yo <|im_end|>") &&
		       !strncmp(b.data + sp[0].start, " Yo <|im_end|>", sp[0].end - sp[0].start), "%.*s",
		       (int)(sp[0].end - sp[0].start), b.data + sp[0].start);
		CHECKF(sp[1].end - sp[1].start == strlen("<think></think>Ciao<|im_end|>") &&
		       !strncmp(b.data + sp[1].start, "<think></think>Ciao<|im_end|>", sp[1].end - sp[1].start), "%.*s",
		       (int)(sp[1].end - sp[1].start), b.data + sp[1].start);
	}
	free(sp);
	sp = NULL;
	lora_buf_free(&b);
	lora_chat_free(&c);
	/* a template whose prompt itself changes (it counts the messages): no span can be found */
	CHECK(lora_chat_jinja("{{ messages | length }}\n{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
			      "<|im_end|>\n{% endfor %}", NULL, NULL, &c, &err) == 0);
	CHECK(lora_chat_render(&c, m, 4, 0, &b, &sp, &n, &err) < 0);
	CHECKF(strstr(err.msg, "renders message 2 differently"), "%s", err.msg);
	lora_buf_free(&b);
	lora_chat_free(&c);
}

/* {% generation %} blocks mark the spans themselves, as transformers' return_assistant_tokens_mask reads them. */
TEST(generation_blocks_mark_spans)
{
	static const char tpl[] =
		"{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}{% generation %}"
		"{{ m.content }}<|im_end|>{% endgeneration %}{% else %}{{ m.content }}<|im_end|>{% endif %}\n{% endfor %}";
	struct lora_chat c;
	struct lora_err err = { 0 };
	struct lora_buf b = LORA_BUF_INIT;
	struct lora_span *sp = NULL;
	size_t n = 0;
	const struct lora_chat_msg m[] = { { .role = "user", .content = "Hi" }, { .role = "assistant", .content = "Yo" } };

	CHECK(lora_chat_jinja(tpl, NULL, NULL, &c, &err) == 0);
	lora_buf_puts(&b, "xx");
	CHECK(lora_chat_render(&c, m, 2, 0, &b, &sp, &n, &err) == 0);
	CHECK(n == 1 && sp && sp[0].start == 2 + strlen("<|im_start|>user\nHi<|im_end|><|im_start|>assistant\n") &&
	      sp[0].end == sp[0].start + strlen("Yo<|im_end|>"));
	free(sp);
	lora_buf_free(&b);
	lora_chat_free(&c);
}

TEST(chatml_spans_and_generation_prompt)
{
	struct lora_chat c;
	struct lora_err err = { 0 };
	struct lora_buf b = LORA_BUF_INIT;
	struct lora_span *sp = NULL;
	size_t n = 0;
	const struct lora_chat_msg m[] = { { .role = "user", .content = "Hi" }, { .role = "assistant", .content = "Yo" },
					   { .role = "user", .content = "Bye" } };

	CHECK(lora_chat_by_name("chatml", NULL, &c, &err) == 0);
	CHECK(lora_chat_render(&c, m, 3, 1, &b, &sp, &n, &err) == 0);
	CHECK(!strcmp(b.data, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n"
			      "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"));
	CHECK(n == 1 && sp && !strncmp(b.data + sp[0].start, "Yo<|im_end|>", sp[0].end - sp[0].start) &&
	      sp[0].end - sp[0].start == strlen("Yo<|im_end|>"));
	free(sp);
	lora_buf_free(&b);
	lora_chat_free(&c);
}

TEST(llama3_trims_content_like_jinja)
{
	struct lora_chat c;
	struct lora_err err = { 0 };
	struct lora_buf b = LORA_BUF_INIT;
	struct lora_span *sp = NULL;
	size_t n = 0;
	const struct lora_chat_msg m[] = { { .role = "system", .content = " \t sys \n" },
					   { .role = "assistant", .content = "\xc2\xa0 a b\xe3\x80\x80" } };

	CHECK(lora_chat_by_name("llama3", "<|begin_of_text|>", &c, &err) == 0);
	CHECK(lora_chat_render(&c, m, 2, 0, &b, &sp, &n, &err) == 0);
	CHECKF(!strcmp(b.data, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nsys<|eot_id|>"
			       "<|start_header_id|>assistant<|end_header_id|>\n\na b<|eot_id|>"), "%s", b.data);
	CHECK(n == 1 && sp && !strncmp(b.data + sp[0].start, "a b<|eot_id|>", 13) && sp[0].end == b.len);
	free(sp);
	lora_buf_free(&b);
	CHECK(lora_chat_render(&c, (struct lora_chat_msg[]){ { .role = "bot", .content = "x" } }, 1, 0, &b, NULL, NULL, &err) < 0);
	CHECKF(strstr(err.msg, "role 'bot'"), "%s", err.msg);
	lora_buf_free(&b);
	lora_chat_free(&c);
	CHECK(lora_chat_by_name("vicuna", NULL, &c, &err) < 0 && err.code == LORA_EUSAGE);
}

int main(void)
{
	RUN(model_templates_run_as_jinja);
	RUN(bad_templates_are_refused_with_the_line);
	RUN(incremental_spans_of_a_model_template);
	RUN(generation_blocks_mark_spans);
	RUN(chatml_spans_and_generation_prompt);
	RUN(llama3_trims_content_like_jinja);
	return t_done();
}
