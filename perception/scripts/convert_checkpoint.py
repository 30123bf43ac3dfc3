"""Official PyTorch checkpoint -> safetensors with the official key names (used by
`ocellus weights import`; run with the bootstrap venv's Python).

usage: convert_checkpoint.py IN OUT

Hiera `.pth` files hold {"model_state": state_dict, ...}; SAM 2 `.pt` files hold
{"model": state_dict}; Lightning checkpoints (HMR 2.0's `.ckpt`) hold {"state_dict": ...} and
pickled hyper-parameters, which are read as opaque objects (no code of theirs runs); a bare
state dict is taken as is. Tensors are written contiguous,
keys unchanged.
"""
import pickle
import sys
import types

import torch
from safetensors.torch import save_file

# Modules whose classes a checkpoint may really need (tensors, storages, ordered dicts).
REAL = ("torch", "collections", "numpy", "_codecs")
SAFE_BUILTINS = {"set", "frozenset", "slice", "complex", "bytearray", "range", "tuple", "list", "dict"}


class Opaque:
    """Stands in for any other pickled class (e.g. a Lightning checkpoint's OmegaConf
    hyper-parameters): built and filled without running its code."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state


class Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module.startswith(REAL) or (module == "builtins" and name in SAFE_BUILTINS):
            return super().find_class(module, name)
        return type(name, (Opaque,), {})


restricted = types.ModuleType("restricted_pickle")
restricted.Unpickler = Unpickler
restricted.load = pickle.load
restricted.__name__ = "restricted_pickle"

src, dst = sys.argv[1], sys.argv[2]
try:
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
except pickle.UnpicklingError:
    # Checkpoints that also pickle other objects (Lightning's hyper-parameters): read with
    # those objects left opaque; only tensors are kept.
    ckpt = torch.load(src, map_location="cpu", weights_only=False, pickle_module=restricted)
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
