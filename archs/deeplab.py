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

The last section holds the lecture's path to v3+: DeepLab v1 (VGG-16 LargeFOV, with the fully
connected CRF of `archs.crf` as a separate registered row), v2 (ResNet-101 + ASPP-L) and v3
(ResNet-101 with multi-grid, ASPP with image pooling, output stride 16 and 8).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead
from torchvision.ops.misc import Conv2dNormActivation

from archs.backbones.mobilenetv2 import MobileNetV2
from archs.backbones.resnet import ResNet, convert_torchvision_resnet_keys, resnet101_torchvision, resnet101_v1c
from archs.backbones.vgg import VGG16
from archs.base import ArchSpec, Published, register
from archs.crf import DEEPLAB_V1_LARGEFOV_CRF, CRFRefinement, DenseCRF
from archs.deconvnet import CAFFE_VGG_MEAN
from archs.fcn import (
    SEGFORMER_TABLE,
    SegmentationModel,
    conv_bn_relu,
    mmseg_aux_head,
    mmseg_published,
    mmseg_weights,
)

__all__ = [
    "ASPPSum",
    "DeepLabLargeFOV",
    "DeepLabV3Head",
    "DeepLabV3PlusHead",
    "convert_torchvision_deeplabv3_state_dict",
    "convert_torchvision_deeplabv3_to_v3",
    "deeplabv1_largefov_vgg16",
    "deeplabv1_largefov_vgg16_crf",
    "deeplabv2_r101",
    "deeplabv3_r101",
    "deeplabv3_r101_os8",
    "deeplabv3_r101_os16",
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


# --- DeepLab v1, v2, v3: the lecture's path from FCN to DeepLabV3+ ----------------------------------
#
# v1: Chen et al., "Semantic Image Segmentation with Deep Convolutional Nets and Fully Connected CRFs",
#     ICLR 2015 (http://liangchiehchen.com/projects/DeepLab.html, deeplab-public). DeepLab-LargeFOV:
#     VGG-16 with 3x3 pooling (pool4/pool5 stride 1) and conv5 dilated by 2 (output stride 8), a 3x3
#     stride-1 average pooling (pool5a), fc6 3x3 with dilation 12 and 1024 channels, fc7 1x1 1024,
#     fc8 1x1 to the classes; bilinear upsampling, then the fully connected CRF (archs.crf).
# v2: Chen et al., "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous
#     Convolution, and Fully Connected CRFs", TPAMI 2017 (deeplab-public-ver2). ResNet-101 (Caffe
#     MSRA: 7x7 stem, stride on the first 1x1 conv of a block), output stride 8 with every block of
#     res4 dilated 2 and of res5 dilated 4; ASPP-L: four 3x3 convolutions to the classes at rates
#     6/12/18/24, summed. (The v2 ResNet's max-pool is Caffe's ceil mode: +1 row/column at some sizes.)
# v3: Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", arXiv:1706.05587,
#     2017 (tensorflow/models research/deeplab). ResNet-101, multi-grid (1, 2, 4) in block4, ASPP:
#     1x1 + three 3x3 atrous convolutions (rates 6/12/18 at output stride 16, doubled at 8) + image
#     pooling, 256 channels with BN, concatenated, 1x1 256 with BN, 1x1 to the classes.

V1_PAPER = "Chen et al., ICLR 2015"
V1_PARAMS = Published(
    params_m=20.5,
    source="DeepLab v1 (Chen et al., ICLR 2015) Table 2: DeepLab-CRF-LargeFOV 20.5M parameters",
    note="21 classes (PASCAL VOC); the CRF has no parameters",
)


class DeepLabLargeFOV(nn.Module):
    """DeepLab v1 LargeFOV on VGG-16; logits at output stride 8.

    ``features(x)`` returns the fc7 features (1024 channels), which Attention-to-Scale reuses.

    Args:
        num_classes: output classes.
        fc_dilation: dilation of the 3x3 fc6 (12: the "large field of view").
        fc_channels: width of fc6/fc7 (1024, subsampled from VGG's 4096).
    """

    def __init__(self, num_classes: int, *, fc_dilation: int = 12, fc_channels: int = 1024) -> None:
        super().__init__()
        self.backbone = VGG16(pooling="deeplab")
        self.fc = nn.Sequential(
            nn.AvgPool2d(3, stride=1, padding=1),  # pool5a
            nn.Conv2d(512, fc_channels, 3, padding=fc_dilation, dilation=fc_dilation),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Conv2d(fc_channels, fc_channels, 1),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
        )
        self.classifier = nn.Conv2d(fc_channels, num_classes, 1)

    def features(self, x: Tensor) -> Tensor:
        return self.fc(self.backbone(x)[-1])

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def _largefov_spec(crf: bool) -> ArchSpec:
    crf_text = (
        "with the fully connected CRF (10 mean-field iterations, w1 4, theta_alpha 121, theta_beta 5, w2 3, "
        "theta_gamma 3: deeplab-public run_densecrf.sh 'FOV' values) run on the GPU after bilinear upsampling to the "
        "input size (archs.crf: exact smoothness kernel, windowed appearance kernel on 8x8 cells); the difference to "
        "deeplabv1-largefov-vgg16 is the CRF step's cost. "
        if crf
        else "network only (see deeplabv1-largefov-vgg16-crf for the CRF step). "
    )
    return ArchSpec(
        name="deeplabv1-largefov-vgg16" + ("-crf" if crf else ""),
        family="DeepLab v1" + (" + CRF" if crf else ""),
        encoder="VGG-16 (LargeFOV)",
        scale="non-realtime",
        paper=V1_PAPER,
        year=2015,
        output_stride=1 if crf else 8,
        mean=CAFFE_VGG_MEAN,
        std=(1.0, 1.0, 1.0),
        published={"ade20k": V1_PARAMS, "cityscapes": V1_PARAMS},
        notes="DeepLab-LargeFOV: VGG-16, pool4/pool5 3x3 stride 1, conv5 dilation 2, pool5a, fc6 3x3 dilation 12 "
        "(1024), fc7 1024; " + crf_text + "Input: Caffe BGR mean subtraction, no scaling.",
        step_of=("deeplabv1-largefov-vgg16", "CRF") if crf else None,
    )


@register(_largefov_spec(crf=False))
def deeplabv1_largefov_vgg16(*, num_classes: int, crf: bool = False) -> nn.Module:
    """DeepLab v1 LargeFOV (VGG-16, output stride 8); with ``crf=True`` followed by the dense CRF.

    Args:
        num_classes: output classes.
        crf: append the fully connected CRF (`archs.crf.CRFRefinement`; logits then at full resolution).
    """
    model = DeepLabLargeFOV(num_classes)
    if crf:
        return CRFRefinement(model, DenseCRF(**DEEPLAB_V1_LARGEFOV_CRF), CAFFE_VGG_MEAN, (1.0, 1.0, 1.0))
    return model


@register(_largefov_spec(crf=True))
def deeplabv1_largefov_vgg16_crf(*, num_classes: int) -> nn.Module:
    """DeepLab v1 LargeFOV followed by the fully connected CRF (DeepLab's 'FOV' CRF parameters).

    Args:
        num_classes: output classes.
    """
    return deeplabv1_largefov_vgg16(num_classes=num_classes, crf=True)


class ASPPSum(nn.Module):
    """DeepLab v2's ASPP-L: parallel 3x3 atrous convolutions straight to the classes, summed.

    Args:
        in_channels: channels of the last backbone stage.
        num_classes: output classes.
        rates: dilation rates of the branches.
    """

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in rates)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        x = features[-1]
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


@register(
    ArchSpec(
        name="deeplabv2-r101",
        family="DeepLab v2",
        encoder="ResNet-101",
        scale="non-realtime",
        paper="Chen et al., TPAMI 2017",
        year=2017,
        output_stride=8,
        mean=CAFFE_VGG_MEAN,
        std=(1.0, 1.0, 1.0),
        published={
            "cityscapes": Published(
                miou=70.4,
                source="DeepLab v2 paper (Chen et al., TPAMI 2017), Cityscapes test set; the benchmark's entry "
                "'DeepLabv2-CRF' (cityscapes-dataset.com, submission 134): 70.38 IoU classes",
                note="Cityscapes test set, with the CRF, trained on the fine train set; this row is the network "
                "alone, and segbench measures on the val set",
            )
        },
        notes="ResNet-101 (Caffe style: stride on the 1x1 conv; res4 all blocks dilation 2, res5 dilation 4, no "
        "multi-grid) + ASPP-L (3x3 convs to the classes at rates 6/12/18/24, summed), single scale, no CRF "
        "(the paper's MSC inputs and CRF are optional add-ons). Paper: PASCAL VOC 2012 test 79.7 mIoU with MSC, "
        "COCO pre-training and CRF (abstract). Input: Caffe BGR mean subtraction.",
    )
)
def deeplabv2_r101(*, num_classes: int, rates: Sequence[int] = (6, 12, 18, 24)) -> SegmentationModel:
    """DeepLab v2: ResNet-101 (output stride 8) + ASPP-L.

    Args:
        num_classes: output classes.
        rates: ASPP rates ((6, 12, 18, 24) is ASPP-L, (2, 4, 8, 12) ASPP-S).
    """
    backbone = ResNet(101, deep_stem=False, output_stride=8, contract_dilation=False, style="caffe")
    return SegmentationModel(backbone, ASPPSum(backbone.out_channels[-1], num_classes, rates))


class DeepLabV3Head(nn.Module):
    """DeepLab v3's head: ASPP with image pooling (torchvision's ``ASPP``), then a 1x1 classifier.

    ``refine=True`` inserts the 3x3 conv-BN-ReLU (256) that torchvision's ``DeepLabHead`` has and
    the paper does not.

    Args:
        in_channels: channels of the last backbone stage.
        num_classes: output classes.
        rates: rates of the three 3x3 atrous branches.
        refine: add torchvision's extra 3x3 conv-BN-ReLU before the classifier.
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
    """DeepLab v3 on ResNet-101 (7x7 stem, torchvision layout).

    ``output_stride=8, multi_grid=None, head="torchvision"`` is exactly torchvision's
    ``deeplabv3_resnet101`` (load its weights with `convert_torchvision_deeplabv3_to_v3`).

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


def convert_torchvision_deeplabv3_to_v3(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """torchvision ``deeplabv3_resnet101`` keys -> `deeplabv3_r101` (``head="torchvision"``) keys; aux dropped."""
    out = {f"backbone.{k}": v for k, v in convert_torchvision_resnet_keys(state_dict, "backbone.").items()}
    # torchvision's DeepLabHead is Sequential(ASPP, conv, bn, relu, conv).
    head = {"classifier.0.": "head.aspp.", "classifier.1.": "head.refine.0.", "classifier.2.": "head.refine.1."}
    head["classifier.4."] = "head.classifier."
    for key, value in state_dict.items():
        for src, dst in head.items():
            if key.startswith(src):
                out[dst + key[len(src) :]] = value
    return out


def _v3_spec(output_stride: int) -> ArchSpec:
    rates = "/".join(str(r * 16 // output_stride) for r in (6, 12, 18))
    return ArchSpec(
        name=f"deeplabv3-r101-os{output_stride}",
        family="DeepLab v3",
        encoder=f"ResNet-101 (OS{output_stride})",
        scale="non-realtime",
        paper="Chen et al., arXiv 2017",
        year=2017,
        output_stride=output_stride,
        notes=f"ResNet-101 (7x7 stem, torchvision layout), output stride {output_stride}, multi-grid (1, 2, 4) in "
        f"block4, ASPP (1x1, 3x3 rates {rates}, image pooling; 256 ch, BN) -> 1x1 256 -> 1x1 classes; single "
        "scale. torchvision's deeplabv3_resnet101 differs (no multi-grid, an extra 3x3 conv-BN-ReLU, OS8): "
        "deeplabv3_r101(output_stride=8, multi_grid=None, head='torchvision') reproduces it. Paper: PASCAL VOC "
        "2012 test 85.7 mIoU with JFT-300M pre-training.",
    )


@register(_v3_spec(16))
def deeplabv3_r101_os16(*, num_classes: int) -> SegmentationModel:
    """DeepLab v3, ResNet-101, output stride 16 (ASPP rates 6/12/18), multi-grid (1, 2, 4).

    Args:
        num_classes: output classes.
    """
    return deeplabv3_r101(num_classes=num_classes, output_stride=16)


@register(_v3_spec(8))
def deeplabv3_r101_os8(*, num_classes: int) -> SegmentationModel:
    """DeepLab v3, ResNet-101, output stride 8 (ASPP rates 12/24/36), multi-grid (1, 2, 4).

    Args:
        num_classes: output classes.
    """
    return deeplabv3_r101(num_classes=num_classes, output_stride=8)
