#!/bin/sh
# bench/tok_encode.sh - encode speed of `lora tokenize` beside Hugging Face
# `tokenizers` (Rust, one thread) on the same tokenizer.json and text.
# Usage: sh bench/tok_encode.sh [LORA] [PYTHON]   (not run by make check)
set -eu
LORA=${1:-./lora}
PY=${2:-/opt/oracle-venv/bin/python}
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
# ~2 MB: the fixture corpus lines (English, Korean, code, emoji...) repeated, one document per line
i=0; while [ $i -lt 600 ]; do
	sed 's/.*"text": "\([^"]*\)".*/\1/' tests/fixtures/tok/gpt2/expect.jsonl; i=$((i + 1))
done >"$T/text.txt"
printf 'text: %s bytes\n' "$(wc -c <"$T/text.txt")"
for d in gpt2 llama3 qwen2 spm spm_meta; do
	dir=tests/fixtures/tok/$d
	# one big document (spm has no pre-tokenizer: the whole text is one BPE word, 2 M symbols)
	s=$(date +%s.%N); n=$("$LORA" tokenize --base "$dir" --no-special <"$T/text.txt" | wc -w); e=$(date +%s.%N)
	ours=$(echo "$s $e" | awk '{printf "%.3f", $2 - $1}')
	hf=$(RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false "$PY" -c "
import sys, time
from tokenizers import Tokenizer
t = Tokenizer.from_file('$dir/tokenizer.json')
s = open('$T/text.txt', encoding='utf-8').read()
t0 = time.time(); ids = t.encode(s, add_special_tokens=False).ids; t1 = time.time()
t2 = time.time(); Tokenizer.from_file('$dir/tokenizer.json'); t3 = time.time()
print('%.3f %d' % (t1 - t0, len(ids)))")
	echo "$d: lora $ours s ($n tokens, process total incl. load)  |  tokenizers ${hf% *} s (${hf#* } tokens, encode only)"
done
