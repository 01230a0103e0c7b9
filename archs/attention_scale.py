"""Multi-scale inference with learned attention: Attention-to-Scale and Hierarchical Multi-Scale Attention.

Attention-to-Scale: Chen, Yang, Wang, Xu & Yuille, "Attention to Scale: Scale-aware Semantic Image
Segmentation", CVPR 2016 (arXiv:1511.03339; code in deeplab-public-ver2). One DeepLab-LargeFOV
(`archs.deeplab_v1v2.DeepLabLargeFOV`, VGG-16) is shared by the input resized to each scale (1 and 0.5
here, as the lecture shows it; the paper also uses {1, 0.75, 0.5}). The fc7 features of every scale
are resized to the scale-1 resolution and concatenated; the attention model, a 3x3 convolution with
512 filters, ReLU, and a 1x1 convolution with one filter per scale, gives after a softmax over
scales a weight map per scale; the output is the weighted sum of the scales' score maps (fc8,
resized likewise). The paper's extra per-scale supervision is training-only and not built. Resizes
follow DeepLab's Caffe ``Interp`` layer (bilinear, corners aligned).

Hierarchical Multi-Scale Attention (HMSA): Tao, Sapra & Catanzaro, "Hierarchical Multi-Scale
Attention for Semantic Segmentation", arXiv:2005.10821, 2020; official code
https://github.com/NVIDIA/semantic-segmentation (BSD-3-Clause), ``network/ocrnet.py``
``MscaleOCR`` (read for this module). The trunk is HRNetV2-W48 + OCR (`archs.ocrnet.OCRNet`); an
attention head on the OCR output features (3x3 conv 512->256, BN, ReLU, 3x3 conv 256->256, BN,
ReLU, 1x1 conv 256->1, no biases, sigmoid) predicts per pixel how much to trust the current, lower
scale against the next higher one. At inference (``nscale_forward``) the scales are evaluated from
high to low (2.0, 1.0, 0.5 for Cityscapes, ``scripts/eval_cityscapes.yml``); each scale's logits and
attention are first resized to that scale's input size, then

- for a scale >= 1: ``pred = attn * logits + (1 - attn) * resize(pred)``;
- for a scale < 1: ``pred = resize(attn * logits) + (1 - resize(attn)) * pred``;

so the result is at the scale-1 input resolution. All resizes are bilinear with
``align_corners=False`` (the repository's default ``MODEL.ALIGN_CORNERS``). The highest scale's
attention is never used, so it is not computed here. Figures: docs/models/attention-scale.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from archs.base import register
from archs.cards import card
from archs.deeplab_v1v2 import DeepLabLargeFOV
from archs.ocrnet import OCRNet

__all__ = ["AttentionToScale", "HierarchicalMultiScaleAttention", "attention_to_scale_vgg16", "hmsa_ocrnet_hr48"]


class AttentionToScale(nn.Module):
    """A shared DeepLab-LargeFOV on several input scales, merged by a learned per-pixel softmax over scales.

    Args:
        num_classes: output classes.
        scales: input scales; the first must be 1 (the output resolution is scale 1's: stride 8).
    """

    def __init__(self, num_classes: int, scales: Sequence[float] = (1.0, 0.5)) -> None:
        super().__init__()
        if not scales or scales[0] != 1.0:
            raise ValueError(f"scales must start with 1.0, got {tuple(scales)}")
        self.scales = tuple(scales)
        self.net = DeepLabLargeFOV(num_classes)
        fc_channels = self.net.classifier.in_channels
        self.attention = nn.Sequential(
            nn.Conv2d(len(scales) * fc_channels, 512, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(512, len(scales), 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        features: list[Tensor] = []
        scores: list[Tensor] = []
        for scale in self.scales:
            xs = x if scale == 1.0 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=True)
            feat = self.net.features(xs)
            score = self.net.classifier(feat)
            if features:
                size = features[0].shape[-2:]
                feat = F.interpolate(feat, size=size, mode="bilinear", align_corners=True)
                score = F.interpolate(score, size=size, mode="bilinear", align_corners=True)
            features.append(feat)
            scores.append(score)
        weights = self.attention(torch.cat(features, dim=1)).softmax(dim=1)  # (N, S, h, w)
        out = weights[:, :1] * scores[0]
        for i in range(1, len(scores)):
            out = out + weights[:, i : i + 1] * scores[i]
        return out


@register(card("attention-to-scale-vgg16"))
def attention_to_scale_vgg16(*, num_classes: int, scales: Sequence[float] = (1.0, 0.5)) -> AttentionToScale:
    """Attention-to-Scale on DeepLab-LargeFOV (VGG-16).

    Args:
        scales: input scales, starting with 1.0 ((1.0, 0.75, 0.5) is the paper's three-scale model).
    """
    return AttentionToScale(num_classes, scales)


def _attention_head(in_channels: int, channels: int = 256) -> nn.Sequential:
    """NVIDIA's ``make_attn_head``: two 3x3 conv-BN-ReLU (no bias), a 1x1 conv to one channel, sigmoid."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, 1, 1, bias=False),
        nn.Sigmoid(),
    )


class HierarchicalMultiScaleAttention(nn.Module):
    """HRNetV2-W48 + OCR evaluated at several scales, fused by chained pairwise attention.

    ``forward`` returns logits at the input resolution.

    Args:
        num_classes: output classes.
        scales: inference scales; must contain 1.0 (the target scale).
        width: HRNetV2 width.
    """

    def __init__(self, num_classes: int, scales: Sequence[float] = (0.5, 1.0, 2.0), width: int = 48) -> None:
        super().__init__()
        if 1.0 not in scales:
            raise ValueError(f"scales must contain 1.0 (the target scale), got {tuple(scales)}")
        self.scales = tuple(sorted(scales, reverse=True))
        trunk = OCRNet(num_classes, width=width)
        # The trunk returns the OCR output features (the classifier's input); the classifier is applied here.
        classifier = trunk.decode_head.classifier
        assert isinstance(classifier, nn.Conv2d)
        trunk.decode_head.classifier = nn.Identity()
        self.classifier = classifier
        self.trunk = trunk
        self.attention = _attention_head(classifier.in_channels)

    def _resize(self, x: Tensor, size: Sequence[int]) -> Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def _at_scale(self, x: Tensor, scale: float) -> tuple[Tensor, Tensor]:
        """The trunk's features and the logits of ``x`` resized by ``scale``, the logits at that input size."""
        xs = x
        if scale != 1.0:
            xs = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False, recompute_scale_factor=True)
        feats = self.trunk(xs)
        return feats, self._resize(self.classifier(feats), xs.shape[-2:])

    def forward(self, x: Tensor) -> Tensor:
        _, pred = self._at_scale(x, self.scales[0])  # the highest scale: its attention would be unused
        for scale in self.scales[1:]:
            feats, logits = self._at_scale(x, scale)
            size = logits.shape[-2:]
            attn = self._resize(self.attention(feats), size)
            # attn * new + (1 - attn) * old, written as old + attn * (new - old) (fewer kernels, same value).
            if scale >= 1.0:
                pred = self._resize(pred, size)
                pred = pred + attn * (logits - pred)
            else:
                target = pred.shape[-2:]
                pred = pred + self._resize(attn * logits, target) - self._resize(attn, target) * pred
        return pred


@register(card("hmsa-ocrnet-hr48"))
def hmsa_ocrnet_hr48(*, num_classes: int, scales: Sequence[float] = (0.5, 1.0, 2.0)) -> HierarchicalMultiScaleAttention:
    """Hierarchical Multi-Scale Attention with HRNetV2-W48 + OCR, inference scales 0.5/1.0/2.0.

    Args:
        scales: inference scales (must contain 1.0).
    """
    return HierarchicalMultiScaleAttention(num_classes, scales)
