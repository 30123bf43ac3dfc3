"""Times the official LART model, for `ocellus-bench lart`.

usage: bench_lart_reference.py LART PHALP WEIGHTS INPUT MAX_PEOPLE THREADS RUNS

LART and PHALP are checkouts of brjathu/LART and brjathu/PHALP (neither is on the package
registry). `lart_transformer` is imported from the LART checkout and PHALP's `SMPLHead` from
the PHALP checkout, without the packages' `__init__` files (which pull in training and
rendering stacks the model does not use); PHALP's configuration is reduced to the two values
the head reads. WEIGHTS holds the model's keys (safetensors); INPUT holds `pose_shape`,
`joints_3D`, `apperance_emb`, `has_detection`, `mask_detection` [B, 125, P, ·]. Runs the
evaluation forward (`mask_type="zero"`) and the AVA, SMPL and location heads once to warm up
and RUNS more times, and prints a JSON line: the median time (ms) and the AVA logits' checksum.
"""
import json
import os
import statistics
import sys
import tempfile
import time
import types
import warnings

warnings.filterwarnings("ignore")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

lart_repo, phalp_repo, weights, inputs, max_people, threads, runs = sys.argv[1:8]
max_people, threads, runs = int(max_people), int(threads), int(runs)
torch.set_num_threads(threads)
state = load_file(weights)

tmp = tempfile.mkdtemp()
mean = os.path.join(tmp, "mean_params.npz")
np.savez(mean, pose=state["smpl_head.0.init_body_pose"][0].numpy(), shape=state["smpl_head.0.init_betas"][0].numpy(),
         cam=state["smpl_head.0.init_cam"][0].numpy())
for name, path in [("phalp", phalp_repo), ("phalp.models", phalp_repo), ("phalp.models.heads", phalp_repo),
                   ("lart", lart_repo), ("lart.models", lart_repo), ("lart.models.components", lart_repo),
                   ("lart.models.components.lart_transformer", lart_repo)]:
    module = types.ModuleType(name)
    module.__path__ = [os.path.join(path, *name.split("."))]
    sys.modules[name] = module
configs = types.ModuleType("phalp.configs.base")
configs.FullConfig = lambda: types.SimpleNamespace(
    SMPL=types.SimpleNamespace(NUM_BODY_JOINTS=23),
    MODEL=types.SimpleNamespace(SMPL_HEAD=types.SimpleNamespace(SMPL_MEAN_PARAMS=mean)))
sys.modules["phalp.configs"] = types.ModuleType("phalp.configs")
sys.modules["phalp.configs.base"] = configs
from lart.models.components.lart_transformer.transformer import lart_transformer  # noqa: E402

cfg = OmegaConf.load(os.path.join(lart_repo, "configs", "lart.yaml")).configs
cfg.max_people = max_people
model = lart_transformer(opt=cfg, dim=cfg.in_feat, depth=cfg.transformer.depth, heads=cfg.transformer.heads,
                         mlp_dim=cfg.transformer.mlp_dim, dim_head=cfg.transformer.dim_head).eval()
missing, unexpected = model.load_state_dict(state, strict=False)
assert not unexpected and set(missing) <= {"pe", "conv_en.weight", "conv_en.bias", "conv_de.weight", "conv_de.bias"}, (
    missing, unexpected)
data = load_file(inputs)


def step():
    x, _ = model({k: v.clone() for k, v in data.items()}, "zero")
    tokens = x[:, max_people:].reshape(-1, x.shape[-1])
    ava = model.action_head_ava[0](tokens)
    model.smpl_head[0](tokens)
    model.loca_head[0](tokens)
    return ava


times = []
with torch.no_grad():
    for i in range(runs + 1):
        start = time.perf_counter()
        ava = step()
        if i > 0:
            times.append((time.perf_counter() - start) * 1e3)
print(json.dumps({"ms": statistics.median(times), "ava": ava.abs().sum().item()}))
