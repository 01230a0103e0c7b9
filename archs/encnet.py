"""EncNet: context encoding with a learned codebook and channel-wise feature scaling.

Zhang et al., "Context Encoding for Semantic Segmentation", CVPR 2018 (arXiv:1803.08904).
Official repository: https://github.com/zhanghang1989/PyTorch-Encoding (MIT). The configuration
of the comparison table's row is mmsegmentation's ``configs/encnet/encnet_r101-d8_*``
(https://github.com/open-mmlab/mmsegmentation, Apache-2.0):

- ResNetV1c-101 dilated to output stride 8 (`archs.backbones.resnet`);
- 3x3 conv 2048->512 + BN + ReLU;
- context encoding module: 1x1 conv 512->512 + BN + ReLU, then the encoding layer with K = 32
  codewords d_k and smoothing factors s_k: for the pixel features x_i,
  a_ik = softmax_k(s_k ||x_i - d_k||^2) and e_k = sum_i a_ik (x_i - d_k); BN over the codes,
  ReLU, the mean over the codes e = mean_k e_k; gamma = sigmoid(W e + b) scales the channels:
  y = ReLU(x + x * gamma);
- Dropout2d(0.1) and a 1x1 classifier; logits at stride 8.

Training-only parts (``aux_head=True``): the semantic-encoding loss branch (a linear layer
512 -> classes on e, predicting which classes are present) and mmseg's auxiliary FCN head on
stage 3. mmseg's inference model keeps the SE layer; the published 55.1 M counts both.
Figures: docs/models/encnet.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from archs.backbones.resnet import resnet101_v1c
from archs.base import register
from archs.cards import card
from archs.common import SegmentationModel, conv_bn_relu, mmseg_model
from archs.convert.mmseg import convert_mmseg_encnet

__all__ = ["EncHead", "EncModule", "Encoding", "encnet_r101"]


class Encoding(nn.Module):
    """The encoding layer: soft-assignment residuals to ``num_codes`` learned codewords.

    Maps ``(N, C, H, W)`` to ``(N, K, C)``. The squared distances and the aggregation are expanded
    into matrix products (``||x||^2 - 2 x.d + ||d||^2`` and ``A^T X - (sum_i A) d``), which avoids
    materialising the ``(N, HW, K, C)`` residual tensor; it runs in fp32 (also under autocast).

    Args:
        channels: feature channels C.
        num_codes: codewords K.
    """

    def __init__(self, channels: int, num_codes: int) -> None:
        super().__init__()
        std = 1.0 / (num_codes * channels) ** 0.5
        self.codewords = nn.Parameter(torch.empty(num_codes, channels).uniform_(-std, std))
        self.scale = nn.Parameter(torch.empty(num_codes).uniform_(-1, 0))

    def forward(self, x: Tensor) -> Tensor:
        # fp32 even under autocast: the expanded distance subtracts large, nearly equal terms.
        with torch.autocast(x.device.type, enabled=False):
            x = x.float().flatten(2).transpose(1, 2)  # (N, HW, C)
            codewords = self.codewords.float()
            sq_dist = (
                x.pow(2).sum(-1, keepdim=True) - 2 * torch.matmul(x, codewords.t()) + codewords.pow(2).sum(-1)
            )  # (N, HW, K)
            assign = F.softmax(sq_dist * self.scale.float(), dim=2)
            return torch.matmul(assign.transpose(1, 2), x) - assign.sum(1).unsqueeze(2) * codewords  # (N, K, C)


class EncModule(nn.Module):
    """Context encoding module: projection, encoding, and the channel scaling it predicts.

    Returns the scaled features and the encoded vector e (input of the SE-loss layer).

    Args:
        channels: feature channels.
        num_codes: codewords.
    """

    def __init__(self, channels: int, num_codes: int = 32) -> None:
        super().__init__()
        self.encoding_project = conv_bn_relu(channels, channels, 1)
        self.encoding = nn.Sequential(Encoding(channels, num_codes), nn.BatchNorm1d(num_codes), nn.ReLU(inplace=True))
        self.fc = nn.Sequential(nn.Linear(channels, channels), nn.Sigmoid())

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        encoded = self.encoding(self.encoding_project(x)).mean(dim=1)
        gamma = self.fc(encoded)
        return F.relu(x + x * gamma[:, :, None, None]), encoded


class EncHead(nn.Module):
    """mmseg's ``EncHead`` (no lateral connections): bottleneck, encoding module, classifier.

    Args:
        in_channels: channels of the last backbone stage.
        num_classes: output classes.
        channels: head width.
        num_codes: codewords of the encoding layer.
        se_loss: add the training-only semantic-encoding layer; in ``train()`` mode the head then
            returns ``(logits, se_logits)``.
    """

    def __init__(
        self, in_channels: int, num_classes: int, channels: int = 512, num_codes: int = 32, se_loss: bool = False
    ) -> None:
        super().__init__()
        self.bottleneck = conv_bn_relu(in_channels, channels, 3)
        self.enc_module = EncModule(channels, num_codes)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.se_layer = nn.Linear(channels, num_classes) if se_loss else None

    def forward(self, features: Sequence[Tensor]) -> Tensor | tuple[Tensor, Tensor]:
        out, encoded = self.enc_module(self.bottleneck(features[-1]))
        logits = self.classifier(self.dropout(out))
        if self.se_layer is not None and self.training:
            return logits, self.se_layer(encoded)
        return logits


@register(card("encnet-r101", converter=convert_mmseg_encnet))
def encnet_r101(*, num_classes: int, aux_head: bool = False) -> SegmentationModel:
    """EncNet on ResNetV1c-101 (OS8), mmseg's ``encnet_r101-d8``.

    Args:
        aux_head: add the training-only parts: the SE-loss layer and the auxiliary FCN head on
            stage 3. In ``train()`` mode the model then returns ``((logits, se_logits), aux_logits)``.
    """
    backbone = resnet101_v1c()
    head = EncHead(backbone.out_channels[-1], num_classes, se_loss=aux_head)
    return mmseg_model(backbone, head, num_classes, aux_head)
