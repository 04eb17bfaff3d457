#!/bin/bash
# bench/list.sh - `lora list` of a store with 1,000 adapters (target: under 0.3 s).
#
#   bench/list.sh [STORE]   (default STORE: ${TMPDIR:-/tmp}/lora-bench-list, built once, reused)
#
# Builds a store of 1,000 signed adapters (a small synthetic adapter from
# tests/tools/mktiny imported under 1,000 names with 1,000 descriptions, so
# each has its own manifest.json, signature and OCI manifest: 3,000 blobs
# beside the 2 shared adapter files), then times, warm page cache, median of
# RUNS runs, on the same store:
#   lora list                 ours: index.json, 1,000 OCI manifests, 1,000 manifest.json
#   lora list --json          the same as one JSON document
#   jq over index.json        peer: names and digests only, from index.json alone
#   cat of every small blob   peer: just reading the 2,000 JSON files list parses
#   skopeo inspect --raw      peer: one adapter's OCI manifest (x1, not x1000)
# Never run by make check.
set -eu
cd "$(dirname "$0")/.."
B=${BUILD:-build-bench}
ST=${1:-${TMPDIR:-/tmp}/lora-bench-list}
RUNS=${RUNS:-7}
N=${N:-1000}

make -s CUDA=0 BUILD="$B" "$B/lora" "$B/tools/mktiny" >/dev/null
LORA=$PWD/$B/lora
if [ "$(LORA_HOME=$ST "$LORA" list --json | grep -c '"digest"')" != "$N" ]; then
	echo "building a store of $N adapters in $ST ..." >&2
	rm -rf "$ST" "$ST.src"
	"$B/tools/mktiny" model "$ST.src/base" --hidden 64 --inter 128 >/dev/null
	"$B/tools/mktiny" adapter "$ST.src/ad" --base "$ST.src/base" --r 8 >/dev/null
	LORA_HOME=$ST "$LORA" keygen --name bench@example.com >/dev/null
	for i in $(seq 1 "$N"); do
		LORA_HOME=$ST "$LORA" import "$ST.src/ad" --name "adapter$i:v$((i % 7))" --description "bench $i" >/dev/null
	done
fi

# median wall time of a command, in seconds
t() {
	local i s e all=""
	for i in $(seq "$RUNS"); do
		s=$(date +%s.%N)
		"$@" >/dev/null 2>&1
		e=$(date +%s.%N)
		all="$all $(echo "$e - $s" | bc)"
	done
	printf "%.3f" "$(echo $all | tr " " "\n" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p")"
}

n=$(LORA_HOME=$ST "$LORA" list | tail -n +2 | wc -l)
echo "store: $ST, $n names, $(ls "$ST/blobs/sha256" | wc -l) blobs"
printf '%-44s %8s s\n' "lora list" "$(t env LORA_HOME="$ST" "$LORA" list)"
printf '%-44s %8s s\n' "lora list --json" "$(t env LORA_HOME="$ST" "$LORA" list --json)"
if command -v jq >/dev/null; then
	printf '%-44s %8s s\n' "jq names+digests of index.json (peer)" \
		"$(t jq -r '.manifests[] | .annotations["org.opencontainers.image.ref.name"] + " " + .digest' "$ST/index.json")"
fi
printf '%-44s %8s s\n' "cat every blob under 4 KiB (peer)" \
	"$(t sh -c "find '$ST/blobs/sha256' -size -4k -type f -exec cat {} + ")"
if command -v skopeo >/dev/null; then
	printf '%-44s %8s s\n' "skopeo inspect --raw, one adapter (peer)" \
		"$(t skopeo inspect --raw "oci:$ST:adapter1:v1")"
fi
