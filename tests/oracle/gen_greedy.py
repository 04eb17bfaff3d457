#!/usr/bin/env python3
"""Greedy generation by transformers (+ peft) on the tiny models of tests/fixtures/train/.

Writes tests/fixtures/gen/greedy.json:
  {"versions": {...}, "max_new_tokens": K,
   "cases": [{"model": M, "quant": "none"|"nf4", "adapter": bool,
              "prompt": [ids], "generated": [ids], "min_margin": m}, ...]}

`generated` is what model.generate(do_sample=False) appends to the prompt
(no end-of-sequence stop: the models' eos ids are cleared).  Weights are the
stored bf16 upcast to fp32 ("none"), or every decoder linear replaced by
bitsandbytes' NF4 round trip ("nf4", as train_model.py does), with the
model's PEFT adapter or without.  `min_margin` is the smallest gap between
the chosen logit and the runner-up over the steps: a prompt is kept only
when it is above 1e-3, so fp32 summation order (differences ~1e-6) cannot
flip a choice.  Prompts are long enough that mistral_window (sliding window
6) attends through its window.  Rerun:
  /opt/oracle-venv/bin/python tests/oracle/gen_greedy.py
"""
import json, os, sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_model import VERSIONS, load_fp32, nf4_roundtrip  # noqa: E402
from peft import PeftModel  # noqa: E402

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
MODELS = ["llama_tied", "llama3_untied", "qwen2", "mistral_window"]
K = 24


def greedy(model, prompt):
    x = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(x, max_new_tokens=K, do_sample=False, output_scores=True,
                             return_dict_in_generate=True, pad_token_id=0, eos_token_id=None)
    gen = out.sequences[0, len(prompt):].tolist()
    margin = min(float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in out.scores)
    return gen, margin


def main():
    g = torch.Generator().manual_seed(7)
    cases = []
    for name in MODELS:
        base = os.path.join(FIX, "train", name)
        for quant in ("none", "nf4"):
            for adapter in (False, True):
                model = load_fp32(base)
                model.generation_config.eos_token_id = None
                model.generation_config.bos_token_id = None
                if quant == "nf4":
                    nf4_roundtrip(model)
                if adapter:
                    model = PeftModel.from_pretrained(model, base + ".adapter")
                model.eval()
                vocab = model.config.vocab_size
                kept = 0
                for _ in range(40):
                    n = int(torch.randint(1, 12, (1,), generator=g))
                    prompt = torch.randint(3, vocab, (n,), generator=g).tolist()
                    gen, margin = greedy(model, prompt)
                    if margin < 1e-3:
                        continue
                    cases.append({"model": name, "quant": quant, "adapter": adapter, "prompt": prompt,
                                  "generated": gen, "min_margin": round(margin, 6)})
                    kept += 1
                    if kept == 2:
                        break
                print(name, quant, "adapter" if adapter else "base", kept, "prompts")
    os.makedirs(os.path.join(FIX, "gen"), exist_ok=True)
    with open(os.path.join(FIX, "gen", "greedy.json"), "w") as f:
        json.dump({"versions": VERSIONS, "max_new_tokens": K, "cases": cases}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
