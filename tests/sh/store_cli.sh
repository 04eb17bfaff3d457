# store_cli.sh - keygen, trust, import, export, list, verify, rm, tag end to end,
# checked with tools other than lora where the format promises it (ssh-keygen,
# tar, sha256sum).
. tests/lib.sh
TOOLS=${LORA_TOOLS:-$PWD/build/tools}
# test tooling, not under test: its leaks are not ours to report
mktiny() { ASAN_OPTIONS=detect_leaks=0 "$TOOLS/mktiny" "$@"; }
ST=$LORA_HOME

# snapshot of every file and folder of the store (names and contents)
snap() { (cd "$ST" && find . -print | sort && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
nblobs() { ls "$ST/blobs/sha256" | wc -l; }
# flip one byte (xor 1) of a file at an offset
flip() { printf "$(printf '\\%03o' $(( $(od -An -tu1 -j "$2" -N1 "$1") ^ 1 )))" |
	dd of="$1" bs=1 seek="$2" conv=notrunc status=none; }
# repack an extracted folder as a package, manifest first
repack() { (cd "$1" && tar --format=ustar -cf "$2" manifest.json $( [ -f manifest.json.sig ] && echo manifest.json.sig ) \
	$(ls | grep -v '^manifest.json')); }

mktiny model "$T/base" --hidden 32 --inter 64 >/dev/null || echo "FAIL mktiny-model"
mktiny adapter "$T/ad" --base "$T/base" --r 4 --seed 7 >/dev/null || echo "FAIL mktiny-adapter"
mktiny adapter "$T/ad2" --base "$T/base" --r 2 --targets o_proj --seed 8 >/dev/null

t_case keygen
run "$LORA" keygen --name alice@example.com
expect_rc 0
case "$OUT" in "ssh-ed25519 AAAA"*" alice@example.com") ;; *) t_fail "bad public key line: $OUT";; esac
expect_eq "$(stat -c %a "$ST/keys/id_ed25519")" 600 "private key mode"
expect_eq "$(ssh-keygen -y -f "$ST/keys/id_ed25519")" "$OUT" "ssh-keygen reads our private key"
expect_eq "$(ssh-keygen -l -f "$ST/keys/id_ed25519.pub" | cut -d' ' -f2)" \
	"$(ssh-keygen -l -f "$ST/keys/id_ed25519" | cut -d' ' -f2)" "fingerprints"
grep -q '^alice@example.com namespaces="lora-adapter" ssh-ed25519 ' "$ST/allowed_signers" || t_fail "not trusted"
PUB1=$OUT

t_case keygen_refuses_existing_key
run "$LORA" keygen --name alice@example.com
expect_rc 1
expect_err "already exists"
expect_eq "$(ssh-keygen -y -f "$ST/keys/id_ed25519")" "$PUB1" "key unchanged"

t_case keygen_force
cp -a "$ST" "$T/st-force"
run "$LORA" --store "$T/st-force" keygen --name alice@example.com --force
expect_rc 0
[ "$OUT" != "$PUB1" ] || t_fail "--force made the same key"
expect_eq "$(stat -c %a "$T/st-force/keys/id_ed25519")" 600 "mode after --force"
expect_eq "$(grep -c ssh-ed25519 "$T/st-force/allowed_signers")" 2 "old and new key trusted"

t_case import_folder
run "$LORA" import "$T/ad" --name sql:v1 --description "sql helper"
expect_rc 0
case "$OUT" in "sql:v1 sha256:"*) ;; *) t_fail "import prints '$OUT'";; esac
D1=${OUT#sql:v1 }
[ ${#D1} = 71 ] || t_fail "digest '$D1'"
expect_eq "$(cat "$ST/oci-layout")" '{"imageLayoutVersion":"1.0.0"}'
grep -q "\"org.opencontainers.image.ref.name\":\"sql:v1\"" "$ST/index.json" || t_fail "no index entry"
expect_eq "$(sha256sum < "$ST/blobs/sha256/${D1#sha256:}" | cut -c1-64)" "${D1#sha256:}" "manifest blob digest"

t_case identical_files_stored_once
n0=$(nblobs)
run "$LORA" import "$T/ad" --name sql2
expect_rc 0
# new: manifest.json, its signature and the OCI manifest; the adapter files are shared
expect_eq "$(nblobs)" $((n0 + 3)) "blob count"

t_case list
run "$LORA" list
expect_rc 0
expect_out "sql:v1"
case "$OUT" in *"$(echo ${D1#sha256:} | cut -c1-12)"*) ;; *) t_fail "no short digest";; esac
expect_out "q_proj,v_proj"
expect_out "alice@example.com"
expect_out "tiny-llama"
run "$LORA" list --json
expect_rc 0
for k in name tag digest base r alpha target_modules size signer created; do
	case "$OUT" in *"\"$k\":"*) ;; *) t_fail "list --json lacks '$k'";; esac
done
expect_out '"name": "sql"'
expect_out '"tag": "v1"'
expect_out "\"digest\": \"$D1\""
expect_out '"r": 4'

t_case export_lora_checked_without_lora
run "$LORA" export sql:v1 -o "$T/sql.lora"
expect_rc 0
expect_eq "$(tar -tf "$T/sql.lora" | head -1)" manifest.json "first entry"
mkdir "$T/x" && tar -xf "$T/sql.lora" -C "$T/x"
run sh -c "ssh-keygen -Y verify -f '$ST/allowed_signers' -I alice@example.com -n lora-adapter -s '$T/x/manifest.json.sig' < '$T/x/manifest.json'"
expect_rc 0
# every file the manifest lists, with sha256sum and its size
n=0
sed -n '/"files": \[/,/^  \]/p' "$T/x/manifest.json" |
	sed -n 's/.*"name": "\(.*\)",/\1/p; s/.*"size": \([0-9]*\),/\1/p; s/.*"sha256": "\([0-9a-f]*\)"/\1/p' |
	paste - - - > "$T/files.txt"
while read -r f size sha; do
	n=$((n + 1))
	expect_eq "$(sha256sum < "$T/x/$f" | cut -c1-64)" "$sha" "sha256sum $f"
	expect_eq "$(stat -c %s "$T/x/$f")" "$size" "size of $f"
done < "$T/files.txt"
expect_eq "$n" 2 "files in the manifest"
expect_eq "$(ls "$T/x" | sort | tr '\n' ' ')" "adapter_config.json adapter_model.safetensors manifest.json manifest.json.sig " "extracted"
cmp -s "$T/x/adapter_model.safetensors" "$T/ad/adapter_model.safetensors" || t_fail "weights changed"

t_case export_is_reproducible
run "$LORA" export sql:v1 -o "$T/sql-again.lora"
cmp -s "$T/sql.lora" "$T/sql-again.lora" || t_fail "two exports differ"
"$LORA" export sql:v1 -o - > "$T/sql-stdout.lora" || t_fail "export to stdout"
cmp -s "$T/sql.lora" "$T/sql-stdout.lora" || t_fail "stdout export differs"

t_case verify_ok
run "$LORA" verify sql:v1
expect_rc 0
expect_out "ok      signer"
run "$LORA" verify "$T/sql.lora" --json
expect_rc 0
expect_out '"valid": true'
run "$LORA" verify "${D1%????????????????????????????????????????????????????????}"
expect_rc 0

t_case ssh_keygen_signature_accepted
# a key made by ssh-keygen, a package signed with it by lora, re-signed by ssh-keygen (sha256 hash)
mkdir -p "$HOME/.ssh"
ssh-keygen -q -t ed25519 -N '' -C bob@example.com -f "$HOME/.ssh/id_ed25519"
run "$LORA" import "$T/ad" --name bobs --key "$HOME/.ssh/id_ed25519"
expect_rc 0
expect_err "not in allowed_signers"
run "$LORA" trust add bob@example.com "$HOME/.ssh/id_ed25519.pub"
expect_rc 0
run "$LORA" export bobs -o "$T/bobs.lora"
mkdir "$T/bobs" && tar -xf "$T/bobs.lora" -C "$T/bobs"
rm "$T/bobs/manifest.json.sig"
ssh-keygen -q -Y sign -f "$HOME/.ssh/id_ed25519" -n lora-adapter -O hashalg=sha256 "$T/bobs/manifest.json" >/dev/null 2>&1
grep -q "BEGIN SSH SIGNATURE" "$T/bobs/manifest.json.sig" || t_fail "ssh-keygen did not sign"
repack "$T/bobs" "$T/bobs-ssh.lora"
cmp -s "$T/bobs.lora" "$T/bobs-ssh.lora" && t_fail "signature did not change"
run "$LORA" verify "$T/bobs-ssh.lora"
expect_rc 0
expect_out "ok      signature"

t_case tampered_packages_refused
for what in adapter_model.safetensors adapter_config.json manifest.json manifest.json.sig; do
	rm -rf "$T/tam" && mkdir "$T/tam" && tar -xf "$T/sql.lora" -C "$T/tam"
	case $what in
	adapter_model.safetensors) flip "$T/tam/$what" 200; check=files;;
	adapter_config.json) flip "$T/tam/$what" 30; check=files;;
	manifest.json) sed -i 's/"r": 4/"r": 5/' "$T/tam/$what"; check=signature;;
	manifest.json.sig) flip "$T/tam/$what" 100; check=signature;;
	esac
	cmp -s "$T/x/$what" "$T/tam/$what" && t_fail "$what not changed"
	repack "$T/tam" "$T/tam.lora"
	run "$LORA" verify "$T/tam.lora"
	expect_rc 3
	expect_err "$check check failed"
	before=$(snap)
	run "$LORA" import "$T/tam.lora" --name tampered
	expect_rc 3
	expect_err "$check check failed"
	expect_eq "$(snap)" "$before" "store changed by a refused import ($what)"
	# and --allow-untrusted does not let a bad file or signature through
	run "$LORA" import "$T/tam.lora" --name tampered --allow-untrusted
	expect_rc 3
	expect_eq "$(snap)" "$before" "store changed by --allow-untrusted ($what)"
done

t_case tampered_blob_in_store
cp -a "$ST" "$T/st-tam"
w=$(sed -n 's/.*"sha256": "\([0-9a-f]*\)"/\1/p' "$T/x/manifest.json" | tail -1)
chmod u+w "$T/st-tam/blobs/sha256/$w"
flip "$T/st-tam/blobs/sha256/$w" 100
run "$LORA" --store "$T/st-tam" verify sql:v1
expect_rc 3
expect_err "package check failed"
expect_out "failed  package"

t_case untrusted_signer_refused
cp -a "$ST" "$T/st-u"
run "$LORA" --store "$T/st-u" trust rm alice@example.com
expect_rc 0
run "$LORA" --store "$T/st-u" verify sql:v1
expect_rc 3
expect_err "signer check failed"
expect_out "ok      signature"
before=$(snap)
run "$LORA" --store "$T/st-u" import "$T/sql.lora" --name other
expect_rc 3
expect_err "not trusted"
run "$LORA" --store "$T/st-u" import "$T/sql.lora" --name other --allow-untrusted
expect_rc 0
expect_out "other:latest sha256:"

t_case unsigned_package
rm -rf "$T/uns" && mkdir "$T/uns" && tar -xf "$T/sql.lora" -C "$T/uns" && rm "$T/uns/manifest.json.sig"
repack "$T/uns" "$T/uns.lora"
run "$LORA" verify "$T/uns.lora"
expect_rc 3
expect_err "unsigned"
run "$LORA" import "$T/uns.lora"
expect_rc 3
run "$LORA" import "$T/uns.lora" --allow-untrusted
expect_rc 0
expect_out "sql:v1 sha256:"    # the manifest's own name and tag
run "$LORA" list
case "$OUT" in *"(unsigned)"*) ;; *) t_fail "list does not say unsigned: $OUT";; esac
run "$LORA" import "$T/sql.lora"    # put the signed one back
expect_rc 0

t_case file_set_mismatch
for case_ in lacks holds; do
	rm -rf "$T/fs" && mkdir "$T/fs" && tar -xf "$T/sql.lora" -C "$T/fs"
	if [ $case_ = lacks ]; then rm "$T/fs/adapter_config.json"; msg="lacks"; else echo hi > "$T/fs/README.md"; msg="does not list"; fi
	repack "$T/fs" "$T/fs.lora"
	before=$(snap)
	run "$LORA" import "$T/fs.lora" --name fs
	expect_rc 3
	expect_err "$msg"
	expect_eq "$(snap)" "$before" "store changed ($case_)"
done

t_case export_peft
run "$LORA" export sql:v1 --format peft -o "$T/peft-out"
expect_rc 0
cmp -s "$T/peft-out/adapter_model.safetensors" "$T/ad/adapter_model.safetensors" || t_fail "weights differ"
cmp -s "$T/peft-out/adapter_config.json" "$T/ad/adapter_config.json" || t_fail "config differs"
run "$LORA" export sql:v1 --format peft -o "$T/peft-out"
expect_rc 1
expect_err "not empty"
run "$LORA" export sql:v1 --format zip -o "$T/z"
expect_rc 2

t_case base_fingerprint
mktiny model "$T/base2" --hidden 32 --inter 64 --seed 99 >/dev/null
run "$LORA" import "$T/ad" --name fp1 --base "$T/base"
expect_rc 0
run "$LORA" import "$T/ad" --name fp2 --base "$T/base"
run "$LORA" import "$T/ad" --name fp3 --base "$T/base2"
fp() { "$LORA" export "$1" -o - | tar -xOf - manifest.json | sed -n 's/.*"fingerprint": "\(.*\)".*/\1/p'; }
f1=$(fp fp1); f2=$(fp fp2); f3=$(fp fp3)
case "$f1" in sha256:????????????????????????????????????????????????????????????????) ;; *) t_fail "fingerprint '$f1'";; esac
expect_eq "$f2" "$f1" "same base, same fingerprint"
[ "$f3" != "$f1" ] || t_fail "another base gave the same fingerprint"
run "$LORA" import "$T/ad" --name fp4 --base "$T/nonexistent"
expect_rc 1
for r in fp1 fp2 fp3; do "$LORA" rm $r >/dev/null; done

t_case broken_folder_refused
mkdir "$T/broken" && cp "$T/ad/adapter_config.json" "$T/broken/"
before=$(snap)
run "$LORA" import "$T/broken" --name broken
expect_rc 1
expect_err "adapter_model.safetensors"
printf 'not json' > "$T/broken/adapter_config.json"
cp "$T/ad/adapter_model.safetensors" "$T/broken/"
run "$LORA" import "$T/broken" --name broken
expect_rc 1
expect_eq "$(snap)" "$before" "store changed by a refused folder"

t_case replacing_a_name_collects_old_blobs
run "$LORA" import "$T/ad2" --name moving
expect_rc 0
n1=$(nblobs)
run "$LORA" import "$T/ad" --name moving
expect_rc 0
# ad2's files, manifest, signature and OCI manifest go; ad's files were there already
expect_eq "$(nblobs)" $((n1 - 2)) "blobs after moving a name"
run "$LORA" rm moving
expect_rc 0

t_case tag_and_rm
run "$LORA" tag sql:v1 sql:prod
expect_rc 0
expect_eq "$OUT" "sql:prod $D1"
run "$LORA" rm sql:v1
expect_rc 0
expect_eq "$OUT" "removed sql:v1"
run "$LORA" verify sql:prod
expect_rc 0
run "$LORA" verify sql:v1
expect_rc 1
expect_err "no adapter 'sql:v1'"
expect_out ""
case "$ERR" in *"sql:prod"*) ;; *) t_fail "no hint of other tags: $ERR";; esac

t_case rm_collects_blobs
run "$LORA" list --json
for r in $(printf '%s\n' "$OUT" | sed -n 's/.*"name": "\(.*\)",/\1/p;s/.*"tag": "\(.*\)",/\1/p' | paste -d: - -); do
	run "$LORA" rm "$r"
	expect_rc 0
done
expect_eq "$(nblobs)" 0 "blobs left after removing every name"
expect_eq "$(ls "$ST/tmp" | wc -l)" 0 "tmp left"
expect_eq "$(cat "$ST/index.json")" '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}'

t_case digest_prefix_ambiguous
"$LORA" import "$T/ad" --name a >/dev/null && "$LORA" import "$T/ad2" --name b >/dev/null
cp -a "$ST" "$T/st-amb"
# two index entries whose digests share their first 12 hex digits
sed -i 's/"manifests":\[/"manifests":[{"mediaType":"application\/vnd.oci.image.manifest.v1+json","digest":"sha256:abcdef012345aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","size":1,"annotations":{"org.opencontainers.image.ref.name":"x:1"}},{"mediaType":"application\/vnd.oci.image.manifest.v1+json","digest":"sha256:abcdef012345bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","size":1,"annotations":{"org.opencontainers.image.ref.name":"y:1"}},/' "$T/st-amb/index.json"
run "$LORA" --store "$T/st-amb" verify sha256:abcdef01
expect_rc 1
expect_err "ambiguous"
expect_out ""
case "$ERR" in *"sha256:abcdef012345a"*"(x:1)"*"sha256:abcdef012345b"*"(y:1)"*) ;; *) t_fail "candidates not listed: $ERR";; esac
run "$LORA" --store "$T/st-amb" rm sha256:abcdef01
expect_rc 1
run "$LORA" verify sha256:1234567
expect_rc 2
expect_err "8 to 64"

t_case bad_names
run "$LORA" import "$T/ad" --name "../evil"
expect_rc 2
run "$LORA" import "$T/ad" --name "a:b:c"
expect_rc 2
run "$LORA" tag a "sha256:abcdabcd"
expect_rc 2

t_case keys_refused_clearly
ssh-keygen -q -t ed25519 -N secret -f "$T/enc" -C enc
run "$LORA" import "$T/ad" --name e --key "$T/enc"
expect_rc 1
expect_err "encrypted with a passphrase"
ssh-keygen -q -t rsa -b 1024 -N '' -f "$T/rsa" -C rsa 2>/dev/null || ssh-keygen -q -t rsa -N '' -f "$T/rsa" -C rsa
run "$LORA" import "$T/ad" --name e --key "$T/rsa"
expect_rc 1
expect_err "ssh-ed25519"
ln -s "$HOME/.ssh/id_ed25519" "$T/link"
run "$LORA" import "$T/ad" --name e --key "$T/link"
expect_rc 1
expect_err "symbolic link"
run "$LORA" import "$T/ad" --name e --key "$T/nonexistent"
expect_rc 1
expect_err "nonexistent"

t_case no_default_key
run "$LORA" --store "$T/empty" import "$T/ad" --name e
expect_rc 1
expect_err "lora keygen"

t_case trust_list_and_rm
run "$LORA" trust list --json
expect_rc 0
expect_out '"id": "alice@example.com"'
expect_out '"namespaces": "lora-adapter"'
run "$LORA" trust add carol --key "$(cat "$HOME/.ssh/id_ed25519.pub")"
expect_rc 0
run "$LORA" trust list
expect_out "carol"
expect_out "$(ssh-keygen -l -f "$HOME/.ssh/id_ed25519.pub" | cut -d' ' -f2)"
run "$LORA" trust rm carol
expect_rc 0
run "$LORA" trust rm carol
expect_rc 1
expect_err "no signer 'carol'"
run "$LORA" trust add "bad id" --key "$(cat "$HOME/.ssh/id_ed25519.pub")"
expect_rc 2
run "$LORA" trust add dave --key "ssh-rsa AAAAB3NzaC1yc2E"
expect_rc 1
# our allowed_signers stays readable by ssh-keygen after edits
run sh -c "ssh-keygen -Y find-principals -f '$ST/allowed_signers' -s '$T/x/manifest.json.sig'"
expect_eq "$OUT" "alice@example.com"

t_end
