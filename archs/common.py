"""What the CNN families share: conv-BN-ReLU blocks, `SegmentationModel`, mmseg's heads, the upsampling decoders."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops.misc import Conv2dNormActivation

from archs.backbones.mobilenetv2 import MobileNetV2
from archs.backbones.resnet import ResNet

__all__ = [
    "UPSAMPLINGS",
    "FCNHead",
    "SegmentationModel",
    "UnpoolingDecoder",
    "conv_bn_relu",
    "conv_bn_relu_stack",
    "learned_upsample",
    "mmseg_model",
    "separable_conv_bn_relu",
    "unpool",
]

UPSAMPLINGS = ("transposed", "resize")


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> Conv2dNormActivation:
    """Conv (no bias) -> BN -> ReLU with "same" padding: mmseg's ``ConvModule``, torchvision's layout."""
    return Conv2dNormActivation(
        in_channels, out_channels, kernel_size, dilation=dilation, norm_layer=nn.BatchNorm2d, inplace=True
    )


def separable_conv_bn_relu(in_channels: int, out_channels: int, dilation: int = 1) -> nn.Sequential:
    """Depthwise 3x3 conv-BN-ReLU, then pointwise 1x1 conv-BN-ReLU (mmcv's ``DepthwiseSeparableConvModule``)."""
    depthwise = Conv2dNormActivation(
        in_channels, in_channels, 3, dilation=dilation, groups=in_channels, norm_layer=nn.BatchNorm2d, inplace=True
    )
    return nn.Sequential(depthwise, conv_bn_relu(in_channels, out_channels, 1))


def conv_bn_relu_stack(in_channels: int, widths: tuple[int, ...], *, transposed: bool = False) -> nn.Sequential:
    """3x3 (transposed) conv with bias -> BN -> ReLU per entry of ``widths`` (SegNet's and DeconvNet's Caffe layout).

    Args:
        in_channels: channels of the input.
        widths: output channels of each block.
        transposed: use stride-1 transposed convolutions (DeconvNet's "deconvolution" layers).
    """
    layers: list[nn.Module] = []
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    for width in widths:
        layers += [conv(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers)


def unpool(x: Tensor, indices: Tensor, size: tuple[int, int]) -> Tensor:
    """Max-unpooling: each value goes back to its argmax position in a zero map of ``size``.

    ``F.max_unpool2d`` with ``output_size``, minus its Python-side size checks, which fail under
    ``torch.jit.trace`` (the FLOP counter traces the model).
    """
    return torch.ops.aten.max_unpool2d(x, indices, [size[0], size[1]])


def learned_upsample(
    mode: str, in_channels: int, out_channels: int, *, padding: int = 1, bias: bool = False
) -> nn.Module:
    """A learned 2x upsampling: ``"transposed"`` (4x4 stride-2 transposed conv) or ``"resize"`` (nearest x2 + 3x3 conv).

    Both give the output size ``2 * size + 2 - 2 * padding`` and the same alignment of output to
    input pixels, so either can replace the other (FCN's skips crop by fixed offsets that stay valid).
    The choice is the lecture's checkerboard comparison (Odena et al., Distill 2016).

    Args:
        mode: ``"transposed"`` or ``"resize"``.
        in_channels: input channels.
        out_channels: output channels.
        padding: padding of the transposed convolution (0 in FCN's Caffe layers, 1 for an exact 2x);
            the resize-convolution pads its 3x3 convolution by ``2 - padding``.
        bias: whether the convolution has a bias.
    """
    if mode == "transposed":
        return nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=padding, bias=bias)
    if mode == "resize":
        conv = nn.Conv2d(in_channels, out_channels, 3, padding=2 - padding, bias=bias)
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv)
    raise ValueError(f"upsampling mode must be one of {UPSAMPLINGS}, got {mode!r}")


class UnpoolingDecoder(nn.Module):
    """The mirrored decoder of SegNet and DeconvNet: per encoder stage, deepest first, an upsampling back to the
    stage's pre-pooling size, then a `conv_bn_relu_stack`.

    ``forward(x, indices, sizes)`` takes the deepest pooled map and the encoder's argmax indices and
    pre-pooling sizes (`archs.backbones.vgg.VGG16.encode`), in encoder order.

    Args:
        in_channels: channels of the deepest pooled map.
        stages: output channels of each stage's blocks, deepest first.
        transposed: stride-1 transposed convolutions in the blocks (DeconvNet's "deconvolutions").
        upsampling: ``"unpool"`` (max-unpooling with the encoder's indices), or ``"transposed"`` /
            ``"resize"`` for a `learned_upsample` (C->C) per stage instead.
    """

    def __init__(
        self,
        in_channels: int,
        stages: Sequence[tuple[int, ...]],
        *,
        transposed: bool = False,
        upsampling: str = "unpool",
    ) -> None:
        super().__init__()
        if upsampling not in ("unpool", *UPSAMPLINGS):
            raise ValueError(f"upsampling must be 'unpool', 'transposed' or 'resize', got {upsampling!r}")
        self.upsampling = upsampling
        stacks, upsamplers = [], []
        for widths in stages:
            if upsampling != "unpool":
                upsamplers.append(learned_upsample(upsampling, in_channels, in_channels, padding=1, bias=True))
            stacks.append(conv_bn_relu_stack(in_channels, widths, transposed=transposed))
            in_channels = widths[-1]
        self.stages = nn.ModuleList(stacks)
        self.upsamplers = nn.ModuleList(upsamplers)
        self.out_channels = in_channels

    def forward(self, x: Tensor, indices: Sequence[Tensor], sizes: Sequence[tuple[int, int]]) -> Tensor:
        for i, (stage, idx, size) in enumerate(zip(self.stages, reversed(indices), reversed(sizes), strict=True)):
            if self.upsampling == "unpool":
                x = unpool(x, idx, size)
            else:
                # On odd sizes the (ceil-mode) pooling rounded up: drop the extra row/column.
                x = self.upsamplers[i](x)[..., : size[0], : size[1]]
            x = stage(x)
        return x


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


def mmseg_model(
    backbone: ResNet | MobileNetV2, head: nn.Module, num_classes: int, aux_head: bool = False
) -> SegmentationModel:
    """``backbone`` and ``head`` as an mmseg config builds them; with ``aux_head``, its training-only auxiliary head.

    The auxiliary head of every mmseg ResNet-101/MobileNetV2 config is an `FCNHead` with one 3x3
    conv (256) on stage 3; the published parameter counts include it.

    Args:
        backbone: the dilated backbone.
        head: the decode head on its features.
        num_classes: output classes.
        aux_head: add the auxiliary head.
    """
    aux = FCNHead(backbone.out_channels[2], 256, num_classes, num_convs=1, concat_input=False, in_index=2)
    return SegmentationModel(backbone, head, aux if aux_head else None)
