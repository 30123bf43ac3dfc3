"""Times the official reference forward of an image encoder, for `ocellus-bench models`.

usage: bench_reference.py MODEL WEIGHTS THREADS ITERS

Builds the official model (hiera-transformer / sam2 / open_clip's image tower), loads WEIGHTS (safetensors with the
official keys, written by ocellus), and prints the median forward time in ms over ITERS runs
after two warm-up runs, in fp32 on the CPU with THREADS intra-op threads.
"""
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore")
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

model_name, weights, threads, iters = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
state = load_file(weights)

if model_name.startswith("hiera_"):
    from hiera import hiera as H

    model = getattr(H, model_name)()
    model.load_state_dict(state, strict=True)
    size = (1, 3, 16, 224, 224) if "16x224" in model_name else (1, 3, 224, 224)

    def run(x):
        return model(x, return_intermediates=True)
elif not model_name.startswith("sam2"):
    import open_clip

    model = open_clip.create_model(model_name, pretrained=None, device="cpu")
    model.load_state_dict(state, strict=True)
    side = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    size = (1, 3, side, side)

    def run(x):
        return model.encode_image(x)
else:
    from sam2.modeling.backbones.hieradet import Hiera
    from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine

    trunk_args, channels = {
        "sam2.1_hiera_tiny": (dict(embed_dim=96, num_heads=1, stages=[1, 2, 7, 2], global_att_blocks=[5, 7, 9],
                                   window_pos_embed_bkg_spatial_size=[7, 7]), [768, 384, 192, 96]),
        "sam2.1_hiera_small": (dict(embed_dim=96, num_heads=1, stages=[1, 2, 11, 2], global_att_blocks=[7, 10, 13],
                                    window_pos_embed_bkg_spatial_size=[7, 7]), [768, 384, 192, 96]),
        "sam2.1_hiera_base_plus": (dict(embed_dim=112, num_heads=2), [896, 448, 224, 112]),
        "sam2.1_hiera_large": (dict(embed_dim=144, num_heads=2, stages=[2, 6, 36, 4], global_att_blocks=[23, 33, 43],
                                    window_pos_embed_bkg_spatial_size=[7, 7], window_spec=[8, 4, 16, 8]),
                               [1152, 576, 288, 144]),
    }[model_name]
    neck = FpnNeck(PositionEmbeddingSine(256, normalize=True, scale=None, temperature=10000), 256, channels,
                   fpn_top_down_levels=[2, 3], fpn_interp_model="nearest")
    model = ImageEncoder(Hiera(**trunk_args), neck, scalp=1)
    prefix = "image_encoder."
    model.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
    size = (1, 3, 1024, 1024)

    def run(x):
        return model(x)

model.eval()
x = torch.randn(*size, generator=torch.Generator().manual_seed(0))
times = []
with torch.no_grad():
    for i in range(iters + 2):
        start = time.perf_counter()
        run(x)
        if i >= 2:
            times.append((time.perf_counter() - start) * 1e3)
print(f"{statistics.median(times):.3f}")
