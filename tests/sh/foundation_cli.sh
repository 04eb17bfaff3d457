#!/bin/bash
# foundation_cli.sh - the command line every script depends on: help, --help,
# --version, the typo suggestion, global --store, exit codes, one-line errors.
. tests/lib.sh

t_case help_lists_commands
run "$LORA" help
expect_rc 0
expect_out "usage: lora [--store DIR] <command> [options]"
expect_out "inspect"
expect_out "help"
[ -z "$ERR" ] || t_fail "stderr: $ERR"

t_case dash_dash_help_equals_help
help_out=$OUT
run "$LORA" --help
expect_rc 0
expect_eq "$OUT" "$help_out"
run "$LORA" -h
expect_rc 0
expect_eq "$OUT" "$help_out"

t_case version
run "$LORA" --version
expect_rc 0
printf '%s\n' "$OUT" | grep -Eq '^lora [0-9]+\.[0-9]+\.[0-9]+ \((cuda|cpu only)[^)]*\)$' || t_fail "version line: $OUT"
[ "$(printf '%s\n' "$OUT" | wc -l)" = 1 ] || t_fail "more than one line: $OUT"

t_case no_command_is_usage_error
run "$LORA"
expect_rc 2
[ -z "$OUT" ] || t_fail "usage went to stdout"
case "$ERR" in usage:*) ;; *) t_fail "stderr does not start with the usage: $ERR";; esac

t_case typo_suggests_closest_command
run "$LORA" inspct
expect_rc 2
expect_eq "$ERR" "lora: 'inspct' is not a lora command; did you mean 'inspect'?"
run "$LORA" hlep
expect_rc 2
expect_eq "$ERR" "lora: 'hlep' is not a lora command; did you mean 'help'?"
[ -z "$OUT" ] || t_fail "stdout: $OUT"

t_case typo_suggestion_from_the_issue
# "lora merg" -> merge, once merge is built in (before that, nothing to suggest it from)
if "$LORA" help | grep -q '^  merge '; then
	run "$LORA" merg
	expect_rc 2
	expect_eq "$ERR" "lora: 'merg' is not a lora command; did you mean 'merge'?"
else
	echo "  (merge is not built in; skipped)"
fi

t_case every_command_has_help
cmds=$("$LORA" help | awk '/^commands:/{ on = 1; next } on && NF == 0 { exit } on { print $1 }')
[ -n "$cmds" ] || t_fail "lora help lists no commands"
for c in $cmds; do
	run "$LORA" help "$c"
	expect_rc 0
	case "$OUT" in "usage: lora $c"*) ;; *) t_fail "lora help $c does not start with its usage: $OUT";; esac
	help_out=$OUT
	run "$LORA" "$c" --help
	expect_rc 0
	expect_eq "$OUT" "$help_out" "lora $c --help vs lora help $c"
done

t_case unknown_command_without_suggestion
run "$LORA" xyzzyplugh
expect_rc 2
expect_err "'xyzzyplugh' is not a lora command"
case "$ERR" in *"did you mean"*) t_fail "suggested something for nonsense: $ERR";; esac

t_case help_of_unknown_command
run "$LORA" help inspct
expect_rc 2
expect_err "did you mean 'inspect'"

t_case help_takes_one_command
run "$LORA" help inspect help
expect_rc 2
expect_err ""

t_case unknown_global_option
run "$LORA" --bogus help
expect_rc 2
expect_err "unknown option '--bogus'"

t_case store_needs_a_value
run "$LORA" --store
expect_rc 2
expect_err "--store"

t_case command_help_wins_over_other_arguments
run "$LORA" inspect /nonexistent --help
expect_rc 0
expect_out "usage: lora inspect"
run "$LORA" inspect -h
expect_rc 0
expect_out "usage: lora inspect"

t_case inspect_usage_errors_exit_2
run "$LORA" inspect
expect_rc 2
expect_err "(see 'lora inspect --help')"
run "$LORA" inspect a b
expect_rc 2
expect_err "(see 'lora inspect --help')"
run "$LORA" inspect --bogus "$FIX/peft/plain"
expect_rc 2
expect_err "unknown option '--bogus'"
[ -z "$OUT" ] || t_fail "stdout on a usage error: $OUT"

t_case inspect_missing_path_exits_1
run "$LORA" inspect "$T/no/such/adapter"
expect_rc 1
expect_err "$T/no/such/adapter"
[ -z "$OUT" ] || t_fail "stdout on failure: $OUT"

t_case global_store_option_is_accepted
run "$LORA" --store "$T/other-store" inspect "$FIX/peft/plain"
expect_rc 0
run "$LORA" --store="$T/other-store" inspect --json "$FIX/peft/plain"
expect_rc 0
expect_out '"modules"'
# nothing was written to a store by inspect
[ ! -e "$T/other-store" ] || t_fail "inspect created the store"

t_case inspect_text_of_adapter
run "$LORA" inspect "$FIX/peft/plain"
expect_rc 0
expect_out "oracle/tiny-llama"
expect_out "model.layers.1.self_attn.v_proj"
[ -z "$ERR" ] || t_fail "stderr: $ERR"

t_case inspect_json_is_one_document
run "$LORA" inspect --json "$FIX/peft/rslora"
expect_rc 0
case "$OUT" in "{"*"}") ;; *) t_fail "not one JSON object: $OUT";; esac
[ "$(printf '%s\n' "$OUT" | wc -l)" = 1 ] || t_fail "more than one line"

t_case inspect_json_of_model_and_file
run "$LORA" inspect --json "$FIX/st/model_sharded"
expect_rc 0
expect_out '"kind":"model"'
expect_out '"layers":2'
run "$LORA" inspect --json "$FIX/st/py_dtypes.safetensors"
expect_rc 0
expect_out '"kind":"safetensors"'
expect_out '"F8_E5M2FNUZ"'

t_case write_error_on_stdout_is_reported
if [ -w /dev/full ]; then
	"$LORA" inspect "$FIX/peft/rslora" >/dev/full 2>"$T/full.err"; RC=$?
	ERR=$(cat "$T/full.err")
	expect_rc 1
	expect_err "cannot write to standard output"
else
	echo "  (no /dev/full; skipped)"
fi

t_end
