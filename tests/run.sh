#!/bin/sh
# tests/run.sh - run every test program and script; print "N passed, N failed".
# Usage: tests/run.sh BUILD_DIR   (unit test binaries live in BUILD_DIR/tests)
build=${1:-build}
log=$(mktemp)
status=0
for t in "$build"/tests/test_*; do
	[ -x "$t" ] || continue
	echo "== $t"
	rc=0; "$t" >"$log.one" 2>&1 || rc=$?
	[ "$rc" = 0 ] || status=1
	cat "$log.one"; cat "$log.one" >>"$log"
	grep -q '^\(PASS\|FAIL\) ' "$log.one" || { echo "FAIL $(basename "$t")-crashed"; echo "FAIL crashed" >>"$log"; }
	# a program that dies after some cases (an abort, a signal) without a FAIL line
	[ "$rc" = 0 ] || grep -q '^FAIL ' "$log.one" || { echo "FAIL $(basename "$t")-exit-$rc"; echo "FAIL exit" >>"$log"; }
done
for t in tests/sh/*.sh; do
	[ -f "$t" ] || continue
	echo "== $t"
	bash "$t" >"$log.one" 2>&1 || status=1
	cat "$log.one"; cat "$log.one" >>"$log"
	grep -q '^\(PASS\|FAIL\) ' "$log.one" || { echo "FAIL $(basename "$t")-nocases"; echo "FAIL nocases" >>"$log"; }
done
pass=$(grep -c '^PASS ' "$log")
fail=$(grep -c '^FAIL ' "$log")
rm -f "$log" "$log.one"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
