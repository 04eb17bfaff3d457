#!/usr/bin/env python3
"""tok_fixtures.py - build the small tokenizer fixtures and their expected ids.

Writes tests/fixtures/tok/<name>/{tokenizer.json,tokenizer_config.json} for
four tokenizers that `tokenizers` itself trains here on a built-in corpus
(nothing is downloaded), and tests/fixtures/tok/<name>/expect.jsonl: for each
line of tests/fixtures/tok/corpus.jsonl, the ids Hugging Face `tokenizers`
gives with and without special tokens, and its decode of those ids.

  gpt2    byte-level BPE, GPT-2 regex in the ByteLevel pre-tokenizer,
          merges stored as legacy "a b" strings
  llama3  byte-level BPE, Llama-3 Split regex + ByteLevel(use_regex=false),
          ignore_merges, TemplateProcessing adding <|begin_of_text|>,
          merges stored as [["a","b"]] pairs, Llama-3 chat template
  spm     SentencePiece-style BPE with byte_fallback (Llama-2 layout:
          normalizer Prepend + Replace, <unk> <s> </s> then <0x00>..<0xFF>)
  spm_meta the same model with the Metaspace pre-tokenizer (newer Mistral)
  chatml  the gpt2 model plus <|im_start|>/<|im_end|> and a ChatML template

Run: /opt/oracle-venv/bin/python tests/oracle/tok_fixtures.py
"""
import json
import os
import sys

import tokenizers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers, Regex

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "tok")

GPT2_RE = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
QWEN2_RE = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
LLAMA3_RE = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

TRAIN = """The quick brown fox jumps over the lazy dog. It's a sunny day, and we're going out.
Training a low-rank adapter needs a base model, a data file and a little patience.
They'll say it can't be done; I'd say it's been done before. You've seen it, haven't you?
The learning rate is 2e-4, the rank is 16 and alpha is 32. Batch size 8, 1000 steps.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 1234 31415926 2026-11-29 3.14159 -7 +12 1,000,000.
안녕하세요. 오늘 날씨가 좋네요. 한국어 문장도 토큰화해야 합니다. 저는 학생입니다.
서울은 대한민국의 수도입니다. 감사합니다! 모델을 학습시키는 데 시간이 걸립니다.
def train(model, data, steps=100):
    for step in range(steps):
        loss = model(data[step])
        loss.backward()
    return model

int main(int argc, char **argv) { printf("hello, world\\n"); return 0; }
if (x == 0 && y != 1) { z += 2; } else { z -= 3; }
Emoji: 😀 😃 🎉 👍🏽 ❤️ 🚀 and 🇰🇷 flags. Café, naïve, résumé, Zürich, façade.
    indented    with    tabs	and	spaces     and trailing   
Line one
Line two

Line four after a blank line
"""

CORPUS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "It's we're they'll I'd you've HE'S SHE'LL",
    " leading space and trailing space ",
    "   three leading spaces",
    "multiple     spaces    between\twords\t\ttabs",
    "line one\nline two\n\nline four\n",
    "\n\n\nonly newlines before",
    "trailing newlines\n\n\n",
    "\r\nwindows\r\nline endings\r\n",
    "안녕하세요. 오늘 날씨가 좋네요.",
    "한국어와 English 섞인 문장 123개",
    "def f(x):\n    return x ** 2 + 1  # square\n",
    "int main(void) { return printf(\"%d\\n\", 42); }",
    "    indented code\n\tand a tab",
    "😀 emoji 🎉🎉 party 👍🏽 thumbs ❤️ heart 🇰🇷 flag",
    "numbers 0 7 42 123 1234 12345 3.14159 -1e-5 1,000,000",
    "2026-11-29T03:42:13Z",
    "Café naïve résumé façade Zürich",
    "<|endoftext|>",
    "text<|endoftext|>more text",
    "unicode: Ω ≈ ç √ ∫ ˜ µ ≤ ≥ ÷ 中文 日本語 ελληνικά русский",
    "",
    " ",
    "a",
    "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
    "x" * 300,
    "MiXeD CaSe WoRdS and CAPS LOCK",
    "punctuation!!! ??? ... --- *** ((())) [[[]]] {{{}}} @#$%^&",
    "mail@example.com https://example.org/path?q=1&r=2",
    "special tokens inline: <s> </s> <unk> <|im_start|>user<|im_end|>",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "ends with space ",
    "\u00a0non-breaking\u00a0space and\u3000ideographic space",
    "zero\u200bwidth",
    "e\u0301 a\u0300 n\u0303 decomposed accents, caf\u00e9 vs cafe\u0301",
    "\u1100\u1161\u11a8 conjoining jamo \u1112\u1161\u11ab\u1100\u1173\u11af",
    "\u212b angstrom \u2126 ohm \u0071\u0307\u0323 order \u1e0b\u0323",
    "NEL\u0085next line\u2028line sep\u2029para sep",
] + [None] * 40   # random lines, filled in by fuzz_lines()

POOL = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") * 3 +
        list(" " * 20) + ["\n"] * 6 + ["\t", "\r\n", "  ", "   "] + list(".,;:!?'\"()[]{}<>-_=+*/\\#@$%^&|~`") +
        list("가나다라마바사아자차카타파하한국어안녕") + ["😀", "🎉", "👍🏽", "🇰🇷", "❤️", "é", "e\u0301", "ß", "ñ", "中", "文"] +
        ["'s", "'ll", "'RE", "<|endoftext|>", "<s>", "</s>", "<|im_start|>", "<|eot_id|>", "<0x41>", "\u2581", "Ġ"])


def fuzz_lines():
    import random
    rng = random.Random(1234)
    out = []
    for i in range(CORPUS.count(None)):
        n = rng.randint(1, 60)
        out.append("".join(rng.choice(POOL) for _ in range(n)))
    return out


def byte_level_train(special, vocab_size, pre):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([TRAIN] * 3, trainer=tr)
    return tok


def write(name, tok_json, cfg):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok_json, f, ensure_ascii=False, indent=1)
        f.write("\n")
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=1)
        f.write("\n")
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "expect.jsonl"), "w", encoding="utf-8") as f:
        for text in CORPUS:
            a = tok.encode(text, add_special_tokens=False).ids
            b = tok.encode(text, add_special_tokens=True).ids
            row = {"text": text, "ids": a, "ids_special": b,
                   "decode": tok.decode(a, skip_special_tokens=False),
                   "decode_skip": tok.decode(b, skip_special_tokens=True)}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    # decode of random id sequences: partial UTF-8, byte tokens, specials
    import random
    rng = random.Random(99)
    n = tok.get_vocab_size(with_added_tokens=True)
    with open(os.path.join(d, "decode.jsonl"), "w", encoding="utf-8") as f:
        for i in range(40):
            ids = [rng.randrange(n) for _ in range(rng.randint(1, 12))]
            f.write(json.dumps({"ids": ids, "decode": tok.decode(ids, skip_special_tokens=False),
                                "decode_skip": tok.decode(ids, skip_special_tokens=True)}, ensure_ascii=False) + "\n")
    return tok


def gpt2():
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok = byte_level_train(["<|endoftext|>"], 1200, pre)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    j = json.loads(tok.to_str())
    # legacy merges format: "a b" strings
    j["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]]
    cfg = {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
           "unk_token": "<|endoftext|>", "add_bos_token": False, "model_max_length": 1024}
    write("gpt2", j, cfg)
    # SmolLM2 style: single digits split off before the byte-level regex
    j2 = json.loads(json.dumps(j))
    j2["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    write("smollm2", j2, cfg)
    # every Split behaviour, invert, a literal pattern, contiguous digit runs
    j3 = json.loads(json.dumps(j))
    j3["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"String": "x"}, "behavior": "MergedWithNext", "invert": False},
        {"type": "Split", "pattern": {"Regex": "[aeiou]"}, "behavior": "Contiguous", "invert": False},
        {"type": "Split", "pattern": {"Regex": "[,.;]"}, "behavior": "MergedWithPrevious", "invert": False},
        {"type": "Split", "pattern": {"Regex": "\\t"}, "behavior": "Removed", "invert": False},
        {"type": "Split", "pattern": {"Regex": "\\p{L}+"}, "behavior": "Isolated", "invert": True},
        {"type": "Digits", "individual_digits": False},
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": False}]}
    write("splits", j3, cfg)


CHATML_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                   "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

LLAMA3_TEMPLATE = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                   "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
                   "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
                   "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")


def chatml():
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok = byte_level_train(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], 1000, pre)
    tok.add_tokens([tokenizers.AddedToken(" hello world", normalized=False)])
    j = json.loads(tok.to_str())
    cfg = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
           "add_bos_token": False, "chat_template": CHATML_TEMPLATE}
    write("chatml", j, cfg)


def llama3():
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    special = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok = byte_level_train([], 1500, pre)
    tok.add_special_tokens(special)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])])
    j = json.loads(tok.to_str())
    j["model"]["ignore_merges"] = True
    cfg = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": LLAMA3_TEMPLATE,
           "model_max_length": 8192}
    write("llama3", j, cfg)


QWEN_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                 "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
                 "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def qwen2():
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok = byte_level_train(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], 1100, pre)
    tok.normalizer = normalizers.NFC()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    j = json.loads(tok.to_str())
    cfg = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "add_prefix_space": False,
           "chat_template": QWEN_TEMPLATE}
    write("qwen2", j, cfg)


def spm(meta):
    # Train the merges with a Metaspace pre-tokenizer, then lay the file out as
    # Llama-2's: <unk> <s> </s>, the 256 byte tokens, then the learned pieces.
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    tr = trainers.BpeTrainer(vocab_size=1300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator([TRAIN] * 3, trainer=tr)
    j = json.loads(tok.to_str())
    old = j["model"]["vocab"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for piece, _ in sorted(old.items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    j["model"]["vocab"] = vocab
    j["model"]["byte_fallback"] = True
    j["model"]["fuse_unk"] = True
    j["added_tokens"] = [
        {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for i, c in enumerate(["<unk>", "<s>", "</s>"])]
    if meta:
        j["normalizer"] = None
        j["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
        j["decoder"] = {"type": "Sequence", "decoders": [
            {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False},
            {"type": "ByteFallback"}, {"type": "Fuse"}]}
        # Metaspace decoder must come after byte fallback pieces are joined; the
        # order above is the one Mistral's files use.
        j["decoder"]["decoders"] = [{"type": "ByteFallback"}, {"type": "Metaspace", "replacement": "\u2581",
                                    "prepend_scheme": "first", "split": False}]
    else:
        j["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
        j["pre_tokenizer"] = None
        j["decoder"] = {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    j["post_processor"] = {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                    {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    cfg = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
           "unk_token": "<unk>", "legacy": False, "tokenizer_class": "LlamaTokenizer"}
    write("spm_meta" if meta else "spm", j, cfg)


def main():
    os.makedirs(OUT, exist_ok=True)
    fz = iter(fuzz_lines())
    for i, c in enumerate(CORPUS):
        if c is None:
            CORPUS[i] = next(fz)
    gpt2()
    chatml()
    llama3()
    qwen2()
    spm(False)
    spm(True)
    with open(os.path.join(OUT, "versions.json"), "w") as f:
        json.dump({"tokenizers": tokenizers.__version__, "python": sys.version.split()[0]}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
