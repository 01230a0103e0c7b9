"""Loading a checkpoint into a model exactly: the official file (fetched when missing) or a path.

A checkpoint that does not fit says which keys are missing, which unexpected and which of another
shape; one for another class count is refused, as are meta, non-floating and non-finite tensors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from archs import ArchSpec
from bench import protocol as proto
from bench.data.base import expand_user
from bench.errors import BenchError, first_line
from bench.weights.checkpoint import abbreviated, convert, read_checkpoint
from bench.weights.fetch import fetch, sha256sum
from bench.weights.registry import cache_dir, cached_path, official


@dataclass(frozen=True)
class LoadedWeights:
    """Which checkpoint was loaded.

    Args:
        source: ``official``, ``none`` (random weights) or the path given.
        path: the file read (None for random weights).
        sha256: its digest.
        uri: where the official file comes from.
        format: the layout it was read in (``segbench`` for the model's own keys).
    """

    source: str
    path: str | None = None
    sha256: str | None = None
    uri: str | None = None
    format: str | None = None


def _finite(tensor: torch.Tensor) -> bool:
    if not tensor.is_floating_point():
        return True
    if tensor.element_size() == 1:  # float8: no isfinite kernel
        tensor = tensor.float()
    return bool(torch.isfinite(tensor).all())


def resized_on_load(model: nn.Module) -> set[str]:
    """State-dict keys whose shape the loaded tensor sets (a module's ``resized_on_load`` names, e.g. ViT's
    positional embeddings, which adopt a checkpoint's grid)."""
    return {
        f"{name}.{attr}" if name else attr
        for name, module in model.named_modules()
        for attr in getattr(module, "resized_on_load", ())
    }


def check_fit(model: nn.Module, state: Mapping[str, torch.Tensor], *, num_classes: int, source: str) -> None:
    """One `BenchError` unless ``state`` has exactly ``model``'s state-dict keys and shapes.

    Args:
        model: the built model (on any device, the meta device included).
        state: tensors in the model's keys.
        num_classes: the dataset's class count (a checkpoint for another count is refused).
        source: the file, for messages.
    """
    own, resized = model.state_dict(), resized_on_load(model)
    for key, value in state.items():
        mine = own.get(key)
        if mine is not None and mine.shape != value.shape and mine.ndim and mine.shape[0] == num_classes:
            if value.ndim == mine.ndim and value.shape[1:] == mine.shape[1:]:
                raise BenchError(
                    f"{source} predicts {value.shape[0]} classes ({key}) but this dataset has {num_classes}; "
                    "use a checkpoint trained on this dataset (`bench weights list`)"
                )
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and k not in resized and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing ({abbreviated(missing)})"] if missing else []
        parts += [f"{len(unexpected)} unexpected ({abbreviated(unexpected)})"] if unexpected else []
        parts += [f"{len(shapes)} of another shape ({abbreviated(shapes)})"] if shapes else []
        raise BenchError(
            f"{source} does not fit the model: keys {'; '.join(parts)}; pass a checkpoint of this architecture "
            "(official format or segbench's own state dict)"
        )


def load_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], *, num_classes: int, source: str) -> None:
    """Load ``state`` into ``model`` exactly; one `BenchError` listing what does not fit.

    Args:
        model: the built model.
        state: tensors in the model's keys.
        num_classes: the dataset's class count (a checkpoint for another count is refused).
        source: the file, for messages.
    """
    check_fit(model, state, num_classes=num_classes, source=source)
    own = model.state_dict()
    meta = [k for k, v in state.items() if v.is_meta]
    if meta:
        raise BenchError(
            f"{source} holds meta tensors (shapes, no data: {len(meta)} of {len(state)}, first {meta[0]}); it was "
            "saved from a model on the meta device: save the state dict of a materialised model"
        )
    kinds = [k for k, v in state.items() if own[k].is_floating_point() and not v.is_floating_point()]
    if kinds:  # torch would cast them (a complex one losing its imaginary part) without a word
        first = kinds[0]
        raise BenchError(
            f"{source} holds {str(state[first].dtype).removeprefix('torch.')} tensors where the model's are floating "
            f"point ({len(kinds)} of {len(state)} tensors, first {first}); pass a checkpoint of this architecture's "
            "trained weights"
        )
    broken = [k for k, v in state.items() if not _finite(v) and _finite(own[k])]
    if broken:
        raise BenchError(
            f"{source} holds NaN or infinite values ({len(broken)} of {len(state)} tensors, first {broken[0]}); "
            "the training run diverged or the file is damaged: pass a checkpoint from before it"
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # torch's message lists every key on its own line: keep the first reason
        reason = re.search(r"(While copying the parameter named .*)", str(exc))
        raise BenchError(
            f"{source} does not load into the model ({reason[1] if reason else first_line(exc)}); pass a checkpoint "
            "of this architecture (official format or segbench's own state dict)"
        ) from None


def load_weights(
    model: nn.Module, spec: ArchSpec, dataset: str, weights: str | Path = "official", *, download: bool = True
) -> LoadedWeights:
    """Load a checkpoint into ``model`` (in place).

    Args:
        model: built by ``archs.build(spec.name, num_classes=<dataset's>)``.
        spec: its spec (official checkpoints, converters).
        dataset: protocol dataset name.
        weights: ``official`` (the cached official file, fetched when missing), ``none`` (keep the random
            weights) or a checkpoint path.
        download: fetch a missing official file (False: a `BenchError` naming the fetch command).
    """
    num_classes = proto.dataset(dataset).num_classes
    if str(weights) == "none":
        return LoadedWeights("none")
    uri = declared = None
    if str(weights) == "official":
        entry = official(spec, dataset)
        uri, declared = entry.uri, entry.format
        path = cached_path(spec, entry)
        if path is None:
            if not download:
                raise BenchError(
                    f"the official {spec.name} {dataset} checkpoint is not in {cache_dir()}; run "
                    f"`bench weights fetch {spec.name} --dataset {dataset}` on a connected machine, "
                    "or pass --weights PATH"
                )
            path = fetch(spec, dataset)
        if entry.sha256 and sha256sum(path) != entry.sha256.lower():
            raise BenchError(f"{path}: sha256 differs from the spec's; delete it and fetch it again")
    else:
        path = expand_user(weights, "--weights")
    state = read_checkpoint(path)
    converted = convert(spec, dataset, state, model.state_dict(), declared=declared, source=str(path))
    load_state_dict(model, converted.state, num_classes=num_classes, source=str(path))
    if converted.configure is not None:
        converted.configure(model)
    return LoadedWeights(str(weights), str(path), sha256sum(path), uri, converted.format)
