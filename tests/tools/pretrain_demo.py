"""pretrain_demo.py - build the demo's small pretrained model and its task data.

    /opt/oracle-venv/bin/python tests/tools/pretrain_demo.py [--steps N] [--out tests/demo]

Writes, deterministically for a given seed and package versions:
  tests/demo/story-llama/   config.json, tokenizer.json, tokenizer_config.json,
                      model.safetensors (bf16), generation_config.json, versions.json
  tests/demo/data/    task1.jsonl, task1.eval.jsonl (pirate style),
                      task2.jsonl, task2.eval.jsonl (JSON format),
                      task1.eval.tokens.jsonl, task2.eval.tokens.jsonl (for `lora eval`)

The model is a Llama (LlamaForCausalLM: RMSNorm, RoPE, grouped-query attention,
SwiGLU, tied embeddings) of about one million parameters with a byte-level
BPE tokenizer of 1024 tokens, both trained here on the built-in English of
tests/tools/demo_corpus.py (simple stories and JSON records).  Nothing is downloaded.  It is
run once by a developer; `make demo` only uses what it wrote (no Python).
"""

import argparse
import json
import math
import os
import random
import sys
import time

import torch
import tokenizers
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_corpus  # noqa: E402

SEED = 1234
EOS = "<|endoftext|>"
SEQ = 128


def build_tokenizer(texts, vocab_size):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tr = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, tr)
    return tok


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def token_rows(tok, rows, eos_id):
    """{"input_ids", "labels"} as lora's data loader makes them from prompt/completion rows:
    the tokens of prompt + completion, then EOS; a token has a label when the byte where
    it begins lies in the completion (and EOS has one)."""
    out = []
    for r in rows:
        text = r["prompt"] + r["completion"]
        enc = tok.encode(text)
        ids = list(enc.ids) + [eos_id]
        start = len(r["prompt"].encode())
        # offsets are in characters; the texts are ASCII, so characters are bytes
        labels = [i if off[0] >= start else -100 for i, off in zip(enc.ids, enc.offsets)] + [eos_id]
        out.append({"input_ids": ids, "labels": labels})
    return out


def batches(ids, batch, steps, g):
    """Random windows of SEQ+1 tokens from the packed corpus."""
    n = len(ids) - SEQ - 1
    data = torch.tensor(ids, dtype=torch.long)
    for _ in range(steps):
        starts = torch.randint(0, n, (batch,), generator=g)
        yield torch.stack([data[s:s + SEQ + 1] for s in starts.tolist()])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "demo"))
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--stories", type=int, default=40000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fixtures", default=os.path.join(os.path.dirname(__file__), "..", "fixtures", "gen"))
    args = ap.parse_args()
    torch.manual_seed(SEED)
    torch.set_num_threads(args.threads)
    random.seed(SEED)
    mdir, ddir = os.path.join(args.out, "model"), os.path.join(args.out, "data")
    os.makedirs(mdir, exist_ok=True)
    os.makedirs(ddir, exist_ok=True)

    # --- data
    stories = demo_corpus.documents(SEED, args.stories)
    held = demo_corpus.documents(SEED + 1, 200)
    tasks = {}
    for k, kind, seed in (("task1", "pirate", 11), ("task2", "json", 22)):
        tasks[k] = (demo_corpus.task_rows(seed, 400, kind), demo_corpus.task_rows(seed + 1000, 40, kind))
    # the tokenizer sees what the model sees: a token that only the task data had
    # would keep an untrained embedding, which no adapter can fix
    tok = build_tokenizer(stories, 1024)
    eos_id = tok.token_to_id(EOS)
    assert eos_id == 0
    tok.save(os.path.join(mdir, "tokenizer.json"))
    write_json(os.path.join(mdir, "tokenizer_config.json"), {
        "tokenizer_class": "GPT2Tokenizer", "bos_token": EOS, "eos_token": EOS, "unk_token": EOS,
        "pad_token": EOS, "add_bos_token": False, "model_max_length": 256})
    for k, (train, ev) in tasks.items():
        write_jsonl(os.path.join(ddir, f"{k}.jsonl"), train)
        write_jsonl(os.path.join(ddir, f"{k}.eval.jsonl"), ev)
        write_jsonl(os.path.join(ddir, f"{k}.eval.tokens.jsonl"), token_rows(tok, ev, eos_id))

    # every token of the task answers must be one the model learns in pretraining
    seen = {}
    for s in stories[:5000]:
        for i in tok.encode(s).ids:
            seen[i] = seen.get(i, 0) + 1
    rare = set()
    for train, _ in tasks.values():
        for r in train:
            for i in tok.encode(r["prompt"] + r["completion"]).ids:
                if seen.get(i, 0) < 20:
                    rare.add(tok.id_to_token(i))
    print("task tokens rare in pretraining:", sorted(rare) or "none")

    ids = []
    for s in stories:
        ids.extend(tok.encode(s).ids)
        ids.append(eos_id)
    held_ids = []
    for s in held:
        held_ids.extend(tok.encode(s).ids)
        held_ids.append(eos_id)
    print(f"corpus: {len(stories)} stories, {len(ids)} tokens ({sum(map(len, stories)) / len(ids):.2f} chars/token)")

    # --- model
    cfg = LlamaConfig(vocab_size=1024, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                      max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
                      tie_word_embeddings=True, bos_token_id=eos_id, eos_token_id=eos_id,
                      pad_token_id=eos_id, hidden_act="silu", attention_bias=False, mlp_bias=False)
    model = LlamaForCausalLM(cfg)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"model: {nparams} parameters")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    warm = 50
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))))
    g = torch.Generator().manual_seed(SEED)
    model.train()
    t0 = time.time()
    for step, x in enumerate(batches(ids, args.batch, args.steps, g)):
        out = model(input_ids=x[:, :-1], labels=x[:, :-1])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d} loss {out.loss.item():.4f} ({time.time() - t0:.0f} s)", flush=True)

    # --- held-out loss, in bf16 as stored
    model = model.to(torch.bfloat16).eval()
    with torch.no_grad():
        h = torch.tensor(held_ids[: (len(held_ids) // (SEQ + 1)) * (SEQ + 1)]).view(-1, SEQ + 1)
        loss = model.float()(input_ids=h[:, :-1], labels=h[:, :-1]).loss.item()
        model = model.to(torch.bfloat16)
    print(f"held-out loss {loss:.4f} (perplexity {math.exp(loss):.2f})")

    model.save_pretrained(mdir, safe_serialization=True)
    # a config lora reads and transformers loads alike
    c = json.load(open(os.path.join(mdir, "config.json")))
    c["torch_dtype"] = "bfloat16"
    c["rope_theta"] = 10000.0   # older readers (and lora) look for it at the top level
    os.chmod(os.path.join(mdir, "model.safetensors"), 0o644)
    write_json(os.path.join(mdir, "config.json"), c)
    write_json(os.path.join(mdir, "versions.json"), {
        "torch": torch.__version__, "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__, "python": sys.version.split()[0], "seed": SEED,
        "steps": args.steps, "batch": args.batch, "seq_len": SEQ, "stories": args.stories,
        "held_out_loss": round(loss, 4)})

    # --- what transformers generates greedily from the saved model (bf16 upcast to fp32):
    # tests/sh/demo_model.sh checks `lora generate --quant none --temperature 0` against it
    mf = transformers.AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32,
                                                           attn_implementation="eager").eval()
    cases = []
    for prompt in ["Once upon a time, there was", "Tom the cat found three red balls in the garden.",
                   "Lily was a kind fox who lived near the river."]:
        x = torch.tensor([tok.encode(prompt).ids])
        with torch.no_grad():
            y = mf.generate(x, max_new_tokens=40, do_sample=False, pad_token_id=eos_id, eos_token_id=eos_id)
        gen = y[0, x.shape[1]:].tolist()
        if gen and gen[-1] == eos_id:
            gen = gen[:-1]
        cases.append({"prompt": prompt, "ids": gen, "text": tok.decode(gen)})
        print(repr(prompt + cases[-1]["text"]))
    os.makedirs(args.fixtures, exist_ok=True)
    write_json(os.path.join(args.fixtures, "demo_greedy.json"), {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "max_new_tokens": 40, "cases": cases})


if __name__ == "__main__":
    main()
