# store_concurrency.sh - eight imports at once all land; imports killed with
# SIGKILL at random moments never leave an unreadable index.json or a name
# whose blobs are missing.  The store is checked without lora: index.json and
# every OCI manifest are read with grep and every blob re-hashed with sha256sum.
. tests/lib.sh
TOOLS=${LORA_TOOLS:-$PWD/build/tools}
# test tooling, not under test: its leaks are not ours to report
mktiny() { ASAN_OPTIONS=detect_leaks=0 "$TOOLS/mktiny" "$@"; }
ST=$LORA_HOME

# Check the layout by hand.  Prints problems; silent when the store is sound.
check_store() {
	local idx=$ST/index.json d m
	[ -f "$idx" ] || { echo "no index.json"; return; }
	# one JSON document: balanced braces and brackets, ends with '}'
	[ "$(tr -cd '{' < "$idx" | wc -c)" = "$(tr -cd '}' < "$idx" | wc -c)" ] || echo "index.json braces unbalanced"
	[ "$(tail -c 1 "$idx")" = "}" ] || echo "index.json truncated"
	grep -q '"manifests":\[' "$idx" || echo "index.json has no manifests array"
	for d in $(grep -o '"digest":"sha256:[0-9a-f]*"' "$idx" | cut -d: -f3 | tr -d '"'); do
		m=$ST/blobs/sha256/$d
		[ -f "$m" ] || { echo "index names missing manifest $d"; continue; }
		[ "$(sha256sum < "$m" | cut -c1-64)" = "$d" ] || echo "manifest blob $d is corrupt"
		for l in $(grep -o '"digest":"sha256:[0-9a-f]*"' "$m" | cut -d: -f3 | tr -d '"'); do
			[ -f "$ST/blobs/sha256/$l" ] || { echo "manifest $d names missing blob $l"; continue; }
			# blobs never change once in place: hash each one once
			grep -qx "$l" "$T/hashed" 2>/dev/null && continue
			[ "$(sha256sum < "$ST/blobs/sha256/$l" | cut -c1-64)" = "$l" ] || echo "blob $l is corrupt"
			echo "$l" >> "$T/hashed"
		done
	done
}

mktiny model "$T/base" --hidden 128 --inter 256 --layers 2 >/dev/null
for i in 1 2 3 4 5 6 7 8; do
	mktiny adapter "$T/ad$i" --base "$T/base" --r 16 --seed $i --targets all-linear >/dev/null
done
"$LORA" keygen --name c@example.com >/dev/null

t_case eight_concurrent_imports
pids=""
for i in 1 2 3 4 5 6 7 8; do
	"$LORA" import "$T/ad$i" --name "conc$i:v1" >"$T/out$i" 2>"$T/err$i" &
	pids="$pids $!"
done
i=0
for p in $pids; do
	i=$((i + 1))
	wait "$p" || t_fail "import $i failed: $(cat "$T/err$i")"
done
run "$LORA" list
for i in 1 2 3 4 5 6 7 8; do
	expect_out "conc$i:v1"
	run2=$("$LORA" verify "conc$i:v1" 2>&1) || t_fail "verify conc$i:v1: $run2"
done
expect_eq "$(printf '%s\n' "$OUT" | grep -c '^conc')" 8 "names listed"
expect_eq "$(check_store)" "" "store check"

t_case concurrent_import_and_rm
# writers and a remover at once: rm's garbage collection must not take blobs
# of imports in flight
pids=""
for i in 1 2 3 4; do
	"$LORA" import "$T/ad$i" --name "race$i" >/dev/null 2>"$T/rerr$i" &
	pids="$pids $!"
	"$LORA" rm "conc$((i + 4)):v1" >/dev/null 2>&1 &
	pids="$pids $!"
done
for p in $pids; do wait "$p"; done
for i in 1 2 3 4; do
	run "$LORA" verify "race$i"
	expect_rc 0
done
expect_eq "$(check_store)" "" "store check"

t_case sigkill_imports
# a 2 MB adapter, so that an import takes long enough to be hit in its middle
mktiny model "$T/bigbase" --hidden 256 --inter 512 --layers 2 >/dev/null
mktiny adapter "$T/big" --base "$T/bigbase" --r 64 --targets all-linear >/dev/null
trials=0
killed=0
# at least 20 imports killed before they finished (no ref printed), at most 80 tries
while [ $killed -lt 20 ] && [ $trials -lt 80 ]; do
	trials=$((trials + 1))
	case $((trials % 3)) in 0) src=$T/big;; 1) src=$T/ad$((trials % 8 + 1));; 2) src=$T/big;; esac
	"$LORA" import "$src" --name "k$((trials % 3))" >"$T/kout" 2>/dev/null &
	pid=$!
	sleep "0.0$(printf "%02d" $((RANDOM % 30)))"
	kill -9 "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	[ -s "$T/kout" ] || killed=$((killed + 1))
	problems=$(check_store)
	[ -z "$problems" ] || t_fail "after kill $trials: $problems"
	run "$LORA" list --json
	expect_rc 0
done
[ $killed -ge 20 ] || t_fail "only $killed of $trials imports were killed before they finished"
for r in $(printf '%s\n' "$OUT" | sed -n 's/.*"name": "\(.*\)",/\1/p;s/.*"tag": "\(.*\)",/\1/p' | paste -d: - -); do
	out=$("$LORA" verify "$r" 2>&1) || t_fail "verify $r: $out"
done
echo "  $trials tries, $killed imports killed before they finished"

t_case store_usable_after_kills
run "$LORA" import "$T/ad1" --name after
expect_rc 0
run "$LORA" rm after
expect_rc 0
# the garbage collection of rm also cleared what the killed imports left in tmp/
expect_eq "$(ls -A "$ST/tmp" | wc -l)" 0 "tmp/ after gc"
expect_eq "$(ls -A "$ST/blobs/sha256" | grep -c tmp)" 0 "temporary blobs after gc"
expect_eq "$(check_store)" "" "store check"

t_end
