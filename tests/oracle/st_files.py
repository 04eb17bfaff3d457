#!/opt/oracle-venv/bin/python
"""st_files.py - safetensors files and verdicts from the reference implementation.

Writes into tests/fixtures/st/ (tests/unit/test_safetensors.c and test_dtype.c
read them; `make check` needs no Python):

  dtypes.txt          every dtype name the reference parser accepts, with its
                      width in bits (found by which byte length it validates),
                      and a few names it rejects.
  py_*.safetensors    files written by Python safetensors (save_file): every
                      dtype it can write, an empty tensor, a 0-d tensor,
                      metadata with escapes and non-ASCII; a metadata-only and
                      an empty file.
  py_files.json       for each: metadata, and per tensor (in data order) name,
                      dtype, shape, data_offsets and the SHA-256 of its bytes.
  writer_recipe.json  tensors (hex bytes) + metadata in the order Python's
                      writer laid out py_recipe.safetensors; the C test writes
                      the same recipe with lora's writer and must produce a
                      byte-identical file.
  validate.txt        small header recipes, hostile and edge cases, each with
                      the reference parser's verdict (safe_open accepts or
                      raises).  See the format at the top of the file.

With --lora-build BUILD_DIR it also runs BUILD_DIR/tests/test_safetensors with
LORA_ST_OUT set, so that the files lora's writer makes are kept, loads each with
Python safetensors, compares tensors and metadata with the recipe, and records
the outcome in writer_check.json.

Run: /opt/oracle-venv/bin/python tests/oracle/st_files.py --lora-build build
"""
import argparse
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import safetensors
import torch
from safetensors.torch import safe_open, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "st")


def versions():
    return {"python": sys.version.split()[0], "safetensors": safetensors.__version__,
            "torch": torch.__version__, "numpy": np.__version__}


def raw_bytes(t):
    """The little-endian bytes of a tensor as safetensors stores them."""
    t = t.contiguous()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def header_of(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def reference_accepts(data):
    with tempfile.NamedTemporaryFile(suffix=".safetensors", delete=False) as f:
        f.write(data)
        p = f.name
    try:
        with safetensors.safe_open(p, framework="numpy") as s:
            list(s.keys())
        return True, ""
    except Exception as e:  # the reference's verdict, whatever it raises
        return False, str(e).splitlines()[0][:100]
    finally:
        os.unlink(p)


# ------------------------------------------------------------------ dtypes

CANDIDATES = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ",
              "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64", "C64", "F4",
              "F6_E2M3", "F6_E3M2"]
NOT_DTYPES = ["F8_E4M3FN", "Q4", "f32", "F128", "INVALID", "C128", "U4", "I4", "F8", ""]


def dtypes():
    lines = ["# safetensors dtype names: NAME accept BITS | NAME reject",
             "# found by asking the reference parser which byte length validates shape [8]",
             "# " + json.dumps(versions())]
    for name in CANDIDATES + NOT_DTYPES:
        found = []
        for bits in (4, 6, 8, 16, 32, 64, 128):
            h = json.dumps({"t": {"dtype": name, "shape": [8], "data_offsets": [0, bits]}}).encode()
            if reference_accepts(struct.pack("<Q", len(h)) + h + bytes(bits))[0]:
                found.append(bits)
        if found:
            assert len(found) == 1, (name, found)
            lines.append("%s accept %d" % (name, found[0]))
        elif name:
            lines.append("%s reject" % name)
    with open(os.path.join(OUT, "dtypes.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


# ----------------------------------------------------- files Python writes

def all_dtype_tensors():
    g = torch.Generator().manual_seed(7)
    def rnd(dt, shape, nbytes_per=None):
        n = int(np.prod(shape)) if shape else 1
        size = {torch.float4_e2m1fn_x2: 1}.get(dt, torch.empty((), dtype=dt).element_size())
        b = torch.randint(0, 256, (n * size,), dtype=torch.uint8, generator=g)
        return b.view(dt).reshape(shape)
    t = {}
    shapes = [[3, 5], [2, 3, 4], [7], [4, 1, 2]]
    for i, (name, dt) in enumerate(sorted(safetensors.torch._TYPES.items())):
        t["t_" + name.lower()] = rnd(dt, shapes[i % len(shapes)])
    t["t_f8_e8m0"] = rnd(torch.float8_e8m0fnu, [3, 2])
    t["t_f4"] = rnd(torch.float4_e2m1fn_x2, [5])  # saved as F4 with shape [10]
    t["t_bool"] = torch.tensor([[True, False, True], [False, False, True]])
    t["empty"] = torch.zeros(0, 4)
    t["empty_bf16"] = torch.zeros(3, 0, dtype=torch.bfloat16)
    t["scalar"] = torch.tensor(3.5)
    t["scalar_i64"] = torch.tensor(-42, dtype=torch.int64)
    t["model.layers.0.self_attn.q_proj.weight"] = torch.randn(4, 8, generator=g).to(torch.bfloat16)
    return t


META = {"format": "pt", "unicode": "h\u00e9llo \u2713 \U0001f600", "escapes": "q\"b\\s/n\nt\tc\x01",
        "empty": "", "lora_adapters": "[{\"name\": \"x\"}]"}


def describe(path):
    h = header_of(path)
    meta = h.pop("__metadata__", None)
    ts = []
    with safe_open(path, framework="pt") as f:
        for name, info in sorted(h.items(), key=lambda kv: tuple(kv[1]["data_offsets"])):
            x = f.get_tensor(name)
            b = raw_bytes(x)
            assert len(b) == info["data_offsets"][1] - info["data_offsets"][0], name
            ts.append({"name": name, "dtype": info["dtype"], "shape": info["shape"],
                       "data_offsets": info["data_offsets"], "sha256": hashlib.sha256(b).hexdigest()})
    with open(path, "rb") as f:
        whole = f.read()
    # metadata as ordered pairs, in the order the file has them
    n = struct.unpack("<Q", whole[:8])[0]
    pairs = list(json.loads(whole[8:8 + n], object_pairs_hook=lambda p: p)[0][1]) if meta else []
    if meta:
        assert dict(pairs) == meta
    return {"sha256": hashlib.sha256(whole).hexdigest(), "size": len(whole), "metadata": pairs,
            "tensors": ts}


def python_files():
    files = {}
    save_file(all_dtype_tensors(), os.path.join(OUT, "py_dtypes.safetensors"), metadata=META)
    save_file({}, os.path.join(OUT, "py_meta_only.safetensors"), metadata={"format": "pt"})
    save_file({}, os.path.join(OUT, "py_empty.safetensors"))
    for name in ("py_dtypes.safetensors", "py_meta_only.safetensors", "py_empty.safetensors"):
        files[name] = describe(os.path.join(OUT, name))
    return files


def writer_recipe():
    """A recipe, written by Python; lora's writer must reproduce the file byte for byte."""
    g = torch.Generator().manual_seed(11)
    t = {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(4, 16, generator=g),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.randn(16, 4, generator=g).to(torch.bfloat16),
        "b.f16": torch.randn(3, 3, generator=g).to(torch.float16),
        "c.i64": torch.arange(-3, 3, dtype=torch.int64),
        "d.u8": torch.arange(0, 13, dtype=torch.uint8),
        "e.empty": torch.zeros(0, dtype=torch.float32),
        "f.scalar": torch.tensor(1.25, dtype=torch.float64),
        "g.bool": torch.tensor([True, False, True]),
        "h.f8": torch.randn(5, generator=g).to(torch.float8_e4m3fn),
        "\u00fcnicode \"name\"": torch.ones(2, dtype=torch.int16),
    }
    meta = {"format": "pt", "note": "written by lora \u2713", "x": "a\"b\\c"}
    path = os.path.join(OUT, "py_recipe.safetensors")
    save_file(t, path, metadata=meta)
    d = describe(path)
    with safe_open(path, framework="pt") as f:
        tensors = [{"name": e["name"], "dtype": e["dtype"], "shape": e["shape"],
                    "hex": raw_bytes(f.get_tensor(e["name"])).hex()} for e in d["tensors"]]
    recipe = {"versions": versions(), "metadata": d["metadata"], "tensors": tensors,
              "python_file": "py_recipe.safetensors", "python_file_sha256": d["sha256"]}
    with open(os.path.join(OUT, "writer_recipe.json"), "w") as f:
        json.dump(recipe, f, indent=1, ensure_ascii=False)
        f.write("\n")
    return recipe


# -------------------------------------------------- validation verdicts
#
# Each case: NAME key=value... | HEADER
#   len=auto | len=N     the 8-byte header length: the header's own length, or N
#   data=D               D data bytes follow the header (bytes 0, 1, 2, ... mod 251)
#   cut=C                the file is cut to its first C bytes (default: not cut)
# HEADER is the header text; \xNN stands for one raw byte (JSON never has \x).

CASES = [
    ("ok_two_tensors", {}, 8, '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[2,2],"data_offsets":[4,8]}}'),
    ("ok_offsets_listed_out_of_order", {}, 8, '{"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]},"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}'),
    ("ok_empty_object", {}, 0, '{}'),
    ("ok_metadata_only", {}, 0, '{"__metadata__":{"a":"b"}}'),
    ("ok_zero_d", {}, 2, '{"s":{"dtype":"BF16","shape":[],"data_offsets":[0,2]}}'),
    ("ok_empty_tensor_between", {}, 4, '{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"e":{"dtype":"F32","shape":[0,7],"data_offsets":[2,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}'),
    ("ok_trailing_spaces", {}, 1, '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}       '),
    ("ok_trailing_newline_tab", {}, 1, '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}\n\t\r '),
    ("trailing_nul_padding", {}, 1, '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}\\x00\\x00\\x00'),
    ("leading_space", {}, 1, ' {"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'),
    ("ok_unknown_field_ignored", {}, 1, '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":[1,2]}}'),
    ("ok_unicode_name_and_meta", {}, 1, '{"__metadata__":{"\\xc3\\xa9":"\\xe2\\x9c\\x93"},"\\xf0\\x9f\\x98\\x80":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'),
    ("ok_f4_packed", {}, 2, '{"a":{"dtype":"F4","shape":[4],"data_offsets":[0,2]}}'),
    ("f4_half_byte", {}, 2, '{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}'),
    ("ok_f6_packed", {}, 3, '{"a":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[0,3]}}'),
    ("ok_empty_name", {}, 1, '{"":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'),
    ("ok_sixteen_dims", {}, 1, '{"a":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"data_offsets":[0,1]}}'),
    ("seventeen_dims", {}, 1, '{"a":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"data_offsets":[0,1]}}'),
    # truncation and the length field
    ("truncated_in_length_field", {"cut": 5}, 1, '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'),
    ("empty_file", {"cut": 0}, 0, '{}'),
    ("truncated_in_header", {"cut": 20}, 1, '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'),
    ("truncated_in_data", {"cut": -2}, 8, '{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}'),
    ("header_len_beyond_file", {"len": 4096}, 1, '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'),
    ("header_len_over_100mb", {"len": 100000001}, 1, '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'),
    ("header_len_max_u64", {"len": 18446744073709551615}, 1, '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'),
    ("header_len_zero", {"len": 0}, 0, ''),
    ("header_len_short_of_json", {"len": 10}, 1, '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'),
    # not UTF-8, not JSON, not an object
    ("invalid_utf8_byte", {}, 1, '{"__metadata__":{"k":"\\xff"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'),
    ("invalid_utf8_overlong", {}, 1, '{"__metadata__":{"k":"\\xc0\\xaf"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'),
    ("invalid_utf8_surrogate", {}, 1, '{"__metadata__":{"k":"\\xed\\xa0\\x80"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'),
    ("invalid_utf8_cut_sequence", {}, 1, '{"__metadata__":{"k":"\\xe2\\x9c"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'),
    ("invalid_json_unclosed", {}, 0, '{"a":'),
    ("invalid_json_trailing_garbage", {}, 0, '{} x'),
    ("invalid_json_trailing_comma", {}, 0, '{"__metadata__":{},}'),
    ("invalid_json_single_quotes", {}, 0, "{'a':1}"),
    ("json_array", {}, 0, '[]'),
    ("json_array_of_object", {}, 0, '[{}]'),
    ("json_string", {}, 0, '"x"'),
    ("json_number", {}, 0, '1'),
    ("json_null", {}, 0, 'null'),
    ("utf8_bom", {}, 0, '\\xef\\xbb\\xbf{}'),
    ("control_char_in_string", {}, 0, '{"__metadata__":{"k":"a\\x01b"}}'),
    ("raw_newline_in_string", {}, 0, '{"__metadata__":{"k":"a\\x0ab"}}'),
    ("raw_tab_in_string", {}, 0, '{"__metadata__":{"k":"a\\x09b"}}'),
    ("nul_in_name", {}, 1, '{"a\\x00b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'),
    ("ok_escaped_nul_in_name", {}, 1, '{"a\\u0000b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'),
    ("ok_escaped_unicode", {}, 0, '{"__metadata__":{"\\u00e9":"\\ud83d\\ude00"}}'),
    ("lone_surrogate_escape", {}, 0, '{"__metadata__":{"k":"\\ud83d"}}'),
    ("deep_nesting_in_extra_field", {}, 1, '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":' + '[' * 200 + ']' * 200 + '}}'),
    ("ok_nesting_127_levels", {}, 1, '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":' + '[' * 125 + ']' * 125 + '}}'),
    ("nesting_128_levels", {}, 1, '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":' + '[' * 126 + ']' * 126 + '}}'),
    ("ok_brackets_in_strings_not_nesting", {}, 1, '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":"' + '[{' * 200 + '\\"\\\\"}}'),
    # tensor entries
    ("unknown_dtype", {}, 1, '{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}'),
    ("lowercase_dtype", {}, 4, '{"a":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}}'),
    ("dtype_not_string", {}, 4, '{"a":{"dtype":7,"shape":[1],"data_offsets":[0,4]}}'),
    ("missing_dtype", {}, 1, '{"a":{"shape":[1],"data_offsets":[0,1]}}'),
    ("missing_shape", {}, 1, '{"a":{"dtype":"U8","data_offsets":[0,1]}}'),
    ("missing_offsets", {}, 1, '{"a":{"dtype":"U8","shape":[1]}}'),
    ("entry_not_object", {}, 0, '{"a":[1,2]}'),
    ("entry_null", {}, 0, '{"a":null}'),
    ("shape_overflow_u64", {}, 0, '{"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}}'),
    ("shape_overflow_three_dims", {}, 0, '{"a":{"dtype":"U8","shape":[4294967296,4294967296,2],"data_offsets":[0,0]}}'),
    ("shape_overflow_with_zero_last", {}, 0, '{"a":{"dtype":"U8","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}}'),
    ("ok_huge_dims_zero_first", {}, 0, '{"a":{"dtype":"U8","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}}'),
    ("shape_times_dtype_overflow", {}, 0, '{"a":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,0]}}'),
    ("shape_negative", {}, 1, '{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}'),
    ("shape_fraction", {}, 1, '{"a":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}}'),
    ("shape_float_integral", {}, 1, '{"a":{"dtype":"U8","shape":[1.0],"data_offsets":[0,1]}}'),
    ("shape_exponent", {}, 10, '{"a":{"dtype":"U8","shape":[1e1],"data_offsets":[0,10]}}'),
    ("shape_string", {}, 1, '{"a":{"dtype":"U8","shape":["1"],"data_offsets":[0,1]}}'),
    ("shape_not_array", {}, 1, '{"a":{"dtype":"U8","shape":1,"data_offsets":[0,1]}}'),
    ("size_mismatch", {}, 4, '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}'),
    # offsets
    ("offsets_overlap", {}, 6, '{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}'),
    ("offsets_hole", {}, 9, '{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[5,9]}}'),
    ("offsets_not_from_zero", {}, 5, '{"a":{"dtype":"U8","shape":[4],"data_offsets":[1,5]}}'),
    ("offsets_out_of_bounds", {}, 4, '{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}'),
    ("offsets_far_out_of_bounds", {}, 4, '{"a":{"dtype":"U8","shape":[0],"data_offsets":[18446744073709551615,18446744073709551615]}}'),
    ("data_not_ending_at_eof", {}, 12, '{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}'),
    ("offsets_reversed", {}, 4, '{"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}'),
    ("offsets_three", {}, 4, '{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4,4]}}'),
    ("offsets_negative", {}, 4, '{"a":{"dtype":"U8","shape":[4],"data_offsets":[-4,0]}}'),
    ("offsets_float", {}, 4, '{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4.5]}}'),
    ("same_offsets_twice", {}, 4, '{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}'),
    ("duplicate_name", {}, 8, '{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}'),
    ("duplicate_name_identical", {}, 4, '{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}'),
    ("duplicate_field_in_entry", {}, 4, '{"a":{"dtype":"U8","dtype":"I8","shape":[4],"data_offsets":[0,4]}}'),
    # metadata
    ("metadata_value_number", {}, 0, '{"__metadata__":{"a":1}}'),
    ("metadata_value_object", {}, 0, '{"__metadata__":{"a":{}}}'),
    ("metadata_array", {}, 0, '{"__metadata__":["a"]}'),
    ("metadata_null", {}, 0, '{"__metadata__":null}'),
    ("metadata_string", {}, 0, '{"__metadata__":"x"}'),
    ("metadata_twice", {}, 0, '{"__metadata__":{"a":"b"},"__metadata__":{"c":"d"}}'),
    ("metadata_duplicate_key", {}, 0, '{"__metadata__":{"a":"b","a":"c"}}'),
]

# Where lora deliberately differs from the reference, and why.  The C test
# expects lora's verdict; the reference's is kept beside it for the record.
LORA_DIFFERS = {
    "duplicate_name": ("reject", "issue 2: duplicate tensor names are refused (the reference keeps the last)"),
    "duplicate_name_identical": ("reject", "issue 2: duplicate tensor names are refused"),
    "shape_float_integral": ("accept", "cJSON keeps no trace of how a number was written; an integral 1.0 or 1e1 "
                             "reads as the integer it equals (it cannot lead outside the file)"),
    "shape_exponent": ("accept", "as shape_float_integral"),
    "metadata_twice": ("reject", "an ambiguous header is refused rather than one half silently dropped"),
    "metadata_duplicate_key": ("reject", "an ambiguous header is refused rather than one value silently dropped"),
    "seventeen_dims": ("reject", "lora keeps at most 16 dimensions (LORA_ST_MAX_DIMS); no model uses more"),
}


def unescape(s):
    out = bytearray()
    i = 0
    while i < len(s):
        if s.startswith("\\x", i):
            out.append(int(s[i + 2:i + 4], 16))
            i += 4
        else:
            out += s[i].encode()
            i += 1
    return bytes(out)


def escape(b):
    """Bytes as fixture text: control bytes and bytes >= 0x7f as \\xNN."""
    return "".join(chr(c) if 0x20 <= c < 0x7f else "\\x%02x" % c for c in b)


def build(opts, data_len, header):
    h = unescape(header)
    n = opts.get("len", len(h))
    b = struct.pack("<Q", n) + h + bytes(i % 251 for i in range(data_len))
    if "cut" in opts:
        b = b[:opts["cut"]] if opts["cut"] >= 0 else b[:len(b) + opts["cut"]]
    return b


def validate():
    lines = ["# safetensors header cases and the reference parser's verdict (tests/oracle/st_files.py)",
             "# " + json.dumps(versions()),
             "# NAME REFERENCE LORA [len=N] [cut=C] data=D | HEADER",
             "#   len: the 8-byte header length when not the header's own; data: D data bytes (i % 251);",
             "#   cut: keep only the first C bytes (C < 0: drop -C from the end); \\xNN is one raw byte.",
             "#   LORA is the verdict lora must give; it differs from the reference where noted."]
    for name, opts, data_len, header in CASES:
        ok, why = reference_accepts(build(opts, data_len, header))
        ref = "accept" if ok else "reject"
        ours = ref
        diff = LORA_DIFFERS.get(name)
        if diff:
            ours = diff[0]
            if ours != ref:
                lines.append("# %s: reference %ss; %s" % (name, ref, diff[1]))
        elif not ok:
            lines.append("# %s: reference says: %s" % (name, why))
        kv = " ".join("%s=%d" % (k, v) for k, v in opts.items())
        lines.append("%s %s %s %sdata=%d | %s" % (name, ref, ours, kv + " " if kv else "", data_len, escape(unescape(header))))
    with open(os.path.join(OUT, "validate.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


# ------------------------------------- lora's writer, loaded by Python

def check_lora_writer(build_dir, recipe):
    exe = os.path.join(build_dir, "tests", "test_safetensors")
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, LORA_ST_OUT=d, LORA_FIXTURES=os.path.join(HERE, "..", "fixtures"))
        r = subprocess.run([exe], env=env, capture_output=True, text=True,
                           cwd=os.path.join(HERE, "..", ".."))
        results = {"versions": versions(), "test_exit": r.returncode, "files": {}}
        made = sorted(os.listdir(d))
        assert made, "test_safetensors wrote nothing into LORA_ST_OUT:\n" + r.stdout + r.stderr
        for fn in made:
            p = os.path.join(d, fn)
            res = {}
            try:
                with safe_open(p, framework="pt") as f:
                    meta = f.metadata() or {}
                    got = {k: (f.get_tensor(k), f.get_slice(k).get_dtype()) for k in f.keys()}
            except Exception as e:
                res["loaded"] = False
                res["error"] = str(e)[:200]
                results["files"][fn] = res
                continue
            res["loaded"] = True
            if fn == "lora_recipe.safetensors":
                want = {t["name"]: t for t in recipe["tensors"]}
                res["same_names"] = sorted(got) == sorted(want)
                res["same_tensors"] = all(
                    k in want and raw_bytes(x) == bytes.fromhex(want[k]["hex"]) and dt == want[k]["dtype"]
                    and list(x.shape) == want[k]["shape"] for k, (x, dt) in got.items())
                res["same_metadata"] = meta == dict(recipe["metadata"])
                with open(p, "rb") as f:
                    res["byte_identical_to_python"] = hashlib.sha256(f.read()).hexdigest() == recipe["python_file_sha256"]
            else:
                # files rewritten from py_*.safetensors: compare with the Python originals
                src = os.path.join(OUT, fn.replace("lora_", "py_", 1))
                with safe_open(src, framework="pt") as f:
                    want_meta = f.metadata() or {}
                    want = {k: raw_bytes(f.get_tensor(k)) for k in f.keys()}
                res["same_tensors"] = sorted(got) == sorted(want) and all(
                    raw_bytes(x) == want[k] for k, (x, _) in got.items())
                res["same_metadata"] = meta == want_meta
            results["files"][fn] = res
    with open(os.path.join(OUT, "writer_check.json"), "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    bad = [fn for fn, r in results["files"].items() if not all(v for k, v in r.items() if k != "error")]
    print("lora writer files loaded by Python safetensors: %d, mismatches: %s" % (len(results["files"]), bad or "none"))
    return not bad


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--lora-build", help="build dir holding tests/test_safetensors")
    a = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    dtypes()
    files = python_files()
    with open(os.path.join(OUT, "py_files.json"), "w") as f:
        json.dump({"versions": versions(), "files": files}, f, indent=1, ensure_ascii=False)
        f.write("\n")
    recipe = writer_recipe()
    validate()
    for fn in os.listdir(OUT):
        if fn.endswith(".safetensors"):
            os.chmod(os.path.join(OUT, fn), 0o644)
    if a.lora_build:
        sys.exit(0 if check_lora_writer(a.lora_build, recipe) else 1)
