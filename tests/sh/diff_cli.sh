#!/bin/bash
# diff_cli.sh - lora diff, combine, extract and inspect --spectrum from the
# command line: exit codes, messages, text and JSON shapes, the store round
# trip, and nothing half-written left behind.  The figures themselves are
# checked against numpy/peft in tests/unit/test_lowrank_oracle.c.
. tests/lib.sh

F=$FIX/diff/adapters
X=$FIX/diff/extract
export TMPDIR=$T/tmp
mkdir -p "$TMPDIR" "$T/out"

one_json_line() {
	[ "$(printf '%s\n' "$OUT" | wc -l)" = 1 ] || t_fail "expected one line of JSON, got: $OUT"
	case "$OUT" in "{"*"}") ;; *) t_fail "not a JSON object: $OUT" ;; esac
}

no_leftovers() {
	local l
	l=$(ls -A "$T/out" "$TMPDIR" | grep -e '\.tmp-' -e '\.scratch-' -e 'lora-combine-' -e 'lora-extract-')
	[ -z "$l" ] || t_fail "left behind: $l"
}

# ----------------------------------------------------------------- diff

t_case diff_self_is_identical
run "$LORA" diff "$F/a" "$F/a"
expect_rc 0
expect_out "14 in both (14 identical), 0 only in a, 0 only in b"
expect_out "distance 0"
expect_out "settings: the same"

t_case diff_json_is_one_document
run "$LORA" diff --json "$F/a" "$F/b"
expect_rc 0
one_json_line
expect_out '"modules":[{"name":"model.layers.0.mlp.down_proj","in":"both"'
expect_out '"settings":{"base_model":'
expect_out '"use_rslora":{"a":false,"b":true,"same":false}'
expect_out '"summary":{"modules_a":14,"modules_b":14,"common":14'

t_case diff_negation_has_cosine_minus_one
run "$LORA" diff --json "$F/a" "$F/neg"
expect_rc 0
expect_out '"cosine":-1,"weighted_cosine":-1'

t_case diff_lists_modules_in_one_only
run "$LORA" diff "$F/a" "$F/c"
expect_rc 0
expect_out "4 in both (0 identical), 10 only in a, 1 only in b"
expect_out "only in b      lm_head"
expect_out "model.layers.1.self_attn.o_proj"
run "$LORA" diff --json "$F/a" "$F/c"
expect_out '"only_b":["lm_head"]'

t_case diff_text_has_a_bar_per_layer
run "$LORA" diff "$F/a" "$F/b"
expect_out "layer 0 "
expect_out "layer 1 "
expect_out "|####"

t_case diff_usage_errors
run "$LORA" diff "$F/a"
expect_rc 2
expect_err "two adapters"
run "$LORA" diff --bogus "$F/a" "$F/b"
expect_rc 2
expect_err "unknown option"
run "$LORA" diff --threads x "$F/a" "$F/b"
expect_rc 2
expect_err "--threads"

t_case diff_missing_adapter
run "$LORA" diff "$F/a" nosuch:v1
expect_rc 1
expect_err "nosuch"

# ------------------------------------------------------------- spectrum

t_case inspect_spectrum
run "$LORA" inspect --spectrum "$F/b"
expect_rc 0
expect_out "EFF.RANK"
expect_out "model.layers.1.mlp.down_proj"
run "$LORA" inspect --spectrum --json "$F/a"
expect_rc 0
one_json_line
expect_out '"singular_values":['
expect_out '"effective_rank":'

# -------------------------------------------------------------- combine

t_case combine_usage_errors
run "$LORA" combine "$F/a" "$F/b" -o "$T/out/x"
expect_rc 2
expect_err "--method"
run "$LORA" combine "$F/a" --method avg -o "$T/out/x"
expect_rc 2
expect_err "unknown method"
run "$LORA" combine "$F/a" --method cat
expect_rc 2
expect_err "exactly one of"
run "$LORA" combine "$F/a" --method cat -o "$T/out/x" --name x
expect_rc 2
run "$LORA" combine "$F/a" --method cat --rank 3 -o "$T/out/x"
expect_rc 2
expect_err "--rank"
run "$LORA" combine "$F/a@x" --method cat -o "$T/out/x"
expect_rc 2
expect_err "bad weight"
[ ! -e "$T/out/x" ] || t_fail "an output appeared after a usage error"

t_case combine_linear_needs_equal_ranks
run "$LORA" combine "$F/a" "$F/b" --method linear -o "$T/out/lin"
expect_rc 1
expect_err "equal rank"
[ ! -e "$T/out/lin" ] || t_fail "output left after a failure"
no_leftovers

t_case combine_svd_folder
run "$LORA" combine "$F/a@0.7" "$F/b@-0.4" --method svd --rank 3 -o "$T/out/svd"
expect_rc 0
expect_out "wrote $T/out/svd"
expect_out "method svd, r=3, 14 modules"
expect_out "kept "
run "$LORA" inspect --json "$T/out/svd"
expect_rc 0
expect_out '"r":3,"alpha":3'
no_leftovers

t_case combine_refuses_existing_output
run "$LORA" combine "$F/a" --method cat -o "$T/out/svd"
expect_rc 1
expect_err "already exists"

t_case combine_halves_make_the_whole
run "$LORA" combine "$F/a@0.5" "$F/a@0.5" --method cat -o "$T/out/halves" --json
expect_rc 0
one_json_line
expect_out '"method":"cat","r":8'
run "$LORA" diff --json "$T/out/halves" "$F/a"
expect_rc 0
expect_out '"cosine":1,"weighted_cosine":1'

t_case combine_name_needs_a_key
run "$LORA" combine "$F/a" --method cat --name nokey
expect_rc 1
expect_err "keygen"
no_leftovers

t_case combine_into_the_store
run "$LORA" keygen --name tester@example
expect_rc 0
run "$LORA" combine "$F/a@0.7" "$F/d@-0.5" --method cat --name mix:v1 --description "a minus d"
expect_rc 0
expect_out "mix:v1 sha256:"
run "$LORA" verify mix:v1
expect_rc 0
run "$LORA" diff --json mix:v1 "$F/a"
expect_rc 0
expect_out '"ref":"mix:v1","digest":"sha256:'
expect_out '"provenance":{"a":{"tool":"lora combine","method":"cat","rank":8,"inputs":[{"ref":null,"digest":"sha256:'
expect_out '"weight":0.7,"method":"cat"}'
no_leftovers

t_case inspect_spectrum_of_a_stored_adapter
run "$LORA" inspect mix:v1 --spectrum
expect_rc 0
expect_out "EFF.RANK"
expect_out "ref         mix:v1"

t_case combine_from_stored_inputs
run "$LORA" combine mix:v1@2 "$F/a" --method svd --name mix:v2 --json
expect_rc 0
expect_out '"ref":"mix:v2","digest":"sha256:'
run "$LORA" diff --json mix:v2 mix:v1
expect_out '"label":"mix:v1","weight":2,"method":"svd"'

# -------------------------------------------------------------- extract

t_case extract_usage_errors
run "$LORA" extract --base "$X/base" --tuned "$X/tuned" -o "$T/out/e"
expect_rc 2
expect_err "--rank"
run "$LORA" extract --base "$X/base" --tuned "$X/tuned" --rank 0 -o "$T/out/e"
expect_rc 2
run "$LORA" extract --base "$X/base" --tuned "$X/tuned" --rank 2
expect_rc 2
expect_err "exactly one of"

t_case extract_folder
run "$LORA" extract --base "$X/base" --tuned "$X/tuned" --rank 3 -o "$T/out/ext"
expect_rc 0
expect_out "model.layers.0.self_attn.k_proj"
expect_out "unchanged"
expect_out "100.000%"
expect_out "r=3, 4 modules (3 unchanged left out), base fingerprint sha256:"
run "$LORA" inspect --json "$T/out/ext"
expect_rc 0
expect_out '"target_modules":["down_proj","gate_proj","q_proj","v_proj"]'
no_leftovers

t_case extract_targets_json
run "$LORA" extract --base "$X/base" --tuned "$X/tuned" --rank 2 --targets q_proj,up_proj -o "$T/out/extq" --json
expect_rc 0
one_json_line
expect_out '"written":1'
expect_out '"unchanged":true'
run "$LORA" inspect --json "$T/out/extq"
expect_out '"target_modules":["q_proj"]'

t_case extract_nothing_changed
run "$LORA" extract --base "$X/base" --tuned "$X/base" --rank 2 -o "$T/out/same"
expect_rc 1
expect_err "same values"
[ ! -e "$T/out/same" ] || t_fail "output left after a failure"
no_leftovers

t_case extract_missing_model
run "$LORA" extract --base "$T/nothing" --tuned "$X/tuned" --rank 2 -o "$T/out/none"
expect_rc 1
expect_err "nothing"

t_case extract_into_the_store
run "$LORA" extract --base "$X/base" --tuned "$X/tuned" --rank 3 --name ext:v1
expect_rc 0
expect_out "ext:v1 sha256:"
run "$LORA" verify ext:v1
expect_rc 0
run "$LORA" diff --json ext:v1 "$T/out/ext"
expect_rc 0
expect_out '"identical":4'
expect_out '"base_fingerprint":{"a":"sha256:'
no_leftovers

t_end
