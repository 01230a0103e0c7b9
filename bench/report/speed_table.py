"""speed.md of one device folder: every measured speed mode per dataset, from the comparison frame.

Per mode its latency and spread, achieved TFLOP/s and % of the device's ceiling; per model the
launch overhead, whether it is launch-bound, the batch sweep's best throughput and the compile time.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from bench import protocol as proto
from bench.report.table import measured_modes
from bench.report.text import (
    MISSING,
    THROTTLED,
    THROTTLED_NOTE,
    UNSTABLE,
    MeasuredOn,
    device_line,
    known,
    layout_tag,
    number_text,
    significant,
    speed_marks,
)

FOOTNOTE = (
    "TFLOP/s: 2 x the model's fvcore multiply-adds per image / median latency (the step's resize and argmax "
    "add to the time, not to the count; a -fused mode counts what its inference form executes); % peak: "
    "against the matmul ceiling of the mode's precision (fp32: convolutions against TF32 when cuDNN may use it, "
    "matmuls and attention against fp32 unless TF32 matmuls are on, weighted by the FLOP count's split). "
    "Launch overhead: 1 - graph-fp32 / eager latency, the share of the eager step that CUDA-graph replay "
    "removes; bound = launch when it is 50% or more."
)


def _mode_cells(row: Any, ds: str, mode: str, marks: set[str]) -> list[str]:
    """A mode's latency (spread %) with its marks and layout, and its TFLOP/s (% of peak)."""
    latency, spread = known(row[f"{ds}_latency_{mode}_ms"]), known(row[f"{ds}_spread_{mode}_pct"])
    flags = speed_marks(row, ds, mode)
    marks.update(flags)
    tflops, pct = known(row[f"{ds}_tflops_{mode}"]), known(row[f"{ds}_peak_{mode}_pct"])
    return [
        MISSING
        if latency is None
        else f"{significant(latency)} ({number_text(spread, 1)}){flags}{layout_tag(row, ds, mode)}",
        MISSING if tflops is None else f"{tflops:.1f} ({number_text(pct, 1)})",
    ]


def _section(frame: pd.DataFrame, ds: str, modes: list[str], marks: set[str]) -> str:
    """One dataset's table: a row per model, two columns per mode, then the model's own columns."""
    headers = ["Method", "Encoder"]
    for m in modes:
        headers += [f"{m} ms (spread %)", f"{m} TFLOP/s (% peak)"]
    headers += ["launch overhead %", "bound", "best batch: img/s", "compile s"]
    rows = []
    for _, row in frame.iterrows():
        cells = [row["method"], row["encoder"]]
        for m in modes:
            cells += _mode_cells(row, ds, m, marks)
        batch, images = known(row[f"{ds}_best_batch"]), known(row[f"{ds}_images_s_best"])
        cells += [
            number_text(row[f"{ds}_launch_overhead_pct"], 0),
            known(row[f"{ds}_bound"]) or MISSING,
            MISSING if images is None else f"{int(batch)}: {significant(images)}",
            number_text(row[f"{ds}_compile_s"], 0),
        ]
        rows.append(cells)
    dsp = proto.DATASETS[ds]
    height, width = dsp.input_size
    table = pd.DataFrame(rows, columns=headers).to_markdown(index=False, disable_numparse=True)
    return f"### {dsp.title} ({height}×{width} unless table.md says otherwise)\n\n{table}\n\n"


def to_speed_markdown(frame: pd.DataFrame, where: MeasuredOn) -> str:
    """Every measured speed mode per dataset: latency, spread, achieved TFLOP/s, % of peak, launch overhead
    ("" where no dataset has a latency)."""
    modes = measured_modes(frame, where.device)
    marks: set[str] = set()
    parts = [
        _section(frame, ds, modes, marks)
        for ds in proto.DATASETS
        if any(f"{ds}_latency_{m}_ms" in frame and frame[f"{ds}_latency_{m}_ms"].notna().any() for m in modes)
    ]
    if not parts:
        return ""
    ceilings = ", ".join(f"{k} {v:.1f}" for k, v in (where.peaks or {}).items()) or "not measured"
    probed = any(known(v) is not None for c in frame.columns if "_channels_last_" in c for v in frame[c])
    footer = [
        f"Measured on: {device_line(where)}. Device ceilings (matmul TFLOP/s, copy TB/s): {ceilings}.",
        FOOTNOTE,
    ]
    if probed:
        footer.append("NHWC / NCHW: the memory layout a mode that times both kept (the faster).")
    if UNSTABLE in marks:
        footer.append(f"{UNSTABLE} = the timed repeats spread more than {100 * proto.MAX_SPREAD:.0f}%.")
    if THROTTLED in marks:
        footer.append(THROTTLED_NOTE)
    return "".join(parts) + "\n".join(footer) + "\n"
