"""ICNet: image cascade network for real-time segmentation of high-resolution images.

Zhao, Qi, Shen, Shi & Jia, "ICNet for Real-Time Semantic Segmentation on High-Resolution Images",
ECCV 2018 (https://github.com/hszhao/ICNet). This is the network of the official deploy prototxt
``evaluation/prototxt/icnet_cityscapes.prototxt`` (the paper's Cityscapes model), not
mmsegmentation's ICNet (a full-width ResNetV1c-50 that differs throughout):

- ``sub2``: the input resized to 1/2 (bilinear, corner-aligned like Caffe's Interp) through a
  half-width PSPNet-50 (Caffe-style strides) up to conv3_1 (1/16);
- ``sub4``: conv3_1 resized to 1/2 again, the rest of the (shared) network with dilated conv4/conv5
  (1/32); pyramid pooling (bins 1, 2, 3, 6) **summed** with its input, a 1x1 conv-BN-ReLU to 256;
- ``sub1``: three 3x3/2 conv-BN-ReLU (32, 32, 64) on the full input (1/8);
- cascade feature fusion (CFF): the low-resolution input upsampled x2 and a 3x3 dilation-2 conv-BN,
  plus a 1x1 conv-BN of the high-resolution input, ReLU; CFF(sub4, conv3_1), then CFF(that, sub1);
  a 1x1 classifier and a x2 upsample: logits at stride 4 (the prototxt upsamples first; both are
  linear, so classifying first gives the same logits at a quarter of the cost);
- training only (``aux_head=True``): a classifier per CFF for the cascade label guidance.

Sizes follow Caffe's formulas where they matter; docs/models/icnet.md has the differences and the
parameter count.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import Conv2dNormActivation

from archs.backbones.resnet import ResNet
from archs.base import register
from archs.cards import card
from archs.common import conv_bn_relu

__all__ = ["ICNet", "CascadeFeatureFusion", "icnet"]


def _half_size(x: Tensor) -> tuple[int, int]:
    """Caffe Interp ``shrink_factor: 2``: (n - 1) // 2 + 1 per side."""
    h, w = x.shape[-2:]
    return (h - 1) // 2 + 1, (w - 1) // 2 + 1


class CascadeFeatureFusion(nn.Module):
    """ICNet's CFF unit: x2 upsample + 3x3 dilation-2 conv-BN on ``low``, 1x1 conv-BN on ``high``, sum, ReLU.

    Args:
        low_channels: channels of the low-resolution input.
        high_channels: channels of the high-resolution input.
        out_channels: output channels.
        aux_classes: classes of the training-only classifier on the upsampled ``low`` (None: none).
    """

    def __init__(self, low_channels: int, high_channels: int, out_channels: int, aux_classes: int | None = None):
        super().__init__()
        self.low_conv = Conv2dNormActivation(
            low_channels, out_channels, 3, dilation=2, norm_layer=nn.BatchNorm2d, activation_layer=None
        )
        self.high_proj = Conv2dNormActivation(
            high_channels, out_channels, 1, norm_layer=nn.BatchNorm2d, activation_layer=None
        )
        self.aux_classifier = nn.Conv2d(low_channels, aux_classes, 1) if aux_classes else None

    def forward(self, low: Tensor, high: Tensor) -> tuple[Tensor, Tensor | None]:
        low = F.interpolate(low, size=high.shape[-2:], mode="bilinear", align_corners=True)
        out = F.relu(self.low_conv(low) + self.high_proj(high), inplace=True)
        aux = self.aux_classifier(low) if self.aux_classifier is not None and self.training else None
        return out, aux


class ICNet(nn.Module):
    """The three-branch ICNet of the official Cityscapes prototxt.

    ``forward`` returns logits at stride 4; with ``aux_classes`` and in ``train()`` mode it returns
    ``(logits, aux_sub24, aux_sub4)`` (the cascade-label-guidance outputs at strides 8 and 16).

    Args:
        num_classes: output classes.
        bins: pyramid pooling bin sizes.
        aux_classes: build the training-only CFF classifiers.
    """

    def __init__(self, num_classes: int, *, bins: Sequence[int] = (1, 2, 3, 6), aux_classes: bool = False):
        super().__init__()
        # PSPNet-50 at half width: stem 32-32-64, bottleneck widths 32/64/128/256, OS8 without the
        # contracted first dilation (conv4_1 already uses dilation 2), stride on the 1x1 (Caffe).
        self.backbone = ResNet(50, base_channels=32, output_stride=8, contract_dilation=False, style="caffe")
        self.bins = tuple(bins)
        self.psp_proj = conv_bn_relu(self.backbone.out_channels[-1], 256, 1)
        self.sub1 = nn.Sequential(
            Conv2dNormActivation(3, 32, 3, stride=2, norm_layer=nn.BatchNorm2d),
            Conv2dNormActivation(32, 32, 3, stride=2, norm_layer=nn.BatchNorm2d),
            Conv2dNormActivation(32, 64, 3, stride=2, norm_layer=nn.BatchNorm2d),
        )
        aux = num_classes if aux_classes else None
        self.cff_sub24 = CascadeFeatureFusion(256, self.backbone.out_channels[1], 128, aux)
        self.cff_sub12 = CascadeFeatureFusion(128, 64, 128, aux)
        self.classifier = nn.Conv2d(128, num_classes, 1)

    def _pyramid_sum(self, x: Tensor) -> Tensor:
        out = x
        size = x.shape[-2:]
        for b in self.bins:
            pooled = F.adaptive_avg_pool2d(x, b)
            if b == 1:  # a resize of a 1x1 map is a broadcast
                out = out + pooled
            else:
                out = out + F.interpolate(pooled, size=size, mode="bilinear", align_corners=True)
        return out

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        backbone = self.backbone
        # sub2: 1/2 input -> conv3_1 at 1/16.
        sub2 = F.interpolate(x, size=_half_size(x), mode="bilinear", align_corners=True)
        c = backbone.layer1(backbone.maxpool(backbone.stem(sub2)))
        conv3_1 = backbone.layer2[0](c)
        # sub4: conv3_1 shrunk to 1/32, the rest of the (shared-weight) network.
        c = F.interpolate(conv3_1, size=_half_size(conv3_1), mode="bilinear", align_corners=True)
        for block in islice(backbone.layer2, 1, None):
            c = block(c)
        c = backbone.layer4(backbone.layer3(c))
        sub4 = self.psp_proj(self._pyramid_sum(c))
        # sub1: full input -> 1/8.
        sub1 = self.sub1(x)
        sub24, aux_sub4 = self.cff_sub24(sub4, conv3_1)
        sub12, aux_sub24 = self.cff_sub12(sub24, sub1)
        logits = self.classifier(sub12)
        h, w = logits.shape[-2:]
        logits = F.interpolate(logits, size=(2 * h, 2 * w), mode="bilinear", align_corners=True)
        if aux_sub4 is not None:
            return logits, aux_sub24, aux_sub4
        return logits


@register(card("icnet"))
def icnet(*, num_classes: int, aux_head: bool = False) -> ICNet:
    """ICNet as in the official Cityscapes prototxt.

    Args:
        aux_head: add the training-only cascade-label-guidance classifiers.
    """
    return ICNet(num_classes, aux_classes=aux_head)
