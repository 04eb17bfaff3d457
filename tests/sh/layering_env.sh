#!/bin/bash
# layering_env.sh - the library is told, it does not look around: no getenv
# (nor secure_getenv, environ) in libadapter/, train/ or kernels/; only the
# program (cmd/) reads the environment and passes what it found in the
# options (cmd.h, struct cmd_ctx: cache dir, temp dir, user, created time).
# The checker is also run on a copy with a planted getenv, to see it fail.
. tests/lib.sh

# Nothing is let off: $LORA_CUDA_PLUGIN too is read in cmd/ (struct cmd_ctx
# cuda_plugin) and handed to train/cuda.c.  An extended regex of file:line
# reports to let through, for a move in flight; '^$' lets nothing through.
ALLOWED='^$'

# check_env ROOT: prints each read of the environment outside cmd/; status 1 if any
check_env() {
	local root=$1 bad
	bad=$(cd "$root" && grep -nE '\b(secure_)?getenv[[:space:]]*\(|\benviron\b' \
		$(ls libadapter/*/*.c libadapter/*/*.h train/*.c train/*.h kernels/* 2>/dev/null) |
		grep -vE "$ALLOWED")
	[ -z "$bad" ] && return 0
	printf '%s\n' "$bad"
	return 1
}

t_case env_read_only_in_cmd
out=$(check_env .) || t_fail "the environment is read outside cmd/:
$out"

t_case env_checker_catches_a_planted_getenv
mkdir -p "$T/tree"
cp -r libadapter train kernels "$T/tree/"
printf 'static const char *planted(void) { return getenv("HOME"); }\n' >>"$T/tree/libadapter/base/fsutil.c"
out=$(check_env "$T/tree") && t_fail "a getenv planted in libadapter/base/fsutil.c was not caught"
case $out in libadapter/base/fsutil.c:*getenv*) ;; *) t_fail "unexpected report: $out" ;; esac

# What the program reads reaches the library: $SOURCE_DATE_EPOCH in the manifest.
t_case env_source_date_epoch_reaches_the_manifest
"$LORA" keygen >/dev/null 2>&1
SOURCE_DATE_EPOCH=86400 run "$LORA" import "$FIX/peft/plain" --name sde:v1
expect_rc 0
run "$LORA" inspect sde:v1 --json
expect_out '"created":"1970-01-02T00:00:00Z"'
t_end
