"""Comparison tables from records (pandas + tabulate), shaped like the seed's table.

Rows are grouped Real-Time / Non Real-Time; columns are Method, Encoder, Params, then per dataset
GFLOPs, FPS and mIoU. A measured value stands beside the published one with the delta; a value
that was not measured is shown as missing, never filled in.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

import archs
from bench import protocol as proto
from bench.compare import delta
from bench.records import OK, record_key

MISSING = "—"
GROUP_TITLES = {"realtime": "Real-Time", "non-realtime": "Non Real-Time"}
FLOPS_NOTE = (
    "GFLOPs: fvcore count of the model's forward on one image, one fused multiply-add = one FLOP "
    "(the published figures' convention); norms, resizes, pooling and attention matmuls counted, "
    "element-wise activations not."
)


def latest_ok(records: list[dict], protocol: str = proto.PROTOCOL_VERSION) -> dict[tuple, dict]:
    """The newest ``ok`` record per measurement key, of one protocol version only."""
    latest: dict[tuple, dict] = {}
    for record in records:
        if record.get("status") == OK and record.get("protocol") == protocol:
            latest[record_key(record)] = record  # file order is append order: the last one wins
    return latest


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


def build_frame(records: list[dict], protocol: str = proto.PROTOCOL_VERSION) -> pd.DataFrame:
    """One row per architecture with measured and published columns (the CSV's content)."""
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
        for ds in proto.DATASETS:
            pub = published.get(ds)
            gflops = _value(values, name, ds, "flops", None, "gflops")
            size = _value(values, name, ds, "flops", None, "input_size")
            row[f"{ds}_input"] = "x".join(map(str, size)) if size else None
            row[f"{ds}_gflops"] = gflops
            row[f"{ds}_gflops_published"] = pub.gflops if pub else None
            row[f"{ds}_gflops_delta_pct"] = _pct(gflops, pub.gflops if pub else None)
            for mode in proto.MODES:
                row[f"{ds}_fps_{mode}"] = _value(values, name, ds, "latency", mode, "fps")
                row[f"{ds}_latency_{mode}_ms"] = _value(values, name, ds, "latency", mode, "median_ms")
                row[f"{ds}_energy_{mode}_j"] = _value(values, name, ds, "latency", mode, "energy_j_per_frame")
            row[f"{ds}_fps_published"] = pub.fps if pub else None
            row[f"{ds}_miou"] = _value(values, name, ds, "miou", "eager", "mIoU")
            row[f"{ds}_miou_published"] = pub.miou if pub else None
        rows.append(row)
    return pd.DataFrame(rows)


def _value(values: dict, arch: str, dataset: str, kind: str, mode: str | None, field: str):
    record = values.get((arch, dataset, kind, mode))
    if record is None or not record.get("value"):
        return None
    return record["value"].get(field)


def _pct(measured, published) -> float | None:
    if measured is None or published is None or published == 0:
        return None
    return 100.0 * delta(measured, published)


def _num(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:.{digits}f}"


def _pair(measured, published, digits: int, pct=None) -> str:
    """``measured / published (Δ)`` with missing values shown as missing."""
    if measured is None and published is None:
        return MISSING
    text = f"{_num(measured, digits)} / {_num(published, 1)}"
    if pct is not None:
        text += f" ({pct:+.1f}%)"
    return text


def to_markdown(frame: pd.DataFrame, *, device: str, provenance: dict | None = None) -> str:
    """The Markdown table with its footnotes (protocol, device, FLOP convention, spec notes)."""
    speed = "CPU" if device == "cpu" else "GPU"
    modes = [m for m in proto.MODES if device != "cpu" or not proto.MODES[m]["cuda_graph"]]
    headers = ["", "Method", "Encoder", "Params M (ours / pub.)"]
    for ds in proto.DATASETS.values():
        headers += [f"{ds.title} GFLOPs (ours / pub.)"]
        headers += [f"{ds.title} FPS {speed} {m} {proto.MODES[m]['precision']}" for m in modes]
        headers += [f"{ds.title} FPS pub.", f"{ds.title} mIoU (ours / pub.)"]
    lines, notes, previous_group = [], [], None
    for _, row in frame.iterrows():
        cells = [row["group"] if row["group"] != previous_group else "", row["method"], row["encoder"]]
        previous_group = row["group"]
        cells.append(_pair(_n(row["params_m"]), _n(row["params_m_published"]), 2, _n(row["params_delta_pct"])))
        for ds in proto.DATASETS:
            gflops = _pair(
                _n(row[f"{ds}_gflops"]), _n(row[f"{ds}_gflops_published"]), 1, _n(row[f"{ds}_gflops_delta_pct"])
            )
            size = _n(row[f"{ds}_input"])
            if size and tuple(map(int, size.split("x"))) != proto.DATASETS[ds].input_size:
                gflops += f" @{size}"
            cells += [gflops] + [_num(_n(row[f"{ds}_fps_{m}"]), 1) for m in modes]
            cells += [
                _num(_n(row[f"{ds}_fps_published"]), 1),
                _pair(_n(row[f"{ds}_miou"]), _n(row[f"{ds}_miou_published"]), 2),
            ]
        lines.append(cells)
        spec = _spec(row["arch"])
        published_notes = (pub.note for pub in (spec.published.values() if spec else []) if pub.note)
        notes += [f"{row['method']} {row['encoder']}: {note}" for note in dict.fromkeys(published_notes)]
    table = pd.DataFrame(lines, columns=headers).to_markdown(index=False)
    footer = [
        "",
        f"Protocol v{proto.PROTOCOL_VERSION}: batch 1; ADE20K 512x512 (150 classes), "
        "Cityscapes 1024x2048 (19 classes), or the published size where marked @HxW. "
        "Speed: forward + bilinear resize of the logits + argmax, "
        "median of timed steps; eager = fp32, graph = fp16 autocast + channels_last + CUDA-graph replay.",
        f"Measured on: {_device_line(device, provenance)}. Published FPS come from the papers' own GPUs "
        "(SegFormer: V100) and are not comparable with ours.",
        FLOPS_NOTE,
        "Params: inference-time parameters (training-only auxiliary heads excluded).",
    ]
    footer += [f"- {n}" for n in dict.fromkeys(notes)]
    return table + "\n" + "\n".join(footer) + "\n"


def _n(value):
    """pandas NaN/None -> None."""
    if value is None:
        return None
    try:
        return None if math.isnan(value) else value
    except TypeError:
        return value


def _device_line(device: str, prov: dict | None) -> str:
    prov = prov or {}
    if device == "cpu":
        what = f"CPU ({prov.get('cpu', 'unknown')}, {prov.get('torch_threads', '?')} threads) — not a GPU number"
    else:
        what = f"{prov.get('gpu_name', 'GPU')}, driver {prov.get('driver', '?')}, CUDA {prov.get('cuda', '?')}"
    commit = prov.get("git_commit")
    return f"{what}; torch {prov.get('torch', '?')}" + (f"; segbench {commit[:10]}" if commit else "")


def write_table(frame: pd.DataFrame, folder: Path, *, device: str, provenance: dict | None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    md, csv = folder / "table.md", folder / "table.csv"
    _atomic_write(md, to_markdown(frame, device=device, provenance=provenance))
    _atomic_write(csv, frame.to_csv(index=False, float_format="%.6g"))
    return [md, csv]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


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
                }
            )
    return pd.DataFrame(rows)
