#!/opt/oracle-venv/bin/python
"""store_roundtrip.py - a PEFT adapter written by peft, for the store round trip.

Writes tests/fixtures/store/roundtrip/:
  adapter/                 what peft's save_pretrained wrote (adapter_config.json,
                           adapter_model.safetensors) for a tiny LlamaForCausalLM
                           (hidden 32, 2 layers, vocab 64, seed 1234) wrapped with
                           LoraConfig(r=4, lora_alpha=8, q/v/o_proj,
                           init_lora_weights=False), so lora_B != 0 and ΔW != 0
  expected.json            input ids, the logits of the live peft model on them,
                           the sha256 of the saved files, and package versions

tests/sh/store_roundtrip.sh imports adapter/ into a store, exports it again
(`lora export --format peft`) and checks that adapter_model.safetensors is
byte-identical.  The second half of the acceptance check needs peft itself:

  /opt/oracle-venv/bin/python tests/oracle/store_roundtrip.py --check EXPORTED_DIR

rebuilds the same base model from the seed, loads EXPORTED_DIR with
PeftModel.from_pretrained and requires logits identical (torch.equal, no
tolerance: same weights, same code, same inputs on CPU) to expected.json.

Run (regenerate): /opt/oracle-venv/bin/python tests/oracle/store_roundtrip.py
"""
import hashlib
import json
import os
import shutil
import sys

import peft
import safetensors
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "store", "roundtrip")
SEED = 1234
BASE_NAME = "oracle/tiny-llama-store"
INPUT_IDS = [[1, 5, 9, 33, 2, 60, 17, 8]]


def versions():
    return {"python": sys.version.split()[0], "torch": torch.__version__, "peft": peft.__version__,
            "transformers": transformers.__version__, "safetensors": safetensors.__version__}


def base_model():
    torch.manual_seed(SEED)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=64, max_position_embeddings=64)
    m = LlamaForCausalLM(cfg)
    m.config._name_or_path = BASE_NAME
    m.name_or_path = BASE_NAME
    m.eval()
    return m


def logits(model):
    with torch.no_grad():
        return model(torch.tensor(INPUT_IDS)).logits.float()


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def generate():
    base = base_model()
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], lora_dropout=0.0,
                     init_lora_weights=False)
    torch.manual_seed(SEED + 1)
    pm = get_peft_model(base, cfg)
    pm.eval()
    nonzero = [n for n, p in pm.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert nonzero, "lora_B must be non-zero"
    out = logits(pm)
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    ad = os.path.join(OUT, "adapter")
    pm.save_pretrained(ad)
    exp = {
        "input_ids": INPUT_IDS,
        "logits": out.tolist(),
        "files": {f: sha256(os.path.join(ad, f)) for f in sorted(os.listdir(ad))},
        "versions": versions(),
    }
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(exp, f)
        f.write("\n")
    print("wrote", OUT, "files:", sorted(os.listdir(ad)))


def check(folder):
    with open(os.path.join(OUT, "expected.json")) as f:
        exp = json.load(f)
    for name, digest in exp["files"].items():
        got = sha256(os.path.join(folder, name))
        print(f"{name}: sha256 {'identical' if got == digest else 'DIFFERENT'}")
        if got != digest:
            return 1
    pm = PeftModel.from_pretrained(base_model(), folder)
    pm.eval()
    out = logits(pm)
    want = torch.tensor(exp["logits"], dtype=torch.float32)
    same = torch.equal(out, want)
    print(f"peft loads {folder}: logits {'identical' if same else 'DIFFERENT'} "
          f"(max |diff| {float((out - want).abs().max()):.3g}, shape {tuple(out.shape)})")
    # the adapter must matter: without it the logits differ
    plain = logits(base_model())
    print(f"adapter changes the logits: max |diff| vs base {float((plain - want).abs().max()):.3g}")
    return 0 if same and not torch.equal(plain, want) else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        sys.exit(check(sys.argv[2]))
    generate()
