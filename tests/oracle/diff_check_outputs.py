#!/usr/bin/env python3
"""diff_check_outputs.py - do peft and numpy agree with what `lora combine` and `lora extract` wrote?

Runs the lora binary on the fixtures of diff_oracle.py, loads every written adapter with
peft's PeftModel.from_pretrained on the same tiny model, and compares each module's ΔW
(peft's get_delta_weight, fp64) with the exact weighted sum (cat), its best rank-R
approximation (svd: the same singular values) or PEFT's own linear result, and with the
planted difference (extract).  Not part of `make check` (needs the Python packages).

  /opt/oracle-venv/bin/python tests/oracle/diff_check_outputs.py [LORA_BINARY]
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from peft import PeftModel
from safetensors.numpy import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import diff_oracle as o  # noqa: E402

LORA = sys.argv[1] if len(sys.argv) > 1 else "./lora"
TOL = 1e-4


def peft_deltas(path):
    model = PeftModel.from_pretrained(o.base_model(), path, adapter_name="x").double()
    return {n: m.get_delta_weight("x").detach().numpy() for n, m in o.lora_layers(model, "x")}


def main():
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name, names, weights, ctype, rank in o.COMBINE:
            out = os.path.join(tmp, name)
            args = [LORA, "combine"] + [f"{os.path.join(o.ADIR, n)}@{w}" for n, w in zip(names, weights)]
            args += ["--method", ctype, "-o", out] + (["--rank", str(rank)] if rank else [])
            subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
            ours = peft_deltas(out)
            meta = json.load(open(os.path.join(o.EDIR, f"combine_{name}.json")))
            ins = [o.deltas(os.path.join(o.ADIR, n)) for n in names]
            for mod, dw in ours.items():
                exact = sum(w * d[mod] for w, d in zip(weights, ins) if mod in d)
                if ctype == "cat":
                    err = np.linalg.norm(dw - exact) / np.linalg.norm(exact)
                elif ctype == "svd":
                    s = np.linalg.svd(dw, compute_uv=False)[:rank]
                    ref = np.array(meta["modules"][mod]["sv"])
                    err = np.max(np.abs(s - ref)) / ref[0]
                else:
                    ref = meta["modules"][mod]["peft_norm"]
                    err = abs(np.linalg.norm(dw) - ref) / ref
                worst = max(worst, err)
                assert err < TOL, (name, mod, err)
            print(f"combine {name}: peft loads it; {len(ours)} modules agree (worst {worst:.1e})")
        exp = json.load(open(os.path.join(o.EDIR, "extract.json")))
        fac = load_file(os.path.join(o.EDIR, "extract.safetensors"))
        out = os.path.join(tmp, "extracted")
        subprocess.run([LORA, "extract", "--base", os.path.join(o.XDIR, "base"), "--tuned",
                        os.path.join(o.XDIR, "tuned"), "--rank", "3", "-o", out], check=True,
                       stdout=subprocess.DEVNULL)
        cfg = json.load(open(os.path.join(out, "adapter_config.json")))
        cfg["base_model_name_or_path"] = None
        json.dump(cfg, open(os.path.join(out, "adapter_config.json"), "w"))
        model = PeftModel.from_pretrained(o.base_model(), out, adapter_name="x").double()
        got = {n: m.get_delta_weight("x").detach().numpy() for n, m in o.lora_layers(model, "x")}
        for mod in exp["modules"]:
            p = fac[f"{mod}.planted"]
            err = np.linalg.norm(got[mod] - p) / np.linalg.norm(p)
            assert err < TOL, (mod, err)
            worst = max(worst, err)
        print(f"extract: peft loads it; the planted rank-3 differences come back (worst {worst:.1e})")


if __name__ == "__main__":
    torch.set_default_dtype(torch.float32)
    main()
