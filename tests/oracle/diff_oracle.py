#!/usr/bin/env python3
"""diff_oracle.py - fixtures for `lora diff`, `lora combine` and `lora extract`.

Writes into tests/fixtures/diff/:
  adapters/<name>/        tiny PEFT adapters saved by peft (hidden 32, 2 layers)
  expected/diff_<x>_<y>.json   diff figures computed on dense ΔW with numpy (fp64)
  expected/combine_<case>.safetensors + .json
                          peft's add_weighted_adapter (cat, linear, svd) on the same inputs
  extract/base, extract/tuned   model folders with a planted low-rank difference
  expected/spectrum_<x>.json   singular values of each module's dense ΔW, effective rank
  expected/extract.json + extract.safetensors   the planted difference, its dense
                          truncated SVD factors and the captured energy shares
  versions.json           the package versions this ran with

Definitions (the same as man/lora-diff.1):
  ΔW        = peft's get_delta_weight (scale · B @ A) of each module, in fp64
  norm      = ‖ΔW‖_F
  distance  = ‖ΔW_a − ΔW_b‖_F (a module missing on one side counts as ΔW = 0)
  cosine    = ⟨ΔW_a, ΔW_b⟩_F / (‖ΔW_a‖ ‖ΔW_b‖)
  overlap   = ‖U_a[:, :k]ᵀ U_b[:, :k]‖_F² / k, U from numpy's dense SVD, k = min of
              the counts of singular values above 1e-6 × the largest on each side

Run: /opt/oracle-venv/bin/python tests/oracle/diff_oracle.py   (CPU, a few seconds)
"""
import json
import os
import shutil
import sys

import numpy as np
import torch
import peft
import safetensors
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors.numpy import save_file as np_save
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "diff")
ADIR = os.path.join(ROOT, "adapters")
EDIR = os.path.join(ROOT, "expected")
XDIR = os.path.join(ROOT, "extract")
RANK_TOL = 1e-6
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_config():
    return LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                       max_position_embeddings=64)


def base_model():
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config()).double()


def lora_layers(model, name):
    """(module name without the peft prefix, layer) for every LoRA layer holding adapter `name`."""
    for full, mod in model.named_modules():
        if hasattr(mod, "lora_A") and name in mod.lora_A:
            yield full.replace("base_model.model.", "", 1), mod


def make_adapter(out, cfg, fill, dtype=torch.float32):
    """A peft adapter with weights set by fill(module_name, layer) and saved to adapters/<out>."""
    model = get_peft_model(base_model(), cfg)
    with torch.no_grad():
        for name, mod in lora_layers(model, "default"):
            A, B = fill(name, mod)
            mod.lora_A["default"].weight.copy_(A)
            mod.lora_B["default"].weight.copy_(B)
    model = model.to(dtype)
    path = os.path.join(ADIR, out)
    model.save_pretrained(path, safe_serialization=True)
    for junk in ("README.md",):
        if os.path.exists(os.path.join(path, junk)):
            os.remove(os.path.join(path, junk))
    # peft writes target_modules from a set: sort it so that reruns give the same file
    cfg_path = os.path.join(path, "adapter_config.json")
    cfg_json = json.load(open(cfg_path))
    if isinstance(cfg_json.get("target_modules"), list):
        cfg_json["target_modules"] = sorted(cfg_json["target_modules"])
    json.dump(cfg_json, open(cfg_path, "w"), indent=2, sort_keys=True)
    return path


def deltas(path):
    """{module: ΔW (fp64 numpy)} from peft itself (scale, patterns, rsLoRA applied by peft)."""
    model = PeftModel.from_pretrained(base_model(), path, adapter_name="x").double()
    return {n: m.get_delta_weight("x").detach().numpy().astype(np.float64)
            for n, m in lora_layers(model, "x")}


def left_vectors(dw):
    u, s, _ = np.linalg.svd(dw, full_matrices=False)
    k = int(np.sum(s > RANK_TOL * s[0])) if s.size and s[0] > 0 else 0
    return u[:, :k]


def fnum(x):
    return None if x is None or not np.isfinite(x) else float(x)


def diff_expected(pa, pb):
    da, db = deltas(pa), deltas(pb)
    mods, inner_sum, den, na2, nb2, d2, ovs = [], 0.0, 0.0, 0.0, 0.0, 0.0, []
    for name in sorted(set(da) | set(db)):
        a, b = da.get(name), db.get(name)
        e = {"name": name, "in": "both" if a is not None and b is not None else ("a" if b is None else "b")}
        za = np.zeros_like(b) if a is None else a
        zb = np.zeros_like(a) if b is None else b
        n_a, n_b = np.linalg.norm(za), np.linalg.norm(zb)
        dist = np.linalg.norm(za - zb)
        e.update(norm_a=n_a, norm_b=n_b, distance=dist, cosine=None, overlap=None)
        na2 += n_a ** 2
        nb2 += n_b ** 2
        d2 += dist ** 2
        if a is not None and b is not None:
            ip = float(np.sum(a * b))
            inner_sum += ip
            den += n_a * n_b
            if n_a > 0 and n_b > 0:
                e["cosine"] = ip / (n_a * n_b)
            ua, ub = left_vectors(a), left_vectors(b)
            k = min(ua.shape[1], ub.shape[1])
            if k > 0:
                e["overlap"] = float(np.sum((ua[:, :k].T @ ub[:, :k]) ** 2) / k)
                ovs.append(e["overlap"])
        mods.append({k: (fnum(v) if not isinstance(v, str) else v) for k, v in e.items()})
    na, nb = np.sqrt(na2), np.sqrt(nb2)
    summary = {
        "norm_a": na, "norm_b": nb, "distance": np.sqrt(d2),
        "cosine": inner_sum / (na * nb) if na > 0 and nb > 0 else None,
        "weighted_cosine": inner_sum / den if den > 0 else None,
        "mean_overlap": float(np.mean(ovs)) if ovs else None,
    }
    summary = {k: fnum(v) for k, v in summary.items()}
    summary["only_a"] = [m["name"] for m in mods if m["in"] == "a"]
    summary["only_b"] = [m["name"] for m in mods if m["in"] == "b"]
    return {"modules": mods, "summary": summary}


# ------------------------------------------------------------------ adapters

# One generator for every adapter value: base_model() reseeds torch's global one.
GEN = torch.Generator().manual_seed(1)


def rnd(*shape):
    return torch.randn(*shape, dtype=torch.float64, generator=GEN)


def build_adapters():
    keep = {}

    def fill_a(name, m):
        r = m.lora_A["default"].weight.shape[0]
        A, B = rnd(r, m.in_features) * 0.3, rnd(m.out_features, r) * 0.3
        keep[name] = (A, B)
        return A, B

    pa = make_adapter("a", LoraConfig(r=4, lora_alpha=8, target_modules=ALL), fill_a)

    # b: rsLoRA, patterns, and ΔW_b = 0.8·ΔW_a + noise where the ranks allow it (cosines near 0.8)
    cfg_b = LoraConfig(r=6, lora_alpha=12, use_rslora=True, target_modules=ALL,
                       rank_pattern={"down_proj": 3}, alpha_pattern={"q_proj": 4})
    model_b = get_peft_model(base_model(), cfg_b)

    def fill_b(name, m):
        r = m.lora_A["default"].weight.shape[0]
        A, B = rnd(r, m.in_features) * 0.3, rnd(m.out_features, r) * 0.3
        if r >= 4:
            Aa, Ba = keep[name]
            ratio = (8 / 4) / m.scaling["default"]
            A[:4] = Aa
            B[:, :4] = 0.8 * ratio * Ba
            B[:, 4:] *= 0.5
        return A, B

    pb = make_adapter("b", cfg_b, fill_b)
    del model_b

    # c: other modules (lm_head only here; k/o/gate/up/down only in a)
    make_adapter("c", LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "v_proj", "lm_head"]),
                 lambda n, m: (rnd(2, m.in_features), rnd(m.out_features, 2)))
    # d: same rank as a (for the linear method), other values
    make_adapter("d", LoraConfig(r=4, lora_alpha=4, target_modules=ALL),
                 lambda n, m: (rnd(4, m.in_features) * 0.5, rnd(m.out_features, 4) * 0.5))
    # zero: as peft initialises it (B = 0)
    zcfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    make_adapter("zero", zcfg, lambda n, m: (m.lora_A["default"].weight.detach().clone(),
                                             torch.zeros_like(m.lora_B["default"].weight)))
    # neg: a with B -> -B; refac: the same ΔW as a with alpha doubled, B halved, stored as F64
    for out, alpha, bmul, dt in (("neg", 8, -1.0, torch.float32), ("refac", 16, 0.5, torch.float64)):
        dst = os.path.join(ADIR, out)
        shutil.rmtree(dst, ignore_errors=True)
        os.makedirs(dst)
        sd = load_file(os.path.join(pa, "adapter_model.safetensors"))
        sd = {k: (v.double() * (bmul if "lora_B" in k else 1.0)).to(dt) for k, v in sd.items()}
        save_file(sd, os.path.join(dst, "adapter_model.safetensors"), metadata={"format": "pt"})
        cfg = json.load(open(os.path.join(pa, "adapter_config.json")))
        cfg["lora_alpha"] = alpha
        json.dump(cfg, open(os.path.join(dst, "adapter_config.json"), "w"), indent=2)
    # b16: b stored as bf16
    dst = os.path.join(ADIR, "b16")
    shutil.rmtree(dst, ignore_errors=True)
    os.makedirs(dst)
    sd = load_file(os.path.join(pb, "adapter_model.safetensors"))
    save_file({k: v.to(torch.bfloat16) for k, v in sd.items()},
              os.path.join(dst, "adapter_model.safetensors"), metadata={"format": "pt"})
    shutil.copy(os.path.join(pb, "adapter_config.json"), dst)


# ------------------------------------------------------------------- combine

COMBINE = [
    # name, adapters, weights, peft combination_type, svd_rank
    ("cat_ab", ["a", "b"], [0.7, -0.4], "cat", None),
    ("svd_ab", ["a", "b"], [0.7, -0.4], "svd", 5),
    ("linear_ad", ["a", "d"], [0.6, -0.5], "linear", None),
    ("cat_ac", ["a", "c"], [1.0, 1.0], "cat", None),
]


def combine_expected(name, names, weights, ctype, rank):
    model = PeftModel.from_pretrained(base_model(), os.path.join(ADIR, names[0]), adapter_name=names[0])
    for n in names[1:]:
        model.load_adapter(os.path.join(ADIR, n), adapter_name=n)
    model = model.double()
    kw = {"svd_rank": rank} if rank else {}
    model.add_weighted_adapter(names, weights, "out", combination_type=ctype, **kw)
    sd = get_peft_model_state_dict(model, adapter_name="out")
    tensors = {k: v.detach().double().numpy().copy() for k, v in sd.items()}
    np_save(tensors, os.path.join(EDIR, f"combine_{name}.safetensors"))
    # the exact weighted sum, densely, and its singular values (for svd: the top `rank`)
    ins = [deltas(os.path.join(ADIR, n)) for n in names]
    mods = {}
    for mod in sorted(set().union(*ins)):
        total = sum(w * d[mod] for w, d in zip(weights, ins) if mod in d)
        s = np.linalg.svd(total, compute_uv=False)
        out_dw = dict(lora_layers(model, "out"))[mod].get_delta_weight("out").detach().numpy()
        mods[mod] = {"sum_norm": float(np.linalg.norm(total)),
                     "peft_norm": float(np.linalg.norm(out_dw)),
                     "sv": [float(x) for x in s[: (rank or len(s))]]}
    cfg = model.peft_config["out"]
    meta = {"adapters": names, "weights": weights, "method": ctype, "rank": rank,
            "r": cfg.r, "lora_alpha": cfg.lora_alpha, "modules": mods}
    json.dump(meta, open(os.path.join(EDIR, f"combine_{name}.json"), "w"), indent=1)


# ------------------------------------------------------------------- extract

def build_extract():
    rng = np.random.default_rng(7)
    shapes = {
        "model.embed_tokens.weight": (64, 32),
        "model.layers.0.input_layernorm.weight": (32,),
        "model.layers.0.self_attn.q_proj.weight": (32, 32),
        "model.layers.0.self_attn.k_proj.weight": (16, 32),
        "model.layers.0.self_attn.v_proj.weight": (16, 32),
        "model.layers.0.self_attn.o_proj.weight": (32, 32),
        "model.layers.0.mlp.gate_proj.weight": (48, 32),
        "model.layers.0.mlp.up_proj.weight": (48, 32),
        "model.layers.0.mlp.down_proj.weight": (32, 48),
        "model.norm.weight": (32,),
    }
    planted = {"self_attn.q_proj": 3, "self_attn.v_proj": 3, "mlp.gate_proj": 3, "mlp.down_proj": 3}
    base = {k: (rng.standard_normal(s) * 0.05).astype(np.float32) for k, s in shapes.items()}
    tuned = {k: v.copy() for k, v in base.items()}
    tuned["model.embed_tokens.weight"] += (rng.standard_normal((64, 32)) * 0.01).astype(np.float32)
    tuned["model.norm.weight"] += np.float32(0.1)
    expected, factors = {"planted_rank": 3, "modules": {}}, {}
    for short, R in planted.items():
        key = f"model.layers.0.{short}.weight"
        out, inn = shapes[key]
        U = rng.standard_normal((out, R))
        V = rng.standard_normal((R, inn))
        P = (U @ V) * 0.02
        tuned[key] = (base[key].astype(np.float64) + P).astype(np.float32)
        D = tuned[key].astype(np.float64) - base[key].astype(np.float64)  # what is on disk
        u, s, vt = np.linalg.svd(D, full_matrices=False)
        mod = key[: -len(".weight")]
        e = {"planted_norm": float(np.linalg.norm(P)), "norm": float(np.linalg.norm(D))}
        for r in (2, 3):
            e[f"energy_r{r}"] = float(np.sum(s[:r] ** 2) / np.sum(s ** 2))
            e[f"sv_r{r}"] = [float(x) for x in s[:r]]
            factors[f"{mod}.r{r}.B"] = u[:, :r] * s[:r]
            factors[f"{mod}.r{r}.A"] = vt[:r].copy()
        factors[f"{mod}.planted"] = P
        expected["modules"][mod] = e
    cfg = tiny_config().to_dict()
    cfg["num_hidden_layers"] = 1
    cfg["torch_dtype"] = "float32"
    cfg["architectures"] = ["LlamaForCausalLM"]
    for name, tensors in (("base", base), ("tuned", tuned)):
        d = os.path.join(XDIR, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        np_save(tensors, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=1)
    expected["unchanged"] = ["model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.o_proj",
                             "model.layers.0.mlp.up_proj"]
    json.dump(expected, open(os.path.join(EDIR, "extract.json"), "w"), indent=1)
    np_save(factors, os.path.join(EDIR, "extract.safetensors"))


def spectrum_expected(path):
    """Singular values of each module's dense ΔW and the effective rank exp(H(σ/Σσ))."""
    out = {}
    for name, dw in deltas(path).items():
        s = np.linalg.svd(dw, compute_uv=False)
        p = s / s.sum() if s.sum() > 0 else s
        h = -np.sum(p[p > 0] * np.log(p[p > 0]))
        out[name] = {"sv": [float(x) for x in s], "effective_rank": float(np.exp(h)) if s.sum() > 0 else 0.0}
    return out


PAIRS = [("a", "b"), ("a", "a"), ("a", "neg"), ("a", "c"), ("a", "refac"), ("a", "d"),
         ("a", "zero"), ("b16", "a")]


def main():
    torch.set_default_dtype(torch.float32)
    for d in (ADIR, EDIR):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    build_adapters()
    for x, y in PAIRS:
        e = diff_expected(os.path.join(ADIR, x), os.path.join(ADIR, y))
        json.dump(e, open(os.path.join(EDIR, f"diff_{x}_{y}.json"), "w"), indent=1)
    for name in ("a", "b", "b16"):
        json.dump(spectrum_expected(os.path.join(ADIR, name)),
                  open(os.path.join(EDIR, f"spectrum_{name}.json"), "w"), indent=1)
    for case in COMBINE:
        combine_expected(*case)
    build_extract()
    json.dump({"python": sys.version.split()[0], "numpy": np.__version__, "torch": torch.__version__,
               "peft": peft.__version__, "transformers": transformers.__version__,
               "safetensors": safetensors.__version__},
              open(os.path.join(ROOT, "versions.json"), "w"), indent=1)
    print("wrote", ROOT)


if __name__ == "__main__":
    main()
