#!/bin/bash
# demo_model.sh - the demo's pretrained model (tests/demo/story-llama, made by
# tests/tools/pretrain_demo.py) as lora sees it: it loads, its tokenizer agrees
# with the one that trained it, greedy generation gives the text transformers
# gave (tests/fixtures/gen/demo_greedy.json, written by the same script from the
# saved bf16 weights upcast to fp32), the task data parses, and `lora plan`
# can size a run on it.
. tests/lib.sh

M=tests/demo/story-llama
G=$FIX/gen/demo_greedy.json
json_str() { printf '%s' "$1" | sed -n "s/.*\"$2\": \"\(\([^\"\\\\]\|\\\\.\)*\)\".*/\1/p" | head -1; }

t_case demo_model_greedy_equals_transformers
n=0
while IFS= read -r line || [ -n "$line" ]; do
	prompt=$(json_str "$line" prompt)
	want=$(json_str "$line" text)
	[ -n "$prompt" ] || continue
	n=$((n + 1))
	run "$LORA" generate --base "$M" --prompt "$prompt" --temperature 0 --max-tokens 40 --quant none --json
	expect_rc 0
	got=$(json_str "$OUT" text)
	expect_eq "$got" "$want" "greedy continuation of '$prompt'"
done < <(tr '\n' ' ' <"$G" | sed 's/}, *{/}\n{/g')
[ "$n" -ge 3 ] || t_fail "only $n cases in $G"

t_case demo_model_writes_english
run "$LORA" generate --base "$M" --prompt "Once upon a time" --seed 1 --max-tokens 40
expect_rc 0
case "$OUT" in *" the "*|*" was "*) ;; *) t_fail "no English in: $OUT";; esac

t_case demo_eval_tokens_match_our_tokenizer
# the eval token files came from Hugging Face tokenizers; the first row's ids
# must be what lora tokenize gives for prompt + completion
row=$(head -1 tests/demo/data/task2.eval.jsonl)
p=$(json_str "$row" prompt)
want=$(head -1 tests/demo/data/task2.eval.tokens.jsonl | sed 's/.*"input_ids": \[\([^]]*\)\].*/\1/; s/ //g')
run "$LORA" tokenize --base "$M" --json "$p$(printf '%s' "$row" | sed 's/.*"completion": "\(.*\)"}$/\1/; s/\\"/"/g')"
expect_rc 0
got=$(printf '%s' "$OUT" | sed 's/.*"ids": \[\([^]]*\)\].*/\1/; s/ //g')
expect_eq "$got,0" "$want" "ids of the first task2 eval row (+ EOS)"

t_case demo_eval_runs
for t in task1 task2; do
	run "$LORA" eval --base "$M" --tokens tests/demo/data/$t.eval.tokens.jsonl --json
	expect_rc 0
	expect_out '"loss"'
done

t_case demo_plan_cpu
run "$LORA" plan --base "$M" --device cpu --rank 8 --batch 8 --seq-len 64 --json
expect_rc 0
expect_out '"tied_embeddings": true'

t_end
