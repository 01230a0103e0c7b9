"""FLOPs with fvcore: one fused multiply-add counts as one FLOP (the seed table's convention).

fvcore traces the model with ``torch.jit.trace`` and counts each traced operator with a handle.
This adapter adds handles for the operators our models use that fvcore does not count
(fused attention, every pooling, bicubic/nearest resizes) and declares the operators that cost
no multiply-add (activations, element-wise arithmetic, data movement) as zero by convention. Any
operator left is *uncounted*, and `count_flops` reports it instead of dropping it silently.

What is counted: the model's ``forward`` on one image at the protocol size. The harness's final
resize of the logits to the input size and the argmax are not part of the count.

Input-dependent models (dynamic routing): a model that computes every route and gates the outputs
(so that it stays capturable in a CUDA graph) may expose ``inactive_modules(x) -> list[str]``, the
submodules an implementation that skips closed routes would not run for image ``x``. The static
count is then the maximum, and `count_dynamic_flops` gives the per-image count (static minus those
modules' FLOPs) over a set of benchmark inputs: mean, minimum and maximum.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # fvcore imports the deprecated torch.jit.script
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import elementwise_flop_counter, get_shape


def _sdpa_flops(inputs, outputs) -> int:
    """QK^T and AV: B*H*Lq*Lk*(E + Ev) multiply-adds (mask, softmax and scale not counted)."""
    q, k, v = (get_shape(inputs[i]) for i in range(3))
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def _baddbmm_flops(inputs, outputs) -> int:
    b, n, m = get_shape(inputs[1])
    return b * n * m * get_shape(inputs[2])[-1]


_INPUT_NUMEL = elementwise_flop_counter(1, 0)
_OUTPUT_NUMEL = elementwise_flop_counter(0, 1)

# Operators fvcore has no handle for, counted here.
EXTRA_HANDLES = {
    "aten::scaled_dot_product_attention": _sdpa_flops,
    "aten::baddbmm": _baddbmm_flops,
    # Pooling reads every input element once, as fvcore counts adaptive_avg_pool2d.
    "aten::max_pool2d": _INPUT_NUMEL,
    "aten::max_pool2d_with_indices": _INPUT_NUMEL,
    "aten::avg_pool2d": _INPUT_NUMEL,
    "aten::adaptive_max_pool2d": _INPUT_NUMEL,
    "aten::mean": _INPUT_NUMEL,
    # Resizes, as fvcore counts upsample_bilinear2d (4 per output element) and nearest (1).
    "aten::upsample_bicubic2d": elementwise_flop_counter(0, 16),
    "aten::upsample_nearest1d": _OUTPUT_NUMEL,
    "aten::upsample_nearest3d": _OUTPUT_NUMEL,
    "aten::_upsample_bilinear2d_aa": elementwise_flop_counter(0, 4),
}

# Operators that perform no multiply-add: counted as zero by convention (fvcore already
# ignores relu, cat, view and friends; mmcv's counter, which the published figures used,
# counts none of these either).
ZERO_COST_OPS = frozenset(
    "aten::" + name
    for name in (
        "abs add add_ argmax div div_ exp gelu hardsigmoid hardswish hardtanh hardtanh_ "
        "leaky_relu leaky_relu_ log_softmax lt max_unpool2d mul mul_ neg pow reciprocal rsqrt "
        "sigmoid sigmoid_ silu silu_ softmax sqrt sub sub_ sum tanh where clamp_min clamp_min_ "
        "sort topk repeat unflatten pad reflection_pad2d replicate_pad2d pixel_shuffle "
        "pixel_unshuffle im2col col2im linalg_vector_norm norm dropout_ feature_dropout "
        "expand_as one_hot erf div_ minimum maximum mish sign eye round ones_like"
    ).split()
)


@dataclass
class FlopCount:
    """The result of one count.

    Args:
        total: multiply-adds (= FLOPs in the seed's convention).
        by_operator: multiply-adds per operator.
        uncounted: operators with no handle and how often they ran; must stay empty.
        dynamic: for an input-dependent model, the per-image counts (`count_dynamic_flops`).
    """

    total: int
    by_operator: dict[str, int] = field(default_factory=dict)
    uncounted: dict[str, int] = field(default_factory=dict)
    dynamic: dict | None = None

    @property
    def gflops(self) -> float:
        return self.total / 1e9


def count_flops(model: nn.Module, input_size: tuple[int, int], device: str | torch.device = "cpu") -> FlopCount:
    """Count one forward of ``model`` on a ``(1, 3, H, W)`` random input.

    Args:
        model: the model in eval mode.
        input_size: (H, W).
        device: where the traced forward runs (a GPU makes large inputs fast).
    """
    x = torch.randn(1, 3, *input_size, device=device)
    analysis = _analyse(model, x)
    return FlopCount(
        total=int(analysis.total()),
        by_operator={k: int(v) for k, v in analysis.by_operator().items()},
        uncounted=dict(analysis.unsupported_ops()),
        dynamic=count_dynamic_flops(model, input_size, device, by_module=analysis.by_module()),
    )


def _analyse(model: nn.Module, x: torch.Tensor) -> FlopCountAnalysis:
    """A FlopCountAnalysis of ``model(x)`` with segbench's handles, its totals already computed."""
    analysis = FlopCountAnalysis(model, (x,))
    for name, handle in EXTRA_HANDLES.items():
        analysis.set_op_handle(name, handle)
    for name in ZERO_COST_OPS:
        analysis.set_op_handle(name, None)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    fvcore_logger = logging.getLogger("fvcore")
    level = fvcore_logger.level
    fvcore_logger.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit deprecation and tracer warnings
            analysis.total()
    finally:
        fvcore_logger.setLevel(level)
    return analysis


# Benchmark inputs of the input-dependent count: this many random images, from this seed.
DYNAMIC_INPUTS = 4
DYNAMIC_SEED = 0


def count_dynamic_flops(
    model: nn.Module,
    input_size: tuple[int, int],
    device: str | torch.device = "cpu",
    inputs: int = DYNAMIC_INPUTS,
    seed: int = DYNAMIC_SEED,
    by_module: dict[str, int] | None = None,
) -> dict | None:
    """Per-image FLOPs of an input-dependent model over ``inputs`` random images (None for a static model).

    The FLOPs of each submodule depend only on the input size: one trace gives them, and each
    benchmark image costs one call of ``inactive_modules``.

    Args:
        model: the model in eval mode; input-dependent when it has ``inactive_modules(x)``.
        input_size: (H, W).
        device: where the traced forward runs.
        inputs: how many benchmark images.
        seed: the generator seed of the images (the same inputs every run).
        by_module: FLOPs per submodule at ``input_size`` when a trace already gave them.
    """
    inactive_modules = getattr(model, "inactive_modules", None)
    if not callable(inactive_modules):
        return None
    generator = torch.Generator().manual_seed(seed)
    images = [torch.randn(1, 3, *input_size, generator=generator).to(device) for _ in range(inputs)]
    by_module = by_module or _analyse(model, images[0]).by_module()
    counts = []
    with torch.no_grad():
        for x in images:
            counts.append(int(by_module[""] - sum(by_module[name] for name in inactive_modules(x))))
    return {
        "inputs": inputs,
        "seed": seed,
        "gflops_mean": sum(counts) / len(counts) / 1e9,
        "gflops_min": min(counts) / 1e9,
        "gflops_max": max(counts) / 1e9,
    }
