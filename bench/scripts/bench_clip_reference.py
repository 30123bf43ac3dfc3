"""Reference timing for `ocellus-bench clip`: open_clip's zero-shot labelling of N crops.

Usage: python bench_clip_reference.py MODEL THREADS ITERS N [N ...]
Prints one JSON object: {"N": median seconds per batch of N crops}. Random weights (speed does
not depend on values); the classifier (10 classes) is built once, outside the timing.
"""
import json
import sys
import time

import torch
import torch.nn.functional as F

model_name, threads, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
counts = [int(n) for n in sys.argv[4:]]
torch.set_num_threads(threads)
import open_clip  # noqa: E402

model = open_clip.create_model(model_name, pretrained=None, device="cpu").eval()
classifier = F.normalize(torch.randn(model.visual.proj.shape[1], 10), dim=0)
out = {}
with torch.no_grad():
    for n in counts:
        x = torch.randn(n, 3, 224, 224)
        times = []
        for i in range(iters + 1):
            start = time.perf_counter()
            probs = (100.0 * F.normalize(model.encode_image(x), dim=-1) @ classifier).softmax(-1)
            probs.argmax(-1).tolist()
            if i > 0:  # the first run warms up
                times.append(time.perf_counter() - start)
        times.sort()
        out[str(n)] = times[len(times) // 2]
print(json.dumps(out))
