"""Equivalence tests with power: random weights under which a wrongly mapped tensor shows, and a check
that the comparison can fail.

With the reference implementations' own initialisation (weights of std 0.02 or fan-out Kaiming,
zero biases, unit norm weights, zero positional embeddings) activations shrink through the network
and a wrongly mapped norm or bias moves the logits by less than the tolerance. `scale_preserving_init`
keeps activations at unit scale and makes every constant parameter random; `assert_equivalent`
compares, then shifts one of the compared model's parameters and requires the comparison to fail.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

TOL = 1e-4  # max abs difference of fp32 logits
SHIFT = 0.1  # how far `assert_equivalent` moves a parameter

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class _Draws:
    """Seeded draws written into tensors in place."""

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def normal(self, tensor: Tensor, std: float) -> None:
        tensor.copy_((torch.randn(tuple(tensor.shape), generator=self.g) * std).to(tensor.dtype))

    def uniform(self, tensor: Tensor, low: float, high: float) -> None:
        draw = torch.rand(tuple(tensor.shape), generator=self.g) * (high - low) + low
        tensor.copy_(draw.to(tensor.dtype))


def _init_weights(m: nn.Module, draw: _Draws) -> None:
    if isinstance(m, _CONVS):
        draw.normal(m.weight, 1 / math.sqrt(m.weight[0].numel()))
    elif isinstance(m, nn.modules.conv._ConvTransposeNd):
        # weight (in, out / groups, *kernel): each output sums in * kernel / stride products
        fan_in = m.weight.shape[0] * m.weight[0, 0].numel() / math.prod(m.stride)
        draw.normal(m.weight, 1 / math.sqrt(fan_in))
    elif isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
        draw.normal(m.in_proj_weight, 1 / math.sqrt(m.embed_dim))
        if m.in_proj_bias is not None:
            draw.normal(m.in_proj_bias, 0.1)


def _init_norm(m: nn.Module, draw: _Draws) -> None:
    if getattr(m, "weight", None) is not None:
        draw.uniform(m.weight, 0.5, 1.5)
    if getattr(m, "bias", None) is not None:
        draw.normal(m.bias, 0.1)
    if getattr(m, "running_mean", None) is not None:
        draw.normal(m.running_mean, 0.1)
        draw.uniform(m.running_var, 0.5, 1.5)


@torch.no_grad()
def scale_preserving_init(module: nn.Module, seed: int = 0) -> nn.Module:
    """Re-initialise ``module`` in place so that activations keep their scale; returns it.

    - convolution and linear weights (and attention's input projection): N(0, 1/fan_in);
    - biases: N(0, 0.1^2);
    - norms: weight U(0.5, 1.5), bias N(0, 0.1^2); BatchNorm running mean N(0, 0.1^2), variance U(0.5, 1.5);
    - every other parameter that holds one value throughout (positional embeddings and class tokens
      of zeros, residual scales of 0 or 1): U(-1, 1). Parameters the reference draws at random
      itself (EncNet's codewords and smoothing factors) keep their draw.

    Args:
        module: the model (a reference implementation, usually).
        seed: of the random draws.
    """
    draw = _Draws(seed)
    done: set[int] = set()
    for m in module.modules():
        own = dict(m.named_parameters(recurse=False))
        if isinstance(m, _NORMS):
            _init_norm(m, draw)
            done.update(id(p) for p in own.values())
        else:
            _init_weights(m, draw)
        if isinstance(m, (*_CONVS, nn.modules.conv._ConvTransposeNd)) and m.bias is not None:
            draw.normal(m.bias, 0.1)
        done.update(id(p) for name, p in own.items() if name in ("weight", "bias", "in_proj_weight", "in_proj_bias"))
    for p in module.parameters():
        if id(p) not in done and p.is_floating_point() and p.numel() and bool((p == p.flatten()[0]).all()):
            draw.uniform(p, -1.0, 1.0)
    return module


def middle_norm_bias(model: nn.Module) -> str:
    """The state-dict name of the bias of the norm in the middle of ``model`` (module order)."""
    names = [f"{name}.bias" for name, m in model.named_modules() if isinstance(m, _NORMS) and m.bias is not None]
    if not names:
        names = [name for name, _ in model.named_parameters() if name.endswith("bias")]
    return names[len(names) // 2]


@torch.no_grad()
def assert_equivalent(
    expected: Tensor,
    model: nn.Module,
    run: Callable[[nn.Module], Tensor],
    *,
    tol: float = TOL,
    shifted: str | None = None,
) -> tuple[float, float]:
    """``run(model)`` equals ``expected`` within ``tol``, and no longer does once one parameter moves.

    The parameter ``shifted`` (by default `middle_norm_bias`) is moved by `SHIFT` and restored; a
    comparison that this does not break could not catch a wrongly mapped tensor either.

    Args:
        expected: the reference's output.
        model: ours, loaded from the reference's weights.
        run: computes ours' output from ``model``.
        tol: max abs difference allowed.
        shifted: state-dict name of the parameter to move.

    Returns:
        (difference, difference with the parameter moved).
    """
    got = run(model)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    diff = (got - expected).abs().max().item()
    assert diff <= tol, f"differs from the reference by {diff:.2e} (tolerance {tol:.0e})"
    name = shifted or middle_norm_bias(model)
    tensor = model.state_dict()[name]
    saved = tensor.clone()
    tensor.add_(SHIFT)
    try:
        moved = (run(model) - expected).abs().max().item()
    finally:
        tensor.copy_(saved)
    assert moved > tol, f"moving {name} by {SHIFT} changes the output by {moved:.2e} only: this comparison cannot fail"
    return diff, moved
