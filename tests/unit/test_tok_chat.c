/*
 * test_tok_chat.c - recognising chat templates and rendering them.  The
 * rendered text of real conversations is checked against transformers in
 * test_data_oracle.c; here: detection, refusals by name, spans, generation
 * prompts.
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

TEST(detects_families)
{
	struct lora_chat c;
	struct lora_err err = { 0 };

	CHECK(lora_chat_detect(qwen25, NULL, &c, &err) == 0);
	CHECK(c.fmt == LORA_CHAT_CHATML && !strcmp(lora_chat_name(&c), "chatml"));
	CHECKF(c.default_system && !strcmp(c.default_system, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
	       "%s", c.default_system ? c.default_system : "(null)");
	lora_chat_free(&c);
	CHECK(lora_chat_detect("{{ '<|im_start|>system\nBe brief.<|im_end|>\n' }}", NULL, &c, &err) == 0);
	CHECKF(c.default_system && !strcmp(c.default_system, "Be brief."), "%s", c.default_system ? c.default_system : "-");
	lora_chat_free(&c);
	CHECK(lora_chat_detect(llama3, "<|begin_of_text|>", &c, &err) == 0);
	CHECK(c.fmt == LORA_CHAT_LLAMA3 && !strcmp(c.bos, "<|begin_of_text|>"));
	lora_chat_free(&c);
}

TEST(refuses_others_by_name)
{
	static const struct { const char *tpl, *name; } c[] = {
		{ "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}", "llama-2/mistral" },
		{ "{% for m in messages %}<start_of_turn>{{ m.role }}\n{% endfor %}", "gemma" },
		{ "<|start_header_id|>system<|end_header_id|>Cutting Knowledge Date: December 2023<|eot_id|>", "llama-3.1" },
		{ "<|im_start|>{{ m.role }}<think>\n</think><|im_end|>", "qwen3" },
		{ "{% for m in messages %}<|user|>{{ m.content }}{% endfor %}", "zephyr" },
		{ "{% for m in messages %}{{ m.content }}{% endfor %}", "it begins '{% for m in messages %}{{ m.content }}{%'" },
		{ "{%- for m in messages %}\n{{ m.content }}\n{% endfor %}", "it begins '{%- for m in messages %} {{ m.content }}'" },
		{ "", "no chat_template" },
	};
	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
		struct lora_chat ch;
		struct lora_err err = { 0 };
		CHECKF(lora_chat_detect(c[i].tpl, NULL, &ch, &err) < 0, "case %zu accepted", i);
		CHECKF(strstr(err.msg, c[i].name), "case %zu: %s", i, err.msg);
	}
}

TEST(chatml_spans_and_generation_prompt)
{
	struct lora_chat c;
	struct lora_err err = { 0 };
	struct lora_buf b = LORA_BUF_INIT;
	struct lora_span *sp = NULL;
	size_t n = 0;
	const struct lora_chat_msg m[] = { { "user", "Hi" }, { "assistant", "Yo" }, { "user", "Bye" } };

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
	const struct lora_chat_msg m[] = { { "system", " \t sys \n" }, { "assistant", "\xc2\xa0 a b\xe3\x80\x80" } };

	CHECK(lora_chat_by_name("llama3", "<|begin_of_text|>", &c, &err) == 0);
	CHECK(lora_chat_render(&c, m, 2, 0, &b, &sp, &n, &err) == 0);
	CHECKF(!strcmp(b.data, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nsys<|eot_id|>"
			       "<|start_header_id|>assistant<|end_header_id|>\n\na b<|eot_id|>"), "%s", b.data);
	CHECK(n == 1 && sp && !strncmp(b.data + sp[0].start, "a b<|eot_id|>", 13) && sp[0].end == b.len);
	free(sp);
	lora_buf_free(&b);
	CHECK(lora_chat_render(&c, (struct lora_chat_msg[]){ { "bot", "x" } }, 1, 0, &b, NULL, NULL, &err) < 0);
	CHECKF(strstr(err.msg, "role 'bot'"), "%s", err.msg);
	lora_buf_free(&b);
	lora_chat_free(&c);
	CHECK(lora_chat_by_name("vicuna", NULL, &c, &err) < 0 && err.code == LORA_EUSAGE);
}

int main(void)
{
	RUN(detects_families);
	RUN(refuses_others_by_name);
	RUN(chatml_spans_and_generation_prompt);
	RUN(llama3_trims_content_like_jinja);
	return t_done();
}
