#!/bin/bash
# tests/demo_store.sh - the store part of `make demo`: keys, import, list,
# inspect, export, verify, and a tampered copy failing verification.
# Needs $LORA (the binary) and $LORA_TOOLS (tests/tools built: mktiny); no
# Python, no network.  Runs in a temporary store it removes at the end.
set -u
LORA=${LORA:-$PWD/lora}
TOOLS=${LORA_TOOLS:-$PWD/build/tools}
# test tooling, not under test: its leaks are not ours to report
mktiny() { ASAN_OPTIONS=detect_leaks=0 "$TOOLS/mktiny" "$@"; }
D=$(mktemp -d "${TMPDIR:-/tmp}/lora-demo-store.XXXXXX")
trap 'rm -rf "$D"' EXIT
export LORA_HOME=$D/store

if [ -t 1 ]; then B=$(printf '\033[1m'); N=$(printf '\033[0m'); else B=; N=; fi
say() { printf '\n%s$ %s%s\n' "$B" "$*" "$N"; }
run() { say "$*"; "$@"; }
fail() { echo "demo_store: $*" >&2; exit 1; }

# a small built-in model and two adapters for it, made by tests/tools/mktiny
mktiny model "$D/tiny-llama" --hidden 64 --inter 128 --layers 2 --name tiny-llama >/dev/null ||
	fail "mktiny model failed"
mktiny adapter "$D/sql-adapter" --base "$D/tiny-llama" --targets q_proj,v_proj --r 8 --seed 1 >/dev/null &&
	mktiny adapter "$D/summarize" --base "$D/tiny-llama" --targets all-linear --r 4 --seed 2 >/dev/null ||
	fail "mktiny adapter failed"

run "$LORA" keygen --name alice@example.com || fail "keygen"
run "$LORA" import "$D/sql-adapter" --name sql:v1 --base "$D/tiny-llama" --description "text to SQL" || fail "import"
run "$LORA" import "$D/summarize" --name summarize:v1 || fail "import"
run "$LORA" list || fail "list"
run "$LORA" inspect sql:v1 || echo "(inspect of a store REF is not available in this build)"
run "$LORA" export sql:v1 -o "$D/sql-v1.lora" || fail "export"
run tar -tvf "$D/sql-v1.lora"
run "$LORA" verify "$D/sql-v1.lora" || fail "verify"

say "# the same check without lora: tar, ssh-keygen, sha256sum"
mkdir "$D/x" && tar -xf "$D/sql-v1.lora" -C "$D/x"
run ssh-keygen -Y verify -f "$LORA_HOME/allowed_signers" -I alice@example.com -n lora-adapter \
	-s "$D/x/manifest.json.sig" < "$D/x/manifest.json" || fail "ssh-keygen verify"
(cd "$D/x" && run sha256sum adapter_config.json adapter_model.safetensors)
grep '"sha256"' "$D/x/manifest.json"

say "# change one byte of the weights in a copy of the package"
cp "$D/sql-v1.lora" "$D/tampered.lora"
off=$(( $(grep -abo 'adapter_model.safetensors' "$D/tampered.lora" | tail -1 | cut -d: -f1) + 512 + 300 ))
printf 'X' | dd of="$D/tampered.lora" bs=1 seek="$off" conv=notrunc status=none
say "$LORA verify $D/tampered.lora"
"$LORA" verify "$D/tampered.lora"
rc=$?
echo "(exit status $rc)"
[ "$rc" = 3 ] || fail "a tampered package verified (exit $rc)"
say "$LORA import $D/tampered.lora"
"$LORA" import "$D/tampered.lora"
rc=$?
echo "(exit status $rc; the store is unchanged)"
[ "$rc" = 3 ] || fail "a tampered package was imported"
run "$LORA" list
echo
echo "demo_store: ok"
