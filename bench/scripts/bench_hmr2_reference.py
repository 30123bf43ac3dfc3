"""Times the official HMR 2.0 modules, for `ocellus-bench hmr2`.

usage: bench_hmr2_reference.py REPO WEIGHTS INPUT THREADS RUNS

REPO is a checkout of shubham-goel/4D-Humans; its `ViT` (built with the arguments `vit(cfg)`
gives it) and `SMPLTransformerDecoderHead` (with the released experiment's decoder settings)
are imported from there without the package's `__init__` files (which pull in rendering and
training stacks the two modules do not use). WEIGHTS holds `backbone.*` and `smpl_head.*`;
INPUT holds `crops` [B, 3, 256, 256] (safetensors). Runs the forward step's model part
(backbone on the central 192 columns, then the head) once to warm up and RUNS more times, and
prints a JSON line: the median time (ms) per batch, and the outputs' checksums.
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
from safetensors.torch import load_file  # noqa: E402

repo, weights, inputs, threads, runs = sys.argv[1:6]
threads, runs = int(threads), int(runs)
torch.set_num_threads(threads)

# Packages whose search path is the checkout's folder, without running their __init__.
for name in ["hmr2", "hmr2.models", "hmr2.models.backbones", "hmr2.models.heads", "hmr2.models.components",
             "hmr2.utils"]:
    module = types.ModuleType(name)
    module.__path__ = [os.path.join(repo, *name.split("."))]
    sys.modules[name] = module
from hmr2.models.backbones.vit import ViT  # noqa: E402
from hmr2.models.heads.smpl_head import SMPLTransformerDecoderHead  # noqa: E402


class Cfg(dict):
    __getattr__ = dict.__getitem__


state = load_file(weights)
with tempfile.TemporaryDirectory() as tmp:
    mean = os.path.join(tmp, "mean_params.npz")
    np.savez(mean, pose=state["smpl_head.init_body_pose"][0].numpy(), shape=state["smpl_head.init_betas"][0].numpy(),
             cam=state["smpl_head.init_cam"][0].numpy())
    cfg = Cfg(MODEL=Cfg(SMPL_HEAD=Cfg(TYPE="transformer_decoder", TRANSFORMER_DECODER=dict(
        depth=6, heads=8, mlp_dim=1024, dim_head=64, dropout=0.0, emb_dropout=0.0, norm="layer", context_dim=1280))),
        SMPL=Cfg(NUM_BODY_JOINTS=23, MEAN_PARAMS=mean))
    head = SMPLTransformerDecoderHead(cfg)
backbone = ViT(img_size=(256, 192), patch_size=16, embed_dim=1280, depth=32, num_heads=16, ratio=1,
               use_checkpoint=False, mlp_ratio=4, qkv_bias=True, drop_path_rate=0.55)
backbone.load_state_dict({k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")})
head.load_state_dict({k[len("smpl_head."):]: v for k, v in state.items() if k.startswith("smpl_head.")})
backbone.eval()
head.eval()
crops = load_file(inputs)["crops"]
times = []
with torch.inference_mode():
    for i in range(runs + 1):
        start = time.perf_counter()
        features = backbone(crops[:, :, :, 32:-32])
        params, cam, _ = head(features)
        if i > 0:
            times.append((time.perf_counter() - start) * 1e3)
print(json.dumps({"ms": statistics.median(times), "features": float(features.abs().sum()),
                  "body_pose": float(params["body_pose"].abs().sum()), "cam": cam.tolist()}))
