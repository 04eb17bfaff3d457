#!/bin/bash
# gen_cli.sh - `lora generate` on the command line: chat templates, greedy and
# seeded sampling, stop reasons, adapters from a folder and from the store.
# The numbers (cached steps vs full forward, greedy vs transformers) are
# checked in tests/unit/test_generate.c; here, what the command does with them.
. tests/lib.sh

MK=${LORA_TOOLS:-build/tools}/mktiny
json_field() { printf '%s' "$OUT" | sed -n "s/.*\"$1\": *\(\"[^\"]*\"\|[^,}]*\).*/\1/p" | head -1; }

# Random Llama models wearing the ChatML and Llama-3 fixture tokenizers.
for t in chatml llama3 gpt2; do
	"$MK" model "$T/$t" --hidden 64 --inter 128 --layers 2 --heads 4 --kv-heads 2 --vocab 760 --seed 5 >/dev/null ||
		echo "mktiny failed" >&2
	cp "$FIX/tok/$t/tokenizer.json" "$FIX/tok/$t/tokenizer_config.json" "$T/$t/"
done
"$MK" adapter "$T/ad" --base "$T/chatml" --targets all-linear --r 4 --alpha 8 --seed 9 >/dev/null

t_case gen_usage
run "$LORA" generate --prompt hi
expect_rc 2; expect_err "--base DIR and --prompt TEXT"
run "$LORA" generate --base "$T/chatml" --prompt hi --temperature -1
expect_rc 2; expect_err "--temperature"
run "$LORA" generate --base "$T/chatml" --prompt hi --quant int8
expect_rc 2; expect_err "nf4 or none"
run "$LORA" generate --base "$T/chatml" --prompt hi extra
expect_rc 2; expect_err "unexpected argument"

t_case gen_chat_template_used
run "$LORA" generate --base "$T/chatml" --prompt "hello there" --max-tokens 5 --json
expect_rc 0
expect_eq "$(json_field chat)" '"chatml"' chat
# <|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n is more than the 3 tokens of the text
pt=$(json_field prompt_tokens)
[ "${pt:-0}" -gt 6 ] || t_fail "chat prompt has only $pt tokens"
run "$LORA" generate --base "$T/llama3" --prompt "hello there" --max-tokens 5 --json
expect_rc 0
expect_eq "$(json_field chat)" '"llama3"' chat
run "$LORA" generate --base "$T/chatml" --prompt "hello there" --max-tokens 5 --json --no-chat
expect_rc 0
expect_eq "$(json_field chat)" null chat
[ "$(json_field prompt_tokens)" -lt "$pt" ] || t_fail "--no-chat prompt is not shorter"
run "$LORA" generate --base "$T/gpt2" --prompt "hello" --chat
expect_rc 1; expect_err "no chat template"

t_case gen_system_message_through_the_template
# a system turn (<|im_start|>system\nbe brief<|im_end|>\n) before the user's: more than 3 more tokens
run "$LORA" generate --base "$T/chatml" --system "be brief" --prompt "hello there" --max-tokens 5 --json
expect_rc 0
[ "$(json_field prompt_tokens)" -gt $((pt + 3)) ] || t_fail "--system added only $(( $(json_field prompt_tokens) - pt )) tokens"
run "$LORA" generate --base "$T/chatml" --system "be brief" --prompt "hello there" --no-chat
expect_rc 1; expect_err "--system needs a chat template"
run "$LORA" generate --base "$T/gpt2" --system "be brief" --prompt "hello"
expect_rc 1; expect_err "--system needs a chat template"

t_case gen_greedy_is_deterministic
run "$LORA" generate --base "$T/gpt2" --prompt "The cat" --temperature 0 --max-tokens 12 --json
expect_rc 0
a=$OUT
run "$LORA" generate --base "$T/gpt2" --prompt "The cat" --temperature 0 --max-tokens 12 --json
expect_eq "$OUT" "$a" "two greedy runs"
n=$(json_field tokens); stop=$(json_field stop)
[ "$n" -le 12 ] || t_fail "$n tokens for --max-tokens 12"
case "$stop" in '"eos"'|'"max_tokens"') ;; *) t_fail "stop is $stop";; esac
[ "$stop" != '"max_tokens"' ] || [ "$n" = 12 ] || t_fail "stopped at max_tokens after $n"

t_case gen_seeded_sampling
run "$LORA" generate --base "$T/gpt2" --prompt "The cat" --temperature 1.5 --top-p 1 --max-tokens 16 --seed 3 --json
s3=$OUT
run "$LORA" generate --base "$T/gpt2" --prompt "The cat" --temperature 1.5 --top-p 1 --max-tokens 16 --seed 3 --json
expect_eq "$OUT" "$s3" "same seed"
run "$LORA" generate --base "$T/gpt2" --prompt "The cat" --temperature 1.5 --top-p 1 --max-tokens 16 --seed 4 --json
[ "$OUT" != "$s3" ] || t_fail "seeds 3 and 4 gave the same text"

t_case gen_streams_text
run "$LORA" generate --base "$T/gpt2" --prompt "The cat" --temperature 0 --max-tokens 12
expect_rc 0
want=$(printf '%s' "$a" | sed -n 's/.*"text": "\([^"]*\)".*/\1/p')
case "$want" in *\\*) ;; *) expect_eq "$OUT" "$want" "streamed text vs --json text";; esac

t_case gen_adapter_folder_and_store
run "$LORA" generate --base "$T/chatml" --prompt "hi" --temperature 0 --max-tokens 10 --quant none --json
base_out=$(json_field text)
run "$LORA" generate --base "$T/chatml" --adapter "$T/ad" --prompt "hi" --temperature 0 --max-tokens 10 --quant none --json
expect_rc 0
folder_out=$(json_field text)
[ "$folder_out" != "$base_out" ] || t_fail "the adapter changed nothing: $folder_out"
run "$LORA" keygen --name tester
expect_rc 0
run "$LORA" import "$T/ad" --name ad:v1
expect_rc 0
run "$LORA" generate --base "$T/chatml" --adapter ad:v1 --prompt "hi" --temperature 0 --max-tokens 10 --quant none --json
expect_rc 0
expect_eq "$(json_field text)" "$folder_out" "stored adapter vs folder"
run "$LORA" generate --base "$T/chatml" --adapter nosuch:v9 --prompt "hi"
expect_rc 1; expect_err "nosuch"
"$MK" model "$T/small" --hidden 32 --inter 64 --layers 2 --heads 2 --kv-heads 1 --vocab 760 >/dev/null
cp "$FIX/tok/gpt2/tokenizer.json" "$FIX/tok/gpt2/tokenizer_config.json" "$T/small/"
run "$LORA" generate --base "$T/small" --adapter "$T/ad" --prompt "hi"
expect_rc 1; expect_err "the model's layer is"

t_case gen_missing_tokenizer
mkdir -p "$T/notok" && cp "$T/gpt2/config.json" "$T/gpt2/model.safetensors" "$T/notok/"
run "$LORA" generate --base "$T/notok" --prompt hi
expect_rc 1; expect_err "tokenizer.json"

t_case gen_stops_at_generation_config_eos_ids
# generation_config.json's eos_token_id list ends the answer at any of its ids;
# with every id of the tokenizer listed, not one token is generated.
"$MK" model "$T/gcfg" --hidden 64 --inter 128 --layers 2 --heads 4 --kv-heads 2 --vocab 751 --seed 5 >/dev/null
cp "$FIX/tok/gpt2/tokenizer.json" "$FIX/tok/gpt2/tokenizer_config.json" "$T/gcfg/"
run "$LORA" generate --base "$T/gcfg" --prompt "The cat" --temperature 0 --max-tokens 5 --json
expect_rc 0
expect_eq "$(json_field stop)" '"max_tokens"' "without a generation config"
{ printf '{"eos_token_id": ['; seq -s, 0 750 | tr -d '\n'; printf ']}\n'; } >"$T/gcfg/generation_config.json"
run "$LORA" generate --base "$T/gcfg" --prompt "The cat" --temperature 0 --max-tokens 5 --json
expect_rc 0
expect_eq "$(json_field tokens)" 0 tokens
expect_eq "$(json_field stop)" '"eos"' stop

t_end
