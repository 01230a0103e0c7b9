"""What a kind of measurement declares once (`Measurement`), and the typed value its records carry (`Value`).

A value is a frozen dataclass whose annotated fields are what segbench reads of it; `Value.from_json`
checks each against its annotation, so a record of the wrong types is rejected where it is read, and
keeps the JSON object whole, so that a record written back is the line it was read from.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, NewType, TypeVar

if TYPE_CHECKING:  # types only: reading records imports neither torch nor the job machinery
    import torch
    from torch import nn

    from archs import ArchSpec, Published
    from bench.jobs import Job, RunOptions
    from bench.protocol import DatasetProtocol
    from bench.store.record import Record

Count = NewType("Count", int)  # a positive int: a batch size, a number of inputs
Size = tuple[int, int]  # (H, W) of an input, positive
V = TypeVar("V", bound="Value")


def is_number(value: object) -> bool:
    """An int or float of JSON, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# What a value of each annotated type must be in JSON.
_CHECKS: dict[Any, Callable[[Any], bool]] = {
    float: is_number,
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    Count: _positive_int,
    bool: lambda v: isinstance(v, bool),
    str: lambda v: isinstance(v, str),
    Size: lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_positive_int, v)),
    dict[str, float]: lambda v: isinstance(v, dict) and all(isinstance(k, str) and is_number(n) for k, n in v.items()),
    dict[str, Any]: lambda v: isinstance(v, dict),
}


def _read(kind: Any, raw: object) -> object:
    """``raw`` as the annotation ``kind`` types it; ValueError where it is of another type."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # ``X | None``: None was handled by the caller
        (kind,) = [arg for arg in typing.get_args(kind) if arg is not type(None)]
    if isinstance(kind, type) and issubclass(kind, Value):
        return kind.from_json(raw)
    if kind not in _CHECKS:
        raise TypeError(f"a value field of type {kind} cannot be read from JSON; use one of {list(_CHECKS)}")
    if not _CHECKS[kind](raw):
        raise ValueError(f"{raw!r:.60} is not {getattr(kind, '__name__', kind)}")
    if kind == Size:
        return tuple(typing.cast(list, raw))
    return raw


_FIELDS: dict[type, dict[str, tuple[Any, bool]]] = {}


def _fields(cls: type[Value]) -> dict[str, tuple[Any, bool]]:
    """Each typed field of ``cls``: its annotation, and whether a value must have it (read once per class)."""
    if cls not in _FIELDS:
        hints = typing.get_type_hints(cls)
        _FIELDS[cls] = {
            f.name: (hints[f.name], f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls)
            if f.name != "data"
        }
    return _FIELDS[cls]


def _as_json(value: object) -> object:
    if isinstance(value, Value):
        return value.to_json()
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True, kw_only=True)
class Value:
    """A measurement's value: typed fields over the JSON object recorded.

    A subclass annotates the fields segbench reads (``X | None = None`` for one a record may lack).
    A value built in code records the fields it sets; one read by `from_json` keeps the whole object,
    fields no annotation names included.

    Args:
        data: the JSON object (filled from the fields when left empty).
    """

    data: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.data:
            fields = {name: _as_json(getattr(self, name)) for name in _fields(type(self))}
            object.__setattr__(self, "data", {name: value for name, value in fields.items() if value is not None})

    @classmethod
    def from_json(cls: type[V], data: object) -> V:
        """The value of a JSON object; ValueError naming the field that is missing or of another type."""
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}: {data!r:.60} is not a JSON object")
        typed = {}
        for name, (kind, required) in _fields(cls).items():
            raw = data.get(name)
            if raw is None:
                if required:
                    raise ValueError(f"{cls.__name__}.{name}: missing")
                continue
            try:
                typed[name] = _read(kind, raw)
            except ValueError as exc:
                raise ValueError(f"{cls.__name__}.{name}: {exc}") from None
        return cls(data=data, **typed)

    def to_json(self) -> dict[str, Any]:
        return dict(self.data)


@dataclass(frozen=True)
class Modes:
    """What a run asks for that decides the modes of its jobs.

    Args:
        speed: the speed modes timed (`bench.protocol.MODES`).
        sweep: the mode of the batch sweep.
    """

    speed: tuple[str, ...]
    sweep: str


@dataclass(frozen=True)
class JobContext:
    """What a measurement's ``run`` works on: one job's model, built with the protocol's seed, and its input.

    Args:
        job: the job.
        spec: the architecture's spec.
        dataset: the dataset's protocol (classes).
        input_size: (H, W) of the job's input.
        device: where it runs.
        model: the model in eval mode with random weights, on the CPU.
        options: the run's options (device, data root, weights, ...).
    """

    job: Job
    spec: ArchSpec
    dataset: DatasetProtocol
    input_size: tuple[int, int]
    device: torch.device
    model: nn.Module
    options: RunOptions

    @property
    def mode(self) -> str:
        """The job's mode (a measurement whose jobs have modes reads it; ValueError for a job in none)."""
        if self.job.mode is None:
            raise ValueError(f"{self.job.label}: a {self.job.kind} job needs a mode")
        return self.job.mode


@dataclass(frozen=True)
class Cells:
    """What a measurement's table columns are read from: one architecture's tabulated records.

    Args:
        spec: the architecture's spec (None for a model not registered in this process).
        dataset: the dataset of the columns (None for columns of the architecture as a whole).
        records: the tabulated record per (dataset, kind, mode).
        peaks: the device's roofline ceilings (`bench.store.peaks`), or None.
    """

    spec: ArchSpec | None
    dataset: str | None
    records: Mapping[tuple[str, str, str | None], Record]
    peaks: Mapping[str, float] | None = None

    def value(self, measurement: Measurement[V], mode: str | None = None, *, dataset: str | None = None) -> V | None:
        """The value of ``measurement`` (in ``mode``) on ``dataset`` (default: the cells' dataset), or None."""
        record = self.records.get((dataset or self.dataset or "", measurement.name, mode))
        value = None if record is None else record.value
        return value if isinstance(value, measurement.value_type) else None

    def modes(self, measurement: Measurement[Any]) -> list[str | None]:
        """The modes ``measurement`` was recorded in on the cells' dataset, in record order."""
        return [mode for (ds, kind, mode) in self.records if (ds, kind) == (self.dataset, measurement.name)]

    def published(self, dataset: str | None = None) -> Published | None:
        """The spec's published figures on ``dataset`` (default: the cells' dataset)."""
        return self.spec.published.get(dataset or self.dataset or "") if self.spec else None


def no_mode(modes: Modes) -> tuple[str | None, ...]:
    """One job, in no mode: a count that does not depend on how the model runs."""
    return (None,)


def _always(record: Record, options: RunOptions) -> bool:
    return True


@dataclass(frozen=True, kw_only=True)
class Measurement(Generic[V]):
    """One kind of measurement, declared once: all that jobs, `bench run`, the records and the tables know of it.

    Args:
        name: the records' ``kind``, and `bench run --measure`'s word for it.
        value_type: the dataclass of its value.
        run: measures one job, in the job's child process.
        timeout_s: a job's default time limit, in seconds.
        summary: the line `bench run` prints after an ``ok`` job: (value, record) -> text.
        columns: the table columns it contributes, in order: column name -> value (None: not measured).
        modes: the modes of its jobs per (architecture, dataset).
        per_dataset: whether its columns are per dataset (else the architecture's, before the datasets').
        default_on: the device types ("cuda", "cpu") on which `bench run` measures it unless --measure says.
        needs_data: measured only in a run given a dataset (--data-root), not chosen by --measure.
        needs_peaks: its columns compare it with the device's roofline ceilings, which a GPU run then measures.
        reusable: whether a recorded value still answers this run, beyond its protocol and input size.
    """

    name: str
    value_type: type[V]
    run: Callable[[JobContext], V]
    timeout_s: float
    summary: Callable[[V, Record], str]
    columns: Callable[[Cells], dict[str, Any]]
    modes: Callable[[Modes], tuple[str | None, ...]] = no_mode
    per_dataset: bool = True
    default_on: tuple[str, ...] = ("cuda", "cpu")
    needs_data: bool = False
    needs_peaks: bool = False
    reusable: Callable[[Record, RunOptions], bool] = _always
