#!/bin/bash
# families_eval.sh - `lora eval` on each family's tiny model against transformers + peft
# (tests/oracle/families.py wrote tests/fixtures/families/eval.expect.json: the token-weighted
# mean loss of tests/fixtures/train/eval.jsonl with and without the model's PEFT adapter, weights
# as stored and through bitsandbytes' NF4 round trip).
. tests/lib.sh

F=$FIX/families
close_rel() {
	awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = a - b; if (d < 0) d = -d; m = b < 0 ? -b : b; exit !(d <= t * m) }'
}

# Both sides sum 31 fp32 cross-entropies from logits that agree to 1e-5 (test_train_model.c)
# on losses of ~5: the mean agrees to ~1e-6 relative; we hold it to 1e-5.
for m in qwen3 llama32_tied phi3 gemma2 gemma3; do
	for q in none nf4; do
		for a in base adapter; do
			t_case "eval_${m}_${q}_${a}_matches_transformers_peft"
			args=(eval --base "$F/$m" --tokens "$FIX/train/eval.jsonl" --quant $q --json --threads 1)
			[ $a = adapter ] && args+=(--adapter "$F/$m.adapter")
			run "$LORA" "${args[@]}"
			expect_rc 0
			want=$(jq -r ".$m.\"$q.$a\".loss" "$F/eval.expect.json")
			got=$(printf '%s' "$OUT" | jq -r .loss)
			[ -n "$want" ] && [ "$want" != null ] || t_fail "no expected loss for $m $q.$a"
			close_rel "$got" "$want" 1e-5 || t_fail "loss $got, transformers+peft $want"
			expect_eq "$(printf '%s' "$OUT" | jq -r .tokens)" "$(jq -r ".$m.\"$q.$a\".tokens" "$F/eval.expect.json")" tokens
		done
	done
done

t_end
