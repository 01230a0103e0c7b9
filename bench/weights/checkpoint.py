"""A checkpoint file's tensors and their conversion into a model's keys.

A checkpoint is read only through safetensors or ``torch.load(weights_only=True)`` (no pickled
code runs). A file whose keys are exactly the model's is segbench's own state dict and is taken as
it is; any other is recognised from its keys (`recognise_format`: mmseg, hf, torchvision, gscnn)
or, for an official file, taken to be its entry's declared format, and goes through that format's
converter (the spec's entries and `ArchSpec.formats`); a layout the spec does not load is a
one-line error naming what was found and what is accepted.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from archs import ArchSpec, CheckpointFormat
from bench.data.base import expand_user
from bench.errors import BenchError, described, first_line

_SHOWN_KEYS = 4
_WRAPPERS = ("state_dict", "model", "model_state_dict")
SEGBENCH_FORMAT = "segbench"
# Every mmseg decode head (BaseDecodeHead) has its classifier `conv_seg`; a cascade's heads are numbered.
_MMSEG_CLASSIFIER = re.compile(r"decode_head\.(\d+\.)?conv_seg\.weight")


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (safetensors, or a pickle read with ``weights_only=True``).

    A training checkpoint's ``state_dict`` / ``model`` entry is taken, and a ``module.`` prefix
    (DataParallel) is removed.
    """
    path = expand_user(path, "--weights")
    if not path.is_file():
        raise BenchError(f"--weights {path}: no such file; pass a checkpoint file, or `official`")
    unreadable = "pass a state dict saved with torch.save or safetensors (a fetched file: delete it and fetch it again)"
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the error below says what is wrong with the file
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if refused:
            raise BenchError(
                f"{path}: torch.load(weights_only=True) refuses it (it pickles {refused[1]}); segbench loads tensors "
                "only: re-save its state dict with torch.save or convert it to safetensors"
            ) from None
        found = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
        reason = found[1].strip() if found else "unpickling failed"
        raise BenchError(f"{path}: not a readable checkpoint ({reason}); {unreadable}") from None
    except MemoryError:
        size = path.stat().st_size / 2**30
        raise BenchError(f"{path}: loading it ({size:.1f} GiB) ran out of memory; free memory and run again") from None
    except OSError as exc:  # the file is there but cannot be read: not a damaged checkpoint
        raise BenchError(f"{path}: cannot be read ({first_line(exc)}); check its permissions and the disk") from None
    except Exception as exc:
        raise BenchError(f"{path}: not a readable checkpoint ({described(exc, 160)}); {unreadable}") from None
    return checkpoint_tensors(obj, str(path))


def checkpoint_tensors(obj: object, source: str) -> dict[str, torch.Tensor]:
    """The state dict in a loaded checkpoint object (`read_checkpoint` after reading the file).

    A training checkpoint's ``state_dict`` / ``model`` entry is taken, and a ``module.`` prefix
    (DataParallel) is removed.

    Args:
        obj: what ``torch.load`` or safetensors returned.
        source: the file, for messages.
    """
    for _ in range(3):  # a training checkpoint's state dict, possibly nested ({"model": {"state_dict": ...}})
        inner = [obj[k] for k in _WRAPPERS if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)]
        if not inner:
            break
        obj = inner[0]
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, Mapping) else {}
    if not tensors:
        found = "a mapping without tensors" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        raise BenchError(
            f"{source}: holds no state dict (found {found}); pass a model checkpoint: a mapping of parameter names "
            "to tensors, saved with torch.save(model.state_dict(), ...)"
        )
    names = [k for k in tensors if not isinstance(k, str)]
    if names:
        raise BenchError(
            f"{source}: {len(names)} of its keys are not parameter names (first {names[0]!r}); pass a state dict "
            "keyed by parameter names (torch.save(model.state_dict(), ...))"
        )
    dense = [k for k, v in tensors.items() if v.layout != torch.strided or v.is_nested]
    if dense:
        raise BenchError(
            f"{source}: holds sparse or nested tensors ({len(dense)}, first {dense[0]}: {_layout(tensors[dense[0]])}); "
            "save dense ones (tensor.to_dense())"
        )
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _layout(tensor: torch.Tensor) -> str:
    return "nested" if tensor.is_nested else str(tensor.layout).removeprefix("torch.")


def abbreviated(keys: list[str]) -> str:
    """The first few of ``keys`` and how many more there are, for a message."""
    more = f", ... {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else ""
    return ", ".join(keys[:_SHOWN_KEYS]) + more


def _fit(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> float:
    return sum(k in state for k in own) / max(1, len(own))


def _keys(state: Mapping[str, torch.Tensor]) -> set[str]:
    return {k for k in state if not k.endswith("num_batches_tracked")}


def recognise_format(state: Mapping[str, torch.Tensor]) -> str | None:
    """The publisher's layout that ``state``'s keys show (wrappers and DataParallel's prefix removed), or None."""
    prefixes = {key.split(".", 1)[0] for key in state}
    if any(_MMSEG_CLASSIFIER.fullmatch(key) for key in state):
        return "mmseg"
    if "decode_head" in prefixes and len(prefixes) == 2 and "backbone" not in prefixes:
        return "hf"  # a transformers *ForSemanticSegmentation: the base model under its type's name, decode_head
    if {"backbone", "classifier"} <= prefixes:
        return "torchvision"  # torchvision.models.segmentation: backbone, classifier (, aux_classifier)
    if {"mod1", "final_seg"} <= prefixes:
        return "gscnn"  # nv-tlabs/GSCNN: the WideResNet trunk's mod1..mod7 beside the shape stream and heads
    return None


def accepted_formats(spec: ArchSpec, dataset: str) -> dict[str, CheckpointFormat]:
    """The layouts ``spec`` loads, by name: its ``dataset`` entry's first, then its other entries', then its formats."""
    out: dict[str, CheckpointFormat] = {}
    for entry in sorted(spec.weights, key=lambda w: w.dataset != dataset):
        if entry.converter is not None and entry.format not in out:
            out[entry.format] = CheckpointFormat(entry.format, entry.converter, entry.configure, "official")
    for layout in spec.formats:
        out.setdefault(layout.format, layout)
    return out


@dataclass(frozen=True)
class Converted:
    """A checkpoint's tensors in the model's keys.

    Args:
        format: the layout it was read in.
        state: the tensors, keyed as the model's state dict.
        configure: to apply to the model once loaded (`archs.Weights.configure`), or None.
    """

    format: str
    state: dict[str, torch.Tensor]
    configure: Callable[[nn.Module], None] | None = None


def convert(
    spec: ArchSpec,
    dataset: str,
    state: Mapping[str, torch.Tensor],
    own: Mapping[str, torch.Tensor],
    *,
    declared: str | None = None,
    source: str = "the checkpoint",
) -> Converted:
    """``state`` in the model's keys, through the converter of its layout.

    Args:
        spec: the architecture's spec (its official entries and formats).
        dataset: protocol dataset name (its entry's converter comes first).
        state: the checkpoint's tensors (`read_checkpoint`).
        own: the model's state dict.
        declared: the layout the file is known to be in (an official entry's format); None: recognised
            from the keys.
        source: the file, for messages.
    """
    if _keys(state) == _keys(own):
        return Converted(SEGBENCH_FORMAT, dict(state))
    formats = accepted_formats(spec, dataset)
    found = recognise_format(state)
    layout = declared if declared in formats else found
    if layout in formats:
        try:
            converted = formats[layout].converter(state)
        except (KeyError, ValueError, IndexError, RuntimeError) as exc:
            raise BenchError(
                f"{source}: its {layout} layout does not convert onto {spec.name} ({first_line(exc, 400)})"
            ) from None
        return Converted(layout, converted, formats[layout].configure)
    if found is None and _fit(state, own) >= 0.5:  # segbench's own keys, some missing or extra: the load names them
        return Converted(SEGBENCH_FORMAT, dict(state))
    what = f"is in the {found} layout" if found else "is in a layout segbench does not recognise"
    accepted = [f"{name} ({fmt.source})" if fmt.source else name for name, fmt in formats.items()]
    raise BenchError(
        f"{source} {what} (keys {abbreviated(sorted(state))}); {spec.name} loads: "
        f"{', '.join([*accepted, 'segbench (its own state dict)'])}"
    )
