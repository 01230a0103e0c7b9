"""Plain Vision Transformer (ViT) returning intermediate layers as feature maps.

Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at
Scale", ICLR 2021 (arXiv:2010.11929); official repository
https://github.com/google-research/vision_transformer (Apache-2.0). As used for segmentation by
SETR (Zheng et al., CVPR 2021) in mmsegmentation's ``mmseg/models/backbones/vit.py``
(https://github.com/open-mmlab/mmsegmentation, Apache-2.0), whose layout this module keeps:

- patch embedding: a 16x16 stride-16 convolution (the input is zero-padded at the bottom/right to
  a multiple of the patch size, mmseg's "corner" adaptive padding);
- a class token and learned absolute positional embeddings for a ``img_size / patch`` grid (+1
  for the class token); for any other input size the grid part is resized bilinearly
  (``align_corners=False``) to the token grid, the class-token embedding is kept;
- pre-norm blocks: LN (eps 1e-6) -> multi-head self-attention (fused qkv projection with bias,
  ``F.scaled_dot_product_attention``) -> residual; LN -> MLP (4x, GELU) -> residual;
- no final norm; the outputs of the ``out_indices`` blocks, class token removed, as
  ``(N, C, H/16, W/16)`` maps.

torchvision's ``EncoderBlock`` computes the same block, but its ``nn.MultiheadAttention`` takes the
``_native_multi_head_attention`` fast path in inference, which the FLOP counter does not see;
this block calls ``scaled_dot_product_attention`` directly. Its ``qkv``/``proj`` parameters are
``nn.MultiheadAttention``'s ``in_proj``/``out_proj`` (same shapes and order).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Attention", "TransformerBlock", "VisionTransformer", "vit_large_patch16"]


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection.

    Args:
        dim: token width.
        num_heads: attention heads (``dim`` must divide evenly).
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, length, dim = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder block.

    Args:
        dim: token width.
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLP relative to ``dim``.
        eps: LayerNorm epsilon.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT encoder returning the outputs of selected blocks as feature maps at stride ``patch_size``.

    Args:
        img_size: side of the square training size that sets the positional-embedding grid
            (``img_size // patch_size`` per side); other input sizes interpolate it. Loading a
            state dict whose ``pos_embed`` has another (square) grid adopts that grid.
        patch_size: patch side (and output stride).
        embed_dim: token width.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width relative to ``embed_dim``.
        out_indices: blocks whose outputs are returned (0-based).
        with_cls_token: keep the class token in the sequence through the blocks (SETR naive/PUP);
            False drops it after adding the positional embeddings (SETR-MLA). It is never part of
            the returned maps.
        patch_bias: bias in the patch-embedding convolution (the original ViT has one; mmseg's
            SETR configurations do not).
    """

    # parameters whose shape a loaded state dict sets (`_load_from_state_dict`): the checkpoint's grid
    resized_on_load = ("pos_embed",)

    def __init__(
        self,
        img_size: int = 512,
        patch_size: int = 16,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        out_indices: Sequence[int] = (9, 14, 19, 23),
        with_cls_token: bool = True,
        patch_bias: bool = True,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.with_cls_token = with_cls_token
        self.out_indices = tuple(out_indices)
        self.grid = img_size // patch_size
        self.patch_embed = nn.Conv2d(3, embed_dim, patch_size, patch_size, bias=patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList(TransformerBlock(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.embed_dim = embed_dim

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint trained at another size carries another grid: adopt it (the forward pass
        # interpolates from whatever grid the model has, as the reference implementation does).
        pos = state_dict.get(prefix + "pos_embed")
        if pos is not None and pos.shape != self.pos_embed.shape:
            grid = int(round((pos.shape[1] - 1) ** 0.5))
            if grid * grid + 1 != pos.shape[1] or pos.shape[2] != self.embed_dim:
                raise ValueError(f"{prefix}pos_embed of shape {tuple(pos.shape)} is not a square grid + class token")
            self.grid = grid
            self.pos_embed = nn.Parameter(torch.empty_like(pos, device=self.pos_embed.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _pos_embed(self, h: int, w: int) -> Tensor:
        if (h, w) == (self.grid, self.grid):
            return self.pos_embed
        cls_pos, grid_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        grid_pos = grid_pos.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid_pos = F.interpolate(grid_pos, size=(h, w), mode="bilinear", align_corners=False)
        return torch.cat([cls_pos, grid_pos.flatten(2).transpose(1, 2)], dim=1)

    def forward(self, x: Tensor) -> list[Tensor]:
        pad_h, pad_w = -x.shape[-2] % self.patch_size, -x.shape[-1] % self.patch_size
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.patch_embed(x)
        n, _, h, w = x.shape
        x = torch.cat([self.cls_token.expand(n, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
        x = x + self._pos_embed(h, w)
        first = 1 if self.with_cls_token else 0
        if not self.with_cls_token:
            x = x[:, 1:]
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.out_indices:
                outs.append(x[:, first:].transpose(1, 2).reshape(n, -1, h, w))
        return outs


def vit_large_patch16(
    *,
    img_size: int = 512,
    out_indices: Sequence[int] = (9, 14, 19, 23),
    with_cls_token: bool = True,
    patch_bias: bool = True,
) -> VisionTransformer:
    """ViT-L/16: 24 blocks, width 1024, 16 heads, MLP 4096.

    Args:
        img_size: training size that sets the positional-embedding grid.
        out_indices: blocks whose outputs are returned.
        with_cls_token: keep the class token through the blocks.
        patch_bias: bias in the patch-embedding convolution.
    """
    return VisionTransformer(img_size, 16, 1024, 24, 16, 4.0, out_indices, with_cls_token, patch_bias)
