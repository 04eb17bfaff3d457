#!/bin/bash
# cuda_plugin.sh - finding, loading and refusing liblora_cuda.so (train/cuda.c):
# a missing file, a library that is no plugin, a plugin of another ABI version
# (each a clean "lora: " line, also from merge --device cuda), and the CPU
# execution layer built as a plugin, which the loader accepts.
. tests/lib.sh

SIMT_SO=$LORA_TOOLS/liblora_cuda_simt.so
V0_SO=$LORA_TOOLS/liblora_cuda_v0.so

t_case missing_plugin
LORA_CUDA_PLUGIN=$T/nope.so run "$LORA" --version; expect_rc 0
expect_out "cpu only: cannot load the CUDA plugin $T/nope.so"

t_case not_a_plugin
libm=$(ls /lib/x86_64-linux-gnu/libm.so.6 /usr/lib/x86_64-linux-gnu/libm.so.6 /lib64/libm.so.6 2>/dev/null | head -1)
LORA_CUDA_PLUGIN=$libm run "$LORA" --version; expect_rc 0
expect_out "is not a lora CUDA plugin (it lacks lora_cuda_plugin)"

t_case other_abi_version_refused
[ -f "$V0_SO" ] || t_fail "no $V0_SO (make tools)"
LORA_CUDA_PLUGIN=$V0_SO run "$LORA" --version; expect_rc 0
expect_out "has ABI version 0, this lora needs"
# merge gets the plugin through its options (lora_merge_opts.gpu), loaded on first use
LORA_CUDA_PLUGIN=$V0_SO run "$LORA" merge --base "$FIX/merge/base_bf16" "$FIX/merge/ad_plain" -o "$T/out" --device cuda
expect_rc 1
expect_err "--device cuda: the CUDA plugin $V0_SO has ABI version 0"
[ ! -e "$T/out" ] || t_fail "merge left $T/out"

t_case simt_plugin_accepted
[ -f "$SIMT_SO" ] || t_fail "no $SIMT_SO (make tools)"
LORA_CUDA_PLUGIN=$SIMT_SO run "$LORA" --version; expect_rc 0
expect_out "(cuda: the CPU execution layer (tests/simt), 1 GiB)"
# the layer has no cuBLAS: merge --device cuda says so, from the plugin's own message
LORA_CUDA_PLUGIN=$SIMT_SO run "$LORA" merge --base "$FIX/merge/base_bf16" "$FIX/merge/ad_plain" -o "$T/out" --device cuda
expect_rc 1
expect_err "--device cuda: the CPU execution layer has no cuBLAS merge"
[ ! -e "$T/out" ] || t_fail "merge left $T/out"

t_end
