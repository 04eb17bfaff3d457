#!/bin/sh
# bench/diff.sh - `lora diff` and `lora extract` at Llama-3-8B sizes, beside a numpy peer.
#
#   sh bench/diff.sh            (from the repository root, after `make`)
#
# 1. diff: two synthetic r=64 adapters on every linear layer of Llama-3-8B shapes
#    (32 layers, hidden 4096, intermediate 14336, kv 1024; bf16, 335 MB each).
#    Target: under 2 s.  Peer: numpy forming each dense ΔW (fp32 matmul) and taking
#    norms, inner product and distance on the first few modules, scaled to all 224.
# 2. extract: a synthetic base/tuned pair (two layers of Llama-3-8B shapes, bf16,
#    1.74 GB together; the tuned weights are base + a rank-16 change), rank 16.
#    Target: peak RSS under 2x the largest tensor (14336x4096 bf16 = 112 MiB).
#    Peer: numpy's randomized SVD of that largest difference alone.
#
# Inputs are generated under $DATA (default ${TMPDIR:-/tmp}/lora-bench-diff) on the
# first run and kept for the next; CLEAN=1 removes them at the end.  Needs python3
# with numpy ($PY, default /opt/oracle-venv/bin/python) and GNU time (/usr/bin/time).
set -eu
LORA=${LORA:-./lora}
PY=${PY:-/opt/oracle-venv/bin/python}
DATA=${DATA:-${TMPDIR:-/tmp}/lora-bench-diff}
PEER_MODULES=${PEER_MODULES:-7}
[ -x "$LORA" ] || { echo "bench: build lora first (make), or set LORA" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "bench: needs GNU time (/usr/bin/time)" >&2; exit 1; }
mkdir -p "$DATA"
echo "lora: $LORA ($($LORA --version)); $(nproc) CPUs; data in $DATA"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) (other work on these CPUs slows the wall times)"

if [ ! -f "$DATA/adapters/b/adapter_model.safetensors" ]; then
	echo "generating two r=64 adapters (Llama-3-8B shapes)..."
	"$PY" bench/diff_gen.py adapters "$DATA/adapters"
fi
if [ ! -f "$DATA/models/tuned/model.safetensors" ]; then
	echo "generating a base/tuned pair (two Llama-3-8B layers)..."
	"$PY" - "$DATA/models" <<'EOF'
import sys
sys.path.insert(0, "bench")
import diff_gen
diff_gen.models(sys.argv[1], layers=2, rank=16)
EOF
fi

# ---------------------------------------------------------------- diff
A=$DATA/adapters/a
B=$DATA/adapters/b
"$LORA" diff "$A" "$B" >/dev/null   # warm the page cache
times=""
for i in 1 2 3 4 5; do
	/usr/bin/time -f "%e %U %S %M" -o "$DATA/time" "$LORA" diff "$A" "$B" >/dev/null
	times="$times$(cat "$DATA/time")
"
done
echo
echo "== lora diff: 2 x 224 modules, r=64, bf16 (5 runs: wall user sys maxrss_kb)"
printf '%s' "$times"
best=$(printf '%s' "$times" | sort -n | head -1 | cut -d' ' -f1)
median=$(printf '%s' "$times" | sort -n | sed -n 3p | cut -d' ' -f1)
cpu=$(printf '%s' "$times" | sort -n | sed -n 3p | awk '{print $2 + $3}')
echo "lora diff: best ${best}s, median ${median}s wall (${cpu}s CPU), target < 2 s;" \
	"load average now $(cut -d' ' -f1 /proc/loadavg)"

"$PY" bench/diff_peer.py diff "$A" "$B" "$PEER_MODULES" >"$DATA/peer.txt"
per=$(sed -n 's/^peer_seconds_per_module //p' "$DATA/peer.txt")
"$LORA" diff --json "$A" "$B" >"$DATA/ours.json"
"$PY" - "$DATA/peer.txt" "$DATA/ours.json" "$per" "$median" <<'EOF'
import json, sys
peer = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
ours = {m["name"]: m for m in json.load(open(sys.argv[2]))["modules"]}
worst = max(abs(p[k] - ours[p["name"]][k]) / abs(p[k]) for p in peer
            for k in ("norm_a", "norm_b", "distance", "cosine") if p[k])
per, med = float(sys.argv[3]), float(sys.argv[4])
print(f"numpy dense peer: {per:.3f} s per module over {len(peer)} modules "
      f"-> ~{per * 224:.1f} s for 224 modules (lora diff median {med:.2f} s: {per * 224 / med:.0f}x)")
print(f"largest relative difference from the peer on those modules: {worst:.2e} "
      f"(peer uses fp32 matmuls; the cosine of unrelated adapters is ~1e-5, so its relative error is large)")
EOF

# -------------------------------------------------------------- extract
M=$DATA/models
rm -rf "$DATA/extracted"
pair=$(du -cb "$M/base/model.safetensors" "$M/tuned/model.safetensors" | tail -1 | cut -f1)
largest=$((14336 * 4096 * 2))
/usr/bin/time -v -o "$DATA/time-v" "$LORA" extract --base "$M/base" --tuned "$M/tuned" --rank 16 \
	-o "$DATA/extracted" >"$DATA/extract.txt"
rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$DATA/time-v")
wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$DATA/time-v")
echo
echo "== lora extract --rank 16 on a $(echo "$pair" | awk '{printf "%.2f", $1/1e9}') GB pair"
grep -e 'CAPTURED' -e 'mlp.down_proj' -e 'wrote' -e 'r=16' "$DATA/extract.txt" || true
echo "lora extract: ${wall} wall, peak RSS $((rss / 1024)) MiB; largest tensor $((largest / 1048576)) MiB," \
	"limit 2x = $((2 * largest / 1048576)) MiB: $([ $((rss * 1024)) -lt $((2 * largest)) ] && echo within || echo OVER)"
"$PY" bench/diff_peer.py extract "$M/base" "$M/tuned" model.layers.0.mlp.down_proj.weight 16 >"$DATA/peer-x.txt"
echo "numpy peer, the largest module alone: $(sed -n 's/peer_extract_seconds //p' "$DATA/peer-x.txt") s," \
	"peak RSS $(( $(sed -n 's/peer_extract_peak_rss //p' "$DATA/peer-x.txt") / 1048576 )) MiB"

[ "${CLEAN:-0}" = 1 ] && rm -rf "$DATA"
exit 0
