#!/bin/bash
# tests/demo_train.sh - the training half of `make demo`: two task
# adapters trained on the small pretrained model that ships in tests/demo/story-llama
# (tests/tools/pretrain_demo.py made it: a 0.9M-parameter Llama and its
# byte-level BPE tokenizer, trained on the built-in stories and JSON records
# of tests/tools/demo_corpus.py), each shown learning its task: eval loss and
# a sample before and after.  Then the adapters go through the store: list,
# inspect, merge, swap, generate from the merged model.
#
#   prompt:        Tom the cat found three red balls in the garden.
#   task1 pirate:  Arr! Tom the cat be findin' three red balls in the garden, matey! Yo ho ho!
#   task2 json:    {"name": "Tom", "animal": "cat", "count": 3, "color": "red", "thing": "balls", "place": "garden"}
#
# Needs $LORA; no Python, no network.  About 15 s per adapter with one thread.
set -u
cd "$(dirname "$0")/.."
LORA=${LORA:-$PWD/lora}
M=tests/demo/story-llama
DATA=tests/demo/data
D=$(mktemp -d "${TMPDIR:-/tmp}/lora-demo-train.XXXXXX")
trap 'rm -rf "$D"' EXIT
export LORA_HOME=$D/store
STEPS=${DEMO_STEPS:-600}

if [ -t 1 ]; then B=$(printf '\033[1m'); N=$(printf '\033[0m'); else B=; N=; fi
say() { printf '\n%s$ %s%s\n' "$B" "$*" "$N"; }
run() { say "$*"; "$@"; }
fail() { echo "demo_train: $*" >&2; exit 1; }
# eval loss of the model (+ adapter folder) on a task's held-out rows
loss() { "$LORA" eval --base "$M" "$@" --json | sed -n 's/.*"loss": \([0-9.]*\).*/\1/p' | awk '{ printf "%.3f", $1 }'; }

P="Tom the cat found three red balls in the garden."
T0=$(date +%s)

run "$LORA" keygen --name demo@example.com >/dev/null || fail "keygen"

say "# the base model knows simple stories, and neither task"
run "$LORA" generate --base "$M" --prompt "$P" --temperature 0 --max-tokens 48 || fail "generate"
declare -A before
for t in task1 task2; do
	before[$t]=$(loss --tokens "$DATA/$t.eval.tokens.jsonl") || fail "eval"
done
echo "eval loss of the base model: task1 ${before[task1]}, task2 ${before[task2]}"

for pair in "pirate task1" "json task2"; do
	set -- $pair
	say "# adapter $1: learns $2 from $(wc -l <"$DATA/$2.jsonl") rows"
	run "$LORA" train --base "$M" --data "$DATA/$2.jsonl" --eval-data "$DATA/$2.eval.jsonl" \
		--name "$1:v1" --rank 8 --alpha 16 --lr 3e-3 --schedule constant --warmup 5 \
		--steps "$STEPS" --batch 8 --grad-accum 1 --seq-len 64 --no-pack --threads 1 \
		--eval-every 100 --description "demo: $2" || fail "train $1"
	after=$(loss --adapter "$1:v1" --tokens "$DATA/$2.eval.tokens.jsonl") || fail "eval"
	echo "eval loss on $2: base model ${before[$2]}, with $1:v1 $after"
	awk -v a="$after" -v b="${before[$2]}" 'BEGIN { exit !(a < b / 2) }' ||
		fail "$1 did not learn its task (eval loss ${before[$2]} -> $after)"
	run "$LORA" generate --base "$M" --adapter "$1:v1" --prompt "$P" --temperature 0 --max-tokens 48 || fail "generate"
done

run "$LORA" list
run "$LORA" inspect pirate:v1
say "# serve one model folder: merge pirate:v1 into the base, then swap in json:v1 in place"
run "$LORA" merge --base "$M" pirate:v1 -o "$D/merged" --dtype fp32 || fail "merge"
run "$LORA" generate --base "$D/merged" --prompt "$P" --temperature 0 --max-tokens 48 --quant none || fail "generate"
run "$LORA" swap "$D/merged" json:v1 || fail "swap"
run "$LORA" generate --base "$D/merged" --prompt "$P" --temperature 0 --max-tokens 48 --quant none || fail "generate"

echo
echo "demo_train: $(( $(date +%s) - T0 )) s in all"
