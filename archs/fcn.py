"""FCN: fully convolutional networks, in the dilated-backbone form of mmsegmentation's model zoo.

Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015
(https://github.com/shelhamer/fcn.berkeleyvision.org). The registered rows are the baselines of
the SegFormer paper's comparison table (Xie et al., NeurIPS 2021, Table 4), which are
mmsegmentation's configurations (https://github.com/open-mmlab/mmsegmentation, Apache-2.0,
``configs/fcn/fcn_r101-d8_*``, ``configs/mobilenet_v2/*fcn*``):

- backbone: ResNetV1c-101 or MobileNetV2, dilated to output stride 8;
- ``FCNHead(channels=512, num_convs=2, kernel_size=3, concat_input=True)``: two 3x3 conv-BN-ReLU
  on the last stage, the input concatenated back and fused by a 3x3 conv-BN-ReLU
  (``conv_cat``), Dropout2d(0.1), and a 1x1 classifier; logits at stride 8;
- training adds an auxiliary ``FCNHead(channels=256, num_convs=1, concat_input=False)`` on stage 3
  (loss weight 0.4). It is not part of the inference model, but the published parameter counts
  (mmseg 0.x ``get_flops.py``) include it: ``aux_head=True`` builds it to reproduce them.

This module also holds what the CNN families share: `SegmentationModel` (backbone + head +
optional training-only auxiliary head) and `convert_mmseg_state_dict`, the mapping of an
mmsegmentation checkpoint (``backbone.*``, ``decode_head.*``, ``auxiliary_head.*``) onto our keys.

``fcn_r101_torchvision`` reproduces torchvision's ``fcn_resnet101`` exactly (7x7 stem, one 3x3
conv in the head, no concatenation), so that torchvision's weights load through
`convert_torchvision_fcn_state_dict`. It is not a registered row.

The original networks of the paper, FCN-32s, FCN-16s and FCN-8s on VGG-16 (`FCNVGG`, registered as
``fcn{32,16,8}s-vgg16``), are in the last section, following the reference Caffe nets of
https://github.com/shelhamer/fcn.berkeleyvision.org (``voc-fcn{32,16,8}s/net.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import Conv2dNormActivation

from archs.backbones.mobilenetv2 import MobileNetV2, convert_mmseg_mobilenetv2_keys
from archs.backbones.resnet import (
    ResNet,
    convert_mmseg_backbone_keys,
    convert_torchvision_resnet_keys,
    resnet101_torchvision,
    resnet101_v1c,
)
from archs.backbones.vgg import VGG16, vgg_fc_convolutions
from archs.base import ArchSpec, Published, Weights, register
from archs.deconvnet import CAFFE_VGG_MEAN, learned_upsample

__all__ = [
    "BilinearUpsample",
    "FCNVGG",
    "FCNHead",
    "SegmentationModel",
    "convert_mmseg_state_dict",
    "convert_torchvision_fcn_state_dict",
    "fcn_mobilenetv2",
    "fcn_r101",
    "fcn_r101_torchvision",
    "fcn_vgg16",
    "fcn8s_vgg16",
    "fcn8s_vgg16_resizeconv",
    "fcn16s_vgg16",
    "fcn32s_vgg16",
]

MMSEG_URL = "https://download.openmmlab.com/mmsegmentation/v0.5"
# Where the published Params/GFLOPs/FPS/mIoU rows come from.
SEGFORMER_TABLE = "SegFormer (Xie et al., NeurIPS 2021) Table 4"
AUX_NOTE = (
    "published params (mmseg 0.x get_flops.py counts every parameter) include the training-only auxiliary "
    "FCN head; the inference model has none (aux_head=True reproduces the count)"
)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> nn.Module:
    """Conv (no bias) -> BN -> ReLU with "same" padding: mmseg's ``ConvModule``, torchvision's layout."""
    return Conv2dNormActivation(
        in_channels, out_channels, kernel_size, dilation=dilation, norm_layer=nn.BatchNorm2d, inplace=True
    )


class FCNHead(nn.Module):
    """mmseg's ``FCNHead``: ``num_convs`` conv-BN-ReLU, optional input concat + fuse, 1x1 classifier.

    Args:
        in_channels: channels of the input feature map.
        channels: width of the convolutions.
        num_classes: output classes.
        num_convs: number of conv-BN-ReLU on the input (0 allowed only with ``concat_input=False``).
        kernel_size: of those convolutions and of ``conv_cat``.
        concat_input: concatenate the input with the convolutions' output and fuse with a conv.
        dropout: Dropout2d probability before the classifier (training only).
        in_index: which backbone output the head reads.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        *,
        num_convs: int = 2,
        kernel_size: int = 3,
        concat_input: bool = True,
        dropout: float = 0.1,
        in_index: int = -1,
    ) -> None:
        super().__init__()
        if num_convs == 0 and in_channels != channels:
            raise ValueError("num_convs=0 needs in_channels == channels")
        convs = [conv_bn_relu(in_channels if i == 0 else channels, channels, kernel_size) for i in range(num_convs)]
        self.convs = nn.Sequential(*convs)
        self.conv_cat = conv_bn_relu(in_channels + channels, channels, kernel_size) if concat_input else None
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.in_index = in_index

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        x = features[self.in_index]
        out = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.classifier(self.dropout(out))


class SegmentationModel(nn.Module):
    """A backbone returning a list of stage features, a decode head, and an optional auxiliary head.

    ``forward`` returns the decode head's logits (at the head's stride). With an auxiliary head, in
    ``train()`` mode it returns ``(logits, aux_logits)``; in ``eval()`` mode the auxiliary head is
    not run, so it costs no FLOPs (its parameters still count: build without it for inference).

    Args:
        backbone: module mapping an image to a list of feature maps.
        head: module mapping that list to logits.
        aux_head: training-only head mapping that list to logits, or None.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, aux_head: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        features = self.backbone(x)
        logits = self.head(features)
        if self.aux_head is not None and self.training:
            return logits, self.aux_head(features)
        return logits


def mmseg_aux_head(backbone: ResNet | MobileNetV2, num_classes: int) -> FCNHead:
    """The auxiliary head of every mmseg R101/MobileNetV2 config: one 3x3 conv (256) on stage 3."""
    return FCNHead(backbone.out_channels[2], 256, num_classes, num_convs=1, concat_input=False, in_index=2)


def _mmseg_module_path(path: str) -> str:
    """mmseg ``ConvModule``/``DepthwiseSeparableConvModule`` names -> ours (torchvision layout)."""
    names = {"conv": "0", "bn": "1", "depthwise_conv": "0", "pointwise_conv": "1", "conv_seg": "classifier"}
    return ".".join(names.get(part, part) for part in path.split("."))


def convert_mmseg_state_dict(state_dict: Mapping[str, Tensor], *, aux_head: bool = False) -> dict[str, Tensor]:
    """An mmsegmentation FCN/PSPNet/DeepLabV3+ checkpoint (ResNetV1c or MobileNetV2) -> our keys.

    Args:
        state_dict: the checkpoint's ``state_dict`` (or the whole checkpoint dict holding it).
        aux_head: keep the auxiliary head (``aux_head.*``) for a model built with ``aux_head=True``;
            by default it is dropped, as the inference model has none.
    """
    if "state_dict" in state_dict:
        state_dict = state_dict["state_dict"]
    if "backbone.conv1.conv.weight" in state_dict:
        backbone = convert_mmseg_mobilenetv2_keys(state_dict)
    else:
        backbone = convert_mmseg_backbone_keys(state_dict)
    out = {f"backbone.{k}": v for k, v in backbone.items()}
    heads = {"decode_head.": "head."}
    if aux_head:
        heads["auxiliary_head."] = "aux_head."
    for key, value in state_dict.items():
        for src, dst in heads.items():
            if key.startswith(src):
                module, _, leaf = key[len(src) :].rpartition(".")
                out[f"{dst}{_mmseg_module_path(module)}.{leaf}"] = value
    return out


def convert_torchvision_fcn_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """torchvision ``fcn_resnet101`` keys -> `fcn_r101_torchvision` keys (``aux_classifier`` dropped)."""
    out = {f"backbone.{k}": v for k, v in convert_torchvision_resnet_keys(state_dict, "backbone.").items()}
    # torchvision's FCNHead is Sequential(conv, bn, relu, dropout, conv).
    head = {"classifier.0.": "head.convs.0.0.", "classifier.1.": "head.convs.0.1.", "classifier.4.": "head.classifier."}
    for key, value in state_dict.items():
        for src, dst in head.items():
            if key.startswith(src):
                out[dst + key[len(src) :]] = value
    return out


def mmseg_weights(algo: str, ade20k: str, cityscapes: str) -> tuple[Weights, ...]:
    """Official mmseg checkpoints (``<config>_<date>_<time>-<hash>`` file stems) of one row."""
    weights = []
    for dataset, stem in (("ade20k", ade20k), ("cityscapes", cityscapes)):
        url = f"{MMSEG_URL}/{algo}/{stem.rsplit('_', 2)[0]}/{stem}.pth"
        weights.append(Weights(dataset, url, "mmseg", None, convert_mmseg_state_dict))
    return tuple(weights)


def mmseg_published(params_m: float, ade20k: tuple, cityscapes: tuple, source: str) -> dict[str, Published]:
    """Per-dataset published figures from (GFLOPs, FPS, mIoU) tuples; the params include the aux head."""
    return {
        "ade20k": Published(params_m, *ade20k, source=source, note=AUX_NOTE),
        "cityscapes": Published(params_m, *cityscapes, source=source, note=AUX_NOTE),
    }


@register(
    ArchSpec(
        name="fcn-mobilenetv2",
        family="FCN",
        encoder="MobileNetV2",
        scale="realtime",
        paper="Long et al., CVPR 2015",
        year=2015,
        output_stride=8,
        published=mmseg_published(
            9.8,
            (39.6, 64.4, 19.7),
            (317.1, 14.2, 61.5),
            f"{SEGFORMER_TABLE}; FPS/mIoU = mmseg configs/mobilenet_v2 README (V100; ADE 512x512 160k, "
            "Cityscapes 512x1024 80k, whole 1024x2048 inference)",
        ),
        weights=mmseg_weights(
            "mobilenet_v2",
            "fcn_m-v2-d8_512x512_160k_ade20k_20200825_214953-c40e1095",
            "fcn_m-v2-d8_512x1024_80k_cityscapes_20200825_124817-d24c28c1",
        ),
        notes="mmseg fcn_m-v2-d8: MobileNetV2 (OS8) + FCNHead(320->512, 2 convs, concat input).",
    )
)
def fcn_mobilenetv2(*, num_classes: int, aux_head: bool = False) -> SegmentationModel:
    """FCN on MobileNetV2 (OS8), mmseg's ``fcn_m-v2-d8``.

    Args:
        num_classes: output classes.
        aux_head: add the training-only auxiliary FCN head on the 96-channel stage.
    """
    backbone = MobileNetV2()
    head = FCNHead(backbone.out_channels[-1], 512, num_classes)
    return SegmentationModel(backbone, head, mmseg_aux_head(backbone, num_classes) if aux_head else None)


@register(
    ArchSpec(
        name="fcn-r101",
        family="FCN",
        encoder="ResNet-101",
        scale="non-realtime",
        paper="Long et al., CVPR 2015",
        year=2015,
        output_stride=8,
        published=mmseg_published(
            68.6,
            (275.7, 14.8, 41.4),
            (2203.3, 1.2, 76.6),
            f"{SEGFORMER_TABLE}; FPS/mIoU = mmseg configs/fcn README (V100; ADE 512x512 160k ms+flip; "
            "Cityscapes 769x769 80k slide, ms+flip)",
        ),
        weights=mmseg_weights(
            "fcn",
            "fcn_r101-d8_512x512_160k_ade20k_20200615_105816-fd192bd5",
            "fcn_r101-d8_512x1024_80k_cityscapes_20200606_113038-3fb937eb",
        ),
        notes="mmseg fcn_r101-d8: ResNetV1c-101 (OS8) + FCNHead(2048->512, 2 convs, concat input).",
    )
)
def fcn_r101(*, num_classes: int, aux_head: bool = False) -> SegmentationModel:
    """FCN on ResNetV1c-101 (OS8), mmseg's ``fcn_r101-d8``.

    Args:
        num_classes: output classes.
        aux_head: add the training-only auxiliary FCN head on stage 3 (1024 channels).
    """
    backbone = resnet101_v1c()
    head = FCNHead(backbone.out_channels[-1], 512, num_classes)
    return SegmentationModel(backbone, head, mmseg_aux_head(backbone, num_classes) if aux_head else None)


def fcn_r101_torchvision(*, num_classes: int) -> SegmentationModel:
    """torchvision's ``fcn_resnet101`` architecture (not a registered row).

    ResNet-101 with the 7x7 stem dilated to OS8, and a head of one 3x3 conv (2048->512) + BN + ReLU,
    Dropout(0.1) and a 1x1 classifier (no input concatenation). Load torchvision weights with
    `convert_torchvision_fcn_state_dict`. torchvision's model also resizes the logits to the input
    size, which segbench's harness does.

    Args:
        num_classes: output classes.
    """
    backbone = resnet101_torchvision()
    head = FCNHead(2048, 512, num_classes, num_convs=1, concat_input=False)
    return SegmentationModel(backbone, head)


# --- FCN-32s / FCN-16s / FCN-8s on VGG-16: the paper's own networks -----------------------------------
#
# Long et al. 2015 and the reference Caffe nets (fcn.berkeleyvision.org voc-fcn{32,16,8}s/net.py):
# VGG-16 with conv1_1 padded by 100, fc6 (7x7, 4096) and fc7 (1x1, 4096) as convolutions, a 1x1
# score layer, skips from pool4 (16s, 8s) and pool3 (8s) scored by 1x1 convolutions and added after
# 2x upsampling, a final fixed bilinear upsampling and a crop back to the input.

# Crop offsets of the reference nets (caffe.coord_map): with conv1_1 padded by 100, pixel y of the
# cropped layer aligns with pixel y - offset of the input. The resize-convolution option keeps the
# geometry of the 4x4/2 transposed convolution it replaces, so the offsets hold for both.
FCN_VGG_CROPS = {32: {"out": 19}, 16: {"pool4": 5, "out": 27}, 8: {"pool4": 5, "pool3": 9, "out": 31}}
FCN_VGG_SOURCE = "fcn.berkeleyvision.org voc-fcn{32,16,8}s/net.py"
FCN_VGG_PARAMS = (
    "FCN paper (Long et al., CVPR 2015) Table 1: FCN-VGG16 134M parameters (the paper's table compares "
    "FCN-32s; the skips add 0.02 M)"
)
FCN_VGG_PARAMS_NOTE = (
    "21 classes (PASCAL VOC); segbench holds the fixed bilinear upsampling as a non-trainable depthwise buffer "
    "(Caffe's lr_mult 0 Deconvolution is a full KxK diagonal filter: +1.8 M at 32s, +0.45 M at 16s, +0.11 M at 8s)"
)


def bilinear_kernel(size: int) -> Tensor:
    """The ``size`` x ``size`` bilinear interpolation filter of a transposed convolution (FCN's ``upsample_filt``)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    taps = 1 - (torch.arange(size, dtype=torch.float64) - center).abs() / factor
    return (taps[:, None] * taps[None, :]).float()


class BilinearUpsample(nn.Module):
    """Fixed bilinear upsampling by an integer ``factor``: FCN's ``lr_mult: 0`` Deconvolution (kernel 2f, stride f).

    Caffe's layer is a full K x K transposed convolution whose filters are bilinear on the diagonal
    and zero elsewhere; the depthwise transposed convolution here computes the same output with K
    times fewer weights, kept as a (non-trainable) buffer.

    Args:
        channels: channels (classes) upsampled independently.
        factor: upsampling factor; output size = (input size + 1) * factor.
    """

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


def _fcn_vgg_spec(stride: int, miou: float, *, name: str = "", family: str = "", notes: str = "") -> ArchSpec:
    return ArchSpec(
        name=name or f"fcn{stride}s-vgg16",
        family=family or f"FCN-{stride}s",
        encoder="VGG-16",
        scale="non-realtime",
        paper="Long et al., CVPR 2015",
        year=2015,
        output_stride=1,
        mean=CAFFE_VGG_MEAN,
        std=(1.0, 1.0, 1.0),
        published={
            dataset: Published(params_m=134.0, source=FCN_VGG_PARAMS, note=FCN_VGG_PARAMS_NOTE)
            for dataset in ("ade20k", "cityscapes")
        },
        notes=(
            f"{FCN_VGG_SOURCE}: conv1_1 pad 100, fc6 7x7/fc7 1x1 (4096), crops {FCN_VGG_CROPS[stride]}; "
            f"PASCAL VOC 2011 seg11valid mean IU {miou} (FCN TPAMI 2017 table, reproduced in the lecture); "
            "input: Caffe BGR mean subtraction, no scaling. " + notes
        ).strip(),
    )


@register(_fcn_vgg_spec(32, 63.6))
def fcn32s_vgg16(*, num_classes: int) -> FCNVGG:
    """FCN-32s on VGG-16: one fixed 32x bilinear upsampling of the fc7 scores.

    Args:
        num_classes: output classes.
    """
    return FCNVGG(num_classes, stride=32)


@register(_fcn_vgg_spec(16, 65.0))
def fcn16s_vgg16(*, num_classes: int, upsampling: str = "transposed") -> FCNVGG:
    """FCN-16s on VGG-16: fc7 scores upsampled 2x, plus the pool4 skip, then a fixed 16x upsampling.

    Args:
        num_classes: output classes.
        upsampling: ``"transposed"`` (paper) or ``"resize"`` for the learned 2x upsampling.
    """
    return FCNVGG(num_classes, stride=16, upsampling=upsampling)


@register(_fcn_vgg_spec(8, 65.5))
def fcn8s_vgg16(*, num_classes: int, upsampling: str = "transposed") -> FCNVGG:
    """FCN-8s on VGG-16: the 16s fusion upsampled 2x, plus the pool3 skip, then a fixed 8x upsampling.

    The staged net (``voc-fcn8s``); the at-once variant additionally scales the pool4/pool3 inputs
    by fixed constants (no parameters, same cost).

    Args:
        num_classes: output classes.
        upsampling: ``"transposed"`` (paper) or ``"resize"`` for the two learned 2x upsamplings.
    """
    return FCNVGG(num_classes, stride=8, upsampling=upsampling)


@register(
    _fcn_vgg_spec(
        8,
        65.5,
        name="fcn8s-vgg16-resizeconv",
        family="FCN-8s (resize-conv)",
        notes="segbench variant for the lecture's checkerboard comparison: the two learned 2x upsamplings are "
        "resize-convolutions (nearest x2 + 3x3 conv, Odena et al., Distill 2016); the VOC figure is FCN-8s's.",
    )
)
def fcn8s_vgg16_resizeconv(*, num_classes: int) -> FCNVGG:
    """FCN-8s on VGG-16 with resize-convolutions instead of transposed convolutions for the 2x upsamplings.

    Args:
        num_classes: output classes.
    """
    return FCNVGG(num_classes, stride=8, upsampling="resize")


def fcn_vgg16(*, num_classes: int, stride: int = 8, upsampling: str = "transposed") -> FCNVGG:
    """Any FCN-VGG16 variant (not a registered row; see ``fcn{32,16,8}s-vgg16``).

    Args:
        num_classes: output classes.
        stride: 32, 16 or 8.
        upsampling: ``"transposed"`` or ``"resize"``.
    """
    return FCNVGG(num_classes, stride=stride, upsampling=upsampling)
