"""The comparison frame from records: one row per architecture, measured beside published (table.csv).

Rows are grouped Real-Time / Non Real-Time; columns are the architecture's params, then per dataset
GFLOPs, each speed mode's measurements, and mIoU, each beside the published figure and the delta.
A value that was not measured is missing, never filled in. `bench.report.markdown` renders it.
"""

from __future__ import annotations

import re

import pandas as pd

import archs
from bench import protocol as proto
from bench.compare import delta
from bench.jobs import is_current
from bench.measure import roofline
from bench.records import latest_ok, machine_label

MISSING = "—"
GROUP_TITLES = {"realtime": "Real-Time", "non-realtime": "Non Real-Time"}
FLOPS_NOTE = (
    "GFLOPs: fvcore count of the model's forward on one image, one fused multiply-add = one FLOP "
    "(the published figures' convention); norms, resizes, pooling and attention matmuls counted, "
    "element-wise activations not."
)
# GPUs as published sources spell them -> as the tables name them.
GPU_NAMES = {
    r"\bTitan ?X ?\(?Maxwell\)?": "Titan X Maxwell",
    r"\bTitan ?X ?\(?Pascal\)?|\bTitan ?Xp\b": "Titan Xp",
    r"\bTitan ?X\b": "Titan X",
    r"\bV100S\b": "V100S",
    r"\bV100\b": "V100",
    r"\bP100\b": "P100",
    r"\bA100\b": "A100",
    r"\bH100\b": "H100",
    r"\bT4\b": "T4",
    r"\b(?:GTX|RTX) ?\d{3,4}(?: ?Ti)?\b": None,  # named as written
}
# The seed's comparison table is SegFormer's Table 4, whose FPS its author measured on a V100
# (github.com/NVlabs/SegFormer/issues/17): a source citing it that names no GPU means that V100.
SEED_TABLE = re.compile(r"\bSegFormer\b.*\bTable 4\b")
SEED_TABLE_GPU = "V100"


def _taken_at(record: dict) -> str:
    """``Cityscapes latency eager at 1024x2048, 19 classes``: what a record measured, and at what."""
    settings = record.get("settings") or {}
    size = "x".join(map(str, settings.get("input_size") or ["?"]))
    what = " ".join(filter(None, (record["kind"], record.get("mode"))))
    return f"{proto.DATASETS[record['dataset']].title} {what} at {size}, {settings.get('num_classes', '?')} classes"


def _spec(name: str):
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


def build_frame(records: list[dict], protocol: str = proto.PROTOCOL_VERSION, peaks: dict | None = None) -> pd.DataFrame:
    """One row per architecture with measured and published columns (the CSV's content).

    Args:
        records: every record of one device folder.
        protocol: the protocol version tabulated (other versions are left out).
        peaks: the device's roofline ceilings (`bench.measure.roofline`), for the % of peak columns.
    """
    latest = latest_ok(records, protocol)
    values: dict[tuple, dict] = {}
    for (arch, dataset, kind, mode, _, _), record in latest.items():
        values[(arch, dataset, kind, mode)] = record
    names = {key[0] for key in values}
    rows = []
    for name in arch_order(names):
        spec = _spec(name)
        published = spec.published if spec else {}
        row = {
            "group": GROUP_TITLES.get(spec.scale, spec.scale) if spec else "",
            "arch": name,
            "method": spec.family if spec else name,
            "encoder": spec.encoder if spec else "",
        }
        params = _value(values, name, "ade20k", "params", None, "params_m")
        if params is None:
            params = _value(values, name, "cityscapes", "params", None, "params_m")
        pub_params = next((p.params_m for p in published.values() if p.params_m is not None), None)
        row.update(params_m=params, params_m_published=pub_params, params_delta_pct=_pct(params, pub_params))
        outdated = [_taken_at(r) for (arch, *_), r in values.items() if arch == name and not is_current(r)]
        row["outdated"] = "; ".join(outdated) or None
        row["machines"] = "; ".join(sorted({machine_label(r) for (arch, *_), r in values.items() if arch == name}))
        for ds in proto.DATASETS:
            pub = published.get(ds)
            gflops = _value(values, name, ds, "flops", None, "gflops")
            size = _value(values, name, ds, "flops", None, "input_size")
            row[f"{ds}_input"] = "x".join(map(str, size)) if size else None
            row[f"{ds}_gflops"] = gflops
            dynamic = _value(values, name, ds, "flops", None, "dynamic") or {}
            row[f"{ds}_gflops_dynamic_mean"] = dynamic.get("gflops_mean")
            row[f"{ds}_gflops_dynamic_min"] = dynamic.get("gflops_min")
            row[f"{ds}_gflops_dynamic_max"] = dynamic.get("gflops_max")
            row[f"{ds}_gflops_dynamic_inputs"] = dynamic.get("inputs")
            row[f"{ds}_gflops_published"] = pub.gflops if pub else None
            row[f"{ds}_gflops_delta_pct"] = _pct(gflops, pub.gflops if pub else None)
            for mode, settings in proto.MODES.items():
                latency = _value(values, name, ds, "latency", mode, "median_ms")
                row[f"{ds}_fps_{mode}"] = _value(values, name, ds, "latency", mode, "fps")
                row[f"{ds}_latency_{mode}_ms"] = latency
                row[f"{ds}_energy_{mode}_j"] = _value(values, name, ds, "latency", mode, "energy_j_per_frame")
                row[f"{ds}_spread_{mode}_pct"] = _scaled(_value(values, name, ds, "latency", mode, "spread"), 100)
                row[f"{ds}_unstable_{mode}"] = _value(values, name, ds, "latency", mode, "unstable")
                row[f"{ds}_throttled_{mode}"] = _value(values, name, ds, "latency", mode, "throttled")
                # the layout a probing mode kept (a record of a fixed layout, or of protocol v1, has no probe)
                probed = _value(values, name, ds, "latency", mode, "layout_ms")
                kept = _value(values, name, ds, "latency", mode, "channels_last")
                row[f"{ds}_channels_last_{mode}"] = kept if probed else None
                # a fused mode's rate counts what its inference form executes, not the architecture's count
                form = _value(values, name, ds, "latency", mode, "inference_form") or {}
                work = form.get("executed_gflops") if settings["fused"] else gflops
                tflops = roofline.achieved_tflops(work * 1e9, latency) if work and latency else None
                share = None
                if tflops:
                    flags = [_value(values, name, ds, "latency", mode, key) for key in ("tf32", "tf32_matmul")]
                    # a fused mode's split is its inference form's (none in a record that predates it)
                    built = _value(values, name, ds, "flops", None, "by_operator")
                    split = form.get("executed_by_operator") if settings["fused"] else built
                    ceiling = roofline.ceiling_tflops(peaks, settings["precision"], *flags, split)
                    share = roofline.share_of_peak(tflops, ceiling)
                row[f"{ds}_tflops_{mode}"] = tflops
                row[f"{ds}_peak_{mode}_pct"] = _scaled(share, 100)
            row[f"{ds}_compile_s"] = _value(values, name, ds, "latency", "compile", "compile_s")
            overhead = roofline.launch_overhead_share(row[f"{ds}_latency_eager_ms"], row[f"{ds}_latency_graph-fp32_ms"])
            row[f"{ds}_launch_overhead_pct"] = _scaled(overhead, 100)
            row[f"{ds}_bound"] = roofline.bound(overhead)
            sweep_mode = next((m for (a, d, k, m) in values if (a, d, k) == (name, ds, "sweep")), None)
            row[f"{ds}_sweep_mode"] = sweep_mode
            row[f"{ds}_best_batch"] = _value(values, name, ds, "sweep", sweep_mode, "best_batch")
            row[f"{ds}_images_s_best"] = _value(values, name, ds, "sweep", sweep_mode, "images_s")
            row[f"{ds}_fps_published"] = pub.fps if pub else None
            row[f"{ds}_fps_published_gpu"] = published_gpu(pub.source) if pub and pub.fps is not None else None
            row[f"{ds}_miou"] = _value(values, name, ds, "miou", "eager", "mIoU")
            row[f"{ds}_miou_published"] = pub.miou if pub else None
        rows.append(row)
    _add_step_costs(rows)
    frame = pd.DataFrame(rows)
    frame.attrs["protocol"] = protocol  # the version the table and plots name
    return frame


def _add_step_costs(rows: list[dict]) -> None:
    """For a model that is another one plus a step (`ArchSpec.step_of`): the step's own FLOPs and latency."""
    by_arch = {row["arch"]: row for row in rows}
    for row in rows:
        spec = _spec(row["arch"])
        base = by_arch.get(spec.step_of[0]) if spec and spec.step_of else None
        row["step"] = spec.step_of[1] if base else None
        for ds in proto.DATASETS:
            row[f"{ds}_step_gflops"] = _difference(row, base, f"{ds}_gflops")
            for mode in proto.MODES:
                row[f"{ds}_step_{mode}_ms"] = _difference(row, base, f"{ds}_latency_{mode}_ms")


def _difference(row: dict, base: dict | None, column: str):
    if base is None or row.get(column) is None or base.get(column) is None:
        return None
    return row[column] - base[column]


def _value(values: dict, arch: str, dataset: str, kind: str, mode: str | None, field: str):
    record = values.get((arch, dataset, kind, mode))
    if record is None or not record.get("value"):
        return None
    return record["value"].get(field)


def _scaled(value, factor: float):
    return None if value is None else value * factor


def _pct(measured, published) -> float | None:
    if measured is None or published is None or published == 0:
        return None
    return 100.0 * delta(measured, published)


def _has(frame: pd.DataFrame, suffix: str) -> bool:
    """Whether any dataset column ``<dataset>_<suffix>`` holds a value."""
    return any(f"{ds}_{suffix}" in frame and frame[f"{ds}_{suffix}"].notna().any() for ds in proto.DATASETS)


def measured_modes(frame: pd.DataFrame, device: str) -> list[str]:
    """The speed modes a table shows: eager always and graph on a GPU, the others where measured (a CPU runs
    only the modes without CUDA)."""
    always = ("eager",) if device == "cpu" else ("eager", "graph")
    return [
        m
        for m in proto.MODES
        if (m in always or _has(frame, f"fps_{m}")) and not (device == "cpu" and proto.needs_cuda(m))
    ]


def published_gpu(source: str) -> str | None:
    """The GPU a published FPS was measured on, read from its source's text; None where it names none."""
    for pattern, name in GPU_NAMES.items():
        found = re.search(pattern, source, flags=re.IGNORECASE)
        if found:
            return name or found.group(0)
    return SEED_TABLE_GPU if SEED_TABLE.search(source) else None


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
