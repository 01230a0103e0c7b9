"""The comparison frame from records: one row per architecture, measured beside published (table.csv).

Rows are grouped Real-Time / Non Real-Time. Each registered measurement (`bench.measurements`)
contributes its columns: those of the architecture as a whole (parameters) first, then per dataset
each kind's in registry order, each measured figure beside the published one and the delta. A
value that was not measured is missing, never filled in. The renderers (`bench.report.markdown`,
`bench.report.speed_table`) and the plots read the frame; `bench.report.writers` writes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd

import archs
from bench import protocol as proto
from bench.measurements import KINDS, Cells
from bench.measurements.latency import published_gpu
from bench.store import Record, latest_ok

if TYPE_CHECKING:
    from archs import ArchSpec

GROUP_TITLES = {"realtime": "Real-Time", "non-realtime": "Non Real-Time"}


def spec_of(name: str) -> ArchSpec | None:
    """The spec of ``name``, or None for a model not registered in this process (a plugin not loaded)."""
    try:
        return archs.get_spec(name)
    except archs.UnknownArchError:
        return None


def arch_order(names: set[str]) -> list[str]:
    """Suite order (realtime, non-realtime, lecture), then the rest alphabetically."""
    from bench.suites import SUITES

    ordered: list[str] = []
    for suite in ("realtime", "non-realtime", "lecture"):
        ordered += [n for n in SUITES[suite].archs if n in names and n not in ordered]
    return ordered + sorted(names - set(ordered))


def _taken_at(record: Record) -> str:
    """``Cityscapes latency eager at 1024x2048, 19 classes``: what a record measured, and at what."""
    settings = record.settings or {}
    size = "x".join(map(str, settings.get("input_size") or ["?"]))
    what = " ".join(filter(None, (record.kind, record.mode)))
    return f"{proto.DATASETS[record.dataset].title} {what} at {size}, {settings.get('num_classes', '?')} classes"


def _row(name: str, records: Mapping[tuple[str, str, str | None], Record], peaks: dict | None) -> dict[str, Any]:
    """One architecture's row: its spec's names, then each measurement's columns."""
    spec = spec_of(name)
    row: dict[str, Any] = {
        "group": GROUP_TITLES.get(spec.scale, spec.scale) if spec else "",
        "arch": name,
        "method": spec.family if spec else name,
        "encoder": spec.encoder if spec else "",
    }
    cells = Cells(spec, None, records, peaks)
    for measurement in KINDS:
        if not measurement.per_dataset:
            row.update(measurement.columns(cells))
    row["outdated"] = "; ".join(_taken_at(r) for r in records.values() if not proto.is_current(r)) or None
    row["machines"] = "; ".join(sorted({r.machine_label for r in records.values()}))
    for dataset in proto.DATASETS:
        on_dataset = Cells(spec, dataset, records, peaks)
        for measurement in KINDS:
            if measurement.per_dataset:
                row.update(measurement.columns(on_dataset))
    return row


def build_frame(
    records: list[Record], protocol: str = proto.PROTOCOL_VERSION, peaks: dict[str, float] | None = None
) -> pd.DataFrame:
    """One row per architecture with measured and published columns (the CSV's content).

    Args:
        records: every record of one device folder.
        protocol: the protocol version tabulated (other versions are left out).
        peaks: the device's roofline ceilings (`bench.store.peaks`), for the % of peak columns.
    """
    by_arch: dict[str, dict[tuple[str, str, str | None], Record]] = {}
    for (arch, dataset, kind, mode, _, _), record in latest_ok(records, protocol).items():
        by_arch.setdefault(arch, {})[(dataset, kind, mode)] = record
    rows = [_row(name, by_arch[name], peaks) for name in arch_order(set(by_arch))]
    _add_step_costs(rows)
    frame = pd.DataFrame(rows)
    frame.attrs["protocol"] = protocol  # the version the table and plots name
    return frame


def _add_step_costs(rows: list[dict[str, Any]]) -> None:
    """For a model that is another one plus a step (`ArchSpec.step_of`): the step's own FLOPs and latency."""
    by_arch = {row["arch"]: row for row in rows}
    for row in rows:
        spec = spec_of(row["arch"])
        base = by_arch.get(spec.step_of[0]) if spec and spec.step_of else None
        row["step"] = spec.step_of[1] if spec and spec.step_of and base else None
        for ds in proto.DATASETS:
            row[f"{ds}_step_gflops"] = _difference(row, base, f"{ds}_gflops")
            for mode in proto.MODES:
                row[f"{ds}_step_{mode}_ms"] = _difference(row, base, f"{ds}_latency_{mode}_ms")


def _difference(row: dict[str, Any], base: dict[str, Any] | None, column: str) -> float | None:
    if base is None or row.get(column) is None or base.get(column) is None:
        return None
    return row[column] - base[column]


def _measured_anywhere(frame: pd.DataFrame, suffix: str) -> bool:
    """Whether any dataset column ``<dataset>_<suffix>`` holds a value."""
    return any(f"{ds}_{suffix}" in frame and frame[f"{ds}_{suffix}"].notna().any() for ds in proto.DATASETS)


def measured_modes(frame: pd.DataFrame, device: str) -> list[str]:
    """The speed modes a table shows: eager always and graph on a GPU, the others where measured (a CPU runs
    only the modes without CUDA)."""
    always = ("eager",) if device == "cpu" else ("eager", "graph")
    return [
        m
        for m in proto.MODES
        if (m in always or _measured_anywhere(frame, f"fps_{m}")) and not (device == "cpu" and proto.needs_cuda(m))
    ]


def published_frame() -> pd.DataFrame:
    """Every registered spec's published figures (results/reported.csv)."""
    rows = []
    for name in archs.list_archs():
        spec = archs.get_spec(name)
        for ds, pub in spec.published.items():
            rows.append(
                {
                    "arch": name,
                    "method": spec.family,
                    "encoder": spec.encoder,
                    "dataset": ds,
                    "params_m": pub.params_m,
                    "gflops": pub.gflops,
                    "input": "x".join(map(str, pub.input_size or proto.DATASETS[ds].input_size)),
                    "fps": pub.fps,
                    "miou": pub.miou,
                    "source": pub.source,
                    "note": pub.note,
                    "fps_gpu": published_gpu(pub.source) if pub.fps is not None else None,
                }
            )
    return pd.DataFrame(rows)
