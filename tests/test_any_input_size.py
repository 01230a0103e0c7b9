"""Inputs whose sides are not multiples of 32, for the two models whose maps needed them.

Axial-DeepLab sizes its maps from the input (every strided layer keeps ceil(L / 2) positions, as
DeepLab2's do); Dynamic Routing pads to a multiple of 32 and crops the logits back, as its official
code does. Each runs the ADE20K whole-image evaluation of a generated set with random weights; the
contract test (`tests/test_contract.py`) runs every registered model at such sizes on the meta device.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import archs
from archs.axial_deeplab import AxialDeepLab
from archs.dynamic_routing import DynamicRoutingNet
from bench import protocol as proto
from bench.data import synthetic
from bench.evaluate import evaluate
from bench.evaluate.inference import eval_protocol

# Generated ADE20K images: one at the protocol's short side below, fed as it is; one that the test
# pipeline resizes to it (75x100 -> 97x129), whose logits are resized back to its label's size.
IMAGE_SIZES = ((97, 131), (75, 100))
SHORT_SIDE = 97
MODEL_INPUTS = ((97, 131), (97, 129))


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@pytest.mark.parametrize("name", ["axial-deeplab-xl", "dynamic-routing-l33-psp"])
def test_ade20k_whole_image_evaluation_runs_at_sides_no_multiple_of_32(name, tmp_path):
    """The registered model, random weights (`bench eval --weights none`), under ADE20K's whole-image protocol
    with the short side scaled from 512 to 97, which keeps the CPU forwards of these large models small."""
    root = synthetic.write_ade20k(tmp_path, len(IMAGE_SIZES), sizes=IMAGE_SIZES, seed=3)
    spec = archs.get_spec(name)
    scaled = dataclasses.replace(spec, input_size={"ade20k": (SHORT_SIDE, SHORT_SIDE)})
    published = eval_protocol(spec, "ade20k")
    assert published.mode == "whole" and published.scale == (2048, 512)
    assert eval_protocol(scaled, "ade20k") == dataclasses.replace(published, scale=(2048, SHORT_SIDE))

    torch.manual_seed(proto.MODEL_SEED)
    model = archs.build(name, num_classes=150)
    shapes = []
    model.register_forward_hook(lambda module, args, out: shapes.append((args[0].shape[-2:], out.shape[-2:])))
    result = evaluate(model, scaled, "ade20k", root, device="cpu", progress=False, workers=0)

    assert result.num_images == len(IMAGE_SIZES) and result.protocol["scale"] == (2048, SHORT_SIDE)
    # sides that are no multiple of 32 entered the model; the logits cover them at stride 4
    assert [(tuple(x), tuple(y)) for x, y in shapes] == [
        ((h, w), (ceil_div(h, 4), ceil_div(w, 4))) for h, w in MODEL_INPUTS
    ]
    labels = [np.asarray(Image.open(p)) for p in sorted((root / "annotations" / "validation").glob("*.png"))]
    assert [label.shape for label in labels] == list(IMAGE_SIZES)
    # every labelled pixel (ADE20K's 0 is "other", ignored) was predicted and counted at the label's size
    assert result.confusion.sum() == sum(int((label > 0).sum()) for label in labels)
    assert 0.0 <= result.mIoU <= 100.0 and 0.0 <= result.aAcc <= 100.0


def test_dynamic_routing_pads_at_the_bottom_right_to_32_and_crops_the_logits_back():
    """As the official `ImageList.from_tensors` (zeros after normalisation) and `sem_seg_postprocess` do."""
    torch.manual_seed(0)
    model = DynamicRoutingNet(7, num_layers=4, init_channels=16).eval()
    x = torch.randn(1, 3, 97, 131)
    padded = F.pad(x, (0, 160 - 131, 0, 128 - 97))
    with torch.no_grad():
        logits = model(x)
        padded_logits = model(padded)
    assert padded_logits.shape[-2:] == (32, 40)  # a multiple of 32 is neither padded nor cropped
    assert logits.shape == (1, 7, 25, 33)
    assert torch.equal(logits, padded_logits[..., :25, :33])
    # the per-image FLOPs read the gates of the same padded image
    assert model.inactive_modules(x) == model.inactive_modules(padded)


@pytest.mark.parametrize("size", [(97, 131), (65, 129)])
def test_axial_resnet_keeps_ceil_half_at_each_stride(size):
    """Any size, DeepLab2's 32k + 1 crops among them (odd at every stride): ceil(L / 2) per strided layer,
    the pooled path and the strided shortcut alike, up to logits of ceil(H / 4) x ceil(W / 4)."""
    torch.manual_seed(0)
    model = AxialDeepLab(5, width_multiplier=0.25).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        stages = model.backbone(x)
        logits = model(x)
    h, w = size
    strides = (4, 8, 16, 16)
    assert [tuple(s.shape[-2:]) for s in stages] == [(ceil_div(h, s), ceil_div(w, s)) for s in strides]
    assert logits.shape == (1, 5, ceil_div(h, 4), ceil_div(w, 4)) and torch.isfinite(logits).all()
