"""Roofline: what a model achieves against what the GPU can do, measured by the harness itself.

The ceilings are measured once per device and stored beside its records
(``results/<device>/peaks.json``, with the device's provenance): a large square matmul per
precision (fp32 with TF32 off, TF32, fp16, bf16), in TFLOP/s counting two FLOPs per multiply-add
as matmul peaks are quoted, and a device-to-device copy in TB/s counting the bytes read and
written. A latency record then gives the achieved TFLOP/s of its mode (2 x the model's
multiply-adds per image x batch / latency) and its share of the ceiling for the precision used
(fp32 is compared with the TF32 ceiling when cuDNN was allowed TF32, PyTorch's default for
convolutions). The gap between `eager` and `graph-fp32`, which differ only by the CUDA-graph
replay, is the share of the eager step spent launching kernels from Python.
"""

from __future__ import annotations

import math

import torch

MATMUL_N = 8192
COPY_BYTES = 2**30
# A step at least this much slower in eager than in graph-fp32 is bound by CPU launch overhead.
LAUNCH_BOUND_SHARE = 0.5


# Each ceiling: this long of warm-up (the clocks ramp up) and at least this long timed.
WARMUP_MS = 200.0
TIMED_MS = 300.0


def _time_ms(fn, min_iters: int = 20) -> float:
    """Mean ms of ``fn`` on the current CUDA device, after `WARMUP_MS` of it, over at least `TIMED_MS`."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed(iters: int) -> float:
        torch.cuda.synchronize()
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)

    timed(1)  # library set-up (cuBLAS handles, kernel selection) out of the estimate
    estimate = timed(3) / 3
    timed(max(1, math.ceil(WARMUP_MS / max(estimate, 1e-3))))
    iters = max(min_iters, math.ceil(TIMED_MS / max(estimate, 1e-3)))
    return timed(iters) / iters


def measure_peaks(device: str | torch.device = "cuda", n: int = MATMUL_N, copy_bytes: int = COPY_BYTES) -> dict:
    """Matmul TFLOP/s per precision and copy TB/s of one CUDA device.

    Args:
        device: the CUDA device.
        n: side of the square matmul operands.
        copy_bytes: size of the copied buffer.
    """
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError("the roofline ceilings are measured on a CUDA device")
    peaks = {}
    saved = torch.backends.cuda.matmul.allow_tf32
    with torch.cuda.device(device):  # events and synchronisation act on the current device
        try:
            for name, dtype, tf32 in (
                ("fp32", torch.float32, False),
                ("tf32", torch.float32, True),
                ("fp16", torch.float16, False),
                ("bf16", torch.bfloat16, False),
            ):
                torch.backends.cuda.matmul.allow_tf32 = tf32
                a = torch.randn(n, n, device=device, dtype=dtype)
                b = torch.randn(n, n, device=device, dtype=dtype)
                ms = _time_ms(lambda a=a, b=b: torch.mm(a, b))
                peaks[f"matmul_{name}_tflops"] = 2 * n**3 / (ms / 1000) / 1e12
                del a, b
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved
        src = torch.empty(copy_bytes, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        ms = _time_ms(lambda s=src, d=dst: d.copy_(s))
        peaks["copy_tb_s"] = 2 * copy_bytes / (ms / 1000) / 1e12  # read + write
    return peaks


def peak_key(precision: str, tf32: bool | None) -> str:
    """The ceiling a step of ``precision`` is compared with."""
    if precision == "fp32":
        return "matmul_tf32_tflops" if tf32 else "matmul_fp32_tflops"
    return f"matmul_{precision}_tflops"


def achieved_tflops(macs_per_image: float, latency_ms: float, batch: int = 1) -> float:
    """TFLOP/s of a step (two FLOPs per multiply-add, as the matmul ceilings count)."""
    return 2.0 * macs_per_image * batch / (latency_ms / 1000.0) / 1e12


def ceiling_tflops(
    peaks: dict | None,
    precision: str,
    tf32: bool | None,
    tf32_matmul: bool | None = None,
    by_operator: dict | None = None,
) -> float | None:
    """The ceiling a step of ``precision`` is compared with (None without ceilings).

    In fp32, cuDNN convolutions may run in TF32 (``tf32``: cuDNN's default) while matmuls, attention
    and the rest run in true fp32 unless ``tf32_matmul`` (PyTorch's default: off). With the FLOP
    count's split by operator, the ceiling is the rate at which each part at its own ceiling would
    run the whole: total / (conv / conv ceiling + rest / rest ceiling). Without the split, ``tf32``
    picks one ceiling for all.
    """
    peaks = peaks or {}
    if precision != "fp32" or not by_operator:
        return peaks.get(peak_key(precision, tf32))
    conv = sum(v for k, v in by_operator.items() if "conv" in k)
    rest = sum(by_operator.values()) - conv
    parts = [(conv, peaks.get(peak_key("fp32", tf32))), (rest, peaks.get(peak_key("fp32", tf32_matmul)))]
    if any(flops and not peak for flops, peak in parts) or not conv + rest:
        return None
    return (conv + rest) / sum(flops / peak for flops, peak in parts if flops)


def share_of_peak(tflops: float, ceiling: float | None) -> float | None:
    """Achieved TFLOP/s over a `ceiling_tflops` (None without one)."""
    return tflops / ceiling if ceiling else None


def launch_overhead_share(eager_ms: float | None, graph_fp32_ms: float | None) -> float | None:
    """Share of the eager step that CUDA-graph replay removes (None unless both were measured)."""
    if not eager_ms or not graph_fp32_ms:
        return None
    return max(0.0, 1.0 - graph_fp32_ms / eager_ms)


def bound(overhead_share: float | None) -> str | None:
    """``launch`` when Python kernel launches dominate the eager step, else ``GPU``."""
    if overhead_share is None:
        return None
    return "launch" if overhead_share >= LAUNCH_BOUND_SHARE else "GPU"
