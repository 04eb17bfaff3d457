"""bench/train_gpu_peer.py - the peer side of bench/train_gpu.sh, and its model maker.

  python3 bench/train_gpu_peer.py make  --out DIR [--layers L] [--seed S]
  python3 bench/train_gpu_peer.py rows  --out FILE --rows N --seq T --vocab V [--seed S]
  python3 bench/train_gpu_peer.py train --base DIR --data FILE --seq T --steps N --rank R [--checkpoint]

make: a Llama-3-8B-shaped model (hidden 4096, MLP 14336, 32 heads / 8 key-value heads, vocab 128256,
rope llama3) with random bf16 weights drawn on the GPU (nothing can be downloaded on the GPU
machine), saved as safetensors shards with its config.json.  --layers cuts the depth (default 32).

train: transformers + peft + bitsandbytes QLoRA as its guides describe it: NF4 with double
quantization, bf16 compute, LoRA r on all linear layers (alpha 2r, dropout 0.05), gradient
checkpointing, paged_adamw_32bit, batch 1 at seq T, one optimizer step per row, the same rows lora
trains on.  Prints one JSON line: steps, tokens, the seconds of all steps (model load excluded,
CUDA synchronized), tokens/s, torch's peak allocated and reserved bytes, and the versions.
"""
import argparse
import json
import os
import random
import sys
import time


def cfg_llama3_8b(layers):
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": layers,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "vocab_size": 128256, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "hidden_act": "silu", "tie_word_embeddings": False, "attention_bias": False,
        "mlp_bias": False, "bos_token_id": 128000, "eos_token_id": 128001, "torch_dtype": "bfloat16",
    }


def make(a):
    import torch
    from safetensors.torch import save_file
    c = cfg_llama3_8b(a.layers)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    dev = "cuda" if torch.cuda.is_available() else "cpu"   # cpu: a smoke test of the script here
    g = torch.Generator(device=dev).manual_seed(a.seed)
    C, F, V, H, KV, D = c["hidden_size"], c["intermediate_size"], c["vocab_size"], 32, 8, 128

    def rnd(*shape):
        return (torch.randn(*shape, generator=g, device=dev, dtype=torch.float32) * 0.02).to(torch.bfloat16)

    shards, cur, n = [], {}, 0
    def flush():
        nonlocal cur, n
        if cur:
            name = "model-%05d.safetensors" % (len(shards) + 1)
            save_file({k: v.cpu().contiguous() for k, v in cur.items()}, os.path.join(a.out, name))
            shards.append((name, list(cur)))
            cur, n = {}, 0

    def put(k, t):
        nonlocal n
        cur[k] = t
        n += t.numel() * 2
        if n > 4 << 30:
            flush()

    put("model.embed_tokens.weight", rnd(V, C))
    for l in range(c["num_hidden_layers"]):
        p = "model.layers.%d." % l
        put(p + "self_attn.q_proj.weight", rnd(H * D, C))
        put(p + "self_attn.k_proj.weight", rnd(KV * D, C))
        put(p + "self_attn.v_proj.weight", rnd(KV * D, C))
        put(p + "self_attn.o_proj.weight", rnd(C, H * D))
        put(p + "mlp.gate_proj.weight", rnd(F, C))
        put(p + "mlp.up_proj.weight", rnd(F, C))
        put(p + "mlp.down_proj.weight", rnd(C, F))
        put(p + "input_layernorm.weight", torch.ones(C, dtype=torch.bfloat16, device=dev))
        put(p + "post_attention_layernorm.weight", torch.ones(C, dtype=torch.bfloat16, device=dev))
    put("model.norm.weight", torch.ones(C, dtype=torch.bfloat16, device=dev))
    put("lm_head.weight", rnd(V, C))
    flush()
    wm = {k: name for name, keys in shards for k in keys}
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": wm}, f)


def rows(a):
    r = random.Random(a.seed)
    with open(a.out, "w") as f:
        for _ in range(a.rows):
            ids = [r.randrange(a.vocab) for _ in range(a.seq)]
            f.write(json.dumps({"input_ids": ids}) + "\n")


def train(a):
    import warnings
    warnings.filterwarnings("ignore")
    import torch
    import transformers
    import peft
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    q = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                        bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
    m = transformers.AutoModelForCausalLM.from_pretrained(a.base, quantization_config=q, dtype=torch.bfloat16,
                                                          device_map={"": 0}, attn_implementation="sdpa")
    m = prepare_model_for_kbit_training(m, use_gradient_checkpointing=a.checkpoint)
    pm = get_peft_model(m, LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.05,
                                      target_modules="all-linear", task_type="CAUSAL_LM"))
    pm.train()
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = bnb.optim.PagedAdamW32bit(params, lr=2e-4, weight_decay=0.0)
    data = [json.loads(l)["input_ids"][: a.seq] for l in open(a.data)][: a.steps]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    losses = []
    for ids in data:
        x = torch.tensor([ids], device="cuda")
        out = pm(input_ids=x, labels=x)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.3)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tokens = sum(len(ids) for ids in data)
    print(json.dumps({
        "steps": len(data), "tokens": tokens, "steps_s": dt, "tokens_per_s": tokens / dt,
        "peak_allocated": torch.cuda.max_memory_allocated(), "peak_reserved": torch.cuda.max_memory_reserved(),
        "losses": losses, "device": torch.cuda.get_device_name(0),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "bitsandbytes": bnb.__version__},
    }))


def main():
    ap = argparse.ArgumentParser()
    sp = ap.add_subparsers(dest="cmd", required=True)
    p = sp.add_parser("make"); p.add_argument("--out", required=True); p.add_argument("--layers", type=int, default=32)
    p.add_argument("--seed", type=int, default=1)
    p = sp.add_parser("rows"); p.add_argument("--out", required=True); p.add_argument("--rows", type=int, required=True)
    p.add_argument("--seq", type=int, required=True); p.add_argument("--vocab", type=int, required=True)
    p.add_argument("--seed", type=int, default=2)
    p = sp.add_parser("train"); p.add_argument("--base", required=True); p.add_argument("--data", required=True)
    p.add_argument("--seq", type=int, required=True); p.add_argument("--steps", type=int, required=True)
    p.add_argument("--rank", type=int, default=16); p.add_argument("--checkpoint", action="store_true")
    a = ap.parse_args()
    {"make": make, "rows": rows, "train": train}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
