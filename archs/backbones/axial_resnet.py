"""Axial-ResNet: ResNet-50 layout with position-sensitive axial-attention instead of 3x3 convolutions.

Wang et al., "Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic Segmentation", ECCV 2020
(arXiv:2003.07853). Reference code: https://github.com/csrhddlam/axial-deeplab
(``lib/models/axialnet.py``, Apache-2.0; the authors' PyTorch classification code) and the
authors' TensorFlow DeepLab2 (https://github.com/google-research/deeplab2,
``model/encoder/axial_resnet_instances.py``: ``AxialDeepLabL`` = ResNet-50 layout with an inception
stem and axial blocks in every stage).

Position-sensitive axial attention along one axis of length L (per head, ``d_q = d_k = d / 2``
query/key channels and ``d_v = d`` value channels, ``d = width / heads``)::

    y_o = sum_p softmax_p( q_o . k_p + q_o . r^q_(p-o) + k_p . r^k_(p-o) ) (v_p + r^v_(p-o))

with learned relative embeddings r^q, r^k, r^v over the offsets p - o, the three similarity terms
each batch-normalised (an affine map per head in inference) and the two output terms (content and
positional) batch-normalised and summed, as the reference code does. The span is global (the
whole axis); the embedding tables cover offsets up to ``span - 1`` and are sliced to the axis
length at run time. The probabilities are needed for the positional value term, so the attention
is written with explicit matrix products rather than ``scaled_dot_product_attention``.

Block (expansion 2): 1x1 conv + BN + ReLU, height attention, width attention (then 2x2 average
pooling when strided), ReLU, 1x1 conv + BN, residual (1x1 strided conv + BN projection), ReLU.
Stage widths ``m * (128, 256, 512, 1024)`` with blocks (3, 4, 6, 3); the Axial-DeepLab variants
use m = 0.5 (S), 0.75 (M), 1 (L) and 2 (XL). For segmentation the last stage is not strided
(output stride 16).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["AxialAttention", "AxialBlock", "AxialResNet"]

# Largest (sequences x heads x L x L) attention tensor computed at once (2**28 floats, 1 GiB in fp32).
MAX_ATTENTION_ELEMENTS = 2**28


class AxialAttention(nn.Module):
    """Multi-head position-sensitive self-attention along the height (``axis=2``) or width (``axis=3``).

    Args:
        in_channels: input channels.
        out_channels: output channels (``heads * d``).
        heads: attention heads.
        span: the largest axis length the relative embeddings cover.
        axis: 2 for height, 3 for width.
    """

    def __init__(self, in_channels: int, out_channels: int, heads: int, span: int, axis: int) -> None:
        super().__init__()
        if out_channels % heads or (out_channels // heads) % 2:
            raise ValueError(f"out_channels {out_channels} must split into {heads} heads of even width")
        self.heads, self.span, self.axis = heads, span, axis
        self.out_channels = out_channels
        self.d = out_channels // heads
        self.qkv = nn.Conv2d(in_channels, 2 * out_channels, 1, bias=False)
        self.bn_qkv = nn.BatchNorm2d(2 * out_channels)
        self.bn_similarity = nn.BatchNorm2d(3 * heads)
        self.bn_output = nn.BatchNorm2d(2 * out_channels)
        # Relative embeddings for offsets -(span-1)..(span-1): query (d/2), key (d/2), value (d) channels.
        self.relative = nn.Parameter(torch.randn(2 * self.d, 2 * span - 1) * self.d**-0.5)
        nn.init.normal_(self.qkv.weight, 0.0, in_channels**-0.5)

    def _embeddings(self, length: int) -> tuple[Tensor, Tensor, Tensor]:
        """r[c, o, p] = relative[c, o - p + span - 1]... for o, p < ``length``, split into q/k/v parts."""
        if length > self.span:
            raise ValueError(f"axis length {length} exceeds the attention span {self.span}")
        idx = torch.arange(length, device=self.relative.device)
        offsets = idx[:, None] - idx[None, :] + self.span - 1  # (o, p) -> o - p + span - 1
        emb = self.relative[:, offsets.flatten()].view(2 * self.d, length, length)
        return emb.split([self.d // 2, self.d // 2, self.d], dim=0)

    @staticmethod
    def _bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        return scale, bn.bias - bn.running_mean * scale

    def _attend_train(self, q: Tensor, k: Tensor, v: Tensor, r_q: Tensor, r_k: Tensor, r_v: Tensor) -> Tensor:
        """The reference computation (batch statistics over the stacked terms)."""
        length = q.shape[-1]
        qk = torch.matmul(q.transpose(2, 3), k)  # (B, heads, L, L): q_o . k_p
        qr = torch.einsum("bhco,cop->bhop", q, r_q)  # q_o . r^q(o, p)
        kr = torch.einsum("bhcp,cpo->bhop", k, r_k)  # k_p . r^k(p, o)
        similarity = self.bn_similarity(torch.cat([qk, qr, kr], dim=1))
        attn = similarity.view(-1, 3, self.heads, length, length).sum(dim=1).softmax(dim=-1)
        sv = torch.matmul(v, attn.transpose(2, 3))  # (B, heads, d, L)
        sve = torch.einsum("bhop,cop->bhco", attn, r_v)
        out = torch.stack([sv, sve], dim=3).reshape(-1, 2 * self.out_channels, length, 1)
        return self.bn_output(out).view(-1, self.out_channels, 2, length).sum(dim=2)

    def _attend_eval(self, q: Tensor, k: Tensor, v: Tensor, r_q: Tensor, r_k: Tensor, r_v: Tensor) -> Tensor:
        """The same with the inference batch norms folded into the operands (no stacked copies).

        The similarity norm's shifts are constant along the softmax axis and drop out.
        """
        length = q.shape[-1]
        s_sim, _ = self._bn_affine(self.bn_similarity)
        s_qk, s_qr, s_kr = (t.view(1, self.heads, 1, 1) for t in s_sim.split(self.heads))
        qk = torch.matmul((q * s_qk).transpose(2, 3), k)
        qr = torch.einsum("bhco,cop->bhop", q * s_qr, r_q)
        kr = torch.einsum("bhcp,cpo->bhop", k * s_kr, r_k)
        attn = (qk + qr + kr).softmax(dim=-1)
        s_out, t_out = self._bn_affine(self.bn_output)
        s_out, t_out = s_out.view(self.heads, self.d, 2), t_out.view(self.heads, self.d, 2)
        sv = torch.matmul(v, attn.transpose(2, 3)) * s_out[..., 0, None]
        sve = torch.einsum("bhop,cop->bhco", attn, r_v) * s_out[..., 1, None]
        return (sv + sve + t_out.sum(-1)[..., None]).reshape(-1, self.out_channels, length)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        qkv = self.bn_qkv(self.qkv(x))  # (N, 2C, H, W)
        # Sequences along the attention axis: (N * other, heads, 2d, L).
        if self.axis == 2:
            seq = qkv.permute(0, 3, 1, 2).reshape(n * w, self.heads, 2 * self.d, h)
        else:
            seq = qkv.permute(0, 2, 1, 3).reshape(n * h, self.heads, 2 * self.d, w)
        length = seq.shape[-1]
        r_q, r_k, r_v = self._embeddings(length)
        attend = self._attend_train if self.training else self._attend_eval
        # Bound the (sequences, heads, L, L) attention tensors: chunk the sequences (a static,
        # shape-only decision) when one would exceed MAX_ATTENTION_ELEMENTS.
        per_seq = self.heads * length * length
        chunk = max(1, MAX_ATTENTION_ELEMENTS // per_seq)
        outs = [
            attend(*part.split([self.d // 2, self.d // 2, self.d], dim=2), r_q, r_k, r_v)
            for part in seq.split(chunk, dim=0)
        ]
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)
        if self.axis == 2:
            return out.view(n, w, self.out_channels, h).permute(0, 2, 3, 1)
        return out.view(n, h, self.out_channels, w).permute(0, 2, 1, 3)


class AxialBlock(nn.Module):
    """Residual axial-attention block (bottleneck with expansion 2).

    Args:
        in_channels: input channels.
        width: channels of the two attention layers; the block outputs ``2 * width``.
        stride: 2 pools the output of the width attention (and strides the shortcut).
        heads: attention heads.
        span: attention span (largest axis length).
    """

    expansion = 2

    def __init__(self, in_channels: int, width: int, stride: int = 1, heads: int = 8, span: int = 65) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv_down = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.height_block = AxialAttention(width, width, heads, span, axis=2)
        self.width_block = AxialAttention(width, width, heads, span, axis=3)
        self.pool = nn.AvgPool2d(stride, stride) if stride > 1 else nn.Identity()
        self.conv_up = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv_down(x)))
        out = self.relu(self.pool(self.width_block(self.height_block(out))))
        out = self.bn2(self.conv_up(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class AxialResNet(nn.Module):
    """Axial-ResNet with the three-convolution stem, returning the stage outputs (strides 4, 8, 16, 16).

    Args:
        width_multiplier: m (0.5 S, 0.75 M, 1 L, 2 XL).
        blocks: blocks per stage.
        heads: attention heads.
        spans: attention span per stage (the largest feature-map side at the stage's output stride;
            a strided first block uses the previous stage's span).
        output_stride: 16 (the last stage keeps the resolution) or 32.
    """

    def __init__(
        self,
        width_multiplier: float = 1.0,
        blocks: Sequence[int] = (3, 4, 6, 3),
        heads: int = 8,
        spans: Sequence[int] = (513, 257, 129, 129),
        output_stride: int = 16,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            *self._conv_bn_relu(3, 64, 2), *self._conv_bn_relu(64, 64, 1), *self._conv_bn_relu(64, 128, 1)
        )
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        strides = (1, 2, 2, 2 if output_stride == 32 else 1)
        in_channels = 128
        self.out_channels: tuple[int, ...] = ()
        for i, (num, stride, span) in enumerate(zip(blocks, strides, spans, strict=True)):
            width = int(128 * 2**i * width_multiplier)
            # A strided block attends at the previous stage's resolution (it pools afterwards).
            first_span = spans[i - 1] if stride > 1 else span
            layers = [AxialBlock(in_channels, width, stride, heads, first_span)]
            in_channels = width * AxialBlock.expansion
            layers += [AxialBlock(in_channels, width, 1, heads, span) for _ in range(num - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
            self.out_channels += (in_channels,)

    @staticmethod
    def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.stem(x))
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outs.append(x)
        return outs
