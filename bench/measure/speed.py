"""Latency of one inference step: forward + bilinear resize of the logits to the input + argmax.

CUDA: cudnn.benchmark on, warm-up, then timed repeats with a pair of CUDA events around every
step. The graph modes capture the whole step into one CUDA graph and time its replay; ``compile``
runs the step through torch.compile first (the compile time is recorded apart, never in the
latency); the ``-fused`` modes first rewrite the model into its inference form
(`bench.measure.fusion`). CPU: the same loop timed with `host_clock` (``time.perf_counter``; fp32
eager modes only).

On a CPU the timed steps keep the memory they free in the C heap (`host_memory_cached`), as the
CUDA caching allocator keeps it on a GPU: with glibc's defaults every tensor above its mmap
threshold is a fresh mapping whose pages the kernel zeroes again at each step, which can double
a 1024x2048 step. The record says so (``host_memory``).

The number of steps per repeat adapts to the model (a repeat lasts at least ``min_repeat_s``);
the spread of the repeats is recorded and a measurement whose spread exceeds
`bench.protocol.MAX_SPREAD` is flagged ``unstable``; the SM clock and temperature are read before
and after, and a clock that dropped, an NVML throttle reason other than idle, or a power or
thermal cap held for more than 1% of the timed loop flags ``throttled``. `sweep_batches` runs
the step at growing batch sizes until memory runs out or a tensor of the step would pass the
2^31 elements that 32-bit kernel indexing reaches.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import first_line, is_out_of_memory
from bench.measure import nvml
from bench.measure.flops import count_flops
from bench.measure.fusion import fuse_for_inference, precast_for_autocast
from bench.protocol import COMPILE_MODE, LAYOUT_PROBE, MAX_SPREAD, MODES, SpeedProtocol, needs_cuda

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_FORMATS = {True: torch.channels_last, False: torch.contiguous_format}
_LAYOUT_NAMES = {True: "channels_last", False: "contiguous"}

# Seconds, read by the CPU timer and around the compiling call: a module attribute, so that a test can
# put a clock of its own here and time steps whose length it knows.
host_clock = time.perf_counter


class ModeUnavailable(RuntimeError):
    """The mode cannot run on this device (CUDA graphs, fp16 or torch.compile on a CPU)."""


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


# glibc's mallopt parameters (malloc.h) and its defaults (a 128 KiB mmap and trim threshold).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_DEFAULT_THRESHOLD = 128 * 1024
_HOST_CACHE_BYTES = 2**31 - 1  # the largest value mallopt takes (a C int)
HOST_MEMORY_CACHED = "glibc heap kept between steps (mmap and trim thresholds 2 GiB)"


@functools.cache
def _glibc():
    """glibc, or None where the C library is another one (musl, macOS): its allocator is left as it is."""
    try:
        libc = ctypes.CDLL("libc.so.6")  # glibc's soname
    except OSError:
        return None
    if not all(hasattr(libc, f) for f in ("mallopt", "malloc_trim", "gnu_get_libc_version")):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


@contextlib.contextmanager
def host_memory_cached(device: torch.device):
    """While timing on a CPU, let glibc keep freed memory in its heap instead of unmapping it.

    Yields `HOST_MEMORY_CACHED` when it did (glibc, CPU) and None otherwise; on leaving, glibc's
    default thresholds are set again (as fixed values: glibc no longer raises them by itself) and
    the heap is trimmed.
    """
    libc = _glibc() if device.type == "cpu" else None
    if libc is None or not libc.mallopt(_M_MMAP_THRESHOLD, _HOST_CACHE_BYTES):
        yield None
        return
    try:
        libc.mallopt(_M_TRIM_THRESHOLD, _HOST_CACHE_BYTES)
        yield HOST_MEMORY_CACHED
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
        libc.malloc_trim(0)


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
    _reset_peak_memory()  # the capture allocates one step's memory; the warm-up's autotuning is not counted
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def _reset_peak_memory() -> None:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()


def _on(device: torch.device):
    """Make ``device`` the current CUDA device: events, streams and graphs act on the current one."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


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
        t0 = host_clock()
        fn()
        times.append((host_clock() - t0) * 1000.0)
    return times


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class PreparedStep:
    """A step of one mode, ready to time.

    Args:
        fn: the step (a CUDA-graph replay in a graph mode).
        compile_s: the first (compiling) call's time in mode ``compile``, else None.
        form: in a fused mode, what the fusion did and the FLOPs its inference form executes, else None.
        channels_last: the memory layout the step runs in.
        layout_ms: in a mode whose layout is "auto", the probe's median ms per layout
            (``channels_last``, ``contiguous``), of which the faster was kept; else None.
    """

    fn: Callable[[], torch.Tensor]
    compile_s: float | None
    form: dict | None
    channels_last: bool
    layout_ms: dict | None = None


def _probe_ms(fn, timer) -> float:
    """Median ms of ``fn`` under `LAYOUT_PROBE`: a few untimed steps, then at least its steps and seconds."""
    timer(fn, LAYOUT_PROBE.warmup_steps)
    times = timer(fn, LAYOUT_PROBE.min_steps)
    more = math.ceil(LAYOUT_PROBE.min_s * 1000.0 / max(statistics.median(times), 1e-3)) - len(times)
    if more > 0:
        times += timer(fn, more)
    return statistics.median(times)


def _release(device: torch.device) -> None:
    """Return a discarded step's memory (a captured graph's pool) before the next one is prepared."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def prepare_step(
    model: nn.Module, input_size: tuple[int, int], *, device: torch.device, mode: str, protocol: SpeedProtocol,
    capture: bool = True, channels_last: bool | None = None,
) -> PreparedStep:  # fmt: skip
    """The step of ``mode`` ready to time (fused, compiled, captured, in its memory layout).

    Call under ``torch.no_grad()`` with ``device`` current (`_on`); a graph mode resets the device's
    peak-memory statistics before its capture. A fused mode rewrites ``model`` in place.
    ``capture=False`` leaves a graph mode's step uncaptured: the same kernels, launched one by one
    (what a profiler can attribute to operators). ``channels_last`` holds the layout (default: the
    mode's; "auto" prepares the step in each layout as the mode runs it, times it (`LAYOUT_PROBE`)
    and keeps the faster).
    """
    settings = MODES[mode]
    on_cuda = device.type == "cuda"
    if needs_cuda(mode) and not on_cuda:
        raise ModeUnavailable(f"mode {mode!r} needs a CUDA GPU; on a CPU only mode 'eager' runs")
    if on_cuda:
        torch.backends.cudnn.benchmark = True
    model = model.to(device=device).eval()
    x = torch.randn(protocol.batch, 3, *input_size, device=device)
    form = None
    if settings["fused"]:
        form = fuse_for_inference(model, x).as_dict()
        executed = count_flops(model, input_size, device=device)
        form["executed_gflops"] = executed.gflops
        form["executed_by_operator"] = executed.by_operator  # the fp32 ceiling's split (roofline.ceiling_tflops)
        if on_cuda and settings["precision"] != "fp32":  # after the count: it runs the forward in fp32
            form["precast_parameters"] = precast_for_autocast(model, x, _DTYPES[settings["precision"]])
    layout = settings["channels_last"] if channels_last is None else channels_last
    compile_s = None
    if settings["compile"]:
        if layout == "auto":
            raise ValueError(f"mode {mode!r}: torch.compile is prepared in one layout, not probed")
        model = model.to(memory_format=_FORMATS[layout])
        model = torch.compile(model, mode=COMPILE_MODE)
        step = inference_step(model, x.contiguous(memory_format=_FORMATS[layout]), settings["precision"])
        t0 = host_clock()
        step()
        torch.cuda.synchronize(device)
        compile_s = host_clock() - t0
        fn = _capture(step, protocol.warmup_steps) if settings["cuda_graph"] and capture else step
        return PreparedStep(fn, compile_s, form, layout)

    def build(last: bool, captured: bool):
        model.to(memory_format=_FORMATS[last])
        step = inference_step(model, x.contiguous(memory_format=_FORMATS[last]), settings["precision"])
        return _capture(step, protocol.warmup_steps) if settings["cuda_graph"] and captured else step

    if layout != "auto":
        return PreparedStep(build(layout, captured=capture), compile_s, form, layout)
    timer = _time_cuda if on_cuda else _time_cpu
    layout_ms = {}
    fn = None
    for last in (True, False):
        if fn is not None:
            fn = None
            _release(device)  # the other layout's step (its graph's memory pool) first
        fn = build(last, captured=True)
        layout_ms[_LAYOUT_NAMES[last]] = _probe_ms(fn, timer)
    layout = layout_ms["channels_last"] <= layout_ms["contiguous"]
    if layout or (settings["cuda_graph"] and not capture):  # not the step built last
        fn = None
        _release(device)
        fn = build(layout, captured=capture)
    return PreparedStep(fn, compile_s, form, layout, layout_ms)


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
    with torch.no_grad(), _on(device):
        fn = prepare_step(
            model, input_size, device=device, mode=mode, protocol=protocol, channels_last=channels_last
        ).fn
        for _ in range(protocol.warmup_steps):
            fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(steps):
            fn()
        end.record()
        torch.cuda.synchronize(device)
    return start.elapsed_time(end) / steps


def measure_latency(
    model: nn.Module,
    input_size: tuple[int, int],
    *,
    device: str | torch.device,
    mode: str = "eager",
    protocol: SpeedProtocol,
    nvml_handle=None,
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
    with torch.no_grad(), _on(device), contextlib.ExitStack() as timing:
        prepared = prepare_step(
            model, input_size, device=device, mode=mode, protocol=protocol, channels_last=channels_last
        )
        fn, compile_s, form = prepared.fn, prepared.compile_s, prepared.form
        host_memory = timing.enter_context(host_memory_cached(device))  # the steps, not the preparation
        timer = _time_cuda if on_cuda else _time_cpu
        warm = timer(fn, protocol.warmup_steps)
        if on_cuda and not MODES[mode]["cuda_graph"]:
            _reset_peak_memory()  # the timed steps' memory, not the first steps' cuDNN autotuning
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
    spread = (max(medians) - min(medians)) / statistics.median(medians)
    return LatencyResult(
        median_ms=median,
        p90_ms=_percentile(times, 0.9),
        mean_ms=statistics.fmean(times),
        min_ms=min(times),
        fps=1000.0 * protocol.batch / median,
        steps=steps,
        repeats=protocol.repeats,
        repeat_medians_ms=medians,
        spread=spread,
        batch=protocol.batch,
        input_size=tuple(input_size),
        peak_memory_mb=peak,
        energy_j_per_frame=None if energy is None else energy.joules / frames,
        power_w=None if energy is None else energy.watts,
        telemetry_before=before,
        telemetry_after=after,
        unstable=spread > MAX_SPREAD,
        throttled=nvml.throttled(before, after, meter.elapsed_s),
        compile_s=compile_s,
        inference_form=form,
        channels_last=prepared.channels_last,
        layout_ms=prepared.layout_ms,
        host_memory=host_memory,
        tf32=bool(torch.backends.cudnn.allow_tf32) if on_cuda else None,
        tf32_matmul=bool(torch.backends.cuda.matmul.allow_tf32) if on_cuda else None,
    )


# Many CUDA kernels index with 32-bit integers and refuse a tensor of 2^31 elements or more (the
# channels_last bilinear resize says "less than INT_MAX elements"): the step's largest tensor is
# usually the logits resized to the input, batch x classes x H x W (64 x 150 x 512 x 512 is 2.5e9).
INT32_INDEX_LIMIT = 2**31 - 1
_INDEX_LIMIT_MARKERS = ("int_max", "32-bit index", "2^31")


def exceeds_index_limit(exc: BaseException) -> bool:
    """Whether ``exc`` is a kernel refusing a tensor too large for its 32-bit indexing."""
    return any(marker in str(exc).lower() for marker in _INDEX_LIMIT_MARKERS)


@dataclass
class SweepResult:
    """Throughput at growing batch sizes in one mode.

    Args:
        points: per batch size: images/s, median step latency and peak memory.
        best_batch: the batch size with the most images/s.
        images_s: images/s at ``best_batch``.
        stopped: why the sweep ended before its last batch size (memory, 32-bit indexing), or None.
        channels_last: the memory layout of every point (an "auto" mode's is probed at the first).
        layout_ms: an "auto" mode's probe at the first batch size, ms per layout; else None.
    """

    mode: str
    points: list[dict]
    best_batch: int
    images_s: float
    stopped: str | None = None
    channels_last: bool | None = None
    layout_ms: dict | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def sweep_batches(
    model: nn.Module,
    input_size: tuple[int, int],
    *,
    device: str | torch.device,
    mode: str,
    protocol: SpeedProtocol,
    batches: tuple[int, ...],
    num_classes: int | None = None,
) -> SweepResult:
    """Time the step at each batch size until one would not fit (or runs out of) device memory.

    Args:
        model: the model in eval mode.
        input_size: (H, W) of each image.
        device: ``cuda[:i]`` or ``cpu``.
        mode: the speed mode of every point.
        protocol: warm-up and repeats per point (its ``batch`` is replaced by each batch size).
        batches: batch sizes in increasing order.
        num_classes: channels of the logits; when given, the sweep stops before a batch whose resized
            logits would hold more elements than 32-bit indexing reaches (`INT32_INDEX_LIMIT`).
    """
    device = torch.device(device)
    points: list[dict] = []
    stopped = None
    layout, layout_ms = None, None  # probed at the first batch size when the mode's is "auto", then held
    base_mb = 0.0  # the weights: what does not grow with the batch
    if device.type == "cuda":
        model = model.to(device)
        base_mb = torch.cuda.memory_allocated(device) / 2**20
    for batch in batches:
        elements = batch * (num_classes or 0) * input_size[0] * input_size[1]
        if points and elements > INT32_INDEX_LIMIT:
            shape = "x".join(map(str, (batch, num_classes, *input_size)))
            stopped = f"batch {batch}: its {shape} resized logits would pass 2^31 elements (32-bit kernel indexing)"
            break
        if device.type == "cuda" and points:
            free, _ = torch.cuda.mem_get_info(device)
            # Activations grow about linearly with the batch: stop before a capture would run out.
            last = points[-1]
            needed_mb = base_mb + (last["peak_memory_mb"] - base_mb) * batch / last["batch"]
            if needed_mb * 2**20 > 0.9 * (free + torch.cuda.memory_reserved(device)):
                stopped = f"batch {batch} would need about {needed_mb:.0f} MiB"
                break
        try:
            result = measure_latency(
                model, input_size, device=device, mode=mode, protocol=replace(protocol, batch=batch),
                channels_last=layout,
            )  # fmt: skip
        except (torch.cuda.OutOfMemoryError, RuntimeError, MemoryError) as exc:
            if is_out_of_memory(exc):
                stopped = f"out of memory at batch {batch}"
            elif points and "captur" in str(exc).lower():
                # an allocation that fails inside a CUDA-graph capture can surface as an invalidated capture
                stopped = f"the CUDA-graph capture failed at batch {batch} ({first_line(exc, 100)})"
            elif points and exceeds_index_limit(exc):  # another tensor of the step than the logits
                stopped = f"a kernel's 32-bit indexing at batch {batch} ({first_line(exc, 100)})"
            else:
                raise
            if device.type == "cuda":
                with contextlib.suppress(RuntimeError):  # the error above is the one worth reporting
                    torch.cuda.empty_cache()
            break
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if not points:
            layout, layout_ms = result.channels_last, result.layout_ms
        points.append(
            {
                "batch": batch,
                "images_s": result.fps,
                "median_ms": result.median_ms,
                "peak_memory_mb": result.peak_memory_mb,
                "spread": result.spread,
            }
        )
    if not points:
        raise torch.cuda.OutOfMemoryError(f"{stopped}: not even batch {batches[0]} fits")
    best = max(points, key=lambda p: p["images_s"])
    return SweepResult(
        mode=mode, points=points, best_batch=best["batch"], images_s=best["images_s"], stopped=stopped,
        channels_last=layout, layout_ms=layout_ms,
    )  # fmt: skip
