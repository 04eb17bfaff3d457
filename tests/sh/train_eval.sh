#!/bin/bash
# train_eval.sh - `lora eval` against transformers + peft (tests/oracle/train_model.py wrote
# tests/fixtures/train/eval.expect.json: the token-weighted mean loss of eval.jsonl on
# llama_tied with and without its PEFT adapter, with the weights as stored and with
# bitsandbytes' NF4 round trip, and the logits of each row).
. tests/lib.sh

F=$FIX/train
# expected value of KEY ("none.adapter", ...) and field from eval.expect.json
expect() {
	awk -v k="\"$1\"" -v f="\"$2\"" '$1 == k":" { inside = 1 } inside && $1 == f":" { gsub(/,/, "", $2); print $2; exit }' "$F/eval.expect.json"
}
# |a - b| <= tol * |b|
close_rel() {
	awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = a - b; if (d < 0) d = -d; m = b < 0 ? -b : b; exit !(d <= t * m) }'
}
json_field() { printf '%s' "$OUT" | sed -n "s/.*\"$1\": *\([^,}]*\).*/\1/p"; }

# Both sides sum fp32 cross-entropies of 31 tokens from logits that agree to ~1e-6
# (see test_train_model.c); 1e-4 relative on the mean leaves a wide margin.
for q in none nf4; do
	for a in base adapter; do
		t_case "eval_${q}_${a}_matches_transformers_peft"
		args=(eval --base "$F/llama_tied" --tokens "$F/eval.jsonl" --quant $q --json)
		[ $a = adapter ] && args+=(--adapter "$F/llama_tied.adapter")
		run "$LORA" "${args[@]}"
		expect_rc 0
		want=$(expect "$q.$a" loss)
		got=$(json_field loss)
		[ -n "$want" ] || t_fail "no expected loss for $q.$a"
		close_rel "$got" "$want" 1e-4 || t_fail "loss $got, transformers+peft $want"
		expect_eq "$(json_field tokens)" "$(expect "$q.$a" tokens)" tokens
		expect_eq "$(json_field rows)" 4 rows
		ppl=$(json_field perplexity)
		close_rel "$ppl" "$(awk -v l="$got" 'BEGIN { printf "%.17g", exp(l) }')" 1e-12 ||
			t_fail "perplexity $ppl is not exp(loss)"
		[ "$(printf '%s\n' "$OUT" | wc -l)" = 1 ] || t_fail "--json printed more than one line"
	done
done

t_case eval_adapter_changes_the_loss
run "$LORA" eval --base "$F/llama_tied" --tokens "$F/eval.jsonl" --quant none --json
l0=$(json_field loss)
run "$LORA" eval --base "$F/llama_tied" --tokens "$F/eval.jsonl" --quant none --json --adapter "$F/llama_tied.adapter"
l1=$(json_field loss)
[ "$l0" != "$l1" ] || t_fail "the adapter made no difference ($l0)"

t_case eval_stored_adapter_by_ref
run "$LORA" keygen
expect_rc 0
run "$LORA" import "$F/llama_tied.adapter" --name tied:v1
expect_rc 0
run "$LORA" eval --base "$F/llama_tied" --tokens "$F/eval.jsonl" --quant none --json --adapter tied:v1
expect_rc 0
close_rel "$(json_field loss)" "$(expect none.adapter loss)" 1e-4 || t_fail "stored adapter: loss $(json_field loss)"
run "$LORA" eval --base "$F/llama_tied" --tokens "$F/eval.jsonl" --adapter tied:v9
expect_rc 1
expect_err "tied:v9"

t_case eval_text_output
run "$LORA" eval --base "$F/llama_tied" --tokens "$F/eval.jsonl" --quant none
expect_rc 0
expect_out "perplexity"
expect_out "tokens      31"

t_case eval_dump_logits_match_transformers
run "$LORA" eval --base "$F/llama_tied" --tokens "$F/eval.jsonl" --quant none --dump-logits "$T/logits.safetensors"
expect_rc 0
# same tensors in the same order: compare the data sections as fp32 values
n=$(( (9 + 16 + 4 + 12) * 128 * 4 ))
if [ -f "$T/logits.safetensors" ]; then
	paste <(tail -c $n "$T/logits.safetensors" | od -An -v -tf4 -w4) \
	      <(tail -c $n "$F/eval.logits.safetensors" | od -An -v -tf4 -w4) >"$T/pairs"
	# logits agree to ~1e-6 (fp32 summation order); 1e-4 absolute as asked for the forward
	bad=$(awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 1e-4) n++ } END { print n + 0 }' "$T/pairs")
	lines=$(wc -l <"$T/pairs")
	expect_eq "$lines" $(( n / 4 )) "logit count"
	expect_eq "$bad" 0 "logits off by more than 1e-4"
	"$LORA" inspect "$T/logits.safetensors" --json | grep -q '"name":"logits.3","dtype":"F32","shape":\[12,128\]' ||
		t_fail "logits.3 is not F32 [12, 128]"
else
	t_fail "no logits file"
fi

t_case eval_usage_errors
run "$LORA" eval --tokens "$F/eval.jsonl"
expect_rc 2
expect_err "--base"
run "$LORA" eval --base "$F/llama_tied" --tokens "$F/eval.jsonl" --quant int8
expect_rc 2
expect_err "int8"

t_case eval_bad_rows
printf '{"input_ids": [1, 2, 3]}\n{"input_ids": [1, 2, 999]}\n' >"$T/bad.jsonl"
run "$LORA" eval --base "$F/llama_tied" --tokens "$T/bad.jsonl"
expect_rc 1
expect_err "line 2"
printf '{"input_ids": [1, 2, 3], "labels": [1, 2]}\n' >"$T/bad2.jsonl"
run "$LORA" eval --base "$F/llama_tied" --tokens "$T/bad2.jsonl"
expect_rc 1
expect_err "2 labels for 3 input_ids"
printf '{"input_ids": [5], "labels": [-100]}\n' >"$T/none.jsonl"
run "$LORA" eval --base "$F/llama_tied" --tokens "$T/none.jsonl"
expect_rc 1
expect_err "no labelled tokens"

t_case eval_bad_model_and_adapter
run "$LORA" eval --base "$T" --tokens "$F/eval.jsonl"
expect_rc 1
expect_err ""
run "$LORA" eval --base "$F/llama_tied" --tokens "$F/eval.jsonl" --adapter "$F/qwen2.adapter"
expect_rc 1
expect_err "adapter"
t_end
