"""Where a step's time goes: the inference step of a speed mode under `torch.profiler`, per operator.

The step is the one `bench.measure.latency` times (same model preparation, precision, layout,
fusion), warmed up, then profiled over a few steps. A graph mode is profiled uncaptured: the same
kernels launched one by one, so that each kernel's time is attributed to the operator that
launched it (the launch gaps that graph replay removes show in the CPU column, not in the device
time). On a GPU operators are ranked by their own (self) device time, on a CPU by self CPU time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from bench.measure.step import prepared_step
from bench.protocol import SpeedProtocol


@dataclass
class OperatorTime:
    """One operator's share of the profiled steps (times per step, milliseconds)."""

    name: str
    calls: float
    self_ms: float
    share: float


@dataclass
class StepProfile:
    """Per-operator time of the profiled steps, largest first.

    Args:
        operators: every operator with a self time, per step.
        total_ms: the sum of their self times per step (device busy time on a GPU).
        timed_on: ``device`` (self device time) or ``cpu`` (self CPU time).
        steps: steps profiled.
        inference_form: what a fused mode rewrote (`bench.measure.fusion`), or None.
        channels_last: the memory layout profiled.
        layout_ms: a mode whose layout is "auto": its probe's median ms per layout (`prepare_step`), or None.
    """

    operators: list[OperatorTime]
    total_ms: float
    timed_on: str
    steps: int
    inference_form: dict | None = None
    channels_last: bool | None = None
    layout_ms: dict | None = None


def _self_time_us(event, on_device: bool) -> float:
    if on_device:
        return float(getattr(event, "self_device_time_total", 0.0) or getattr(event, "self_cuda_time_total", 0.0))
    return float(event.self_cpu_time_total)


def profile_step(
    model: nn.Module, input_size: tuple[int, int], *, device: str | torch.device, mode: str, protocol: SpeedProtocol,
    steps: int = 5, channels_last: bool | None = None,
) -> StepProfile:  # fmt: skip
    """Profile ``steps`` inference steps of ``model`` in ``mode`` after the protocol's warm-up.

    Args:
        model: the model in eval mode (moved to ``device`` here).
        input_size: (H, W) of the random input.
        device: ``cuda[:i]`` or ``cpu``.
        mode: a key of `bench.protocol.MODES` (a graph mode runs uncaptured).
        protocol: its warm-up steps and batch.
        steps: steps profiled.
        channels_last: the memory layout (default: the mode's, probed where it is "auto").
    """
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with prepared_step(
        model, input_size, device=device, mode=mode, protocol=protocol, capture=False, channels_last=channels_last
    ) as prepared:
        for _ in range(max(1, protocol.warmup_steps)):
            prepared.fn()
        if on_cuda:
            torch.cuda.synchronize(device)
        with profile(activities=activities) as prof:
            for _ in range(steps):
                prepared.fn()
            if on_cuda:
                torch.cuda.synchronize(device)
    rows = []
    for event in prof.key_averages():
        # operators only (kernels are attributed to the operator that launched them)
        if getattr(event, "device_type", DeviceType.CPU) != DeviceType.CPU:
            continue
        us = _self_time_us(event, on_cuda)
        if us > 0:
            rows.append((event.key, event.count / steps, us / 1000.0 / steps))
    total = sum(ms for _, _, ms in rows)
    operators = [
        OperatorTime(name, calls, ms, ms / total if total else 0.0)
        for name, calls, ms in sorted(rows, key=lambda r: -r[2])
    ]
    timed_on = "device" if on_cuda else "cpu"
    return StepProfile(operators, total, timed_on, steps, prepared.form, prepared.channels_last, prepared.layout_ms)
