"""mmsegmentation's model-zoo layout: ``backbone.*``, ``decode_head.*``, ``auxiliary_head.*``, mmcv's ``ConvModule``.

Our ResNetV1c keys equal mmseg's; MobileNetV2 follows torchvision's ``features.*``; the heads name
a ``ConvModule``'s ``conv``/``bn`` by torchvision's ``Conv2dNormActivation`` indices ``0``/``1``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from archs.backbones.mobilenetv2 import LAYER_SETTINGS
from archs.convert import rename, unwrap

__all__ = [
    "convert_mmseg_ccnet",
    "convert_mmseg_encnet",
    "convert_mmseg_mobilenetv2_keys",
    "convert_mmseg_ocrnet",
    "convert_mmseg_setr",
    "convert_mmseg_state_dict",
]

_MODULE_NAMES = {"conv": "0", "bn": "1", "depthwise_conv": "0", "pointwise_conv": "1", "conv_seg": "classifier"}
# A ConvModule's conv/bn leaves -> Conv2dNormActivation's 0/1.
_CONV_MODULE_LEAVES = ((r"\.conv\.(weight|bias)$", r".0.\1"), (r"\.bn\.([a-z_]+)$", r".1.\1"))


def _module_path(path: str) -> str:
    return ".".join(_MODULE_NAMES.get(part, part) for part in path.split("."))


def _mobilenetv2_block_keys(expand_ratio: int) -> dict[str, str]:
    """mmseg ``InvertedResidual`` sub-keys -> torchvision ``InvertedResidual`` sub-keys."""
    if expand_ratio == 1:  # depthwise, then the linear pointwise projection
        return {"conv.0.conv": "conv.0.0", "conv.0.bn": "conv.0.1", "conv.1.conv": "conv.1", "conv.1.bn": "conv.2"}
    return {
        "conv.0.conv": "conv.0.0",
        "conv.0.bn": "conv.0.1",
        "conv.1.conv": "conv.1.0",
        "conv.1.bn": "conv.1.1",
        "conv.2.conv": "conv.2",
        "conv.2.bn": "conv.3",
    }


def convert_mmseg_mobilenetv2_keys(state_dict: Mapping[str, Tensor], prefix: str = "backbone.") -> dict[str, Tensor]:
    """mmseg ``MobileNetV2`` keys (``conv1``, ``layer{1..7}.{i}.conv.*``) -> `archs.backbones.mobilenetv2` keys.

    Args:
        state_dict: an mmseg checkpoint's state dict (or the backbone's).
        prefix: the backbone's prefix in ``state_dict``.
    """
    index: dict[str, str] = {"conv1.conv": "features.0.0", "conv1.bn": "features.0.1"}
    position = 1
    for layer, (expand_ratio, _, blocks) in enumerate(LAYER_SETTINGS, start=1):
        for i in range(blocks):
            for src, dst in _mobilenetv2_block_keys(expand_ratio).items():
                index[f"layer{layer}.{i}.{src}"] = f"features.{position}.{dst}"
            position += 1
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        module, _, leaf = key[len(prefix) :].rpartition(".")
        if module not in index:
            raise KeyError(f"unexpected mmseg MobileNetV2 key {key!r}")
        out[f"{index[module]}.{leaf}"] = value
    return out


def convert_mmseg_state_dict(checkpoint: Mapping[str, Tensor], *, aux_head: bool = False) -> dict[str, Tensor]:
    """An mmseg FCN/PSPNet/DeepLabV3+/CCNet/EncNet checkpoint (ResNetV1c or MobileNetV2) -> our keys.

    Args:
        checkpoint: the checkpoint's ``state_dict`` (or the whole checkpoint dict holding it).
        aux_head: keep the auxiliary head (``aux_head.*``) for a model built with ``aux_head=True``;
            by default it is dropped, as the inference model has none.
    """
    state_dict = unwrap(checkpoint)
    if "backbone.conv1.conv.weight" in state_dict:
        backbone = convert_mmseg_mobilenetv2_keys(state_dict)
    else:  # ResNetV1c: the same keys
        backbone = {k[len("backbone.") :]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    out = {f"backbone.{k}": v for k, v in backbone.items()}
    heads = {"decode_head.": "head."}
    if aux_head:
        heads["auxiliary_head."] = "aux_head."
    for key, value in state_dict.items():
        for src, dst in heads.items():
            if key.startswith(src):
                module, _, leaf = key[len(src) :].rpartition(".")
                out[f"{dst}{_module_path(module)}.{leaf}"] = value
    return out


def convert_mmseg_ccnet(checkpoint: Mapping[str, Tensor], *, aux_head: bool = False) -> dict[str, Tensor]:
    """An mmseg CCNet-R101 checkpoint -> our keys (mmcv's ``gamma.scale`` is our ``gamma``).

    Args:
        checkpoint: the checkpoint's ``state_dict`` (or the whole checkpoint dict holding it).
        aux_head: keep the auxiliary head for a model built with ``aux_head=True``.
    """
    out = convert_mmseg_state_dict(checkpoint, aux_head=aux_head)
    return {k.replace("head.cca.gamma.scale", "head.cca.gamma"): v for k, v in out.items()}


def convert_mmseg_encnet(checkpoint: Mapping[str, Tensor], *, aux_head: bool = False) -> dict[str, Tensor]:
    """An mmseg EncNet-R101 checkpoint -> our keys.

    Args:
        checkpoint: the checkpoint's ``state_dict`` (or the whole checkpoint dict holding it).
        aux_head: keep the training-only parts (``head.se_layer``, ``aux_head``) for a model built
            with ``aux_head=True``; dropped by default.
    """
    out = convert_mmseg_state_dict(checkpoint, aux_head=aux_head)
    if not aux_head:
        out = {k: v for k, v in out.items() if not k.startswith("head.se_layer.")}
    return out


_SETR_RENAMES = (
    (r"^backbone\.patch_embed\.projection\.", "backbone.patch_embed."),
    (r"^backbone\.layers\.(\d+)\.ln1\.", r"backbone.blocks.\1.norm1."),
    (r"^backbone\.layers\.(\d+)\.ln2\.", r"backbone.blocks.\1.norm2."),
    (r"^backbone\.layers\.(\d+)\.attn\.attn\.in_proj_(weight|bias)$", r"backbone.blocks.\1.attn.qkv.\2"),
    (r"^backbone\.layers\.(\d+)\.attn\.attn\.out_proj\.", r"backbone.blocks.\1.attn.proj."),
    (r"^backbone\.layers\.(\d+)\.ffn\.layers\.0\.0\.", r"backbone.blocks.\1.mlp.0."),
    (r"^backbone\.layers\.(\d+)\.ffn\.layers\.1\.", r"backbone.blocks.\1.mlp.2."),
    (r"^neck\.mla\.", "neck."),
    (r"^auxiliary_head\.", "aux_heads."),
    *_CONV_MODULE_LEAVES,
)


def convert_mmseg_setr(checkpoint: Mapping[str, Tensor], *, aux_head: bool = False) -> dict[str, Tensor]:
    """An mmseg SETR checkpoint (naive, PUP or MLA) -> `archs.setr.SETR` keys.

    Args:
        checkpoint: the checkpoint's ``state_dict`` (or the whole checkpoint dict holding it).
        aux_head: keep the auxiliary heads (``aux_heads.*``) for a model built with ``aux_head=True``;
            dropped by default, as the inference model has none.
    """
    state_dict = unwrap(checkpoint)
    keep = (lambda key: True) if aux_head else (lambda key: not key.startswith("auxiliary_head."))
    return {rename(key, _SETR_RENAMES): value for key, value in state_dict.items() if keep(key)}


# mmseg's CascadeEncoderDecoder heads -> `archs.ocrnet.OCRHead`; the first matching rule applies.
_OCRNET_HEAD_RENAMES = (
    (r"^decode_head\.0\.convs\.0\.", "decode_head.region.0."),
    (r"^decode_head\.0\.conv_seg\.", "decode_head.region.1."),
    (r"^decode_head\.1\.bottleneck\.", "decode_head.bottleneck."),
    (r"^decode_head\.1\.object_context_block\.bottleneck\.", "decode_head.fuse."),
    (r"^decode_head\.1\.object_context_block\.", "decode_head."),
    (r"^decode_head\.1\.conv_seg\.", "decode_head.classifier."),
)


def convert_mmseg_ocrnet(checkpoint: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An mmseg OCRNet-HRNet checkpoint (its ``state_dict``, or the whole checkpoint dict) -> `archs.ocrnet` keys."""
    out: dict[str, Tensor] = {}
    for key, value in unwrap(checkpoint).items():
        if key.startswith("backbone."):
            out[key] = value
            continue
        for pattern, replacement in _OCRNET_HEAD_RENAMES:
            new, matched = re.subn(pattern, replacement, key)
            if matched:
                out[rename(new, _CONV_MODULE_LEAVES)] = value
                break
    return out
