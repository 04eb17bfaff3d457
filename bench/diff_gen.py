#!/usr/bin/env python3
"""diff_gen.py - synthetic inputs for bench/diff.sh (never committed; written under a temp dir).

  diff_gen.py adapters DIR   two r=64 all-linear bf16 adapters of Llama-3-8B shapes
                             (32 layers, hidden 4096, intermediate 14336, kv 1024): DIR/a, DIR/b
  diff_gen.py models DIR     a base/tuned model pair of ~1 GB together (bf16, 2 layers of
                             Llama-3-8B shapes), the tuned one = base + a rank-16 change
                             on every linear weight: DIR/base, DIR/tuned

Tensors are streamed to disk one at a time, so this needs little memory.
"""
import json
import os
import struct
import sys

import numpy as np

H, I, KV, L = 4096, 14336, 1024, 32
SHAPES = [("self_attn.q_proj", H, H), ("self_attn.k_proj", KV, H), ("self_attn.v_proj", KV, H),
          ("self_attn.o_proj", H, H), ("mlp.gate_proj", I, H), ("mlp.up_proj", I, H),
          ("mlp.down_proj", H, I)]


def bf16(x):
    """fp32 array -> bf16 bytes (round to nearest even)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16).tobytes()


def write_st(path, specs, produce):
    """specs: [(name, shape)] all BF16; produce(name) returns its bytes, in order."""
    hdr, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in specs:
        n = int(np.prod(shape)) * 2
        hdr[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for name, _ in specs:
            f.write(produce(name))


def adapters(root, r=64):
    rng = np.random.default_rng(1)
    mods = [(f"model.layers.{l}.{s}", o, i) for l in range(L) for s, o, i in SHAPES]
    for tag in ("a", "b"):
        d = os.path.join(root, tag)
        os.makedirs(d, exist_ok=True)
        specs, shapes = [], {}
        for m, o, i in mods:
            for k, shp in (("lora_A", (r, i)), ("lora_B", (o, r))):
                name = f"base_model.model.{m}.{k}.weight"
                specs.append((name, shp))
                shapes[name] = shp
        write_st(os.path.join(d, "adapter_model.safetensors"), specs,
                 lambda n: bf16(rng.standard_normal(shapes[n], dtype=np.float32) * 0.02))
        cfg = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "bias": "none",
               "target_modules": [s.split(".")[1] for s, _, _ in SHAPES],
               "base_model_name_or_path": "meta-llama/Meta-Llama-3-8B", "task_type": "CAUSAL_LM"}
        json.dump(cfg, open(os.path.join(d, "adapter_config.json"), "w"), indent=1)


def models(root, layers=2, rank=16):
    rng = np.random.default_rng(2)
    names = [(f"model.layers.{l}.{s}.weight", (o, i)) for l in range(layers) for s, o, i in SHAPES]
    names += [("model.norm.weight", (H,))]
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H,
           "intermediate_size": I, "num_hidden_layers": layers, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256, "torch_dtype": "bfloat16"}
    for tag in ("base", "tuned"):
        d = os.path.join(root, tag)
        os.makedirs(d, exist_ok=True)
        json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=1)
    shapes = dict(names)
    for tag in ("base", "tuned"):
        r2 = np.random.default_rng(3)  # the same base values for both files

        def produce(n):
            w = r2.standard_normal(shapes[n], dtype=np.float32) * 0.02
            if tag == "tuned" and len(shapes[n]) == 2:
                o, i = shapes[n]
                u = rng.standard_normal((o, rank), dtype=np.float32)
                v = rng.standard_normal((rank, i), dtype=np.float32)
                w = w + (u @ v) * 0.002
            return bf16(w)
        write_st(os.path.join(root, tag, "model.safetensors"), names, produce)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("adapters", "models"):
        sys.exit("usage: diff_gen.py adapters|models DIR")
    (adapters if sys.argv[1] == "adapters" else models)(sys.argv[2])
