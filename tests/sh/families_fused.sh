#!/bin/bash
# families_fused.sh - Phi-3's fused linears through the commands that go by module name: an
# adapter on qkv_proj / gate_up_proj (tests/oracle/families.py, saved by peft) merged, swapped
# to another weight and back to the base byte for byte, diffed, and trained by `lora train`.
. tests/lib.sh
B=$FIX/families/phi3
A=$FIX/families/phi3.adapter

data_of() {
	local n
	n=$(od -An -tu8 -N8 "$1" | tr -d ' ')
	tail -c +$((9 + n)) "$1"
}

t_case phi3_merge_changes_exactly_the_fused_linears
run "$LORA" merge --base "$B" "$A" -o "$T/m"; expect_rc 0
expect_out "merged 1 adapter"
run "$LORA" merge --base "$B" "$A@0.5" -o "$T/half"; expect_rc 0
grep -q 'qkv_proj' "$T/m/lora-merge.json" || t_fail "the record does not name qkv_proj"
grep -q 'gate_up_proj' "$T/m/lora-merge.json" || t_fail "the record does not name gate_up_proj"
cmp -s <(data_of "$B/model.safetensors") <(data_of "$T/m/model.safetensors") &&
	t_fail "merging changed nothing"

t_case phi3_swap_to_another_weight_equals_a_fresh_merge
run "$LORA" swap "$T/m" "$A@0.5"; expect_rc 0
cmp -s "$T/m/model.safetensors" "$T/half/model.safetensors" || t_fail "swap differs from a fresh merge"

t_case phi3_swap_none_gives_the_base
run "$LORA" swap "$T/m" --none; expect_rc 0
cmp -s <(data_of "$B/model.safetensors") <(data_of "$T/m/model.safetensors") ||
	t_fail "tensors differ from the base"

t_case phi3_diff_goes_module_by_module
run "$LORA" diff "$A" "$A" --json; expect_rc 0
expect_out "qkv_proj"
expect_out "gate_up_proj"

t_case phi3_train_targets_the_fused_linears
run "$LORA" keygen --name fam@test; expect_rc 0
run "$LORA" train --base "$B" --data "$FIX/loop/peft_train.jsonl" --name phi:t --rank 2 --steps 2 \
	--batch 1 --seq-len 16 --targets qkv_proj,down --quant nf4 --threads 1; expect_rc 0
run "$LORA" export phi:t --format peft -o "$T/ad"; expect_rc 0
grep -q '"qkv_proj"' "$T/ad/adapter_config.json" || t_fail "adapter_config lacks qkv_proj"
grep -q '"q_proj"' "$T/ad/adapter_config.json" && t_fail "adapter_config names q_proj on Phi-3"
run "$LORA" merge --base "$B" "$T/ad" -o "$T/m2"; expect_rc 0

t_end
