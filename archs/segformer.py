"""SegFormer B0–B5: the Mix Transformer encoder and the all-MLP decoder.

Paper: Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with
Transformers", NeurIPS 2021. Official code: https://github.com/NVlabs/SegFormer (NVIDIA Source Code
License); configuration facts from its ``local_configs/segformer/B*`` and ``segformer_head.py``.

Decoder: per stage a linear projection C_i -> E (a 1x1 convolution here: the same function, and
the layout a GPU prefers), bilinear upsampling to 1/4 (align_corners=False), concatenation in the
order [c4, c3, c2, c1], a 1x1 fuse convolution without bias + BatchNorm + ReLU, and a 1x1
classifier; E = 256 for B0/B1, 768 for B2–B5. Dropout is training-only. The official model also
carries an unused ``conv_seg`` (128 -> K) inherited from mmseg's head; it is not built here, so
our parameter count is lower than the 0.x-mmseg count by 129 K + K.

Checkpoints: the official entries are HF transformers' ports (``nvidia/segformer-*``, `convert_hf_state_dict`);
the authors' own files (an mmsegmentation 0.13 fork's ``{"meta", "state_dict"}``) load through
`convert_authors_state_dict`. Each runs with its source's LayerNorm eps (`archs.backbones.mit.LayerNormEps`).
mmsegmentation's own SegFormer checkpoints are refused: mmseg's head puts BatchNorm and ReLU after each
stage's projection and is 256 wide for every variant, a different decoder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from archs.backbones.mit import (
    AUTHORS_LAYER_NORM_EPS,
    HF_LAYER_NORM_EPS,
    MIT_CONFIGS,
    LayerNormEps,
    MixTransformer,
)
from archs.base import ArchSpec, CheckpointFormat, Published, Weights, register

TABLE4 = "SegFormer paper (Xie et al., NeurIPS 2021) Table 4, as in the lecture's comparison table"
TABLE1 = "SegFormer paper Table 1 (encoder + decoder params; not re-checked against the paper text)"


class SegFormerHead(nn.Module):
    """The all-MLP decoder.

    Args:
        in_channels: widths of the four encoder stages.
        embed_dim: decoder width E.
        num_classes: output classes.
    """

    def __init__(self, in_channels: tuple[int, ...], embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.linear_c = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in in_channels)
        self.fuse = nn.Conv2d(embed_dim * len(in_channels), embed_dim, 1, bias=False)
        self.bn = nn.BatchNorm2d(embed_dim)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(embed_dim, num_classes, 1)

        self.merged: nn.ModuleList | None = None  # set by `fuse_for_inference`

    @torch.no_grad()
    def fuse_for_inference(self) -> None:
        """Merge each projection with its slice of the fuse convolution and with the BatchNorm (eval only).

        fuse(cat_i(up(P_i f_i + b_i))) = sum_i up(F_i P_i f_i) + sum_i F_i b_i, since bilinear
        resizing acts on each channel linearly and keeps constants; the BatchNorm is an affine map
        per channel on top. So each stage is projected straight to E channels at its own
        resolution, resized and summed: the 1x1 convolution over 4E channels at stride 4 (most of
        the decoder's FLOPs) and the 4E-channel concatenation are gone. The same function, up to
        float rounding; the state dict of the model as built is what checkpoints load into.
        """
        if self.merged is not None:
            return
        if self.training:
            raise ValueError("the decoder merges with its BatchNorm's running statistics: call .eval() first")
        e, n = self.fuse.out_channels, len(self.linear_c)
        scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        bias = self.bn.bias - scale * self.bn.running_mean
        fuse = self.fuse.weight.flatten(1)
        merged = nn.ModuleList()
        for i, proj in enumerate(self.linear_c):
            part = fuse[:, (n - 1 - i) * e : (n - i) * e]  # concatenation order [c4, c3, c2, c1]
            conv = nn.Conv2d(proj.in_channels, e, 1, bias=i == 0).to(proj.weight)
            conv.weight.copy_((scale[:, None] * (part @ proj.weight.flatten(1)))[:, :, None, None])
            bias = bias + scale * (part @ proj.bias)
            merged.append(conv)
        merged[0].bias.copy_(bias)  # one constant for the sum, on the stage that is not resized
        del self.linear_c, self.fuse, self.bn
        self.merged = merged

    def forward(self, features: list[Tensor]) -> Tensor:
        size = features[0].shape[-2:]
        if self.merged is not None:
            x = self.merged[0](features[0])
            for conv, f in zip(self.merged[1:], features[1:]):
                x = x + F.interpolate(conv(f), size=size, mode="bilinear", align_corners=False)
            return self.classifier(F.relu(x))
        projected = [
            F.interpolate(proj(f), size=size, mode="bilinear", align_corners=False) if i else proj(f)
            for i, (proj, f) in enumerate(zip(self.linear_c, features))
        ]
        x = F.relu(self.bn(self.fuse(torch.cat(projected[::-1], dim=1))))
        return self.classifier(self.dropout(x))


class SegFormer(nn.Module):
    """MiT encoder + all-MLP decoder; logits at stride 4.

    Args:
        variant: ``b0`` … ``b5``.
        num_classes: output classes.
        layer_norm_eps: the encoder's LayerNorm eps (HF's port by default).
    """

    def __init__(self, variant: str, num_classes: int, layer_norm_eps: LayerNormEps = HF_LAYER_NORM_EPS) -> None:
        super().__init__()
        config = MIT_CONFIGS[variant]
        self.backbone = MixTransformer(config, layer_norm_eps=layer_norm_eps)
        self.decode_head = SegFormerHead(config.embed_dims, 256 if variant in ("b0", "b1") else 768, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode_head(self.backbone(x))


# HF transformers' layout before v5 (the layout of the nvidia/segformer-* hub checkpoints) -> v5 layout.
_HF_V4_TO_V5 = [
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
]

# HF v5 layout -> ours (k_proj/v_proj are concatenated into kv afterwards).
_HF_TO_OURS = [
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
]


def _rename(key: str, rules) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def convert_hf_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map an HF ``SegformerForSemanticSegmentation`` state dict (v4 hub or v5 layout) onto ours.

    Raises:
        ValueError: naming the keys that do not belong to a SegFormer checkpoint.
    """
    renamed: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        renamed[_rename(_rename(key, _HF_V4_TO_V5), _HF_TO_OURS)] = value
    out: dict[str, Tensor] = {}
    for key, value in renamed.items():
        if ".attention.k_proj." in key:
            other = renamed.get(key.replace(".attention.k_proj.", ".attention.v_proj."))
            if other is None:
                raise ValueError(f"HF SegFormer checkpoint has {key} but no matching value projection")
            out[key.replace(".attention.k_proj.", ".attn.kv.")] = torch.cat([value, other], dim=0)
        elif ".attention.v_proj." in key:
            continue
        elif key.startswith("decode_head.linear_c.") and key.endswith(".weight") and value.dim() == 2:
            out[key] = value[:, :, None, None]  # Linear -> 1x1 convolution
        else:
            out[key] = value
    unknown = [k for k in out if not k.startswith(("backbone.", "decode_head."))]
    if unknown:
        raise ValueError(f"not an HF SegFormer state dict: unexpected keys {', '.join(sorted(unknown)[:5])}")
    return out


# The authors' layout (NVlabs/SegFormer: mix_transformer.py, segformer_head.py) -> ours.
_AUTHORS_TO_OURS = [
    (r"^backbone\.patch_embed(\d)\.", lambda m: f"backbone.patch_embeds.{int(m[1]) - 1}."),
    (r"^backbone\.block(\d)\.(\d+)\.", lambda m: f"backbone.blocks.{int(m[1]) - 1}.{m[2]}."),
    (r"^backbone\.norm(\d)\.", lambda m: f"backbone.norms.{int(m[1]) - 1}."),
    (r"\.attn\.norm\.", ".attn.sr_norm."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
    (r"^decode_head\.linear_c(\d)\.proj\.", lambda m: f"decode_head.linear_c.{int(m[1]) - 1}."),
    (r"^decode_head\.linear_fuse\.conv\.", "decode_head.fuse."),
    (r"^decode_head\.linear_fuse\.bn\.", "decode_head.bn."),
    (r"^decode_head\.linear_pred\.", "decode_head.classifier."),
]

MMSEG_HEAD_DIFFERS = (
    "an mmsegmentation SegFormer checkpoint (backbone.layers.*, decode_head.convs.*): mmseg's head puts BatchNorm "
    "and ReLU after each stage's projection and is 256 wide for every variant, a different decoder from the "
    "authors' and HF's that segbench builds; pass the authors' (NVlabs/SegFormer) or an HF (nvidia/segformer-*) "
    "checkpoint"
)


def convert_authors_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map a checkpoint of the authors' code (NVlabs/SegFormer, an mmsegmentation 0.13 fork) onto ours.

    The head's unused ``conv_seg`` (inherited from mmseg's ``BaseDecodeHead``) is dropped.

    Raises:
        ValueError: for mmsegmentation's own SegFormer (another head) or keys of no SegFormer.
    """
    if "state_dict" in state_dict:
        state_dict = state_dict["state_dict"]
    if any(key.startswith(("backbone.layers.", "decode_head.convs.")) for key in state_dict):
        raise ValueError(MMSEG_HEAD_DIFFERS)
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("decode_head.conv_seg."):
            continue
        new = _rename(key, _AUTHORS_TO_OURS)
        if new.startswith("decode_head.linear_c.") and new.endswith(".weight") and value.dim() == 2:
            value = value[:, :, None, None]  # Linear -> 1x1 convolution
        out[new] = value
    unknown = [k for k in out if not k.startswith(("backbone.", "decode_head."))]
    if unknown:
        raise ValueError(f"not a SegFormer checkpoint of the authors' code: unexpected keys {', '.join(unknown[:5])}")
    return out


def use_hf_layer_norms(model: SegFormer) -> None:
    """Run ``model`` with the LayerNorm eps of HF transformers' port (`Weights.configure`)."""
    model.backbone.set_layer_norm_eps(HF_LAYER_NORM_EPS)


def use_authors_layer_norms(model: SegFormer) -> None:
    """Run ``model`` with the LayerNorm eps of the authors' code (`Weights.configure`)."""
    model.backbone.set_layer_norm_eps(AUTHORS_LAYER_NORM_EPS)


AUTHORS_FORMAT = CheckpointFormat(
    "mmseg",
    convert_authors_state_dict,
    use_authors_layer_norms,
    source="the authors' NVlabs/SegFormer checkpoints (an mmsegmentation 0.13 fork)",
)


def _weights(variant: str) -> tuple[Weights, ...]:
    ade = "640-640" if variant == "b5" else "512-512"
    return (
        Weights(
            "ade20k",
            f"hf://nvidia/segformer-{variant}-finetuned-ade-{ade}",
            "hf",
            converter=convert_hf_state_dict,
            configure=use_hf_layer_norms,
        ),
        Weights(
            "cityscapes",
            f"hf://nvidia/segformer-{variant}-finetuned-cityscapes-1024-1024",
            "hf",
            converter=convert_hf_state_dict,
            configure=use_hf_layer_norms,
        ),
    )


def _published(params, ade, city, source) -> dict[str, Published]:
    """``ade``/``city``: (GFLOPs, FPS, mIoU); params as published (encoder + decoder)."""
    return {
        "ade20k": Published(params, *ade, source=source),
        "cityscapes": Published(params, *city, source=source),
    }


_VARIANTS = {
    # variant: (scale, published)
    "b0": ("realtime", _published(3.8, (8.4, 50.5, 37.4), (125.5, 15.2, 76.2), TABLE4)),
    "b1": ("non-realtime", _published(13.7, (15.9, None, 42.2), (243.7, None, 78.5), TABLE1)),
    "b2": ("non-realtime", _published(27.5, (62.4, None, 46.5), (717.1, None, 81.0), TABLE1)),
    "b3": ("non-realtime", _published(47.3, (79.0, None, 49.4), (962.9, None, 81.7), TABLE1)),
    "b4": ("non-realtime", _published(64.1, (95.7, 15.4, 51.1), (1240.6, 3.0, 83.8), TABLE4)),
    "b5": ("non-realtime", _published(84.7, (183.3, 9.8, 51.8), (1447.6, 2.5, 84.0), TABLE4)),
}


def _register(variant: str) -> None:
    scale, published = _VARIANTS[variant]
    if variant == "b5":  # the published ADE20K model is the 640x640 one
        published = {**published, "ade20k": Published(**{**published["ade20k"].__dict__, "input_size": (640, 640)})}
    spec = ArchSpec(
        name=f"segformer-{variant}",
        family="SegFormer",
        encoder=f"MiT-{variant.upper()}",
        scale=scale,
        paper="Xie et al., NeurIPS 2021",
        year=2021,
        output_stride=4,
        published=published,
        input_size={"ade20k": (640, 640)} if variant == "b5" else {},
        weights=_weights(variant),
        formats=(AUTHORS_FORMAT,),
        notes="ADE20K: whole-image inference; Cityscapes: sliding 1024x1024 windows, stride 768 (official configs).",
    )

    def builder(*, num_classes: int, layer_norm_eps: LayerNormEps = HF_LAYER_NORM_EPS) -> SegFormer:
        return SegFormer(variant, num_classes, layer_norm_eps)

    builder.__name__ = builder.__qualname__ = f"segformer_{variant}"
    builder.__doc__ = (
        f"SegFormer-{variant.upper()}.\n\n    Args:\n        num_classes: output classes.\n"
        "        layer_norm_eps: the encoder's LayerNorm eps (HF's port; a loaded checkpoint sets its source's).\n    "
    )
    register(spec)(builder)


for _variant in MIT_CONFIGS:
    _register(_variant)
