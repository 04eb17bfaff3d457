#!/usr/bin/env python3
"""Tiny Llama-family models, PEFT adapters and what transformers + peft compute on them.

For each model M this writes into tests/fixtures/train/:
  M/                  the base model (config.json, model.safetensors in bf16), as save_pretrained writes it
  M.adapter/          a PEFT LoRA adapter saved by peft, with non-zero B
  M.expect.safetensors
      input_ids, labels (I32 [B,T]), lengths (I32 [B]): a right-padded batch, some labels -100
      none.logits  F32 [B,T,V]  logits of the bf16 weights upcast to fp32, with the adapter
      none.loss    F64 [1]      the loss transformers computes on the batch (mean over labelled tokens)
      none.grad.<module>.lora_A / lora_B   F32  d loss / d A, d B (torch autograd)
      nf4.*        the same with every decoder linear weight replaced by
                   bitsandbytes' quantize_4bit(nf4, blocksize 64, double quant) + dequantize_4bit
      long.*       (llama_tied, mistral_window) one row of 120 tokens: input_ids, labels, loss, grads
  eval.jsonl, eval.expect.json  rows for `lora eval` and the losses transformers + peft give
  eval.logits.safetensors       logits.N [len, V] of each row, base model as stored

The models are built from LlamaConfig / Qwen2Config / MistralConfig with random weights
(std 0.1 so that the logits spread), random norm weights and biases.  All
computation is fp32 on the CPU, attn_implementation="eager".  Rerun:
  /opt/oracle-venv/bin/python tests/oracle/train_model.py
"""
import copy, json, os, shutil, sys, zlib

import torch
import transformers
import peft
import bitsandbytes
import bitsandbytes.functional as BF
import safetensors
from safetensors.torch import save_file
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)
from peft import LoraConfig, PeftModel, get_peft_model

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "train")
VERSIONS = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "bitsandbytes": bitsandbytes.__version__, "safetensors": safetensors.__version__,
            "python": sys.version.split()[0]}
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

MODELS = {
    # GQA 4/2, tied embeddings, theta 10000
    "llama_tied": (LlamaForCausalLM, LlamaConfig(
        hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, tie_word_embeddings=True, rms_norm_eps=1e-5,
        max_position_embeddings=128, initializer_range=0.1),
        dict(r=4, lora_alpha=8, target_modules="all-linear")),
    # llama3 rope scaling, untied, 3 layers, head_dim 24; rsLoRA and a rank pattern
    "llama3_untied": (LlamaForCausalLM, LlamaConfig(
        hidden_size=96, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=160, tie_word_embeddings=False, rms_norm_eps=1e-6,
        max_position_embeddings=128, initializer_range=0.1,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
        dict(r=8, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
             rank_pattern={"v_proj": 4}, alpha_pattern={"o_proj": 4})),
    # Qwen2: q/k/v biases, linear rope scaling
    "qwen2": (Qwen2ForCausalLM, Qwen2Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, tie_word_embeddings=False, rms_norm_eps=1e-6,
        max_position_embeddings=128, initializer_range=0.1,
        rope_scaling={"rope_type": "linear", "factor": 2.0}),
        dict(r=4, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"])),
    # Mistral with a sliding window shorter than the batch
    "mistral_window": (MistralForCausalLM, MistralConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, tie_word_embeddings=False, rms_norm_eps=1e-5,
        max_position_embeddings=128, initializer_range=0.1, sliding_window=6),
        dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])),
}

B, T = 3, 20
LENGTHS = [20, 13, 7]


def make_batch(vocab, g):
    ids = torch.randint(3, vocab, (B, T), generator=g)
    labels = ids.clone()
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(LENGTHS):
        mask[b, :n] = 1
        ids[b, n:] = 0
        labels[b, n:] = -100
    labels[0, :5] = -100          # a masked prompt
    labels[1, 3] = -100           # a hole
    return ids, labels, mask


def build_base(name, cls, cfg):
    torch.manual_seed(zlib.crc32(name.encode()))
    model = cls(cfg).float()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif n.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(d, safe_serialization=True)
    for extra in ("generation_config.json",):
        if os.path.exists(os.path.join(d, extra)):
            os.remove(os.path.join(d, extra))
    return d


def build_adapter(name, base_dir, lcfg):
    torch.manual_seed(99)
    model = load_fp32(base_dir)
    pm = get_peft_model(model, LoraConfig(lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", **lcfg))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(0.1 * torch.randn_like(p))
    d = os.path.join(OUT, name + ".adapter")
    shutil.rmtree(d, ignore_errors=True)
    pm.save_pretrained(d, safe_serialization=True)
    if os.path.exists(os.path.join(d, "README.md")):
        os.remove(os.path.join(d, "README.md"))
    cfg_path = os.path.join(d, "adapter_config.json")
    with open(cfg_path) as f:
        c = json.load(f)
    c["base_model_name_or_path"] = name      # not this machine's path
    if isinstance(c.get("target_modules"), list):
        c["target_modules"] = sorted(c["target_modules"])   # peft keeps a set: stable order
    with open(cfg_path, "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
    return d


def load_fp32(base_dir):
    m = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32,
                                                          attn_implementation="eager")
    m.eval()
    return m


def nf4_roundtrip(model):
    """Replace each decoder linear weight by its bitsandbytes NF4 round trip (flat, fp32)."""
    with torch.no_grad():
        for n, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and ".layers." in n and "lora_" not in n:
                w = mod.weight.data.to(torch.bfloat16)      # as stored on disk
                q, st = BF.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
                st = copy.deepcopy(st)
                st.shape = torch.Size([w.numel()])         # see train_nf4.py: flat dequant
                st.dtype = torch.float32
                mod.weight.data.copy_(BF.dequantize_4bit(q, st).reshape(w.shape))


def run(base_dir, adapter_dir, ids, labels, mask, quant):
    model = load_fp32(base_dir)
    if quant == "nf4":
        nf4_roundtrip(model)
    pm = PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
    pm.train()  # dropout is 0: train mode only enables grads
    out = pm(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    grads = {}
    for n, p in pm.named_parameters():
        if "lora_" in n:
            key = n.replace("base_model.model.", "", 1).replace(".default", "")
            grads[key] = p.grad.detach().clone()
    return out.logits.detach().float(), out.loss.detach().double(), grads


def eval_rows(vocab, g):
    rows = []
    for n in (9, 16, 4, 12):
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        rows.append({"input_ids": ids})
    rows[1]["labels"] = [-100] * 6 + rows[1]["input_ids"][6:]
    rows[3]["labels"] = list(rows[3]["input_ids"])
    rows[3]["labels"][5] = -100
    return rows


def eval_logits(base_dir, rows):
    """Per-row fp32 logits of the base (no adapter, weights as stored), as `--dump-logits` writes them."""
    model = load_fp32(base_dir)
    out = {}
    with torch.no_grad():
        for i, r in enumerate(rows):
            out[f"logits.{i}"] = model(input_ids=torch.tensor([r["input_ids"]])).logits[0].float().contiguous()
    return out


def eval_loss(base_dir, adapter_dir, rows, quant):
    model = load_fp32(base_dir)
    if quant == "nf4":
        nf4_roundtrip(model)
    if adapter_dir:
        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for r in rows:
            ids = torch.tensor([r["input_ids"]])
            lab = torch.tensor([r.get("labels", r["input_ids"])])
            logits = model(input_ids=ids).logits[0, :-1].double()
            tgt = lab[0, 1:]
            keep = tgt != -100
            total += torch.nn.functional.cross_entropy(logits[keep], tgt[keep], reduction="sum").item()
            count += int(keep.sum())
    return total / count, count


def main():
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(5)
    for name, (cls, cfg, lcfg) in MODELS.items():
        base = build_base(name, cls, cfg)
        adapter = build_adapter(name, base, lcfg)
        ids, labels, mask = make_batch(cfg.vocab_size, g)
        t = {"input_ids": ids.to(torch.int32), "labels": labels.to(torch.int32),
             "lengths": torch.tensor(LENGTHS, dtype=torch.int32)}
        for quant in ("none", "nf4"):
            logits, loss, grads = run(base, adapter, ids, labels, mask, quant)
            t[f"{quant}.logits"] = logits.contiguous()
            t[f"{quant}.loss"] = loss.reshape(1)
            for k, v in grads.items():
                t[f"{quant}.grad.{k}"] = v.contiguous()
        if name in ("llama_tied", "mistral_window"):
            # one long row (120 > the CPU attention's 64-query blocks), loss and grads only
            lids = torch.randint(3, cfg.vocab_size, (1, 120), generator=g)
            llab = lids.clone()
            llab[0, :10] = -100
            _, loss, grads = run(base, adapter, lids, llab, torch.ones_like(lids), "none")
            t["long.input_ids"] = lids.to(torch.int32)
            t["long.labels"] = llab.to(torch.int32)
            t["long.loss"] = loss.reshape(1)
            for k, v in grads.items():
                t[f"long.grad.{k}"] = v.contiguous()
        save_file(t, os.path.join(OUT, f"{name}.expect.safetensors"),
                  metadata={"versions": json.dumps(VERSIONS), "generator": "tests/oracle/train_model.py"})
        print(name, "loss none", float(t["none.loss"]), "nf4", float(t["nf4.loss"]))

    # lora eval: rows of a jsonl file, with and without the adapter, both quantizations
    name = "llama_tied"
    rows = eval_rows(MODELS[name][1].vocab_size, g)
    with open(os.path.join(OUT, "eval.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    expect = {"versions": VERSIONS, "model": name}
    for quant in ("none", "nf4"):
        for with_adapter in (False, True):
            loss, count = eval_loss(os.path.join(OUT, name),
                                    os.path.join(OUT, name + ".adapter") if with_adapter else None, rows, quant)
            expect[f"{quant}.{'adapter' if with_adapter else 'base'}"] = {"loss": loss, "tokens": count}
    save_file(eval_logits(os.path.join(OUT, name), rows), os.path.join(OUT, "eval.logits.safetensors"),
              metadata={"versions": json.dumps(VERSIONS), "generator": "tests/oracle/train_model.py"})
    with open(os.path.join(OUT, "eval.expect.json"), "w") as f:
        json.dump(expect, f, indent=1, sort_keys=True)
        f.write("\n")
    print("eval", expect)


if __name__ == "__main__":
    main()
