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
from bench.jobs import is_current
from bench.measure import roofline
from bench.records import latest_ok, write_text_atomic

MISSING = "—"
GROUP_TITLES = {"realtime": "Real-Time", "non-realtime": "Non Real-Time"}
FLOPS_NOTE = (
    "GFLOPs: fvcore count of the model's forward on one image, one fused multiply-add = one FLOP "
    "(the published figures' convention); norms, resizes, pooling and attention matmuls counted, "
    "element-wise activations not."
)


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


def _num(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:.{digits}f}"


def _pair(measured, published, digits: int, pct=None, points: bool = False) -> str:
    """``measured / published (Δ)`` with missing values shown as missing.

    Δ is ``pct`` (relative, in %) when given, or with ``points`` the difference in the value's own
    units (mIoU points).
    """
    if measured is None and published is None:
        return MISSING
    text = f"{_num(measured, digits)} / {_num(published, 1)}"
    if pct is not None:
        text += f" ({pct:+.1f}%)"
    elif points and measured is not None and published is not None:
        text += f" ({measured - published:+.{digits}f})"
    return text


def _mode_title(mode: str) -> str:
    """The mode and its precision, once: "graph fp16", "graph-fp32" (not "graph-fp32 fp32")."""
    precision = proto.MODES[mode]["precision"]
    return mode if precision in mode else f"{mode} {precision}"


def _graph_layout(protocol: str) -> str:
    """What mode ``graph`` used for its memory layout under ``protocol``."""
    if protocol == "1":
        return "channels_last"
    return "the faster of channels_last and NCHW (timed both; speed.md says which)"


def to_markdown(frame: pd.DataFrame, *, device: str, provenance: dict | None = None, commits: int = 1) -> str:
    """The Markdown table with its footnotes (protocol, device, FLOP convention, spec notes).

    ``provenance`` is the newest record's; ``commits`` how many segbench commits the records were taken at.
    """
    speed = "CPU" if device == "cpu" else "GPU"
    protocol = frame.attrs.get("protocol", proto.PROTOCOL_VERSION)
    modes = measured_modes(frame, device)
    extras = [
        (column, title, digits)
        for column, title, digits in (
            ("images_s_best", "img/s best batch", 1),
            ("energy_graph_j", "J/frame graph", 3),
            ("peak_graph_pct", "% peak graph", 1),
        )
        if _has(frame, column)
    ]
    headers = ["", "Method", "Encoder", "Params M (ours / pub.)"]
    for ds in proto.DATASETS.values():
        headers += [f"{ds.title} GFLOPs (ours / pub.)"]
        headers += [f"{ds.title} FPS {speed} {_mode_title(m)}" for m in modes]
        headers += [f"{ds.title} {title}" for _, title, _ in extras]
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
            cells += [gflops] + [_fps_cell(row, ds, m) for m in modes]
            cells += [_num(_n(row[f"{ds}_{column}"]), digits) for column, _, digits in extras]
            cells += [
                _num(_n(row[f"{ds}_fps_published"]), 1),
                _pair(_n(row[f"{ds}_miou"]), _n(row[f"{ds}_miou_published"]), 2, points=True),
            ]
        lines.append(cells)
        spec = _spec(row["arch"])
        published_notes = (pub.note for pub in (spec.published.values() if spec else []) if pub.note)
        notes += [f"{row['method']} {row['encoder']}: {note}" for note in dict.fromkeys(published_notes)]
        if _n(row.get("outdated")):
            notes.append(
                f"{row['method']} {row['encoder']}: measured at another input size or class count than its spec "
                f"gives now ({row['outdated']}); `bench run` measures these again"
            )
        notes += _dynamic_notes(row)
        notes += _step_notes(row, modes)
    table = pd.DataFrame(lines, columns=headers).to_markdown(index=False, disable_numparse=True)
    footer = [
        "",
        f"Protocol v{protocol}: batch 1; ADE20K 512x512 (150 classes), "
        "Cityscapes 1024x2048 (19 classes), or the published size where marked @HxW. "
        "Speed: forward + bilinear resize of the logits + argmax, "
        f"median of timed steps; eager = fp32, graph = fp16 autocast + {_graph_layout(protocol)} + CUDA-graph replay; "
        f"† = repeats spread more than {100 * proto.MAX_SPREAD:.0f}%, ‡ = the GPU clock throttled. "
        "img/s best batch: the batch sweep's best throughput (speed.md lists every mode, the roofline and the "
        "launch overhead).",
        f"Measured on: {_device_line(device, provenance, commits)}. Published FPS come from their sources' GPUs "
        "(reported.csv names each: mostly a V100; ICNet a Titan X Maxwell) and are not comparable with ours.",
        FLOPS_NOTE,
        "Params: inference-time parameters (training-only auxiliary heads excluded).",
    ]
    footer += [f"- {n}" for n in dict.fromkeys(notes)]
    return table + "\n" + "\n".join(footer) + "\n"


def _dynamic_notes(row) -> list[str]:
    """A footnote per dataset where the model's FLOPs depend on its input."""
    notes = []
    for ds, dsp in proto.DATASETS.items():
        mean = _n(row.get(f"{ds}_gflops_dynamic_mean"))
        if mean is None:
            continue
        notes.append(
            f"{row['method']} {row['encoder']}: FLOPs depend on the input; the {dsp.title} count is the maximum "
            f"(every route computed); per image over {int(row[f'{ds}_gflops_dynamic_inputs'])} random benchmark "
            f"inputs: mean {mean:.1f}, min {row[f'{ds}_gflops_dynamic_min']:.1f}, "
            f"max {row[f'{ds}_gflops_dynamic_max']:.1f} GFLOPs"
        )
    return notes


def _step_notes(row, modes: list[str]) -> list[str]:
    """A footnote with the own cost of a model's last step (`ArchSpec.step_of`), per dataset."""
    if not _n(row.get("step")):
        return []
    base = _spec(_spec(row["arch"]).step_of[0])
    parts = []
    for ds, dsp in proto.DATASETS.items():
        costs = [f"{row[f'{ds}_step_gflops']:.1f} GFLOPs"] if _n(row.get(f"{ds}_step_gflops")) is not None else []
        costs += [
            f"{row[f'{ds}_step_{m}_ms']:.2f} ms {m}" for m in modes if _n(row.get(f"{ds}_step_{m}_ms")) is not None
        ]
        if costs:
            parts.append(f"{dsp.title} ({row[f'{ds}_input'] or 'x'.join(map(str, dsp.input_size))}) {', '.join(costs)}")
    if not parts:
        return []
    return [
        f"{row['method']} {row['encoder']}: the {row['step']} step alone (this row minus {base.family}'s, same device "
        f"and mode): {'; '.join(parts)}"
    ]


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


def _flags(row, ds: str, mode: str) -> str:
    """† for a measurement whose repeats spread too far, ‡ for one during which the GPU throttled."""
    return "".join(f for f, key in (("†", "unstable"), ("‡", "throttled")) if _n(row.get(f"{ds}_{key}_{mode}")))


def _layout_tag(row, ds: str, mode: str) -> str:
    """ " NHWC" or " NCHW" after a latency whose mode chose its layout by timing both ("auto")."""
    chosen = _n(row.get(f"{ds}_channels_last_{mode}"))
    if chosen is None:
        return ""
    return " NHWC" if chosen else " NCHW"


def _fps_cell(row, ds: str, mode: str) -> str:
    return _num(_n(row[f"{ds}_fps_{mode}"]), 1) + _flags(row, ds, mode)


def to_speed_markdown(
    frame: pd.DataFrame, *, device: str, provenance: dict | None, peaks: dict | None, commits: int = 1
) -> str:
    """Every measured speed mode per dataset: latency, spread, achieved TFLOP/s, % of peak, launch overhead."""
    modes = measured_modes(frame, device)
    parts = []
    for ds, dsp in proto.DATASETS.items():
        if not any(f"{ds}_latency_{m}_ms" in frame and frame[f"{ds}_latency_{m}_ms"].notna().any() for m in modes):
            continue
        headers = ["Method", "Encoder"]
        for m in modes:
            headers += [f"{m} ms (spread %)", f"{m} TFLOP/s (% peak)"]
        headers += ["launch overhead %", "bound", "best batch: img/s", "compile s"]
        rows = []
        for _, row in frame.iterrows():
            cells = [row["method"], row["encoder"]]
            for m in modes:
                latency = _n(row[f"{ds}_latency_{m}_ms"])
                spread = _n(row[f"{ds}_spread_{m}_pct"])
                cells.append(
                    MISSING
                    if latency is None
                    else f"{latency:.2f} ({_num(spread, 1)}){_flags(row, ds, m)}{_layout_tag(row, ds, m)}"
                )
                tflops, pct = _n(row[f"{ds}_tflops_{m}"]), _n(row[f"{ds}_peak_{m}_pct"])
                cells.append(MISSING if tflops is None else f"{tflops:.1f} ({_num(pct, 1)})")
            batch, images = _n(row[f"{ds}_best_batch"]), _n(row[f"{ds}_images_s_best"])
            cells += [
                _num(_n(row[f"{ds}_launch_overhead_pct"]), 0),
                _n(row[f"{ds}_bound"]) or MISSING,
                MISSING if images is None else f"{int(batch)}: {images:.1f}",
                _num(_n(row[f"{ds}_compile_s"]), 0),
            ]
            rows.append(cells)
        size = "x".join(map(str, dsp.input_size))
        parts.append(f"### {dsp.title} ({size} unless the table says otherwise)\n\n")
        parts.append(pd.DataFrame(rows, columns=headers).to_markdown(index=False, disable_numparse=True) + "\n\n")
    if not parts:
        return ""
    ceilings = ", ".join(f"{k} {v:.1f}" for k, v in (peaks or {}).items()) or "not measured"
    probed = any(_n(v) is not None for c in frame.columns if "_channels_last_" in c for v in frame[c])
    layouts = "NHWC / NCHW: the memory layout a mode that times both kept (the faster). " if probed else ""
    footer = [
        "",
        f"Measured on: {_device_line(device, provenance, commits)}. "
        f"Device ceilings (matmul TFLOP/s, copy TB/s): {ceilings}.",
        "TFLOP/s: 2 x the model's fvcore multiply-adds per image / median latency (the step's resize and argmax "
        "add to the time, not to the count; a -fused mode counts what its inference form executes); % peak: "
        "against the matmul ceiling of the mode's precision (fp32: convolutions against TF32 when cuDNN may use it, "
        "matmuls and attention against fp32 unless TF32 matmuls are on, weighted by the FLOP count's split). "
        "Launch overhead: 1 - graph-fp32 / eager latency, the share of the eager step that CUDA-graph replay "
        f"removes; bound = launch when it is 50% or more. {layouts}"
        f"† = repeats spread more than {100 * proto.MAX_SPREAD:.0f}%, ‡ = the GPU clock throttled.",
    ]
    return "".join(parts) + "\n".join(footer[1:]) + "\n"


def _n(value):
    """pandas NaN/None -> None."""
    if value is None:
        return None
    try:
        return None if math.isnan(value) else value
    except TypeError:
        return value


def _device_line(device: str, prov: dict | None, commits: int = 1) -> str:
    """Where the newest record was measured; ``commits``: how many segbench commits all the records name."""
    prov = prov or {}
    if device == "cpu":
        what = f"CPU ({prov.get('cpu', 'unknown')}, {prov.get('torch_threads', '?')} threads) — not a GPU number"
    else:
        what = f"{prov.get('gpu_name', 'GPU')}, driver {prov.get('driver', '?')}, CUDA {prov.get('cuda', '?')}"
    commit = prov.get("git_commit")
    line = f"{what}; torch {prov.get('torch', '?')}" + (f"; segbench {commit[:10]}" if commit else "")
    if commit and commits > 1:
        line += f" (the newest record's; the records span {commits} commits, each record names its own)"
    return line


def write_table(
    frame: pd.DataFrame,
    folder: Path,
    *,
    device: str,
    provenance: dict | None,
    peaks: dict | None = None,
    commits: int = 1,
) -> list[Path]:
    """table.md, table.csv and (where speed was measured on a GPU) speed.md of one device folder; for
    another protocol version than the current one, table-v<N>.md and so on (`bench.protocol.file_suffix`)."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = proto.file_suffix(frame.attrs.get("protocol", proto.PROTOCOL_VERSION))
    md, csv = folder / f"table{suffix}.md", folder / f"table{suffix}.csv"
    write_text_atomic(md, to_markdown(frame, device=device, provenance=provenance, commits=commits))
    write_text_atomic(csv, frame.to_csv(index=False, float_format="%.6g"))
    paths = [md, csv]
    speed = (
        to_speed_markdown(frame, device=device, provenance=provenance, peaks=peaks, commits=commits)
        if device != "cpu"
        else ""
    )
    if speed:
        write_text_atomic(folder / f"speed{suffix}.md", speed)
        paths.append(folder / f"speed{suffix}.md")
    return paths


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
