#!/bin/bash
# bench/train_cpu.sh - tokens/s of one forward+backward pass (LoRA gradients) of
# the CPU trainer beside torch + peft, on the same model, threads, batch and
# sequence length.  Never run by `make check`.
#
#   bench/train_cpu.sh [--threads N] [--batch B] [--seq T] [--iters K] [--rounds R] [--rank r]
#
# The model: a synthetic Llama (tests/tools/mktiny) of 27.3 M parameters,
# hidden 512, 6 layers, 8 heads / 4 key-value heads, MLP 1536, vocab 8192,
# bf16 weights.  Both sides compute in fp32: torch loads the bf16 weights as
# fp32, we keep them bf16 and widen them on use (--quant none); LoRA rank r
# on all seven linear layers, dropout 0, labels = inputs.  We also print our
# NF4 (QLoRA) figure.  Each side runs ROUNDS times, alternating, and the best
# round counts (shared machines disturb runs; the best is the least disturbed).
# tokens_per_cpu_s divides by the process's CPU time instead of wall time.
set -eu
cd "$(dirname "$0")/.."

THREADS=$(nproc)
BATCH=4
SEQ=256
ITERS=3
ROUNDS=3
RANK=16
while [ $# -gt 0 ]; do
	case $1 in
	--threads) THREADS=$2; shift 2 ;;
	--batch) BATCH=$2; shift 2 ;;
	--seq) SEQ=$2; shift 2 ;;
	--iters) ITERS=$2; shift 2 ;;
	--rounds) ROUNDS=$2; shift 2 ;;
	--rank) RANK=$2; shift 2 ;;
	*) echo "usage: $0 [--threads N] [--batch B] [--seq T] [--iters K] [--rounds R] [--rank r]" >&2; exit 2 ;;
	esac
done
BUILD=${BUILD:-build-bench}
PY=${PYTHON:-/opt/oracle-venv/bin/python}
W=$(mktemp -d "${TMPDIR:-/tmp}/lora-bench.XXXXXX")
trap 'rm -rf "$W"' EXIT

make -s CUDA=0 BUILD="$BUILD" "$BUILD/libtrain.a" "$BUILD/libadapter.a" tools >/dev/null
cc -O2 -std=gnu11 -I. -I/usr/include/x86_64-linux-gnu -o "$W/bench" bench/train_cpu_bench.c \
	"$BUILD/libtrain.a" "$BUILD/libadapter.a" -larchive -lcrypto -lcjson -lpcre2-8 -llapacke -lopenblas -lm -pthread
"$BUILD/tools/mktiny" model "$W/model" --hidden 512 --inter 1536 --layers 6 --heads 8 --kv-heads 4 \
	--vocab 8192 --dtype bf16 >/dev/null

cat >"$W/peer.py" <<'EOF'
import sys, time, warnings
warnings.filterwarnings("ignore")
import torch, transformers
from peft import LoraConfig, get_peft_model
model_dir, threads, B, T, iters, rank = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
torch.set_num_threads(threads)
m = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
pm = get_peft_model(m, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", lora_dropout=0.0,
                                  task_type="CAUSAL_LM"))
pm.train()
ids = torch.randint(0, m.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(1))
def step():
    out = pm(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.loss
step()
t0, c0 = time.perf_counter(), time.process_time()
for _ in range(iters):
    loss = step()
dt, dc = time.perf_counter() - t0, time.process_time() - c0
print(f"tokens_per_s {B * T * iters / dt:.1f} tokens_per_cpu_s {B * T * iters / dc:.1f} loss {float(loss):.4f}")
EOF

have_peer=1
"$PY" -c "import torch, transformers, peft" 2>/dev/null || have_peer=0
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS

best() { sort -g | tail -1; }
field() { sed -n "s/.*$1 \([0-9.]*\).*/\1/p"; }
: >"$W/ours" ; : >"$W/ours_nf4" ; : >"$W/peer"
for r in $(seq "$ROUNDS"); do
	"$W/bench" "$W/model" none "$THREADS" "$BATCH" "$SEQ" "$ITERS" "$RANK" >>"$W/ours"
	"$W/bench" "$W/model" nf4 "$THREADS" "$BATCH" "$SEQ" "$ITERS" "$RANK" >>"$W/ours_nf4"
	[ $have_peer = 1 ] && "$PY" "$W/peer.py" "$W/model" "$THREADS" "$BATCH" "$SEQ" "$ITERS" "$RANK" >>"$W/peer" 2>/dev/null
done

ours=$(field tokens_per_s <"$W/ours" | best)
ours_cpu=$(field tokens_per_cpu_s <"$W/ours" | best)
nf4=$(field tokens_per_s <"$W/ours_nf4" | best)
echo "model: 27.3 M parameters (hidden 512, 6 layers, vocab 8192), batch $BATCH x seq $SEQ, LoRA r=$RANK all-linear, $THREADS threads, best of $ROUNDS rounds x $ITERS passes"
printf '%-28s %10s tokens/s  %10s tokens/cpu-s\n' "lora (fp32, --quant none)" "$ours" "$ours_cpu"
printf '%-28s %10s tokens/s\n' "lora (NF4 base)" "$nf4"
if [ $have_peer = 1 ] && [ -s "$W/peer" ]; then
	peer=$(field tokens_per_s <"$W/peer" | best)
	peer_cpu=$(field tokens_per_cpu_s <"$W/peer" | best)
	printf '%-28s %10s tokens/s  %10s tokens/cpu-s\n' "torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null) + peft (fp32)" "$peer" "$peer_cpu"
	awk -v a="$ours" -v b="$peer" -v c="$ours_cpu" -v d="$peer_cpu" \
		'BEGIN { printf "ratio lora / torch: %.2f (wall), %.2f (cpu time)\n", a / b, c / d }'
else
	echo "torch + peft: not available at $PY (set PYTHON=...)"
fi
