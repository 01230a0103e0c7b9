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

# A generated ADE20K image that the test pipeline resizes to the protocol's short side below
# (75x100 -> 97x129, as it resizes real ones to 512xW); its logits are resized back to its label's size.
IMAGE_SIZE = (75, 100)
SHORT_SIDE = 97
MODEL_INPUT = (97, 129)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@pytest.mark.parametrize("name", ["axial-deeplab-xl", "dynamic-routing-l33-psp"])
def test_ade20k_whole_image_evaluation_runs_at_sides_no_multiple_of_32(name, tmp_path):
    """The registered model, random weights (`bench eval --weights none`), under ADE20K's whole-image protocol
    with the short side scaled from 512 to 97, which keeps the CPU forwards of these large models small."""
    root = synthetic.write_ade20k(tmp_path, 1, sizes=(IMAGE_SIZE,), seed=3)
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

    assert result.num_images == 1 and result.protocol["scale"] == (2048, SHORT_SIDE)
    # sides that are no multiple of 32 entered the model; the logits cover them at stride 4
    h, w = MODEL_INPUT
    assert [(tuple(x), tuple(y)) for x, y in shapes] == [(MODEL_INPUT, (ceil_div(h, 4), ceil_div(w, 4)))]
    (label_path,) = (root / "annotations" / "validation").glob("*.png")
    label = np.asarray(Image.open(label_path))
    assert label.shape == IMAGE_SIZE
    # every labelled pixel (ADE20K's 0 is "other", ignored) was predicted and counted at the label's size
    assert result.confusion.sum() == int((label > 0).sum())
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


def test_axial_resnet_keeps_ceil_half_at_each_stride():
    """A size of DeepLab2's crops, 32k + 1, odd at every stride: ceil(L / 2) per strided layer, the pooled path
    and the strided shortcut alike, up to logits of ceil(H / 4) x ceil(W / 4)."""
    torch.manual_seed(0)
    model = AxialDeepLab(5, width_multiplier=0.25).eval()
    h, w = 65, 129
    x = torch.randn(1, 3, h, w)
    with torch.no_grad():
        stages = model.backbone(x)
        logits = model(x)
    strides = (4, 8, 16, 16)
    assert [tuple(s.shape[-2:]) for s in stages] == [(ceil_div(h, s), ceil_div(w, s)) for s in strides]
    assert logits.shape == (1, 5, ceil_div(h, 4), ceil_div(w, 4)) and torch.isfinite(logits).all()
