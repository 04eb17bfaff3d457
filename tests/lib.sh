# tests/lib.sh - shared helpers for the shell integration tests.
#
# Each test script sources this, calls `t_case NAME` before each case, uses the
# expect_* helpers, and ends with `t_end`.  Output lines "PASS NAME" and
# "FAIL NAME" are what tests/run.sh counts.  $LORA is the binary under test;
# $T is a fresh temporary directory removed at exit; $FIX the fixtures.

set -u
LORA=${LORA:-$PWD/lora}
FIX=${LORA_FIXTURES:-$PWD/tests/fixtures}
T=$(mktemp -d "${TMPDIR:-/tmp}/lora-test.XXXXXX")
export LORA_HOME="$T/store"
export HOME="$T/home"
mkdir -p "$HOME"
trap 'rm -rf "$T"' EXIT
_case=""
_case_failed=0
_pass=0
_fail=0

_finish_case() {
	[ -n "$_case" ] || return 0
	if [ "$_case_failed" = 0 ]; then echo "PASS $_case"; _pass=$((_pass + 1));
	else echo "FAIL $_case"; _fail=$((_fail + 1)); fi
	_case=""
}

t_case() { _finish_case; _case=$1; _case_failed=0; }
t_fail() { echo "  $_case: $*" >&2; _case_failed=1; }
t_end() { _finish_case; [ "$_fail" = 0 ]; }

# run CMD...: captures stdout in $OUT, stderr in $ERR, exit code in $RC
run() {
	OUT=$("$@" 2>"$T/.stderr"); RC=$?
	ERR=$(cat "$T/.stderr")
}

expect_rc() { [ "$RC" = "$1" ] || t_fail "expected exit $1, got $RC (stderr: $ERR)"; }
# one line on stderr beginning "lora: " and containing the given text
expect_err() {
	local n
	n=$(printf '%s\n' "$ERR" | grep -c .)
	case "$ERR" in "lora: "*) ;; *) t_fail "stderr does not start with 'lora: ': $ERR";; esac
	[ "$n" = 1 ] || t_fail "expected one line on stderr, got $n: $ERR"
	[ -z "${1:-}" ] || case "$ERR" in *"$1"*) ;; *) t_fail "stderr lacks '$1': $ERR";; esac
}
expect_out() { case "$OUT" in *"$1"*) ;; *) t_fail "stdout lacks '$1': $OUT";; esac; }
expect_eq() { [ "$1" = "$2" ] || t_fail "expected '$2', got '$1'${3:+ ($3)}"; }
