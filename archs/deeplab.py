"""DeepLabV3+: atrous spatial pyramid pooling with an encoder-decoder, as mmsegmentation configures it.

Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic Image Segmentation",
ECCV 2018 (https://github.com/tensorflow/models/tree/master/research/deeplab). The registered
rows are the SegFormer paper's baselines (Xie et al., NeurIPS 2021, Table 4), i.e.
mmsegmentation's ``deeplabv3plus_r101-d8`` and ``deeplabv3plus_m-v2-d8`` configurations
(https://github.com/open-mmlab/mmsegmentation, Apache-2.0), ``DepthwiseSeparableASPPHead``:

- ASPP on the last stage (output stride 8) with 512 channels: image pooling (global average pool,
  1x1 conv-BN-ReLU, broadcast back), a 1x1 conv-BN-ReLU, and depthwise-separable 3x3 branches at
  rates 12, 24, 36 (= 6, 12, 18 at output stride 16); concatenated and fused by a 3x3 conv-BN-ReLU;
- decoder: the stage-1 features (stride 4) projected by a 1x1 conv-BN-ReLU to 48 channels,
  concatenated with the bilinearly upsampled ASPP output (align_corners=False), two
  depthwise-separable 3x3 conv-BN-ReLU blocks (512), Dropout2d(0.1) and a 1x1 classifier; logits
  at stride 4. A depthwise-separable block is a depthwise 3x3 conv-BN-ReLU then a 1x1 conv-BN-ReLU;
- the training-only auxiliary FCN head on stage 3 is counted in the published parameters (see
  `archs.fcn`), built only with ``aux_head=True``.

mmseg checkpoints load through `archs.fcn.convert_mmseg_state_dict`.

``deeplabv3_r101_torchvision`` (not a registered row) is torchvision's ``deeplabv3_resnet101``
(DeepLab v3, no decoder), built from our ResNet-101 with the 7x7 stem and torchvision's own
``DeepLabHead``, so that torchvision weights load through `convert_torchvision_deeplabv3_state_dict`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.ops.misc import Conv2dNormActivation

from archs.backbones.mobilenetv2 import MobileNetV2
from archs.backbones.resnet import convert_torchvision_resnet_keys, resnet101_torchvision, resnet101_v1c
from archs.base import ArchSpec, register
from archs.fcn import (
    SEGFORMER_TABLE,
    SegmentationModel,
    conv_bn_relu,
    mmseg_aux_head,
    mmseg_published,
    mmseg_weights,
)

__all__ = [
    "DeepLabV3PlusHead",
    "convert_torchvision_deeplabv3_state_dict",
    "deeplabv3_r101_torchvision",
    "deeplabv3plus_mobilenetv2",
    "deeplabv3plus_r101",
    "separable_conv_bn_relu",
]


def separable_conv_bn_relu(in_channels: int, out_channels: int, dilation: int = 1) -> nn.Sequential:
    """Depthwise 3x3 conv-BN-ReLU, then pointwise 1x1 conv-BN-ReLU (mmcv's ``DepthwiseSeparableConvModule``)."""
    depthwise = Conv2dNormActivation(
        in_channels, in_channels, 3, dilation=dilation, groups=in_channels, norm_layer=nn.BatchNorm2d, inplace=True
    )
    return nn.Sequential(depthwise, conv_bn_relu(in_channels, out_channels, 1))


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


@register(
    ArchSpec(
        name="deeplabv3plus-mobilenetv2",
        family="DeepLabV3+",
        encoder="MobileNetV2",
        scale="realtime",
        paper="Chen et al., ECCV 2018",
        year=2018,
        output_stride=4,
        published=mmseg_published(
            15.4,
            (69.4, 43.1, 34.0),
            (555.4, 8.4, 75.2),
            f"{SEGFORMER_TABLE}; FPS/mIoU = mmseg configs/mobilenet_v2 README (V100; ADE 512x512 160k, "
            "Cityscapes 512x1024 80k, whole 1024x2048 inference)",
        ),
        weights=mmseg_weights(
            "mobilenet_v2",
            "deeplabv3plus_m-v2-d8_512x512_160k_ade20k_20200825_223255-465a01d4",
            "deeplabv3plus_m-v2-d8_512x1024_80k_cityscapes_20200825_124836-d256dd4b",
        ),
        notes="mmseg deeplabv3plus_m-v2-d8: MobileNetV2 (OS8) + separable ASPP (320->512, rates 12/24/36) "
        "+ decoder on the 24-channel stride-4 features.",
    )
)
def deeplabv3plus_mobilenetv2(*, num_classes: int, aux_head: bool = False) -> SegmentationModel:
    """DeepLabV3+ on MobileNetV2 (OS8), mmseg's ``deeplabv3plus_m-v2-d8``.

    Args:
        num_classes: output classes.
        aux_head: add the training-only auxiliary FCN head on the 96-channel stage.
    """
    backbone = MobileNetV2()
    head = DeepLabV3PlusHead(backbone.out_channels[-1], 512, num_classes, low_level_channels=backbone.out_channels[0])
    return SegmentationModel(backbone, head, mmseg_aux_head(backbone, num_classes) if aux_head else None)


@register(
    ArchSpec(
        name="deeplabv3plus-r101",
        family="DeepLabV3+",
        encoder="ResNet-101",
        scale="non-realtime",
        paper="Chen et al., ECCV 2018",
        year=2018,
        output_stride=4,
        published=mmseg_published(
            62.7,
            (255.1, 14.1, 44.1),
            (2032.3, 1.2, 80.9),
            f"{SEGFORMER_TABLE}; FPS = mmseg configs/deeplabv3plus README (V100; ADE 512x512; Cityscapes "
            "769x769 slide); City mIoU = mmseg 80k single scale; ADE mIoU 44.1 has no mmseg README match "
            "(mmseg 160k: 45.47)",
        ),
        weights=mmseg_weights(
            "deeplabv3plus",
            "deeplabv3plus_r101-d8_512x512_160k_ade20k_20200615_123232-38ed86bb",
            "deeplabv3plus_r101-d8_512x1024_80k_cityscapes_20200606_114143-068fcfe9",
        ),
        notes="mmseg deeplabv3plus_r101-d8: ResNetV1c-101 (OS8) + separable ASPP (2048->512, rates 12/24/36) "
        "+ decoder on the 256-channel stride-4 features.",
    )
)
def deeplabv3plus_r101(*, num_classes: int, aux_head: bool = False) -> SegmentationModel:
    """DeepLabV3+ on ResNetV1c-101 (OS8), mmseg's ``deeplabv3plus_r101-d8``.

    Args:
        num_classes: output classes.
        aux_head: add the training-only auxiliary FCN head on stage 3 (1024 channels).
    """
    backbone = resnet101_v1c()
    head = DeepLabV3PlusHead(backbone.out_channels[-1], 512, num_classes, low_level_channels=backbone.out_channels[0])
    return SegmentationModel(backbone, head, mmseg_aux_head(backbone, num_classes) if aux_head else None)


class _LastStageHead(nn.Module):
    """Applies ``classifier`` (a torchvision head) to the last backbone stage."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return self.classifier(features[-1])


def deeplabv3_r101_torchvision(*, num_classes: int) -> SegmentationModel:
    """torchvision's ``deeplabv3_resnet101`` architecture (DeepLab v3; not a registered row).

    ResNet-101 with the 7x7 stem dilated to OS8 and torchvision's ``DeepLabHead``: ASPP with 256
    channels (1x1, dense 3x3 at rates 12/24/36, image pooling), a 1x1 projection + BN + ReLU +
    Dropout(0.5), a 3x3 conv-BN-ReLU and a 1x1 classifier. Load torchvision weights with
    `convert_torchvision_deeplabv3_state_dict`.

    Args:
        num_classes: output classes.
    """
    return SegmentationModel(resnet101_torchvision(), _LastStageHead(DeepLabHead(2048, num_classes)))


def convert_torchvision_deeplabv3_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """torchvision ``deeplabv3_resnet101`` keys -> `deeplabv3_r101_torchvision` keys (aux dropped)."""
    out = {f"backbone.{k}": v for k, v in convert_torchvision_resnet_keys(state_dict, "backbone.").items()}
    out.update({f"head.{k}": v for k, v in state_dict.items() if k.startswith("classifier.")})
    return out
