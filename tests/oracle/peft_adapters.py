#!/opt/oracle-venv/bin/python
"""peft_adapters.py - PEFT adapters saved by peft itself, and what torch says about them.

For each variant, builds a tiny LlamaForCausalLM from a config (hidden 32, two
layers), wraps it with get_peft_model(LoraConfig(...)) with
init_lora_weights=False (so B is random, not zero: ΔW ≠ 0), and saves it with
save_pretrained into tests/fixtures/peft/<variant>/.  Beside it, expected.json
holds what `lora inspect --json` must report, taken from the live peft model,
not from the files:

  base, r, alpha, target_modules   the saved LoraConfig
  parameters, bytes                numel and bytes of the saved tensors
  modules[]                        per LoRA layer of the peft model: its name
                                   inside the base model, r and alpha (peft's
                                   layer.r / layer.lora_alpha, patterns
                                   applied), scale (layer.scaling) and
                                   ‖ΔW‖_F = ‖scale · B·A‖_F in float64 torch

Variants: plain (q,v; r 4), use_rslora (q,k,v,o; r 8), rank_pattern (with a
regex key), alpha_pattern (with target_modules as a regex string), bf16
(all-linear, weights saved in bfloat16).

Run: /opt/oracle-venv/bin/python tests/oracle/peft_adapters.py
"""
import json
import os
import shutil
import sys

import peft
import safetensors
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

# peft saves target_modules from a Python set: fix the string hash seed so that
# rerunning the script rewrites the same fixtures.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "peft")
BASE_NAME = "oracle/tiny-llama"


def versions():
    return {"python": sys.version.split()[0], "torch": torch.__version__, "peft": peft.__version__,
            "transformers": transformers.__version__, "safetensors": safetensors.__version__}


def tiny_llama(seed):
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=64, max_position_embeddings=64)
    m = LlamaForCausalLM(cfg)
    m.name_or_path = BASE_NAME
    m.config._name_or_path = BASE_NAME
    return m


VARIANTS = {
    "plain": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "rslora": dict(r=8, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    "rank_pattern": dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "down_proj"],
                         rank_pattern={r"layers\.1\.self_attn\.(q|k)_proj": 2, "v_proj": 6,
                                       "model.layers.0.mlp.down_proj": 3}),
    "alpha_pattern": dict(r=4, lora_alpha=8, target_modules=r".*\.(q_proj|v_proj|up_proj)",
                          alpha_pattern={"q_proj": 32, "layers.1.mlp.up_proj": 3.5}),
    "bf16": dict(r=2, lora_alpha=5, target_modules="all-linear"),
}


def make(name, kw, seed):
    model = tiny_llama(seed)
    pm = get_peft_model(model, LoraConfig(init_lora_weights=False, lora_dropout=0.0, **kw))
    if name == "bf16":
        pm = pm.to(torch.bfloat16)
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    pm.save_pretrained(d)
    os.unlink(os.path.join(d, "README.md"))  # peft's model card: not part of the format

    mods = []
    for full, mod in pm.base_model.model.named_modules():
        if not isinstance(mod, peft.tuners.lora.LoraLayer) or "default" not in mod.lora_A:
            continue
        A = mod.lora_A["default"].weight.detach().to(torch.float64)  # [r, in]
        B = mod.lora_B["default"].weight.detach().to(torch.float64)  # [out, r]
        scale = float(mod.scaling["default"])
        norm = torch.linalg.matrix_norm(scale * (B @ A), ord="fro").item()
        assert norm > 0, full
        mods.append({"name": full, "r": int(mod.r["default"]), "alpha": float(mod.lora_alpha["default"]),
                     "scale": scale, "delta_norm": norm, "in": A.shape[1], "out": B.shape[0]})
    mods.sort(key=lambda m: m["name"])

    from safetensors.torch import load_file
    saved = load_file(os.path.join(d, "adapter_model.safetensors"))
    with open(os.path.join(d, "adapter_config.json")) as f:
        cfg = json.load(f)
    expected = {
        "versions": versions(),
        "base": cfg.get("base_model_name_or_path"),
        "r": cfg["r"], "alpha": cfg["lora_alpha"],
        "target_modules": cfg["target_modules"],
        "parameters": sum(t.numel() for t in saved.values()),
        "bytes": sum(t.numel() * t.element_size() for t in saved.values()),
        "dtype": "BF16" if name == "bf16" else "F32",
        "modules": mods,
    }
    assert len(saved) == 2 * len(mods)
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    for fn in os.listdir(d):
        os.chmod(os.path.join(d, fn), 0o644)
    print("%-14s %2d modules, %6d bytes of tensors" % (name, len(mods), expected["bytes"]))


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    for i, (name, kw) in enumerate(VARIANTS.items()):
        make(name, kw, seed=100 + i)
