"""params: the parameters of the model as built for inference (`bench.measure.params`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.compare import percent_delta
from bench.measurements.base import Cells, JobContext, Measurement, Value
from bench.protocol import DATASETS

if TYPE_CHECKING:
    from bench.store.record import Record


@dataclass(frozen=True, kw_only=True)
class ParamsValue(Value):
    """A parameter count.

    Args:
        params: parameters of the inference-time model (training-only heads excluded by the builder).
        params_m: the same, in millions.
    """

    params: int | None = None
    params_m: float | None = None


def count(context: JobContext) -> ParamsValue:
    from bench.measure.params import count_params  # the engines import torch: only a job needs them

    n = count_params(context.model)
    return ParamsValue(params=n, params_m=n / 1e6)


def summary(value: ParamsValue, record: Record) -> str:
    return f"{value.params_m:.2f} M params"


def columns(cells: Cells) -> dict[str, Any]:
    """The architecture's count (the first dataset's record that has one), beside the first published one."""
    measured = (cells.value(PARAMS, dataset=ds) for ds in DATASETS)
    params = next((value.params_m for value in measured if value and value.params_m is not None), None)
    published = cells.spec.published.values() if cells.spec else ()
    reference = next((p.params_m for p in published if p.params_m is not None), None)
    return {"params_m": params, "params_m_published": reference, "params_delta_pct": percent_delta(params, reference)}


PARAMS = Measurement(
    name="params", value_type=ParamsValue, run=count, timeout_s=600, summary=summary, columns=columns, per_dataset=False
)
