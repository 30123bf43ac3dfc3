"""Converts a SMPL model file to safetensors: `convert_smpl.py MODEL OUT [EXTRA_REGRESSOR]`.

MODEL is the official `SMPL_NEUTRAL.pkl` (or `basicModel_*.pkl`; a latin-1 pickle whose blend
shapes may be chumpy arrays and whose joint regressor is a SciPy sparse matrix) or an `.npz`
of the same arrays. Neither chumpy nor SciPy is needed: their classes are read as plain
state. EXTRA_REGRESSOR is HMR 2.0's `SMPL_to_J19.pkl` (19 joints). Arrays written, float32
unless said: v_template, shapedirs (the first 10 shape components), posedirs, J_regressor
(dense), weights, f and kintree_table (int64), J_regressor_extra. Shapes are checked by the caller.
"""
import pickle
import sys

import numpy as np
import torch
from safetensors.torch import save_file

NUM_BETAS = 10


class Plain:
    """Any pickled object: keeps its state."""

    def __init__(self, *args, **kwargs):
        self.args = args
        self.state = {}

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}
        self.state = state if isinstance(state, dict) else {"state": state}


class Reader(pickle.Unpickler):
    def find_class(self, module, name):
        if module.startswith(("chumpy", "scipy")):
            return type(name, (Plain,), {"source": f"{module}.{name}"})
        return super().find_class(module, name)


def dense(value, name):
    """An array from a plain array, a chumpy array (its `x`) or a SciPy CSC/CSR matrix."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, Plain):
        s = value.state
        if {"data", "indices", "indptr"} <= s.keys():
            shape = tuple(s.get("_shape") or s.get("shape"))
            fmt = s.get("format") or ("csr" if "csr" in value.source else "csc")
            out = np.zeros(shape, dtype=np.float64)
            data, indices, indptr = (np.asarray(s[k]) for k in ("data", "indices", "indptr"))
            for i in range(len(indptr) - 1):
                sl = slice(indptr[i], indptr[i + 1])
                if fmt == "csc":
                    out[indices[sl], i] = data[sl]
                else:
                    out[i, indices[sl]] = data[sl]
            return out
        if "x" in s:
            return dense(s["x"], name)
        raise SystemExit(f"{name}: a {value.source} this converter cannot read")
    return np.asarray(value)


def load(path):
    if path.endswith(".npz"):
        return dict(np.load(path, allow_pickle=False))
    with open(path, "rb") as f:
        return Reader(f, encoding="latin1").load()


def main(model, out, extra=None):
    data = load(model)
    missing = [k for k in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "f") if k not in data]
    if missing:
        raise SystemExit(f"{model}: not a SMPL model file (no {', '.join(missing)})")
    t = lambda a, kind=torch.float32: torch.from_numpy(np.ascontiguousarray(a)).to(kind)
    arrays = {
        "v_template": t(dense(data["v_template"], "v_template")),
        "shapedirs": t(dense(data["shapedirs"], "shapedirs")[:, :, :NUM_BETAS]),
        "posedirs": t(dense(data["posedirs"], "posedirs")),
        "J_regressor": t(dense(data["J_regressor"], "J_regressor")),
        "weights": t(dense(data["weights"], "weights")),
        "f": t(dense(data["f"], "f").astype(np.int64), torch.int64),
    }
    if "kintree_table" in data:
        arrays["kintree_table"] = t(dense(data["kintree_table"], "kintree_table").astype(np.int64), torch.int64)
    if extra:
        with open(extra, "rb") as f:
            arrays["J_regressor_extra"] = t(dense(Reader(f, encoding="latin1").load(), "J_regressor_extra"))
    save_file(arrays, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
