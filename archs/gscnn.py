"""Gated-SCNN: a regular segmentation stream and a gated shape stream on Wider ResNet-38.

Takikawa, Acuna, Jampani & Fidler, "Gated-SCNN: Gated Shape CNNs for Semantic Segmentation",
ICCV 2019 (arXiv:1907.05740). Official repository: https://github.com/nv-tlabs/GSCNN
(CC BY-NC-SA 4.0); this module follows its ``network/gscnn.py`` (the Cityscapes model):

- regular stream: WRN-38 A2 dilated to output stride 8 (`archs.backbones.wider_resnet`);
- shape stream, at full resolution: ``m1`` (64 channels) -> BasicBlock -> 1x1 to 32 -> gated
  conv with the side output of ``m3`` -> BasicBlock -> 1x1 to 16 -> gated conv with ``m4`` ->
  BasicBlock -> 1x1 to 8 -> gated conv with ``m7`` -> 1x1 to 1 -> sigmoid (the boundary map).
  Side outputs are 1x1 convs to one channel, bilinearly upsampled (``align_corners=True``).
  A gated conv computes ``alpha = sigmoid(BN(conv1x1(ReLU(conv1x1(BN([s, r]))))))`` from the shape
  features ``s`` and the side output ``r`` and returns ``conv1x1(s * (1 + alpha))``;
- fusion: the boundary map and the image's Canny edges (thresholds 10 and 100) are concatenated,
  fused by a 1x1 conv and a sigmoid, and enter the ASPP as an extra 256-channel branch;
- ASPP on ``m7`` (4096 channels): image pooling, the edge branch, 1x1 and 3x3 convs with rates
  12, 24, 36 (256 channels each, BN + ReLU); 1x1 projection 1536 -> 256 (no norm);
- decoder: 1x1 projection of ``m2`` to 48, concatenation with the upsampled ASPP output,
  two 3x3 conv + BN + ReLU (256) and a 1x1 classifier (no bias): logits at stride 2.

The Canny edges are computed in the model (`CannyEdges`), on the GPU, from the de-normalised
input image, in place of the reference code's ``cv2.Canny`` on the host (which, as written there,
runs on the normalised tensor cast to ``uint8``). The boundary map is also the output of the
training-only dual-task loss; the inference model returns the segmentation logits only.
Figures: docs/models/gscnn.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from archs.backbones.wider_resnet import wider_resnet38_a2
from archs.base import IMAGENET_MEAN, IMAGENET_STD, register
from archs.cards import card
from archs.common import conv_bn_relu
from archs.convert.authors import convert_authors_gscnn

__all__ = ["GSCNN", "CannyEdges", "GatedSpatialConv2d", "gscnn_wrn38"]

# OpenCV's fixed-point tan(22.5 deg) * 2**15, rounded (imgproc/src/canny.cpp).
_TG22 = 13573
_SHIFT = 2**15


def _up(x: Tensor, size: Sequence[int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class CannyEdges(nn.Module):
    """Canny edge detection as ``cv2.Canny(image, low, high)`` computes it (aperture 3, L1 norm).

    Input: ``(N, 3, H, W)`` images on the 0..255 scale (rounded and clamped to 8-bit values, as
    the 8-bit image OpenCV sees). Output: ``(N, 1, H, W)`` with 255 at edges and 0 elsewhere.
    Steps: Sobel derivatives (replicated border) per channel; per pixel, the channel of largest
    ``|dx| + |dy|``; non-maximum suppression across the gradient direction quantised to 0, 45, 90
    or 135 degrees (OpenCV's fixed-point test and tie rules); hysteresis: pixels above ``low`` that
    survive suppression are edges when 8-connected to a pixel above ``high``. Hysteresis spreads
    one pixel per step for ``hysteresis_steps`` steps (a fixed count, so the forward pass needs no
    host synchronisation); weak chains longer than that are cut, a difference from OpenCV's
    unbounded flood fill that is rare at natural-image edge lengths.

    Args:
        low: lower hysteresis threshold (10 in GSCNN).
        high: upper hysteresis threshold (100 in GSCNN).
        hysteresis_steps: propagation steps of the hysteresis.
    """

    sobel: Tensor

    def __init__(self, low: float = 10.0, high: float = 100.0, hysteresis_steps: int = 64) -> None:
        super().__init__()
        self.low, self.high, self.hysteresis_steps = low, high, hysteresis_steps
        sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        self.register_buffer("sobel", torch.stack([sobel_x, sobel_x.t()]).unsqueeze(1), persistent=False)

    def forward(self, image: Tensor) -> Tensor:
        n, c, h, w = image.shape
        image = image.float().round().clamp(0, 255)
        grads = F.conv2d(F.pad(image.reshape(n * c, 1, h, w), (1, 1, 1, 1), mode="replicate"), self.sobel)
        grads = grads.reshape(n, c, 2, h, w)
        # Exact small integers in float32; integer arithmetic keeps OpenCV's fixed-point tests exact.
        dx, dy = grads[:, :, 0].to(torch.int32), grads[:, :, 1].to(torch.int32)
        mags = dx.abs() + dy.abs()
        mag, gx, gy = mags[:, 0], dx[:, 0], dy[:, 0]
        for k in range(1, c):  # the first channel of largest magnitude, as OpenCV picks it
            better = mags[:, k] > mag
            mag = torch.where(better, mags[:, k], mag)
            gx = torch.where(better, dx[:, k], gx)
            gy = torch.where(better, dy[:, k], gy)
        m = mag.unsqueeze(1)
        p = F.pad(m, (1, 1, 1, 1))  # zero magnitude outside the image

        def at(dyo: int, dxo: int) -> Tensor:
            return p[:, :, 1 + dyo : 1 + dyo + h, 1 + dxo : 1 + dxo + w]

        ax, ay = gx.abs().unsqueeze(1), gy.abs().unsqueeze(1) * _SHIFT
        tg22 = ax * _TG22
        tg67 = tg22 + ax * (2 * _SHIFT)
        horizontal = ay < tg22
        vertical = ay > tg67
        same_sign = ((gx < 0) == (gy < 0)).unsqueeze(1)
        keep_h = (m > at(0, -1)) & (m >= at(0, 1))
        keep_v = (m > at(-1, 0)) & (m >= at(1, 0))
        keep_d = torch.where(same_sign, (m > at(-1, -1)) & (m > at(1, 1)), (m > at(-1, 1)) & (m > at(1, -1)))
        keep = torch.where(horizontal, keep_h, torch.where(vertical, keep_v, keep_d))
        candidate = (m > self.low) & keep
        edges = (candidate & (m > self.high)).float()
        weak = candidate.float()
        for _ in range(self.hysteresis_steps):
            edges = F.max_pool2d(edges, 3, 1, 1) * weak
        return edges * 255.0


class GatedSpatialConv2d(nn.Module):
    """GSCNN's gated convolution: shape features re-weighted by a gate computed with a side output.

    ``alpha = sigmoid(BN(conv1x1(ReLU(conv1x1(BN(cat[s, r]))))))``; ``out = conv1x1(s * (1 + alpha))``.

    Args:
        in_channels: channels of the shape features ``s``.
        out_channels: output channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self._gate_conv = nn.Sequential(
            nn.BatchNorm2d(in_channels + 1),
            nn.Conv2d(in_channels + 1, in_channels + 1, 1),
            nn.ReLU(),
            nn.Conv2d(in_channels + 1, 1, 1),
            nn.BatchNorm2d(1),
            nn.Sigmoid(),
        )
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 1, 1))
        nn.init.xavier_normal_(self.weight)

    def forward(self, shape: Tensor, side: Tensor) -> Tensor:
        alpha = self._gate_conv(torch.cat([shape, side], dim=1))
        return F.conv2d(shape * (alpha + 1), self.weight)


class GSCNNASPP(nn.Module):
    """ASPP with image pooling and the shape stream's edge branch; concatenation of six 256-d maps.

    Args:
        in_channels: channels of the trunk output.
        channels: width of every branch.
        rates: dilations of the 3x3 branches (12, 24, 36 at output stride 8).
    """

    def __init__(self, in_channels: int, channels: int = 256, rates: Sequence[int] = (12, 24, 36)) -> None:
        super().__init__()
        self.features = nn.ModuleList(
            [conv_bn_relu(in_channels, channels, 1)] + [conv_bn_relu(in_channels, channels, 3, r) for r in rates]
        )
        self.img_conv = conv_bn_relu(in_channels, channels, 1)
        self.edge_conv = conv_bn_relu(1, channels, 1)

    def forward(self, x: Tensor, edge: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = _up(self.img_conv(x.mean(dim=(2, 3), keepdim=True)), size)
        out = [pooled, self.edge_conv(_up(edge, size))]
        return torch.cat(out + [f(x) for f in self.features], dim=1)


class GSCNN(nn.Module):
    """Gated-SCNN on WRN-38 (output stride 8 trunk, logits at stride 2).

    Args:
        num_classes: output classes.
        mean, std: the input normalisation (0..255 scale), undone to compute the Canny edges.
        hysteresis_steps: propagation steps of the Canny hysteresis.
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        num_classes: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        hysteresis_steps: int = 64,
    ) -> None:
        super().__init__()
        self.backbone = wider_resnet38_a2(dilation=True)
        self.dsn3 = nn.Conv2d(256, 1, 1)
        self.dsn4 = nn.Conv2d(512, 1, 1)
        self.dsn7 = nn.Conv2d(4096, 1, 1)
        self.res1 = BasicBlock(64, 64)
        self.d1 = nn.Conv2d(64, 32, 1)
        self.res2 = BasicBlock(32, 32)
        self.d2 = nn.Conv2d(32, 16, 1)
        self.res3 = BasicBlock(16, 16)
        self.d3 = nn.Conv2d(16, 8, 1)
        self.fuse = nn.Conv2d(8, 1, 1, bias=False)
        self.cw = nn.Conv2d(2, 1, 1, bias=False)
        self.gate1 = GatedSpatialConv2d(32, 32)
        self.gate2 = GatedSpatialConv2d(16, 16)
        self.gate3 = GatedSpatialConv2d(8, 8)
        self.canny = CannyEdges(10.0, 100.0, hysteresis_steps)
        self.aspp = GSCNNASPP(4096, 256, (12, 24, 36))
        self.bot_fine = nn.Conv2d(128, 48, 1, bias=False)
        self.bot_aspp = nn.Conv2d(6 * 256, 256, 1, bias=False)
        self.final_seg = nn.Sequential(
            nn.Conv2d(256 + 48, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, num_classes, 1, bias=False),
        )
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def shape_stream(self, feats: list[Tensor], size: Sequence[int]) -> Tensor:
        """The boundary map (N, 1, H, W) in [0, 1] from the trunk features."""
        m1, _, m3, m4, _, _, m7 = feats
        s3, s4, s7 = _up(self.dsn3(m3), size), _up(self.dsn4(m4), size), _up(self.dsn7(m7), size)
        cs = self.gate1(self.d1(self.res1(_up(m1, size))), s3)
        cs = self.gate2(self.d2(self.res2(cs)), s4)
        cs = self.gate3(self.d3(self.res3(cs)), s7)
        return torch.sigmoid(self.fuse(cs))

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        feats = self.backbone(x)
        boundary = self.shape_stream(feats, size)
        edges = self.canny(x * self.std + self.mean)
        acts = torch.sigmoid(self.cw(torch.cat([boundary, edges], dim=1)))
        m2, m7 = feats[1], feats[6]
        aspp = _up(self.bot_aspp(self.aspp(m7, acts)), m2.shape[-2:])
        return self.final_seg(torch.cat([self.bot_fine(m2), aspp], dim=1))


@register(card("gscnn-wrn38", converter=convert_authors_gscnn))
def gscnn_wrn38(*, num_classes: int) -> nn.Module:
    """Gated-SCNN with the WRN-38 A2 trunk (the official Cityscapes model)."""
    return GSCNN(num_classes)
