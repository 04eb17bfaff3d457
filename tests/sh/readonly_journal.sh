#!/bin/bash
# readonly_journal.sh - read-only commands never write: a model folder whose
# swap was killed after its commit is refused by inspect and plan (one line
# naming the journal and the command that finishes it), every file's bytes
# and mtime unchanged; the commands that write (swap, merge) finish it.
. tests/lib.sh
B=$FIX/merge/base_bf16
A1=$FIX/merge/ad_plain
A2=$FIX/merge/ad_pattern

# state DIR: every file's name, size, mtime (ns) and SHA-256
state() { (cd "$1" && find . -type f -printf '%p %s %T@\n' | sort && find . -type f -exec sha256sum {} + | sort); }

# killed_swap DIR: DIR left with a committed journal (a swap killed mid-way)
killed_swap() {
	local pid k
	LORA_TEST_SWAP_PAUSE_US=200000 "$LORA" swap "$1" "$A2" >/dev/null 2>&1 &
	pid=$!
	for k in $(seq 400); do [ -e "$1/.lora-swap.journal" ] && break; sleep 0.01; done
	kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
	[ -e "$1/.lora-swap.journal" ] || t_fail "no journal left by the killed swap"
}

t_case inspect_refuses_a_folder_with_an_unfinished_swap
run "$LORA" merge --base "$B" "$A1" -o "$T/m"; expect_rc 0
killed_swap "$T/m"
before=$(state "$T/m")
sleep 0.02
run "$LORA" inspect "$T/m"; expect_rc 1
expect_err "unfinished swap"
expect_err "lora swap $T/m --recover"
expect_eq "$(state "$T/m")" "$before" "inspect changed the folder"

t_case plan_refuses_it_too_and_writes_nothing
run "$LORA" plan --base "$T/m"; expect_rc 1
expect_err ".lora-swap.journal"
expect_eq "$(state "$T/m")" "$before" "plan changed the folder"

t_case an_uncommitted_journal_is_read_as_before
run "$LORA" merge --base "$B" "$A1" -o "$T/n"; expect_rc 0
printf 'partial' > "$T/n/.lora-swap.journal.new"
before=$(state "$T/n")
run "$LORA" inspect "$T/n"; expect_rc 0
expect_out "LlamaForCausalLM"
expect_eq "$(state "$T/n")" "$before" "inspect changed the folder"

t_case swap_finishes_the_interrupted_swap
run "$LORA" swap "$T/m" "$A1"; expect_rc 0
[ -e "$T/m/.lora-swap.journal" ] && t_fail "the journal is still there"
run "$LORA" merge --base "$B" "$A1" -o "$T/fa"; expect_rc 0
for f in $(cd "$T/fa" && ls); do cmp -s "$T/m/$f" "$T/fa/$f" || t_fail "$f differs from a fresh merge"; done
run "$LORA" inspect "$T/m"; expect_rc 0

t_case swap_recover_finishes_it_and_nothing_more
run "$LORA" merge --base "$B" "$A1" -o "$T/r"; expect_rc 0
killed_swap "$T/r"
run "$LORA" swap "$T/r" --recover; expect_rc 0
expect_out "recovered $T/r"
[ -e "$T/r/.lora-swap.journal" ] && t_fail "the journal is still there"
run "$LORA" merge --base "$B" "$A2" -o "$T/fb"; expect_rc 0
for f in $(cd "$T/fb" && ls); do cmp -s "$T/r/$f" "$T/fb/$f" || t_fail "$f differs from a fresh merge of the swapped-in set"; done
before=$(state "$T/r")
run "$LORA" swap "$T/r" --recover; expect_rc 0
expect_out "nothing to recover"
expect_eq "$(state "$T/r")" "$before" "a second --recover changed the folder"
run "$LORA" swap "$T/r" --recover "$A1"; expect_rc 2
expect_err "--recover takes only the model folder"

t_end
