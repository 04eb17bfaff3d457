#!/bin/bash
# merge_swap.sh - lora swap against fresh merges: after each step the folder is
# byte-identical to `lora merge` of the same set (the base's tensors after --none).
. tests/lib.sh
B=$FIX/merge/base_bf16
A1=$FIX/merge/ad_plain
A2=$FIX/merge/ad_pattern

# same_dir X Y: the same file names and bytes
same_dir() {
	local a b
	a=$(cd "$1" && ls -A | sort | tr '\n' ' ')
	b=$(cd "$2" && ls -A | sort | tr '\n' ' ')
	[ "$a" = "$b" ] || { t_fail "files differ: [$a] vs [$b]"; return; }
	for f in $a; do cmp -s "$1/$f" "$2/$f" || t_fail "$1/$f differs from $2/$f${3:+ ($3)}"; done
}

# data_of FILE: the tensor bytes of a safetensors file (after 8 + header length)
data_of() {
	local n
	n=$(od -An -tu8 -N8 "$1" | tr -d ' ')
	tail -c +$((9 + n)) "$1"
}

t_case merge_fresh_references
run "$LORA" merge --base "$B" "$A1" -o "$T/fa"; expect_rc 0
run "$LORA" merge --base "$B" "$A2" -o "$T/fb"; expect_rc 0
run "$LORA" merge --base "$B" "$A1@1" "$A2@0.5" -o "$T/fab"; expect_rc 0
expect_out "merged 2 adapters"
cmp -s "$T/fa/model-00001-of-00002.safetensors" "$T/fb/model-00001-of-00002.safetensors" &&
	t_fail "two different adapters gave the same shard"

t_case swap_a_to_b_matches_fresh_merge
run "$LORA" merge --base "$B" "$A1" -o "$T/m"; expect_rc 0
same_dir "$T/m" "$T/fa" "merge is deterministic"
run "$LORA" swap "$T/m" "$A2"; expect_rc 0
expect_out "swapped 1 adapter"
same_dir "$T/m" "$T/fb"

t_case swap_to_weighted_pair_matches_fresh_merge
run "$LORA" swap "$T/m" "$A1@1" "$A2@0.5"; expect_rc 0
same_dir "$T/m" "$T/fab"

t_case swap_none_gives_base_tensors
run "$LORA" swap "$T/m" --none; expect_rc 0
expect_out "removed the adapters"
for f in model-00001-of-00002.safetensors model-00002-of-00002.safetensors; do
	cmp -s <(data_of "$B/$f") <(data_of "$T/m/$f") || t_fail "$f: tensors differ from the base"
done
grep -q '"adapters": \[\]' "$T/m/lora-merge.json" || t_fail "lora-merge.json still lists adapters"
# Same folder whatever the history: merge B, then --none.
run "$LORA" merge --base "$B" "$A2" -o "$T/m2"; expect_rc 0
run "$LORA" swap "$T/m2" --none; expect_rc 0
same_dir "$T/m" "$T/m2" "--none after different sets"
cmp -s "$B/config.json" "$T/m/config.json" || t_fail "config.json changed"

t_case swap_back_from_none
run "$LORA" swap "$T/m" "$A1"; expect_rc 0
same_dir "$T/m" "$T/fa"

t_case swap_with_explicit_base_copy
cp -r "$B" "$T/basecopy"
run "$LORA" swap "$T/m" "$A2" --base "$T/basecopy"; expect_rc 0
# The record now names the base it was computed from; tensors are those of a fresh merge.
for f in model-00001-of-00002.safetensors model-00002-of-00002.safetensors; do
	cmp -s <(data_of "$T/fb/$f") <(data_of "$T/m/$f") || t_fail "$f: tensors differ from a fresh merge"
done
grep -q "\"path\": \"$T/basecopy\"" "$T/m/lora-merge.json" || t_fail "record does not name the base used"

t_case swap_refuses_another_base
"$LORA_TOOLS/mktiny" model "$T/other" --hidden 64 --inter 96 --layers 2 --heads 4 --kv-heads 2 \
	--vocab 96 --seed 7 >/dev/null
cp -r "$T/m" "$T/m.before"
run "$LORA" swap "$T/m" "$A1" --base "$T/other"; [ "$RC" != 0 ] || t_fail "swap with another base succeeded"
expect_err "is not the base"
same_dir "$T/m" "$T/m.before" "a refused swap changed the folder"

t_case swap_refuses_unmerged_folder
run "$LORA" swap "$B" "$A1"; expect_rc 1
expect_err "was not written by lora merge"

t_case swap_usage
run "$LORA" swap "$T/m"; expect_rc 2
run "$LORA" swap "$T/m" --none "$A1"; expect_rc 2

t_case swap_drift_without_base
cp -r "$B" "$T/gone"
run "$LORA" merge --base "$T/gone" "$A1" -o "$T/d"; expect_rc 0
rm -rf "$T/gone"
run "$LORA" swap "$T/d" "$A2"; expect_rc 0
case "$ERR" in *"warning: base"*"not bit-exact"*) ;; *) t_fail "no drift warning: $ERR";; esac
grep -q '"drift": 1' "$T/d/lora-merge.json" || t_fail "drift not recorded"
run "$LORA" swap "$T/d" "$A2" --base "$B"; expect_rc 0
for f in model-00001-of-00002.safetensors model-00002-of-00002.safetensors; do
	cmp -s <(data_of "$T/fb/$f") <(data_of "$T/d/$f") || t_fail "$f: exact swap did not remove the drift"
done
grep -q '"drift"' "$T/d/lora-merge.json" && t_fail "drift still recorded after an exact swap"

t_case swap_with_store_refs_and_packages
run "$LORA" keygen --name swap@example.com; expect_rc 0
run "$LORA" import "$A1" --name plain:v1 --base "$B"; expect_rc 0
run "$LORA" import "$A2" --name pattern:v1 --base "$B"; expect_rc 0
run "$LORA" export pattern:v1 -o "$T/pattern.lora"; expect_rc 0
run "$LORA" merge --base "$B" plain:v1 -o "$T/s"; expect_rc 0
run "$LORA" merge --base "$B" "$T/pattern.lora" -o "$T/sp"; expect_rc 0
run "$LORA" swap "$T/s" "$T/pattern.lora"; expect_rc 0
same_dir "$T/s" "$T/sp"
# Drift mode finds a stored adapter again by its digest, even after its tag moved.
cp -r "$B" "$T/gone2"
run "$LORA" merge --base "$T/gone2" plain:v1 -o "$T/sd"; expect_rc 0
run "$LORA" tag plain:v1 plain:old; expect_rc 0
run "$LORA" import "$A2" --name plain:v1 --base "$B"; expect_rc 0
rm -rf "$T/gone2"
run "$LORA" swap "$T/sd" --none; expect_rc 0
grep -q '"drifted"' "$T/sd/lora-merge.json" || t_fail "tensors left with drift are not recorded"
run "$LORA" swap "$T/sd" "$A2" --base "$B"; expect_rc 0
grep -q '"drift' "$T/sd/lora-merge.json" && t_fail "drift still recorded after an exact swap"
for f in model-00001-of-00002.safetensors model-00002-of-00002.safetensors; do
	cmp -s <(data_of "$T/fb/$f") <(data_of "$T/sd/$f") || t_fail "$f: differs from a fresh merge"
done

t_case swap_leaves_no_journal
left=$( (ls -A "$T/m"; ls -A "$T/d") | grep -v '^\(config.json\|lora-merge.json\|model.*\)$')
[ -z "$left" ] || t_fail "leftover files: $left"
true
t_end
