#!/usr/bin/env python3
"""families.py - tiny random-initialised models of the families beyond Llama/Mistral/Qwen2, and
what transformers + peft compute on them.  The same machinery as train_model.py (models, batch,
adapters, NF4 round trip), gen_greedy.py (greedy generation), loop_peft.py (20 Trainer steps) and
merge_oracle.py (fp64 merge reference), pointed at tests/fixtures/families/.

For each model M (see MODELS) this writes into tests/fixtures/families/:
  M/, M.adapter/, M.expect.safetensors   as train_model.py writes them for tests/fixtures/train
                                         (none.* and nf4.* logits, loss, LoRA grads; long.* one
                                         row of 120 tokens)
  M.curve.json        loop_peft.py's run (its RUN settings, data tests/fixtures/loop/peft_train.jsonl)
                      on M with frozen weights as stored: per step loss, lr, grad norm; final norms
  greedy.json         gen_greedy.py's cases for every M ("model": "families/M")
  merge_cases.json, merge_expect/<case>.safetensors
                      merge_oracle.py's cases: M's adapter merged into M (bf16): "ref.<tensor>" the
                      fp64 result rounded once, "peft.<tensor>" peft's fp32 merge rounded to bf16
  (MERGE_ONLY: models for a merge case only; none at present)
  eval.expect.json    for each M: what train_model.py's eval_loss gives on tests/fixtures/train/eval.jsonl
                      ("none"/"nf4" x "base"/"adapter": token-weighted mean loss and token count)
  versions.json       package versions

Rerun (bitsandbytes for the NF4 round trip, e.g. pip install --target DIR bitsandbytes):
  PYTHONPATH=DIR /work/venv/bin/python tests/oracle/families.py
"""
import json, os, shutil, sys

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from transformers import (Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, Phi3Config,
                          Phi3ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train_model as TM  # noqa: E402
import gen_greedy as GG  # noqa: E402
import loop_peft as LP  # noqa: E402
import merge_oracle as MO  # noqa: E402

OUT = os.path.join(HERE, "..", "fixtures", "families")
TM.OUT = OUT   # build_base / build_adapter write here

MODELS = {
    # Qwen3: q/k RMSNorm per head before RoPE, head_dim 24 != hidden/heads, no biases; the second
    # layer slides (use_sliding_window, max_window_layers 1, window 6 < the batch's 20 positions)
    "qwen3": (Qwen3ForCausalLM, Qwen3Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=24, vocab_size=128, tie_word_embeddings=False,
        rms_norm_eps=1e-6, max_position_embeddings=128, initializer_range=0.1,
        use_sliding_window=True, sliding_window=6, max_window_layers=1),
        dict(r=4, lora_alpha=8, target_modules="all-linear")),
    # Llama 3.2: tied embeddings and llama3 rope scaling together
    "llama32_tied": (LlamaForCausalLM, LlamaConfig(
        hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, tie_word_embeddings=True, rms_norm_eps=1e-5,
        max_position_embeddings=128, initializer_range=0.1, head_dim=16,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
        dict(r=4, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"])),
    # Phi-3: fused qkv_proj and gate_up_proj, the LoRA targets as they are
    "phi3": (Phi3ForCausalLM, Phi3Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, tie_word_embeddings=False, rms_norm_eps=1e-5,
        max_position_embeddings=128, initializer_range=0.1, pad_token_id=0, bos_token_id=1,
        eos_token_id=2),
        dict(r=4, lora_alpha=8, target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"])),
    # Gemma 2: embeddings times sqrt(64), (1 + w) norms, post-attention / pre- and post-feed-forward
    # norms, GELU-tanh gate, attention and final soft-capping small enough to bite, a scaling of
    # query_pre_attn_scalar 24 != head_dim 16, sliding (window 6) then full layers, tied embeddings
    "gemma2": (Gemma2ForCausalLM, Gemma2Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=128, tie_word_embeddings=True, rms_norm_eps=1e-6,
        max_position_embeddings=128, initializer_range=0.1, query_pre_attn_scalar=24,
        attn_logit_softcapping=2.0, final_logit_softcapping=3.0, sliding_window=6,
        layer_types=["sliding_attention", "full_attention"], pad_token_id=0, eos_token_id=1,
        bos_token_id=2),
        dict(r=4, lora_alpha=8, target_modules="all-linear")),
    # Gemma 3 (text): Gemma 2's layout without soft-capping, (1 + w) q/k norms per head, and two
    # RoPE bases: 10000 on the sliding layers, 1e6 with linear scaling 8 on the full ones
    "gemma3": (Gemma3ForCausalLM, Gemma3TextConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=128, tie_word_embeddings=True, rms_norm_eps=1e-6,
        max_position_embeddings=128, initializer_range=0.1, query_pre_attn_scalar=24, sliding_window=6,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}},
        pad_token_id=0, eos_token_id=1, bos_token_id=2),
        dict(r=4, lora_alpha=8, target_modules="all-linear")),
}

MERGE_ONLY = {}
# LoRA'd linears of a family, as loop_peft.train takes them (None: the seven of a Llama block)
FUSED = [(0, "self_attn", "qkv_proj"), (3, "self_attn", "o_proj"), (4, "mlp", "gate_up_proj"),
         (6, "mlp", "down_proj")]
TARGETS = {"phi3": FUSED}


def expect(name, cls, cfg, lcfg, g):
    base = TM.build_base(name, cls, cfg)
    adapter = TM.build_adapter(name, base, lcfg)
    ids, labels, mask = TM.make_batch(cfg.vocab_size, g)
    t = {"input_ids": ids.to(torch.int32), "labels": labels.to(torch.int32),
         "lengths": torch.tensor(TM.LENGTHS, dtype=torch.int32)}
    for quant in ("none", "nf4"):
        logits, loss, grads = TM.run(base, adapter, ids, labels, mask, quant)
        t[f"{quant}.logits"] = logits.contiguous()
        t[f"{quant}.loss"] = loss.reshape(1)
        for k, v in grads.items():
            t[f"{quant}.grad.{k}"] = v.contiguous()
    lids = torch.randint(3, cfg.vocab_size, (1, 120), generator=g)
    llab = lids.clone()
    llab[0, :10] = -100
    _, loss, grads = TM.run(base, adapter, lids, llab, torch.ones_like(lids), "none")
    t["long.input_ids"] = lids.to(torch.int32)
    t["long.labels"] = llab.to(torch.int32)
    t["long.loss"] = loss.reshape(1)
    for k, v in grads.items():
        t[f"long.grad.{k}"] = v.contiguous()
    save_file(t, os.path.join(OUT, f"{name}.expect.safetensors"),
              metadata={"versions": json.dumps(TM.VERSIONS), "generator": "tests/oracle/families.py"})
    print(name, "loss none", float(t["none.loss"]), "nf4", float(t["nf4.loss"]))
    return base, adapter


def greedy_cases(name, base, g):
    cases = []
    for quant in ("none", "nf4"):
        for adapter in (False, True):
            model = TM.load_fp32(base)
            model.generation_config.eos_token_id = None
            model.generation_config.bos_token_id = None
            if quant == "nf4":
                TM.nf4_roundtrip(model)
            if adapter:
                model = TM.PeftModel.from_pretrained(model, base + ".adapter")
            model.eval()
            kept = 0
            for _ in range(40):
                n = int(torch.randint(1, 12, (1,), generator=g))
                prompt = torch.randint(3, model.config.vocab_size, (n,), generator=g).tolist()
                gen, margin = GG.greedy(model, prompt)
                if margin < 1e-3:
                    continue
                cases.append({"model": "families/" + name, "quant": quant, "adapter": adapter,
                              "prompt": prompt, "generated": gen, "min_margin": round(margin, 6)})
                kept += 1
                if kept == 2:
                    break
            print(name, "greedy", quant, "adapter" if adapter else "base", kept, "prompts")
    return cases


def curve(name, base):
    rows = LP.make_rows()
    rows = [(ids, labels if labels is not None else list(ids)) for ids, labels in rows]
    R = LP.RUN
    seqs = LP.packed_sequences(rows, R["seed"], R["seq_len"], R["steps"] * R["grad_accum"] * R["batch"])
    warmup, steps, norms = LP.train(seqs, "none", base, TARGETS.get(name))
    out = {"run": R, "warmup_steps": warmup, "base": "tests/fixtures/families/" + name,
           "data": "tests/fixtures/loop/peft_train.jsonl", "steps": steps, "final_param_norms": norms}
    with open(os.path.join(OUT, name + ".curve.json"), "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")
    print(name, "curve", steps[0]["loss"], "->", steps[-1]["loss"])


def merge_case(name, base, adapter):
    """merge_oracle.py's bf16 expectations for adapter merged at weight 1 into base."""
    W = MO.load_base(base)
    out = {}
    delta = {}
    for mod, (A, B, s) in MO.load_adapter(adapter).items():
        delta[mod + ".weight"] = s * (B @ A)
    for tn, dW in sorted(delta.items()):
        exact = W[tn].to(torch.float64).numpy() + dW
        out["ref." + tn] = torch.from_numpy(MO.round_f64_to_bf16(exact).view(np.int16)).view(torch.bfloat16)
    sd = MO.peft_merged(base, [(adapter, 1.0)], torch.float32).state_dict()
    for tn in delta:
        out["peft." + tn] = sd[tn].to(torch.bfloat16).contiguous()
    os.makedirs(os.path.join(OUT, "merge_expect"), exist_ok=True)
    save_file(out, os.path.join(OUT, "merge_expect", name + ".safetensors"),
              metadata={"oracle": "tests/oracle/families.py"})
    return {"name": name, "base": name, "dtype": "auto", "adapters": [{"path": name + ".adapter", "weight": 1.0}]}


def eval_expect():
    with open(os.path.join(HERE, "..", "fixtures", "train", "eval.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    out = {"versions": TM.VERSIONS, "data": "tests/fixtures/train/eval.jsonl"}
    for name in MODELS:
        base = os.path.join(OUT, name)
        e = {}
        for quant in ("none", "nf4"):
            for with_adapter in (False, True):
                loss, count = TM.eval_loss(base, base + ".adapter" if with_adapter else None, rows, quant)
                e[f"{quant}.{'adapter' if with_adapter else 'base'}"] = {"loss": loss, "tokens": count}
        out[name] = e
        print(name, "eval", e)
    with open(os.path.join(OUT, "eval.expect.json"), "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")


def main():
    only = sys.argv[1:]
    if only == ["eval"]:   # only eval.expect.json, from the model folders already written
        eval_expect()
        return
    os.makedirs(OUT, exist_ok=True)
    greedy, merges = [], []
    gpath, mpath = os.path.join(OUT, "greedy.json"), os.path.join(OUT, "merge_cases.json")
    if only:   # regenerate some models, keep the others' cases
        greedy = [c for c in json.load(open(gpath))["cases"] if c["model"][len("families/"):] not in only]
        merges = [c for c in json.load(open(mpath))["cases"] if c["name"] not in only]
    for name, (cls, cfg, lcfg) in MODELS.items():
        if only and name not in only:
            continue
        g = torch.Generator().manual_seed(zlib_seed(name))
        base, adapter = expect(name, cls, cfg, lcfg, g)
        greedy += greedy_cases(name, base, g)
        curve(name, base)
        merges.append(merge_case(name, base, adapter))
    for name, (cls, cfg, lcfg) in MERGE_ONLY.items():
        if only and name not in only:
            continue
        base = TM.build_base(name, cls, cfg)
        merges.append(merge_case(name, base, TM.build_adapter(name, base, lcfg)))
    with open(gpath, "w") as f:
        json.dump({"versions": TM.VERSIONS, "max_new_tokens": GG.K, "cases": greedy}, f, indent=1)
        f.write("\n")
    with open(mpath, "w") as f:
        json.dump({"cases": merges}, f, indent=2)
        f.write("\n")
    eval_expect()
    with open(os.path.join(OUT, "versions.json"), "w") as f:
        json.dump(TM.VERSIONS, f, indent=1, sort_keys=True)
        f.write("\n")


def zlib_seed(name):
    import zlib
    return zlib.crc32(name.encode()) + 17


if __name__ == "__main__":
    main()
