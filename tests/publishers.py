"""Checkpoint files as their publishers write them, from a runnable reference implementation.

`publisher_file(spec, weights)` gives, for a registered official checkpoint entry, a file in that
entry's layout and the logits its publisher's code computes from it:

- ``mmseg``: mmsegmentation 1.2.2's own model of the checkpoint's config (found by the checkpoint's
  file name in mmseg's metafiles, through `tests.mmseg_stub`), auxiliary heads included as in the
  model zoo's files, saved as ``{"meta": ..., "state_dict": ...}``;
- ``hf``: transformers' ``SegformerForSemanticSegmentation`` with the model's widths and depths,
  saved as the hub's ``model.safetensors`` in the pre-v5 key layout the ``nvidia/segformer-*`` files use;
- ``gscnn``: no runnable reference here (nv-tlabs/GSCNN builds on CUDA with its training config), so
  segbench's own model is written out through the inverse of `archs.convert.authors.convert_authors_gscnn`
  (DataParallel's ``module.`` prefix, the trunk at the top level, the unused ``dsn1``, a training
  checkpoint's ``epoch``) and its logits stand in for the reference's.

Weights are random (`tests.equivalence.scale_preserving_init`); with ``meta=True`` nothing is
allocated, for checks of keys and shapes.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import archs
from archs import ArchSpec, Weights
from bench.protocol import DATASETS
from tests.equivalence import scale_preserving_init

# transformers' SegFormer layout since v5 -> before v5, the layout of the nvidia/segformer-* hub files.
HF_V5_TO_V4 = [
    (r"segformer\.stages\.(\d+)\.patch_embeddings\.", r"segformer.encoder.patch_embeddings.\1."),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.", r"segformer.encoder.block.\1.\2."),
    (r"segformer\.stages\.(\d+)\.layer_norm\.", r"segformer.encoder.layer_norm.\1."),
    (r"\.layernorm_before\.", ".layer_norm_1."),
    (r"\.layernorm_after\.", ".layer_norm_2."),
    (r"\.attention\.q_proj\.", ".attention.self.query."),
    (r"\.attention\.k_proj\.", ".attention.self.key."),
    (r"\.attention\.v_proj\.", ".attention.self.value."),
    (r"\.attention\.sequence_reduction\.sequence_reduction\.", ".attention.self.sr."),
    (r"\.attention\.sequence_reduction\.layer_norm\.", ".attention.self.layer_norm."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".mlp.dense1."),
    (r"\.mlp\.fc2\.", ".mlp.dense2."),
    (r"decode_head\.linear_projections\.(\d+)\.", r"decode_head.linear_c.\1."),
]


@dataclass
class PublisherFile:
    """A checkpoint in its publisher's layout and the logits of its publisher's code.

    Args:
        name: the file name the publisher uses.
        content: what the publisher saves (``torch.save`` or, for ``.safetensors``, a flat state dict).
        logits: the reference's logits for a normalised batch, resized to the batch's size.
        reference: which implementation computes ``logits``.
    """

    name: str
    content: dict
    logits: Callable[[Tensor], Tensor]
    reference: str

    def save(self, folder: Path) -> Path:
        path = folder / self.name
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in self.content.items()}, str(path))
        else:
            torch.save(self.content, path)
        return path


def _device(meta: bool):
    return torch.device("meta") if meta else contextlib.nullcontext()


@contextlib.contextmanager
def registered_on_meta():
    """Parameters and buffers move to the meta device as modules register them.

    For builders that compute with tensors of their own while building (mmseg's ViT reads its
    drop-path schedule with ``.item()``), which ``torch.device("meta")`` cannot run.
    """
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def parameter(self, name, param):
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(self, name, param)

    def buffer(self, name, tensor, persistent=True):
        register_buffer(self, name, None if tensor is None else tensor.to("meta"), persistent)

    nn.Module.register_parameter, nn.Module.register_buffer = parameter, buffer
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, register_buffer


def _resized(logits: Tensor, x: Tensor) -> Tensor:
    return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _mmseg(spec: ArchSpec, weights: Weights, num_classes: int, meta: bool, seed: int) -> PublisherFile:
    from tests.mmseg_stub import build_mmseg_model, config_for_checkpoint

    config = config_for_checkpoint(weights.uri)
    with registered_on_meta() if meta else contextlib.nullcontext():
        reference = build_mmseg_model(config, num_classes, aux_head=True, seed=None if meta else seed)
    if not meta:
        scale_preserving_init(reference, seed)

    def logits(x: Tensor) -> Tensor:
        with torch.no_grad():
            return reference.encode_decode(x, [{"img_shape": tuple(x.shape[-2:])}])

    content = {"meta": {"mmseg_version": "0.5", "config": config}, "state_dict": reference.state_dict()}
    return PublisherFile(weights.uri.rsplit("/", 1)[-1], content, logits, f"mmsegmentation 1.2.2 {config}")


def hf_segformer(
    model: nn.Module, num_classes: int, *, meta: bool = False, seed: int = 0, scale_preserving: bool = True
) -> nn.Module:
    """transformers' SegFormer with the widths, depths and decoder width of our ``model``, in eval mode.

    ``scale_preserving=False`` keeps transformers' own initialisation."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    stages = model.backbone.blocks
    config = SegformerConfig(
        hidden_sizes=list(model.backbone.embed_dims),
        depths=[len(stage) for stage in stages],
        num_attention_heads=[stage[0].attn.num_heads for stage in stages],
        sr_ratios=[stage[0].attn.sr_ratio for stage in stages],
        decoder_hidden_size=model.decode_head.classifier.in_channels,
        num_labels=num_classes,
        attn_implementation="sdpa",
    )
    with _device(meta):
        reference = SegformerForSemanticSegmentation(config).eval()
    if not meta and scale_preserving:
        scale_preserving_init(reference, seed)
    return reference


def hub_layout(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A transformers SegFormer state dict in the key layout of the nvidia/segformer-* hub files."""
    out = {}
    for key, value in state.items():
        for pattern, repl in HF_V5_TO_V4:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def _hf(spec: ArchSpec, weights: Weights, num_classes: int, meta: bool, seed: int) -> PublisherFile:
    with torch.device("meta"):
        shape = archs.build(spec.name, num_classes)
    reference = hf_segformer(shape, num_classes, meta=meta, seed=seed)

    def logits(x: Tensor) -> Tensor:
        with torch.no_grad():
            return _resized(reference(pixel_values=x).logits, x)

    content = hub_layout(reference.state_dict())
    return PublisherFile("model.safetensors", content, logits, "transformers SegformerForSemanticSegmentation")


def _gscnn(spec: ArchSpec, weights: Weights, num_classes: int, meta: bool, seed: int) -> PublisherFile:
    with _device(meta):
        source = archs.build(spec.name, num_classes)
    if not meta:
        scale_preserving_init(source, seed)
    official = {f"module.{k.removeprefix('backbone.')}": v for k, v in source.state_dict().items()}
    with _device(meta):
        unused = nn.Conv2d(64, 1, 1)  # nv-tlabs/GSCNN's dsn1: built, never used in its forward pass
    official.update({f"module.dsn1.{k}": v for k, v in unused.state_dict().items()})

    def logits(x: Tensor) -> Tensor:
        with torch.no_grad():
            return _resized(source(x), x)

    content = {"state_dict": official, "epoch": 175, "mean_iu": 0.0}
    return PublisherFile(
        "best_cityscapes_checkpoint.pth", content, logits, "segbench's GSCNN through the converter's inverse"
    )


PUBLISHERS = {"mmseg": _mmseg, "hf": _hf, "gscnn": _gscnn}


def publisher_file(spec: ArchSpec, weights: Weights, *, meta: bool = False, seed: int = 0) -> PublisherFile:
    """The checkpoint of ``weights`` (an official entry of ``spec``) as its publisher writes it.

    Args:
        spec: the registered architecture.
        weights: one of its official entries.
        meta: on the meta device (keys and shapes only).
        seed: of the random weights.
    """
    if weights.format not in PUBLISHERS:
        raise LookupError(f"no reference writes the {weights.format} layout of {spec.name}: add one to PUBLISHERS")
    num_classes = DATASETS[weights.dataset].num_classes
    return PUBLISHERS[weights.format](spec, weights, num_classes, meta, seed)
