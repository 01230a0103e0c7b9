"""Axial-ResNet: ResNet-50 layout with position-sensitive axial-attention instead of 3x3 convolutions.

Wang et al., "Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic Segmentation", ECCV 2020
(arXiv:2003.07853). Reference code: https://github.com/csrhddlam/axial-deeplab
(``lib/models/axialnet.py``, Apache-2.0) and the authors' TensorFlow DeepLab2
(https://github.com/google-research/deeplab2, ``model/encoder/axial_resnet_instances.py``,
``model/layers/axial_layers.py``, ``model/layers/positional_encodings.py``).

Position-sensitive axial attention along one axis (per head, ``d / 2`` query/key channels and
``d`` value channels), the paper's eq. 4::

    y_o = sum_{p in N(o)} softmax_p( q_o . k_p + q_o . r^q_(p-o) + k_p . r^k_(p-o) ) (v_p + r^v_(p-o))

with learned relative embeddings, the three similarity terms and the two output terms each
batch-normalised, as the reference code does. ``span=m`` (odd) is the local window
``|p - o| <= (m - 1) / 2``; ``span=None`` attends over the whole axis. The window is computed
directly: positions outside the axis are zero padding masked to -inf after the similarity norm,
and nothing on the host depends on the data (window indices and masks come from the shapes).
The embedding tables cover ``2 * MAX_DISTANCE + 1`` offsets whatever the span, as DeepLab2 keeps them.

Block (expansion 2): 1x1 conv-BN-ReLU, height attention, width attention (then 2x2 average pooling
when strided), ReLU, 1x1 conv-BN, residual, ReLU. Stage widths ``m * (128, 256, 512, 1024)`` with
blocks (3, 4, 6, 3); the stem (three 3x3 convolutions, 64, 64, 128 channels, then max pooling)
scales with ``m`` as the reference code scales it. Every strided layer keeps ``ceil(L / 2)``
positions, as DeepLab2's do, so any input size runs. Cost and counts: docs/models/axial-deeplab.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MAX_DISTANCE", "AxialAttention", "AxialBlock", "AxialResNet"]

# Largest attention tensor computed at once (2**28 floats, 1 GiB in fp32): similarities or key/value
# windows; the sequences are chunked to stay below it, a decision made from the shapes alone.
MAX_ATTENTION_ELEMENTS = 2**28
# Relative distances with their own embedding: 2 * 254 + 1 = 509 per table (DeepLab2's MAX_SPAN = 255).
MAX_DISTANCE = 254


class AxialAttention(nn.Module):
    """Multi-head position-sensitive self-attention along the height (``axis=2``) or width (``axis=3``).

    Args:
        in_channels: input channels.
        out_channels: output channels (``heads * d``).
        heads: attention heads.
        axis: 2 for height, 3 for width.
        span: odd window length m (each position attends within ``+-(m - 1) / 2``); None: the whole axis.
        max_distance: the largest relative distance the embedding tables cover (at least the window's
            half-width; global attention needs axes of at most ``max_distance + 1``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        heads: int,
        axis: int,
        span: int | None = 65,
        max_distance: int = MAX_DISTANCE,
    ) -> None:
        super().__init__()
        if out_channels % heads or (out_channels // heads) % 2:
            raise ValueError(f"out_channels {out_channels} must split into {heads} heads of even width")
        if span is not None and (span < 1 or span % 2 == 0):
            raise ValueError(f"span {span} must be a positive odd number (or None for global attention)")
        if span is not None and (span - 1) // 2 > max_distance:
            raise ValueError(f"span {span} needs relative distances up to {(span - 1) // 2} > {max_distance}")
        if axis not in (2, 3):
            raise ValueError(f"axis must be 2 (height) or 3 (width), not {axis}")
        self.heads, self.span, self.axis, self.max_distance = heads, span, axis, max_distance
        self.out_channels = out_channels
        self.d = out_channels // heads
        self.qkv = nn.Conv2d(in_channels, 2 * out_channels, 1, bias=False)
        self.bn_qkv = nn.BatchNorm2d(2 * out_channels)
        self.bn_similarity = nn.BatchNorm2d(3 * heads)
        self.bn_output = nn.BatchNorm2d(2 * out_channels)
        # Relative embeddings r[:, max_distance + (p - o)]: query (d/2), key (d/2), value (d) channels.
        self.relative = nn.Parameter(torch.randn(2 * self.d, 2 * max_distance + 1) * self.d**-0.5)
        nn.init.normal_(self.qkv.weight, 0.0, in_channels**-0.5)

    def radius(self, length: int) -> int | None:
        """Half-width of the window used on an axis of ``length``; None where attention is global."""
        if self.span is None or length - 1 <= (self.span - 1) // 2:
            if length - 1 > self.max_distance:
                raise ValueError(f"global attention over {length} positions exceeds max_distance {self.max_distance}")
            return None
        return (self.span - 1) // 2

    def _split(self, rel: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return rel.split([self.d // 2, self.d // 2, self.d], dim=0)

    def _global_terms(self, q: Tensor, k: Tensor, length: int) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
        """q.k, q.r^q, k.r^k over all (o, p) pairs: (S, heads, L, L) each.

        The positional terms are batched over the position whose embeddings they meet (matrix
        products, counted exactly; an einsum's count is rounded by the counter).
        """
        idx = torch.arange(length, device=q.device)
        offsets = idx[None, :] - idx[:, None] + self.max_distance  # (o, p) -> max_distance + p - o
        r_q, r_k, r_v = self._split(self.relative[:, offsets.flatten()].view(-1, length, length))
        qk = torch.matmul(q, k.transpose(-1, -2))
        # q_o . r^q[:, o, p] for each o: (o, S, heads, d/2) @ (o, d/2, p).
        qr = torch.matmul(q.permute(2, 0, 1, 3), r_q.permute(1, 0, 2)[:, None]).permute(1, 2, 0, 3)
        # k_p . r^k[:, o, p] for each p: (p, S, heads, d/2) @ (p, d/2, o).
        kr = torch.matmul(k.permute(2, 0, 1, 3), r_k.permute(2, 0, 1)[:, None]).permute(1, 2, 3, 0)
        return qk, qr, kr, (r_v,)

    @staticmethod
    def _global_retrieve(attn: Tensor, v: Tensor, r_v: Tensor) -> tuple[Tensor, Tensor]:
        # sum_p a[o, p] r^v[:, o, p] for each o: (o, S, heads, p) @ (o, p, d).
        sve = torch.matmul(attn.permute(2, 0, 1, 3), r_v.permute(1, 2, 0)[:, None]).permute(1, 2, 0, 3)
        return torch.matmul(attn, v), sve

    def _local_terms(self, q: Tensor, k: Tensor, radius: int) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
        """q.k, q.r^q, k.r^k over the window p = o + j - radius, j < 2 * radius + 1: (S, heads, L, m) each."""
        length, m = q.shape[2], 2 * radius + 1
        r_q, r_k, r_v = self._split(self.relative[:, self.max_distance - radius : self.max_distance + radius + 1])
        window = torch.arange(length, device=q.device)[:, None] + torch.arange(m, device=q.device)  # padded index
        # Keys of the window: (S, heads, L, m, d/2), zeros outside the axis.
        k_win = F.pad(k, (0, 0, radius, radius))[:, :, window]
        qk = torch.matmul(q.unsqueeze(-2), k_win.transpose(-1, -2)).squeeze(-2)
        qr = torch.matmul(q, r_q)  # r^q depends on the offset only
        # k_p . r^k_j for every key p and offset j, then gathered at p = o + j - radius.
        kr_all = F.pad(torch.matmul(k, r_k), (0, 0, radius, radius))
        kr = kr_all[:, :, window, torch.arange(m, device=q.device)]
        # -inf where the window leaves the axis.
        mask = F.pad(q.new_zeros(length), (radius, radius), value=float("-inf"))[window]
        return qk, qr, kr, (r_v, mask, window)

    @staticmethod
    def _local_retrieve(attn: Tensor, v: Tensor, r_v: Tensor, radius: int, window: Tensor) -> tuple[Tensor, Tensor]:
        v_win = F.pad(v, (0, 0, radius, radius))[:, :, window]  # (S, heads, L, m, d)
        return torch.matmul(attn.unsqueeze(-2), v_win).squeeze(-2), torch.matmul(attn, r_v.t())

    @staticmethod
    def _bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError("inference folds the similarity and output BatchNorms: they need running statistics")
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        return scale, bn.bias - bn.running_mean * scale

    def _similarity(self, qk: Tensor, qr: Tensor, kr: Tensor) -> Tensor:
        """The three terms batch-normalised and summed (inference: per-head scales; shifts drop out of the softmax)."""
        if self.training:
            s, h, length, keys = qk.shape
            stacked = self.bn_similarity(torch.cat([qk, qr, kr], dim=1))
            return stacked.view(s, 3, h, length, keys).sum(dim=1)
        scale, _ = self._bn_affine(self.bn_similarity)
        s_qk, s_qr, s_kr = (t.view(1, self.heads, 1, 1) for t in scale.split(self.heads))
        return qk * s_qk + qr * s_qr + kr * s_kr

    def _output(self, sv: Tensor, sve: Tensor) -> Tensor:
        """Content and positional retrievals (S, heads, L, d) batch-normalised and summed."""
        s, h, length, d = sv.shape
        if self.training:
            # Channels 2 * (head * d + c) + {0: content, 1: positional}.
            stacked = torch.stack([sv, sve], dim=-1).permute(0, 1, 3, 4, 2).reshape(s, 2 * h * d, length, 1)
            return self.bn_output(stacked).view(s, h, d, 2, length).sum(dim=3).transpose(2, 3)
        scale, shift = (t.view(h, d, 2) for t in self._bn_affine(self.bn_output))
        return sv * scale[None, :, None, :, 0] + sve * scale[None, :, None, :, 1] + shift.sum(-1)[None, :, None]

    def _attend(self, seq: Tensor, radius: int | None) -> Tensor:
        """(S, heads, L, 2d) queries/keys/values -> (S, heads, L, d)."""
        q, k, v = seq.split([self.d // 2, self.d // 2, self.d], dim=-1)
        if radius is None:
            qk, qr, kr, (r_v,) = self._global_terms(q, k, seq.shape[2])
            attn = self._similarity(qk, qr, kr).softmax(dim=-1)
            sv, sve = self._global_retrieve(attn, v, r_v)
        else:
            qk, qr, kr, (r_v, mask, window) = self._local_terms(q, k, radius)
            attn = (self._similarity(qk, qr, kr) + mask).softmax(dim=-1)
            sv, sve = self._local_retrieve(attn, v, r_v, radius, window)
        return self._output(sv, sve)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        qkv = self.bn_qkv(self.qkv(x))  # (N, 2C, H, W)
        # Sequences along the attention axis, channels last: (N * other, heads, L, 2d).
        if self.axis == 2:
            seq = qkv.permute(0, 3, 2, 1).reshape(n * w, h, self.heads, 2 * self.d).transpose(1, 2)
        else:
            seq = qkv.permute(0, 2, 3, 1).reshape(n * h, w, self.heads, 2 * self.d).transpose(1, 2)
        length = seq.shape[2]
        radius = self.radius(length)
        if radius is None:
            per_seq = self.heads * length * length
        else:
            per_seq = length * (2 * radius + 1) * 3 * self.out_channels // 2
        chunk = max(1, MAX_ATTENTION_ELEMENTS // per_seq)
        outs = [self._attend(part, radius) for part in seq.split(chunk, dim=0)]
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)  # (S, heads, L, d)
        if self.axis == 2:
            out = out.reshape(n, w, self.heads, h, self.d).permute(0, 2, 4, 3, 1)
        else:
            out = out.reshape(n, h, self.heads, w, self.d).permute(0, 2, 4, 1, 3)
        return out.reshape(n, self.out_channels, h, w)


class AxialBlock(nn.Module):
    """Residual axial-attention block (bottleneck with expansion 2).

    Args:
        in_channels: input channels.
        width: channels of the two attention layers; the block outputs ``2 * width``.
        stride: 2 pools the output of the width attention (and strides the shortcut).
        heads: attention heads.
        span: attention window (odd) or None for global attention.
        max_distance: relative distances the embedding tables cover.
    """

    expansion = 2

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        heads: int = 8,
        span: int | None = 65,
        max_distance: int = MAX_DISTANCE,
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv_down = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.height_block = AxialAttention(width, width, heads, 2, span, max_distance)
        self.width_block = AxialAttention(width, width, heads, 3, span, max_distance)
        # ceil mode: ceil(L / 2) positions on an odd axis, as many as the strided shortcut keeps
        self.pool = nn.AvgPool2d(stride, stride, ceil_mode=True) if stride > 1 else nn.Identity()
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
        span: attention window of every axial layer (odd), or None for global attention.
        max_distance: relative distances the embedding tables cover.
        output_stride: 16 (the last stage keeps the resolution) or 32.
        stem_multiplier: width multiplier of the stem (64, 64, 128 channels at 1); None: ``width_multiplier``.
    """

    def __init__(
        self,
        width_multiplier: float = 1.0,
        blocks: Sequence[int] = (3, 4, 6, 3),
        heads: int = 8,
        span: int | None = 65,
        max_distance: int = MAX_DISTANCE,
        output_stride: int = 16,
        stem_multiplier: float | None = None,
    ) -> None:
        super().__init__()
        s = width_multiplier if stem_multiplier is None else stem_multiplier
        stem = (int(64 * s), int(64 * s), int(128 * s))
        self.stem = nn.Sequential(
            *self._conv_bn_relu(3, stem[0], 2),
            *self._conv_bn_relu(stem[0], stem[1], 1),
            *self._conv_bn_relu(stem[1], stem[2], 1),
        )
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        strides = (1, 2, 2, 2 if output_stride == 32 else 1)
        in_channels = stem[2]
        self.out_channels: tuple[int, ...] = ()
        stages = []
        for i, (num, stride) in enumerate(zip(blocks, strides, strict=True)):
            width = int(128 * 2**i * width_multiplier)
            layers = []
            for j in range(num):
                layers.append(AxialBlock(in_channels, width, stride if j == 0 else 1, heads, span, max_distance))
                in_channels = width * AxialBlock.expansion
            stages.append(nn.Sequential(*layers))
            self.out_channels += (in_channels,)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

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
