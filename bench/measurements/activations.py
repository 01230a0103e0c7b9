"""activations: the elements the convolutions and matrix products of one forward write, counted by fvcore.

The activation count of Dollár et al., "Fast and Accurate Model Scaling" (CVPR 2021): the size of
the output tensors of every convolution and matrix product, which follows a GPU's runtime more
closely than FLOPs do (a step that moves much memory per multiply-add is slow for its FLOPs).
fvcore's `ActivationCountAnalysis` counts convolutions and matmuls; fused attention and batched
matmuls with a bias are counted here the same way. Element-wise operators, norms and resizes write
activations too, but are not part of this definition.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.measurements.base import Cells, JobContext, Measurement, Size, Value

if TYPE_CHECKING:
    from bench.store.record import Record

# Matrix products fvcore's activation count has no handle for.
EXTRA_OPERATORS = ("aten::scaled_dot_product_attention", "aten::baddbmm")


@dataclass(frozen=True, kw_only=True)
class ActivationsValue(Value):
    """An activation count.

    Args:
        activations: output elements of the convolutions and matrix products of one forward.
        activations_m: the same, in millions.
        input_size: (H, W) counted at.
        by_operator: the count per operator.
    """

    activations: int | None = None
    activations_m: float | None = None
    input_size: Size | None = None
    by_operator: dict[str, float] | None = None


def count(context: JobContext) -> ActivationsValue:
    import torch  # the count traces the model: only a job needs torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # fvcore imports the deprecated torch.jit.script
        from fvcore.nn import ActivationCountAnalysis
        from fvcore.nn.jit_handles import generic_activation_jit

    x = torch.randn(1, 3, *context.input_size, device=context.device)
    analysis = ActivationCountAnalysis(context.model.to(context.device), (x,))
    analysis.set_op_handle(**{name: generic_activation_jit() for name in EXTRA_OPERATORS})
    analysis.unsupported_ops_warnings(False)  # every other operator is left out by definition
    analysis.uncalled_modules_warnings(False)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about the model's Python control flow
        total = int(analysis.total())
    return ActivationsValue(
        activations=total,
        activations_m=total / 1e6,
        input_size=context.input_size,
        by_operator={name: int(n) for name, n in analysis.by_operator().items()},
    )


def summary(value: ActivationsValue, record: Record) -> str:
    height, width = value.input_size or ("?", "?")
    return f"{value.activations_m:.1f} M activations at {height}x{width}"


def columns(cells: Cells) -> dict[str, Any]:
    value = cells.value(ACTIVATIONS)
    return {f"{cells.dataset}_activations_m": value.activations_m if value else None}


# Measured when --measure names it; a trace of a large model at 1024x2048 takes minutes on a CPU.
ACTIVATIONS = Measurement(
    name="activations", value_type=ActivationsValue, run=count, timeout_s=1800, summary=summary, columns=columns,
    default_on=(),
)  # fmt: skip
