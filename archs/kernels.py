"""Fused inference kernels (Triton) for the memory-bound steps of the Mix Transformer (SegFormer).

Each kernel computes the same function as the PyTorch operators it replaces, in one pass over
memory instead of several; outputs differ from theirs by float rounding only:

- `add_layer_norm`: the residual addition ``s = x + branch`` and the LayerNorm of ``s`` (a block's
  "add, then the next norm"), reading both inputs once and writing ``s`` and the normalised
  tokens. The sum is rounded to its own dtype exactly as ``x + branch`` is; the statistics are
  computed in fp32. Without ``branch`` it is a plain LayerNorm. Where the normalised tokens only
  feed a linear layer or a convolution, they are written in the autocast precision, which is
  what autocast would cast them to (under autocast, ``F.layer_norm`` writes fp32 and each consumer
  then launches its own cast kernel).
- `dwconv3x3_gelu`: Mix-FFN's depth-wise 3x3 convolution (zero padding 1, bias) and the exact
  (erf) GELU, on tokens in ``(N, H*W, C)`` layout: no transposition, no intermediate tensor, the
  accumulation in fp32 and one rounding at the end.

They run on CUDA tensors, without autograd (inference: ``torch.no_grad`` or
``torch.inference_mode``), outside tracing and ``torch.compile`` (`active`); elsewhere the
model's PyTorch operators run. ``SEGBENCH_KERNELS=0`` in the environment turns them off. A kernel
that fails to compile is reported once (a warning naming the error) and the PyTorch operators
are used from then on. Torch builds without Triton (CPU-only wheels) never use them. In a
process started with ``TRITON_INTERPRET=1`` (Triton's interpreter) they also run on CPU tensors:
slowly, for checking them without a GPU.
"""

from __future__ import annotations

import os
import warnings
from typing import Literal, overload

import torch
from torch import Tensor, nn

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only torch wheels come without Triton
    triton = None

ENV = "SEGBENCH_KERNELS"
_broken: str | None = None  # the first failure; the kernels are not used after it
launched = 0  # kernel launches in this process


def report() -> str:
    """What a record says of the kernels in this process.

    ``used`` (launched and never failed), ``failed: <the error>``, ``off (SEGBENCH_KERNELS=0)``,
    ``no triton``, or ``not used`` (available, but nothing ran them: a CPU, or a model without them).
    """
    if _broken:
        return f"failed: {_broken}"
    if launched:
        return "used"
    if triton is None:
        return "no triton"
    return f"off ({ENV}=0)" if switched_off() else "not used"


def switched_off() -> bool:
    """Whether ``SEGBENCH_KERNELS=0`` is set (read at every call: a test or a script may flip it)."""
    return os.environ.get(ENV, "1") == "0"


def active(x: Tensor) -> bool:
    """Whether the forward on ``x`` uses the fused kernels."""
    if triton is None or _broken is not None or switched_off():
        return False
    if not (x.is_cuda or (x.device.type == "cpu" and _INTERPRETER)):
        return False
    return not (torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling())


def _autocast_dtype(x: Tensor) -> torch.dtype | None:
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None


if triton is not None:

    def _add_layer_norm_kernel(
        x_ptr, r_ptr, s_ptr, y_ptr, w_ptr, b_ptr, rows, cols, eps,
        HAS_BRANCH: tl.constexpr, STORE_SUM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
        col = tl.arange(0, BLOCK_C)[None, :]
        inside = (row < rows) & (col < cols)
        offsets = row.to(tl.int64) * cols + col
        x = tl.load(x_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
        if HAS_BRANCH:
            total = x + tl.load(r_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
            rounded = total.to(s_ptr.dtype.element_ty)  # the sum as `x + branch` rounds it
            if STORE_SUM:
                tl.store(s_ptr + offsets, rounded, mask=inside)
            x = rounded.to(tl.float32)
        mean = tl.sum(x, axis=1) / cols
        centred = tl.where(inside, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / cols + eps)
        weight = tl.load(w_ptr + col, mask=col < cols, other=0.0).to(tl.float32)
        bias = tl.load(b_ptr + col, mask=col < cols, other=0.0).to(tl.float32)
        y = centred * rstd[:, None] * weight + bias
        tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=inside)

    def _dwconv3x3_gelu_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr, pixels, height, width, channels,
        BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        pixel = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        channel = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        in_channels = channel < channels
        plane = height * width
        image = pixel // plane
        h = (pixel % plane) // width
        w = pixel % width
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        for dh in tl.static_range(3):
            for dw in tl.static_range(3):
                hh = h + (dh - 1)
                ww = w + (dw - 1)
                ok = (pixel < pixels) & (hh >= 0) & (hh < height) & (ww >= 0) & (ww < width)
                source = (image * plane + hh * width + ww).to(tl.int64) * channels
                values = tl.load(
                    x_ptr + source[:, None] + channel[None, :], mask=ok[:, None] & in_channels[None, :], other=0.0
                )
                tap = tl.load(w_ptr + channel * 9 + (dh * 3 + dw), mask=in_channels, other=0.0)
                acc += values.to(tl.float32) * tap.to(tl.float32)[None, :]
        acc += tl.load(b_ptr + channel, mask=in_channels, other=0.0).to(tl.float32)[None, :]
        y = 0.5 * acc * (1.0 + tl.erf(acc * 0.7071067811865476))
        target = pixel.to(tl.int64)[:, None] * channels + channel[None, :]
        tl.store(y_ptr + target, y.to(y_ptr.dtype.element_ty), mask=(pixel < pixels)[:, None] & in_channels[None, :])

    # under TRITON_INTERPRET=1, triton.jit gives the interpreter's functions (CPU tensors)
    _KERNELS = {"add_layer_norm": triton.jit(_add_layer_norm_kernel), "dwconv": triton.jit(_dwconv3x3_gelu_kernel)}
    _INTERPRETER = type(_KERNELS["dwconv"]).__name__ == "InterpretedFunction"


# Tiles of 1024 (convolution) and 2048 (norm) elements over 8 warps: 4 and 8 values a thread, which
# ptxas (sm_90) fits in 64 registers a thread without spilling (tests/test_kernels.py compiles them).
_TILE = {"norm": 2048, "dwconv": 1024}


def layer_norm_config(cols: int) -> dict:
    """The `add_layer_norm` kernel's block sizes and warps for rows of ``cols`` channels."""
    block_c = triton.next_power_of_2(cols)
    return {"BLOCK_R": max(1, _TILE["norm"] // block_c), "BLOCK_C": block_c, "num_warps": 8}


def dwconv_config(channels: int) -> dict:
    """The `dwconv3x3_gelu` kernel's block sizes (pixels, channels) and warps."""
    block_c = min(64, triton.next_power_of_2(channels))
    return {"BLOCK_P": _TILE["dwconv"] // block_c, "BLOCK_C": block_c, "num_warps": 8}


def _launch(name: str, grid, *args, **meta) -> bool:
    """Launch a kernel; False (after one warning) when it cannot be compiled or launched."""
    global _broken, launched
    try:
        if torch.autograd.profiler._is_profiler_enabled:  # name the kernel's time in `bench profile`
            with torch.profiler.record_function(f"segbench::{name}"):
                _KERNELS[name][grid](*args, **meta)
        else:
            _KERNELS[name][grid](*args, **meta)
        launched += 1
        return True
    except Exception as exc:  # a compiler or driver failure: fall back to the PyTorch operators
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            raise
        detail = str(exc).strip().splitlines()
        _broken = f"{name}: {type(exc).__name__}" + (f": {detail[0]}" if detail else "")
        warnings.warn(f"segbench's fused kernel {_broken}; using the PyTorch operators instead", stacklevel=3)
        return False


@overload
def add_layer_norm(
    x: Tensor, branch: Tensor, norm: nn.LayerNorm, *, feeds_matmul: bool, keep_sum: Literal[True] = True
) -> tuple[Tensor, Tensor]: ...


@overload
def add_layer_norm(
    x: Tensor, branch: Tensor | None, norm: nn.LayerNorm, *, feeds_matmul: bool, keep_sum: bool = True
) -> tuple[Tensor | None, Tensor]: ...


def add_layer_norm(
    x: Tensor, branch: Tensor | None, norm: nn.LayerNorm, *, feeds_matmul: bool, keep_sum: bool = True
) -> tuple[Tensor | None, Tensor]:
    """``s = x + branch`` (``x`` alone without ``branch``) and ``norm(s)`` in one pass over ``(..., C)`` tokens.

    Args:
        x: the residual stream (or the tokens to normalise).
        branch: what is added to it, of ``x``'s shape, or None.
        norm: the LayerNorm (its weight, bias and eps; over the last dimension).
        feeds_matmul: the normalised tokens only enter linear layers or convolutions, so under
            autocast they are written in its precision (else in the dtype ``norm(s)`` has).
        keep_sum: also write ``s`` (returned first; None when False or without ``branch``).

    Returns:
        ``(s, norm(s))``; the PyTorch operators' result when a kernel cannot run.
    """
    if norm.weight is None or norm.bias is None or tuple(norm.normalized_shape) != (x.shape[-1],):
        return _add_then_norm(x, branch, norm, keep_sum)  # not the kernel's case: a norm without affine
    low = _autocast_dtype(x)
    sum_dtype = torch.promote_types(x.dtype, branch.dtype) if branch is not None else x.dtype
    out_dtype = (low if feeds_matmul else torch.float32) if low is not None else sum_dtype
    cols = x.shape[-1]
    x_c = x.contiguous()
    branch_c = branch.contiguous() if branch is not None else x_c
    store = branch is not None and keep_sum
    if store:
        total = torch.empty(x.shape, dtype=sum_dtype, device=x.device)
    else:  # not written (nor read without a branch): a tensor of the sum's dtype tells the kernel how to round it
        same = next((t for t in (x_c, branch_c) if t.dtype == sum_dtype), None)
        total = same if same is not None else torch.empty(1, dtype=sum_dtype, device=x.device)
    y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    rows = x_c.numel() // cols
    meta = layer_norm_config(cols)
    grid = (triton.cdiv(rows, meta["BLOCK_R"]),)
    if not _launch(
        "add_layer_norm", grid, x_c, branch_c, total, y, norm.weight, norm.bias, rows, cols, norm.eps,
        HAS_BRANCH=branch is not None, STORE_SUM=store, **meta,
    ):  # fmt: skip
        return _add_then_norm(x, branch, norm, keep_sum)
    return (total if store else None), y


def layer_norm(x: Tensor, norm: nn.LayerNorm, *, feeds_matmul: bool) -> Tensor:
    """``norm(x)``: by the `add_layer_norm` kernel where the kernels are `active`, else by ``norm`` itself.

    ``feeds_matmul`` as for `add_layer_norm`.
    """
    if not active(x):
        return norm(x)
    return add_layer_norm(x, None, norm, feeds_matmul=feeds_matmul)[1]


def _add_then_norm(x: Tensor, branch: Tensor | None, norm: nn.LayerNorm, keep_sum: bool):
    """`add_layer_norm` with PyTorch's operators."""
    total = x + branch if branch is not None else x
    return (total if branch is not None and keep_sum else None), norm(total)


def dwconv3x3_gelu(x: Tensor, height: int, width: int, conv: nn.Conv2d) -> Tensor | None:
    """``gelu(conv(tokens as an (N, C, H, W) map))`` back in ``(N, H*W, C)`` layout, for a depth-wise 3x3 ``conv``.

    Args:
        x: ``(N, H*W, C)`` tokens.
        height, width: the map's size.
        conv: depth-wise (groups = C), 3x3, stride 1, padding 1, with bias.

    Returns:
        The result, or None when the kernel cannot run (the caller's PyTorch operators then compute it).
    """
    n, length, channels = x.shape
    low = _autocast_dtype(x)
    y = torch.empty(x.shape, dtype=low or x.dtype, device=x.device)
    pixels = n * length
    meta = dwconv_config(channels)
    grid = (triton.cdiv(pixels, meta["BLOCK_P"]), triton.cdiv(channels, meta["BLOCK_C"]))
    x_c = x.contiguous()
    if not _launch(
        "dwconv", grid, x_c, conv.weight.contiguous(), conv.bias, y, pixels, height, width, channels, **meta
    ):  # fmt: skip
        return None
    return y


def supports_dwconv(conv: nn.Conv2d) -> bool:
    """Whether `dwconv3x3_gelu` computes ``conv``: depth-wise, 3x3, stride 1, padding 1, dilation 1, with bias."""
    return (
        conv.groups == conv.in_channels == conv.out_channels
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.bias is not None
        and conv.padding_mode == "zeros"
    )


__all__ = [
    "ENV",
    "active",
    "add_layer_norm",
    "dwconv3x3_gelu",
    "layer_norm",
    "report",
    "supports_dwconv",
    "switched_off",
]
