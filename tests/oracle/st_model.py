#!/opt/oracle-venv/bin/python
"""st_model.py - Hugging Face model folders saved by transformers, and what they hold.

Writes into tests/fixtures/st/:
  model_sharded/   a tiny LlamaForCausalLM (hidden 32, 2 layers, GQA 4/2 heads,
                   bf16, untied) saved with save_pretrained(max_shard_size=
                   "20KB"): config.json, model.safetensors.index.json and
                   three shards
  model_single/    a tinier one (hidden 16, 1 layer, fp16, tied embeddings,
                   rope scaling llama3) in one model.safetensors
Each has expected.json: the config fields as transformers reads them back
(AutoConfig.from_pretrained), every tensor with dtype, shape and shard as
Python safetensors reads them, the parameter count, shard sizes and the
shards in index order.

Run: /opt/oracle-venv/bin/python tests/oracle/st_model.py
"""
import json
import os
import shutil
import sys

import safetensors
import torch
import transformers
from safetensors import safe_open
from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "st")


def versions():
    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__, "safetensors": safetensors.__version__}


def save(name, cfg, dtype, shard):
    torch.manual_seed(5)
    m = LlamaForCausalLM(cfg).to(dtype)
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    m.save_pretrained(d, max_shard_size=shard) if shard else m.save_pretrained(d)
    for junk in ("generation_config.json",):
        if os.path.exists(os.path.join(d, junk)):
            os.unlink(os.path.join(d, junk))
    back = AutoConfig.from_pretrained(d)
    rope = back.rope_parameters if hasattr(back, "rope_parameters") else {}
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            wm = json.load(f)["weight_map"]
        shards = []
        for v in wm.values():
            if v not in shards:
                shards.append(v)
        shards.sort()
    else:
        shards = ["model.safetensors"]
    tensors = {}
    for s in shards:
        with safe_open(os.path.join(d, s), framework="pt") as f:
            for k in f.keys():
                sl = f.get_slice(k)
                tensors[k] = {"dtype": sl.get_dtype(), "shape": list(sl.get_shape()), "shard": s}
    expected = {
        "versions": versions(),
        "architecture": back.architectures[0],
        "model_type": back.model_type,
        "hidden_size": back.hidden_size,
        "intermediate_size": back.intermediate_size,
        "num_hidden_layers": back.num_hidden_layers,
        "num_attention_heads": back.num_attention_heads,
        "num_key_value_heads": back.num_key_value_heads,
        "head_dim": getattr(back, "head_dim", back.hidden_size // back.num_attention_heads),
        "vocab_size": back.vocab_size,
        "max_position_embeddings": back.max_position_embeddings,
        "rms_norm_eps": back.rms_norm_eps,
        "rope_theta": rope.get("rope_theta", getattr(back, "rope_theta", None)),
        "rope_type": rope.get("rope_type", "default"),
        "rope_factor": rope.get("factor"),
        "tie_word_embeddings": bool(back.tie_word_embeddings),
        "dtype": {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}[dtype],
        "parameters": sum(int(torch.Size(t["shape"]).numel()) for t in tensors.values()),
        "shards": [{"file": s, "bytes": os.path.getsize(os.path.join(d, s)),
                    "tensors": sum(1 for t in tensors.values() if t["shard"] == s)} for s in shards],
        "tensors": tensors,
    }
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    for fn in os.listdir(d):
        os.chmod(os.path.join(d, fn), 0o644)
    print("%s: %d shards, %d tensors, %d parameters" % (name, len(shards), len(tensors), expected["parameters"]))


if __name__ == "__main__":
    save("model_sharded",
         LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=64, max_position_embeddings=128, rms_norm_eps=1e-5,
                     rope_theta=500000.0, tie_word_embeddings=False),
         torch.bfloat16, "20KB")
    save("model_single",
         LlamaConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=1, vocab_size=32, max_position_embeddings=64, tie_word_embeddings=True,
                     rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
         torch.float16, None)
