# store_skopeo.sh - real OCI clients read the store: skopeo sees the adapter's
# OCI manifest, copies it to another layout, and lora verifies the copy.
. tests/lib.sh
TOOLS=${LORA_TOOLS:-$PWD/build/tools}
# test tooling, not under test: its leaks are not ours to report
mktiny() { ASAN_OPTIONS=detect_leaks=0 "$TOOLS/mktiny" "$@"; }

if ! command -v skopeo >/dev/null 2>&1; then
	echo "SKIP store_skopeo: skopeo is not installed"
	t_case skopeo_absent_skipped
	t_end
	exit 0
fi

mktiny model "$T/base" --hidden 32 --inter 64 >/dev/null
mktiny adapter "$T/ad" --base "$T/base" --r 2 >/dev/null
"$LORA" keygen --name oci@example.com >/dev/null
run "$LORA" import "$T/ad" --name ociad:v3
D=${OUT#* }

t_case skopeo_inspect_raw
run skopeo inspect --raw "oci:$LORA_HOME:ociad:v3"
expect_rc 0
expect_out '"artifactType":"application/vnd.lora.adapter.v1+json"'
expect_out '"org.opencontainers.image.title":"adapter_model.safetensors"'
expect_eq "$(printf '%s' "$OUT" | sha256sum | cut -c1-64)" "${D#sha256:}" "skopeo's manifest is the adapter digest"

t_case skopeo_copy_then_verify
run skopeo copy -q "oci:$LORA_HOME:ociad:v3" "oci:$T/other:ociad:v3"
expect_rc 0
# the other store trusts the signer as a teammate would
run "$LORA" --store "$T/other" trust add oci@example.com "$LORA_HOME/keys/id_ed25519.pub"
expect_rc 0
run "$LORA" --store "$T/other" verify ociad:v3
expect_rc 0
expect_out "$D"
run "$LORA" --store "$T/other" list --json
expect_out '"name": "ociad"'
run "$LORA" --store "$T/other" export ociad:v3 --format peft -o "$T/out"
expect_rc 0
cmp -s "$T/ad/adapter_model.safetensors" "$T/out/adapter_model.safetensors" || t_fail "weights differ after skopeo copy"

t_case skopeo_copy_back_after_rm
run "$LORA" rm ociad:v3
expect_rc 0
run skopeo copy -q "oci:$T/other:ociad:v3" "oci:$LORA_HOME:ociad:v3"
expect_rc 0
run "$LORA" verify ociad:v3
expect_rc 0

t_end
