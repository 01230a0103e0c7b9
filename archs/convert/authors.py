"""The official repositories' own checkpoint layouts: NVlabs/SegFormer and nv-tlabs/GSCNN."""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from archs.convert import rename, unwrap
from archs.convert.hf import linear_to_conv

__all__ = ["convert_authors_gscnn", "convert_authors_segformer"]

# NVlabs/SegFormer (mix_transformer.py, segformer_head.py) -> `archs.segformer.SegFormer`.
_SEGFORMER_TO_OURS = (
    (r"^backbone\.patch_embed(\d)\.", lambda m: f"backbone.patch_embeds.{int(m[1]) - 1}."),
    (r"^backbone\.block(\d)\.(\d+)\.", lambda m: f"backbone.blocks.{int(m[1]) - 1}.{m[2]}."),
    (r"^backbone\.norm(\d)\.", lambda m: f"backbone.norms.{int(m[1]) - 1}."),
    (r"\.attn\.norm\.", ".attn.sr_norm."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
    (r"^decode_head\.linear_c(\d)\.proj\.", lambda m: f"decode_head.linear_c.{int(m[1]) - 1}."),
    (r"^decode_head\.linear_fuse\.conv\.", "decode_head.fuse."),
    (r"^decode_head\.linear_fuse\.bn\.", "decode_head.bn."),
    (r"^decode_head\.linear_pred\.", "decode_head.classifier."),
)

MMSEG_SEGFORMER_HEAD_DIFFERS = (
    "an mmsegmentation SegFormer checkpoint (backbone.layers.*, decode_head.convs.*): mmseg's head puts BatchNorm "
    "and ReLU after each stage's projection and is 256 wide for every variant, a different decoder from the "
    "authors' and HF's that segbench builds; pass the authors' (NVlabs/SegFormer) or an HF (nvidia/segformer-*) "
    "checkpoint"
)


def convert_authors_segformer(checkpoint: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A checkpoint of the authors' code (NVlabs/SegFormer, an mmsegmentation 0.13 fork) -> `archs.segformer` keys.

    The head's unused ``conv_seg`` (inherited from mmseg's ``BaseDecodeHead``) is dropped.

    Raises:
        ValueError: for mmsegmentation's own SegFormer (another head) or keys of no SegFormer.
    """
    state_dict = unwrap(checkpoint)
    if any(key.startswith(("backbone.layers.", "decode_head.convs.")) for key in state_dict):
        raise ValueError(MMSEG_SEGFORMER_HEAD_DIFFERS)
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith("decode_head.conv_seg."):
            new = rename(key, _SEGFORMER_TO_OURS)
            out[new] = linear_to_conv(new, value)
    unknown = [k for k in out if not k.startswith(("backbone.", "decode_head."))]
    if unknown:
        raise ValueError(f"not a SegFormer checkpoint of the authors' code: unexpected keys {', '.join(unknown[:5])}")
    return out


def convert_authors_gscnn(checkpoint: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The official GSCNN checkpoint (``best_cityscapes_checkpoint.pth``) -> `archs.gscnn.GSCNN` keys.

    Drops the ``module.`` prefix of DataParallel and the unused ``dsn1``; trunk modules move under
    ``backbone.``; ``nn.Sequential`` conv/BN pairs keep their indices.
    """
    out: dict[str, Tensor] = {}
    for key, value in unwrap(checkpoint).items():
        key = key.removeprefix("module.")
        if not key.startswith("dsn1."):
            out[re.sub(r"^(mod\d)\.", r"backbone.\1.", key)] = value
    return out
