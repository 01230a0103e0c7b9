"""table.md of one device folder, from the comparison frame (`bench.report.table`).

One section per dataset with the columns a reader compares: method, encoder, params, GFLOPs, one
speed column per mode (FPS on a GPU, latency on a CPU, three significant figures), the published FPS
with the GPU it was measured on, and mIoU. Each footnote is printed once, numbered, and the legend
explains only the marks the tables show. Every other measurement (p90, spread, energy, roofline,
batch sweep) is in table.csv, and on a GPU the per-mode details are in speed.md (`bench.report.speed_table`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pandas as pd

from bench import protocol as proto
from bench.report.table import measured_modes, spec_of
from bench.report.text import (
    FLOPS_NOTE,
    MISSING,
    THROTTLED,
    THROTTLED_NOTE,
    UNSTABLE,
    Footnotes,
    MeasuredOn,
    device_line,
    device_name,
    known,
    latency_text,
    mode_description,
    pair_text,
    significant,
    speed_marks,
)

# what else a table can show that its legend then explains
AT_PUBLISHED_SIZE, ON_ANOTHER_GPU = "@HxW", "on another GPU"


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

    def speed_cell(self, row: Any, mode: str) -> str:
        flags = speed_marks(row, self.ds, mode)
        self.marks.update(flags)
        if self.device == "cpu":
            ms = known(row[f"{self.ds}_latency_{mode}_ms"])
            value = None if ms is None else ms / 1000 if self.units[mode] == "s" else ms
        else:
            value = known(row[f"{self.ds}_fps_{mode}"])
        return (MISSING if value is None else significant(value)) + flags

    def published_fps_cell(self, row: Any) -> str:
        fps = known(row[f"{self.ds}_fps_published"])
        if fps is None:
            return MISSING
        gpu = known(row.get(f"{self.ds}_fps_published_gpu"))
        if gpu == self.published_gpu:
            return f"{fps:.1f}"
        self.marks.add(ON_ANOTHER_GPU)
        return f"{fps:.1f} ({gpu or 'GPU not named'})"

    def gflops_cell(self, row: Any) -> str:
        ds = self.ds
        text = pair_text(row[f"{ds}_gflops"], row[f"{ds}_gflops_published"], 1, row[f"{ds}_gflops_delta_pct"])
        size = known(row[f"{ds}_input"])
        if size and tuple(map(int, size.split("x"))) != proto.DATASETS[ds].input_size:
            self.marks.add(AT_PUBLISHED_SIZE)
            text += f" @{size}"
        return text

    def row_notes(self, row: Any) -> list[int]:
        """The footnotes of one row in this dataset's table, cited by number."""
        spec, ds, title = spec_of(row["arch"]), self.ds, proto.DATASETS[self.ds].title
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
        lines: list[list[str]] = []
        previous_group = None
        for _, row in self.frame.iterrows():
            cells = [row["group"] if row["group"] != previous_group else "", row["method"], row["encoder"]]
            previous_group = row["group"]
            cells.append(pair_text(row["params_m"], row["params_m_published"], 2, row["params_delta_pct"]))
            cells.append(self.gflops_cell(row))
            cells += [self.speed_cell(row, m) for m in self.modes]
            cells.append(self.published_fps_cell(row))
            cells.append(pair_text(row[f"{self.ds}_miou"], row[f"{self.ds}_miou_published"], 2, points=True))
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


def _dynamic_notes(row: Any, ds: str) -> list[str]:
    """The spread of a model's FLOPs where they depend on the input."""
    mean = known(row.get(f"{ds}_gflops_dynamic_mean"))
    if mean is None:
        return []
    return [
        f"FLOPs depend on the input; the count is the maximum (every route computed); per image over "
        f"{int(row[f'{ds}_gflops_dynamic_inputs'])} random benchmark inputs: mean {mean:.1f}, "
        f"min {row[f'{ds}_gflops_dynamic_min']:.1f}, max {row[f'{ds}_gflops_dynamic_max']:.1f} GFLOPs"
    ]


def _step_notes(row: Any, ds: str, modes: list[str]) -> list[str]:
    """The own cost of a model's last step (`ArchSpec.step_of`)."""
    spec = spec_of(row["arch"])
    base = spec_of(spec.step_of[0]) if known(row.get("step")) and spec and spec.step_of else None
    if base is None:
        return []
    gflops = known(row.get(f"{ds}_step_gflops"))
    costs = [f"{gflops:.1f} GFLOPs"] if gflops is not None else []
    latencies = {m: known(row.get(f"{ds}_step_{m}_ms")) for m in modes}
    costs += [f"{latency_text(ms)} {m}" for m, ms in latencies.items() if ms is not None]
    if not costs:
        return []
    return [f"the {row['step']} step alone (this row minus {base.family}'s, same device and mode): {', '.join(costs)}"]


def _legend(frame: pd.DataFrame, sections: list[_Section], modes: list[str], device: str) -> list[str]:
    """What the tables' protocol, modes and marks mean: only the marks they show."""
    protocol = frame.attrs.get("protocol", proto.PROTOCOL_VERSION)
    marks = set().union(*(section.marks for section in sections))
    if device == "cpu":
        speed = "latency (median of the timed steps) of forward + bilinear resize of the logits + argmax"
    else:
        speed = "FPS = 1000 / median latency of forward + bilinear resize of the logits + argmax"
    legend = [
        f"Protocol v{protocol}: batch 1 at the dataset's input size; speed: {speed}; "
        + "; ".join(mode_description(m, protocol) for m in modes)
        + ". table.csv has every measurement (p90, spread, energy, batch sweep, % of peak)"
        + ("; speed.md the per-mode details." if device != "cpu" else "."),
        "Δ in parentheses: relative for params and GFLOPs (%), in mIoU points for mIoU.",
    ]
    unmeasured = [m for m in modes if not _measured(frame, m)]
    if unmeasured:
        legend.append(f"{', '.join(unmeasured)}: no measurement of protocol v{protocol} on this device.")
    if AT_PUBLISHED_SIZE in marks:
        legend.append("@HxW: counted and timed at the input size the published configuration uses.")
    if UNSTABLE in marks:
        spread = f"{100 * proto.MAX_SPREAD:.0f}%"
        legend.append(f"{UNSTABLE} = the timed repeats spread more than {spread} (table.csv: spread).")
    if THROTTLED in marks:
        legend.append(THROTTLED_NOTE)
    gpus = sorted({section.published_gpu for section in sections if section.published_gpu})
    where = f"on a {gpus[0]}" if len(gpus) == 1 else "on the GPU its header names"
    other = "; a cell that names a GPU was measured on that one" if ON_ANOTHER_GPU in marks else ""
    legend.append(
        f"pub. FPS: measured {where}{other} (reported.csv gives each source); not comparable with speeds measured here."
    )
    return [*legend, FLOPS_NOTE, "Params: inference-time parameters (training-only auxiliary heads excluded)."]


def to_markdown(frame: pd.DataFrame, where: MeasuredOn) -> str:
    """table.md: a section per dataset, then the protocol, the legend of the marks shown and the footnotes."""
    protocol = frame.attrs.get("protocol", proto.PROTOCOL_VERSION)
    modes = measured_modes(frame, where.device)
    notes = Footnotes()
    sections = [_Section(frame, ds, modes, where.device, notes) for ds in proto.DATASETS]
    tables = [section.markdown() for section in sections]
    head = [
        f"# Results on {device_name(where.device, where.provenance)}, protocol v{protocol}",
        "",
        f"Measured on: {device_line(where)}. Measured figures stand beside the "
        f"published ones (ours / pub.); {MISSING} = not measured here, or not published. Legend and notes below "
        "the tables.",
        "",
        "",
    ]
    legend = _legend(frame, sections, modes, where.device)
    text = "\n".join(head) + "\n".join(tables) + "\nLegend:\n\n" + "\n".join(f"- {line}" for line in legend) + "\n"
    if notes.numbers:
        text += "\nNotes (cited by number in the tables' Notes column):\n\n" + "\n".join(notes.lines()) + "\n"
    return text
