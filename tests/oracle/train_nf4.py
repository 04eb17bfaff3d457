#!/usr/bin/env python3
"""NF4 + double quantization fixtures from bitsandbytes (its CPU backend).

Writes tests/fixtures/train/nf4.safetensors.  For each case C:
  C.input    the weight (F32 or BF16), shape as given
  C.packed   U8  [ceil(n/2)]   4-bit codes, even index in the high nibble
  C.qabsmax  U8  [ceil(n/64)]  absmax minus offset, 8-bit dynamic code
  C.absmax2  F32 [ceil(n/64/256)]  the nested block scales
  C.offset   F32 [1]           mean of the fp32 absmax values
  C.absmax   F32 [ceil(n/64)]  the absmax values dequantize_4bit uses (after double quant)
  C.dequant  F32 [n]           dequantize_4bit output (small cases only), through a flat shape
  normal.dequant2d              dequantize_4bit with the weight's own 2-D shape
plus `code8` (the 256-entry dynamic map the nested state refers to).
Rerun: /opt/oracle-venv/bin/python tests/oracle/train_nf4.py
"""
import copy, json, os, sys
import torch
import bitsandbytes as bnb
import bitsandbytes.functional as F
from safetensors.torch import save_file

torch.manual_seed(1234)
out_dir = os.path.join(os.path.dirname(__file__), "..", "fixtures", "train")
os.makedirs(out_dir, exist_ok=True)

def student_t(shape, df=2.0):
    return torch.distributions.StudentT(df).sample(shape) * 0.02

cases = {
    # name: (tensor, keep dequant)
    "normal": (torch.randn(64, 64) * 0.02, True),
    "heavy": (student_t((96, 160)), True),
    "odd": (torch.randn(37, 51) * 0.05, True),           # 1887 elements: odd, last block 31
    "bf16": ((torch.randn(48, 80) * 0.03).to(torch.bfloat16), True),
    # > 256 blocks: several nested blocks, the last partial, torch's vectorised mean
    "big": ((torch.randn(300, 203) * 0.02).to(torch.bfloat16), False),
}
# blocks that are all zero and all equal (absmax of 0, absmax equal to the mean)
z = torch.randn(40, 64) * 0.01
z[3] = 0.0
z[7] = 0.125
z[8, :5] = 1e-30
cases["edge"] = (z, True)

tensors = {}
for name, (w, keep) in cases.items():
    q, st = F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
    assert st.nested and st.blocksize == 64 and st.state2.blocksize == 256
    # dequantize_4bit through a flat shape, in fp32.  bitsandbytes 0.50's CPU kernel
    # for a 2-D shape restarts the absmax index on every row, which is wrong when the
    # row length is not a multiple of 64 (the "heavy" case, 160 columns: errors of 2.2
    # against the weight instead of 0.45); the flat call runs the same kernel over
    # one row and equals the documented formula (and the CUDA kernel).
    flat = copy.deepcopy(st)
    flat.shape = torch.Size([w.numel()])
    flat.dtype = torch.float32
    dq = F.dequantize_4bit(q, flat).float()
    absmax = F.dequantize_blockwise(st.absmax, st.state2) + st.offset
    tensors[f"{name}.input"] = w.contiguous()
    tensors[f"{name}.packed"] = q.reshape(-1).contiguous()
    tensors[f"{name}.qabsmax"] = st.absmax.reshape(-1).contiguous()
    tensors[f"{name}.absmax2"] = st.state2.absmax.reshape(-1).float().contiguous()
    tensors[f"{name}.offset"] = st.offset.reshape(1).float()
    tensors[f"{name}.absmax"] = absmax.reshape(-1).float().contiguous()
    if keep:
        tensors[f"{name}.dequant"] = dq.reshape(-1).contiguous()
    if name == "normal":
        # the plain 2-D call, right when rows are whole blocks (every real model's case)
        tensors[f"{name}.dequant2d"] = F.dequantize_4bit(q, st).float().reshape(-1).contiguous()
tensors["code8"] = st.state2.code.float().contiguous()

meta = {"versions": json.dumps({"torch": torch.__version__, "bitsandbytes": bnb.__version__,
                                "python": sys.version.split()[0]}),
        "generator": "tests/oracle/train_nf4.py"}
save_file(tensors, os.path.join(out_dir, "nf4.safetensors"), metadata=meta)
print("wrote", os.path.join(out_dir, "nf4.safetensors"))
