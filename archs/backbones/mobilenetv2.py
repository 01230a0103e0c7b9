"""MobileNetV2 dilated to output stride 8, as mmsegmentation's ``m-v2-d8`` configurations use it.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018.
Reference implementations: mmsegmentation ``mmseg/models/backbones/mobilenet_v2.py``
(https://github.com/open-mmlab/mmsegmentation, Apache-2.0) and torchvision
``torchvision/models/mobilenetv2.py`` (BSD-3-Clause), whose ``InvertedResidual`` and
``Conv2dNormActivation`` blocks are reused here, so the keys are torchvision's ``features.*``
(an ImageNet torchvision checkpoint loads directly, less ``features.18`` and the classifier).

The network is the ImageNet one (a 3x3/2 stem with 32 channels, then the seven inverted-residual
layers (t, c, n) = (1,16,1), (6,24,2), (6,32,3), (6,64,4), (6,96,3), (6,160,3), (6,320,1), ReLU6)
without the final 1x1 conv to 1280 channels. mmseg's segmentation configs set the layers' strides
to (1, 2, 2, 1, 1, 1, 1) and dilations to (1, 1, 1, 2, 2, 4, 4) and take the outputs of layers
2, 3, 5 and 7 (0-based out_indices (1, 2, 4, 6)): 24, 32, 96 and 320 channels at strides 4, 8, 8, 8.

mmseg applies a layer's dilation to the **first block of the layer only** (its ``make_layer``
passes ``dilation if i == 0 else 1``); the official checkpoints were trained that way, so this
module does the same (``dilate_first_block_only=False`` dilates every block of the layer instead).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.ops.misc import Conv2dNormActivation

from archs.backbones import layer_outputs

__all__ = ["LAYER_SETTINGS", "MobileNetV2", "mobilenetv2_d8"]

# (expand ratio t, output channels c, blocks n) of the seven layers.
LAYER_SETTINGS = ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1))
IMAGENET_STRIDES = (1, 2, 2, 2, 1, 2, 1)


class MobileNetV2(nn.Module):
    """MobileNetV2 feature extractor returning the outputs of the layers in ``out_indices``.

    Args:
        strides: stride of the first block of each of the seven layers.
        dilations: dilation of each layer.
        out_indices: 0-based layers whose outputs ``forward`` returns.
        dilate_first_block_only: mmseg's behaviour (see the module docstring).
    """

    def __init__(
        self,
        *,
        strides: Sequence[int] = (1, 2, 2, 1, 1, 1, 1),
        dilations: Sequence[int] = (1, 1, 1, 2, 2, 4, 4),
        out_indices: Sequence[int] = (1, 2, 4, 6),
        dilate_first_block_only: bool = True,
    ) -> None:
        super().__init__()
        if len(strides) != len(LAYER_SETTINGS) or len(dilations) != len(LAYER_SETTINGS):
            raise ValueError(f"strides and dilations need {len(LAYER_SETTINGS)} entries, got {strides}, {dilations}")
        layers: list[nn.Module] = [
            Conv2dNormActivation(3, 32, kernel_size=3, stride=2, norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU6)
        ]
        # Index in `features` of the last block of each layer.
        self._layer_ends: list[int] = []
        in_channels = 32
        for (t, c, n), stride, dilation in zip(LAYER_SETTINGS, strides, dilations, strict=True):
            for i in range(n):
                block = InvertedResidual(in_channels, c, stride if i == 0 else 1, expand_ratio=t)
                d = dilation if i == 0 or not dilate_first_block_only else 1
                if d > 1:
                    depthwise = block.conv[0 if t == 1 else 1][0]
                    depthwise.dilation = (d, d)
                    depthwise.padding = (d, d)
                layers.append(block)
                in_channels = c
            self._layer_ends.append(len(layers) - 1)
        self.features = nn.Sequential(*layers)
        self._out_positions = frozenset(self._layer_ends[i] for i in out_indices)
        self.out_channels = tuple(LAYER_SETTINGS[i][1] for i in out_indices)

    def forward(self, x: Tensor) -> list[Tensor]:
        return layer_outputs(self.features, x, self._out_positions)


def mobilenetv2_d8() -> MobileNetV2:
    """MobileNetV2 at output stride 8 as in mmseg's ``m-v2-d8`` configs (24/32/96/320 channels)."""
    return MobileNetV2()
