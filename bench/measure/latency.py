"""Latency of the inference step (`bench.measure.step`) under the speed protocol.

CUDA: cudnn.benchmark on, warm-up, then timed repeats with a pair of CUDA events around every
step. CPU: the same loop on the host clock (fp32 eager modes only), with freed memory kept in the
C heap (`bench.measure.host_memory`).

The number of steps per repeat adapts to the model (a repeat lasts at least ``min_repeat_s``);
the spread of the repeats is recorded and a measurement whose spread exceeds
`bench.protocol.MAX_SPREAD` is flagged ``unstable``; the SM clock and temperature are read before
and after, and a clock that dropped, an NVML throttle reason other than idle, or a power or
thermal cap held for more than 1% of the timed loop flags ``throttled``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from bench.measure import nvml
from bench.measure.host_memory import host_memory_cached
from bench.measure.step import ModeUnavailable, prepared_step, reset_peak_memory
from bench.measure.timer import timer_for
from bench.protocol import MAX_SPREAD, MODES, SpeedProtocol


@dataclass
class LatencyResult:
    """Statistics of the timed steps (milliseconds).

    ``spread`` is (max - min) / median of the per-repeat medians: how far repeats disagree;
    ``unstable`` says it exceeds `bench.protocol.MAX_SPREAD`. ``compile_s`` is the time of the
    first (compiling) call in mode ``compile``, excluded from every latency.
    """

    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    fps: float
    steps: int
    repeats: int
    repeat_medians_ms: list[float]
    spread: float
    batch: int
    input_size: tuple[int, int]
    peak_memory_mb: float | None = None
    energy_j_per_frame: float | None = None
    power_w: float | None = None
    telemetry_before: dict = field(default_factory=dict)
    telemetry_after: dict = field(default_factory=dict)
    unstable: bool = False
    throttled: bool = False
    compile_s: float | None = None
    tf32: bool | None = None  # cuDNN convolutions may use TF32
    tf32_matmul: bool | None = None  # matmuls (linear layers, attention) may use TF32
    inference_form: dict | None = None
    channels_last: bool | None = None  # the memory layout the step ran in
    layout_ms: dict | None = None  # an "auto" layout mode: the probe's median ms per layout (`prepare_step`)
    host_memory: str | None = None  # on a CPU: how freed memory was kept between steps (`host_memory_cached`)

    def as_dict(self) -> dict:
        return asdict(self)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values``, interpolated linearly between the two nearest ranks."""
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def steps_per_repeat(warmup_ms: list[float], protocol: SpeedProtocol) -> int:
    """Steps in each timed repeat: enough to last ``min_repeat_s``, no more than fit in ``max_repeat_s``."""
    estimate_ms = max(statistics.median(warmup_ms) if warmup_ms else 1.0, 1e-3)
    steps = max(protocol.min_steps, math.ceil(protocol.min_repeat_s * 1000.0 / estimate_ms))
    return max(1, min(steps, math.floor(protocol.max_repeat_s * 1000.0 / estimate_ms) or 1))


def repeat_statistics(per_repeat: list[list[float]], batch: int) -> dict[str, Any]:
    """The statistics of `LatencyResult` from each repeat's step times (ms) at ``batch`` images a step."""
    times = [t for repeat in per_repeat for t in repeat]
    medians = [statistics.median(repeat) for repeat in per_repeat]
    median = statistics.median(times)
    spread = (max(medians) - min(medians)) / statistics.median(medians)
    return {
        "median_ms": median,
        "p90_ms": percentile(times, 0.9),
        "mean_ms": statistics.fmean(times),
        "min_ms": min(times),
        "fps": 1000.0 * batch / median,
        "repeat_medians_ms": medians,
        "spread": spread,
        "unstable": spread > MAX_SPREAD,
    }


def measure_latency(
    model: nn.Module,
    input_size: tuple[int, int],
    *,
    device: str | torch.device,
    mode: str = "eager",
    protocol: SpeedProtocol,
    nvml_handle: Any = None,
    channels_last: bool | None = None,
) -> LatencyResult:
    """Time ``model`` under the protocol.

    Args:
        model: the model in eval mode (moved to ``device`` here).
        input_size: (H, W) of the random input.
        device: ``cuda[:i]`` or ``cpu``.
        mode: a key of `bench.protocol.MODES`.
        protocol: warm-up, repeats and step counts.
        nvml_handle: NVML handle of the GPU for clocks and energy (None: no telemetry).
        channels_last: the memory layout (default: the mode's; "auto" probes both, `prepare_step`).
    """
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    time_steps = timer_for(device)
    with (
        prepared_step(
            model, input_size, device=device, mode=mode, protocol=protocol, channels_last=channels_last
        ) as prepared,
        host_memory_cached(device) as host_memory,  # the steps, not the preparation
    ):
        steps = steps_per_repeat(time_steps(prepared.fn, protocol.warmup_steps), protocol)
        if on_cuda and not MODES[mode]["cuda_graph"]:
            reset_peak_memory()  # the timed steps' memory, not the first steps' cuDNN autotuning
        before = nvml.clocks(nvml_handle)
        meter = nvml.EnergyMeter(nvml_handle).start()
        per_repeat = [time_steps(prepared.fn, steps) for _ in range(protocol.repeats)]
        energy = meter.stop()
        after = nvml.clocks(nvml_handle)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if on_cuda else None
    frames = steps * protocol.repeats * protocol.batch
    return LatencyResult(
        **repeat_statistics(per_repeat, protocol.batch),
        steps=steps,
        repeats=protocol.repeats,
        batch=protocol.batch,
        input_size=(input_size[0], input_size[1]),
        peak_memory_mb=peak,
        energy_j_per_frame=None if energy is None else energy.joules / frames,
        power_w=None if energy is None else energy.watts,
        telemetry_before=before,
        telemetry_after=after,
        throttled=nvml.throttled(before, after, meter.elapsed_s),
        compile_s=prepared.compile_s,
        inference_form=prepared.form,
        channels_last=prepared.channels_last,
        layout_ms=prepared.layout_ms,
        host_memory=host_memory,
        tf32=bool(torch.backends.cudnn.allow_tf32) if on_cuda else None,
        tf32_matmul=bool(torch.backends.cuda.matmul.allow_tf32) if on_cuda else None,
    )


def bare_latency(
    model: nn.Module, input_size: tuple[int, int], *, device: str | torch.device, mode: str, protocol: SpeedProtocol,
    steps: int, channels_last: bool | None = None,
) -> float:  # fmt: skip
    """Mean ms per step of the same callable `measure_latency` times, in a bare loop between two CUDA events.

    The reference for the harness's own overhead: no per-step events, no statistics, no telemetry.
    ``channels_last``: the layout `measure_latency` kept (an "auto" mode would otherwise probe again).
    """
    device = torch.device(device)
    if device.type != "cuda":
        raise ModeUnavailable("the bare CUDA-event loop needs a CUDA GPU")
    with prepared_step(
        model, input_size, device=device, mode=mode, protocol=protocol, channels_last=channels_last
    ) as prepared:
        for _ in range(protocol.warmup_steps):
            prepared.fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(steps):
            prepared.fn()
        end.record()
        torch.cuda.synchronize(device)
    return start.elapsed_time(end) / steps
