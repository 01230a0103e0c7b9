"""Every kind of measurement segbench takes, each declared once (`Measurement`) in its own module.

Jobs, `bench run`, the record store and the tables read `MEASUREMENTS` and name no kind. Adding a
kind is a module declaring its `Measurement` and its place in `KINDS`: the order of a run's jobs per
architecture and dataset, and of the table's columns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.measurements import activations, flops, latency, miou, params, sweep
from bench.measurements.base import Cells, JobContext, Measurement, Modes, Value

if TYPE_CHECKING:
    from bench.store.record import Record

KINDS: tuple[Measurement[Any], ...] = (
    params.PARAMS,
    flops.FLOPS,
    latency.LATENCY,
    sweep.SWEEP,
    miou.MIOU,
    activations.ACTIVATIONS,
)
MEASUREMENTS: dict[str, Measurement[Any]] = {measurement.name: measurement for measurement in KINDS}

__all__ = [
    "KINDS",
    "MEASUREMENTS",
    "Cells",
    "JobContext",
    "Measurement",
    "Modes",
    "Value",
    "defaults",
    "selectable",
    "summarise",
]


def selectable() -> list[str]:
    """The kinds `bench run --measure` may name (an mIoU is asked for with a dataset root, --data-root)."""
    return [m.name for m in KINDS if not m.needs_data]


def defaults(device_type: str) -> list[str]:
    """The kinds a run on ``device_type`` ("cuda", "cpu") measures unless --measure says otherwise."""
    return [m.name for m in KINDS if device_type in m.default_on]


def summarise(record: Record) -> str:
    """The line `bench run` prints for an ``ok`` record ("" for a kind this process does not know)."""
    measurement = MEASUREMENTS.get(record.kind)
    if measurement is None or record.value is None or not isinstance(record.value, measurement.value_type):
        return ""
    return measurement.summary(record.value, record)
