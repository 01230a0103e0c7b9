"""PSPNet: pyramid scene parsing, as mmsegmentation's model zoo configures it.

Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017 (https://github.com/hszhao/PSPNet).
The registered rows are the SegFormer paper's baselines (Xie et al., NeurIPS 2021, Table 4), i.e.
mmsegmentation's ``pspnet_r101-d8`` and ``pspnet_m-v2-d8`` configurations
(https://github.com/open-mmlab/mmsegmentation, Apache-2.0):

- backbone: ResNetV1c-101 or MobileNetV2, dilated to output stride 8;
- ``PSPHead(channels=512, pool_scales=(1, 2, 3, 6))``: for each bin size, adaptive average
  pooling and a 1x1 conv-BN-ReLU to 512 channels, bilinearly resized back (align_corners=False)
  and concatenated with the input; a 3x3 conv-BN-ReLU bottleneck to 512; Dropout2d(0.1); 1x1
  classifier. Logits at stride 8;
- the training-only auxiliary FCN head on stage 3 is counted in the published parameters, built
  only with ``aux_head=True``. Figures and sources: docs/models/pspnet.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from archs.backbones.mobilenetv2 import MobileNetV2
from archs.backbones.resnet import ResNet, resnet101_v1c
from archs.base import register
from archs.cards import card
from archs.common import SegmentationModel, conv_bn_relu, mmseg_model

__all__ = ["PSPHead", "pspnet_mobilenetv2", "pspnet_r101"]


class PSPHead(nn.Module):
    """mmseg's ``PSPHead``: pyramid pooling, 3x3 bottleneck, Dropout2d, 1x1 classifier.

    Pyramid pooling: per bin size, adaptive average pooling and a 1x1 conv-BN-ReLU, resized back
    bilinearly (align_corners=False) and concatenated with the input.

    Args:
        in_channels: channels of the last backbone stage.
        channels: width of the pooling branches and of the bottleneck.
        num_classes: output classes.
        bins: pyramid bin sizes.
        dropout: Dropout2d probability before the classifier (training only).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        *,
        bins: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), conv_bn_relu(in_channels, channels, 1)) for b in bins
        )
        self.bottleneck = conv_bn_relu(in_channels + len(bins) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        x = features[-1]
        size = x.shape[-2:]
        branches = [x]
        for stage in self.psp_modules:
            branches.append(F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False))
        out = self.bottleneck(torch.cat(branches, dim=1))
        return self.classifier(self.dropout(out))


def _pspnet(backbone: ResNet | MobileNetV2, num_classes: int, aux_head: bool) -> SegmentationModel:
    return mmseg_model(backbone, PSPHead(backbone.out_channels[-1], 512, num_classes), num_classes, aux_head)


@register(card("pspnet-mobilenetv2"))
def pspnet_mobilenetv2(*, num_classes: int, aux_head: bool = False) -> SegmentationModel:
    """PSPNet on MobileNetV2 (OS8), mmseg's ``pspnet_m-v2-d8``."""
    return _pspnet(MobileNetV2(), num_classes, aux_head)


@register(card("pspnet-r101"))
def pspnet_r101(*, num_classes: int, aux_head: bool = False) -> SegmentationModel:
    """PSPNet on ResNetV1c-101 (OS8), mmseg's ``pspnet_r101-d8``."""
    return _pspnet(resnet101_v1c(), num_classes, aux_head)
