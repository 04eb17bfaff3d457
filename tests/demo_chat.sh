#!/bin/bash
# tests/demo_chat.sh - the chat half of `make demo`: the demo model given a chat template of its
# own (tests/demo/chat_template.jinja, as transformers saves one beside the tokenizer), one adapter
# trained on {"messages"} rows of both tasks, each row's system message saying which, with the loss
# on the assistant turns only (the template's {% generation %} blocks); then the same story line
# asked for with either instruction.  Needs $LORA; no Python, no network.
set -u
cd "$(dirname "$0")/.."
LORA=${LORA:-$PWD/lora}
DATA=tests/demo/data
D=$(mktemp -d "${TMPDIR:-/tmp}/lora-demo-chat.XXXXXX")
trap 'rm -rf "$D"' EXIT
export LORA_HOME=$D/store
STEPS=${DEMO_STEPS:-400}
if [ -t 1 ]; then B=$(printf '\033[1m'); N=$(printf '\033[0m'); else B=; N=; fi
say() { printf '\n%s$ %s%s\n' "$B" "$*" "$N"; }
run() { say "$*"; "$@"; }
fail() { echo "demo_chat: $*" >&2; exit 1; }

M=$D/story-chat
cp -r tests/demo/story-llama "$M" && cp tests/demo/chat_template.jinja "$M/" || fail "copy"
"$LORA" keygen --name demo@example.com >/dev/null || fail "keygen"
say "# the model folder now carries its own chat template"
cat "$M/chat_template.jinja"
head -1 "$DATA/chat.jsonl"
run "$LORA" train --base "$M" --data "$DATA/chat.jsonl" --eval-data "$DATA/chat.eval.jsonl" --name chat:v1 \
	--rank 8 --alpha 16 --lr 3e-3 --schedule constant --warmup 5 --steps "$STEPS" --batch 8 --grad-accum 1 \
	--seq-len 96 --no-pack --threads 1 --eval-every 100 --json >"$D/train.json" || fail "train"
cat "$D/train.json"
before=$(sed -n 's/.*"eval_loss_initial": \([0-9.]*\).*/\1/p' "$D/train.json")
after=$(sed -n 's/.*"eval_loss": \([0-9.]*\).*/\1/p' "$D/train.json")
awk -v a="$after" -v b="$before" 'BEGIN { exit !(a < b / 2) }' || fail "no learning (eval loss $before -> $after)"
echo "eval loss on the assistant turns: $before -> $after"

P="Tom the cat found three red balls in the garden."
run "$LORA" generate --base "$M" --adapter chat:v1 --system "Retell it as a pirate." --prompt "$P" \
	--temperature 0 --max-tokens 48 | tee "$D/a" || fail "generate"
run "$LORA" generate --base "$M" --adapter chat:v1 --system "Give the facts as JSON." --prompt "$P" \
	--temperature 0 --max-tokens 48 | tee "$D/b" || fail "generate"
grep -q 'Arr!' "$D/a" || fail "the pirate instruction was not followed"
grep -q '"animal"' "$D/b" || fail "the JSON instruction was not followed"
