#!/bin/bash
# bench/train_gpu.sh - QLoRA training on one GPU: `lora train --device cuda` beside transformers +
# peft + bitsandbytes on the same model, rows and settings, run one after the other in this script.
# Never run by `make check`; it needs a CUDA GPU, python3 with torch, transformers, peft and
# bitsandbytes (on the lent GPU machine bitsandbytes travels as a wheel: bench/device_check.sh).
#
#   bash bench/train_gpu.sh            LAYERS=32 SEQ=2048 STEPS=10 RANK=16 by default
#
# The model: Llama-3-8B's shapes (hidden 4096, MLP 14336, 32/8 heads, vocab 128256, rope llama3)
# with random bf16 weights drawn on the GPU by bench/train_gpu_peer.py (nothing is downloaded);
# LAYERS cuts the depth when time is short (the figures then say so).  Both sides: NF4 with double
# quantization, LoRA r=RANK (alpha 2r, dropout 0.05) on all linear layers, gradient checkpointing,
# paged AdamW (32-bit states), clipping 0.3, batch 1 x SEQ tokens, STEPS optimizer steps on the same
# random-token rows.  Timed: all steps, model loading excluded (lora: the "wall_s" of --json; the
# peer: CUDA-synchronized perf_counter around its loop).  Peak memory: the GPU's used memory
# (nvidia-smi, every 0.2 s) above what was used before the run started, for both sides the same way;
# the peer's torch peak reserved/allocated beside it.
#
# MFU = tokens/s x useful FLOPs per token / 989 TFLOP/s (H200 SXM dense bf16), the useful FLOPs of a
# QLoRA step being 4 P + 6 L T C per token: forward 2 P through the linears (P: their parameters,
# LM head included) and 2 T C per layer of causal attention (Q.K^T and P.V over T/2 keys on
# average); backward 2 P (input gradients only: the base is frozen) and twice attention's forward.
# Recomputation for checkpointing and the LoRA terms (r << C) are not counted.
set -u
cd "$(dirname "$0")/.."
LORA=${LORA:-$PWD/lora}
PY=${PYTHON:-python3}
LAYERS=${LAYERS:-32}
SEQ=${SEQ:-2048}
STEPS=${STEPS:-10}
RANK=${RANK:-16}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
W=${BENCH_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/lora-gpu-bench.XXXXXX")}
mkdir -p "$W"
trap '[ -n "${BENCH_KEEP:-}" ] || rm -rf "$W"' EXIT
die() { echo "train_gpu: $*" >&2; exit 1; }

command -v nvidia-smi >/dev/null || die "needs nvidia-smi (a CUDA GPU)"
[ -x "$LORA" ] || die "no lora at $LORA (make, or set LORA=)"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
used() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1; }   # MiB
# CMD...: runs it while sampling the GPU's used memory; leaves the peak above the start in $PEAK_MIB
with_peak() {
	local base pk=0 u pid
	base=$(used)
	"$@" &
	pid=$!
	while kill -0 "$pid" 2>/dev/null; do
		u=$(used); [ "$u" -gt "$pk" ] && pk=$u
		sleep 0.2
	done
	wait "$pid"
	local rc=$?
	PEAK_MIB=$(( pk > base ? pk - base : 0 ))
	return $rc
}

T0=$(date +%s)
echo "== model: Llama-3-8B shapes, $LAYERS layers, random bf16 weights ($gpu)"
"$PY" bench/train_gpu_peer.py make --out "$W/base" --layers "$LAYERS" || die "making the model failed"
"$PY" bench/train_gpu_peer.py rows --out "$W/rows.jsonl" --rows "$STEPS" --seq "$SEQ" --vocab 128256 || die "rows"
echo "   made in $(( $(date +%s) - T0 )) s"

echo "== transformers + peft + bitsandbytes"
with_peak "$PY" bench/train_gpu_peer.py train --base "$W/base" --data "$W/rows.jsonl" --seq "$SEQ" \
	--steps "$STEPS" --rank "$RANK" --checkpoint >"$W/peer.json" || die "the peer failed"
peer_peak=$PEAK_MIB
cat "$W/peer.json"

echo "== lora"
export LORA_HOME="$W/store"
"$LORA" keygen --name bench@example.com >/dev/null || die "keygen"
ours_ok=1
with_peak "$LORA" train --device cuda --base "$W/base" --data "$W/rows.jsonl" --name bench:gpu \
	--rank "$RANK" --alpha $((2 * RANK)) --dropout 0.05 --targets all-linear --quant nf4 --grad-checkpoint \
	--seq-len "$SEQ" --batch 1 --grad-accum 1 --steps "$STEPS" --lr 2e-4 --schedule constant --warmup 0 \
	--max-grad-norm 0.3 --no-pack --json >"$W/ours.json" 2>"$W/ours.err" || ours_ok=0
ours_peak=$PEAK_MIB
cat "$W/ours.json" "$W/ours.err"

"$PY" - "$W/peer.json" "$W/ours.json" "$ours_ok" "$peer_peak" "$ours_peak" "$LAYERS" "$SEQ" "$STEPS" "$RANK" \
	"$PEAK_TFLOPS" "$gpu" >"$W/table.md" <<'EOF' || die "summary"
import json, sys, datetime
peer = json.load(open(sys.argv[1]))
ok = sys.argv[3] == "1"
ours = json.loads(open(sys.argv[2]).read() or "{}") if ok else {}
pp, op = int(sys.argv[4]), int(sys.argv[5])
L, T, steps, r, peak, gpu = int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8]), int(sys.argv[9]), float(sys.argv[10]), sys.argv[11]
C, F, H, KV, D, V = 4096, 14336, 32, 8, 128, 128256
P = L * (C * H * D + 2 * C * KV * D + H * D * C + 3 * C * F) + V * C
fpt = 4 * P + 6 * L * T * C
def mfu(tps): return 100.0 * tps * fpt / (peak * 1e12)
pt = peer["tokens_per_s"]
rows = [("transformers + peft + bitsandbytes", pt, pp, mfu(pt))]
if ok:
    ot = ours["tokens"] / ours["wall_s"]
    rows.append(("lora train --device cuda", ot, op, mfu(ot)))
print("### %s: QLoRA, Llama-3-8B shapes (%d of 32 layers), seq %d, r=%d all-linear, grad checkpointing, %d steps (%s)\n"
      % (datetime.date.today().isoformat(), L, T, r, steps, gpu))
print("`bash bench/train_gpu.sh` (LAYERS=%d SEQ=%d STEPS=%d RANK=%d); peer %s\n" % (L, T, steps, r,
      ", ".join("%s %s" % kv for kv in peer["versions"].items())))
print("| | tokens/s | peak GPU memory (MiB, nvidia-smi) | MFU |")
print("| --- | ---: | ---: | ---: |")
for n, t, m, u in rows:
    print("| %s | %.0f | %d | %.1f%% |" % (n, t, m, u))
print("\npeer's torch peak: allocated %.0f MiB, reserved %.0f MiB" % (peer["peak_allocated"] / 2**20, peer["peak_reserved"] / 2**20))
if ok:
    print("ratio lora/peer: %.2fx tokens/s at %.0f%% of its peak memory" % (rows[1][1] / pt, 100.0 * op / max(pp, 1)))
else:
    print("lora train --device cuda did not run: %s" % open(sys.argv[2].replace("ours.json", "ours.err")).read().strip()[:300])
EOF
cat "$W/table.md"
{ echo; cat "$W/table.md"; } >>bench/RESULTS.md
[ -n "${OUT:-}" ] && cp bench/RESULTS.md "$W/peer.json" "$W/ours.json" "$W/ours.err" "$OUT/" 2>/dev/null
echo "train_gpu: $(( $(date +%s) - T0 )) s in all; appended to bench/RESULTS.md"
[ "$ours_ok" = 1 ]
