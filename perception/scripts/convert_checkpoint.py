"""Official PyTorch checkpoint -> safetensors with the official key names (used by
`ocellus weights import`; run with the bootstrap venv's Python).

usage: convert_checkpoint.py IN OUT

Hiera `.pth` files hold {"model_state": state_dict, ...}; SAM 2 `.pt` files hold
{"model": state_dict}; a bare state dict is taken as is. Tensors are written contiguous,
keys unchanged.
"""
import sys

import torch
from safetensors.torch import save_file

src, dst = sys.argv[1], sys.argv[2]
ckpt = torch.load(src, map_location="cpu", weights_only=True)
for key in ("model_state", "model", "state_dict"):
    if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
        ckpt = ckpt[key]
        break
tensors = {k: v.contiguous() for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
skipped = sorted(k for k, v in ckpt.items() if not isinstance(v, torch.Tensor))
if skipped:
    print(f"skipped non-tensor entries: {skipped}", file=sys.stderr)
save_file(tensors, dst)
print(len(tensors))
