"""Throughput at growing batch sizes: the latency step (`bench.measure.latency`) at each batch size until
memory runs out or a tensor of the step would pass what 32-bit kernel indexing reaches."""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from bench.errors import first_line, is_out_of_memory
from bench.measure.latency import measure_latency
from bench.protocol import SpeedProtocol

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
        mode: the speed mode of every point.
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
        if points:
            stopped = _index_limit_before(batch, num_classes, input_size) or _memory_before(
                batch, points[-1], base_mb, device
            )
            if stopped:
                break
        try:
            result = measure_latency(
                model, input_size, device=device, mode=mode, protocol=replace(protocol, batch=batch),
                channels_last=layout,
            )  # fmt: skip
        except (torch.cuda.OutOfMemoryError, RuntimeError, MemoryError) as exc:
            stopped = _limit_met(exc, batch, first=not points)
            if stopped is None:
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


def _index_limit_before(batch: int, num_classes: int | None, input_size: tuple[int, int]) -> str | None:
    """Why ``batch`` is not tried when its resized logits would pass `INT32_INDEX_LIMIT`, else None."""
    if batch * (num_classes or 0) * input_size[0] * input_size[1] <= INT32_INDEX_LIMIT:
        return None
    shape = "x".join(map(str, (batch, num_classes, *input_size)))
    return f"batch {batch}: its {shape} resized logits would pass 2^31 elements (32-bit kernel indexing)"


def _memory_before(batch: int, last: dict, base_mb: float, device: torch.device) -> str | None:
    """Why ``batch`` is not tried on a GPU whose free memory it would pass, else None."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    # Activations grow about linearly with the batch: stop before a capture would run out.
    needed_mb = base_mb + (last["peak_memory_mb"] - base_mb) * batch / last["batch"]
    if needed_mb * 2**20 > 0.9 * (free + torch.cuda.memory_reserved(device)):
        return f"batch {batch} would need about {needed_mb:.0f} MiB"
    return None


def _limit_met(exc: BaseException, batch: int, *, first: bool) -> str | None:
    """Why the sweep stops at ``batch`` when ``exc`` is a device limit, or None for any other failure."""
    if is_out_of_memory(exc):
        return f"out of memory at batch {batch}"
    if first:
        return None
    if "captur" in str(exc).lower():
        # an allocation that fails inside a CUDA-graph capture can surface as an invalidated capture
        return f"the CUDA-graph capture failed at batch {batch} ({first_line(exc, 100)})"
    if exceeds_index_limit(exc):  # another tensor of the step than the logits
        return f"a kernel's 32-bit indexing at batch {batch} ({first_line(exc, 100)})"
    return None
