"""Exports an image encoder to ONNX from its official PyTorch module (`ocellus weights export-onnx`).

usage: export_onnx.py MODEL WEIGHTS OUT HEIGHT WIDTH OPSET

Builds the official module of MODEL, loads WEIGHTS (safetensors with the official key names,
as `ocellus weights fetch/import/init` write them) strictly, and exports, for a batch of one
`[1, 3, (T,) HEIGHT, WIDTH]` float image, exactly what Ocellus's own forward of that model
returns:

- `hiera_*` (hiera-transformer): the four stage outputs of `return_intermediates=True`, channels
  first (`level0` … `level3`);
- `sam2*` / `sam2.1_*` (sam2): `ImageEncoder.forward`'s kept `backbone_fpn` levels (`level0` …);
- CLIP architectures of open_clip (`ViT-B-32-quickgelu`, ...): `model.visual(x)`, the image
  embedding (`embedding`), with a dynamic batch.

Needs torch, onnx and the model's reference package (hiera-transformer, sam2, open-clip-torch).
Prints one JSON line: the outputs' names and shapes.
"""
import json
import sys
import warnings

warnings.filterwarnings("ignore")

model_name, weights, out, height, width, opset = sys.argv[1:7]
height, width, opset = int(height), int(width), int(opset)

try:
    import torch
    from safetensors.torch import load_file
    import onnx  # noqa: F401  (the exporter needs it)
except ImportError as e:
    sys.exit(f"export-onnx needs torch, safetensors and onnx in this Python: {e}")

torch.manual_seed(0)
# nn.MultiheadAttention's inference fast path is one fused op ONNX has no export for.
torch.backends.mha.set_fastpath_enabled(False)
state = load_file(weights)


class Outputs(torch.nn.Module):
    """The official module, returning what Ocellus's forward returns, as a tuple."""

    def __init__(self, module, pick):
        super().__init__()
        self.module = module
        self.pick = pick

    def forward(self, x):
        return tuple(self.pick(self.module, x))


def hiera_levels(m, x):
    _, intermediates = m(x, return_intermediates=True)  # [B, (T,) H, W, C] each
    d = intermediates[0].dim()
    return [t.permute(0, d - 1, *range(1, d - 1)) for t in intermediates]


dynamic_axes = None
SAM2_CONFIGS = {
    "sam2_hiera_tiny": "configs/sam2/sam2_hiera_t.yaml",
    "sam2_hiera_small": "configs/sam2/sam2_hiera_s.yaml",
    "sam2_hiera_base_plus": "configs/sam2/sam2_hiera_b+.yaml",
    "sam2_hiera_large": "configs/sam2/sam2_hiera_l.yaml",
    "sam2.1_hiera_tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}

try:
    if model_name.startswith("hiera_"):
        from hiera import hiera as H

        module = getattr(H, model_name)(pretrained=False)
        module.load_state_dict(state, strict=True)
        pick, names = hiera_levels, [f"level{i}" for i in range(4)]
        shape = (1, 3, 16, height, width) if "16x" in model_name else (1, 3, height, width)
    elif model_name in SAM2_CONFIGS:
        from sam2.build_sam import build_sam2

        module = build_sam2(SAM2_CONFIGS[model_name], ckpt_path=None, device="cpu", mode="eval").image_encoder
        prefix = "image_encoder."
        module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
        levels = len(module.neck.backbone_channel_list) - module.scalp
        pick, names = (lambda m, x: m(x)["backbone_fpn"]), [f"level{i}" for i in range(levels)]
        shape = (1, 3, height, width)
    else:
        import open_clip

        if model_name not in open_clip.list_models():
            sys.exit(f"export-onnx: unknown model {model_name!r}")
        module = open_clip.create_model(model_name, pretrained=None, device="cpu")
        module.load_state_dict(state, strict=True)
        module = module.visual
        pick, names = (lambda m, x: [m(x)]), ["embedding"]
        shape = (1, 3, height, width)
        # A labeler encodes every track's crop in one batch.
        dynamic_axes = {"image": {0: "batch"}, "embedding": {0: "batch"}}
except ImportError as e:
    sys.exit(f"export-onnx: {model_name} needs its reference package in this Python: {e}")

wrapper = Outputs(module.eval(), pick).eval()
x = torch.randn(*shape)
with torch.no_grad():
    reference = wrapper(x)
    torch.onnx.export(wrapper, (x,), out, dynamo=False, opset_version=opset, input_names=["image"],
                      output_names=names, dynamic_axes=dynamic_axes, do_constant_folding=True)
print(json.dumps({"outputs": {n: list(t.shape) for n, t in zip(names, reference)}}))
