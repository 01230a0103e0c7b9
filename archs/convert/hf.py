"""HF transformers' layout of SegFormer (``SegformerForSemanticSegmentation``), the ``nvidia/segformer-*`` hub files."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from archs.convert import rename

__all__ = ["convert_hf_segformer"]

# transformers' layout before v5 (the layout of the nvidia/segformer-* hub checkpoints) -> v5 layout.
_HF_V4_TO_V5 = (
    (r"segformer\.encoder\.patch_embeddings\.(\d+)\.", r"segformer.stages.\1.patch_embeddings."),
    (r"segformer\.encoder\.block\.(\d+)\.(\d+)\.", r"segformer.stages.\1.blocks.\2."),
    (r"segformer\.encoder\.layer_norm\.(\d+)\.", r"segformer.stages.\1.layer_norm."),
    (r"\.layer_norm_1\.", ".layernorm_before."),
    (r"\.layer_norm_2\.", ".layernorm_after."),
    (r"\.attention\.self\.query\.", ".attention.q_proj."),
    (r"\.attention\.self\.key\.", ".attention.k_proj."),
    (r"\.attention\.self\.value\.", ".attention.v_proj."),
    (r"\.attention\.self\.sr\.", ".attention.sequence_reduction.sequence_reduction."),
    (r"\.attention\.self\.layer_norm\.", ".attention.sequence_reduction.layer_norm."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.mlp\.dense1\.", ".mlp.fc1."),
    (r"\.mlp\.dense2\.", ".mlp.fc2."),
    (r"decode_head\.linear_c\.(\d+)\.proj\.", r"decode_head.linear_projections.\1.proj."),
)

# transformers v5 layout -> ours (k_proj/v_proj are concatenated into kv afterwards).
_HF_TO_OURS = (
    (r"segformer\.stages\.(\d+)\.patch_embeddings\.proj\.", r"backbone.patch_embeds.\1.proj."),
    (r"segformer\.stages\.(\d+)\.patch_embeddings\.layer_norm\.", r"backbone.patch_embeds.\1.norm."),
    (r"segformer\.stages\.(\d+)\.layer_norm\.", r"backbone.norms.\1."),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.", r"backbone.blocks.\1.\2."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.q_proj\.", ".attn.q."),
    (r"\.attention\.o_proj\.", ".attn.proj."),
    (r"\.attention\.sequence_reduction\.sequence_reduction\.", ".attn.sr."),
    (r"\.attention\.sequence_reduction\.layer_norm\.", ".attn.sr_norm."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
    (r"decode_head\.linear_projections\.(\d+)\.proj\.", r"decode_head.linear_c.\1."),
    (r"decode_head\.linear_fuse\.", "decode_head.fuse."),
    (r"decode_head\.batch_norm\.", "decode_head.bn."),
)


def linear_to_conv(key: str, value: Tensor) -> Tensor:
    """A decoder projection's Linear weight as the 1x1 convolution `archs.segformer.SegFormerHead` holds."""
    if key.startswith("decode_head.linear_c.") and key.endswith(".weight") and value.dim() == 2:
        return value[:, :, None, None]
    return value


def convert_hf_segformer(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An HF ``SegformerForSemanticSegmentation`` state dict (v4 hub or v5 layout) -> `archs.segformer.SegFormer` keys.

    Raises:
        ValueError: naming the keys that do not belong to a SegFormer checkpoint.
    """
    renamed = {
        rename(rename(key, _HF_V4_TO_V5), _HF_TO_OURS): value
        for key, value in state_dict.items()
        if not key.endswith("num_batches_tracked")
    }
    out: dict[str, Tensor] = {}
    for key, value in renamed.items():
        if ".attention.k_proj." in key:
            other = renamed.get(key.replace(".attention.k_proj.", ".attention.v_proj."))
            if other is None:
                raise ValueError(f"HF SegFormer checkpoint has {key} but no matching value projection")
            out[key.replace(".attention.k_proj.", ".attn.kv.")] = torch.cat([value, other], dim=0)
        elif ".attention.v_proj." not in key:
            out[key] = linear_to_conv(key, value)
    unknown = [k for k in out if not k.startswith(("backbone.", "decode_head."))]
    if unknown:
        raise ValueError(f"not an HF SegFormer state dict: unexpected keys {', '.join(sorted(unknown)[:5])}")
    return out
