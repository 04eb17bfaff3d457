#!/bin/bash
# merge_bad.sh - lora merge refuses bad input with one clear line, a non-zero
# exit, and nothing left behind (no OUTDIR, no hidden staging folder).
. tests/lib.sh
B=$FIX/merge/base_bf16
A1=$FIX/merge/ad_plain
MK=$LORA_TOOLS/mktiny

# nothing_left DIR NAME: neither DIR/NAME nor DIR/.NAME.lora-merge-* exists
nothing_left() {
	[ ! -e "$1/$2" ] || t_fail "$1/$2 was left behind"
	ls -A "$1" | grep -q "^\.$2\.lora-merge-" && t_fail "staging folder left in $1: $(ls -A "$1")"
	true
}

t_case bad_fingerprint_another_base
# A stored adapter records the fingerprint of the base it was made for.
run "$LORA" keygen --name merge@example.com; expect_rc 0
run "$LORA" import "$A1" --name plain:v1 --base "$B"; expect_rc 0
# Same shapes, other weights.
"$MK" model "$T/other" --hidden 64 --inter 96 --layers 2 --heads 4 --kv-heads 2 --vocab 96 --seed 9 >/dev/null
run "$LORA" merge --base "$T/other" plain:v1 -o "$T/out"; expect_rc 3
expect_err "was made for another base"
nothing_left "$T" out
run "$LORA" merge --base "$T/other" plain:v1 -o "$T/out" --force; expect_rc 0
case "$ERR" in *"warning: 1 adapter was made for another base"*) ;; *) t_fail "no --force warning: $ERR";; esac
rm -rf "$T/out"
run "$LORA" merge --base "$B" plain:v1 -o "$T/out"; expect_rc 0
grep -q '"ref": "plain:v1"' "$T/out/lora-merge.json" || t_fail "store ref not recorded"
rm -rf "$T/out"

t_case bad_module_missing_from_base
"$MK" model "$T/b3" --hidden 64 --inter 96 --layers 3 --heads 4 --kv-heads 2 --vocab 96 >/dev/null
"$MK" adapter "$T/ad3" --base "$T/b3" --targets q_proj,v_proj >/dev/null
run "$LORA" merge --base "$B" "$T/ad3" -o "$T/out"; expect_rc 1
expect_err "targets 'model.layers.2.self_attn.q_proj', which base"
nothing_left "$T" out

t_case bad_shape_mismatch
"$MK" model "$T/b32" --hidden 32 --inter 96 --layers 2 --heads 4 --kv-heads 2 --vocab 96 >/dev/null
"$MK" adapter "$T/ad32" --base "$T/b32" --targets q_proj,v_proj >/dev/null
run "$LORA" merge --base "$B" "$T/ad32" -o "$T/out"; expect_rc 1
expect_err "shape mismatch"
nothing_left "$T" out

t_case bad_pickle_base
mkdir -p "$T/pk"
cp "$B/config.json" "$T/pk/"
printf '\x80\x02}q\x00.' >"$T/pk/pytorch_model.bin"
run "$LORA" merge --base "$T/pk" "$A1" -o "$T/out"; expect_rc 1
expect_err "pickle"
nothing_left "$T" out

t_case bad_output_exists
mkdir -p "$T/exists"
echo keep >"$T/exists/file"
run "$LORA" merge --base "$B" "$A1" -o "$T/exists"; expect_rc 1
expect_err "already exists"
[ "$(cat "$T/exists/file")" = keep ] && [ "$(ls -A "$T/exists")" = file ] || t_fail "existing folder touched"
ls -A "$T" | grep -q '^\.exists\.lora-merge-' && t_fail "staging folder left"

t_case bad_adapter_path
run "$LORA" merge --base "$B" "$T/nope" -o "$T/out"; expect_rc 1
expect_err "no adapter folder, .lora file or stored adapter"
run "$LORA" merge --base "$B" nope:v1 -o "$T/out"; expect_rc 1
expect_err "no adapter 'nope:v1'"
nothing_left "$T" out

t_case bad_usage
run "$LORA" merge "$A1" -o "$T/out"; expect_rc 2
expect_err "--base"
run "$LORA" merge --base "$B" "$A1"; expect_rc 2
run "$LORA" merge --base "$B" -o "$T/out"; expect_rc 2
run "$LORA" merge --base "$B" "$A1" -o "$T/out" --dtype fp8; expect_rc 2
expect_err "--dtype"
run "$LORA" merge --base "$B" "$A1" -o "$T/out" --device tpu; expect_rc 2
nothing_left "$T" out

t_case cuda_without_cuda_is_a_clear_error
if "$LORA" --version | grep -q "cpu only"; then
	run "$LORA" merge --base "$B" "$A1" -o "$T/out" --device cuda; expect_rc 1
	expect_err "no CUDA plugin"
else
	run "$LORA" merge --base "$B" "$A1" -o "$T/out" --device cuda
	if [ "$RC" != 0 ]; then expect_rc 1; expect_err "cuda"; fi
fi
[ "$RC" = 0 ] || nothing_left "$T" out
rm -rf "$T/out"

t_case full_disk_during_merge
# A 96 KiB tmpfs: config.json fits, the first shard (116 KiB) does not.
mkdir -p "$T/small"
if mount -t tmpfs -o size=96k tmpfs "$T/small" 2>/dev/null; then
	run "$LORA" merge --base "$B" "$A1" -o "$T/small/out"; expect_rc 1
	expect_err "no space left on device"
	nothing_left "$T/small" out
	[ -z "$(ls -A "$T/small")" ] || t_fail "files left on the full disk: $(ls -A "$T/small")"
	umount "$T/small"
else
	echo "SKIP full_disk_during_merge: cannot mount a tmpfs here (needs root)"
	_case=""
fi
t_end
