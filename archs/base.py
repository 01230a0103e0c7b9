"""The one model interface of segbench: `ArchSpec` metadata, `register`, `build`, `list_archs`.

A model is a plain ``torch.nn.Module`` returned by a builder registered with an `ArchSpec`:

    @register(ArchSpec(name="segformer-b0", family="SegFormer", encoder="MiT-B0", ...))
    def segformer_b0(*, num_classes: int) -> nn.Module: ...

Builders take keyword arguments only: ``num_classes``, and where the published parameter counts
include training-only auxiliary heads, ``aux_head`` (False for inference) to build them too: mmseg's
FCN head on the encoder's third stage, SETR's three (MLA: four) auxiliary heads.
The built-in models' specs come from their cards, ``archs/<family>.yaml`` beside each family's module
(`archs.cards.card`).

``forward(x)`` takes ``(N, 3, H, W)`` float input normalised with the spec's mean/std and
returns logits ``(N, num_classes, h, w)`` at any stride; resizing to ``(H, W)`` and the argmax
belong to the harness. Built-in families are the modules of this package; third-party packages
add models through the entry-point group ``segbench.archs`` (the entry point names a module or a
callable that registers its models when loaded).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import pkgutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import nn

ENTRY_POINT_GROUP = "segbench.archs"
SCALES = ("realtime", "non-realtime")
# mmsegmentation's ImageNet statistics on 0..255 RGB input: a spec's default. The Caffe nets' cards (FCN-VGG,
# DeconvNet, DeepLab v1/v2, Attention-to-Scale) give VGG-16's BGR mean as RGB and a unit std (SegNet: no mean).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
EVALUATION_MODES = ("whole", "slide")


class UnknownArchError(LookupError):
    """An architecture name that is not registered."""


@dataclass(frozen=True)
class Published:
    """Figures a paper or model zoo published for one dataset.

    Args:
        params_m: parameters in millions, as published.
        gflops: GFLOPs as published (one multiply-add = one FLOP).
        fps: frames per second as published (the source's GPU and protocol).
        miou: mIoU in percent on the validation set.
        source: where the figures come from (paper table, README, URL).
        note: what the figures include that inference does not (e.g. an auxiliary head).
        input_size: (H, W) the FLOPs were counted at, when not the protocol's size.
    """

    params_m: float | None = None
    gflops: float | None = None
    fps: float | None = None
    miou: float | None = None
    source: str = ""
    note: str = ""
    input_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class Weights:
    """An official checkpoint for one dataset.

    Args:
        dataset: protocol dataset name (``ade20k``, ``cityscapes``).
        uri: ``hf://<hub id>`` or an ``https://`` URL.
        format: the state-dict layout: ``hf``, ``mmseg``, ``torchvision``, ``segbench``, or an official
            repository's own (``gscnn``).
        sha256: digest of the file, when known.
        converter: maps a state dict in ``format`` onto the registered model's keys.
        configure: applied to the model once the checkpoint has loaded, where the checkpoint's source
            computes something the state dict does not hold (SegFormer: its LayerNorms' eps); or None.
    """

    dataset: str
    uri: str
    format: str
    sha256: str | None = None
    converter: Callable[[Mapping], dict] | None = None
    configure: Callable[[nn.Module], None] | None = None


@dataclass(frozen=True)
class CheckpointFormat:
    """A publisher's checkpoint layout that loads into a model besides its official entries' layouts.

    Args:
        format: the layout's name, as in `Weights.format`.
        converter: maps a state dict in that layout onto the registered model's keys.
        configure: as `Weights.configure`.
        source: who publishes checkpoints in this layout (for messages).
    """

    format: str
    converter: Callable[[Mapping], dict]
    configure: Callable[[nn.Module], None] | None = None
    source: str = ""


@dataclass(frozen=True)
class Evaluation:
    """How the published results ran a model over one dataset's test images (mmsegmentation's ``test_cfg``).

    Args:
        mode: ``whole`` (one forward pass per image) or ``slide`` (windows of ``crop`` every ``stride``).
        crop: (H, W) of the sliding windows.
        stride: (H, W) step between windows.
    """

    mode: str = "whole"
    crop: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.mode not in EVALUATION_MODES:
            raise ValueError(f"Evaluation mode must be one of {EVALUATION_MODES}, got {self.mode!r}")
        if (self.mode == "slide") != (self.crop is not None and self.stride is not None):
            raise ValueError(f"Evaluation: crop and stride go with the slide mode only, got {self}")


@dataclass(frozen=True)
class ArchSpec:
    """Metadata of one registered architecture: everything the tables need.

    Args:
        name: registry name, lower-case with dashes (``segformer-b0``).
        family: method name as the tables print it (``SegFormer``).
        encoder: backbone as the tables print it (``MiT-B0``).
        scale: ``realtime`` or ``non-realtime`` (the seed table's grouping).
        paper: short citation.
        year: publication year.
        output_stride: stride of the logits relative to the input.
        mean, std: input normalisation (RGB, 0..255 scale).
        published: per dataset, the published figures.
        input_size: per dataset, (H, W) when the published configuration differs from the
            protocol's size (SegFormer-B5 on ADE20K: 640x640).
        evaluation: per dataset, how the published results were inferred when not whole-image
            (SegFormer on Cityscapes: 1024x1024 windows every 768).
        weights: official checkpoints.
        formats: other checkpoint layouts the model loads (the authors' own files where the official
            entries are a port's).
        notes: anything a reader of the table should know.
        step_of: ``(base, step)`` when this model is the registered ``base`` followed by one more
            step named ``step`` (DeepLab v1 + CRF: the CRF); the tables give that step's own cost,
            this model's latency and FLOPs minus the base's.
    """

    name: str
    family: str
    encoder: str
    scale: str
    paper: str
    year: int
    output_stride: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    published: Mapping[str, Published] = field(default_factory=dict)
    input_size: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    evaluation: Mapping[str, Evaluation] = field(default_factory=dict)
    weights: tuple[Weights, ...] = ()
    formats: tuple[CheckpointFormat, ...] = ()
    notes: str = ""
    step_of: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"ArchSpec {self.name!r}: scale must be one of {SCALES}, got {self.scale!r}")


@dataclass(frozen=True)
class _Entry:
    spec: ArchSpec
    builder: Callable[..., nn.Module]


_REGISTRY: dict[str, _Entry] = {}
_loaded = False


def register(spec: ArchSpec) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``builder`` under ``spec.name``.

    Args:
        spec: the architecture's metadata.
    """

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if spec.name in _REGISTRY and _REGISTRY[spec.name].builder is not builder:
            raise ValueError(f"architecture {spec.name!r} is registered twice")
        _REGISTRY[spec.name] = _Entry(spec, builder)
        return builder

    return decorator


def import_models(module: str) -> None:
    """Import a module whose import registers models (``--plugin`` on the command line)."""
    _load()  # the built-in names first: a plugin that takes one of them is the plugin's error
    try:
        importlib.import_module(module)
    except (Exception, SystemExit) as exc:  # a plugin that fails to import (or takes a used name): the user's to fix
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise UnknownArchError(
            f"cannot import model module {module!r} ({type(exc).__name__}: {reason}); fix the module or drop --plugin"
        ) from exc


def _load() -> None:
    """Import the built-in family modules and the entry-point plugins, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    package = importlib.import_module("archs")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in ("base", "backbones"):
            importlib.import_module(f"archs.{info.name}")
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry.load()
            if callable(loaded):
                loaded()
        except Exception as exc:  # a broken plugin must not take the built-in models down
            warnings.warn(f"segbench: plugin {entry.name!r} ({entry.value}) failed to load: {exc}", stacklevel=2)


def _entry(name: str) -> _Entry:
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `bench list` shows the registered names"
        raise UnknownArchError(f"unknown architecture {name!r}{hint}") from None


def get_spec(name: str) -> ArchSpec:
    """The `ArchSpec` registered under ``name``; `UnknownArchError` suggests close names."""
    return _entry(name).spec


def build(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build the registered model ``name`` for ``num_classes`` classes, in eval mode.

    Args:
        name: registry name.
        num_classes: number of output classes (150 for ADE20K, 19 for Cityscapes).
        **kwargs: builder-specific keyword arguments.
    """
    model = _entry(name).builder(num_classes=num_classes, **kwargs)
    return model.eval()


def list_archs(scale: str | None = None) -> list[str]:
    """Registered names, sorted; only those of ``scale`` when given."""
    _load()
    return sorted(n for n, e in _REGISTRY.items() if scale is None or e.spec.scale == scale)
