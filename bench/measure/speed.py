"""Latency of one inference step: forward + bilinear resize of the logits to the input + argmax.

CUDA: cudnn.benchmark on, warm-up, then timed repeats with a pair of CUDA events around every
step. Mode ``graph`` captures the whole step (fp16 autocast, channels_last) into one CUDA graph
and times its replay. CPU: the same loop timed with ``time.perf_counter`` (eager only).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from bench.measure import nvml
from bench.protocol import MODES, SpeedProtocol

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class ModeUnavailable(RuntimeError):
    """The mode cannot run on this device (CUDA graphs on a CPU)."""


@dataclass
class LatencyResult:
    """Statistics of the timed steps (milliseconds).

    ``spread`` is (max - min) / median of the per-repeat medians: how far repeats disagree.
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

    def as_dict(self) -> dict:
        return asdict(self)


def inference_step(model: nn.Module, x: torch.Tensor, precision: str):
    """The timed step as a closure: logits -> resize to the input size -> argmax."""
    dtype = _DTYPES[precision]
    autocast = x.device.type == "cuda" and dtype != torch.float32
    size = x.shape[-2:]

    def step() -> torch.Tensor:
        # cache_enabled=False: the autocast weight cache must not outlive a CUDA-graph capture.
        with torch.autocast("cuda", dtype=dtype, enabled=autocast, cache_enabled=False):
            logits = model(x)
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits.argmax(1)

    return step


def _capture(step, warmup: int):
    """Capture ``step`` into a CUDA graph (warm-up on a side stream first, as CUDA requires)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(max(3, warmup)):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def _time_cuda(fn, steps: int) -> list[float]:
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
    for i in range(steps):
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def _time_cpu(fn, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def measure_latency(
    model: nn.Module,
    input_size: tuple[int, int],
    *,
    device: str | torch.device,
    mode: str = "eager",
    protocol: SpeedProtocol,
    nvml_handle=None,
) -> LatencyResult:
    """Time ``model`` under the protocol.

    Args:
        model: the model in eval mode (moved to ``device`` here).
        input_size: (H, W) of the random input.
        device: ``cuda[:i]`` or ``cpu``.
        mode: a key of `bench.protocol.MODES` (``eager`` or ``graph``).
        protocol: warm-up, repeats and step counts.
        nvml_handle: NVML handle of the GPU for clocks and energy (None: no telemetry).
    """
    settings = MODES[mode]
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    if settings["cuda_graph"] and not on_cuda:
        raise ModeUnavailable(f"mode {mode!r} needs a CUDA GPU (CUDA-graph replay)")
    if on_cuda:
        torch.backends.cudnn.benchmark = True
    memory_format = torch.channels_last if settings["channels_last"] else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format).eval()
    x = torch.randn(protocol.batch, 3, *input_size, device=device).contiguous(memory_format=memory_format)

    with torch.no_grad():
        step = inference_step(model, x, settings["precision"])
        if on_cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        fn = _capture(step, protocol.warmup_steps) if settings["cuda_graph"] else step
        timer = _time_cuda if on_cuda else _time_cpu
        warm = timer(fn, protocol.warmup_steps)
        estimate_ms = statistics.median(warm) if warm else 1.0
        steps = max(protocol.min_steps, math.ceil(protocol.min_repeat_s * 1000.0 / max(estimate_ms, 1e-3)))
        steps = max(1, min(steps, math.floor(protocol.max_repeat_s * 1000.0 / max(estimate_ms, 1e-3)) or 1))

        before = nvml.clocks(nvml_handle)
        meter = nvml.EnergyMeter(nvml_handle).start()
        per_repeat = [timer(fn, steps) for _ in range(protocol.repeats)]
        energy = meter.stop()
        after = nvml.clocks(nvml_handle)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if on_cuda else None

    times = [t for rep in per_repeat for t in rep]
    medians = [statistics.median(rep) for rep in per_repeat]
    median = statistics.median(times)
    frames = len(times) * protocol.batch
    return LatencyResult(
        median_ms=median,
        p90_ms=_percentile(times, 0.9),
        mean_ms=statistics.fmean(times),
        min_ms=min(times),
        fps=1000.0 * protocol.batch / median,
        steps=steps,
        repeats=protocol.repeats,
        repeat_medians_ms=medians,
        spread=(max(medians) - min(medians)) / statistics.median(medians),
        batch=protocol.batch,
        input_size=tuple(input_size),
        peak_memory_mb=peak,
        energy_j_per_frame=None if energy is None else energy.joules / frames,
        power_w=None if energy is None else energy.watts,
        telemetry_before=before,
        telemetry_after=after,
    )
