#!/usr/bin/env python3
"""Write seed journals for tests/fuzz/fuzz_journal.c into tests/fuzz/corpus/fuzz_journal/.

The layout is the one libadapter/merge/swap.h documents; the folder and its base are
the harness's (one shard, w.weight BF16 [8, 16] with bytes (i*37+11) & 0xff, the
base in /tmp/lora-fuzz-journal/base).  Standard library only.
"""
import hashlib
import json
import os
import struct

ROOT = "/tmp/lora-fuzz-journal"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "fuzz_journal")


def shard():
    h = b'{"w.weight":{"dtype":"BF16","shape":[8,16],"data_offsets":[0,256]}}'
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + bytes((i * 37 + 11) & 0xFF for i in range(256))


SHARD = shard()
DATA_AT = len(SHARD) - 256


def safetensors(tensors, meta):
    """tensors: list of (name, dtype, shape, bytes)."""
    head, off = {"__metadata__": meta}, 0
    for name, dt, shape, b in tensors:
        head[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(b)]}
        off += len(b)
    h = json.dumps(head, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(t[3] for t in tensors)


def journal(entries):
    """entries: list of (kind, name, target_off, data)."""
    table = b""
    for kind, name, _, _ in entries:
        table += b"\0" * 32 + name.encode() + b"\0" * ((8 - len(name) % 8) % 8)
    data_start = 64 + len(table)
    table, off = b"", data_start
    for kind, name, target, data in entries:
        n = name.encode()
        table += struct.pack("<B3xIQQQ", kind, len(n), target, len(data), off)
        table += n + b"\0" * ((8 - len(n) % 8) % 8)
        off += len(data)
    head = b"LORAJNL1" + struct.pack("<IIQQ", len(entries), 0, len(table), data_start)
    head += hashlib.sha256(table).digest()
    return head + table + b"".join(e[3] for e in entries) + b"LORAEND1"


def plan(terms):
    line = "BF16 8x16 " + hashlib.sha256(SHARD[DATA_AT:]).hexdigest()
    tensors, tj = [], []
    for k, (coef, fifo, r) in enumerate(terms):
        a = bytes((3 * i + k) & 0x7F for i in range(2 * r * (8 if fifo else 16)))
        b = bytes((5 * i + k) & 0x3F for i in range(2 * r * (16 if fifo else 8)))
        tensors += [(f"0.{k}.A", "BF16", [r, 8 if fifo else 16], a), (f"0.{k}.B", "BF16", [16 if fifo else 8, r], b)]
        tj.append({"coef": coef, "fifo": fifo, "A": f"0.{k}.A", "B": f"0.{k}.B"})
    doc = {"base": ROOT + "/base", "tensors": [{"name": "w.weight", "line": line, "file": "model.safetensors",
                                               "offset": DATA_AT, "dtype": "BF16", "terms": tj}]}
    st = safetensors(tensors, {"lora.swap": json.dumps(doc, separators=(",", ":"))})
    return hashlib.sha256(st).digest() + st


def main():
    os.makedirs(OUT, exist_ok=True)
    header = SHARD[:DATA_AT]
    seeds = {
        "plan_one_term": journal([(3, "lora-swap-plan", 0, plan([(2.0, False, 2)])),
                                  (1, "model.safetensors", 0, header),
                                  (2, "lora-merge.json", 0, b'{"drift": 0}\n')]),
        "plan_two_terms": journal([(3, "lora-swap-plan", 0, plan([(0.7, False, 2), (-0.3, False, 4)]))]),
        "plan_fan_in_fan_out": journal([(3, "lora-swap-plan", 0, plan([(1.0, True, 2)]))]),
        "plan_no_terms": journal([(3, "lora-swap-plan", 0, plan([]))]),
        "ranges": journal([(1, "model.safetensors", DATA_AT, bytes(range(256))),
                           (2, "lora-merge.json", 0, b"{}\n")]),
    }
    for name, b in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(b)


if __name__ == "__main__":
    main()
