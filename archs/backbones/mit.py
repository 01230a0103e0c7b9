"""Mix Transformer (MiT) B0–B5, the SegFormer encoder.

Paper: Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with
Transformers", NeurIPS 2021. Official code: https://github.com/NVlabs/SegFormer (NVIDIA Source Code
License). Configuration facts: ``mmseg/models/backbones/mix_transformer.py`` of that repository.

Four stages; each starts with an overlapping patch embedding (a strided convolution + LayerNorm),
then blocks of efficient self-attention (keys and values spatially reduced by a strided conv of
ratio ``sr``) and Mix-FFN (a depth-wise 3x3 convolution between the two linear layers), and ends
with a LayerNorm. Tokens stay in ``(N, L, C)`` layout inside a stage.

The LayerNorms' eps differ between implementations, so each checkpoint is run with its source's
(`LayerNormEps`): HF transformers' port keeps PyTorch's 1e-5 everywhere; the authors' code builds
the blocks' and stages' norms with eps 1e-6 and the patch embeddings' and reduced keys' with 1e-5.

On a CUDA GPU, in inference, the memory-bound steps run as fused kernels (`archs.kernels`): each
residual addition with the LayerNorm after it, the LayerNorms of the patch embeddings and of the
reduced keys, and Mix-FFN's depth-wise convolution with its GELU. The same function; elsewhere
(a CPU, training, tracing, ``torch.compile``, ``SEGBENCH_KERNELS=0``) the PyTorch operators run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from archs import kernels


@dataclass(frozen=True)
class MiTConfig:
    """Widths and depths of one MiT variant (heads, reductions and MLP ratio are shared)."""

    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: int = 4


@dataclass(frozen=True)
class LayerNormEps:
    """The LayerNorm eps of one MiT implementation.

    Args:
        blocks: of each block's two norms and of the norm that ends each stage.
        embeddings: of the patch embeddings' norms and of the reduced keys' norms.
    """

    blocks: float
    embeddings: float


# transformers' SegFormer: nn.LayerNorm's default throughout.
HF_LAYER_NORM_EPS = LayerNormEps(blocks=1e-5, embeddings=1e-5)
# NVlabs/SegFormer mix_transformer.py: norm_layer=partial(nn.LayerNorm, eps=1e-6) for the blocks and stage
# norms; OverlapPatchEmbed and Attention build theirs with the default.
AUTHORS_LAYER_NORM_EPS = LayerNormEps(blocks=1e-6, embeddings=1e-5)


MIT_CONFIGS = {
    "b0": MiTConfig((32, 64, 160, 256), (2, 2, 2, 2)),
    "b1": MiTConfig((64, 128, 320, 512), (2, 2, 2, 2)),
    "b2": MiTConfig((64, 128, 320, 512), (3, 4, 6, 3)),
    "b3": MiTConfig((64, 128, 320, 512), (3, 4, 18, 3)),
    "b4": MiTConfig((64, 128, 320, 512), (3, 8, 27, 3)),
    "b5": MiTConfig((64, 128, 320, 512), (3, 6, 40, 3)),
}


class OverlapPatchEmbed(nn.Module):
    """Strided convolution with symmetric padding, then LayerNorm over channels.

    Args:
        in_channels: input channels.
        dim: embedding width.
        patch_size: kernel size (7 for stage 1, 3 after).
        stride: 4 for stage 1, 2 after.
    """

    def __init__(self, in_channels: int, dim: int, patch_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride, patch_size // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        # the output is the residual stream: in the dtype the norm gives
        return kernels.layer_norm(x.flatten(2).transpose(1, 2), self.norm, feeds_matmul=False), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys/values come from a ``sr``-times reduced map.

    Args:
        dim: token width.
        num_heads: attention heads.
        sr_ratio: spatial reduction of keys and values (1: none).
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)  # keys and values in one matmul
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.sr_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        heads = self.num_heads
        q = self.q(x).view(b, n, heads, c // heads).transpose(1, 2)
        if self.sr_ratio > 1:
            x = self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
            x = kernels.layer_norm(x, self.sr_norm, feeds_matmul=True)
        k, v = self.kv(x).view(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MixFFN(nn.Module):
    """fc1 -> depth-wise 3x3 conv (with bias) -> GELU -> fc2.

    Args:
        dim: token width.
        hidden: hidden width (4 x dim).
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, _ = x.shape
        x = self.fc1(x)
        if kernels.active(x) and kernels.supports_dwconv(self.dwconv):
            fused = kernels.dwconv3x3_gelu(x, h, w, self.dwconv)
            if fused is not None:
                return self.fc2(fused)
        x = self.dwconv(x.transpose(1, 2).reshape(b, -1, h, w)).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)); x + ffn(norm2(x)). DropPath is training-only."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MixFFN(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), h, w)
        return x + self.mlp(self.norm2(x), h, w)


class MixTransformer(nn.Module):
    """The MiT encoder: four feature maps at strides 4, 8, 16, 32.

    Args:
        config: widths and depths of the variant (`MIT_CONFIGS`).
        in_channels: input channels.
        layer_norm_eps: the LayerNorms' eps (`set_layer_norm_eps` changes it on a built encoder).
    """

    def __init__(
        self, config: MiTConfig, in_channels: int = 3, layer_norm_eps: LayerNormEps = HF_LAYER_NORM_EPS
    ) -> None:
        super().__init__()
        self.embed_dims = config.embed_dims
        dims = (in_channels, *config.embed_dims)
        self.patch_embeds = nn.ModuleList(
            OverlapPatchEmbed(dims[i], dims[i + 1], 7 if i == 0 else 3, 4 if i == 0 else 2) for i in range(4)
        )
        self.blocks = nn.ModuleList(
            nn.ModuleList(
                Block(config.embed_dims[i], config.num_heads[i], config.sr_ratios[i], config.mlp_ratio)
                for _ in range(config.depths[i])
            )
            for i in range(4)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in config.embed_dims)
        self.set_layer_norm_eps(layer_norm_eps)

    def set_layer_norm_eps(self, eps: LayerNormEps) -> None:
        """Run every LayerNorm with ``eps`` (the implementation whose checkpoint is loaded)."""
        for embed in cast("Sequence[OverlapPatchEmbed]", self.patch_embeds):
            embed.norm.eps = eps.embeddings
        for stage in self.blocks:
            for block in cast("Sequence[Block]", stage):
                block.norm1.eps = block.norm2.eps = eps.blocks
                if block.attn.sr_ratio > 1:
                    block.attn.sr_norm.eps = eps.embeddings
        for norm in cast("Sequence[nn.LayerNorm]", self.norms):
            norm.eps = eps.blocks

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for embed, stage, norm in zip(self.patch_embeds, self.blocks, self.norms):
            blocks = cast("Sequence[Block]", stage)
            x, h, w = embed(x)
            if kernels.active(x) and blocks:
                x = self._fused_stage(x, h, w, blocks, cast(nn.LayerNorm, norm))
            else:
                for block in blocks:
                    x = block(x, h, w)
                x = norm(x)
            x = x.transpose(1, 2).reshape(x.shape[0], -1, h, w)
            features.append(x)
        return features

    @staticmethod
    def _fused_stage(x: torch.Tensor, h: int, w: int, blocks: Sequence[Block], norm: nn.LayerNorm) -> torch.Tensor:
        """A stage's blocks with every residual addition fused with the LayerNorm that follows it.

        ``Block.forward`` computes x + attn(norm1(x)), then x + mlp(norm2(x)); here each addition
        also yields the next norm's output (norm2, the next block's norm1, or the stage's norm).
        """
        y = kernels.layer_norm(x, blocks[0].norm1, feeds_matmul=True)
        for i, block in enumerate(blocks):
            x, y = kernels.add_layer_norm(x, block.attn(y, h, w), block.norm2, feeds_matmul=True)
            if i + 1 < len(blocks):
                x, y = kernels.add_layer_norm(x, block.mlp(y, h, w), blocks[i + 1].norm1, feeds_matmul=True)
            else:  # the stage's last sum feeds only its closing norm: not written
                y = kernels.add_layer_norm(x, block.mlp(y, h, w), norm, feeds_matmul=False, keep_sum=False)[1]
        return y
