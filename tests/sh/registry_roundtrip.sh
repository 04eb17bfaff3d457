# registry_roundtrip.sh - lora push / lora pull against a registry nobody here
# wrote (Debian's docker-registry on 127.0.0.1): round trip byte for byte,
# no re-upload, pull by digest, a tampered blob and an untrusted signer
# refused with the store unchanged, and skopeo reading and writing the same
# repositories.
. tests/lib.sh
. tests/registry_lib.sh
TOOLS=${LORA_TOOLS:-$PWD/build/tools}
mktiny() { ASAN_OPTIONS=detect_leaks=0 "$TOOLS/mktiny" "$@"; }

if ! reg_have; then
	echo "SKIP registry_roundtrip: docker-registry is not installed"
	t_case registry_absent_skipped
	t_end
	exit 0
fi
reg_start || { t_case registry_start; t_fail "docker-registry did not start"; t_end; exit 1; }

mktiny model "$T/base" --hidden 32 --inter 64 >/dev/null
mktiny adapter "$T/ad" --base "$T/base" --r 2 >/dev/null
mktiny adapter "$T/ad2" --base "$T/base" --r 4 --seed 9 --targets all-linear >/dev/null
echo "# notes" >"$T/ad/README.md"
"$LORA" keygen --name alice@example.com >/dev/null
run "$LORA" import "$T/ad" --name sql:v1
D=${OUT#* }
run "$LORA" import "$T/ad2" --name chat:v2
D2=${OUT#* }
# a teammate's store trusts alice
mkteam() { "$LORA" --store "$1" trust add alice@example.com "$LORA_HOME/keys/id_ed25519.pub" >/dev/null; }

t_case push_uploads_every_blob
run "$LORA" push sql:v1 "$REG/team/sql:v1" --json
expect_rc 0
expect_eq "$(printf '%s' "$OUT" | jq -r .digest)" "$D" "pushed digest"
expect_eq "$(printf '%s' "$OUT" | jq -r .uploaded)" "5" "manifest.json, sig, config, weights, README"
expect_eq "$(printf '%s' "$OUT" | jq -r .blobs)" "5"

t_case registry_serves_our_manifest
run curl -sf -H "Accept: application/vnd.oci.image.manifest.v1+json" "http://$REG/v2/team/sql/manifests/v1"
expect_eq "$(printf '%s' "$OUT" | sha256sum | cut -c1-64)" "${D#sha256:}" "the registry's manifest is the adapter digest"
expect_out '"artifactType":"application/vnd.lora.adapter.v1+json"'

t_case second_push_uploads_no_blob
before=$(reg_count_uploads)
run "$LORA" push sql:v1 "$REG/team/sql:v1" --json
expect_rc 0
expect_eq "$(printf '%s' "$OUT" | jq -r .uploaded)" "0" "blobs uploaded by the second push"
expect_eq "$(reg_count_uploads)" "$before" "upload sessions in the registry log"
run "$LORA" push sql:v1 "$REG/team/sql:again"
expect_rc 0
expect_eq "$(reg_count_uploads)" "$before" "a new tag of the same adapter uploads nothing"
expect_out "0 of 5 blobs uploaded"

t_case pull_into_fresh_store_byte_identical
S2="$T/s2"; mkteam "$S2"
run "$LORA" --store "$S2" pull "$REG/team/sql:v1"
expect_rc 0
expect_eq "$OUT" "sql:v1 $D"
run "$LORA" --store "$S2" verify sql:v1
expect_rc 0
"$LORA" export sql:v1 -o "$T/a.lora" && "$LORA" --store "$S2" export sql:v1 -o "$T/b.lora"
cmp -s "$T/a.lora" "$T/b.lora" || t_fail "the exported packages differ"
"$LORA" --store "$S2" export sql:v1 --format peft -o "$T/out"
for f in adapter_config.json adapter_model.safetensors README.md; do
	cmp -s "$T/ad/$f" "$T/out/$f" || t_fail "$f differs after push and pull"
done

t_case pull_json_and_name_and_digest
run "$LORA" --store "$S2" pull "$REG/team/sql@$D" --json
expect_rc 0
expect_eq "$(printf '%s' "$OUT" | jq -r .ref)" "sql:v1" "by digest: the manifest's name"
expect_eq "$(printf '%s' "$OUT" | jq -r .downloaded)" "0" "blobs the store has are not fetched again"
run "$LORA" --store "$S2" pull "$REG/team/sql:v1" --name other:x
expect_rc 0
expect_eq "$OUT" "other:x $D"
run "$LORA" --store "$S2" pull "$REG/team/sql:nosuch"
expect_rc 1
expect_err "registry $REG"

t_case tampered_blob_refused_store_unchanged
"$LORA" push chat:v2 "$REG/team/chat:v2" >/dev/null || t_fail "push chat:v2"
W=$("$LORA" inspect chat:v2 --json | jq -r '.files[] | select(.name == "adapter_model.safetensors") | .sha256')
F=$(reg_blob_file "$W")
[ -f "$F" ] || t_fail "no registry file for the weights blob: $F"
size=$(stat -c %s "$F")
chmod u+w "$F"; head -c "$size" /dev/urandom >"$F"
before=$(store_snapshot "$S2")
run "$LORA" --store "$S2" pull "$REG/team/chat:v2"
expect_rc 3
expect_err "does not match its digest"
expect_eq "$(store_snapshot "$S2")" "$before" "store snapshot after the refused pull"
# a longer blob (the registry reports the new length) is stopped as well
head -c $((size + 4096)) /dev/urandom >"$F"
run "$LORA" --store "$S2" pull "$REG/team/chat:v2"
expect_rc 3
expect_eq "$(store_snapshot "$S2")" "$before" "store snapshot after a longer blob"
run "$LORA" --store "$S2" list
expect_rc 0
case "$OUT" in *chat*) t_fail "chat:v2 was stored";; esac
cp "$LORA_HOME/blobs/sha256/$W" "$F"  # the registry's blob as it was
run "$LORA" --store "$S2" pull "$REG/team/chat:v2"
expect_rc 0
expect_eq "$OUT" "chat:v2 $D2" "the restored blob pulls"

t_case untrusted_signer_refused_store_unchanged
S3="$T/s3"
"$LORA" --store "$S3" keygen --name bob@example.com >/dev/null
before=$(store_snapshot "$S3")
run "$LORA" --store "$S3" pull "$REG/team/sql:v1"
expect_rc 3
expect_err "signer check failed"
expect_eq "$(store_snapshot "$S3")" "$before" "store snapshot after an untrusted pull"
run "$LORA" --store "$S3" pull "$REG/team/sql:v1" --allow-untrusted
expect_rc 0

t_case bad_references_are_usage_errors
run "$LORA" pull "team/sql:v1"
expect_rc 2
run "$LORA" pull "$REG/Team/sql:v1"
expect_rc 2
run "$LORA" push sql:v1 "$REG/team/sql@sha256:1234"
expect_rc 2
run "$LORA" push nosuch:v1 "$REG/team/sql:v1"
expect_rc 1
expect_err "no adapter 'nosuch:v1'"

t_case plain_http_only_for_loopback_or_insecure
# a non-loopback name for the same registry: https is required, so it fails cleanly
run "$LORA" --store "$S2" pull "lora-test.invalid:1/team/sql:v1"
expect_rc 1
expect_err "registry lora-test.invalid:1"

if command -v skopeo >/dev/null 2>&1; then
	t_case skopeo_reads_what_lora_pushed
	run skopeo copy -q --src-tls-verify=false "docker://$REG/team/sql:v1" "oci:$T/sk:sql:v1"
	expect_rc 0
	S4="$T/s4"; mkteam "$S4"
	run skopeo copy -q "oci:$T/sk:sql:v1" "oci:$S4:sql:v1"
	expect_rc 0
	run "$LORA" --store "$S4" verify sql:v1
	expect_rc 0
	expect_out "$D"

	t_case lora_pulls_what_skopeo_pushed
	run skopeo copy -q --dest-tls-verify=false "oci:$LORA_HOME:chat:v2" "docker://$REG/team/viaskopeo:v2"
	expect_rc 0
	S5="$T/s5"; mkteam "$S5"
	run "$LORA" --store "$S5" pull "$REG/team/viaskopeo:v2"
	expect_rc 0
	expect_eq "$OUT" "viaskopeo:v2 $D2" "skopeo keeps the manifest, so the digest"
	run "$LORA" --store "$S5" verify viaskopeo:v2
	expect_rc 0
else
	echo "SKIP skopeo cases: skopeo is not installed"
fi

t_end
