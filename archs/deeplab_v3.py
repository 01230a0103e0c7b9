"""DeepLab v3 (ResNet-101, multi-grid, ASPP with image pooling) and v3+ (ASPP with a decoder, mmseg's rows).

v3: Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", arXiv:1706.05587,
2017 (https://github.com/tensorflow/models/tree/master/research/deeplab, Apache-2.0). ResNet-101,
multi-grid (1, 2, 4) in block4, ASPP: 1x1 + three 3x3 atrous convolutions (rates 6/12/18 at
output stride 16, doubled at 8) + image pooling, 256 channels with BN, a 1x1 projection and a 1x1
classifier. torchvision's ``deeplabv3_resnet101`` is the same with output stride 8, no multi-grid
and an extra 3x3 conv-BN-ReLU (`deeplabv3_r101` builds either).

v3+: Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic Image
Segmentation", ECCV 2018. The registered rows are mmsegmentation's ``deeplabv3plus_r101-d8`` and
``deeplabv3plus_m-v2-d8`` (``DepthwiseSeparableASPPHead``, Apache-2.0), the SegFormer paper's
Table 4 baselines: separable ASPP (512 channels, rates 12/24/36 at output stride 8) with image
pooling; the stride-4 features projected to 48 and concatenated with the upsampled ASPP output,
two separable 3x3 blocks and a 1x1 classifier; logits at stride 4. Figures: docs/models/deeplab.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead

from archs.backbones.mobilenetv2 import MobileNetV2
from archs.backbones.resnet import ResNet, resnet101_torchvision, resnet101_v1c
from archs.base import register
from archs.cards import card
from archs.common import SegmentationModel, conv_bn_relu, mmseg_model, separable_conv_bn_relu

__all__ = [
    "DeepLabV3Head",
    "DeepLabV3PlusHead",
    "deeplabv3_r101",
    "deeplabv3_r101_os8",
    "deeplabv3_r101_os16",
    "deeplabv3_r101_torchvision",
    "deeplabv3plus_mobilenetv2",
    "deeplabv3plus_r101",
]


class DeepLabV3Head(nn.Module):
    """DeepLab v3's head: ASPP with image pooling (torchvision's ``ASPP``), then a 1x1 classifier.

    Args:
        in_channels: channels of the last backbone stage.
        num_classes: output classes.
        rates: rates of the three 3x3 atrous branches.
        refine: insert the 3x3 conv-BN-ReLU (256) that torchvision's ``DeepLabHead`` has and the paper does not.
    """

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int], *, refine: bool = False) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, rates, 256)
        self.refine = conv_bn_relu(256, 256, 3) if refine else nn.Identity()
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return self.classifier(self.refine(self.aspp(features[-1])))


def deeplabv3_r101(
    *,
    num_classes: int,
    output_stride: int = 16,
    multi_grid: Sequence[int] | None = (1, 2, 4),
    head: str = "paper",
) -> SegmentationModel:
    """DeepLab v3 on ResNet-101 (7x7 stem, torchvision layout); the registered rows fix ``output_stride``.

    ``output_stride=8, multi_grid=None, head="torchvision"`` is exactly torchvision's
    ``deeplabv3_resnet101`` (its weights load with `archs.convert.torchvision.convert_torchvision_deeplabv3_to_v3`).

    Args:
        num_classes: output classes.
        output_stride: 16 or 8; the ASPP rates are (6, 12, 18) * 16 / output_stride.
        multi_grid: dilation multipliers of block4's three units ((1, 2, 4) in the paper), or None
            for the plain dilated ResNet (torchvision).
        head: ``"paper"`` (ASPP -> 1x1 classifier) or ``"torchvision"`` (an extra 3x3 conv-BN-ReLU).
    """
    if head not in ("paper", "torchvision"):
        raise ValueError(f"head must be 'paper' or 'torchvision', got {head!r}")
    rates = tuple(r * 16 // output_stride for r in (6, 12, 18))
    backbone = resnet101_torchvision(output_stride=output_stride, multi_grid=multi_grid)
    return SegmentationModel(backbone, DeepLabV3Head(2048, num_classes, rates, refine=head == "torchvision"))


@register(card("deeplabv3-r101-os16"))
def deeplabv3_r101_os16(*, num_classes: int) -> SegmentationModel:
    """DeepLab v3, ResNet-101, output stride 16 (ASPP rates 6/12/18), multi-grid (1, 2, 4)."""
    return deeplabv3_r101(num_classes=num_classes, output_stride=16)


@register(card("deeplabv3-r101-os8"))
def deeplabv3_r101_os8(*, num_classes: int) -> SegmentationModel:
    """DeepLab v3, ResNet-101, output stride 8 (ASPP rates 12/24/36), multi-grid (1, 2, 4)."""
    return deeplabv3_r101(num_classes=num_classes, output_stride=8)


class _LastStageHead(nn.Module):
    """Applies ``classifier`` (a torchvision head) to the last backbone stage."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return self.classifier(features[-1])


def deeplabv3_r101_torchvision(*, num_classes: int) -> SegmentationModel:
    """torchvision's ``deeplabv3_resnet101`` with torchvision's own ``DeepLabHead`` (not a registered row).

    Its weights load with `archs.convert.torchvision.convert_torchvision_deeplabv3`.

    Args:
        num_classes: output classes.
    """
    return SegmentationModel(resnet101_torchvision(), _LastStageHead(DeepLabHead(2048, num_classes)))


class DeepLabV3PlusHead(nn.Module):
    """mmseg's ``DepthwiseSeparableASPPHead``: separable ASPP with image pooling + the V3+ decoder.

    Args:
        in_channels: channels of the last backbone stage.
        channels: width of the ASPP branches and of the decoder.
        num_classes: output classes.
        low_level_channels: channels of the first backbone stage (stride 4).
        low_level_proj: width of the low-level projection (48).
        dilations: rates of the ASPP branches; rate 1 is a plain 1x1 conv.
        dropout: Dropout2d probability before the classifier (training only).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        *,
        low_level_channels: int,
        low_level_proj: int = 48,
        dilations: Sequence[int] = (1, 12, 24, 36),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(in_channels, channels, 1))
        self.aspp_modules = nn.ModuleList(
            conv_bn_relu(in_channels, channels, 1) if d == 1 else separable_conv_bn_relu(in_channels, channels, d)
            for d in dilations
        )
        self.bottleneck = conv_bn_relu((len(dilations) + 1) * channels, channels, 3)
        self.c1_bottleneck = conv_bn_relu(low_level_channels, low_level_proj, 1)
        self.sep_bottleneck = nn.Sequential(
            separable_conv_bn_relu(channels + low_level_proj, channels), separable_conv_bn_relu(channels, channels)
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        x = features[-1]
        # A bilinear resize of a 1x1 map is a broadcast: expand it instead of interpolating.
        branches = [self.image_pool(x).expand(-1, -1, *x.shape[-2:])]
        branches += [branch(x) for branch in self.aspp_modules]
        out = self.bottleneck(torch.cat(branches, dim=1))
        low = self.c1_bottleneck(features[0])
        out = F.interpolate(out, size=low.shape[-2:], mode="bilinear", align_corners=False)
        out = self.sep_bottleneck(torch.cat([out, low], dim=1))
        return self.classifier(self.dropout(out))


def _v3plus(backbone: ResNet | MobileNetV2, num_classes: int, aux_head: bool) -> SegmentationModel:
    channels = backbone.out_channels
    head = DeepLabV3PlusHead(channels[-1], 512, num_classes, low_level_channels=channels[0])
    return mmseg_model(backbone, head, num_classes, aux_head)


@register(card("deeplabv3plus-mobilenetv2"))
def deeplabv3plus_mobilenetv2(*, num_classes: int, aux_head: bool = False) -> SegmentationModel:
    """DeepLabV3+ on MobileNetV2 (OS8), mmseg's ``deeplabv3plus_m-v2-d8``."""
    return _v3plus(MobileNetV2(), num_classes, aux_head)


@register(card("deeplabv3plus-r101"))
def deeplabv3plus_r101(*, num_classes: int, aux_head: bool = False) -> SegmentationModel:
    """DeepLabV3+ on ResNetV1c-101 (OS8), mmseg's ``deeplabv3plus_r101-d8``."""
    return _v3plus(resnet101_v1c(), num_classes, aux_head)
