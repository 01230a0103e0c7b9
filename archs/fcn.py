"""FCN: fully convolutional networks, the paper's VGG-16 nets and mmsegmentation's dilated form.

Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015;
reference Caffe nets https://github.com/shelhamer/fcn.berkeleyvision.org (``voc-fcn{32,16,8}s/net.py``).
The ``fcn-r101``/``fcn-mobilenetv2`` rows are mmsegmentation's ``fcn_r101-d8``/``fcn_m-v2-d8``
(Apache-2.0), the baselines of the SegFormer paper's Table 4: a dilated backbone (output stride 8)
and ``FCNHead(channels=512, num_convs=2, concat_input=True)``; logits at stride 8. The published
parameters count the training-only auxiliary head (``aux_head=True`` builds it).

The ``fcn{32,16,8}s-vgg16`` rows are the paper's own networks: VGG-16 with ``conv1_1`` padded by
100, fc6/fc7 as convolutions, 1x1 score layers on pool4/pool3 added after learned 2x upsamplings,
a fixed bilinear upsampling and a crop back to the input. Figures and sources: docs/models/fcn.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from archs.backbones.mobilenetv2 import MobileNetV2
from archs.backbones.resnet import ResNet, resnet101_torchvision, resnet101_v1c
from archs.backbones.vgg import VGG16, vgg_fc_convolutions
from archs.base import register
from archs.cards import card
from archs.common import FCNHead, SegmentationModel, learned_upsample, mmseg_model

__all__ = [
    "FCN_VGG_CROPS",
    "BilinearUpsample",
    "FCNVGG",
    "fcn8s_vgg16",
    "fcn8s_vgg16_resizeconv",
    "fcn16s_vgg16",
    "fcn32s_vgg16",
    "fcn_mobilenetv2",
    "fcn_r101",
    "fcn_r101_torchvision",
]


def _fcn_mmseg(backbone: ResNet | MobileNetV2, num_classes: int, aux_head: bool) -> SegmentationModel:
    return mmseg_model(backbone, FCNHead(backbone.out_channels[-1], 512, num_classes), num_classes, aux_head)


@register(card("fcn-mobilenetv2"))
def fcn_mobilenetv2(*, num_classes: int, aux_head: bool = False) -> SegmentationModel:
    """FCN on MobileNetV2 (OS8), mmseg's ``fcn_m-v2-d8``."""
    return _fcn_mmseg(MobileNetV2(), num_classes, aux_head)


@register(card("fcn-r101"))
def fcn_r101(*, num_classes: int, aux_head: bool = False) -> SegmentationModel:
    """FCN on ResNetV1c-101 (OS8), mmseg's ``fcn_r101-d8``."""
    return _fcn_mmseg(resnet101_v1c(), num_classes, aux_head)


def fcn_r101_torchvision(*, num_classes: int) -> SegmentationModel:
    """torchvision's ``fcn_resnet101`` architecture (not a registered row).

    ResNet-101 with the 7x7 stem dilated to OS8, and a head of one 3x3 conv (2048->512) + BN + ReLU,
    Dropout(0.1) and a 1x1 classifier (no input concatenation). Load torchvision weights with
    `archs.convert.torchvision.convert_torchvision_fcn`.

    Args:
        num_classes: output classes.
    """
    head = FCNHead(2048, 512, num_classes, num_convs=1, concat_input=False)
    return SegmentationModel(resnet101_torchvision(), head)


# Crop offsets of the reference nets (caffe.coord_map): with conv1_1 padded by 100, pixel y of the
# cropped layer aligns with pixel y - offset of the input, for either kind of learned upsampling.
FCN_VGG_CROPS = {32: {"out": 19}, 16: {"pool4": 5, "out": 27}, 8: {"pool4": 5, "pool3": 9, "out": 31}}


def bilinear_kernel(size: int) -> Tensor:
    """The ``size`` x ``size`` bilinear interpolation filter of a transposed convolution (FCN's ``upsample_filt``)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    taps = 1 - (torch.arange(size, dtype=torch.float64) - center).abs() / factor
    return (taps[:, None] * taps[None, :]).float()


class BilinearUpsample(nn.Module):
    """Fixed bilinear upsampling by an integer ``factor``: FCN's ``lr_mult: 0`` Deconvolution (kernel 2f, stride f).

    Caffe's layer is a full K x K transposed convolution, bilinear on the diagonal and zero
    elsewhere; the depthwise transposed convolution computes the same with K times fewer weights.

    Args:
        channels: channels (classes) upsampled independently.
        factor: upsampling factor; output size = (input size + 1) * factor.
    """

    weight: Tensor

    def __init__(self, channels: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.channels = channels
        kernel = bilinear_kernel(2 * factor).expand(channels, 1, -1, -1).clone()
        self.register_buffer("weight", kernel, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv_transpose2d(x, self.weight, stride=self.factor, groups=self.channels)


def _crop(x: Tensor, offset: int, size: Sequence[int]) -> Tensor:
    return x[..., offset : offset + size[0], offset : offset + size[1]]


class FCNVGG(nn.Module):
    """FCN-32s, FCN-16s or FCN-8s on VGG-16, as the reference Caffe nets; logits at the input resolution.

    Args:
        num_classes: output classes.
        stride: 32, 16 or 8 (the stride of the finest skip).
        upsampling: the learned 2x upsamplings of 16s/8s (``upscore2``, ``upscore_pool4``):
            ``"transposed"`` (the paper: 4x4/2 transposed convolution, initialised bilinear) or
            ``"resize"`` (nearest-neighbour x2 then 3x3 convolution; same output geometry).
    """

    def __init__(self, num_classes: int, *, stride: int = 8, upsampling: str = "transposed") -> None:
        super().__init__()
        if stride not in FCN_VGG_CROPS:
            raise ValueError(f"stride must be 32, 16 or 8, got {stride}")
        self.stride = stride
        self.backbone = VGG16(first_padding=100)
        self.fc = vgg_fc_convolutions()
        self.score_fr = nn.Conv2d(4096, num_classes, 1)
        if stride <= 16:
            self.score_pool4 = nn.Conv2d(512, num_classes, 1)
            self.upscore2 = learned_upsample(upsampling, num_classes, num_classes, padding=0)
        if stride == 8:
            self.score_pool3 = nn.Conv2d(256, num_classes, 1)
            self.upscore_pool4 = learned_upsample(upsampling, num_classes, num_classes, padding=0)
        self.upscore = BilinearUpsample(num_classes, stride)
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):  # surgery.interp: bilinear on the diagonal
                with torch.no_grad():
                    m.weight.zero_()
                    m.weight[range(num_classes), range(num_classes)] = bilinear_kernel(m.kernel_size[0])

    def forward(self, x: Tensor) -> Tensor:
        _, _, pool3, pool4, pool5 = self.backbone(x)
        crops = FCN_VGG_CROPS[self.stride]
        score = self.score_fr(self.fc(pool5))
        if self.stride <= 16:
            score = self.upscore2(score)
            score = score + _crop(self.score_pool4(pool4), crops["pool4"], score.shape[-2:])
        if self.stride == 8:
            score = self.upscore_pool4(score)
            score = score + _crop(self.score_pool3(pool3), crops["pool3"], score.shape[-2:])
        return _crop(self.upscore(score), crops["out"], x.shape[-2:])


@register(card("fcn32s-vgg16"))
def fcn32s_vgg16(*, num_classes: int) -> FCNVGG:
    """FCN-32s on VGG-16: one fixed 32x bilinear upsampling of the fc7 scores."""
    return FCNVGG(num_classes, stride=32)


@register(card("fcn16s-vgg16"))
def fcn16s_vgg16(*, num_classes: int, upsampling: str = "transposed") -> FCNVGG:
    """FCN-16s on VGG-16: fc7 scores upsampled 2x, plus the pool4 skip, then a fixed 16x upsampling.

    Args:
        upsampling: ``"transposed"`` (paper) or ``"resize"`` for the learned 2x upsampling.
    """
    return FCNVGG(num_classes, stride=16, upsampling=upsampling)


@register(card("fcn8s-vgg16"))
def fcn8s_vgg16(*, num_classes: int, upsampling: str = "transposed") -> FCNVGG:
    """FCN-8s on VGG-16: the 16s fusion upsampled 2x, plus the pool3 skip, then a fixed 8x upsampling.

    The staged net (``voc-fcn8s``); the at-once variant only scales the pool4/pool3 inputs by fixed constants.

    Args:
        upsampling: ``"transposed"`` (paper) or ``"resize"`` for the two learned 2x upsamplings.
    """
    return FCNVGG(num_classes, stride=8, upsampling=upsampling)


@register(card("fcn8s-vgg16-resizeconv"))
def fcn8s_vgg16_resizeconv(*, num_classes: int) -> FCNVGG:
    """FCN-8s on VGG-16 with resize-convolutions instead of transposed convolutions for the 2x upsamplings."""
    return FCNVGG(num_classes, stride=8, upsampling="resize")
