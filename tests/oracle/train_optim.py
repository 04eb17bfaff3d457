#!/usr/bin/env python3
"""AdamW + clip_grad_norm_ + transformers schedules: 10-step trajectories.

Writes tests/fixtures/train/optim.safetensors:
  p0.K            initial parameters of tensor K (5 tensors, LoRA-like shapes)
  g.S.K           the raw gradient fed at step S (before clipping)
  p.S.K           parameters after step S (torch.optim.AdamW)
  <run>.lr        F64 [steps] learning rate each step used
  <run>.norm      F64 [steps] total grad norm clip_grad_norm_ returned
for runs "cosine" (the trajectory above) and lr-only runs "linear" and
"constant" (20 steps with 4 warmup).  Rerun:
  /opt/oracle-venv/bin/python tests/oracle/train_optim.py
"""
import json, os, sys
import torch
import transformers
from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                          get_linear_schedule_with_warmup)
from safetensors.torch import save_file

torch.manual_seed(7)
out_dir = os.path.join(os.path.dirname(__file__), "..", "fixtures", "train")
shapes = [(8, 64), (64, 8), (4, 96), (96, 4), (33,)]
params = [torch.nn.Parameter(torch.randn(s) * 0.05) for s in shapes]
STEPS, WARM, LR, WD, CLIP = 10, 3, 1e-2, 0.01, 1.0
opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD)
sched = get_cosine_schedule_with_warmup(opt, WARM, STEPS)

t = {}
for k, p in enumerate(params):
    t[f"p0.{k}"] = p.detach().clone()
lrs, norms = [], []
for s in range(STEPS):
    # gradient scales that put the total norm above and below the clip threshold
    scale = [0.02, 0.5, 0.05, 0.3, 0.01, 0.2, 0.04, 0.02, 0.6, 0.03][s]
    for k, p in enumerate(params):
        g = torch.randn(p.shape) * scale
        if s == 4 and k == 1:
            g[:3] = 0.0  # exact zeros: m and v stay on their decay path
        p.grad = g.clone()
        t[f"g.{s}.{k}"] = g
    norms.append(float(torch.nn.utils.clip_grad_norm_(params, CLIP)))
    lrs.append(opt.param_groups[0]["lr"])
    opt.step()
    sched.step()
    for k, p in enumerate(params):
        t[f"p.{s}.{k}"] = p.detach().clone()
t["cosine.lr"] = torch.tensor(lrs, dtype=torch.float64)
t["cosine.norm"] = torch.tensor(norms, dtype=torch.float64)

for name, make in (("linear", get_linear_schedule_with_warmup),
                   ("constant", lambda o, w, n: get_constant_schedule_with_warmup(o, w))):
    o = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
    sc = make(o, 4, 20)
    lr = []
    for s in range(20):
        lr.append(o.param_groups[0]["lr"])
        o.step()
        sc.step()
    t[f"{name}.lr"] = torch.tensor(lr, dtype=torch.float64)

meta = {"versions": json.dumps({"torch": torch.__version__, "transformers": transformers.__version__,
                                "python": sys.version.split()[0]}),
        "config": json.dumps({"steps": STEPS, "warmup": WARM, "lr": LR, "weight_decay": WD,
                              "max_grad_norm": CLIP, "betas": [0.9, 0.999], "eps": 1e-8,
                              "schedule": "cosine", "lr_only": {"lr": 3e-4, "warmup": 4, "steps": 20}}),
        "generator": "tests/oracle/train_optim.py"}
save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(out_dir, "optim.safetensors"), metadata=meta)
print("wrote optim.safetensors")
