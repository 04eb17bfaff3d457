#!/opt/oracle-venv/bin/python
"""st_dtype.py - expected fp16/bf16 <-> fp32 conversions, from numpy and torch.

Writes tests/fixtures/st/dtype_decode.txt and dtype_encode.txt, which
tests/unit/test_dtype.c compares lora's conversions against.

Decoding (16 bits -> fp32) is checked exhaustively: the fixture holds the
SHA-256 of all 65536 decoded values (fp32 bit patterns, little-endian, index
order, every NaN written as sign | 0x7fc00000 because only "NaN stays NaN" is
promised, not its payload) plus a sample of the values themselves so that a
failure can say which input went wrong.

Encoding (fp32 -> 16 bits) is checked on fp32 inputs chosen to be hard: values
exactly halfway between two neighbouring 16-bit values (ties go to the even
one), one fp32 ulp either side of each halfway point, the subnormal range of
f16, the overflow edge (65504 / 65520), fp32 subnormals, infinities, NaNs with
payloads, and random bit patterns.  f16 by numpy .astype(float16), bf16 by
torch .to(bfloat16).

Run: /opt/oracle-venv/bin/python tests/oracle/st_dtype.py
"""
import hashlib
import os
import sys

import numpy as np
import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "st")


def canon(bits32):
    """fp32 bit patterns with every NaN replaced by sign | 0x7fc00000."""
    b = bits32.astype(np.uint32).copy()
    nan = (b & 0x7FFFFFFF) > 0x7F800000
    b[nan] = (b[nan] & 0x80000000) | 0x7FC00000
    return b


def versions():
    return "numpy %s, torch %s, python %s" % (np.__version__, torch.__version__, sys.version.split()[0])


def decode():
    h = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    f16 = h.view(np.float16).astype(np.float32).view(np.uint32)
    bf16 = torch.from_numpy(h.astype(np.int16)).view(torch.bfloat16).to(torch.float32).numpy().view(np.uint32)
    lines = ["# fp32 values of every f16 (numpy) and bf16 (torch) bit pattern",
             "# " + versions(),
             "# sha256 over 65536 little-endian fp32 patterns, NaN as sign|0x7fc00000",
             "sha256 f16 " + hashlib.sha256(canon(f16).astype("<u4").tobytes()).hexdigest(),
             "sha256 bf16 " + hashlib.sha256(canon(bf16).astype("<u4").tobytes()).hexdigest(),
             "# samples: KIND HALF FP32 (hex); NaN samples as produced"]
    special = set()
    for e in range(32):  # every exponent, both signs, mantissa edges
        for m in (0, 1, 2, 0x1FF, 0x200, 0x3FE, 0x3FF):
            special.add((e << 10) | m)
            special.add(0x8000 | (e << 10) | m)
    for kind, table, idx in (("f16", f16, sorted(special | set(range(0, 65536, 211)))),
                             ("bf16", bf16, sorted({(e << 7) | m | s for e in range(256)
                                                    for m in (0, 1, 0x40, 0x7E, 0x7F)
                                                    for s in (0, 0x8000)} | set(range(0, 65536, 211))))):
        for i in idx:
            lines.append("%s %04x %08x" % (kind, i, table[i]))
    with open(os.path.join(OUT, "dtype_decode.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def encode_inputs():
    u = set()
    f32 = lambda x: int(np.array([x], dtype=np.float32).view(np.uint32)[0])
    # f16: halfway points between neighbours, and one fp32 ulp either side.
    rng = np.random.default_rng(2)
    for e in range(31):
        mants = {0, 1, 2, 0x200, 0x3FE, 0x3FF} | set(rng.integers(0, 1024, 3).tolist())
        for m in mants:
            lo = np.float16(np.array([(e << 10) | m], dtype=np.uint16).view(np.float16)[0])
            if m == 0x3FF and e == 30:
                hi = np.float32(65520.0)  # halfway to the next binade that f16 lacks
                mid = hi
            else:
                nxt = np.array([(e << 10) | m + 1], dtype=np.uint16).view(np.float16)[0] if m < 0x3FF else \
                    np.array([((e + 1) << 10)], dtype=np.uint16).view(np.float16)[0]
                mid = (np.float64(lo) + np.float64(nxt)) / 2
            mb = f32(mid)
            for d in (-1, 0, 1):
                for s in (0, 0x80000000):
                    u.add((mb + d) | s)
            u.add(f32(lo)), u.add(f32(lo) | 0x80000000)
    # f16 overflow edge and underflow to zero / smallest subnormal (2^-24, half of it is a tie to 0).
    for x in (65504.0, 65519.0, 65519.996, 65520.0, 65536.0, 1e5, 3.4028235e38, 2.0 ** -24, 2.0 ** -25,
              1.5 * 2.0 ** -25, 2.0 ** -26, 3 * 2.0 ** -25, 2.0 ** -14, 2.0 ** -14 - 2.0 ** -25, 1e-10):
        b = f32(x)
        for d in (-1, 0, 1):
            u.add(b + d), u.add((b + d) | 0x80000000)
    # bf16: ties and neighbours for every exponent (fp32 subnormals included), the overflow edge.
    for e in range(256):
        full = e in (0, 1, 2, 126, 127, 128, 253, 254)  # fp32 subnormals, 1.0, the top binades
        for m7 in ((0, 1, 0x3F, 0x40, 0x7E, 0x7F) if full else (0, 0x7F)):
            base = (e << 23) | (m7 << 16)
            for low in ((0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF) if full else (0x7FFF, 0x8000, 0x8001)):
                b = base | low
                if (b & 0x7FFFFFFF) >= 0x7F800000 and e == 255:
                    continue  # inf / NaN are added below
                u.add(b), u.add(b | 0x80000000)
    # Infinities, NaNs (quiet, signalling, payloads that vanish when truncated).
    for b in (0x7F800000, 0x7F800001, 0x7F800100, 0x7F802000, 0x7F810000, 0x7FC00000, 0x7FFFFFFF,
              0x7FA00000, 0x7F8FFFFF, 0x00000000, 0x00000001, 0x007FFFFF, 0x00800000):
        u.add(b), u.add(b | 0x80000000)
    u |= set(rng.integers(0, 2 ** 32, 800, dtype=np.uint64).tolist())
    return np.array(sorted(u), dtype=np.uint32)


def encode():
    bits = encode_inputs()
    x = bits.view(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        f16 = x.astype(np.float16).view(np.uint16)
    bf16 = torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    lines = ["# fp32 -> f16 (numpy .astype(float16)) and bf16 (torch .to(bfloat16)); round to nearest even",
             "# " + versions(),
             "# FP32 F16 BF16 (hex bit patterns); where FP32 is a NaN only NaN-ness and sign are compared"]
    for b, h, g in zip(bits, f16, bf16):
        lines.append("%08x %04x %04x" % (b, h, g))
    with open(os.path.join(OUT, "dtype_encode.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    decode()
    encode()
