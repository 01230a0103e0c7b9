"""DeepLab v1 (VGG-16 LargeFOV, alone and with its fully connected CRF) and v2 (ResNet-101 + ASPP-L).

v1: Chen et al., "Semantic Image Segmentation with Deep Convolutional Nets and Fully Connected
CRFs", ICLR 2015 (http://liangchiehchen.com/projects/DeepLab.html, deeplab-public). LargeFOV:
VGG-16 with pool4/pool5 at stride 1 and conv5 dilated by 2 (output stride 8), a 3x3 average
pooling, fc6 3x3 dilation 12 (1024), fc7 1x1 (1024), fc8 to the classes; the CRF is `archs.crf`.

v2: Chen et al., "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous
Convolution, and Fully Connected CRFs", TPAMI 2017 (deeplab-public-ver2). ResNet-101 in the Caffe
style (7x7 stem, stride on the first 1x1), res4 dilated 2 and res5 dilated 4 (output stride 8);
ASPP-L: four 3x3 convolutions to the classes at rates 6/12/18/24, summed. Figures: docs/models/deeplab.md.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from archs.backbones.resnet import ResNet
from archs.backbones.vgg import VGG16
from archs.base import CAFFE_VGG_MEAN, UNIT_STD, ArchSpec, Published, register
from archs.common import SegmentationModel
from archs.crf import DEEPLAB_V1_LARGEFOV_CRF, CRFRefinement, DenseCRF

__all__ = ["ASPPSum", "DeepLabLargeFOV", "deeplabv1_largefov_vgg16", "deeplabv1_largefov_vgg16_crf", "deeplabv2_r101"]

V1_PARAMS = Published(
    params_m=20.5,
    source="DeepLab v1 (Chen et al., ICLR 2015) Table 2: DeepLab-CRF-LargeFOV 20.5M parameters",
    note="21 classes (PASCAL VOC); the CRF has no parameters",
)
V1_CRF_NOTES = (
    "with the fully connected CRF (10 mean-field iterations, w1 4, theta_alpha 121, theta_beta 5, w2 3, "
    "theta_gamma 3: deeplab-public run_densecrf.sh 'FOV' values) run on the GPU after bilinear upsampling to the "
    "input size (archs.crf: exact smoothness kernel, windowed appearance kernel on 8x8 cells); the difference to "
    "deeplabv1-largefov-vgg16 is the CRF step's cost. "
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
    return ArchSpec(
        name="deeplabv1-largefov-vgg16" + ("-crf" if crf else ""),
        family="DeepLab v1" + (" + CRF" if crf else ""),
        encoder="VGG-16 (LargeFOV)",
        scale="non-realtime",
        paper="Chen et al., ICLR 2015",
        year=2015,
        output_stride=1 if crf else 8,
        mean=CAFFE_VGG_MEAN,
        std=UNIT_STD,
        published={"ade20k": V1_PARAMS, "cityscapes": V1_PARAMS},
        notes="DeepLab-LargeFOV: VGG-16, pool4/pool5 3x3 stride 1, conv5 dilation 2, pool5a, fc6 3x3 dilation 12 "
        "(1024), fc7 1024; "
        + (V1_CRF_NOTES if crf else "network only (see deeplabv1-largefov-vgg16-crf for the CRF step). ")
        + "Input: Caffe BGR mean subtraction, no scaling.",
        step_of=("deeplabv1-largefov-vgg16", "CRF") if crf else None,
    )


@register(_largefov_spec(crf=False))
def deeplabv1_largefov_vgg16(*, num_classes: int) -> DeepLabLargeFOV:
    """DeepLab v1 LargeFOV (VGG-16, output stride 8), without the CRF.

    Args:
        num_classes: output classes.
    """
    return DeepLabLargeFOV(num_classes)


@register(_largefov_spec(crf=True))
def deeplabv1_largefov_vgg16_crf(*, num_classes: int) -> CRFRefinement:
    """DeepLab v1 LargeFOV followed by the fully connected CRF (DeepLab's 'FOV' CRF parameters).

    Args:
        num_classes: output classes.
    """
    crf = DenseCRF(**DEEPLAB_V1_LARGEFOV_CRF)
    return CRFRefinement(DeepLabLargeFOV(num_classes), crf, CAFFE_VGG_MEAN, UNIT_STD)


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
        std=UNIT_STD,
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
