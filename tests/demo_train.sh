#!/bin/bash
# tests/demo_train.sh - DRAFT of the training half of `make demo`: two task
# adapters trained on the small pretrained model that ships in tests/demo/model
# (tests/tools/pretrain_demo.py made it: a 0.9M-parameter Llama and its
# byte-level BPE tokenizer, trained on the built-in stories of
# tests/tools/demo_corpus.py), each shown learning its task: eval loss and a
# greedy sample before and after.  Then the adapters go through the store:
# list, inspect, merge, swap, generate from the merged model.
#
#   task1  pirate style:   Tom the cat found three red balls in the garden.
#                          -> Arr! Tom the cat be findin' three red balls in the garden, matey! Yo ho ho!
#   task2  JSON format:    -> {"name": "Tom", "animal": "cat", "count": 3, ...}
#
# Needs $LORA (and $LORA_TOOLS for nothing yet); no Python, no network.
# Until `lora train` lands, the adapters are trained by bench/demo_train_speed.c
# (the train API, same data handling), built here; the integrator swaps in the
# `lora train` lines marked TRAIN.
set -u
cd "$(dirname "$0")/.."
LORA=${LORA:-$PWD/lora}
M=tests/demo/model
DATA=tests/demo/data
D=$(mktemp -d "${TMPDIR:-/tmp}/lora-demo-train.XXXXXX")
trap 'rm -rf "$D"' EXIT
export LORA_HOME=$D/store
STEPS=${DEMO_STEPS:-600}

if [ -t 1 ]; then B=$(printf '\033[1m'); N=$(printf '\033[0m'); else B=; N=; fi
say() { printf '\n%s$ %s%s\n' "$B" "$*" "$N"; }
run() { say "$*"; "$@"; }
fail() { echo "demo_train: $*" >&2; exit 1; }
loss() { "$LORA" eval --base "$M" "$@" --json | sed -n 's/.*"loss": \([0-9.]*\).*/\1/p'; }

P="Tom the cat found three red balls in the garden."
T0=$(date +%s)

run "$LORA" keygen --name demo@example.com >/dev/null || fail "keygen"

say "# the base model: it knows simple stories, and neither task"
run "$LORA" generate --base "$M" --prompt "$P" --temperature 0 --max-tokens 40 || fail "generate"
before1=$(loss --tokens "$DATA/task1.eval.tokens.jsonl")
before2=$(loss --tokens "$DATA/task2.eval.tokens.jsonl")
echo "eval loss, base model: task1 $before1, task2 $before2"

have_train=0
"$LORA" train --help >/dev/null 2>&1 && have_train=1
if [ $have_train = 0 ]; then
	# stand-in until the training loop lands: the same train API
	BLD=${BUILD:-build}
	cc -O2 -std=gnu11 -I. -I/usr/include/x86_64-linux-gnu -o "$D/train" bench/demo_train_speed.c \
		"$BLD/libtrain.a" "$BLD/libadapter.a" -larchive -lcrypto -lcjson -lpcre2-8 -llapacke \
		-lopenblas -lm -pthread || fail "cannot build the stand-in trainer"
fi

train() {   # NAME TASK
	if [ $have_train = 1 ]; then
		# TRAIN: the real command (options as the loop defines them)
		run "$LORA" train --base "$M" --data "$DATA/$2.jsonl" --eval-data "$DATA/$2.eval.jsonl" \
			--name "$1:v1" --rank 8 --alpha 16 --dropout 0.05 --lr 3e-3 --schedule constant \
			--warmup 0.01 --steps "$STEPS" --batch 8 --seq-len 64 --no-pack --threads 2 ||
			fail "train $1"
		"$LORA" export "$1:v1" --format peft -o "$D/$1" || fail "export $1"
	else
		run "$D/train" "$M" "$DATA/$2.jsonl" "$DATA/$2.eval.jsonl" "$D/$1" "$STEPS" 8 3e-3 8 2 |
			tail -3 || fail "train $1"
		run "$LORA" import "$D/$1" --name "$1:v1" --base "$M" --description "demo $2" >/dev/null ||
			fail "import $1"
	fi
}

for pair in "pirate task1" "json task2"; do
	set -- $pair
	say "# adapter $1: learn $2 ($STEPS steps)"
	t=$(date +%s)
	train "$1" "$2"
	echo "(trained in $(( $(date +%s) - t )) s)"
	after=$(loss --adapter "$D/$1" --tokens "$DATA/$2.eval.tokens.jsonl")
	before=$([ "$2" = task1 ] && echo "$before1" || echo "$before2")
	echo "eval loss on $2: before $before, after $after"
	awk -v a="$after" -v b="$before" 'BEGIN { exit !(a < b / 2) }' ||
		fail "$1 did not learn its task (eval loss $before -> $after)"
	run "$LORA" generate --base "$M" --adapter "$1:v1" --prompt "$P" --temperature 0 --max-tokens 48 ||
		fail "generate"
done

run "$LORA" list
run "$LORA" inspect pirate:v1
run "$LORA" merge --base "$M" pirate:v1 -o "$D/merged" --dtype fp32 >/dev/null &&
	run "$LORA" generate --base "$D/merged" --prompt "$P" --temperature 0 --max-tokens 48 --quant none
run "$LORA" swap "$D/merged" json:v1 >/dev/null &&
	run "$LORA" generate --base "$D/merged" --prompt "$P" --temperature 0 --max-tokens 48 --quant none

echo
echo "demo_train: $(( $(date +%s) - T0 )) s in all"
