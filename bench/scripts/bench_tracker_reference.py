"""Times the official SAM 2 video predictor, for `ocellus-bench tracker`.

usage: bench_tracker_reference.py MODEL WEIGHTS OBJECTS FRAMES THREADS IMAGES_OUT

Writes a synthetic clip as JPEGs, loads it with the official `init_state`, prompts OBJECTS
objects with one click each on frame 0, and prints the median time (ms) of one propagated
frame (all objects) over frames 1..FRAMES-1. The loaded frames are saved to IMAGES_OUT
(safetensors, key "images") so that ocellus tracks exactly the same input.
"""
import os
import statistics
import sys
import tempfile
import time
import warnings

warnings.filterwarnings("ignore")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

model, weights, objects, frames, threads, images_out = sys.argv[1:7]
objects, frames, threads = int(objects), int(frames), int(threads)
torch.set_num_threads(threads)
from sam2.build_sam import build_sam2_video_predictor  # noqa: E402

cfg = {"sam2.1_hiera_tiny": "t", "sam2.1_hiera_small": "s", "sam2.1_hiera_base_plus": "b+", "sam2.1_hiera_large": "l"}[model]
predictor = build_sam2_video_predictor(f"configs/sam2.1/sam2.1_hiera_{cfg}.yaml", None, device="cpu")
predictor.load_state_dict(load_file(weights), strict=True)
rng = np.random.default_rng(0)
with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
    for f in range(frames):
        Image.fromarray(rng.integers(0, 256, size=(512, 512, 3), dtype=np.uint8)).save(os.path.join(folder, f"{f:05d}.jpg"))
    state = predictor.init_state(video_path=folder)
    save_file({"images": state["images"].float().contiguous()}, images_out)
    for obj in range(objects):
        x, y = 32 + (obj % 4) * 128, 32 + (obj // 4) * 128
        predictor.add_new_points_or_box(state, frame_idx=0, obj_id=obj + 1, points=[[x, y]], labels=[1])
    times, last = [], None
    for frame_idx, _, _ in predictor.propagate_in_video(state):
        now = time.perf_counter()
        if last is not None:
            times.append((now - last) * 1e3)
        last = now
print(f"{statistics.median(times):.3f}")
