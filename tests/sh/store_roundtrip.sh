# store_roundtrip.sh - a folder written by peft (tests/oracle/store_roundtrip.py)
# goes through lora import and lora export --format peft byte for byte.  The
# oracle script's --check mode then shows that peft loads the exported folder
# with identical outputs (run by hand: it needs Python).
. tests/lib.sh
SRC=$FIX/store/roundtrip/adapter

t_case roundtrip_setup
run "$LORA" keygen --name rt@example.com
expect_rc 0

t_case peft_folder_import_export_identical
run "$LORA" import "$SRC" --name rt:v1
expect_rc 0
run "$LORA" export rt:v1 --format peft -o "$T/out"
expect_rc 0
for f in adapter_config.json adapter_model.safetensors README.md; do
	cmp -s "$SRC/$f" "$T/out/$f" || t_fail "$f is not byte-identical after import and export"
	# and equal to what peft wrote, as recorded by the oracle
	grep -q "\"$f\": \"$(sha256sum < "$T/out/$f" | cut -c1-64)\"" "$FIX/store/roundtrip/expected.json" ||
		t_fail "$f does not match the oracle's sha256"
done

t_case lora_package_roundtrip_identical
run "$LORA" export rt:v1 -o "$T/rt.lora"
expect_rc 0
run "$LORA" --store "$T/store2" trust add rt@example.com "$LORA_HOME/keys/id_ed25519.pub"
expect_rc 0
run "$LORA" --store "$T/store2" import "$T/rt.lora"
expect_rc 0
expect_out "rt:v1 sha256:"
run "$LORA" --store "$T/store2" export rt:v1 -o "$T/rt2.lora"
cmp -s "$T/rt.lora" "$T/rt2.lora" || t_fail "a .lora imported into another store exports differently"
run "$LORA" --store "$T/store2" export rt:v1 --format peft -o "$T/out2"
cmp -s "$SRC/adapter_model.safetensors" "$T/out2/adapter_model.safetensors" || t_fail "weights differ"

t_end
