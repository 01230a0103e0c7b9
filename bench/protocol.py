"""The fixed measurement protocol, versioned: every record names the version it was taken under.

Change any number here and bump `PROTOCOL_VERSION`, naming in `CHANGED_MODES` the speed modes
whose measurement the new version changes: records of different versions are kept but never share
a table cell, except that a record still counts under a later version that did not change what it
measures (`counts_as`: parameters, FLOPs, and the modes no later version changed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:  # types only: the records and tables read this module without importing torch
    from archs import ArchSpec
    from bench.store.record import Record

PROTOCOL_VERSION = "2"
# Per version, the speed modes whose measurement it changed (latency and sweep records of those modes).
# 2: the fp16/bf16 channels_last modes time both memory layouts and keep the faster ("auto" below), and a
#    fused mode stores the weights autocast casts in the mode's precision (`fusion.precast_for_autocast`).
CHANGED_MODES: dict[str, frozenset[str]] = {
    "2": frozenset({"graph", "graph-bf16", "eager-fp16", "graph-fused"}),
}


@dataclass(frozen=True)
class DatasetProtocol:
    """Input size and label space of one dataset.

    Args:
        name: protocol name used on the command line and in records.
        title: as the tables print it.
        num_classes: classes the model predicts.
        input_size: (H, W) for FLOPs and speed (the published test size).
        ignore_index: label value excluded from every metric.
    """

    name: str
    title: str
    num_classes: int
    input_size: tuple[int, int]
    ignore_index: int = 255


DATASETS: dict[str, DatasetProtocol] = {
    "ade20k": DatasetProtocol("ade20k", "ADE20K", 150, (512, 512)),
    "cityscapes": DatasetProtocol("cityscapes", "Cityscapes", 19, (1024, 2048)),
}


@dataclass(frozen=True)
class SpeedProtocol:
    """How latency is timed: batch 1, random non-zero input, warm-up, then timed repeats.

    Args:
        batch: images per step.
        warmup_steps: untimed steps before timing (cudnn.benchmark autotuning happens here).
        repeats: timed repeats; the spread between repeats is recorded.
        min_steps: steps per repeat at least.
        min_repeat_s: a repeat runs at least this long (more steps for fast models).
        max_repeat_s: a repeat stops adding steps after this long (slow models on a CPU).
    """

    batch: int = 1
    warmup_steps: int = 10
    repeats: int = 5
    min_steps: int = 10
    min_repeat_s: float = 0.5
    max_repeat_s: float = 30.0


# On a CPU a 1024x2048 forward takes seconds: fewer steps, same statistics.
SPEED = {
    "cuda": SpeedProtocol(),
    "cpu": SpeedProtocol(warmup_steps=1, repeats=2, min_steps=1, min_repeat_s=1.0, max_repeat_s=5.0),
}


class _Runtime(TypedDict):
    channels_last: bool | str  # "auto": the faster of the two layouts, timed
    cuda_graph: bool
    compile: bool
    fused: bool


class ModeSettings(_Runtime):
    """What a speed mode runs: its precision, memory layout, CUDA-graph replay, torch.compile, inference form."""

    precision: str


# Speed modes (docs/protocol.md): `eager` is what the papers timed, `graph` what the GPU does without Python
# launch overhead; each other mode changes one factor of these two. channels_last "auto" times both layouts
# (`LAYOUT_PROBE`) and keeps the faster; `compile` holds channels_last, as a second compile takes minutes.
_PLAIN: _Runtime = {"channels_last": False, "cuda_graph": False, "compile": False, "fused": False}
MODES: dict[str, ModeSettings] = {
    "eager": {**_PLAIN, "precision": "fp32"},
    "graph": {**_PLAIN, "precision": "fp16", "channels_last": "auto", "cuda_graph": True},
    "graph-fp32": {**_PLAIN, "precision": "fp32", "cuda_graph": True},
    "graph-bf16": {**_PLAIN, "precision": "bf16", "channels_last": "auto", "cuda_graph": True},
    "graph-nchw": {**_PLAIN, "precision": "fp16", "cuda_graph": True},
    "eager-fp16": {**_PLAIN, "precision": "fp16", "channels_last": "auto"},
    "compile": {**_PLAIN, "precision": "fp16", "channels_last": True, "cuda_graph": True, "compile": True},
    "eager-fused": {**_PLAIN, "precision": "fp32", "fused": True},
    "graph-fused": {**_PLAIN, "precision": "fp16", "channels_last": "auto", "cuda_graph": True, "fused": True},
}


@dataclass(frozen=True)
class LayoutProbe:
    """How an "auto" layout mode picks its layout: each layout's step prepared as the mode runs it
    (captured in a graph mode), ``warmup_steps`` untimed, then timed for ``min_steps`` steps and
    at least ``min_s`` seconds; the layout with the lower median is kept and timed under the protocol."""

    warmup_steps: int = 5
    min_steps: int = 5
    min_s: float = 0.2


LAYOUT_PROBE = LayoutProbe()

# Seed of the random weights every measurement builds its model with (mIoU jobs then load a checkpoint).
MODEL_SEED = 0

# What `bench run` times unless --modes says otherwise.
DEFAULT_MODES = ("eager", "graph", "graph-fp32")
# torch.compile mode of the `compile` speed mode: "default" fuses kernels, then the harness captures the step
# into a CUDA graph as for `graph` ("max-autotune" takes tens of minutes on the large models).
COMPILE_MODE = "default"

# A measurement whose repeats disagree by more than this share of the median is flagged unstable.
MAX_SPREAD = 0.02
# The batch sweep: batch sizes tried (until one runs out of memory), in this speed mode, each
# point timed with fewer and shorter repeats than a latency (a throughput curve, not a latency).
# (A CPU sweep stops at 4: host memory has no allocator that refuses before the machine swaps.)
SWEEP_BATCHES = {"cuda": (1, 2, 4, 8, 16, 32, 64), "cpu": (1, 2, 4)}
SWEEP_MODE = "graph"
SWEEP = {
    "cuda": SpeedProtocol(warmup_steps=3, repeats=2, min_steps=3, min_repeat_s=0.25),
    "cpu": SPEED["cpu"],
}


def counts_as(protocol: str, mode: str | None) -> str:
    """The version a record taken under ``protocol`` (in speed mode ``mode``; None for params, FLOPs)
    counts as: the newest of the versions after it, taken in order, none of which changed that mode's
    measurement (a version missing from `CHANGED_MODES` changed everything)."""
    current = protocol
    while current.isdigit() and int(current) < int(PROTOCOL_VERSION):
        following = str(int(current) + 1)
        if following not in CHANGED_MODES or mode in CHANGED_MODES[following]:
            break
        current = following
    return current


def file_suffix(protocol: str) -> str:
    """What the tables and plots of ``protocol`` add to their file names: nothing for the current
    version, ``-v<N>`` for another (table-v1.md beside table.md)."""
    return "" if protocol == PROTOCOL_VERSION else f"-v{protocol}"


def needs_cuda(mode: str) -> bool:
    """True for modes a CPU cannot run as named: reduced precision, CUDA graphs, torch.compile."""
    settings = MODES[mode]
    return settings["precision"] != "fp32" or settings["cuda_graph"] or settings["compile"]


def dataset(name: str) -> DatasetProtocol:
    """The protocol of dataset ``name``; ValueError naming the choices otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}") from None


def input_size(spec: ArchSpec, dataset_name: str) -> tuple[int, int]:
    """(H, W) for ``spec`` on ``dataset_name``: the spec's published size, else the protocol's."""
    height, width = spec.input_size.get(dataset_name, dataset(dataset_name).input_size)
    return height, width


def job_settings(spec: ArchSpec, dataset_name: str, mode: str | None) -> dict[str, Any]:
    """What a job is measured with: input size and classes (the spec's), and its mode's settings."""
    return {
        "input_size": list(input_size(spec, dataset_name)),
        "num_classes": dataset(dataset_name).num_classes,
        **(MODES[mode] if mode else {}),
    }


def is_current(record: Record) -> bool:
    """Whether ``record`` was taken at the input size and classes its job has now (a spec may change them)."""
    import archs  # imports torch: only a run and the tables ask

    if record.arch not in archs.list_archs() or record.dataset not in DATASETS:
        return True  # a plugin not loaded this run, or an old dataset: nothing to compare with
    recorded = record.settings or {}  # a setting the record does not name cannot be compared
    current = job_settings(archs.get_spec(record.arch), record.dataset, None)
    return all(recorded[key] == value for key, value in current.items() if key in recorded)
