#!/bin/bash
# tests/demo.sh - `make demo`: the built-in example, end to end, on this machine.
# Every part works in a temporary store and folder that it removes; nothing
# is downloaded and no Python runs.  $LORA and $LORA_TOOLS come from make.
set -u
export LORA=${LORA:-$PWD/lora} LORA_TOOLS=${LORA_TOOLS:-$PWD/build/tools}
here=$(dirname "$0")
for part in demo_train.sh demo_chat.sh demo_store.sh demo_merge.sh; do
	[ -f "$here/$part" ] || continue
	printf '\n==== %s\n' "$part"
	bash "$here/$part" || { echo "demo: $part failed" >&2; exit 1; }
done
printf '\ndemo: ok\n'
