#!/bin/sh
# check_cuda.sh BUILD - the GPU half of `make check-cuda` (needs a CUDA device):
# the kernel tests of tests/simt/test_kernels.c linked against the real
# liblora_cuda.so, then the same binary under compute-sanitizer's memcheck
# and racecheck.  Prints PASS/FAIL lines like the other tests; exits non-zero
# on any failure.  $SANITIZER is compute-sanitizer's path (the Makefile finds it).
build=${1:-build}
bin=$build/tests-gpu/test_kernels
fail=0

echo "== $bin (on the GPU)"
if "$bin"; then echo "PASS kernels_on_gpu"; else echo "FAIL kernels_on_gpu"; fail=1; fi
for tool in memcheck racecheck; do
	echo "== compute-sanitizer --tool $tool $bin"
	if "$SANITIZER" --tool "$tool" --error-exitcode 99 --print-limit 20 "$bin" >"$build/sanitizer-$tool.log" 2>&1; then
		echo "PASS sanitizer_$tool"
	else
		tail -40 "$build/sanitizer-$tool.log"
		echo "FAIL sanitizer_$tool (log: $build/sanitizer-$tool.log)"
		fail=1
	fi
done
exit $fail
