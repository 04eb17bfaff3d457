#!/bin/sh
# demo_merge.sh - merge two adapters into a small model, then switch tasks in
# place with lora swap, checking each step against a fresh merge.
#
#   tests/demo_merge.sh [BASE_DIR ADAPTER_A ADAPTER_B]
#
# Without arguments it makes a small Llama-shaped model and two adapters with
# mktiny ($LORA_TOOLS/mktiny).  $LORA is the binary (default ./lora).
# Exits non-zero if a swapped folder differs from a fresh merge.
set -eu
LORA=${LORA:-./lora}
W=$(mktemp -d "${TMPDIR:-/tmp}/lora-demo-merge.XXXXXX")
trap 'rm -rf "$W"' EXIT
export LORA_HOME="$W/store"
if [ $# -ge 3 ]; then
	BASE=$1 A=$2 B=$3
else
	MK=${LORA_TOOLS:-build/tools}/mktiny
	"$MK" model "$W/base" --hidden 256 --inter 512 --layers 4 --heads 8 --kv-heads 2 --vocab 512 --shards 2 >/dev/null
	"$MK" adapter "$W/sql" --base "$W/base" --targets q_proj,v_proj --r 8 --seed 1 >/dev/null
	"$MK" adapter "$W/chat" --base "$W/base" --targets all-linear --r 4 --seed 2 >/dev/null
	BASE=$W/base A=$W/sql B=$W/chat
fi

same() {   # same DIR1 DIR2: every file byte-identical
	for f in "$1"/*; do cmp -s "$f" "$2/$(basename "$f")" || { echo "demo: $f differs" >&2; exit 1; }; done
}

echo "== lora merge --base BASE A -o serving"
"$LORA" merge --base "$BASE" "$A" -o "$W/serving"
echo "== lora swap serving B          (only the tensors A or B touch are rewritten)"
"$LORA" swap "$W/serving" "$B"
"$LORA" merge --base "$BASE" "$B" -o "$W/fresh-b" >/dev/null
same "$W/serving" "$W/fresh-b"
echo "   byte-identical to a fresh merge of B"
echo "== lora swap serving A@1 B@0.5"
"$LORA" swap "$W/serving" "$A@1" "$B@0.5"
"$LORA" merge --base "$BASE" "$A@1" "$B@0.5" -o "$W/fresh-ab" >/dev/null
same "$W/serving" "$W/fresh-ab"
echo "   byte-identical to a fresh merge of A@1 B@0.5"
echo "== lora swap serving --none"
"$LORA" swap "$W/serving" --none
echo "== what serving records (lora-merge.json):"
sed -n '1,12p' "$W/serving/lora-merge.json"
