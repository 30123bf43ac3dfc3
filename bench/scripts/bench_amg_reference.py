"""Times the official SAM 2 automatic mask generator, for `ocellus-bench amg`.

usage: bench_amg_reference.py MODEL WEIGHTS IMAGE POINTS_PER_SIDE THREADS RUNS

Loads the weights into the official model, reads the RGB image (safetensors, key "image",
[H, W, 3] uint8), runs `SAM2AutomaticMaskGenerator(points_per_side=...).generate` once to warm
up and RUNS more times, and prints a JSON line: the median time (ms) and the number of masks.
"""
import json
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore")
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

model, weights, image, points, threads, runs = sys.argv[1:7]
points, threads, runs = int(points), int(threads), int(runs)
torch.set_num_threads(threads)
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator  # noqa: E402
from sam2.build_sam import build_sam2  # noqa: E402

cfg = {"sam2.1_hiera_tiny": "t", "sam2.1_hiera_small": "s", "sam2.1_hiera_base_plus": "b+", "sam2.1_hiera_large": "l"}[model]
sam = build_sam2(f"configs/sam2.1/sam2.1_hiera_{cfg}.yaml", None, device="cpu")
sam.load_state_dict(load_file(weights), strict=False)
generator = SAM2AutomaticMaskGenerator(sam, points_per_side=points)
rgb = load_file(image)["image"].numpy()
times, masks = [], 0
for i in range(runs + 1):
    start = time.perf_counter()
    masks = len(generator.generate(rgb))
    if i > 0:
        times.append((time.perf_counter() - start) * 1e3)
print(json.dumps({"ms": statistics.median(times), "masks": masks}))
