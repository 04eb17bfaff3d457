#!/bin/bash
# bench/push_pull.sh - lora push / lora pull of a ~160 MB adapter to a
# registry on loopback (Debian's docker-registry, started here), beside
# skopeo copy of the same OCI artifact both ways; then a second push, which
# must upload no blob.  Wall time (best of $RUNS, with the CPU time of that
# run) and peak RSS from GNU time.  The registry runs on the same CPUs.
#
#   bash bench/push_pull.sh            (after make; needs docker-registry, skopeo, jq)
set -u
cd "$(dirname "$0")/.."
LORA=${LORA:-$PWD/lora}
TOOLS=${LORA_TOOLS:-$(ls -d "$PWD"/build*/tools 2>/dev/null | head -1)}
RUNS=${RUNS:-3}
for c in docker-registry skopeo jq /usr/bin/time; do
	command -v "$c" >/dev/null || { echo "bench: needs $c" >&2; exit 1; }
done
T=$(mktemp -d "${TMPDIR:-/tmp}/lora-bench-pp.XXXXXX")
export LORA_HOME="$T/store" HOME="$T/home"
mkdir -p "$HOME"
. tests/registry_lib.sh
trap 'reg_stop; rm -rf "$T"' EXIT
reg_start || exit 1

# an all-linear r=256 adapter on a Llama-shaped base (hidden 1024, 8 layers): ~160 MB of fp32
"$TOOLS/mktiny" model "$T/base" --hidden 1024 --inter 2816 --layers 8 --heads 8 --kv-heads 4 >/dev/null
"$TOOLS/mktiny" adapter "$T/ad" --base "$T/base" --r 256 --targets all-linear >/dev/null
"$LORA" keygen --name bench@example.com >/dev/null
"$LORA" import "$T/ad" --name big:v1 >/dev/null
size=$("$LORA" list --json | jq '.[0].size // empty')
[ -n "$size" ] || size=$(stat -c %s "$T/ad/adapter_model.safetensors")
printf 'adapter: %s bytes (%.1f MB), registry %s, %s runs each, best wall time\n' "$size" \
	"$(echo "$size / 1000000" | bc -l)" "$REG" "$RUNS"

best() {  # NAME PREP CMD: PREP runs before each timed run (not timed); CMD is expanded per run
	local name=$1 prep=$2 cmd=$3 b_t="" b_m="" b_c="" i t m u sy
	for i in $(seq 1 "$RUNS"); do
		eval "$prep"
		eval "/usr/bin/time -f '%e %M %U %S' -o \"\$T/time\" $cmd" >"$T/out" 2>"$T/err" ||
			{ echo "$name failed: $(cat "$T/err")"; return 1; }
		read -r t m u sy <"$T/time"
		if [ -z "$b_t" ] || [ "$(echo "$t < $b_t" | bc)" = 1 ]; then b_t=$t; b_c=$(echo "$u + $sy" | bc); fi
		if [ -z "$b_m" ] || [ "$m" -lt "$b_m" ]; then b_m=$m; fi
	done
	printf '%-44s %7.2f s %7.2f s %9.1f MB\n' "$name" "$b_t" "$b_c" "$(echo "$b_m / 1024" | bc -l)"
}
# a fresh registry for each timed push: nothing to skip, nothing skopeo could mount from another repository
fresh_registry() { n=$((${n:-0} + 1)); reg_stop; rm -rf "$REG_DATA"; reg_start; }

printf '%-44s %9s %9s %12s\n' "" "wall" "CPU" "peak RSS"
best "lora push (fresh registry)" 'fresh_registry' '"$LORA" push big:v1 "$REG/bench/lora$n:v1"'
best "skopeo copy oci: -> docker:// (fresh reg.)" 'fresh_registry' \
	'skopeo copy -q --dest-tls-verify=false "oci:$LORA_HOME:big:v1" "docker://$REG/bench/skopeo$n:v1"'
fresh_registry
"$LORA" push big:v1 "$REG/bench/ref:v1" >/dev/null
"$LORA" --store "$T/pulled" trust add bench@example.com "$LORA_HOME/keys/id_ed25519.pub" >/dev/null
best "lora pull (fresh store)" 'rm -rf "$T/pulled/blobs" "$T/pulled/index.json"' \
	'"$LORA" --store "$T/pulled" pull "$REG/bench/ref:v1" --name big:v1'
best "skopeo copy docker:// -> oci: (fresh dir)" 'rm -rf "$T/skdir"' \
	'skopeo copy -q --src-tls-verify=false "docker://$REG/bench/ref:v1" "oci:$T/skdir:big:v1"'
best "lora push again (registry has every blob)" ':' '"$LORA" push big:v1 "$REG/bench/ref:v1" --json'
up=$(jq .uploaded "$T/out")
echo "second push: $up blobs uploaded (registry log: $(reg_count_uploads) upload sessions in all)"
"$LORA" --store "$T/pulled" verify big:v1 >/dev/null && echo "pulled adapter verifies"
