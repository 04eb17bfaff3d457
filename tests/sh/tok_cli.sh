# tok_cli.sh - `lora tokenize`: ids as HF tokenizers gives them, --json,
# stdin, --decode round trips, errors.
. tests/lib.sh

TOK=$FIX/tok

# expected ids, from the oracle fixture (tests/oracle/tok_fixtures.py)
want_ids() { # DIR LINE-NO KEY
	sed -n "$2p" "$TOK/$1/expect.jsonl" | grep -o "\"$3\": \[[^]]*\]" | sed 's/.*\[//; s/\]//; s/,//g'
}

t_case tokenize_matches_hf_ids
for d in gpt2 llama3 spm; do
	run "$LORA" tokenize --base "$TOK/$d" "Hello, world!"
	expect_rc 0
	expect_eq "$OUT" "$(want_ids $d 1 ids_special)" "$d"
	run "$LORA" tokenize --base "$TOK/$d" --no-special "Hello, world!"
	expect_eq "$OUT" "$(want_ids $d 1 ids)" "$d --no-special"
done

t_case tokenize_reads_stdin_verbatim
printf '안녕하세요. 오늘 날씨가 좋네요.' >"$T/ko.txt"
OUT=$("$LORA" tokenize --base "$TOK/llama3" --no-special <"$T/ko.txt"); RC=$?
expect_rc 0
expect_eq "$OUT" "$(want_ids llama3 11 ids)" "korean from stdin"
printf 'a\n' | "$LORA" tokenize --base "$TOK/gpt2" --no-special >"$T/nl.txt"
expect_eq "$(wc -w <"$T/nl.txt" | tr -d ' ')" 2 "trailing newline is a token"

t_case tokenize_json_is_one_document
# ids and tokens as tokenizers 0.23.3 gives them for this fixture (Encoding.ids / .tokens)
run "$LORA" tokenize --base "$TOK/llama3" --json "Hi 😀"
expect_rc 0
expect_eq "$(printf '%s\n' "$OUT" | wc -l | tr -d ' ')" 1 "one line"
expect_eq "$OUT" '{"ids": [749, 39, 72, 655], "tokens": ["<|begin_of_text|>", "H", "i", "ĠðŁĺĢ"], "offsets": [-1, 0, 1, 2], "count": 4}'


t_case decode_round_trips
for d in gpt2 llama3 spm spm_meta qwen2 chatml; do
	txt='def f(x):  return "안녕" 😀 42'
	ids=$("$LORA" tokenize --base "$TOK/$d" --no-special "$txt")
	run "$LORA" tokenize --base "$TOK/$d" --decode "$ids"
	expect_rc 0
	expect_eq "$OUT" "$txt" "$d round trip"
done
run "$LORA" tokenize --base "$TOK/spm" --decode --json "[1, 2]"
expect_out '"count": 2'

t_case errors_are_one_line
run "$LORA" tokenize "x"
expect_rc 2
expect_err "--base"
run "$LORA" tokenize --base "$T" "x"
expect_rc 1
expect_err "no tokenizer.json"
run "$LORA" tokenize --base "$TOK/gpt2" --decode "5 999999"
expect_rc 1
expect_err "not a token id"
printf 'ab\377' >"$T/bad.txt"
OUT=$("$LORA" tokenize --base "$TOK/gpt2" <"$T/bad.txt" 2>"$T/err"); RC=$?; ERR=$(cat "$T/err")
expect_rc 1
expect_err "not valid utf-8"
mkdir -p "$T/wp"
printf '{"model":{"type":"WordPiece","vocab":{"a":0}}}' >"$T/wp/tokenizer.json"
run "$LORA" tokenize --base "$T/wp" "a"
expect_rc 1
expect_err "WordPiece"

t_case help_matches_man_synopsis
run "$LORA" tokenize --help
syn=$(sed -n '/^\.SH SYNOPSIS/,/^\.fi/p' man/lora-tokenize.1 | grep '^lora' | sed 's/\\-/-/g')
expect_out "$syn"

t_end
