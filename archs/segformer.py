"""SegFormer B0–B5: the Mix Transformer encoder and the all-MLP decoder.

Paper: Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with
Transformers", NeurIPS 2021. Official code: https://github.com/NVlabs/SegFormer (NVIDIA Source Code
License); configuration facts from its ``local_configs/segformer/B*`` and ``segformer_head.py``.

Decoder: per stage a linear projection C_i -> E (a 1x1 convolution here: the same function, and
the layout a GPU prefers), bilinear upsampling to 1/4 (align_corners=False), concatenation in the
order [c4, c3, c2, c1], a 1x1 fuse convolution without bias + BatchNorm + ReLU, and a 1x1
classifier; E = 256 for B0/B1, 768 for B2–B5. Dropout is training-only; the official head's unused
``conv_seg`` is not built.

Checkpoints: the official entries are HF transformers' ports (``nvidia/segformer-*``); the authors'
own files load too (`AUTHORS_FORMAT`). Each runs with its source's LayerNorm eps
(`archs.backbones.mit.LayerNormEps`). Figures and sources: docs/models/segformer.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from archs.backbones.mit import (
    AUTHORS_LAYER_NORM_EPS,
    HF_LAYER_NORM_EPS,
    MIT_CONFIGS,
    LayerNormEps,
    MixTransformer,
)
from archs.base import CheckpointFormat, register
from archs.cards import card
from archs.convert.authors import convert_authors_segformer
from archs.convert.hf import convert_hf_segformer

__all__ = [
    "AUTHORS_FORMAT",
    "SegFormer",
    "SegFormerHead",
    "segformer_b0",
    "segformer_b1",
    "segformer_b2",
    "segformer_b3",
    "segformer_b4",
    "segformer_b5",
]


class SegFormerHead(nn.Module):
    """The all-MLP decoder.

    Args:
        in_channels: widths of the four encoder stages.
        embed_dim: decoder width E.
        num_classes: output classes.
    """

    def __init__(self, in_channels: tuple[int, ...], embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.linear_c = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in in_channels)
        self.fuse = nn.Conv2d(embed_dim * len(in_channels), embed_dim, 1, bias=False)
        self.bn = nn.BatchNorm2d(embed_dim)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(embed_dim, num_classes, 1)

        self.merged: nn.ModuleList | None = None  # set by `fuse_for_inference`

    @torch.no_grad()
    def fuse_for_inference(self) -> None:
        """Merge each projection with its slice of the fuse convolution and with the BatchNorm (eval only).

        fuse(cat_i(up(P_i f_i + b_i))) = sum_i up(F_i P_i f_i) + sum_i F_i b_i, since bilinear
        resizing acts on each channel linearly and keeps constants; the BatchNorm is an affine map
        per channel on top. So each stage is projected straight to E channels at its own
        resolution, resized and summed: the 1x1 convolution over 4E channels at stride 4 (most of
        the decoder's FLOPs) and the 4E-channel concatenation are gone. The same function, up to
        float rounding; the state dict of the model as built is what checkpoints load into.
        """
        if self.merged is not None:
            return
        if self.training:
            raise ValueError("the decoder merges with its BatchNorm's running statistics: call .eval() first")
        running_mean, running_var = self.bn.running_mean, self.bn.running_var
        if running_mean is None or running_var is None:
            raise ValueError("the decoder merges with its BatchNorm's running statistics, which it does not track")
        e, n = self.fuse.out_channels, len(self.linear_c)
        scale = self.bn.weight / torch.sqrt(running_var + self.bn.eps)
        bias = self.bn.bias - scale * running_mean
        fuse = self.fuse.weight.flatten(1)
        merged = []
        for i, proj in enumerate(cast("Sequence[nn.Conv2d]", self.linear_c)):
            part = fuse[:, (n - 1 - i) * e : (n - i) * e]  # concatenation order [c4, c3, c2, c1]
            conv = nn.Conv2d(proj.in_channels, e, 1, bias=i == 0).to(proj.weight)
            conv.weight.copy_((scale[:, None] * (part @ proj.weight.flatten(1)))[:, :, None, None])
            bias = bias + scale * (part @ proj.get_parameter("bias"))
            merged.append(conv)
        merged[0].get_parameter("bias").copy_(bias)  # one constant for the sum, on the stage that is not resized
        del self.linear_c, self.fuse, self.bn
        self.merged = nn.ModuleList(merged)

    def forward(self, features: list[Tensor]) -> Tensor:
        size = features[0].shape[-2:]
        if self.merged is not None:
            x = self.merged[0](features[0])
            for conv, f in zip(self.merged[1:], features[1:]):
                x = x + F.interpolate(conv(f), size=size, mode="bilinear", align_corners=False)
            return self.classifier(F.relu(x))
        projected = [
            F.interpolate(proj(f), size=size, mode="bilinear", align_corners=False) if i else proj(f)
            for i, (proj, f) in enumerate(zip(self.linear_c, features))
        ]
        x = F.relu(self.bn(self.fuse(torch.cat(projected[::-1], dim=1))))
        return self.classifier(self.dropout(x))


class SegFormer(nn.Module):
    """MiT encoder + all-MLP decoder; logits at stride 4.

    Args:
        variant: ``b0`` … ``b5``.
        num_classes: output classes.
        layer_norm_eps: the encoder's LayerNorm eps (HF's port by default).
    """

    def __init__(self, variant: str, num_classes: int, layer_norm_eps: LayerNormEps = HF_LAYER_NORM_EPS) -> None:
        super().__init__()
        config = MIT_CONFIGS[variant]
        self.backbone = MixTransformer(config, layer_norm_eps=layer_norm_eps)
        self.decode_head = SegFormerHead(config.embed_dims, 256 if variant in ("b0", "b1") else 768, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode_head(self.backbone(x))


def use_hf_layer_norms(model: nn.Module) -> None:
    """Run a `SegFormer` with the LayerNorm eps of HF transformers' port (`Weights.configure`)."""
    _backbone(model).set_layer_norm_eps(HF_LAYER_NORM_EPS)


def use_authors_layer_norms(model: nn.Module) -> None:
    """Run a `SegFormer` with the LayerNorm eps of the authors' code (`Weights.configure`)."""
    _backbone(model).set_layer_norm_eps(AUTHORS_LAYER_NORM_EPS)


def _backbone(model: nn.Module) -> MixTransformer:
    if not isinstance(model, SegFormer):
        raise TypeError(f"a SegFormer's checkpoint configures a SegFormer, not a {type(model).__name__}")
    return model.backbone


AUTHORS_FORMAT = CheckpointFormat(
    "mmseg",
    convert_authors_segformer,
    use_authors_layer_norms,
    source="the authors' NVlabs/SegFormer checkpoints (an mmsegmentation 0.13 fork)",
)
# The official entries are HF transformers' ports, which run with HF's LayerNorm eps.
_segformer_card = partial(card, converter=convert_hf_segformer, configure=use_hf_layer_norms, formats=(AUTHORS_FORMAT,))


@register(_segformer_card("segformer-b0"))
def segformer_b0(*, num_classes: int) -> SegFormer:
    """SegFormer-B0: MiT-B0 (widths 32-256) and a 256-wide decoder, the real-time variant."""
    return SegFormer("b0", num_classes)


@register(_segformer_card("segformer-b1"))
def segformer_b1(*, num_classes: int) -> SegFormer:
    """SegFormer-B1: MiT-B1 (widths 64-512, two blocks per stage) and a 256-wide decoder."""
    return SegFormer("b1", num_classes)


@register(_segformer_card("segformer-b2"))
def segformer_b2(*, num_classes: int) -> SegFormer:
    """SegFormer-B2: MiT-B2 (depths 3/4/6/3) and a 768-wide decoder."""
    return SegFormer("b2", num_classes)


@register(_segformer_card("segformer-b3"))
def segformer_b3(*, num_classes: int) -> SegFormer:
    """SegFormer-B3: MiT-B3 (depths 3/4/18/3) and a 768-wide decoder."""
    return SegFormer("b3", num_classes)


@register(_segformer_card("segformer-b4"))
def segformer_b4(*, num_classes: int) -> SegFormer:
    """SegFormer-B4: MiT-B4 (depths 3/8/27/3) and a 768-wide decoder."""
    return SegFormer("b4", num_classes)


@register(_segformer_card("segformer-b5"))
def segformer_b5(*, num_classes: int) -> SegFormer:
    """SegFormer-B5: MiT-B5 (depths 3/6/40/3) and a 768-wide decoder; its ADE20K model runs at 640x640."""
    return SegFormer("b5", num_classes)
