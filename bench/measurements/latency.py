"""latency: the inference step timed in each speed mode (`bench.measure.latency`), and what the roofline makes of it.

A step is forward + bilinear resize of the logits + argmax at batch 1. Its table columns per mode:
FPS, latency, energy, spread and its flags, the layout a probing mode kept, achieved TFLOP/s and
% of the device's ceiling (`bench.measure.roofline`); then the compile time, the launch overhead
(eager against graph-fp32) and the published FPS with the GPU its source names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench import protocol as proto
from bench.measurements.base import Cells, JobContext, Measurement, Modes, Value
from bench.measurements.flops import FLOPS

if TYPE_CHECKING:
    from bench.store.record import Record

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


def published_gpu(source: str) -> str | None:
    """The GPU a published FPS was measured on, read from its source's text; None where it names none."""
    for pattern, name in GPU_NAMES.items():
        found = re.search(pattern, source, flags=re.IGNORECASE)
        if found:
            return name or found.group(0)
    return SEED_TABLE_GPU if SEED_TABLE.search(source) else None


@dataclass(frozen=True, kw_only=True)
class InferenceForm(Value):
    """What a fused mode's inference form executes (`bench.measure.fusion`).

    Args:
        executed_gflops: its FLOP count.
        executed_by_operator: the count per operator.
    """

    executed_gflops: float | None = None
    executed_by_operator: dict[str, float] | None = None


@dataclass(frozen=True, kw_only=True)
class LatencyValue(Value):
    """A timed step (milliseconds), with the mode's settings and the device's telemetry.

    Args:
        median_ms: median latency of the timed steps.
        fps: 1000 / median_ms.
        spread: (max - min) / median of the per-repeat medians.
        energy_j_per_frame: NVML energy per image.
        compile_s: the compiling first call of mode ``compile``, excluded from the latency.
        unstable: the spread exceeds `bench.protocol.MAX_SPREAD`.
        throttled: the GPU clock throttled while timing.
        tf32, tf32_matmul: whether cuDNN convolutions, and matmuls, were allowed TF32.
        inference_form: a fused mode's executed work.
        channels_last: the memory layout the step ran in.
        layout_ms: an "auto" layout mode's probe: median ms per layout.
    """

    median_ms: float | None = None
    fps: float | None = None
    spread: float | None = None
    energy_j_per_frame: float | None = None
    compile_s: float | None = None
    unstable: bool | None = None
    throttled: bool | None = None
    tf32: bool | None = None
    tf32_matmul: bool | None = None
    inference_form: InferenceForm | None = None
    channels_last: bool | None = None
    layout_ms: dict[str, float] | None = None


def time_step(context: JobContext) -> LatencyValue:
    from bench.measure.latency import measure_latency  # the engines import torch: only a job needs them
    from bench.provenance import gpu_handle

    model, size, device, mode = context.model, context.input_size, context.device, context.mode
    handle = gpu_handle(context.options.device) if device.type == "cuda" else None
    result = measure_latency(
        model, size, device=device, mode=mode, protocol=proto.SPEED[device.type], nvml_handle=handle
    )
    # the result's layout replaces the mode's where that is "auto": the one kept
    return LatencyValue.from_json({**proto.MODES[mode], **result.as_dict()})


def speed_modes(modes: Modes) -> tuple[str | None, ...]:
    """One job per speed mode the run times."""
    return modes.speed


def summary(value: LatencyValue, record: Record) -> str:
    flags = [flag for flag, raised in (("unstable", value.unstable), ("throttled", value.throttled)) if raised]
    extra = f" [yellow]{', '.join(flags)}[/] (spread {100 * (value.spread or 0):.1f}%)" if flags else ""
    if value.compile_s is not None:
        extra += f", compiled in {value.compile_s:.0f} s"
    if value.layout_ms:  # a mode that timed both layouts: which it kept, and the other's probe
        probe = value.layout_ms
        extra += (
            f", {'channels_last' if value.channels_last else 'NCHW'} kept "
            f"(probe {probe['channels_last']:.2f} ms channels_last, {probe['contiguous']:.2f} ms NCHW)"
        )
    return f"{value.median_ms:.2f} ms median, {value.fps:.1f} FPS ({record.device}){extra}"


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _rate(cells: Cells, mode: str, value: LatencyValue) -> tuple[float | None, float | None]:
    """Achieved TFLOP/s of ``mode``'s step and its share of the device's ceiling (None where unknown)."""
    from bench.measure import roofline  # its measuring half imports torch

    settings, flops = proto.MODES[mode], cells.value(FLOPS)
    form = value.inference_form or InferenceForm()
    # a fused mode's rate counts what its inference form executes, not the architecture's count
    work = form.executed_gflops if settings["fused"] else flops.gflops if flops else None
    if not work or not value.median_ms:
        return None, None
    tflops = roofline.achieved_tflops(work * 1e9, value.median_ms)
    split = form.executed_by_operator if settings["fused"] else flops.by_operator if flops else None
    peaks = dict(cells.peaks) if cells.peaks else None
    ceiling = roofline.ceiling_tflops(peaks, settings["precision"], value.tf32, value.tf32_matmul, split)
    return tflops, roofline.share_of_peak(tflops, ceiling) if tflops else None


def _mode_columns(cells: Cells, mode: str) -> dict[str, Any]:
    ds, value = cells.dataset, cells.value(LATENCY, mode) or LatencyValue()
    tflops, share = _rate(cells, mode, value)
    return {
        f"{ds}_fps_{mode}": value.fps,
        f"{ds}_latency_{mode}_ms": value.median_ms,
        f"{ds}_energy_{mode}_j": value.energy_j_per_frame,
        f"{ds}_spread_{mode}_pct": _scaled(value.spread, 100),
        f"{ds}_unstable_{mode}": value.unstable,
        f"{ds}_throttled_{mode}": value.throttled,
        # the layout a probing mode kept (a record of a fixed layout, or of protocol v1, has no probe)
        f"{ds}_channels_last_{mode}": value.channels_last if value.layout_ms else None,
        f"{ds}_tflops_{mode}": tflops,
        f"{ds}_peak_{mode}_pct": _scaled(share, 100),
    }


def columns(cells: Cells) -> dict[str, Any]:
    """Each speed mode's columns, the compile time, the launch overhead, and the published FPS."""
    from bench.measure import roofline

    ds = cells.dataset
    row: dict[str, Any] = {}
    for mode in proto.MODES:
        row.update(_mode_columns(cells, mode))
    compiled = cells.value(LATENCY, "compile")
    row[f"{ds}_compile_s"] = compiled.compile_s if compiled else None
    overhead = roofline.launch_overhead_share(row[f"{ds}_latency_eager_ms"], row[f"{ds}_latency_graph-fp32_ms"])
    row[f"{ds}_launch_overhead_pct"] = _scaled(overhead, 100)
    row[f"{ds}_bound"] = roofline.bound(overhead)
    published = cells.published()
    row[f"{ds}_fps_published"] = published.fps if published else None
    row[f"{ds}_fps_published_gpu"] = (
        published_gpu(published.source) if published and published.fps is not None else None
    )
    return row


# A CPU timing a 1024x2048 step of a large model needs minutes.
LATENCY = Measurement(
    name="latency", value_type=LatencyValue, run=time_step, timeout_s=1800, summary=summary, columns=columns,
    modes=speed_modes, needs_peaks=True,
)  # fmt: skip
