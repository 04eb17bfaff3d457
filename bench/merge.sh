#!/bin/bash
# bench/merge.sh - lora merge and lora swap on a synthetic Llama-shaped bf16
# model, beside `cp -r` of the same folder on the same disk and beside peft's
# merge_and_unload() + save_pretrained().  Never run by `make check`.
#
#   bench/merge.sh [WORKDIR]        (default /tmp/lora-bench-merge; needs ~6 GB free)
#
# Environment: LORA (default build/lora or build-cpu/lora), MKTINY (the
# tests/tools/mktiny binary next to it), PY (default /opt/oracle-venv/bin/python;
# the peft line is skipped when it lacks peft), LAYERS (default 10: 1.14 GB),
# REPS (default 3: each figure is the best of REPS runs, cp and lora alternating).
#
# Targets from issue 4: merge wall time <= 1.5 x cp -r; peak RSS <= 2 x largest
# tensor + 64 MB; swap of a q_proj,v_proj adapter <= 0.25 x the full merge.
#
# lora merge syncs its output before it renames it into place; cp -r does not
# (its copy may sit in the page cache).  So the script also times `cp -r &&
# sync` and the disk's own floor for writing the model durably: every shard
# written by dd with O_DIRECT, all shards at once.
set -eu
W=${1:-/tmp/lora-bench-merge}
here=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${LORA:-}" ]; then
	for b in build build-cpu; do [ -x "$here/$b/lora" ] && LORA=$here/$b/lora && break; done
fi
LORA=${LORA:?set LORA to the lora binary}
MKTINY=${MKTINY:-$(dirname "$LORA")/tools/mktiny}
PY=${PY:-/opt/oracle-venv/bin/python}
LAYERS=${LAYERS:-10}
REPS=${REPS:-3}
[ -x "$MKTINY" ] || { echo "bench: no mktiny at $MKTINY (make tools)" >&2; exit 1; }
mkdir -p "$W"
cd "$W"

if [ ! -f base/config.json ]; then
	echo "generating the base (hidden 2048, inter 5632, $LAYERS layers, vocab 32000, bf16)..." >&2
	rm -rf base
	"$MKTINY" model base --hidden 2048 --inter 5632 --layers "$LAYERS" --heads 32 --kv-heads 4 \
		--vocab 32000 --shards 2 --dtype bf16 >/dev/null
fi
[ -d all16 ] || "$MKTINY" adapter all16 --base base --targets all-linear --r 16 --alpha 32 --seed 1 >/dev/null
[ -d qv_a ] || "$MKTINY" adapter qv_a --base base --targets q_proj,v_proj --r 16 --alpha 32 --seed 2 >/dev/null
[ -d qv_b ] || "$MKTINY" adapter qv_b --base base --targets q_proj,v_proj --r 16 --alpha 32 --seed 3 >/dev/null

# largest tensor (bytes and name), from the safetensors headers
read -r LARGEST LNAME < <(python3 - base <<'PYEOF'
import json, os, struct, sys
best = (0, "")
for f in os.listdir(sys.argv[1]):
    if f.endswith(".safetensors"):
        with open(os.path.join(sys.argv[1], f), "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            h = json.loads(fh.read(n))
        for k, v in h.items():
            if k != "__metadata__":
                best = max(best, (v["data_offsets"][1] - v["data_offsets"][0], k))
print(best[0], best[1])
PYEOF
)
BASE_BYTES=$(du -sb base | cut -f1)

export XDG_CACHE_HOME=$W/cache   # lora's fingerprint cache (see lora-merge(1))

# calc EXPR: floating-point arithmetic
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }

# run LABEL CMD...: wall seconds, user+sys seconds and peak RSS (KB) of CMD,
# appended to $W/times.LABEL as "wall cpu rss"
run() {
	local label=$1; shift
	/usr/bin/time -f "%e %U %S %M" -o .t "$@" >/dev/null 2>.err || { cat .err >&2; exit 1; }
	awk '{printf "%s %.2f %d\n", $1, $2 + $3, $4}' .t >>"times.$label"
}
# best LABEL: the run with the least wall time
best() { sort -n "times.$1" | head -1; }

rm -f times.*
for i in $(seq "$REPS"); do
	rm -rf cp m mqv dd; sync
	run cp cp -r base cp
	rm -rf cp; sync
	run cpsync sh -c 'cp -r base cp && sync'
	rm -rf cp; sync
	mkdir dd
	run ddfloor sh -c 'for f in base/*.safetensors; do dd if="$f" of="dd/${f##*/}" bs=64M oflag=direct status=none & done; wait'
	rm -rf dd; sync
	if [ "$i" = 1 ]; then
		rm -rf "$XDG_CACHE_HOME"
		run mergecold "$LORA" merge --base base all16 -o m
	else
		run merge "$LORA" merge --base base all16 -o m
	fi
	rm -rf m; sync
	run mergeqv "$LORA" merge --base base qv_a -o mqv
	run swap "$LORA" swap mqv qv_b
	run swap "$LORA" swap mqv qv_a
done
rm -rf mqv m cp

peft_line="(skipped: $PY has no peft)"
if "$PY" -c 'import peft, transformers' 2>/dev/null; then
	for i in $(seq "$REPS"); do
		rm -rf pm; sync
		run peft "$PY" - <<'PYEOF'
import torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
m = AutoModelForCausalLM.from_pretrained("base", torch_dtype=torch.bfloat16)
m = PeftModel.from_pretrained(m, "all16").merge_and_unload()
m.save_pretrained("pm")
PYEOF
	done
	rm -rf pm
fi

read -r cp_w cp_c cp_m < <(best cp)
read -r cs_w cs_c cs_m < <(best cpsync)
read -r dd_w dd_c dd_m < <(best ddfloor)
read -r mc_w mc_c mc_m < <(best mergecold)
[ -f times.merge ] || cp times.mergecold times.merge
read -r mg_w mg_c mg_m < <(best merge)
read -r mq_w mq_c mq_m < <(best mergeqv)
read -r sw_w sw_c sw_m < <(best swap)
rss_limit=$(( (2 * LARGEST + 64 * 1048576) / 1024 ))
printf 'lora merge/swap bench: synthetic Llama-shaped bf16 model, %s\n' "$(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf 'base: %.2f GB in 2 shards (%s layers, hidden 2048, inter 5632, vocab 32000); largest tensor %.1f MB (%s)\n' \
	"$(calc "$BASE_BYTES / 1e9")" "$LAYERS" "$(calc "$LARGEST / 1e6")" "$LNAME"
printf 'best of %s runs                                 wall s   user+sys s   peak RSS MB\n' "$REPS"
printf '  cp -r base                                   %6.2f   %6.2f       %6.0f\n' "$cp_w" "$cp_c" "$(calc "$cp_m/1024")"
printf '  cp -r base && sync                           %6.2f   %6.2f\n' "$cs_w" "$cs_c"
printf '  dd oflag=direct, every shard at once         %6.2f   %6.2f   (the disk: %.1f GB/s)\n' \
	"$dd_w" "$dd_c" "$(calc "$BASE_BYTES / $dd_w / 1e9")"
printf '  lora merge, all-linear r=16, cold cache     %6.2f   %6.2f       %6.0f\n' "$mc_w" "$mc_c" "$(calc "$mc_m/1024")"
printf '  lora merge, all-linear r=16 adapter          %6.2f   %6.2f       %6.0f\n' "$mg_w" "$mg_c" "$(calc "$mg_m/1024")"
printf '  lora merge, q_proj,v_proj r=16 adapter       %6.2f   %6.2f       %6.0f\n' "$mq_w" "$mq_c" "$(calc "$mq_m/1024")"
printf '  lora swap, q_proj,v_proj -> q_proj,v_proj    %6.2f   %6.2f       %6.0f\n' "$sw_w" "$sw_c" "$(calc "$sw_m/1024")"
if [ -f times.peft ]; then
	read -r pf_w pf_c pf_m < <(best peft)
	printf '  peft merge_and_unload + save_pretrained      %6.2f   %6.2f       %6.0f\n' "$pf_w" "$pf_c" "$(calc "$pf_m/1024")"
	peft_line=$(printf '%.2f (lora merge is %.1fx faster), peak RSS %.2f' "$(calc "$mg_w / $pf_w")" \
		"$(calc "$pf_w / $mg_w")" "$(calc "$mg_m / $pf_m")")
fi
printf 'merge / cp -r:           %.2f  (target <= 1.5; merge / (cp -r && sync): %.2f; merge / disk floor: %.2f)\n' \
	"$(calc "$mg_w / $cp_w")" "$(calc "$mg_w / $cs_w")" "$(calc "$mg_w / $dd_w")"
printf '  cold cache (hashing the base for its fingerprint): %.2f; / (cp -r && sync): %.2f\n' \
	"$(calc "$mc_w / $cp_w")" "$(calc "$mc_w / $cs_w")"
printf 'merge peak RSS:          %.0f MB  (target <= 2 x %.1f + 64 = %.0f MB)\n' \
	"$(calc "$mg_m/1024")" "$(calc "$LARGEST/1048576")" "$(calc "$rss_limit/1024")"
printf 'swap / full merge:       %.2f  (target <= 0.25; vs the q,v merge: %.2f)\n' \
	"$(calc "$sw_w / $mg_w")" "$(calc "$sw_w / $mq_w")"
printf 'lora merge / peft:       %s\n' "$peft_line"
