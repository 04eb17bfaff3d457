#!/usr/bin/env python3
"""tok_data.py - expected ids and labels for data rows, and rendered chats.

Reads the fixture tokenizers written by tok_fixtures.py and writes
tests/fixtures/tok/data/:
  rows_plain.jsonl   {"text"} and {"prompt","completion"} rows (the input)
  rows_chat.jsonl    {"messages"} rows (the input)
  expect_<tok>.jsonl per input row: "ids", "labels" (and "text" for chats)

Chat text comes from transformers' apply_chat_template on the model's own
chat_template.  Ids come from `tokenizers`.  Labels follow lora's rules,
computed here independently of the C code:
  text row:        every token has a loss except tokens added in front (BOS);
                   EOS appended (with a loss) unless the tokenizer added it
  prompt/completion: text = prompt + completion; a token has a loss when its
                   start offset is at or after len(prompt); EOS appended
  chat:            a token has a loss when it starts inside an assistant turn,
                   found by rendering prefixes of the conversation: from the end
                   of render(msgs[:i], add_generation_prompt=True) to the end of
                   render(msgs[:i+1]) (ChatML: less the final newline)

Run: /opt/oracle-venv/bin/python tests/oracle/tok_data.py
"""
import json
import os

import tokenizers
import transformers
from transformers import PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
TOK = os.path.join(HERE, "..", "fixtures", "tok")
OUT = os.path.join(TOK, "data")

PLAIN = [
    {"text": "The quick brown fox jumps over the lazy dog."},
    {"text": "안녕하세요, world! 😀 123"},
    {"prompt": "Question: what is 2 + 2?\nAnswer:", "completion": " 4"},
    {"prompt": "Translate to Korean: thank you\n", "completion": "감사합니다"},
    {"prompt": "def add(a, b):\n", "completion": "    return a + b\n"},
    {"text": "  leading spaces and trailing newline\n", "id": 7, "source": "extra keys are ignored"},
]

CHATS = [
    [{"role": "user", "content": "Hi there!"}, {"role": "assistant", "content": "Hello! How can I help?"}],
    [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Capital of France?"},
     {"role": "assistant", "content": "Paris"}],
    [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": " 2 "},
     {"role": "user", "content": "그리고 2+2?"}, {"role": "assistant", "content": "4 😀\n\nDone."}],
    [{"role": "user", "content": "  spaces around  "}, {"role": "assistant", "content": "\n  ok  \n"}],
]


def hf(name):
    d = os.path.join(TOK, name)
    cfg = json.load(open(os.path.join(d, "tokenizer_config.json")))
    t = PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"),
                                bos_token=cfg.get("bos_token"), eos_token=cfg.get("eos_token"))
    if cfg.get("chat_template"):
        t.chat_template = cfg["chat_template"]
    raw = tokenizers.Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    return t, raw, cfg


def eos_id(raw, cfg):
    e = cfg.get("eos_token")
    return raw.token_to_id(e) if e else None


def label_text(raw, cfg, text, loss_from):
    """ids/labels of a text or prompt/completion row (loss_from = char offset where loss starts)"""
    enc = raw.encode(text, add_special_tokens=True)
    plain = raw.encode(text, add_special_tokens=False)
    n_front = 0
    # the ids added in front are those before the plain encoding
    for k in range(len(enc.ids) - len(plain.ids) + 1):
        if enc.ids[k:k + len(plain.ids)] == plain.ids:
            n_front = k
            break
    ids, labels = [], []
    for i, tid in enumerate(enc.ids):
        if i < n_front:
            lab = -100
        elif i < n_front + len(plain.ids):
            lab = tid if plain.offsets[i - n_front][0] >= loss_from else -100
        else:
            lab = tid      # added at the end (EOS)
        ids.append(tid)
        labels.append(lab)
    e = eos_id(raw, cfg)
    if e is not None and not (len(enc.ids) > n_front + len(plain.ids) and enc.ids[-1] == e):
        ids.append(e)
        labels.append(e)
    return ids, labels


def chat_row(t, raw, msgs, chatml):
    text = t.apply_chat_template(msgs, tokenize=False)
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        a = len(t.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True)) if i else None
        b = len(t.apply_chat_template(msgs[:i + 1], tokenize=False))
        assert text.startswith(t.apply_chat_template(msgs[:i + 1], tokenize=False))
        if chatml:
            b -= 1     # the newline after <|im_end|>
        spans.append((a, b))
    enc = raw.encode(text, add_special_tokens=False)
    labels = [tid if any(a <= off[0] < b for a, b in spans) else -100 for tid, off in zip(enc.ids, enc.offsets)]
    return {"text": text, "ids": enc.ids, "labels": labels}


def main():
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "rows_plain.jsonl"), "w", encoding="utf-8") as f:
        for r in PLAIN:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.write("\n")   # a blank line is not a row
    with open(os.path.join(OUT, "rows_chat.jsonl"), "w", encoding="utf-8") as f:
        for m in CHATS:
            f.write(json.dumps({"messages": m}, ensure_ascii=False) + "\n")
    for name in ["gpt2", "llama3", "spm", "qwen2", "chatml"]:
        t, raw, cfg = hf(name)
        with open(os.path.join(OUT, "expect_%s.jsonl" % name), "w", encoding="utf-8") as f:
            for r in PLAIN:
                if "text" in r:
                    ids, labels = label_text(raw, cfg, r["text"], 0)
                else:
                    ids, labels = label_text(raw, cfg, r["prompt"] + r["completion"], len(r["prompt"]))
                f.write(json.dumps({"ids": ids, "labels": labels}) + "\n")
        if cfg.get("chat_template"):
            with open(os.path.join(OUT, "chat_%s.jsonl" % name), "w", encoding="utf-8") as f:
                for m in CHATS:
                    f.write(json.dumps(chat_row(t, raw, m, name != "llama3"), ensure_ascii=False) + "\n")
    with open(os.path.join(OUT, "versions.json"), "w") as f:
        json.dump({"tokenizers": tokenizers.__version__, "transformers": transformers.__version__}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
