#!/bin/bash
# bench/device_check.sh - the GPU checks, in one call on the lent GPU machine, from the kit that
# bench/devkit.sh packed here (nothing is built there):
#
#   1. make check-cuda's checks: the kernel tests on the GPU, under compute-sanitizer memcheck and
#      racecheck (tests/simt/check_cuda.sh), then every test of make check with the real plugin
#      (LORA_TEST_CUDA=1: the CUDA training tests run on the GPU, 30 steps beside the CPU trainer)
#   2. bench/train_gpu.sh (lora beside transformers + peft + bitsandbytes), unless SKIP_BENCH=1
#
# Logs and bench/RESULTS.md come back under $OUT.  Budget: about 4 + 6 minutes; give the call a
# timeout_s of 600 and LAYERS= a smaller depth when less time is left.
set -u
cd "$(dirname "$0")/.."
K=$PWD/.devkit
O=${OUT:-/tmp/device-out}
mkdir -p "$O" /tmp/devkit
[ -f "$K/kit.tar.xz" ] || { echo "device_check: no .devkit/kit.tar.xz (run bench/devkit.sh here first)"; exit 1; }
tar -C /tmp/devkit -xJf "$K/kit.tar.xz"
B=/tmp/devkit/build
# cuBLAS: the toolkit's, else the one torch's wheels brought (nvidia/*/lib)
cul=$(ls -d /usr/local/cuda/lib64 2>/dev/null)
nv=$(python3 -c 'import nvidia, sys; print(nvidia.__path__[0])' 2>/dev/null) &&
	cul=$cul:$(find "$nv" -name 'libcublas*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH=/tmp/devkit/lib:$B:$cul${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
ldd "$B/liblora_cuda.so" | grep 'not found' && echo "device_check: the plugin misses a library (above)"
export PYTHONPATH=$K/site${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi -L
fail=0
T0=$(date +%s)

SAN=$(command -v compute-sanitizer 2>/dev/null || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
echo "== kernels on the GPU, compute-sanitizer: ${SAN:-none}"
SANITIZER=$SAN sh tests/simt/check_cuda.sh "$B" 2>&1 | tee "$O/check_cuda.log" | grep -E '^(PASS|FAIL|==)'
grep -q '^FAIL' "$O/check_cuda.log" && fail=1
cp "$B"/sanitizer-*.log "$O/" 2>/dev/null

echo "== every test with the plugin ($(( $(date +%s) - T0 )) s so far)"
LORA=$B/lora LORA_TOOLS=$B/tools LORA_CUDA_PLUGIN=$B/liblora_cuda.so LORA_TEST_CUDA=1 \
	sh tests/run.sh "$B" >"$O/tests.log" 2>&1 || fail=1
grep -E '^FAIL|passed, .* failed' "$O/tests.log"

if [ -z "${SKIP_BENCH:-}" ]; then
	echo "== bench/train_gpu.sh ($(( $(date +%s) - T0 )) s so far)"
	LORA=$B/lora LORA_CUDA_PLUGIN=$B/liblora_cuda.so OUT=$O bash bench/train_gpu.sh 2>&1 | tail -40 || fail=1
fi
echo "device_check: $(( $(date +%s) - T0 )) s; $([ $fail = 0 ] && echo all passed || echo FAILURES above)"
exit $fail
