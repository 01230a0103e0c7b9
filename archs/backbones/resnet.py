"""Dilated ResNet backbones as the segmentation model zoos use them.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016; the "V1c" deep stem of
He et al., "Bag of Tricks for Image Classification with Convolutional Neural Networks", CVPR 2019;
dilated (atrous) last stages as in Chen et al., "DeepLab", TPAMI 2017 and Yu & Koltun, ICLR 2016.
Reference implementations: mmsegmentation ``mmseg/models/backbones/resnet.py`` (``ResNetV1c``,
https://github.com/open-mmlab/mmsegmentation, Apache-2.0) and torchvision
``torchvision/models/resnet.py`` (BSD-3-Clause), whose ``Bottleneck`` blocks are reused here.

``ResNetV1c`` (mmseg's ``open-mmlab://resnet101_v1c`` backbone of every ``r101-d8`` config):

- stem: three 3x3 convolutions 3->32 (stride 2), 32->32, 32->64, each followed by BN and ReLU,
  then a 3x3/2 max-pool (torchvision's plain ResNet has a single 7x7/2 convolution instead);
- torchvision's ``Bottleneck`` blocks (stride on the 3x3 convolution, "pytorch style"), with a
  1x1 strided convolution + BN as the projection shortcut;
- output stride 8: stage strides (1, 2, 1, 1) and dilations (1, 1, 2, 4); output stride 16:
  strides (1, 2, 2, 1) and dilations (1, 1, 1, 2). The first block of a dilated stage uses half
  the dilation ("contract_dilation"), which is also what torchvision's
  ``replace_stride_with_dilation`` does, so both libraries compute the same network;
- optional multi-grid (DeepLab v3): the blocks of the last stage use dilation ``d * grid[i]``
  (no contraction then, as in mmseg).

The parameter and state-dict key names equal mmseg's backbone keys (``stem.0``, ``layer1.0.conv1``,
...), so an mmseg checkpoint's ``backbone.*`` entries load with only the prefix removed; torchvision's
keys load through `archs.convert.torchvision.convert_torchvision_resnet_keys`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

__all__ = [
    "ResNet",
    "STAGE_BLOCKS",
    "resnet50_v1c",
    "resnet101_v1c",
    "resnet101_torchvision",
    "stage_dilations",
]

# Bottleneck counts per stage.
STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def stage_dilations(output_stride: int) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """(strides, dilations) of the four stages for an output stride of 8, 16 or 32."""
    table = {
        8: ((1, 2, 1, 1), (1, 1, 2, 4)),
        16: ((1, 2, 2, 1), (1, 1, 1, 2)),
        32: ((1, 2, 2, 2), (1, 1, 1, 1)),
    }
    if output_stride not in table:
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    return table[output_stride]


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class ResNet(nn.Module):
    """Dilated bottleneck ResNet returning the four stage outputs (strides 4, 8, 8|16, 8|16|32).

    Args:
        depth: 50, 101 or 152.
        deep_stem: True for the V1c stem (three 3x3 convolutions); False for torchvision's 7x7 stem.
        stem_channels: output channels of the stem (the deep stem's first two convolutions use half).
        base_channels: bottleneck width of the first stage (64 in the standard network; the stage
            outputs are ``4 * base_channels * (1, 2, 4, 8)``).
        output_stride: 8, 16 or 32; stages beyond that stride are dilated instead of strided.
        multi_grid: per-block dilation multipliers of the last stage (DeepLab v3's ``(1, 2, 4)``);
            None for the standard (contracted) dilation.
        contract_dilation: the first block of a dilated stage uses half the dilation (mmseg's
            default for the segmentation configs, and torchvision's behaviour).
        style: ``"pytorch"`` puts a block's stride on its 3x3 convolution (torchvision, mmseg);
            ``"caffe"`` on its first 1x1 convolution (the original Caffe ResNets, PSPNet, ICNet).
    """

    def __init__(
        self,
        depth: int = 101,
        *,
        deep_stem: bool = True,
        stem_channels: int = 64,
        base_channels: int = 64,
        output_stride: int = 8,
        multi_grid: Sequence[int] | None = None,
        contract_dilation: bool = True,
        style: str = "pytorch",
    ) -> None:
        super().__init__()
        if style not in ("pytorch", "caffe"):
            raise ValueError(f"style must be 'pytorch' or 'caffe', got {style!r}")
        if depth not in STAGE_BLOCKS:
            raise ValueError(f"depth must be one of {sorted(STAGE_BLOCKS)}, got {depth}")
        blocks = STAGE_BLOCKS[depth]
        strides, dilations = stage_dilations(output_stride)
        if multi_grid is not None and len(multi_grid) != blocks[-1]:
            raise ValueError(f"multi_grid needs {blocks[-1]} entries (blocks of the last stage), got {multi_grid}")
        if deep_stem:
            half = stem_channels // 2
            self.stem = nn.Sequential(
                *_conv_bn_relu(3, half, 3, 2),
                *_conv_bn_relu(half, half, 3, 1),
                *_conv_bn_relu(half, stem_channels, 3, 1),
            )
        else:
            self.stem = nn.Sequential(*_conv_bn_relu(3, stem_channels, 7, 2))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        in_channels = stem_channels
        self.out_channels: tuple[int, ...] = ()
        stages = []
        for i, (num_blocks, stride, dilation) in enumerate(zip(blocks, strides, dilations, strict=True)):
            planes = base_channels * 2**i
            grid = multi_grid if i == len(blocks) - 1 else None
            layer = self._make_layer(in_channels, planes, num_blocks, stride, dilation, grid, contract_dilation, style)
            stages.append(layer)
            in_channels = planes * Bottleneck.expansion
            self.out_channels += (in_channels,)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.output_stride = output_stride

    @staticmethod
    def _make_layer(
        in_channels: int,
        planes: int,
        num_blocks: int,
        stride: int,
        dilation: int,
        multi_grid: Sequence[int] | None,
        contract_dilation: bool,
        style: str,
    ) -> nn.Sequential:
        out_channels = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        if multi_grid is not None:
            block_dilations = [dilation * g for g in multi_grid]
        else:
            first = dilation // 2 if contract_dilation and dilation > 1 else dilation
            block_dilations = [first] + [dilation] * (num_blocks - 1)
        first = Bottleneck(in_channels, planes, stride, downsample, dilation=block_dilations[0])
        if style == "caffe" and stride != 1:
            first.conv1.stride, first.conv2.stride = (stride, stride), (1, 1)
        layers = [first] + [Bottleneck(out_channels, planes, dilation=d) for d in block_dilations[1:]]
        return nn.Sequential(*layers)

    def layers(self) -> Iterator[nn.Sequential]:
        """The four stages, in order."""
        return iter((self.layer1, self.layer2, self.layer3, self.layer4))

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.stem(x))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return [c1, c2, c3, c4]


def resnet50_v1c(*, output_stride: int = 8, multi_grid: Sequence[int] | None = None) -> ResNet:
    """ResNetV1c-50 (mmseg's ``open-mmlab://resnet50_v1c``), dilated to ``output_stride``.

    Args:
        output_stride: 8 (the ``d8`` configs), 16 or 32.
        multi_grid: dilation multipliers of the 3 blocks of the last stage, or None.
    """
    return ResNet(50, output_stride=output_stride, multi_grid=multi_grid)


def resnet101_v1c(*, output_stride: int = 8, multi_grid: Sequence[int] | None = None) -> ResNet:
    """ResNetV1c-101 (mmseg's ``open-mmlab://resnet101_v1c``), dilated to ``output_stride``.

    Args:
        output_stride: 8 (the ``d8`` configs), 16 or 32.
        multi_grid: dilation multipliers of the 3 blocks of the last stage, or None.
    """
    return ResNet(101, output_stride=output_stride, multi_grid=multi_grid)


def resnet101_torchvision(*, output_stride: int = 8, multi_grid: Sequence[int] | None = None) -> ResNet:
    """torchvision's ResNet-101 (7x7 stem), dilated as ``replace_stride_with_dilation`` does.

    Args:
        output_stride: 8 (torchvision's segmentation models), 16 or 32.
        multi_grid: dilation multipliers of the 3 blocks of the last stage, or None.
    """
    return ResNet(101, deep_stem=False, output_stride=output_stride, multi_grid=multi_grid)
