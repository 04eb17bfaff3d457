# store_hostile.sh - malicious packages (tests/oracle/store_hostile.py) are
# refused by lora import and lora verify with exit 3 and a clear error, and
# the store is left exactly as it was.
. tests/lib.sh
H=$FIX/store/hostile
TOOLS=${LORA_TOOLS:-$PWD/build/tools}
# test tooling, not under test: its leaks are not ours to report
mktiny() { ASAN_OPTIONS=detect_leaks=0 "$TOOLS/mktiny" "$@"; }

snap() { (cd "$LORA_HOME" && find . -print | sort && find . -type f -print0 | sort -z | xargs -0 sha256sum); }

# a store with one adapter in it, so that "unchanged" means something
"$LORA" keygen --name h@example.com >/dev/null
mktiny model "$T/base" --hidden 32 --inter 64 >/dev/null
mktiny adapter "$T/ad" --base "$T/base" --r 2 >/dev/null
"$LORA" import "$T/ad" --name kept >/dev/null || echo "FAIL hostile-setup"
mkdir -p "$T/cwd"

check() {  # check FIXTURE "expected text in the error"
	t_case "hostile_${1%.lora}"
	before=$(snap)
	run "$LORA" import "$H/$1" --allow-untrusted
	expect_rc 3
	expect_err "$2"
	expect_eq "$(snap)" "$before" "store changed"
	run "$LORA" verify "$H/$1"
	expect_rc 3
	expect_err "$2"
	[ ! -e /etc/x ] || t_fail "/etc/x was written"
	[ ! -e "$LORA_HOME/x" ] && [ ! -e "$T/x" ] || t_fail "../x was written"
}

check dotdot.lora "'..' in its path"
check absolute.lora "absolute path"
check symlink.lora "symbolic link"
check hardlink.lora "hard link"
check chardev.lora "is a device"
check blockdev.lora "is a device"
check fifo.lora "is a FIFO"
check directory.lora "is a directory"
check subdir.lora "subdirectory"
check dup_manifest.lora "'manifest.json' appears twice"
check not_first.lora "not manifest.json"
check huge.lora "larger than the limit"
check truncated.lora "truncated"
check many.lora "more than 64 entries"

t_case hostile_not_a_tar
printf 'this is not a tar file at all, just text that is long enough to fill a block? no.\n' > "$T/junk.lora"
run "$LORA" import "$T/junk.lora"
expect_rc 3
expect_err "not a tar archive"
run "$LORA" verify sha256:00000000
expect_rc 1

t_end
