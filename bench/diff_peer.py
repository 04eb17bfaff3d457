#!/usr/bin/env python3
"""diff_peer.py - the peer for bench/diff.sh: the same figures the plain way, with numpy.

  diff_peer.py diff A_DIR B_DIR N        dense ΔW = s·B@A for the first N modules of each
                                         adapter (fp32 matmul, fp64 sums): norms, inner
                                         product, distance, cosine; prints seconds per
                                         module and the figures as JSON lines
  diff_peer.py extract BASE TUNED NAME R randomized SVD of one weight difference with
                                         numpy, both weights in memory; prints seconds
                                         and peak RSS
"""
import json
import resource
import struct
import sys
import time

import numpy as np


def read_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)), 8 + n


def load(path, name, hdr=None):
    hdr, start = hdr or read_header(path)
    e = hdr[name]
    b, end = e["data_offsets"]
    with open(path, "rb") as f:
        f.seek(start + b)
        raw = np.frombuffer(f.read(end - b), dtype=np.uint16 if e["dtype"] == "BF16" else np.float32)
    if e["dtype"] == "BF16":
        raw = (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.reshape(e["shape"])


def diff(a_dir, b_dir, n):
    cfg_a = json.load(open(f"{a_dir}/adapter_config.json"))
    cfg_b = json.load(open(f"{b_dir}/adapter_config.json"))
    sa, sb = cfg_a["lora_alpha"] / cfg_a["r"], cfg_b["lora_alpha"] / cfg_b["r"]
    pa, pb = f"{a_dir}/adapter_model.safetensors", f"{b_dir}/adapter_model.safetensors"
    ha, hb = read_header(pa), read_header(pb)
    mods = sorted(k[len("base_model.model."):-len(".lora_A.weight")] for k in ha[0] if k.endswith("lora_A.weight"))[:n]
    t0 = time.perf_counter()
    for m in mods:
        key = f"base_model.model.{m}.lora_%s.weight"
        wa = sa * (load(pa, key % "B", ha) @ load(pa, key % "A", ha))
        wb = sb * (load(pb, key % "B", hb) @ load(pb, key % "A", hb))
        na = float(np.linalg.norm(wa.astype(np.float64)))
        nb = float(np.linalg.norm(wb.astype(np.float64)))
        ip = float(np.sum(wa.astype(np.float64) * wb))
        dist = float(np.linalg.norm((wa - wb).astype(np.float64)))
        print(json.dumps({"name": m, "norm_a": na, "norm_b": nb, "distance": dist,
                          "cosine": ip / (na * nb)}))
    dt = time.perf_counter() - t0
    print(f"peer_seconds_per_module {dt / len(mods):.4f}")


def extract(base, tuned, name, r):
    t0 = time.perf_counter()
    wb = load(f"{base}/model.safetensors", name)
    wt = load(f"{tuned}/model.safetensors", name)
    d = wt - wb
    rng = np.random.default_rng(0)
    y = d @ rng.standard_normal((d.shape[1], r + 10), dtype=np.float32)
    for _ in range(2):
        q, _ = np.linalg.qr(y)
        z, _ = np.linalg.qr(d.T @ q)
        y = d @ z
    q, _ = np.linalg.qr(y)
    u, s, vt = np.linalg.svd(q.T @ d, full_matrices=False)
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"peer_extract_seconds {dt:.3f}")
    print(f"peer_extract_peak_rss {rss}")


if __name__ == "__main__":
    if sys.argv[1] == "diff":
        diff(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        extract(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
