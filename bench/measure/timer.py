"""The clocks of a timed loop: a pair of CUDA events around every step on a GPU, the host clock on a CPU."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

Step = Callable[[], object]
# (step, steps) -> the milliseconds of each step
Timer = Callable[[Step, int], list[float]]

# Seconds, read by the CPU timer and around a compiling call: a module attribute, so that a test can put
# a clock of its own here and time steps whose length it knows.
host_clock: Callable[[], float] = time.perf_counter


def time_cuda(fn: Step, steps: int) -> list[float]:
    """Milliseconds of each of ``steps`` calls of ``fn``, between CUDA events on the current stream."""
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
    for start, end in zip(starts, ends):
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in zip(starts, ends)]


def time_cpu(fn: Step, steps: int) -> list[float]:
    """Milliseconds of each of ``steps`` calls of ``fn``, read from `host_clock`."""
    times = []
    for _ in range(steps):
        started = host_clock()
        fn()
        times.append((host_clock() - started) * 1000.0)
    return times


def timer_for(device: torch.device) -> Timer:
    """The timer of ``device``: CUDA events on a GPU, the host clock elsewhere."""
    return time_cuda if device.type == "cuda" else time_cpu
