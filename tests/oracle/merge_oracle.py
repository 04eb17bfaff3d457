#!/opt/oracle-venv/bin/python
"""merge_oracle.py - fixtures for `lora merge`, from transformers, peft and numpy.

Writes tests/fixtures/merge/:
  base_bf16/      tiny Llama (GQA 4 heads / 2 kv heads), bf16, saved by transformers in 2 shards
  base_fp32/      the same shape, fp32, tied embeddings, one file
  ad_plain/       peft LoRA r=8 alpha=16 on q_proj,v_proj
  ad_rslora/      peft LoRA r=16 alpha=8 use_rslora on q,k,v,o_proj, saved in bf16
  ad_pattern/     peft LoRA r=8 alpha=16 on all linear layers, with rank_pattern and alpha_pattern
  ad_linear/      peft LoRA r=4 alpha=4 on all linear layers
  cases.json      each case: base, adapters with weights, output dtype
  expect/<case>.safetensors
                  "ref.<tensor>": W + sum(w_i * scale_i * B_i @ A_i) computed in float64 (numpy) and
                                  correctly rounded once to the output dtype (no double rounding);
                  "peft.<tensor>": peft merge_and_unload() on the float32 copy of the model, rounded
                                  once to bf16 (bf16 cases only);
                  "logits", "input_ids": logits of peft's merged model (fp32 cases only)
  versions.json   package versions, and how often peft's own bf16 merge was more than 1 ulp off.

Rerun: /opt/oracle-venv/bin/python tests/oracle/merge_oracle.py
"""
import json
import math
import os
import re
import shutil
import sys

import numpy as np
import torch
import transformers
import peft
import safetensors
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM
from peft import LoraConfig, PeftModel, get_peft_model

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "merge")
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def config(tied):
    return LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=96,
                       max_position_embeddings=64, tie_word_embeddings=tied, rms_norm_eps=1e-5)


def make_base(name, dtype, tied, seed, shard):
    torch.manual_seed(seed)
    m = LlamaForCausalLM(config(tied))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02)
    m = m.to(dtype)
    d = os.path.join(ROOT, name)
    m.save_pretrained(d, max_shard_size="100KB" if shard else "50MB")
    for extra in ("generation_config.json",):
        p = os.path.join(d, extra)
        if os.path.exists(p):
            os.remove(p)
    return d


def make_adapter(name, base_dir, seed, save_dtype=torch.float32, **kw):
    torch.manual_seed(seed)
    m = LlamaForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
    pm = get_peft_model(m, LoraConfig(**kw))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_A" in n:
                p.normal_(0, 1.0 / math.sqrt(p.shape[1]))
            elif "lora_B" in n:
                p.normal_(0, 0.02)
    if save_dtype != torch.float32:
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.data = p.data.to(save_dtype)
    d = os.path.join(ROOT, name)
    pm.save_pretrained(d)
    readme = os.path.join(d, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    # A relative base path: the fixture folder can move.
    cfgp = os.path.join(d, "adapter_config.json")
    cfg = json.load(open(cfgp))
    cfg["base_model_name_or_path"] = os.path.basename(base_dir)
    json.dump(cfg, open(cfgp, "w"), indent=2)
    return d


def pattern_value(patterns, module, default):
    """PEFT's rule: the first key K (in order) that the module name matches as (.*\\.)?K$."""
    for k, v in patterns.items():
        if re.match(r"(.*\.)?%s$" % k, module):
            return v
    return default


def load_adapter(d):
    cfg = json.load(open(os.path.join(d, "adapter_config.json")))
    t = load_file(os.path.join(d, "adapter_model.safetensors"))
    mods = {}
    for k, v in t.items():
        m = re.match(r"base_model\.model\.(.*)\.lora_([AB])\.weight$", k)
        assert m, k
        mods.setdefault(m.group(1), {})[m.group(2)] = v.to(torch.float64).numpy()
    out = {}
    for mod, ab in mods.items():
        r = pattern_value(cfg.get("rank_pattern") or {}, mod, cfg["r"])
        a = pattern_value(cfg.get("alpha_pattern") or {}, mod, cfg["lora_alpha"])
        scale = a / math.sqrt(r) if cfg.get("use_rslora") else a / r
        assert ab["A"].shape[0] == r, (mod, ab["A"].shape, r)
        out[mod] = (ab["A"], ab["B"], scale)
    return out


def load_base(d):
    t = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            t.update(load_file(os.path.join(d, f)))
    return t


def round_f64_to_bf16(x):
    """Correctly rounded (nearest even) float64 -> bf16, returned as uint16 bits."""
    x = np.asarray(x, dtype=np.float64)
    bits = x.view(np.uint64)
    sign = bits >> np.uint64(63)
    mag = bits & np.uint64(0x7FFFFFFFFFFFFFFF)
    assert np.all(np.isfinite(x))
    ax = np.abs(x)
    assert np.all((ax == 0) | (ax > 2.0 ** -126)), "bf16 subnormals not expected here"
    # Keep 7 of the 52 mantissa bits: round the low 45 to nearest even.
    low = mag & np.uint64((1 << 45) - 1)
    keep = mag >> np.uint64(45)
    half = np.uint64(1 << 44)
    up = (low > half) | ((low == half) & ((keep & np.uint64(1)) == np.uint64(1)))
    keep = keep + up.astype(np.uint64)          # a carry into the exponent is right
    r = (keep << np.uint64(45)) | (sign << np.uint64(63))
    f32 = r.view(np.float64).astype(np.float32)  # exact: r has 8 significant bits
    return (f32.view(np.uint32) >> np.uint32(16)).astype(np.uint16)


def bf16_bits(t):
    return t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def ordered(u16):
    u = u16.astype(np.int32)
    return np.where(u & 0x8000, 0x8000 - u, u + 0x8000 - 0x8000 + 0)  # sign-magnitude -> ordered


def ulp_dist(a, b):
    def key(u):
        u = u.astype(np.int64)
        return np.where(u & 0x8000, -(u & 0x7FFF), u)
    return np.abs(key(a) - key(b))


def peft_merged(base_dir, adapters, dtype):
    m = transformers.AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=dtype)
    names = []
    pm = None
    for i, (d, w) in enumerate(adapters):
        name = "a%d" % i
        names.append(name)
        if pm is None:
            pm = PeftModel.from_pretrained(m, d, adapter_name=name)
        else:
            pm.load_adapter(d, adapter_name=name)
    for mod in pm.modules():
        if isinstance(mod, peft.tuners.lora.LoraLayer):
            for (d, w), name in zip(adapters, names):
                mod.set_scale(name, w)
    merged = pm.merge_and_unload(adapter_names=names)
    return merged


def main():
    if os.path.isdir(ROOT):
        shutil.rmtree(ROOT)
    os.makedirs(os.path.join(ROOT, "expect"))
    bb = make_base("base_bf16", torch.bfloat16, tied=False, seed=1, shard=True)
    bf = make_base("base_fp32", torch.float32, tied=True, seed=2, shard=False)
    make_adapter("ad_plain", bb, 11, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    make_adapter("ad_rslora", bb, 12, save_dtype=torch.bfloat16, r=16, lora_alpha=8, use_rslora=True,
                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    make_adapter("ad_pattern", bb, 13, r=8, lora_alpha=16, target_modules="all-linear",
                 rank_pattern={"q_proj": 4, "layers.1.mlp.down_proj": 2},
                 alpha_pattern={"v_proj": 32, "gate_proj": 3})
    make_adapter("ad_linear", bb, 14, r=4, lora_alpha=4, target_modules="all-linear")

    cases = [
        ("bf16_plain", "base_bf16", [("ad_plain", 1.0)]),
        ("bf16_rslora", "base_bf16", [("ad_rslora", 1.0)]),
        ("bf16_pattern", "base_bf16", [("ad_pattern", 1.0)]),
        ("bf16_two", "base_bf16", [("ad_plain", 0.7), ("ad_pattern", 0.3)]),
        ("fp32_linear", "base_fp32", [("ad_linear", 1.0)]),
        ("fp32_two", "base_fp32", [("ad_rslora", 0.7), ("ad_linear", 0.3)]),
    ]
    notes = {}
    torch.manual_seed(99)
    input_ids = torch.randint(0, 96, (1, 12))
    for name, base, ads in cases:
        bdir = os.path.join(ROOT, base)
        W = load_base(bdir)
        is_bf16 = base == "base_bf16"
        delta = {}
        for a, w in ads:
            for mod, (A, B, s) in load_adapter(os.path.join(ROOT, a)).items():
                tn = mod + ".weight"
                delta[tn] = delta.get(tn, 0) + w * s * (B @ A)
        out = {}
        for tn, dW in sorted(delta.items()):
            exact = W[tn].to(torch.float64).numpy() + dW
            if is_bf16:
                out["ref." + tn] = torch.from_numpy(round_f64_to_bf16(exact).view(np.int16)).view(torch.bfloat16)
            else:
                out["ref." + tn] = torch.from_numpy(exact.astype(np.float32))
        abs_ads = [(os.path.join(ROOT, a), w) for a, w in ads]
        merged32 = peft_merged(bdir, abs_ads, torch.float32)
        sd = merged32.state_dict()
        if is_bf16:
            far_own, total = 0, 0
            merged16 = peft_merged(bdir, abs_ads, torch.bfloat16).state_dict()
            for tn in delta:
                out["peft." + tn] = sd[tn].to(torch.bfloat16).contiguous()
                d = ulp_dist(bf16_bits(merged16[tn]), out["ref." + tn].view(torch.int16).numpy().view(np.uint16))
                far_own += int((d > 1).sum())
                total += d.size
            notes[name] = {"values": total, "peft_bf16_merge_over_1ulp": far_own}
        else:
            with torch.no_grad():
                logits = merged32(input_ids).logits[0].float().contiguous()
            out["logits"] = logits
            out["input_ids"] = input_ids[0].to(torch.int64).contiguous()
        save_file(out, os.path.join(ROOT, "expect", name + ".safetensors"),
                  metadata={"oracle": "tests/oracle/merge_oracle.py"})
    json.dump({"cases": [{"name": n, "base": b, "dtype": "auto",
                          "adapters": [{"path": a, "weight": w} for a, w in ads]}
                         for n, b, ads in cases]},
              open(os.path.join(ROOT, "cases.json"), "w"), indent=2)
    json.dump({"python": sys.version.split()[0], "torch": torch.__version__,
               "transformers": transformers.__version__, "peft": peft.__version__,
               "safetensors": safetensors.__version__, "numpy": np.__version__,
               "peft_own_bf16_merge": notes},
              open(os.path.join(ROOT, "versions.json"), "w"), indent=2)
    print(json.dumps(notes, indent=1))


if __name__ == "__main__":
    main()
