/*
 * fuzz_adapter_config.c - libFuzzer target for the adapter_config.json parser.
 *
 *   make fuzz FUZZ_SECONDS=60
 *
 * Each input is the text of an adapter_config.json.  Whatever the parser
 * accepts must be usable: r and alpha positive, every module's rank, alpha
 * and scale (patterns applied) positive and finite, and target matching
 * (list, suffix, or a regular expression from the file) must terminate.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "libadapter/format/peft.h"

#define REQUIRE(c) do { if (!(c)) __builtin_trap(); } while (0)

static const char *const modules[] = {
	"model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj", "model.layers.31.mlp.down_proj",
	"q_proj", "lm_head", "model.embed_tokens", "", "model.layers.0.self_attn.q_proj.lora_A",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct lora_peft_config c;
	struct lora_err err;

	if (lora_peft_config_parse((const char *)data, size, "adapter_config.json", &c, &err) < 0) {
		REQUIRE(err.msg[0]);
		return 0;
	}
	REQUIRE(c.r > 0 && c.lora_alpha > 0);
	REQUIRE(c.peft_type != NULL);
	for (size_t i = 0; i < sizeof(modules) / sizeof(modules[0]); i++) {
		int r;
		double alpha, scale;
		lora_peft_module_params(&c, modules[i], &r, &alpha, &scale);
		REQUIRE(r > 0 && alpha > 0 && scale > 0 && isfinite(scale));
		(void)lora_peft_targets(&c, modules[i]);
	}
	lora_peft_config_free(&c);
	return 0;
}
