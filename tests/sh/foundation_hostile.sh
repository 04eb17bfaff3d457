#!/bin/bash
# foundation_hostile.sh - hostile files through `lora inspect`: each must end
# in exactly one "lora: " line on stderr naming the file, exit 1, nothing on
# stdout, and no crash or hang (make SANITIZE=1 check runs this under ASan and
# UBSan, which turn any bad access into a different exit status).
#
# Each file is built here from a small recipe: st FILE HEADER DATA_BYTES [N]
# writes the 8-byte little-endian header length (N, or the header's own
# length), the header text, then DATA_BYTES zero bytes.
. tests/lib.sh
export LC_ALL=C

le64() {  # the 8 little-endian bytes of $1 (bash arithmetic: 2^64-1 is -1)
	local n=$1 i
	for i in 0 1 2 3 4 5 6 7; do
		printf "\\$(printf '%03o' $(((n >> (8 * i)) & 255)))"
	done
}

st() {
	local file=$1 header=$2 data=$3 n=${4:-}
	[ -n "$n" ] || n=$(printf '%s' "$header" | wc -c)
	{ le64 "$n"; printf '%s' "$header"; head -c "$data" /dev/zero; } >"$file"
}

CONFIG='{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["q_proj"],"base_model_name_or_path":"x"}'
QA=base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight
QB=base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight
VA=base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight
# A valid pair: A [4, 8] and B [8, 4], F32: 128 bytes each.
PAIR="\"$QA\":{\"dtype\":\"F32\",\"shape\":[4,8],\"data_offsets\":[0,128]},\"$QB\":{\"dtype\":\"F32\",\"shape\":[8,4],\"data_offsets\":[128,256]}"

# adapter NAME HEADER DATA [N]: an adapter folder with a good config and this weights file
adapter() {
	mkdir -p "$T/$1"
	printf '%s' "$CONFIG" >"$T/$1/adapter_config.json"
	st "$T/$1/adapter_model.safetensors" "$2" "$3" "${4:-}"
}

# expect_hostile PATH WORD...: lora inspect PATH fails as it should, the message naming PATH's
# file and containing each WORD.
expect_hostile() {
	local path=$1 file
	shift
	run timeout 20 "$LORA" inspect "$path"
	[ "$RC" != 124 ] || t_fail "hung (killed after 20 s)"
	expect_rc 1
	expect_err ""
	[ -z "$OUT" ] || t_fail "stdout on failure: $OUT"
	[ -z "${SHOW_ERRORS:-}" ] || echo "  $ERR"
	for w in "$@"; do
		case "$ERR" in *"$w"*) ;; *) t_fail "message lacks '$w': $ERR";; esac
	done
	# --json changes nothing: still one line, exit 1, and no JSON
	run timeout 20 "$LORA" inspect --json "$path"
	expect_rc 1
	expect_err ""
	[ -z "$OUT" ] || t_fail "stdout on failure with --json: $OUT"
}

# A safetensors-level case, twice: inside an adapter folder and as a bare file.
hostile_st() {
	local name=$1 header=$2 data=$3 n=${4:-}
	shift 4
	t_case "$name"
	adapter "$name" "$header" "$data" "$n"
	expect_hostile "$T/$name" "adapter_model.safetensors" "$@"
	st "$T/$name.safetensors" "$header" "$data" "$n"
	expect_hostile "$T/$name.safetensors" "$name.safetensors" "$@"
}

# The recipe works: a good adapter built the same way is accepted.
t_case recipe_builds_a_valid_adapter
adapter good "{$PAIR}" 256
run "$LORA" inspect --json "$T/good"
expect_rc 0
expect_out '"name":"model.layers.0.self_attn.q_proj"'

# -------------------------------------------------- safetensors files

t_case truncated_file
adapter truncated "{$PAIR}" 200
expect_hostile "$T/truncated" adapter_model.safetensors
head -c 5 "$T/truncated/adapter_model.safetensors" >"$T/truncated5.safetensors"
expect_hostile "$T/truncated5.safetensors" truncated5.safetensors
: >"$T/empty.safetensors"
expect_hostile "$T/empty.safetensors" empty.safetensors

hostile_st header_length_beyond_file "{$PAIR}" 256 100000 "past the end"
hostile_st header_length_over_100mb "{$PAIR}" 256 100000001 "100 MB"
hostile_st header_length_max_u64 "{$PAIR}" 256 -1 ""
hostile_st invalid_utf8 "{\"__metadata__\":{\"k\":\"$(printf '\377\376')\"},$PAIR}" 256 "" "UTF-8"
hostile_st invalid_utf8_overlong "{\"__metadata__\":{\"k\":\"$(printf '\300\257')\"},$PAIR}" 256 "" "UTF-8"
hostile_st invalid_json "{$PAIR" 256 "" "JSON"
hostile_st invalid_json_trailing "{$PAIR} {}" 256 "" "JSON"
hostile_st json_array_header "[{$PAIR}]" 256 "" "JSON object"
hostile_st json_string_header '"hello"' 0 "" "JSON object"
hostile_st unknown_dtype "{\"$QA\":{\"dtype\":\"Q4_K\",\"shape\":[4,8],\"data_offsets\":[0,128]}}" 128 "" "Q4_K"
hostile_st shape_product_overflows "{\"$QA\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4],\"data_offsets\":[0,0]}}" 0 "" "overflow"
hostile_st shape_times_dtype_overflows "{\"$QA\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,0]}}" 0 "" "overflow"
hostile_st shape_disagrees_with_bytes "{\"$QA\":{\"dtype\":\"F32\",\"shape\":[4,8],\"data_offsets\":[0,100]}}" 100 "" "$QA"
hostile_st offsets_overlapping "{\"$QA\":{\"dtype\":\"F32\",\"shape\":[4,8],\"data_offsets\":[0,128]},\"$QB\":{\"dtype\":\"F32\",\"shape\":[8,4],\"data_offsets\":[64,192]}}" 192 "" "overlap"
hostile_st offsets_with_hole "{\"$QA\":{\"dtype\":\"F32\",\"shape\":[4,8],\"data_offsets\":[0,128]},\"$QB\":{\"dtype\":\"F32\",\"shape\":[8,4],\"data_offsets\":[136,264]}}" 264 "" "hole"
hostile_st offsets_out_of_bounds "{$PAIR}" 200 "" "past the end"
hostile_st offsets_huge "{\"$QA\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[18446744073709551615,18446744073709551615]}}" 8 "" "$QA"
hostile_st data_not_ending_at_eof "{$PAIR}" 300 "" "end of the file"
hostile_st duplicate_tensor_names "{\"$QA\":{\"dtype\":\"F32\",\"shape\":[4,8],\"data_offsets\":[0,128]},\"$QA\":{\"dtype\":\"F32\",\"shape\":[4,8],\"data_offsets\":[128,256]}}" 256 "" "duplicate"
hostile_st metadata_not_strings "{\"__metadata__\":{\"format\":1},$PAIR}" 256 "" "__metadata__"
hostile_st deep_nesting "{\"$QA\":{\"dtype\":\"F32\",\"shape\":[4,8],\"data_offsets\":[0,128],\"x\":$(printf '[%.0s' {1..5000})$(printf ']%.0s' {1..5000})}}" 128 "" "JSON"

# ------------------------------------------------------- adapter folders

t_case adapter_config_missing
adapter no_config "{$PAIR}" 256
rm "$T/no_config/adapter_config.json"
expect_hostile "$T/no_config" adapter_config.json

t_case adapter_config_not_json
adapter config_not_json "{$PAIR}" 256
printf '{"peft_type": "LORA", "r": 4,' >"$T/config_not_json/adapter_config.json"
expect_hostile "$T/config_not_json" adapter_config.json JSON

t_case adapter_config_r_zero_or_negative
adapter r_zero "{$PAIR}" 256
printf '{"peft_type":"LORA","r":0,"lora_alpha":8,"target_modules":["q_proj"]}' >"$T/r_zero/adapter_config.json"
expect_hostile "$T/r_zero" adapter_config.json "r"
printf '{"peft_type":"LORA","r":-8,"lora_alpha":8,"target_modules":["q_proj"]}' >"$T/r_zero/adapter_config.json"
expect_hostile "$T/r_zero" adapter_config.json "r"

t_case lora_A_without_lora_B
adapter a_without_b "{$PAIR,\"$VA\":{\"dtype\":\"F32\",\"shape\":[4,8],\"data_offsets\":[256,384]}}" 384
expect_hostile "$T/a_without_b" "model.layers.0.self_attn.v_proj" lora_B

t_case ranks_of_A_and_B_disagree
adapter ranks_disagree "{\"$QA\":{\"dtype\":\"F32\",\"shape\":[4,8],\"data_offsets\":[0,128]},\"$QB\":{\"dtype\":\"F32\",\"shape\":[8,3],\"data_offsets\":[128,224]}}" 224
expect_hostile "$T/ranks_disagree" "model.layers.0.self_attn.q_proj" rank

t_case rank_disagrees_with_config
adapter rank_vs_config "{$PAIR}" 256
printf '{"peft_type":"LORA","r":16,"lora_alpha":8,"target_modules":["q_proj"]}' >"$T/rank_vs_config/adapter_config.json"
expect_hostile "$T/rank_vs_config" "model.layers.0.self_attn.q_proj" "r=16"

t_case dora_and_other_peft_types_refused
adapter dora "{$PAIR}" 256
printf '{"peft_type":"LORA","r":4,"lora_alpha":8,"use_dora":true}' >"$T/dora/adapter_config.json"
expect_hostile "$T/dora" DoRA
printf '{"peft_type":"IA3","target_modules":["q_proj"]}' >"$T/dora/adapter_config.json"
expect_hostile "$T/dora" IA3

t_case adapter_pickle_refused_saying_why
mkdir -p "$T/pickle_adapter"
printf '%s' "$CONFIG" >"$T/pickle_adapter/adapter_config.json"
printf 'PK\003\004' >"$T/pickle_adapter/adapter_model.bin"
expect_hostile "$T/pickle_adapter" adapter_model.bin pickle "arbitrary code"

# --------------------------------------------------------- model folders

t_case index_names_a_missing_shard
mkdir -p "$T/model_missing_shard"
cp "$FIX/st/model_sharded/"* "$T/model_missing_shard/"
rm "$T/model_missing_shard/model-00002-of-00003.safetensors"
expect_hostile "$T/model_missing_shard" model-00002-of-00003.safetensors

t_case index_not_json
mkdir -p "$T/model_bad_index"
cp "$FIX/st/model_sharded/"* "$T/model_bad_index/"
printf '{"weight_map": {' >"$T/model_bad_index/model.safetensors.index.json"
expect_hostile "$T/model_bad_index" model.safetensors.index.json

t_case index_shard_outside_the_folder
mkdir -p "$T/model_escape"
cp "$FIX/st/model_sharded/config.json" "$T/model_escape/"
cp "$FIX/st/model_single/model.safetensors" "$T/outside.safetensors"
printf '{"weight_map": {"lm_head.weight": "../outside.safetensors"}}' >"$T/model_escape/model.safetensors.index.json"
expect_hostile "$T/model_escape" "../outside.safetensors"

t_case hostile_shard_in_a_model
mkdir -p "$T/model_bad_shard"
cp "$FIX/st/model_single/config.json" "$T/model_bad_shard/"
st "$T/model_bad_shard/model.safetensors" "{$PAIR}" 256 100000001
expect_hostile "$T/model_bad_shard" model.safetensors "100 MB"

t_case model_pickle_refused_saying_why
mkdir -p "$T/model_pickle"
cp "$FIX/st/model_single/config.json" "$T/model_pickle/"
printf 'PK\003\004' >"$T/model_pickle/pytorch_model.bin"
expect_hostile "$T/model_pickle" pytorch_model.bin pickle "arbitrary code"
printf 'x' >"$T/weights.pt"
expect_hostile "$T/weights.pt" weights.pt pickle

t_case config_json_not_json
mkdir -p "$T/model_bad_config"
cp "$FIX/st/model_single/model.safetensors" "$T/model_bad_config/"
printf '{"hidden_size": [' >"$T/model_bad_config/config.json"
expect_hostile "$T/model_bad_config" config.json

t_case not_a_file_at_all
mkfifo "$T/fifo.safetensors" 2>/dev/null && expect_hostile "$T/fifo.safetensors" fifo.safetensors
mkdir -p "$T/empty_dir"
expect_hostile "$T/empty_dir" empty_dir
t_end
