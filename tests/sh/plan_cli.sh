#!/bin/bash
# plan_cli.sh - `lora plan` on the command line: usage errors, text and JSON
# output for a config alone and for a model folder, --gpu-mem.  The figures
# themselves are checked in tests/unit/test_plan.c (against a measured step
# and hand counts).
. tests/lib.sh

CFG=$FIX/plan/llama3_8b_config.json
json_field() { printf '%s' "$OUT" | sed -n "s/.*\"$1\": *\([^,}]*\).*/\1/p" | head -1; }

t_case plan_needs_base_or_config
run "$LORA" plan
expect_rc 2; expect_err "--base DIR or --config FILE"
run "$LORA" plan --base "$FIX/train/llama_tied" --config "$CFG"
expect_rc 2; expect_err "one of them"

t_case plan_bad_options
for bad in "--quant nf8" "--device tpu" "--rank 0" "--batch x" "--gpu-mem -1" "--targets q_proj,lm_head"; do
	# shellcheck disable=SC2086
	run "$LORA" plan --config "$CFG" $bad
	expect_rc 2; expect_err ""
done

t_case plan_unsupported_architecture
printf '{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 100}\n' >"$T/gpt2.json"
run "$LORA" plan --config "$T/gpt2.json"
expect_rc 1; expect_err "GPT2LMHeadModel"
run "$LORA" plan --config "$T/missing.json"
expect_rc 1; expect_err "missing.json"

t_case plan_llama3_8b_text
run "$LORA" plan --config "$CFG" --gpu-mem 24
expect_rc 0
expect_out "8.03 B parameters"
expect_out "41.9 M LoRA parameters"
expect_out "QLoRA *"
expect_out "fits in 24 GiB"
expect_out "an estimate"
[ -z "$ERR" ] || t_fail "stderr: $ERR"

t_case plan_llama3_8b_json
run "$LORA" plan --config "$CFG" --rank 64 --seq-len 1024 --batch 1 --grad-checkpoint --gpu-mem 48 --json
expect_rc 0
[ "$(printf '%s\n' "$OUT" | wc -l)" = 1 ] || t_fail "--json printed more than one line"
# r 64 on all seven linears of 32 layers: 64·(4·4096+... ) = 167,772,160 parameters
expect_eq "$(json_field lora_parameters)" 167772160 lora_parameters
expect_eq "$(json_field parameters)" 8030261248 parameters
expect_eq "$(json_field seq_len)" 1024 seq_len
expect_eq "$(json_field selected)" '"qlora"' selected
expect_out '"max_seq_len"'
if command -v jq >/dev/null; then
	printf '%s' "$OUT" | jq -e '.columns.qlora.total > .columns.qlora.total_paged and
		.columns.full.total > .columns.lora.total and .columns.lora.total > .columns.qlora.total and
		.columns.qlora.fits == true and .columns.full.fits == false and .columns.full.fits_paged == true' >/dev/null ||
		t_fail "JSON does not hold together: $OUT"
else
	echo "  (jq not installed: JSON structure not checked)"
fi

t_case plan_train_options_accepted
run "$LORA" plan --config "$CFG" --data d.jsonl --name x:y --lr 1e-4 --steps 10 --resume --threads 2 --no-checkpointing --no-paged
expect_rc 0
expect_out "checkpointing off"

t_case plan_model_folder_cpu
run "$LORA" plan --base "$FIX/train/llama_tied" --device cpu --batch 2 --seq-len 16 --gpu-mem 1
expect_rc 0
expect_out "tied embeddings"
expect_out "measured by the tests"
expect_out "largest --batch at 16 tokens"

t_case plan_nothing_fits
run "$LORA" plan --config "$CFG" --gpu-mem 1 --json
expect_rc 0
expect_out '"fits": false, "fits_paged": false, "max_seq_len": 0, "max_batch": 0}, "lora"'

t_end
