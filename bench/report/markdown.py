"""table.md, speed.md and table.csv of one device folder, from the comparison frame (`bench.report.table`).

table.md has one section per dataset with the columns a reader compares: method, encoder, params,
GFLOPs, one speed column per mode (FPS on a GPU, latency on a CPU, three significant figures), the
published FPS with the GPU it was measured on, and mIoU. Each footnote is printed once, numbered, and
the legend explains only the marks the tables show. Every other measurement (p90, spread, energy,
roofline, batch sweep) is in table.csv, and on a GPU the per-mode details are in speed.md.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pandas as pd

from bench import protocol as proto
from bench.records import write_text_atomic
from bench.report.table import FLOPS_NOTE, MISSING, _spec, measured_modes

SIGNIFICANT = 3
UNSTABLE, THROTTLED = "†", "‡"
# what else a table can show that its legend then explains
AT_PUBLISHED_SIZE, ON_ANOTHER_GPU = "@HxW", "on another GPU"


def known(value):
    """``value``, or None where it is missing (None, or NaN in a pandas frame)."""
    if value is None:
        return None
    try:
        return None if math.isnan(value) else value
    except TypeError:
        return value


def significant(value: float, digits: int = SIGNIFICANT) -> str:
    """``value`` to ``digits`` significant figures, never in exponent form: 1234.5 -> "1230", 0.01234 -> "0.0123"."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    magnitude = math.floor(math.log10(abs(value)))
    rounded = round(value, digits - 1 - magnitude)
    if rounded and math.floor(math.log10(abs(rounded))) > magnitude:  # 999.6 -> 1000: one digit more to the left
        magnitude += 1
    return f"{rounded:.{max(digits - 1 - magnitude, 0)}f}"


def latency_text(ms: float) -> str:
    """A latency with its unit, three significant figures: "512 ms", "1.24 s"."""
    return f"{significant(ms / 1000)} s" if ms >= 1000 else f"{significant(ms)} ms"


def _num(value, digits: int) -> str:
    value = known(value)
    return MISSING if value is None else f"{value:.{digits}f}"


def _pair(measured, published, digits: int, pct=None, points: bool = False) -> str:
    """``measured / published (Δ)``: Δ relative (``pct``, in %), or with ``points`` in the value's own units."""
    measured, published, pct = known(measured), known(published), known(pct)
    if measured is None and published is None:
        return MISSING
    text = f"{_num(measured, digits)} / {_num(published, 1)}"
    if pct is not None:
        text += f" ({pct:+.1f}%)"
    elif points and measured is not None and published is not None:
        text += f" ({measured - published:+.{digits}f})"
    return text


class Footnotes:
    """Numbered footnotes, each distinct text once; rows cite them by number."""

    def __init__(self) -> None:
        self.numbers: dict[str, int] = {}

    def cite(self, text: str) -> int:
        return self.numbers.setdefault(text, len(self.numbers) + 1)

    def lines(self) -> list[str]:
        return [f"{number}. {text}" for text, number in self.numbers.items()]


def _flags(row, ds: str, mode: str) -> str:
    """† for a measurement whose repeats spread too far, ‡ for one during which the GPU throttled."""
    marks = ((UNSTABLE, "unstable"), (THROTTLED, "throttled"))
    return "".join(mark for mark, key in marks if known(row.get(f"{ds}_{key}_{mode}")))


def _layout_tag(row, ds: str, mode: str) -> str:
    """ " NHWC" or " NCHW" after a latency whose mode chose its layout by timing both ("auto")."""
    chosen = known(row.get(f"{ds}_channels_last_{mode}"))
    if chosen is None:
        return ""
    return " NHWC" if chosen else " NCHW"


def _layout(protocol: str) -> str:
    """What an "auto" layout mode used under ``protocol``."""
    if protocol == "1":
        return "channels_last"
    return "the faster of channels_last and NCHW (timed both; speed.md says which)"


def mode_description(mode: str, protocol: str = proto.PROTOCOL_VERSION) -> str:
    """``graph = fp16 autocast + ... + CUDA-graph replay``: what a speed mode runs, from its settings."""
    settings = proto.MODES[mode]
    parts = [settings["precision"] if settings["precision"] == "fp32" else f"{settings['precision']} autocast"]
    if settings["channels_last"] == "auto":
        parts.append(_layout(protocol))
    elif settings["channels_last"]:
        parts.append("channels_last")
    if settings["fused"]:
        parts.append("the model's inference form (BatchNorm folded into its convolution, its exact rewrites)")
    if settings["compile"]:
        parts.append(f"torch.compile ({proto.COMPILE_MODE})")
    if settings["cuda_graph"]:
        parts.append("CUDA-graph replay")
    return f"{mode} = {' + '.join(parts)}"


def _device_line(device: str, prov: dict | None, commits: int = 1, machines: tuple[str, ...] = ()) -> str:
    """Where the newest record was measured; ``commits``: how many segbench commits all the records name;
    ``machines``: the machines they were measured on (`bench.records.machine_label`)."""
    prov = prov or {}
    commit = prov.get("git_commit")
    line = f"{device_name(device, prov)}"
    if device == "cpu":
        line += " — not a GPU number"
    else:
        line += f", driver {prov.get('driver', '?')}, CUDA {prov.get('cuda', '?')}"
    line += f"; torch {prov.get('torch', '?')}" + (f"; segbench {commit[:10]}" if commit else "")
    if commit and commits > 1:
        line += f" (the newest record's; the records span {commits} commits, each record names its own)"
    if len(machines) > 1:
        line += (
            f"; measured on {len(machines)} machines of this kind ({', '.join(machines)}; "
            "table.csv's `machines` column names each row's)"
        )
    return line


def device_name(device: str, prov: dict | None) -> str:
    """ "NVIDIA H200" or "CPU (AMD EPYC, 2 threads)": the measuring device as titles name it."""
    prov = prov or {}
    if device == "cpu":
        return f"CPU ({prov.get('cpu', 'unknown')}, {prov.get('torch_threads', '?')} threads)"
    return prov.get("gpu_name") or "GPU"


class _Section:
    """One dataset's table: its rows, the footnotes they cite and the marks they show."""

    def __init__(self, frame: pd.DataFrame, ds: str, modes: list[str], device: str, notes: Footnotes) -> None:
        self.frame, self.ds, self.modes, self.device, self.notes = frame, ds, modes, device, notes
        self.marks: set[str] = set()
        gpus = Counter(g for g in frame.get(f"{ds}_fps_published_gpu", pd.Series(dtype=object)) if known(g))
        self.published_gpu = gpus.most_common(1)[0][0] if gpus else None
        self.units = {m: self._unit(m) for m in modes}

    def _unit(self, mode: str) -> str:
        """A CPU column's unit: seconds where any of its latencies reaches a second, else milliseconds."""
        latencies = self.frame.get(f"{self.ds}_latency_{mode}_ms", pd.Series(dtype=float))
        return "s" if self.device == "cpu" and (latencies >= 1000).any() else "ms"

    def headers(self) -> list[str]:
        speed = [f"{m} latency ({self.units[m]})" if self.device == "cpu" else f"{m} FPS" for m in self.modes]
        pub_fps = f"pub. FPS ({self.published_gpu})" if self.published_gpu else "pub. FPS"
        return ["", "Method", "Encoder", "Params M (ours / pub.)", "GFLOPs (ours / pub.)", *speed, pub_fps]

    def speed_cell(self, row, mode: str) -> str:
        flags = _flags(row, self.ds, mode)
        self.marks.update(flags)
        if self.device == "cpu":
            ms = known(row[f"{self.ds}_latency_{mode}_ms"])
            value = None if ms is None else ms / 1000 if self.units[mode] == "s" else ms
        else:
            value = known(row[f"{self.ds}_fps_{mode}"])
        return (MISSING if value is None else significant(value)) + flags

    def published_fps_cell(self, row) -> str:
        fps = known(row[f"{self.ds}_fps_published"])
        if fps is None:
            return MISSING
        gpu = known(row.get(f"{self.ds}_fps_published_gpu"))
        if gpu == self.published_gpu:
            return f"{fps:.1f}"
        self.marks.add(ON_ANOTHER_GPU)
        return f"{fps:.1f} ({gpu or 'GPU not named'})"

    def gflops_cell(self, row) -> str:
        ds = self.ds
        text = _pair(row[f"{ds}_gflops"], row[f"{ds}_gflops_published"], 1, row[f"{ds}_gflops_delta_pct"])
        size = known(row[f"{ds}_input"])
        if size and tuple(map(int, size.split("x"))) != proto.DATASETS[ds].input_size:
            self.marks.add(AT_PUBLISHED_SIZE)
            text += f" @{size}"
        return text

    def row_notes(self, row) -> list[int]:
        """The footnotes of one row in this dataset's table, cited by number."""
        spec, ds, title = _spec(row["arch"]), self.ds, proto.DATASETS[self.ds].title
        published = spec.published if spec else {}
        # the notes of this dataset's published figures, and of those its published params come from
        shown = [published.get(ds)]
        if shown[0] is None or shown[0].params_m is None:
            shown.append(next((p for p in published.values() if p.params_m is not None), None))
        texts = [p.note for p in shown if p is not None and p.note]
        outdated = [part for part in (known(row.get("outdated")) or "").split("; ") if part.startswith(f"{title} ")]
        if outdated:
            texts.append(
                f"measured at another input size or class count than its spec gives now ({'; '.join(outdated)}); "
                "`bench run` measures these again"
            )
        texts += _dynamic_notes(row, ds) + _step_notes(row, ds, self.modes)
        return sorted({self.notes.cite(text) for text in texts})

    def markdown(self) -> str:
        lines, previous_group = [], None
        for _, row in self.frame.iterrows():
            cells = [row["group"] if row["group"] != previous_group else "", row["method"], row["encoder"]]
            previous_group = row["group"]
            cells.append(_pair(row["params_m"], row["params_m_published"], 2, row["params_delta_pct"]))
            cells.append(self.gflops_cell(row))
            cells += [self.speed_cell(row, m) for m in self.modes]
            cells.append(self.published_fps_cell(row))
            cells.append(_pair(row[f"{self.ds}_miou"], row[f"{self.ds}_miou_published"], 2, points=True))
            cells.append(", ".join(map(str, self.row_notes(row))))
            lines.append(cells)
        headers = [*self.headers(), "mIoU (ours / pub.)", "Notes"]
        table = pd.DataFrame(lines, columns=headers)
        if not table["Notes"].any():
            table = table.drop(columns="Notes")
        dsp = proto.DATASETS[self.ds]
        height, width = dsp.input_size
        heading = f"## {dsp.title} ({height}×{width}, {dsp.num_classes} classes)"
        return heading + "\n\n" + table.to_markdown(index=False, disable_numparse=True) + "\n"


def _measured(frame: pd.DataFrame, mode: str) -> bool:
    """Whether any dataset has a latency of ``mode``."""
    return any(frame.get(f"{ds}_latency_{mode}_ms", pd.Series(dtype=float)).notna().any() for ds in proto.DATASETS)


def _dynamic_notes(row, ds: str) -> list[str]:
    """The spread of a model's FLOPs where they depend on the input."""
    mean = known(row.get(f"{ds}_gflops_dynamic_mean"))
    if mean is None:
        return []
    return [
        f"FLOPs depend on the input; the count is the maximum (every route computed); per image over "
        f"{int(row[f'{ds}_gflops_dynamic_inputs'])} random benchmark inputs: mean {mean:.1f}, "
        f"min {row[f'{ds}_gflops_dynamic_min']:.1f}, max {row[f'{ds}_gflops_dynamic_max']:.1f} GFLOPs"
    ]


def _step_notes(row, ds: str, modes: list[str]) -> list[str]:
    """The own cost of a model's last step (`ArchSpec.step_of`)."""
    if not known(row.get("step")):
        return []
    base = _spec(_spec(row["arch"]).step_of[0])
    gflops = known(row.get(f"{ds}_step_gflops"))
    costs = [f"{gflops:.1f} GFLOPs"] if gflops is not None else []
    latencies = {m: known(row.get(f"{ds}_step_{m}_ms")) for m in modes}
    costs += [f"{latency_text(ms)} {m}" for m, ms in latencies.items() if ms is not None]
    if not costs:
        return []
    return [f"the {row['step']} step alone (this row minus {base.family}'s, same device and mode): {', '.join(costs)}"]


def to_markdown(
    frame: pd.DataFrame,
    *,
    device: str,
    provenance: dict | None = None,
    commits: int = 1,
    machines: tuple[str, ...] = (),
) -> str:
    """table.md: a section per dataset, then the protocol, the legend of the marks shown and the footnotes.

    ``provenance`` is the newest record's; ``commits`` how many segbench commits the records were taken at.
    """
    protocol = frame.attrs.get("protocol", proto.PROTOCOL_VERSION)
    modes = measured_modes(frame, device)
    notes = Footnotes()
    sections = [_Section(frame, ds, modes, device, notes) for ds in proto.DATASETS]
    tables = [section.markdown() for section in sections]
    marks = set().union(*(section.marks for section in sections))
    if device == "cpu":
        speed = "latency (median of the timed steps) of forward + bilinear resize of the logits + argmax"
    else:
        speed = "FPS = 1000 / median latency of forward + bilinear resize of the logits + argmax"
    head = [
        f"# Results on {device_name(device, provenance)}, protocol v{protocol}",
        "",
        f"Measured on: {_device_line(device, provenance, commits, machines)}. Measured figures stand beside the "
        f"published ones (ours / pub.); {MISSING} = not measured here, or not published. Legend and notes below "
        "the tables.",
        "",
        "",
    ]
    unmeasured = [m for m in modes if not _measured(frame, m)]
    legend = [
        f"Protocol v{protocol}: batch 1 at the dataset's input size; speed: {speed}; "
        + "; ".join(mode_description(m, protocol) for m in modes)
        + ". table.csv has every measurement (p90, spread, energy, batch sweep, % of peak)"
        + ("; speed.md the per-mode details." if device != "cpu" else "."),
        "Δ in parentheses: relative for params and GFLOPs (%), in mIoU points for mIoU.",
    ]
    if unmeasured:
        legend.append(f"{', '.join(unmeasured)}: no measurement of protocol v{protocol} on this device.")
    if AT_PUBLISHED_SIZE in marks:
        legend.append("@HxW: counted and timed at the input size the published configuration uses.")
    if UNSTABLE in marks:
        spread = f"{100 * proto.MAX_SPREAD:.0f}%"
        legend.append(f"{UNSTABLE} = the timed repeats spread more than {spread} (table.csv: spread).")
    if THROTTLED in marks:
        legend.append(f"{THROTTLED} = the GPU clock throttled during the measurement.")
    gpus = sorted({section.published_gpu for section in sections} - {None})
    where = f"on a {gpus[0]}" if len(gpus) == 1 else "on the GPU its header names"
    other = "; a cell that names a GPU was measured on that one" if ON_ANOTHER_GPU in marks else ""
    legend.append(
        f"pub. FPS: measured {where}{other} (reported.csv gives each source); not comparable with speeds measured here."
    )
    legend += [FLOPS_NOTE, "Params: inference-time parameters (training-only auxiliary heads excluded)."]
    text = "\n".join(head) + "\n".join(tables) + "\nLegend:\n\n" + "\n".join(f"- {line}" for line in legend) + "\n"
    if notes.numbers:
        text += "\nNotes (cited by number in the tables' Notes column):\n\n" + "\n".join(notes.lines()) + "\n"
    return text


def to_speed_markdown(
    frame: pd.DataFrame,
    *,
    device: str,
    provenance: dict | None,
    peaks: dict | None,
    commits: int = 1,
    machines: tuple[str, ...] = (),
) -> str:
    """Every measured speed mode per dataset: latency, spread, achieved TFLOP/s, % of peak, launch overhead."""
    modes = measured_modes(frame, device)
    parts, marks = [], set()
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
                latency = known(row[f"{ds}_latency_{m}_ms"])
                spread = known(row[f"{ds}_spread_{m}_pct"])
                flags = _flags(row, ds, m)
                marks.update(flags)
                cells.append(
                    MISSING
                    if latency is None
                    else f"{significant(latency)} ({_num(spread, 1)}){flags}{_layout_tag(row, ds, m)}"
                )
                tflops, pct = known(row[f"{ds}_tflops_{m}"]), known(row[f"{ds}_peak_{m}_pct"])
                cells.append(MISSING if tflops is None else f"{tflops:.1f} ({_num(pct, 1)})")
            batch, images = known(row[f"{ds}_best_batch"]), known(row[f"{ds}_images_s_best"])
            cells += [
                _num(row[f"{ds}_launch_overhead_pct"], 0),
                known(row[f"{ds}_bound"]) or MISSING,
                MISSING if images is None else f"{int(batch)}: {significant(images)}",
                _num(row[f"{ds}_compile_s"], 0),
            ]
            rows.append(cells)
        height, width = dsp.input_size
        parts.append(f"### {dsp.title} ({height}×{width} unless table.md says otherwise)\n\n")
        parts.append(pd.DataFrame(rows, columns=headers).to_markdown(index=False, disable_numparse=True) + "\n\n")
    if not parts:
        return ""
    ceilings = ", ".join(f"{k} {v:.1f}" for k, v in (peaks or {}).items()) or "not measured"
    probed = any(known(v) is not None for c in frame.columns if "_channels_last_" in c for v in frame[c])
    footer = [
        f"Measured on: {_device_line(device, provenance, commits, machines)}. "
        f"Device ceilings (matmul TFLOP/s, copy TB/s): {ceilings}.",
        "TFLOP/s: 2 x the model's fvcore multiply-adds per image / median latency (the step's resize and argmax "
        "add to the time, not to the count; a -fused mode counts what its inference form executes); % peak: "
        "against the matmul ceiling of the mode's precision (fp32: convolutions against TF32 when cuDNN may use it, "
        "matmuls and attention against fp32 unless TF32 matmuls are on, weighted by the FLOP count's split). "
        "Launch overhead: 1 - graph-fp32 / eager latency, the share of the eager step that CUDA-graph replay "
        "removes; bound = launch when it is 50% or more.",
    ]
    if probed:
        footer.append("NHWC / NCHW: the memory layout a mode that times both kept (the faster).")
    if UNSTABLE in marks:
        footer.append(f"{UNSTABLE} = the timed repeats spread more than {100 * proto.MAX_SPREAD:.0f}%.")
    if THROTTLED in marks:
        footer.append(f"{THROTTLED} = the GPU clock throttled during the measurement.")
    return "".join(parts) + "\n".join(footer) + "\n"


def write_table(
    frame: pd.DataFrame,
    folder: Path,
    *,
    device: str,
    provenance: dict | None,
    peaks: dict | None = None,
    commits: int = 1,
    machines: tuple[str, ...] = (),
) -> list[Path]:
    """table.md, table.csv and (where speed was measured on a GPU) speed.md of one device folder; for
    another protocol version than the current one, table-v<N>.md and so on (`bench.protocol.file_suffix`)."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = proto.file_suffix(frame.attrs.get("protocol", proto.PROTOCOL_VERSION))
    md, csv = folder / f"table{suffix}.md", folder / f"table{suffix}.csv"
    write_text_atomic(md, to_markdown(frame, device=device, provenance=provenance, commits=commits, machines=machines))
    write_text_atomic(csv, frame.to_csv(index=False, float_format="%.6g"))
    paths = [md, csv]
    speed = (
        to_speed_markdown(frame, device=device, provenance=provenance, peaks=peaks, commits=commits, machines=machines)
        if device != "cpu"
        else ""
    )
    if speed:
        write_text_atomic(folder / f"speed{suffix}.md", speed)
        paths.append(folder / f"speed{suffix}.md")
    return paths
