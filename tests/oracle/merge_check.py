#!/opt/oracle-venv/bin/python
"""merge_check.py - what `make check` cannot do without Python: load folders that
`lora merge` and `lora swap` wrote with transformers and safetensors.

For every case of tests/fixtures/merge/cases.json, runs `$LORA merge` (default
./build/lora), then
  - safetensors.safe_open reads every shard (our headers end in padding spaces)
    and its __metadata__ holds "format": "pt" and the lora.merge record;
  - transformers.LlamaForCausalLM.from_pretrained loads the folder;
  - fp32 cases: its logits on the fixture's input_ids equal those of peft's
    merged model (written by merge_oracle.py) within 1e-5 (both are fp32
    forwards of weights that differ by at most one fp32 rounding, on 2 layers:
    differences are of order 1e-7);
  - bf16 cases: the loaded weights equal the file's.
Then swaps a merged bf16 folder to another set and loads it again.

Usage: LORA=build-merge/lora /opt/oracle-venv/bin/python tests/oracle/merge_check.py
Prints one line per check and exits non-zero on any failure.
"""
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures", "merge")
LORA = os.environ.get("LORA", os.path.join(HERE, "..", "..", "build", "lora"))
failed = 0


def check(ok, what):
    global failed
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failed += 1


def lora(*args):
    r = subprocess.run([LORA, *args], capture_output=True, text=True)
    if r.returncode:
        print(r.stderr, file=sys.stderr)
    return r.returncode


def check_folder(d, name):
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(d, f), "pt") as s:
                meta = s.metadata()
                check(meta.get("format") == "pt" and "lora.merge" in meta,
                      "%s: %s has format=pt and lora.merge in __metadata__" % (name, f))
    m = LlamaForCausalLM.from_pretrained(d, torch_dtype="auto")
    sd = m.state_dict()
    ours = {}
    for f in os.listdir(d):
        if f.endswith(".safetensors"):
            ours.update(load_file(os.path.join(d, f)))
    same = all(torch.equal(sd[k], v) for k, v in ours.items() if k in sd)
    check(same, "%s: transformers loads it with the file's weights" % name)
    return m


def main():
    cases = json.load(open(os.path.join(FIX, "cases.json")))["cases"]
    with tempfile.TemporaryDirectory() as tmp:
        for c in cases:
            out = os.path.join(tmp, c["name"])
            args = ["merge", "--base", os.path.join(FIX, c["base"])]
            args += ["%s@%r" % (os.path.join(FIX, a["path"]), a["weight"]) for a in c["adapters"]]
            check(lora(*args, "-o", out) == 0, "%s: lora merge" % c["name"])
            m = check_folder(out, c["name"])
            exp = load_file(os.path.join(FIX, "expect", c["name"] + ".safetensors"))
            if "logits" in exp:
                with torch.no_grad():
                    lg = m(exp["input_ids"][None]).logits[0].float()
                d = (lg - exp["logits"]).abs().max().item()
                check(d <= 1e-5, "%s: logits vs peft merged model, max |diff| = %.3g" % (c["name"], d))
        # A swap keeps the folder loadable, with the new weights.
        out = os.path.join(tmp, "bf16_plain")
        check(lora("swap", out, os.path.join(FIX, "ad_plain") + "@0.7",
                   os.path.join(FIX, "ad_pattern") + "@0.3") == 0, "swap bf16_plain -> two")
        m = check_folder(out, "swapped")
        ref = LlamaForCausalLM.from_pretrained(os.path.join(tmp, "bf16_two"), torch_dtype="auto")
        same = all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), ref.state_dict().values()))
        check(same, "swapped folder loads with the weights of a fresh merge of the new set")
    print("%d failed" % failed)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
