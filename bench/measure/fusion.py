"""The inference form of a model: the same function, fewer kernels (the ``fused`` speed modes).

Rewrites that are exact in real arithmetic (outputs differ by float rounding only):

1. Every module that defines ``fuse_for_inference()`` rewrites itself (a model's own algebra:
   SegFormer's decoder merges each projection with its slice of the fuse convolution).
2. Every BatchNorm (eval mode) whose only input is the output of a convolution that nothing else
   reads is folded into that convolution and replaced by ``nn.Identity``.
3. Under autocast, a parameter the forward only reads to cast it to the autocast precision is stored
   in that precision (`precast_for_autocast`): autocast's weight cache is off, since it must not
   outlive a CUDA-graph capture, so each such cast would run at every step. This changes no bit.

What qualifies is observed in one probe forward (which operations read each convolution's output and
each parameter), not guessed from module names or types. Peers from other libraries get 2 and 3
too, so a ``fused`` mode compares like with like. FLOPs are counted on the model as built; a fused
latency record adds the FLOPs its inference form executes (docs/adding-a-model.md).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, *_TRANSPOSED)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_TAG = "_segbench_conv_output"
# Reading a tensor's metadata is not reading its values.
_METADATA = {"size", "dim", "numel", "stride", "is_contiguous", "data_ptr", "element_size", "get_device"}


@dataclass
class FusionReport:
    """What `fuse_for_inference` changed.

    Args:
        rewritten: qualified names of the modules that rewrote themselves (their own
            ``fuse_for_inference``).
        folded: number of BatchNorms folded into their convolution.
        kept: number of BatchNorms left as they are (input not a convolution read only by them,
            shared between convolutions, or without running statistics).
    """

    rewritten: list[str] = field(default_factory=list)
    folded: int = 0
    kept: int = 0

    def as_dict(self) -> dict:
        return {"rewritten": self.rewritten, "folded_batchnorms": self.folded, "kept_batchnorms": self.kept}


class _ReadCounter(TorchFunctionMode):
    """Counts the value reads of every tensor tagged as a convolution's output."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[int] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name not in _METADATA and name != "__get__":  # __get__: a property (shape, dtype)
            leaves, _ = tree_flatten((args, kwargs))
            for leaf in leaves:
                tag = getattr(leaf, _TAG, None) if isinstance(leaf, torch.Tensor) else None
                if tag is not None:
                    self.reads[tag] += 1
        return func(*args, **kwargs)


def _foldable_norm(norm: nn.Module) -> bool:
    return (
        isinstance(norm, _NORMS)
        and not norm.training
        and norm.track_running_stats
        and norm.running_mean is not None
        and norm.running_var is not None
    )


def _observe(model: nn.Module, example: torch.Tensor) -> list[tuple[_ConvNd, _BatchNorm]]:
    """(convolution, BatchNorm) pairs where the norm's every input is a convolution output it alone reads."""
    calls: list[tuple[_BatchNorm, int]] = []  # (norm, tag of its input or -1) per norm call
    conv_of: dict[int, _ConvNd] = {}  # tag -> the convolution that produced it
    handles = []

    def tag_output(conv, _inputs, output):
        if isinstance(output, torch.Tensor):
            tag = len(conv_of)
            conv_of[tag] = conv
            setattr(output, _TAG, tag)

    def note_input(norm, inputs):
        found = getattr(inputs[0], _TAG, None) if inputs and isinstance(inputs[0], torch.Tensor) else None
        calls.append((norm, -1 if found is None else found))

    for module in model.modules():
        if isinstance(module, _CONVS):
            handles.append(module.register_forward_hook(tag_output))
        elif _foldable_norm(module):
            handles.append(module.register_forward_pre_hook(note_input))
    counter = _ReadCounter()
    try:
        with torch.no_grad(), counter:
            model(example)
    finally:
        for handle in handles:
            handle.remove()

    by_norm: dict[_BatchNorm, set[_ConvNd | None]] = {}
    for norm, tag in calls:
        by_norm.setdefault(norm, set()).add(None if tag < 0 or counter.reads[tag] != 1 else conv_of[tag])
    outputs_of = Counter(conv_of.values())  # calls of each convolution
    calls_of = Counter(norm for norm, _ in calls)
    pairs: list[tuple[_ConvNd, _BatchNorm]] = []
    for norm, convs in by_norm.items():
        if len(convs) != 1 or None in convs:
            continue
        conv = convs.pop()
        assert conv is not None  # excluded above
        # every output of the convolution goes to this norm (none elsewhere, no other norm)
        if outputs_of[conv] == calls_of[norm] and _fold_supported(conv, norm):
            pairs.append((conv, norm))
    return pairs


def _fold_supported(conv: _ConvNd, norm: _BatchNorm) -> bool:
    return conv.out_channels == norm.num_features and not (isinstance(conv, _TRANSPOSED) and conv.groups != 1)


def _replace_with_identity(model: nn.Module, modules: set[nn.Module]) -> None:
    """Put ``nn.Identity()`` wherever one of ``modules`` is a child (a shared module has several parents)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if child in modules:
                setattr(parent, name, nn.Identity())


def fuse_for_inference(model: nn.Module, example: torch.Tensor) -> FusionReport:
    """Rewrite ``model`` (in eval mode, in place) into its inference form; see the module docstring.

    Args:
        model: the model, already on the device it will run on.
        example: an input of the shape it will run on (one probe forward).
    """
    if model.training:
        raise ValueError("fuse_for_inference rewrites a model in eval mode (call model.eval() first)")
    report = FusionReport()
    with torch.no_grad():
        for name, module in list(model.named_modules()):
            rewrite = getattr(module, "fuse_for_inference", None)
            if callable(rewrite):
                rewrite()
                report.rewritten.append(name or type(model).__name__)
        pairs = _observe(model, example)
        for conv, norm in pairs:
            mean, var = norm.running_mean, norm.running_var
            assert mean is not None and var is not None  # `_foldable_norm` admits only norms with running statistics
            weight, bias = fuse_conv_bn_weights(
                conv.weight,
                conv.bias,
                mean,
                var,
                norm.eps,
                norm.weight,
                norm.bias,
                transpose=isinstance(conv, _TRANSPOSED),
            )
            conv.weight, conv.bias = weight, bias
        _replace_with_identity(model, {norm for _, norm in pairs})
        report.folded = len(pairs)
        report.kept = sum(1 for m in model.modules() if isinstance(m, _NORMS))
    return report


class _ParameterReads(TorchDispatchMode):
    """Per parameter (by identity), how often an operator read it to cast it to ``dtype``, and how often otherwise."""

    def __init__(self, parameters: dict[int, nn.Parameter], dtype: torch.dtype) -> None:
        super().__init__()
        self.parameters = parameters
        self.dtype = dtype
        self.casts: Counter[int] = Counter()
        self.other: Counter[int] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves, _ = tree_flatten((args, kwargs))
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor) and self.parameters.get(id(leaf)) is leaf:
                cast = func is torch.ops.aten._to_copy.default and args[0] is leaf and kwargs.get("dtype") == self.dtype
                (self.casts if cast else self.other)[id(leaf)] += 1
        return func(*args, **kwargs)


def precast_for_autocast(model: nn.Module, example: torch.Tensor, dtype: torch.dtype) -> int:
    """Store in ``dtype`` the parameters that ``model``'s forward under autocast only reads to cast to ``dtype``.

    One probe forward of ``example`` under ``torch.autocast(example.device.type, dtype)`` sees every
    operator that reads a parameter; a parameter whose every read is autocast's cast to ``dtype``
    is converted in place. The forward under autocast then computes the same bits (autocast
    passes a tensor already in ``dtype`` through) without those casts. Returns how many were converted.
    """
    if model.training:
        raise ValueError("precast_for_autocast rewrites a model in eval mode (call model.eval() first)")
    parameters = {id(p): p for p in model.parameters() if p.is_floating_point() and p.dtype != dtype}
    reads = _ParameterReads(parameters, dtype)
    with torch.no_grad(), torch.autocast(example.device.type, dtype=dtype, cache_enabled=False), reads:
        model(example)
    converted = 0
    with torch.no_grad():
        for key, parameter in parameters.items():
            if reads.casts[key] and not reads.other[key]:
                parameter.data = parameter.data.to(dtype)
                converted += 1
    return converted


__all__ = ["FusionReport", "fuse_for_inference", "precast_for_autocast"]
