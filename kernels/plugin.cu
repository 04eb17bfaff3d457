// plugin.cu - the plugin's one export: the versioned table of abi.h.
//
// Built twice: by nvcc into liblora_cuda.so (the only symbol it exports),
// and by the host compiler over the CPU execution layer, where the same
// table serves tests/simt/test_kernels.c.
#include "kernels/kernels.h"

#ifndef LORA_CUDA_BUILD
#define LORA_CUDA_BUILD "unknown build"
#endif

static lora_cuda_abi make_table()
{
	lora_cuda_abi t = {};

	t.version = LORA_CUDA_ABI_VERSION;
	t.size = sizeof(lora_cuda_abi);
	t.build = LORA_CUDA_BUILD;
	t.query = lora_cuda_query;
	t.strerror = lora_dev_strerror;
	t.mem_info = lora_dev_mem_info;
	t.malloc = lora_dev_malloc;
	t.free = lora_dev_free;
	t.host_alloc = lora_dev_host_alloc;
	t.host_free = lora_dev_host_free;
	t.memcpy = lora_dev_memcpy;
	t.memset = lora_dev_memset;
	t.stream_create = lora_dev_stream_create;
	t.stream_destroy = lora_dev_stream_destroy;
	t.stream_sync = lora_dev_stream_sync;
	t.merge_init = lora_cuda_merge_init;
	t.merge_reset = lora_cuda_merge_reset;
	t.merge_delta = lora_cuda_merge_delta;
	t.merge_free = lora_cuda_merge_free;
	t.blas_create = lora_blas_create;
	t.blas_destroy = lora_blas_destroy;
	t.gemm = lora_blas_gemm;
	t.nf4_dequant = lora_k_nf4_dequant;
	t.rmsnorm_fwd = lora_k_rmsnorm_fwd;
	t.rmsnorm_bwd = lora_k_rmsnorm_bwd;
	t.rope_table = lora_k_rope_table;
	t.rope_fwd = lora_k_rope_fwd;
	t.rope_bwd = lora_k_rope_bwd;
	t.swiglu_fwd = lora_k_swiglu_fwd;
	t.swiglu_bwd = lora_k_swiglu_bwd;
	t.add = lora_k_add;
	t.addmul = lora_k_addmul;
	t.grad_norm = lora_k_grad_norm;
	t.adamw = lora_k_adamw;
	t.lora_fwd = lora_k_lora_fwd;
	t.lora_bwd = lora_k_lora_bwd;
	t.xent_stats = lora_k_xent_stats;
	t.xent_loss = lora_k_xent_loss;
	t.xent_grad = lora_k_xent_grad;
	t.attn_fwd = lora_k_attn_fwd;
	t.attn_bwd = lora_k_attn_bwd;
	t.geglu_fwd = lora_k_geglu_fwd;
	t.geglu_bwd = lora_k_geglu_bwd;
	t.headnorm_fwd = lora_k_headnorm_fwd;
	t.headnorm_bwd = lora_k_headnorm_bwd;
	t.attn_fwd_softcap = lora_k_attn_fwd_softcap;
	t.attn_bwd_softcap = lora_k_attn_bwd_softcap;
	t.softcap = lora_k_softcap;
	t.xent_grad_softcap = lora_k_xent_grad_softcap;
	return t;
}

static const lora_cuda_abi table = make_table();

extern "C" __attribute__((visibility("default"))) const lora_cuda_abi *lora_cuda_plugin(int abi_version)
{
	(void)abi_version;   // one version so far: the loader checks table.version
	return &table;
}
