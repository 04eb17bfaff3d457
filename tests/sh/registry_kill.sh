# registry_kill.sh - a lora pull killed (SIGKILL) at random moments never
# leaves a half-written store: after each kill `lora list` works, every
# listed adapter verifies, and the new adapter is either absent or whole;
# the next pull cleans what the killed ones left and leaves no stray file.
. tests/lib.sh
. tests/registry_lib.sh
TOOLS=${LORA_TOOLS:-$PWD/build/tools}
mktiny() { ASAN_OPTIONS=detect_leaks=0 "$TOOLS/mktiny" "$@"; }

if ! reg_have; then
	echo "SKIP registry_kill: docker-registry is not installed"
	t_case registry_kill_absent_skipped
	t_end
	exit 0
fi
reg_start || { t_case registry_start; t_fail "docker-registry did not start"; t_end; exit 1; }

# an adapter of about 8 MB, so a pull takes long enough to be cut in the middle
mktiny model "$T/base" --hidden 512 --inter 1024 --layers 4 --heads 4 --kv-heads 2 >/dev/null
mktiny adapter "$T/big" --base "$T/base" --r 64 --targets all-linear >/dev/null
mktiny adapter "$T/small" --base "$T/base" --r 2 --seed 3 >/dev/null
"$LORA" keygen --name alice@example.com >/dev/null
"$LORA" import "$T/big" --name big:v1 >/dev/null
"$LORA" push big:v1 "$REG/team/big:v1" >/dev/null || { t_case push; t_fail "push failed"; }
S="$T/team"
"$LORA" --store "$S" trust add alice@example.com "$LORA_HOME/keys/id_ed25519.pub" >/dev/null
"$LORA" --store "$S" import "$T/small" --name small:v1 --key "$LORA_HOME/keys/id_ed25519" >/dev/null

store_ok() {  # every listed adapter verifies; big:v1 absent or whole
	local refs r
	refs=$("$LORA" --store "$S" list --json | jq -r '.[] | .name + ":" + .tag') || { t_fail "lora list failed after kill $1"; return; }
	case "$refs" in *small:v1*) ;; *) t_fail "small:v1 lost after kill $1";; esac
	for r in $refs; do
		"$LORA" --store "$S" verify "$r" >/dev/null 2>&1 || t_fail "$r does not verify after kill $1"
	done
}

t_case killed_pulls_leave_a_whole_store
# how long one pull takes (then removed again), to spread the kills over it
t0=$(date +%s%N)
"$LORA" --store "$S" pull "$REG/team/big:v1" >/dev/null || t_fail "the timing pull failed"
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
"$LORA" --store "$S" rm big:v1 >/dev/null
[ "$ms" -gt 0 ] || ms=1
complete=0
for i in $(seq 1 14); do
	d=$(( RANDOM % (ms + 1) ))
	"$LORA" --store "$S" pull "$REG/team/big:v1" >/dev/null 2>&1 &
	pid=$!
	sleep "$(printf '0.%03d' "$d")"
	kill -9 "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	store_ok "$i (at ${d} of ${ms} ms)"
	if "$LORA" --store "$S" list --json | jq -e '.[] | select(.name == "big" and .tag == "v1")' >/dev/null; then
		complete=$((complete + 1))
		"$LORA" --store "$S" rm big:v1 >/dev/null
	fi
done
echo "  14 kills over ${ms} ms; $complete pulls had finished first"

t_case next_pull_cleans_up
run "$LORA" --store "$S" pull "$REG/team/big:v1"
expect_rc 0
run "$LORA" --store "$S" verify big:v1
expect_rc 0
left=$(find "$S/tmp" -mindepth 1 | wc -l)
expect_eq "$left" "0" "entries left in the store's tmp/"
# every blob is referenced by a named adapter (no orphan from a killed commit)
refd=$(for dg in $(jq -r '.manifests[].digest' "$S/index.json"); do
	echo "${dg#sha256:}"
	jq -r '.config.digest, .layers[].digest' "$S/blobs/sha256/${dg#sha256:}" | sed 's/^sha256://'
done | sort -u)
have=$(ls "$S/blobs/sha256" | sort -u)
expect_eq "$have" "$refd" "blobs on disk = blobs referenced"
find "$S" -name '*.part' -o -name '*.tmp*' | grep -q . && t_fail "stray temporary files: $(find "$S" -name '*.part' -o -name '*.tmp*')"

t_end
