"""HRNetV2: high-resolution representations kept through the whole network.

Wang et al., "Deep High-Resolution Representation Learning for Visual Recognition", TPAMI 2020
(arXiv:1908.07919); Sun et al., "High-Resolution Representations for Labeling Pixels and
Regions", arXiv:1904.04514 (HRNetV2, the segmentation variant). Official repository:
https://github.com/HRNet/HRNet-Semantic-Segmentation (MIT). The configuration and the state-dict
layout follow mmsegmentation's ``mmseg/models/backbones/hrnet.py``
(https://github.com/open-mmlab/mmsegmentation, Apache-2.0), whose ``open-mmlab://msra/hrnetv2_w48``
weights every OCRNet-HRNet checkpoint starts from.

Structure (W = 48 for HRNetV2-W48, 18 for W18):

- stem: two 3x3 stride-2 convolutions 3->64->64, each with BN and ReLU (stride 4);
- stage 1: four torchvision ``Bottleneck`` blocks, 64 -> 256 channels;
- stages 2, 3, 4: 1, 4 and 3 high-resolution modules with 2, 3 and 4 parallel branches of
  widths ``W * (1, 2, 4, 8)`` at strides 4, 8, 16, 32; each branch is four torchvision
  ``BasicBlock``; each module ends with a multi-resolution fusion: every output branch sums all
  branches, lower resolutions through 1x1 conv + BN + bilinear upsampling, higher ones through a
  chain of 3x3 stride-2 conv + BN (ReLU between), then a ReLU;
- a transition before each stage adapts the widths and adds the new lower-resolution branch by a
  3x3 stride-2 conv + BN + ReLU on the lowest-resolution branch.

The backbone returns the four branch outputs (HRNetV2 heads concatenate them after upsampling).
The module and parameter names equal mmseg's (``conv1``, ``bn1``, ``layer1``, ``transition1``,
``stage2.0.branches``, ``stage2.0.fuse_layers`` ...), so ``backbone.*`` checkpoint entries load
with the prefix removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

__all__ = ["HRModule", "HRNet", "hrnetv2_w18", "hrnetv2_w48"]


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _upsample(x: Tensor, size: Sequence[int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class HRModule(nn.Module):
    """Parallel residual branches followed by a multi-resolution fusion.

    Args:
        channels: width of each branch, highest resolution first (branch i has stride 2**i
            relative to branch 0).
        num_blocks: ``BasicBlock`` per branch.
        multiscale_output: False returns only the fused highest-resolution branch.
    """

    def __init__(self, channels: Sequence[int], num_blocks: int = 4, multiscale_output: bool = True) -> None:
        super().__init__()
        self.num_branches = len(channels)
        self.branches = nn.ModuleList(nn.Sequential(*(BasicBlock(c, c) for _ in range(num_blocks))) for c in channels)
        num_out = self.num_branches if multiscale_output else 1
        fuse_layers = []
        for i in range(num_out if self.num_branches > 1 else 0):
            row: list[nn.Module] = []
            for j, c_in in enumerate(channels):
                if j > i:  # lower resolution: 1x1 projection, upsampled in forward
                    row.append(_conv_bn(c_in, channels[i], 1, 1, relu=False))
                elif j == i:
                    row.append(nn.Identity())
                else:  # higher resolution: (i - j) stride-2 convolutions
                    steps = [_conv_bn(c_in, c_in, 3, 2, relu=True) for _ in range(i - j - 1)]
                    steps.append(_conv_bn(c_in, channels[i], 3, 2, relu=False))
                    row.append(nn.Sequential(*steps))
            fuse_layers.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse_layers)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        if self.num_branches == 1:
            return xs
        out = []
        for i, row in enumerate(self.fuse_layers):
            size = xs[i].shape[-2:]
            y = None
            for j, fuse in enumerate(cast(nn.ModuleList, row)):  # summed in branch order, as mmseg sums
                z = fuse(xs[j])
                if j > i:
                    # mmseg upsamples by 2**(j-i) and then resizes to the target: equal for sizes
                    # divisible by the branch strides, kept for the others.
                    scale = 2 ** (j - i)
                    z = _upsample(z, (z.shape[-2] * scale, z.shape[-1] * scale))
                    if z.shape[-2:] != size:
                        z = _upsample(z, size)
                y = z if y is None else y + z
            out.append(self.relu(y))
        return out


class HRNet(nn.Module):
    """HRNetV2 backbone returning the four branch outputs (strides 4, 8, 16, 32).

    Args:
        width: channels of the highest-resolution branch (48 for W48, 18 for W18); the branches
            have ``width * (1, 2, 4, 8)`` channels.
        num_modules: high-resolution modules in stages 2, 3 and 4.
        num_blocks: residual blocks per branch in every module (and Bottlenecks of stage 1).
    """

    def __init__(self, width: int = 48, num_modules: Sequence[int] = (1, 4, 3), num_blocks: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        stage1_out = 64 * Bottleneck.expansion
        downsample = _conv_bn(64, stage1_out, 1, 1, relu=False)
        self.layer1 = nn.Sequential(
            Bottleneck(64, 64, downsample=downsample), *(Bottleneck(stage1_out, 64) for _ in range(num_blocks - 1))
        )
        previous = [stage1_out]
        for stage, modules in enumerate(num_modules, start=2):
            channels = [width * 2**i for i in range(stage)]
            self.add_module(f"transition{stage - 1}", self._transition(previous, channels))
            self.add_module(f"stage{stage}", nn.Sequential(*(HRModule(channels, num_blocks) for _ in range(modules))))
            previous = channels
        self.out_channels = tuple(previous)

    @staticmethod
    def _transition(previous: Sequence[int], channels: Sequence[int]) -> nn.ModuleList:
        layers: list[nn.Module] = []
        for i, c in enumerate(channels):
            if i < len(previous):
                layers.append(nn.Identity() if c == previous[i] else _conv_bn(previous[i], c, 3, 1, relu=True))
            else:
                c_in = previous[-1]
                steps = [_conv_bn(c_in, c_in, 3, 2, relu=True) for _ in range(i - len(previous))]
                steps.append(_conv_bn(c_in, c, 3, 2, relu=True))
                layers.append(nn.Sequential(*steps))
        return nn.ModuleList(layers)

    @staticmethod
    def _apply_transition(transition: nn.ModuleList, xs: list[Tensor]) -> list[Tensor]:
        # New branches grow from the lowest-resolution branch.
        return [t(xs[i] if i < len(xs) else xs[-1]) for i, t in enumerate(transition)]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        xs = [self.layer1(x)]
        for stage in (2, 3, 4):
            xs = self._apply_transition(getattr(self, f"transition{stage - 1}"), xs)
            xs = getattr(self, f"stage{stage}")(xs)
        return xs


def hrnetv2_w48() -> HRNet:
    """HRNetV2-W48 (branch widths 48, 96, 192, 384)."""
    return HRNet(48)


def hrnetv2_w18() -> HRNet:
    """HRNetV2-W18 (branch widths 18, 36, 72, 144)."""
    return HRNet(18)
