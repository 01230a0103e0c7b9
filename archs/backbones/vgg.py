"""VGG-16 as the encoder of the lecture's first segmentation networks (FCN, DeconvNet, SegNet, DeepLab v1).

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015. The layers are torchvision's ``vgg16``/``vgg16_bn`` feature extractor
(``torchvision.models.vgg.make_layers(cfgs["D"])``, BSD-3-Clause), so the state-dict keys are
torchvision's ``features.<i>.*`` and ImageNet weights load without a converter. The segmentation
papers change only padding, pooling and dilation, which `VGG16` sets on those same modules:

- every pooling rounds its output size up (Caffe's pooling; torchvision's rounds down, which only
  differs on odd sizes): the papers' nets were Caffe nets, and FCN's crops rely on it;
- FCN (Long et al., CVPR 2015): ``conv1_1`` padded by 100 so that the 7x7 ``fc6`` fits any input;
- SegNet / DeconvNet: a BatchNorm after every convolution (``vgg16_bn``) and 2x2 max-pooling that
  also returns the argmax indices, which the decoders reuse for unpooling;
- DeepLab v1 (Chen et al., ICLR 2015): 3x3 pooling with padding 1 (Caffe ceil mode), stride 1 in
  ``pool4``/``pool5`` and dilation 2 in ``conv5``: output stride 8.

`vgg_fc_convolutions` builds ``fc6``/``fc7`` as convolutions ("convolutionalised" classifier);
`archs.convert.torchvision.convert_torchvision_vgg16_classifier` reshapes torchvision's weights onto them.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.vgg import cfgs, make_layers

from archs.backbones import layer_outputs

__all__ = ["POOLINGS", "VGG16", "vgg_fc_convolutions"]

POOLINGS = ("vgg", "indices", "deeplab")
# Output channels of the five stages.
STAGE_CHANNELS = (64, 128, 256, 512, 512)


class VGG16(nn.Module):
    """VGG-16's 13 convolutions in five stages, each ending in a max-pooling.

    ``forward`` returns the five pooled stage outputs (strides 2, 4, 8, 16, 32 with the standard
    pooling; 2, 4, 8, 8, 8 with DeepLab's). With ``pooling="indices"``, `encode` also returns the
    argmax indices and the pre-pooling sizes for ``max_unpool2d``.

    Args:
        batch_norm: a BatchNorm after every convolution (torchvision's ``vgg16_bn`` layout).
        first_padding: padding of ``conv1_1`` (FCN uses 100).
        pooling: ``"vgg"`` (2x2/2), ``"indices"`` (2x2/2, also returning argmax indices) or
            ``"deeplab"`` (3x3/2 pad 1 ceil-mode in pools 1-3, 3x3/1 pad 1 in pools 4-5, conv5
            dilated by 2).
    """

    def __init__(self, *, batch_norm: bool = False, first_padding: int = 1, pooling: str = "vgg") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.features = make_layers(cfgs["D"], batch_norm=batch_norm)
        self.pooling = pooling
        self.out_channels = STAGE_CHANNELS
        self.features[0].padding = (first_padding, first_padding)
        pools = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        self._stage_ends = tuple(pools)
        for stage, i in enumerate(pools):
            if pooling == "vgg":
                self.features[i] = nn.MaxPool2d(2, 2, ceil_mode=True)
            elif pooling == "indices":
                self.features[i] = nn.MaxPool2d(2, 2, ceil_mode=True, return_indices=True)
            elif pooling == "deeplab":
                self.features[i] = nn.MaxPool2d(3, 2 if stage < 3 else 1, padding=1, ceil_mode=True)
        if pooling == "deeplab":
            for m in self.features[pools[3] + 1 : pools[4]]:
                if isinstance(m, nn.Conv2d):
                    m.dilation, m.padding = (2, 2), (2, 2)

    def forward(self, x: Tensor) -> list[Tensor]:
        if self.pooling == "indices":
            return self.encode(x)[0]
        return layer_outputs(self.features, x, self._stage_ends)

    def encode(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], list[tuple[int, int]]]:
        """(pooled stage outputs, argmax indices, pre-pooling sizes); needs ``pooling="indices"``."""
        if self.pooling != "indices":
            raise ValueError("encode() needs VGG16(pooling='indices')")
        outs, indices, sizes = [], [], []
        for i, layer in enumerate(self.features):
            if i in self._stage_ends:
                sizes.append((x.shape[-2], x.shape[-1]))
                x, idx = layer(x)
                outs.append(x)
                indices.append(idx)
            else:
                x = layer(x)
        return outs, indices, sizes


def vgg_fc_convolutions(
    *, channels: int = 4096, padding: int = 0, batch_norm: bool = False, dropout: float = 0.5
) -> nn.Sequential:
    """``fc6`` (7x7 conv 512->channels) and ``fc7`` (1x1 conv), each with ReLU: VGG's classifier as convolutions.

    Args:
        channels: width of fc6/fc7 (4096 in VGG-16).
        padding: padding of the 7x7 fc6 (0 as in the papers).
        batch_norm: a BatchNorm after each (DeconvNet); the papers without it use Dropout.
        dropout: Dropout probability after each ReLU (training only; 0 for none).
    """
    layers: list[nn.Module] = []
    for conv in (nn.Conv2d(512, channels, 7, padding=padding), nn.Conv2d(channels, channels, 1)):
        layers.append(conv)
        if batch_norm:
            layers.append(nn.BatchNorm2d(channels))
        layers.append(nn.ReLU(inplace=True))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)
