#!/bin/bash
# cuda_train_simt.sh - `lora train --device cuda` end to end on the CPU execution layer
# (tests/simt built as a plugin, liblora_cuda_simt.so): 20 steps of a tiny odd-shaped model
# (C 40, F 72, V 97, 5 heads over 1 KV head: GQA 5, head_dim 8; rows of 3 to 12 tokens,
# unpacked, so batches have padding rows) on cuda and on cpu from the same seed and data;
# the per-step losses and the final adapters agree; a run interrupted on cuda resumes on
# the cpu and ends where the straight cpu run ends; and what cannot run on the device is
# refused in one line.
#
# Tolerances.  The layer's gemm is OpenBLAS sgemm on fp32 operands (tests/simt/blas_simt.cc
# widens bf16 only when asked, and the backend never asks), so the products are the CPU
# trainer's; what differs is the summation order inside the kernels' reductions (norms,
# softmax, cross-entropy), ~1e-7 relative on one step's loss (measured 1e-7 over 20 steps).
# Per-step loss: 1e-5 relative.  The adapters: each module's ΔW within 1e-4 of its norm
# (lora diff's distance): AdamW's update lr·m/√v does not shrink with the gradient, so a
# relative gradient error ε moves each step by about ε, more where a gradient is near 0;
# measured ~6e-6 after 20 steps of lr 1e-2.  A skipped residual or bias moves both by 1e-2+.
. tests/lib.sh

SIMT_SO=$LORA_TOOLS/liblora_cuda_simt.so
V0_SO=$LORA_TOOLS/liblora_cuda_v0.so
# under make check-cuda (LORA_TEST_CUDA=1) the same runs on the GPU, through the real plugin (not yet
# run on one: the tolerances are those of fp32 products in another summation order, as on the layer)
if [ "${LORA_TEST_CUDA:-}" = 1 ] && [ -n "${LORA_CUDA_PLUGIN:-}" ]; then SIMT_SO=$LORA_CUDA_PLUGIN; fi
[ -f "$SIMT_SO" ] || { t_case cuda_train_simt_plugin; t_fail "no $SIMT_SO (make tools)"; t_end; exit 1; }
# holds X OP Y: a numeric comparison; a non-number never holds
holds() { [[ $1 =~ ^[0-9.]+(e[-+]?[0-9]+)?$ ]] && awk "BEGIN { exit !($1 $2 $3) }"; }

"$LORA" keygen --name trainer@example.com >/dev/null 2>&1
ASAN_OPTIONS=detect_leaks=0 "$LORA_TOOLS/mktiny" model "$T/odd" --hidden 40 --inter 72 --layers 2 \
	--heads 5 --kv-heads 1 --vocab 97 --seed 3 >/dev/null || echo "mktiny failed" >&2
# 24 rows counting up (ids 3..92), 3 to 12 tokens
awk 'BEGIN { s = 11; for (r = 0; r < 24; r++) { s = (s * 1103515245 + 12345) % 2147483648; a = 3 + s % 90;
	s = (s * 1103515245 + 12345) % 2147483648; len = 3 + s % 10; line = "{\"input_ids\": [";
	for (k = 0; k < len; k++) line = line (k ? ", " : "") (3 + (a - 3 + k) % 90); print line "]}" } }' \
	>"$T/odd.jsonl"
args=(--base "$T/odd" --data "$T/odd.jsonl" --steps 20 --batch 3 --grad-accum 2 --seq-len 12 --no-pack
	--rank 4 --lr 1e-2 --threads 1 --save-every 1000 --eval-split 0.25 --eval-every 5)

# "STEP LOSS" of each EVENT (train or eval) line of a log
losses() { grep "\"event\": \"$2\"" "$1" | sed 's/.*"step": \([0-9]*\), "[a-z_]*loss": \([^,}]*\).*/\1 \2/'; }
# loss_diff LOG LOG N [EVENT]: the largest relative loss difference of the two logs' EVENT lines
# (train by default), or "steps differ" unless both have the same N steps
loss_diff() {
	join <(losses "$1" "${4:-train}") <(losses "$2" "${4:-train}") | awk -v n="$3" '{ d = $2 - $3;
		d = d < 0 ? -d : d; r = d / $2; m = r > m ? r : m; c++ }
		END { if (c != n) print "steps differ (" c " of " n ")"; else printf "%.3g\n", m }'
}
# the largest module distance of two adapters relative to the module's norm (lora diff --json)
adapter_diff() {
	"$LORA" diff "$1" "$2" --json | grep -o '"norm_a": *[^,]*, *"norm_b": *[^,]*, *"distance": *[^,]*' |
		awk -F'[:,]' '{ r = $6 / $2; m = r > m ? r : m; c++ } END { if (!c) print "no modules"; else printf "%.3g\n", m }'
}

t_case cuda_train_20_steps_follow_the_cpu
run "$LORA" train "${args[@]}" --name cpu20 --device cpu --json; expect_rc 0
expect_out '"device": "cpu"'
LORA_CUDA_PLUGIN=$SIMT_SO run "$LORA" train "${args[@]}" --name cuda20 --device cuda --json; expect_rc 0
expect_out '"device": "cuda"'
"$LORA" export cpu20 -o "$T/cpu20" --format peft && "$LORA" export cuda20 -o "$T/cuda20" --format peft ||
	t_fail "export failed"
grep -q '"device": *"cuda"' "$T/cuda20/training_log.jsonl" || t_fail "the log does not say cuda"
d=$(loss_diff "$T/cpu20/training_log.jsonl" "$T/cuda20/training_log.jsonl" 20)
echo "  per-step loss, cuda (simt) vs cpu over 20 steps: at most $d relative"
holds "$d" "<=" 1e-5 || t_fail "per-step losses differ: $d"
# the evaluations (forward only, on the device) at steps 0, 5, ..., 20
e=$(loss_diff "$T/cpu20/training_log.jsonl" "$T/cuda20/training_log.jsonl" 5 eval)
echo "  eval loss, cuda vs cpu: at most $e relative"
holds "$e" "<=" 1e-5 || t_fail "eval losses differ: $e"
a=$(adapter_diff cpu20 cuda20)
echo "  final adapters: module distance at most $a of the module's norm"
holds "$a" "<=" 1e-4 || t_fail "adapters differ: $a"

t_case cuda_train_grad_checkpoint_follows_the_cpu
LORA_CUDA_PLUGIN=$SIMT_SO run "$LORA" train "${args[@]}" --steps 4 --name cuck --device cuda --grad-checkpoint
expect_rc 0
run "$LORA" train "${args[@]}" --steps 4 --name cpuck --device cpu --grad-checkpoint; expect_rc 0
"$LORA" export cuck -o "$T/cuck" --format peft && "$LORA" export cpuck -o "$T/cpuck" --format peft ||
	t_fail "export failed"
d=$(loss_diff "$T/cpuck/training_log.jsonl" "$T/cuck/training_log.jsonl" 4)
holds "$d" "<=" 1e-5 || t_fail "per-step losses differ with --grad-checkpoint: $d"

t_case cuda_interrupted_resumes_on_the_cpu
rm -f "$T/sig.err"
LORA_CUDA_PLUGIN=$SIMT_SO "$LORA" train "${args[@]}" --name moved --device cuda 2>"$T/sig.err" >/dev/null &
pid=$!
log=$LORA_HOME/work/moved/latest/training_log.jsonl
for i in $(seq 600); do
	n=$(grep -c '"event": "train"' "$log" 2>/dev/null)
	[ "${n:-0}" -ge 5 ] && break
	sleep 0.05
done
kill -INT $pid 2>/dev/null
wait $pid
RC=$?; ERR=$(cat "$T/sig.err")
expect_rc 130
expect_err "interrupted at step"
at=$(printf '%s' "$ERR" | sed -n 's/.*interrupted at step \([0-9]*\) of.*/\1/p')
echo "  interrupted on cuda at step $at of 20, resumed on the cpu"
run "$LORA" train --name moved --resume --device cpu; expect_rc 0
"$LORA" export moved -o "$T/moved" --format peft || t_fail "export failed"
grep -q '"event": "resume"' "$T/moved/training_log.jsonl" || t_fail "the log does not show the resume"
d=$(loss_diff "$T/cpu20/training_log.jsonl" "$T/moved/training_log.jsonl" 20)
holds "$d" "<=" 1e-5 || t_fail "per-step losses of the moved run differ: $d"
a=$(adapter_diff cpu20 moved)
echo "  moved run vs straight cpu run: per-step loss $d, adapters $a"
holds "$a" "<=" 1e-4 || t_fail "adapters differ: $a"

t_case cuda_refusals_are_one_line
run env LORA_CUDA_PLUGIN="$T/nope.so" "$LORA" train "${args[@]}" --name x --device cuda
expect_rc 1; expect_err "--device cuda: cannot load the CUDA plugin $T/nope.so"
run env LORA_CUDA_PLUGIN="$V0_SO" "$LORA" train "${args[@]}" --name x --device cuda
expect_rc 1; expect_err "has ABI version 0"
[ ! -e "$LORA_HOME/work/x" ] || t_fail "a refused run left a work area"
# a family the kernels now cover (Qwen3's q_norm/k_norm): --device cuda and auto train it on the
# device (the one refusal left, a head_dim over 128 or odd, is test_model_cuda's refuses_unsupported)
LORA_CUDA_PLUGIN=$SIMT_SO run "$LORA" train --base "$FIX/families/qwen3" --data "$T/odd.jsonl" --name q3 \
	--steps 1 --batch 1 --grad-accum 1 --seq-len 8 --device cuda --json
expect_rc 0; expect_out '"device": "cuda"'
LORA_CUDA_PLUGIN=$SIMT_SO run "$LORA" train --base "$FIX/families/qwen3" --data "$T/odd.jsonl" --name q3a \
	--steps 1 --batch 1 --grad-accum 1 --seq-len 8 --json
expect_rc 0; expect_out '"device": "cuda"'
# auto with a working device trains on it
LORA_CUDA_PLUGIN=$SIMT_SO run "$LORA" train "${args[@]}" --steps 1 --name auto1 --json
expect_rc 0; expect_out '"device": "cuda"'

t_end
