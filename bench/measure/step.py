"""The timed step of a speed mode: forward + bilinear resize of the logits to the input + argmax, prepared
in the mode's precision, memory layout and inference form, compiled and captured into a CUDA graph where
the mode says so.

The graph modes capture the whole step into one CUDA graph and replay it; ``compile`` runs the step
through torch.compile first and times that first call apart; the ``-fused`` modes first rewrite the
model into its inference form (`bench.measure.fusion`). A mode whose layout is "auto" prepares the
step in both layouts, times each (`bench.protocol.LAYOUT_PROBE`) and keeps the faster.
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.measure import timer
from bench.measure.flops import count_flops
from bench.measure.fusion import fuse_for_inference, precast_for_autocast
from bench.measure.timer import Step, Timer
from bench.protocol import COMPILE_MODE, LAYOUT_PROBE, MODES, SpeedProtocol, needs_cuda

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FORMATS = {True: torch.channels_last, False: torch.contiguous_format}
LAYOUT_NAMES = {True: "channels_last", False: "contiguous"}


class ModeUnavailable(RuntimeError):
    """The mode cannot run on this device (CUDA graphs, fp16 or torch.compile on a CPU)."""


def inference_step(model: nn.Module, x: torch.Tensor, precision: str) -> Callable[[], torch.Tensor]:
    """The timed step as a closure: logits -> resize to the input size -> argmax."""
    dtype = DTYPES[precision]
    autocast = x.device.type == "cuda" and dtype != torch.float32
    size = x.shape[-2:]

    def step() -> torch.Tensor:
        # cache_enabled=False: the autocast weight cache must not outlive a CUDA-graph capture.
        with torch.autocast("cuda", dtype=dtype, enabled=autocast, cache_enabled=False):
            logits = model(x)
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits.argmax(1)

    return step


def capture_graph(step: Step, warmup: int) -> Step:
    """Capture ``step`` into a CUDA graph (warm-up on a side stream first, as CUDA requires); its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(max(3, warmup)):
            step()
    torch.cuda.current_stream().wait_stream(side)
    reset_peak_memory()  # the capture allocates one step's memory; the warm-up's autotuning is not counted
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def reset_peak_memory() -> None:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()


def on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """Make ``device`` the current CUDA device: events, streams and graphs act on the current one."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def release_memory(device: torch.device) -> None:
    """Return a discarded step's memory (a captured graph's pool) before the next one is prepared."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


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

    fn: Step
    compile_s: float | None
    form: dict | None
    channels_last: bool
    layout_ms: dict | None = None


def prepare_step(
    model: nn.Module, input_size: tuple[int, int], *, device: torch.device, mode: str, protocol: SpeedProtocol,
    capture: bool = True, channels_last: bool | None = None,
) -> PreparedStep:  # fmt: skip
    """The step of ``mode`` ready to time (fused, compiled, captured, in its memory layout).

    Call under ``torch.no_grad()`` with ``device`` current (`on_device`); a graph mode resets the device's
    peak-memory statistics before its capture. A fused mode rewrites ``model`` in place.

    Args:
        model: the model in eval mode (moved to ``device`` here).
        input_size: (H, W) of the random input.
        device: where the step runs.
        mode: a key of `bench.protocol.MODES`.
        protocol: its ``batch`` and ``warmup_steps`` (before a capture).
        capture: False leaves a graph mode's step uncaptured: the same kernels, launched one by one (what a
            profiler can attribute to operators).
        channels_last: the memory layout (default: the mode's; "auto" probes both and keeps the faster).
    """
    settings = MODES[mode]
    if needs_cuda(mode) and device.type != "cuda":
        raise ModeUnavailable(f"mode {mode!r} needs a CUDA GPU; on a CPU only mode 'eager' runs")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = model.to(device=device).eval()
    x = torch.randn(protocol.batch, 3, *input_size, device=device)
    precision, graph = settings["precision"], settings["cuda_graph"]
    form = inference_form(model, x, input_size, precision) if settings["fused"] else None
    layout = settings["channels_last"] if channels_last is None else channels_last
    if settings["compile"]:
        if isinstance(layout, str):  # "auto"
            raise ValueError(f"mode {mode!r}: torch.compile is prepared in one layout, not probed")
        fn, compile_s = _compiled_step(
            model, x, precision, layout, warmup=protocol.warmup_steps if graph and capture else None
        )
        return PreparedStep(fn, compile_s, form, layout)

    def build(last: bool, captured: bool) -> Step:
        model.to(memory_format=FORMATS[last])
        step = inference_step(model, x.contiguous(memory_format=FORMATS[last]), precision)
        return capture_graph(step, protocol.warmup_steps) if graph and captured else step

    if not isinstance(layout, str):  # a fixed layout, not "auto"
        return PreparedStep(build(layout, capture), None, form, layout)
    return _probed_step(build, device, capture=capture, graph=graph, form=form)


def inference_form(model: nn.Module, x: torch.Tensor, input_size: tuple[int, int], precision: str) -> dict:
    """Rewrite ``model`` into its inference form (`bench.measure.fusion`); what was done and what it executes."""
    form = fuse_for_inference(model, x).as_dict()
    executed = count_flops(model, input_size, device=x.device)
    form["executed_gflops"] = executed.gflops
    form["executed_by_operator"] = executed.by_operator  # the fp32 ceiling's split (roofline.ceiling_tflops)
    if x.device.type == "cuda" and precision != "fp32":  # after the count: it runs the forward in fp32
        form["precast_parameters"] = precast_for_autocast(model, x, DTYPES[precision])
    return form


def _compiled_step(
    model: nn.Module, x: torch.Tensor, precision: str, channels_last: bool, *, warmup: int | None
) -> tuple[Step, float]:
    """The step through torch.compile, captured after ``warmup`` steps (None: uncaptured), and the seconds its
    first (compiling) call took."""
    model = model.to(memory_format=FORMATS[channels_last])
    compiled: Any = torch.compile(model, mode=COMPILE_MODE)
    step = inference_step(compiled, x.contiguous(memory_format=FORMATS[channels_last]), precision)
    started = timer.host_clock()
    step()
    torch.cuda.synchronize(x.device)
    compile_s = timer.host_clock() - started
    return (step if warmup is None else capture_graph(step, warmup)), compile_s


def _probed_step(
    build: Callable[[bool, bool], Step], device: torch.device, *, capture: bool, graph: bool, form: dict | None
) -> PreparedStep:
    """Build the step captured in each layout, channels_last first, time it (`LAYOUT_PROBE`) and keep the faster.

    Args:
        build: (channels_last, captured) -> the step.
        device: where it runs.
        capture: capture the kept step (in a graph mode).
        graph: the mode captures its step into a CUDA graph.
        form: the inference form the step runs in, for the result.
    """
    time_steps = timer.timer_for(device)
    fn = build(True, True)
    layout_ms = {LAYOUT_NAMES[True]: _probe_ms(fn, time_steps)}
    del fn  # its graph's memory pool goes before the next capture
    release_memory(device)
    fn = build(False, True)
    layout_ms[LAYOUT_NAMES[False]] = _probe_ms(fn, time_steps)
    kept = layout_ms["channels_last"] <= layout_ms["contiguous"]
    if not kept and (capture or not graph):  # the step built last is the one to keep
        return PreparedStep(fn, None, form, kept, layout_ms)
    del fn
    release_memory(device)
    return PreparedStep(build(kept, capture), None, form, kept, layout_ms)


def _probe_ms(fn: Step, time_steps: Timer) -> float:
    """Median ms of ``fn`` under `LAYOUT_PROBE`: a few untimed steps, then at least its steps and seconds."""
    time_steps(fn, LAYOUT_PROBE.warmup_steps)
    times = time_steps(fn, LAYOUT_PROBE.min_steps)
    more = math.ceil(LAYOUT_PROBE.min_s * 1000.0 / max(statistics.median(times), 1e-3)) - len(times)
    if more > 0:
        times += time_steps(fn, more)
    return statistics.median(times)


@contextlib.contextmanager
def prepared_step(
    model: nn.Module, input_size: tuple[int, int], *, device: torch.device, mode: str, protocol: SpeedProtocol,
    capture: bool = True, channels_last: bool | None = None,
) -> Iterator[PreparedStep]:  # fmt: skip
    """`prepare_step` under ``torch.no_grad()`` with ``device`` current, as its steps must then run."""
    with torch.no_grad(), on_device(device):
        yield prepare_step(
            model, input_size, device=device, mode=mode, protocol=protocol, capture=capture, channels_last=channels_last
        )
