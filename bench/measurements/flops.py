"""flops: the multiply-adds of one forward at the protocol's input size, counted by fvcore (`bench.measure.flops`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.compare import percent_delta
from bench.measurements.base import Cells, Count, JobContext, Measurement, Size, Value

if TYPE_CHECKING:
    from bench.store.record import Record

CONVENTION = "fvcore; one fused multiply-add = one FLOP; model forward only"


@dataclass(frozen=True, kw_only=True)
class DynamicFlops(Value):
    """The per-image count of a model whose cost depends on its input, over seeded benchmark inputs.

    Args:
        gflops_mean, gflops_min, gflops_max: over the inputs.
        inputs: how many inputs.
    """

    gflops_mean: float
    gflops_min: float
    gflops_max: float
    inputs: Count


@dataclass(frozen=True, kw_only=True)
class FlopsValue(Value):
    """A FLOP count (one fused multiply-add = one FLOP).

    Args:
        flops: the total.
        gflops: the same, in billions.
        input_size: (H, W) counted at.
        by_operator: the count per operator.
        uncounted: operators fvcore had no handle for, and how often they ran.
        dynamic: the per-image spread of an input-dependent model (None for a static one).
    """

    flops: int | None = None
    gflops: float | None = None
    input_size: Size | None = None
    by_operator: dict[str, float] | None = None
    uncounted: dict[str, float] | None = None
    dynamic: DynamicFlops | None = None


def count(context: JobContext) -> FlopsValue:
    from bench.measure.flops import count_flops  # the engines import torch: only a job needs them

    counted = count_flops(context.model.to(context.device), context.input_size, device=context.device)
    return FlopsValue.from_json(
        {
            "flops": counted.total,
            "gflops": counted.gflops,
            "input_size": list(context.input_size),
            "by_operator": counted.by_operator,
            "uncounted": counted.uncounted,
            "convention": CONVENTION,
            "dynamic": counted.dynamic,
        }
    )


def summary(value: FlopsValue, record: Record) -> str:
    height, width = value.input_size or ("?", "?")
    extra = f", uncounted: {', '.join(value.uncounted)}" if value.uncounted else ""
    return f"{value.gflops:.1f} GFLOPs at {height}x{width}{extra}"


def columns(cells: Cells) -> dict[str, Any]:
    """The count and its input size, an input-dependent model's spread, beside the published count."""
    ds, value, published = cells.dataset, cells.value(FLOPS), cells.published()
    gflops = value.gflops if value else None
    size = value.input_size if value else None
    dynamic = value.dynamic if value else None
    reference = published.gflops if published else None
    return {
        f"{ds}_input": "x".join(map(str, size)) if size else None,
        f"{ds}_gflops": gflops,
        f"{ds}_gflops_dynamic_mean": dynamic.gflops_mean if dynamic else None,
        f"{ds}_gflops_dynamic_min": dynamic.gflops_min if dynamic else None,
        f"{ds}_gflops_dynamic_max": dynamic.gflops_max if dynamic else None,
        f"{ds}_gflops_dynamic_inputs": dynamic.inputs if dynamic else None,
        f"{ds}_gflops_published": reference,
        f"{ds}_gflops_delta_pct": percent_delta(gflops, reference),
    }


# A CPU counting a 1024x2048 forward of a ResNet-101 needs minutes.
FLOPS = Measurement(name="flops", value_type=FlopsValue, run=count, timeout_s=1800, summary=summary, columns=columns)
