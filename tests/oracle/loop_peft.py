#!/usr/bin/env python3
"""loop_peft.py - the same LoRA training run done by transformers' Trainer + peft.

Writes into tests/fixtures/loop/:
  peft_train.jsonl   24 pre-tokenized rows for tests/fixtures/train/llama_tied (vocab 128),
                     some with a prompt part labelled -100
  peft_curve.json    the run's settings, and per optimizer step the loss, learning rate and
                     gradient norm (before clipping) that the Trainer reports, plus the
                     Frobenius norm of every lora_A / lora_B after the last step;
                     under "nf4" the same run on NF4 frozen weights (lora train --quant nf4):
                     each decoder linear weight replaced by bitsandbytes' quantize_4bit (nf4,
                     blocksize 64, double quantization) + dequantize_4bit round trip, which is
                     what a QLoRA forward multiplies by; and the versions of the packages used.

The run is `lora train` with the settings in RUN (tests/sh/train_loop_peft.sh passes the same):
  * initial weights: lora_A as lora.h initializes it (its counter-based generator is re-implemented
    below from the documented recipe), lora_B zero - loaded into peft's modules;
  * data order: data.h's documented per-epoch shuffle and packing (re-implemented below): rows laid
    end to end in the epoch's order, cut into sequences of seq_len, B sequences a micro-batch, G
    micro-batches a step; the Trainer gets those sequences in that order (sequential sampler);
  * Trainer: adamw_torch, cosine schedule with warmup ceil(0.03.. here 0.1 * steps) steps, gradient
    clipping, weight decay, gradient accumulation with the loss normalized by the number of labelled
    (shifted) tokens of the whole step (transformers' num_items_in_batch);
  * everything fp32 on the CPU, frozen weights the bf16 checkpoint upcast (lora train --quant none),
    dropout 0 (peft's dropout draws from torch's generator, ours from lora.h's: they cannot agree).

Rerun: /opt/oracle-venv/bin/python tests/oracle/loop_peft.py
"""
import copy, json, math, os, random, sys, tempfile

import torch
import transformers
import peft
import bitsandbytes
import bitsandbytes.functional as BF
from transformers import LlamaForCausalLM, Trainer, TrainingArguments
from peft import LoraConfig, get_peft_model

HERE = os.path.dirname(os.path.abspath(__file__))
BASE = os.path.join(HERE, "..", "fixtures", "train", "llama_tied")
OUT = os.path.join(HERE, "..", "fixtures", "loop")

RUN = dict(rank=8, alpha=16, dropout=0.0, targets="all-linear", quant="none", lr=1e-2,
           schedule="cosine", warmup=0.1, steps=20, batch=2, grad_accum=2, seq_len=32,
           max_grad_norm=0.3, weight_decay=0.01, seed=1234)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
M64 = (1 << 64) - 1

# ---------------------------------------------------------------- lora.h's generator


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def rand64(key, counter):
    return mix64((mix64(key) + (counter + 1) * 0x9E3779B97F4A7C15) & M64)


def module_key(seed, purpose, step, layer, t):
    k = mix64(seed ^ 0x6C6F7261)
    k = mix64((k + purpose) & M64)
    k = mix64((k + step) & M64)
    return mix64((k + layer * 7 + t) & M64)


def init_A(r, fan_in, seed, layer, t):
    """U(-1/sqrt(in), 1/sqrt(in)) from the counter-based stream (lora.h), rounded to fp32."""
    key = module_key(seed, 1, 0, layer, t)
    bound = 1.0 / math.sqrt(fan_in)
    vals = [(2.0 * ((rand64(key, i) >> 11) * 2.0 ** -53) - 1.0) * bound for i in range(r * fan_in)]
    return torch.tensor(vals, dtype=torch.float64).to(torch.float32).reshape(r, fan_in)

# ---------------------------------------------------------------- data.h's order and packing


# data.h's documented shuffle, as tok_data_order.py reads it
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tok_data_order import order  # noqa: E402


def packed_sequences(rows, seed, T, count):
    """The first `count` sequences of T tokens: rows end to end, a new order each epoch."""
    ids, labels, epoch = [], [], 0
    while len(ids) < count * T:
        for r in order(len(rows), seed, epoch):
            ids += rows[r][0]
            labels += rows[r][1]
        epoch += 1
    return [(ids[k * T:(k + 1) * T], labels[k * T:(k + 1) * T]) for k in range(count)]


def make_rows():
    g = random.Random(20240607)
    rows = []
    for i in range(24):
        n = g.randrange(6, 41)
        # a learnable pattern with noise: mostly "next id = id + step (mod 125)"
        step, a = g.choice([1, 2, 3]), g.randrange(3, 128)
        ids = []
        for k in range(n):
            ids.append(a if g.random() > 0.15 else g.randrange(3, 128))
            a = 3 + (a - 3 + step) % 125
        if i % 3 == 0:   # a prompt part that carries no loss
            p = g.randrange(1, n // 2 + 1)
            labels = [-100] * p + ids[p:]
        else:
            labels = None
        rows.append((ids, labels))
    return rows

# ---------------------------------------------------------------- the run


class Seqs(torch.utils.data.Dataset):
    def __init__(self, seqs):
        self.seqs = seqs

    def __len__(self):
        return len(self.seqs)

    def __getitem__(self, i):
        ids, lab = self.seqs[i]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(lab)}


class Record(transformers.TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self.logs.append(dict(logs, step=state.global_step))


class CountingTrainer(Trainer):
    """Keeps every micro-batch's loss contribution unrounded (the logged loss is rounded)."""
    micro = []

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.micro.append(float(loss))
        return loss


def nf4_roundtrip(model):
    """Each decoder linear weight replaced by its bitsandbytes NF4 round trip (flat, fp32)."""
    with torch.no_grad():
        for n, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and ".layers." in n and "lora_" not in n:
                w = mod.weight.data.to(torch.bfloat16)      # as stored on disk
                q, st = BF.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
                st = copy.deepcopy(st)
                st.shape = torch.Size([w.numel()])         # blocks run over the flat tensor
                st.dtype = torch.float32
                mod.weight.data.copy_(BF.dequantize_4bit(q, st).reshape(w.shape))


def train(seqs, quant, base=BASE, targets=None):
    """The run on base (a model folder; families.py passes its own), frozen weights as quant says.
    targets: (lora.h target index, "self_attn"/"mlp", module name) of each LoRA'd linear; default
    the seven of a Llama block (Phi-3's fused qkv_proj is index 0, gate_up_proj index 4)."""
    targets = targets or [(t, "self_attn" if t <= 3 else "mlp", n) for t, n in enumerate(TARGETS)]
    R = RUN
    CountingTrainer.micro = []
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32,
                                                              attn_implementation="eager")
    if quant == "nf4":
        nf4_roundtrip(model)
    cfg = LoraConfig(r=R["rank"], lora_alpha=R["alpha"], lora_dropout=R["dropout"],
                     target_modules=[n for _, _, n in targets], bias="none", task_type="CAUSAL_LM")
    pm = get_peft_model(model, cfg)
    with torch.no_grad():
        for layer in range(model.config.num_hidden_layers):
            for t, part, name in targets:
                mod = getattr(getattr(pm.base_model.model.model.layers[layer], part), name)
                A, B = mod.lora_A["default"].weight, mod.lora_B["default"].weight
                A.copy_(init_A(A.shape[0], A.shape[1], R["seed"], layer, t))
                B.zero_()
    warmup = math.ceil(R["warmup"] * R["steps"]) if R["warmup"] < 1 else int(R["warmup"])
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=R["batch"],
            gradient_accumulation_steps=R["grad_accum"], max_steps=R["steps"], learning_rate=R["lr"],
            lr_scheduler_type=R["schedule"], warmup_steps=warmup, max_grad_norm=R["max_grad_norm"],
            weight_decay=R["weight_decay"], optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.999,
            adam_epsilon=1e-8, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
            seed=R["seed"] % (2 ** 31), train_sampling_strategy="sequential", dataloader_drop_last=False,
            remove_unused_columns=False, bf16=False, fp16=False, disable_tqdm=True)
        rec = Record()
        tr = CountingTrainer(model=pm, args=args, train_dataset=Seqs(seqs), callbacks=[rec])
        tr.train()
    G = R["grad_accum"]
    assert len(CountingTrainer.micro) == R["steps"] * G, len(CountingTrainer.micro)
    losses = [sum(CountingTrainer.micro[k * G:(k + 1) * G]) for k in range(R["steps"])]
    by_step = {l["step"]: l for l in rec.logs}
    # the learning rate a step used: what the scheduler gave before that step's update
    sched = transformers.get_cosine_schedule_with_warmup(
        torch.optim.SGD([torch.zeros(1)], lr=R["lr"]), warmup, R["steps"])
    lrs = []
    for s in range(R["steps"]):
        lrs.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    norms = {}
    for name, p in pm.named_parameters():
        if p.requires_grad:
            key = name.replace("base_model.model.", "").replace(".default", "")
            norms[key] = float(p.detach().double().norm())
    steps = [{"step": s + 1, "loss": losses[s], "lr": lrs[s], "logged_loss": by_step[s + 1]["loss"],
              "grad_norm": float(by_step[s + 1]["grad_norm"])} for s in range(R["steps"])]
    return warmup, steps, norms


def main():
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    rows = make_rows()
    with open(os.path.join(OUT, "peft_train.jsonl"), "w") as f:
        for ids, labels in rows:
            o = {"input_ids": ids}
            if labels is not None:
                o["labels"] = labels
            f.write(json.dumps(o) + "\n")
    rows = [(ids, labels if labels is not None else list(ids)) for ids, labels in rows]
    R = RUN
    n_seq = R["steps"] * R["grad_accum"] * R["batch"]
    seqs = packed_sequences(rows, R["seed"], R["seq_len"], n_seq)
    warmup, steps, norms = train(seqs, "none")
    _, steps4, norms4 = train(seqs, "nf4")
    out = {
        "run": RUN, "warmup_steps": warmup, "base": "tests/fixtures/train/llama_tied",
        "data": "tests/fixtures/loop/peft_train.jsonl",
        "steps": steps, "final_param_norms": norms,
        "nf4": {"steps": steps4, "final_param_norms": norms4},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "bitsandbytes": bitsandbytes.__version__,
                     "python": sys.version.split()[0]},
    }
    with open(os.path.join(OUT, "peft_curve.json"), "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")
    for a, b in zip(steps, steps4):
        print("%2d none %.6f nf4 %.6f lr %.6g grad norm %.4f %.4f" % (a["step"], a["loss"], b["loss"], a["lr"],
                                                                    a["grad_norm"], b["grad_norm"]))


if __name__ == "__main__":
    main()
