#!/bin/bash
# bench/demo_train_speed.sh - how fast the CPU trainer learns the demo's tasks on
# this machine: trains each task adapter of tests/demo with the train API
# (bench/demo_train_speed.c, a stand-in for `lora train` that tokenizes
# prompt/completion rows as train/data.h does), prints eval loss before and
# after and the wall time, then generates a sample with the adapter.
#
#   bench/demo_train_speed.sh [STEPS] [BATCH] [LR] [RANK] [THREADS]
#
# Never run by make check.
set -eu
cd "$(dirname "$0")/.."
B=${BUILD:-build-bench}
make --no-print-directory CUDA=0 BUILD="$B" lora "$B/libtrain.a" "$B/libadapter.a" >/dev/null
cc -O2 -std=gnu11 -I. -I/usr/include/x86_64-linux-gnu -o "$B/demo_train_speed" bench/demo_train_speed.c \
	"$B/libtrain.a" "$B/libadapter.a" -larchive -lcrypto -lcjson -lpcre2-8 -llapacke -lopenblas -lm -pthread
M=tests/demo/story-llama
D=tests/demo/data
O=$(mktemp -d "${TMPDIR:-/tmp}/lora-demo-speed.XXXXXX")
trap 'rm -rf "$O"' EXIT
P=$'Tom the cat found three red balls in the garden.\n'
echo "== base"
"$B/lora" generate --base "$M" --prompt "$P" --temperature 0 --max-tokens 48
for t in task1 task2; do
	echo "== $t"
	"$B/demo_train_speed" "$M" "$D/$t.jsonl" "$D/$t.eval.jsonl" "$O/$t" "$@"
	"$B/lora" generate --base "$M" --adapter "$O/$t" --prompt "$P" --temperature 0 --max-tokens 48
done
