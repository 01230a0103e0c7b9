"""Wider ResNet-38 (variant A2) with pre-activation residual blocks, dilated to output stride 8.

Wu, Shen & van den Hengel, "Wider or Deeper: Revisiting the ResNet Model for Visual Recognition",
Pattern Recognition 2019 (arXiv:1611.10080); the A2 layout and the dilated segmentation variant
are those of Rota Bulo et al., "In-Place Activated BatchNorm", CVPR 2018
(https://github.com/mapillary/inplace_abn, BSD-3-Clause), used as the trunk of GSCNN
(https://github.com/nv-tlabs/GSCNN ``network/wider_resnet.py``, ``wider_resnet38_a2(dilation=True)``).
Module and parameter names follow that file, so its checkpoints map key for key.

- ``mod1``: 3x3 conv 3->64 at full resolution (no norm);
- ``pool2``, ``mod2``: 3x3/2 max-pool, 3 blocks of (128, 128) -> stride 2;
- ``pool3``, ``mod3``: 3x3/2 max-pool, 3 blocks of (256, 256) -> stride 4;
- ``mod4``: 6 blocks of (512, 512), the first with stride 2 -> stride 8;
- ``mod5``: 3 blocks of (512, 1024), dilation 2;
- ``mod6``: 1 bottleneck block (512, 1024, 2048), dilation 4 (Dropout 0.3 in training);
- ``mod7``: 1 bottleneck block (1024, 2048, 4096), dilation 4 (Dropout 0.5 in training).

Each block is pre-activation: ``a = ReLU(BN(x))``; the shortcut is ``x``, or a 1x1 (strided)
projection of ``a`` when the shape changes; the residual branch is conv-BN-ReLU-conv (two 3x3)
or, for the bottleneck blocks, 1x1-BN-ReLU-3x3-BN-ReLU-1x1.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["IdentityResidualBlock", "WiderResNetA2", "wider_resnet38_a2"]


def _bn_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class IdentityResidualBlock(nn.Module):
    """Pre-activation residual block (two 3x3 convolutions, or a 1x1-3x3-1x1 bottleneck).

    Args:
        in_channels: input channels.
        channels: (mid, out) for the basic block, (mid, mid2, out) for the bottleneck.
        stride: stride of the first convolution (and of the projection shortcut).
        dilation: dilation of the 3x3 convolutions.
        dropout: Dropout2d probability before the last convolution (training only), or 0.
    """

    def __init__(
        self, in_channels: int, channels: Sequence[int], stride: int = 1, dilation: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if len(channels) not in (2, 3):
            raise ValueError(f"channels must have two or three values, got {channels}")
        self.bn1 = _bn_relu(in_channels)
        d = dilation
        if len(channels) == 2:
            layers = [
                ("conv1", nn.Conv2d(in_channels, channels[0], 3, stride, d, dilation=d, bias=False)),
                ("bn2", _bn_relu(channels[0])),
                ("conv2", nn.Conv2d(channels[0], channels[1], 3, 1, d, dilation=d, bias=False)),
            ]
        else:
            layers = [
                ("conv1", nn.Conv2d(in_channels, channels[0], 1, stride, bias=False)),
                ("bn2", _bn_relu(channels[0])),
                ("conv2", nn.Conv2d(channels[0], channels[1], 3, 1, d, dilation=d, bias=False)),
                ("bn3", _bn_relu(channels[1])),
                ("conv3", nn.Conv2d(channels[1], channels[2], 1, bias=False)),
            ]
        if dropout > 0:
            layers.insert(len(layers) - 1, ("dropout", nn.Dropout2d(dropout)))
        self.convs = nn.Sequential(OrderedDict(layers))
        needs_projection = stride != 1 or in_channels != channels[-1]
        self.proj_conv = nn.Conv2d(in_channels, channels[-1], 1, stride, bias=False) if needs_projection else None

    def forward(self, x: Tensor) -> Tensor:
        a = self.bn1(x)
        shortcut = x if self.proj_conv is None else self.proj_conv(a)
        return self.convs(a) + shortcut


class WiderResNetA2(nn.Module):
    """Wider ResNet A2 trunk returning the outputs of ``mod1`` to ``mod7``.

    Args:
        structure: blocks in mod2..mod7 ((3, 3, 6, 3, 1, 1) for WRN-38).
        dilation: True for the segmentation variant (output stride 8: mod5 dilation 2, mod6/7
            dilation 4); False for the classification layout (output stride 32).
    """

    CHANNELS = ((128, 128), (256, 256), (512, 512), (512, 1024), (512, 1024, 2048), (1024, 2048, 4096))
    # Built in a loop under the official module names.
    pool2: nn.MaxPool2d
    pool3: nn.MaxPool2d
    mod2: nn.Sequential
    mod3: nn.Sequential
    mod4: nn.Sequential
    mod5: nn.Sequential
    mod6: nn.Sequential
    mod7: nn.Sequential

    def __init__(self, structure: Sequence[int] = (3, 3, 6, 3, 1, 1), dilation: bool = True) -> None:
        super().__init__()
        self.mod1 = nn.Sequential(OrderedDict([("conv1", nn.Conv2d(3, 64, 3, 1, 1, bias=False))]))
        in_channels = 64
        for mod_id, num in enumerate(structure):
            blocks = []
            for block_id in range(num):
                if dilation:
                    dil = {3: 2, 4: 4, 5: 4}.get(mod_id, 1)
                    stride = 2 if block_id == 0 and mod_id == 2 else 1
                else:
                    dil = 1
                    stride = 2 if block_id == 0 and 2 <= mod_id <= 4 else 1
                drop = {4: 0.3, 5: 0.5}.get(mod_id, 0.0)
                channels = self.CHANNELS[mod_id]
                blocks.append((f"block{block_id + 1}", IdentityResidualBlock(in_channels, channels, stride, dil, drop)))
                in_channels = channels[-1]
            if mod_id < 2:
                self.add_module(f"pool{mod_id + 2}", nn.MaxPool2d(3, stride=2, padding=1))
            self.add_module(f"mod{mod_id + 2}", nn.Sequential(OrderedDict(blocks)))
        self.out_channels = (64,) + tuple(c[-1] for c in self.CHANNELS)

    def forward(self, x: Tensor) -> list[Tensor]:
        m1 = self.mod1(x)
        m2 = self.mod2(self.pool2(m1))
        m3 = self.mod3(self.pool3(m2))
        m4 = self.mod4(m3)
        m5 = self.mod5(m4)
        m6 = self.mod6(m5)
        m7 = self.mod7(m6)
        return [m1, m2, m3, m4, m5, m6, m7]


def wider_resnet38_a2(*, dilation: bool = True) -> WiderResNetA2:
    """WRN-38 A2 (blocks 3, 3, 6, 3, 1, 1), output stride 8 when ``dilation``.

    Args:
        dilation: dilate mod5..mod7 for output stride 8.
    """
    return WiderResNetA2((3, 3, 6, 3, 1, 1), dilation)
