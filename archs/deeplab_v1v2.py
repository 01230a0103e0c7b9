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
from archs.base import register
from archs.cards import card
from archs.common import SegmentationModel
from archs.crf import DEEPLAB_V1_LARGEFOV_CRF, CRFRefinement, DenseCRF

__all__ = ["ASPPSum", "DeepLabLargeFOV", "deeplabv1_largefov_vgg16", "deeplabv1_largefov_vgg16_crf", "deeplabv2_r101"]


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


@register(card("deeplabv1-largefov-vgg16"))
def deeplabv1_largefov_vgg16(*, num_classes: int) -> DeepLabLargeFOV:
    """DeepLab v1 LargeFOV (VGG-16, output stride 8), without the CRF."""
    return DeepLabLargeFOV(num_classes)


# the CRF undoes the input normalisation its card declares, so both read the one card
_CRF_CARD = card("deeplabv1-largefov-vgg16-crf")


@register(_CRF_CARD)
def deeplabv1_largefov_vgg16_crf(*, num_classes: int) -> CRFRefinement:
    """DeepLab v1 LargeFOV followed by the fully connected CRF (DeepLab's 'FOV' CRF parameters)."""
    crf = DenseCRF(**DEEPLAB_V1_LARGEFOV_CRF)
    return CRFRefinement(DeepLabLargeFOV(num_classes), crf, _CRF_CARD.mean, _CRF_CARD.std)


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


@register(card("deeplabv2-r101"))
def deeplabv2_r101(*, num_classes: int, rates: Sequence[int] = (6, 12, 18, 24)) -> SegmentationModel:
    """DeepLab v2: ResNet-101 (output stride 8) + ASPP-L.

    Args:
        rates: ASPP rates ((6, 12, 18, 24) is ASPP-L, (2, 4, 8, 12) ASPP-S).
    """
    backbone = ResNet(101, deep_stem=False, output_stride=8, contract_dilation=False, style="caffe")
    return SegmentationModel(backbone, ASPPSum(backbone.out_channels[-1], num_classes, rates))
