/*
 * fuzz_jinja.c - libFuzzer target for chat templates (train/jinja.c): a template is
 * hostile input (it comes with any model folder), so every input must parse or fail
 * with a message, and every parsed one must render or fail within the limits given
 * here (depth, steps, output, memory), on a conversation with a system turn, two
 * user/assistant rounds, tools and the usual variables.  Seeds: the templates of
 * tests/fixtures/jinja/chat.json.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "train/jinja.h"

static const char vars_json[] =
	"{\"messages\": ["
	"{\"role\": \"system\", \"content\": \"You are brief.\"},"
	"{\"role\": \"user\", \"content\": \"Hi <b>there</b> \\u00e9\"},"
	"{\"role\": \"assistant\", \"content\": \"Hello.\", \"reasoning_content\": \"think\"},"
	"{\"role\": \"user\", \"content\": \"What is 2+2?\"},"
	"{\"role\": \"assistant\", \"content\": null, \"tool_calls\": [{\"type\": \"function\","
	" \"function\": {\"name\": \"add\", \"arguments\": {\"a\": 2, \"b\": 2}}}]}],"
	"\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"add\", \"description\": \"adds\","
	" \"parameters\": {\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}}}}}],"
	"\"bos_token\": \"<s>\", \"eos_token\": \"</s>\", \"add_generation_prompt\": true,"
	"\"enable_thinking\": false}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static cJSON *vars;
	const struct lora_jinja_limits lim = { .max_depth = 64, .max_steps = 200000,
					       .max_output = 1 << 20, .max_memory = 16 << 20 };
	struct lora_jinja *t = NULL;
	struct lora_err err = { 0 };
	struct lora_buf out = LORA_BUF_INIT;
	struct tm now = { .tm_year = 126, .tm_mon = 11, .tm_mday = 4 };
	size_t *gen = NULL, n_gen = 0;

	if (!vars && !(vars = cJSON_Parse(vars_json)))
		abort();
	if (lora_jinja_parse((const char *)data, size, &lim, &t, &err) < 0) {
		if (!err.msg[0])
			abort();   /* an error always says what */
		return 0;
	}
	if (lora_jinja_render(t, vars, &now, &out, &gen, &n_gen, &err) < 0) {
		if (!err.msg[0])
			abort();
	} else {
		if (out.len > lim.max_output)
			abort();
		for (size_t i = 0; i < n_gen; i++)
			if (gen[2 * i] > gen[2 * i + 1] || gen[2 * i + 1] > out.len)
				abort();   /* spans lie inside the output */
	}
	free(gen);
	lora_buf_free(&out);
	lora_jinja_free(t);
	return 0;
}
