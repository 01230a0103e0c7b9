"""sweep: throughput at growing batch sizes in one speed mode, until one runs out of memory (`bench.measure.sweep`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench import protocol as proto
from bench.measurements.base import Cells, Count, JobContext, Measurement, Modes, Value

if TYPE_CHECKING:
    from bench.store.record import Record


@dataclass(frozen=True, kw_only=True)
class SweepValue(Value):
    """A batch sweep: per batch size, images/s, median step latency and peak memory (``points``).

    Args:
        best_batch: the batch size with the most images/s.
        images_s: images/s at ``best_batch``.
        stopped: why the sweep ended before its last batch size (memory, 32-bit indexing), or None.
    """

    best_batch: Count | None = None
    images_s: float | None = None
    stopped: str | None = None


def sweep(context: JobContext) -> SweepValue:
    from bench.measure.sweep import sweep_batches  # the engines import torch: only a job needs them

    model, size, device, mode = context.model, context.input_size, context.device, context.mode
    protocol, batches = proto.SWEEP[device.type], proto.SWEEP_BATCHES[device.type]
    classes = context.dataset.num_classes  # the sweep stops before resized logits outgrow 32-bit indexing
    result = sweep_batches(
        model, size, device=device, mode=mode, protocol=protocol, batches=batches, num_classes=classes
    )
    return SweepValue.from_json({**proto.MODES[mode], **result.as_dict()})


def sweep_mode(modes: Modes) -> tuple[str | None, ...]:
    """One job, in the run's sweep mode."""
    return (modes.sweep,)


def summary(value: SweepValue, record: Record) -> str:
    stop = f"; {value.stopped}" if value.stopped else ""
    return f"best batch {value.best_batch}: {value.images_s:.1f} images/s{stop}"


def columns(cells: Cells) -> dict[str, Any]:
    """The mode swept, its best batch size and that batch's images/s."""
    ds, mode = cells.dataset, next(iter(cells.modes(SWEEP)), None)
    value = cells.value(SWEEP, mode)
    return {
        f"{ds}_sweep_mode": mode,
        f"{ds}_best_batch": value.best_batch if value else None,
        f"{ds}_images_s_best": value.images_s if value else None,
    }


SWEEP = Measurement(
    name="sweep", value_type=SweepValue, run=sweep, timeout_s=1800, summary=summary, columns=columns,
    modes=sweep_mode, default_on=("cuda",),
)  # fmt: skip
