"""Auto-DeepLab: the searched network (cell and resolution path) with ASPP and a DeepLabv3+ decoder.

Liu et al., "Auto-DeepLab: Hierarchical Neural Architecture Search for Semantic Image
Segmentation", CVPR 2019 (arXiv:1901.02985). Official code: TensorFlow DeepLab,
https://github.com/tensorflow/models/tree/master/research/deeplab (Apache-2.0):
``core/nas_network.py`` (``hnasnet``), ``core/nas_cell.py`` (``NASBaseCell``),
``core/feature_extractor.py`` and ``model.py`` (ASPP and decoder). No official checkpoint of the
searched network was released.

- stem: 3x3 conv stride 2 (64) + BN + ReLU, 3x3 conv (64) + BN, ReLU, 3x3 conv stride 2 (128) + BN;
- 12 cells on the searched path of levels ``(0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1)`` (level l has
  stride ``4 * 2**l`` and ``F * 2**l`` filters per branch, F = 48 for the "L" network); going up a
  level the cell's first operations are strided, going down its input is upsampled x2 (bilinear,
  ``align_corners=True``) to the size the path had at that level;
- a cell preprocesses its two inputs (ReLU, 1x1 conv, BN) and builds five blocks, each the sum of
  two operations (`CELL_OPERATIONS` on the states `HIDDENSTATE_INDICES`), concatenated;
- ASPP (256 channels: 1x1, three 3x3 at rates 12, 24, 36, image pooling) on the last cell, and
  the DeepLabv3+ decoder on ``Cell_2`` (stride 4): logits at stride 4.

Upsampling to the path's own size at a level reproduces TensorFlow's ``2h - 1`` rows on DeepLab's
``8k + 1`` inputs. The published FLOPs follow another counting convention: docs/models/auto-deeplab.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from archs.base import register
from archs.cards import card

__all__ = ["ASPP", "AutoDeepLab", "NASCell", "auto_deeplab_f48"]

# The searched network of the paper (Figure 3), as in nas_network.hnasnet.
BACKBONE_PATH = (0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1)
CELL_OPERATIONS = (
    "atrous_5x5",
    "separable_3x3_2",
    "separable_3x3_2",
    "atrous_3x3",
    "separable_3x3_2",
    "separable_3x3_2",
    "separable_5x5_2",
    "separable_5x5_2",
    "separable_5x5_2",
    "atrous_5x5",
)
HIDDENSTATE_INDICES = (1, 0, 1, 0, 3, 1, 4, 2, 3, 5)
USED_HIDDENSTATES = (1, 1, 0, 0, 0, 0, 0)


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class _ReLUConvBN(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.ReLU(inplace=False), nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
        )


class SeparableOp(nn.Sequential):
    """``num_layers`` times {ReLU, depthwise KxK (stride on the first), pointwise 1x1, BN}.

    Args:
        channels: input and output channels.
        kernel_size: depthwise kernel.
        stride: stride of the first depthwise convolution.
        num_layers: repetitions (2 in the searched cell).
    """

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, num_layers: int = 2) -> None:
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers += [
                nn.ReLU(inplace=False),
                nn.Conv2d(
                    channels,
                    channels,
                    kernel_size,
                    stride if i == 0 else 1,
                    kernel_size // 2,
                    groups=channels,
                    bias=False,
                ),
                nn.Conv2d(channels, channels, 1, bias=False),
                nn.BatchNorm2d(channels),
            ]
        super().__init__(*layers)


class AtrousOp(nn.Module):
    """ReLU, KxK convolution with dilation 2, BN; with stride 2, a x0.5 bilinear resize and dilation 1.

    Args:
        channels: input and output channels.
        kernel_size: kernel.
        stride: 1 or 2.
    """

    def __init__(self, channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        dilation = 1 if stride == 2 else 2
        self.conv = nn.Conv2d(channels, channels, kernel_size, 1, dilation * (kernel_size // 2), dilation, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        if self.stride == 2:
            x = _resize(x, ((x.shape[-2] + 1) // 2, (x.shape[-1] + 1) // 2))
        return self.bn(self.conv(x))


def _operation(name: str, channels: int, stride: int) -> nn.Module:
    kind, rest = name.split("_", 1)
    kernel = int(rest.split("x")[0])
    if kind == "separable":
        return SeparableOp(channels, kernel, stride, int(rest.split("_")[-1]))
    if kind == "atrous":
        return AtrousOp(channels, kernel, stride)
    raise ValueError(f"unknown cell operation {name!r}")


class NASCell(nn.Module):
    """The searched Auto-DeepLab cell (five two-branch blocks, sums, concatenation of the new states).

    Args:
        in_channels: channels of the previous output h0.
        prev_channels: channels of the output before it, h1.
        channels: filters per branch (F * 2**level).
        stride: 2 when the cell goes up a level (its operations on h0 and h1 are strided).
    """

    def __init__(self, in_channels: int, prev_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.preprocess = _ReLUConvBN(in_channels, channels)
        self.prev_preprocess = _ReLUConvBN(prev_channels, channels) if prev_channels != channels else nn.Identity()
        self.ops = nn.ModuleList(
            _operation(op, channels, stride if idx < 2 else 1)
            for op, idx in zip(CELL_OPERATIONS, HIDDENSTATE_INDICES, strict=True)
        )
        self.out_channels = channels * (len(USED_HIDDENSTATES) - sum(USED_HIDDENSTATES))

    def forward(self, x: Tensor, prev: Tensor) -> Tensor:
        prev = self.prev_preprocess(_resize(prev, x.shape[-2:]))
        states = [self.preprocess(x), prev]
        for i in range(0, len(self.ops), 2):
            left = self.ops[i](states[HIDDENSTATE_INDICES[i]])
            right = self.ops[i + 1](states[HIDDENSTATE_INDICES[i + 1]])
            states.append(left + right)
        return torch.cat([s for s, used in zip(states, USED_HIDDENSTATES, strict=True) if not used], dim=1)


class ASPP(nn.Module):
    """DeepLab v3 ASPP: 1x1, 3x3 branches at ``rates``, image pooling; concatenation; 1x1 projection.

    Args:
        in_channels: input channels.
        channels: width of every branch and of the output.
        rates: dilations of the 3x3 branches.
    """

    def __init__(self, in_channels: int, channels: int = 256, rates: Sequence[int] = (12, 24, 36)) -> None:
        super().__init__()
        self.image_pool = Conv2dNormActivation(in_channels, channels, 1)
        self.branches = nn.ModuleList(
            [Conv2dNormActivation(in_channels, channels, 1)]
            + [Conv2dNormActivation(in_channels, channels, 3, dilation=r) for r in rates]
        )
        self.project = Conv2dNormActivation((len(rates) + 2) * channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.image_pool(x.mean(dim=(2, 3), keepdim=True)).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([pooled] + [b(x) for b in self.branches], dim=1))


class AutoDeepLab(nn.Module):
    """The Auto-DeepLab network: stem, 12 cells on the searched path, ASPP, DeepLabv3+ decoder.

    Args:
        num_classes: output classes.
        filter_multiplier: F (48 for Auto-DeepLab-L, 32 for -M, 20 for -S).
        path: level of each cell (0..3 for strides 4..32).
        aspp_rates: ASPP dilations (12, 24, 36 at the network's output stride 8).
        low_level_cell: index of the cell whose output feeds the decoder (``Cell_2``, stride 4).
    """

    def __init__(
        self,
        num_classes: int,
        filter_multiplier: int = 48,
        path: Sequence[int] = BACKBONE_PATH,
        aspp_rates: Sequence[int] = (12, 24, 36),
        low_level_cell: int = 2,
    ) -> None:
        super().__init__()
        self.stem0 = nn.Sequential(nn.Conv2d(3, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        self.stem1 = nn.Sequential(nn.Conv2d(64, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64))
        self.stem2 = nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(64, 128, 3, 2, 1, bias=False), nn.BatchNorm2d(128))
        self.path = tuple(path)
        self.low_level_cell = low_level_cell
        channels = [64, 128]  # the stem's two outputs
        cells = []
        for i, level in enumerate(self.path):
            previous = 0 if i == 0 else self.path[i - 1]
            stride = 2 if level == previous + 1 else 1
            cell = NASCell(channels[-1], channels[-2], filter_multiplier * 2**level, stride)
            cells.append(cell)
            channels.append(cell.out_channels)
        self.cells = nn.ModuleList(cells)
        self.aspp = ASPP(channels[-1], 256, aspp_rates)
        self.decoder_low_level = Conv2dNormActivation(channels[2 + low_level_cell], 48, 1)
        self.decoder = nn.Sequential(
            Conv2dNormActivation(256 + 48, 256, 3), Conv2dNormActivation(256, 256, 3), nn.Conv2d(256, num_classes, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        s1 = self.stem1(self.stem0(x))
        outputs = [s1, self.stem2(s1)]
        level_sizes: dict[int, tuple[int, ...]] = {}  # the path's last resolution at each level
        for i, (cell, level) in enumerate(zip(self.cells, self.path, strict=True)):
            net = outputs[-1]
            if i > 0 and level == self.path[i - 1] - 1:
                net = _resize(net, level_sizes.get(level, (2 * net.shape[-2], 2 * net.shape[-1])))
            outputs.append(cell(net, outputs[-2]))
            level_sizes[level] = tuple(outputs[-1].shape[-2:])
        features = F.relu(outputs[-1])
        low = self.decoder_low_level(outputs[2 + self.low_level_cell])
        aspp = _resize(self.aspp(features), low.shape[-2:])
        return self.decoder(torch.cat([aspp, low], dim=1))


@register(card("auto-deeplab-f48"))
def auto_deeplab_f48(*, num_classes: int) -> nn.Module:
    """Auto-DeepLab-L (F = 48) with ASPP and the DeepLabv3+ decoder."""
    return AutoDeepLab(num_classes, 48)
