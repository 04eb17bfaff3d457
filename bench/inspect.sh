#!/bin/bash
# bench/inspect.sh - `lora inspect` of a ~1 GB model folder reads headers, not data.
#
#   bench/inspect.sh [DIR]      (default DIR: ${TMPDIR:-/tmp}/lora-bench-1g, built once, reused)
#
# Builds a synthetic Llama-shaped model (hidden 2048, 9 layers, vocab 32000,
# bf16, 3 shards: about 1.1 GB (1.02 GiB) of real random weights) with tests/tools/mktiny,
# then times, on the same folder, with a warm page cache:
#   lora inspect DIR                        (ours: parses and checks the headers)
#   Python safetensors safe_open, list keys (peer: the reference reader, same job)
#   cat DIR/*.safetensors > /dev/null       (what reading the data costs, for scale)
# and counts the pages lora touched (minor page faults, an upper bound that
# includes the program's own pages) against the folder's size.
# Never run by make check.
set -eu
cd "$(dirname "$0")/.."
B=${BUILD:-build-bench}
DIR=${1:-${TMPDIR:-/tmp}/lora-bench-1g}
PY=${PYTHON:-/opt/oracle-venv/bin/python}
RUNS=${RUNS:-7}

make -s CUDA=0 BUILD="$B" "$B/lora" "$B/tools/mktiny" >/dev/null
LORA=$PWD/$B/lora
if [ ! -f "$DIR/model.safetensors.index.json" ]; then
	echo "building $DIR ..." >&2
	rm -rf "$DIR"
	"$B/tools/mktiny" model "$DIR" --hidden 2048 --inter 5632 --layers 9 --heads 16 --kv-heads 4 \
		--vocab 32000 --dtype bf16 --shards 3 >/dev/null
fi
bytes=$(cat "$DIR"/*.safetensors | wc -c)
cat "$DIR"/*.safetensors >/dev/null  # warm the page cache for everyone alike

# median of RUNS wall-clock times, in milliseconds
median_ms() {
	local t=() i s e
	for i in $(seq "$RUNS"); do
		s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N)
		t+=("$(((e - s) / 1000))")
	done
	printf '%s\n' "${t[@]}" | sort -n | sed -n "$(((RUNS + 1) / 2))p" | awk '{ printf "%.1f", $1 / 1000 }'
}

"$LORA" inspect "$DIR" | sed 's/^/  /'
echo
printf 'folder: %s, %.2f GB in %d shards\n' "$DIR" "$(echo "$bytes / 1000000000" | bc -l)" "$(ls "$DIR"/*.safetensors | wc -l)"
lora_ms=$(median_ms "$LORA" inspect "$DIR")
lora_json_ms=$(median_ms "$LORA" inspect --json "$DIR")
faults=$( { /usr/bin/time -f '%R %M' "$LORA" inspect "$DIR" >/dev/null; } 2>&1 | tail -1)
cat_ms=$(median_ms sh -c "cat '$DIR'/*.safetensors")
printf '%-44s %9s ms\n' "lora inspect DIR" "$lora_ms"
printf '%-44s %9s ms\n' "lora inspect --json DIR" "$lora_json_ms"
if [ -x "$PY" ] && "$PY" -c 'import safetensors' 2>/dev/null; then
	cat >"${TMPDIR:-/tmp}/lora-bench-list.py" <<'PYEOF'
import glob, sys, time
t0 = time.perf_counter()
from safetensors import safe_open
t1 = time.perf_counter()
n = 0
for f in sorted(glob.glob(sys.argv[1] + "/*.safetensors")):
    with safe_open(f, framework="numpy") as s:
        for k in s.keys():
            s.get_slice(k).get_shape()
            n += 1
t2 = time.perf_counter()
print("%d %.1f %.1f" % (n, (t1 - t0) * 1e3, (t2 - t1) * 1e3))
PYEOF
	py_ms=$(median_ms "$PY" "${TMPDIR:-/tmp}/lora-bench-list.py" "$DIR")
	read -r n imp lst < <("$PY" "${TMPDIR:-/tmp}/lora-bench-list.py" "$DIR")
	printf '%-44s %9s ms  (listing alone %s ms, import %s ms; %d tensors)\n' \
		"python safetensors safe_open, list shapes" "$py_ms" "$lst" "$imp" "$n"
else
	echo "python safetensors: not available at $PY (set PYTHON=); peer skipped"
fi
printf '%-44s %9s ms  (reading the data, warm cache)\n' "cat DIR/*.safetensors > /dev/null" "$cat_ms"
set -- $faults
printf 'lora inspect touched at most %d pages (%.1f MiB, program included) of %.0f MiB; max RSS %.1f MiB\n' \
	"$1" "$(echo "$1 * 4096 / 1048576" | bc -l)" "$(echo "$bytes / 1048576" | bc -l)" "$(echo "$2 / 1024" | bc -l)"
