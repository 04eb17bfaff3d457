#!/bin/bash
# gguf_cli.sh - lora export --format gguf|ollama and lora import FILE.gguf from
# the command line: exit codes, one-line messages, the Ollama folder, the
# store round trip, the converter's own file imported, nothing half-written.
# The bytes and the ΔW are checked against llama.cpp's converter in
# tests/unit/test_gguf.c.
. tests/lib.sh

F=$FIX/gguf
export TMPDIR=$T/tmp
mkdir -p "$TMPDIR" "$T/out"

"$LORA" keygen --name gguf@test >/dev/null 2>&1 || t_fail "keygen failed"
"$LORA" import "$F/plain" --name plain --base "$F/base" >/dev/null 2>&1 || t_fail "import plain failed"
"$LORA" import "$F/patterns" --name patterns --base "$F/base" >/dev/null 2>&1 || t_fail "import patterns failed"

t_case export_gguf_writes_an_adapter
run "$LORA" export plain --format gguf --base "$F/base" -o "$T/out/plain.gguf"
expect_rc 0
[ "$(head -c 4 "$T/out/plain.gguf")" = GGUF ] || t_fail "no GGUF magic"
# same tensor data as llama.cpp's converter: the files differ only in general.name
sz=$(stat -c %s "$T/out/plain.gguf"); csz=$(stat -c %s "$F/plain.gguf")
[ $((sz - csz)) = 32 ] || t_fail "size $sz vs converter $csz"
cmp -s <(tail -c 32768 "$T/out/plain.gguf") <(tail -c 32768 "$F/plain.gguf") || t_fail "tensor data differs from the converter's"

t_case export_gguf_needs_base
run "$LORA" export plain --format gguf -o "$T/out/x.gguf"
expect_rc 2
expect_err "needs --base DIR"

t_case export_gguf_not_to_stdout
run "$LORA" export plain --format gguf --base "$F/base" -o -
expect_rc 2
expect_err "give -o FILE.gguf"

t_case base_option_only_for_gguf
run "$LORA" export plain --base "$F/base" -o "$T/out/x.lora"
expect_rc 2
expect_err "--base and --from are for --format gguf or ollama"

t_case export_gguf_wrong_base_refused
mkdir -p "$T/wrongbase"
cp "$F/base/config.json" "$T/wrongbase/"
cp "$F/base/model.safetensors" "$T/wrongbase/"
# flip a byte inside the data of a targeted tensor: the fingerprint changes
printf 'X' | dd of="$T/wrongbase/model.safetensors" bs=1 seek=300000 conv=notrunc 2>/dev/null
run "$LORA" export plain --format gguf --base "$T/wrongbase" -o "$T/out/w.gguf"
expect_rc 1
expect_err "is not the model adapter 'plain:latest' was made for"
[ ! -e "$T/out/w.gguf" ] || t_fail "half a file left"

t_case export_ollama_folder
run "$LORA" export patterns --format ollama --base "$F/base" --from llama3.2:1b -o "$T/out/ollama"
expect_rc 0
[ -f "$T/out/ollama/adapter.gguf" ] || t_fail "no adapter.gguf"
grep -qx 'FROM llama3.2:1b' "$T/out/ollama/Modelfile" || t_fail "no FROM line: $(cat "$T/out/ollama/Modelfile")"
grep -qx 'ADAPTER ./adapter.gguf' "$T/out/ollama/Modelfile" || t_fail "no ADAPTER line"
# every line is a comment or one of the two instructions
bad=$(grep -v -e '^#' -e '^FROM ' -e '^ADAPTER ' "$T/out/ollama/Modelfile")
[ -z "$bad" ] || t_fail "unexpected Modelfile lines: $bad"

t_case export_ollama_default_from_is_base_path
run "$LORA" export plain --format ollama --base "$F/base" -o "$T/out/ollama2"
expect_rc 0
grep -qx "FROM $(realpath "$F/base")" "$T/out/ollama2/Modelfile" || t_fail "FROM is not the base path"

t_case export_ollama_non_empty_folder_refused
run "$LORA" export plain --format ollama --base "$F/base" -o "$T/out/ollama"
expect_rc 1
expect_err "is not empty"

t_case import_gguf_round_trip
run "$LORA" import "$T/out/plain.gguf" --base "$F/base" --name back:v1
expect_rc 0
expect_out "back:v1 sha256:"
run "$LORA" verify back:v1
expect_rc 0
run "$LORA" export back:v1 --format gguf --base "$F/base" -o "$T/out/back.gguf"
expect_rc 0
cmp -s <(tail -c 32768 "$T/out/back.gguf") <(tail -c 32768 "$T/out/plain.gguf") || t_fail "export of the import differs"

t_case import_converter_file_default_name
cp "$F/plain.gguf" "$T/conv.gguf"
run "$LORA" import "$T/conv.gguf" --base "$F/base"
expect_rc 0
expect_out "conv:latest sha256:"
run "$LORA" diff plain conv
expect_rc 0
expect_out "identical"

t_case import_gguf_needs_base
run "$LORA" import "$T/out/plain.gguf"
expect_rc 2
expect_err "needs --base DIR"

t_case import_gguf_hostile_file
head -c 3000 "$F/plain.gguf" > "$T/cut.gguf"
run "$LORA" import "$T/cut.gguf" --base "$F/base" --name cut
expect_rc 1
expect_err "cut.gguf"
[ -z "$(ls -A "$TMPDIR")" ] || t_fail "left behind in TMPDIR: $(ls -A "$TMPDIR")"
run "$LORA" list
case "$OUT" in *cut*) t_fail "a refused import is in the store" ;; esac

t_end
