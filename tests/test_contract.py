"""The common contract, parametrised over every built-in registered model (no per-model test code).

Each model: a complete spec; forward on a small non-square input gives finite float logits of the
right shape at the spec's output stride; the FLOP count leaves no operator uncounted; the whole
inference step (and its inference form) runs on the meta device at both protocol sizes, which no
forward that reads tensor values on the host can do, and at sides that are no multiple of 32 (ADE20K's
whole images); on a GPU the step captures into a CUDA graph and replays the eager prediction.
"""

import contextlib
import math
from unittest import mock

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import archs
from archs import base
from bench.measure.flops import count_flops
from bench.measure.fusion import fuse_for_inference, precast_for_autocast
from bench.measure.step import inference_step
from bench.protocol import DATASETS, input_size

SMALL = (128, 192)
FORM_SIZE = (64, 96)  # float64 forwards are slow on a CPU; folding is checked at any size
# Sides that are no multiple of 32: ADE20K's whole-image protocol feeds short side 512 and any long side.
ANY_SIZES = ((97, 131), (512, 683), (384, 500))


def builtin_names() -> list[str]:
    return [n for n in archs.list_archs() if base._entry(n).builder.__module__.startswith("archs.")]


NAMES = builtin_names()


@pytest.mark.parametrize("name", NAMES)
def test_spec_is_complete(name):
    spec = archs.get_spec(name)
    assert spec.name == name and spec.family and spec.encoder and spec.paper and spec.year > 1990
    assert spec.output_stride >= 1 and len(spec.mean) == len(spec.std) == 3
    for dataset, published in spec.published.items():
        assert dataset in DATASETS
        if any(v is not None for v in (published.params_m, published.gflops, published.fps, published.miou)):
            assert published.source, f"{name}/{dataset}: published numbers need their source"
    for weights in spec.weights:
        assert weights.dataset in DATASETS and weights.format
        assert weights.uri.startswith(("hf://", "https://", "http://"))
        # a checkpoint in another layout than ours comes with the converter that loads it
        assert weights.format == "segbench" or callable(weights.converter), f"{name}: {weights.format} has no converter"
    for dataset, size in spec.input_size.items():
        assert dataset in DATASETS and len(size) == 2


@pytest.mark.parametrize("name", NAMES)
def test_forward_shape_and_flop_coverage(name):
    spec = archs.get_spec(name)
    model = archs.build(name, num_classes=19)
    assert not model.training
    x = torch.randn(1, 3, *SMALL)
    with torch.no_grad():
        logits = model(x)
    assert logits.dtype == torch.float32 and logits.shape[:2] == (1, 19)
    for got, size in zip(logits.shape[-2:], SMALL):
        assert abs(got - size / spec.output_stride) <= 1, (
            f"{name}: logits {tuple(logits.shape)} at stride {spec.output_stride}"
        )
    assert torch.isfinite(logits).all()
    count = count_flops(model, SMALL)
    assert count.uncounted == {}, f"{name}: operators without a FLOP handle: {count.uncounted}"
    assert count.total > 0 and math.isfinite(count.gflops)


class _HostTensors(TorchDispatchMode):
    """Records the host tensors (more than a scalar) that enter a forward running on the meta device.

    On a GPU each of them is a host-to-device copy inside the forward, which a CUDA graph cannot
    capture: an operator given a host tensor, or a tensor made from Python data (``torch.tensor``,
    ``torch.as_tensor``). 0-d tensors pass: PyTorch hands them to kernels as scalars.
    """

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._patches: list = []

    def _recording(self, make):
        def wrapper(*args, **kwargs):
            tensor = make(*args, **kwargs)
            if tensor.dim() > 0:
                self.found.append(f"torch.{make.__name__} of shape {tuple(tensor.shape)} from host data")
            return tensor

        return wrapper

    def __enter__(self):
        names = ("tensor", "as_tensor")
        self._patches = [mock.patch.object(torch, n, self._recording(getattr(torch, n))) for n in names]
        for patch in self._patches:
            patch.start()
        return super().__enter__()

    def __exit__(self, *exc_info):
        for patch in self._patches:
            patch.stop()
        return super().__exit__(*exc_info)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for leaf in tree_leaves((args, kwargs)):
            if isinstance(leaf, torch.Tensor) and leaf.device.type != "meta" and leaf.dim() > 0:
                self.found.append(f"{func} given a {leaf.device.type} tensor of shape {tuple(leaf.shape)}")
        return func(*args, **kwargs)


def _meta_step(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor | None, list[str]]:
    """The inference step run on meta: its prediction (None if it raised) and what keeps it from a CUDA graph.

    A meta tensor has no values, so ``.item()``, ``bool(tensor)``, ``nonzero`` and any Python
    control flow on tensor data raise; a host tensor meeting a meta tensor raises or is recorded.
    """
    host = _HostTensors()
    try:
        with torch.no_grad(), host:
            prediction = inference_step(model, x, "fp32")()
    except (RuntimeError, NotImplementedError) as exc:
        return None, host.found + [f"{type(exc).__name__}: {str(exc).splitlines()[0]}"]
    return prediction, host.found


@pytest.fixture
def meta_autocast(monkeypatch):
    """``torch.autocast`` for models that disable it locally: autocast has no meta backend (nothing to disable)."""
    real = torch.autocast

    def autocast(device_type, *args, **kwargs):
        return contextlib.nullcontext() if device_type == "meta" else real(device_type, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", autocast)


class _Forward(torch.nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize(
    "forward, capturable",
    [
        (lambda x: x * x.mean().item(), False),
        (lambda x: x if x.mean() > 0 else -x, False),  # Python control flow on a value
        (lambda x: x + x.flatten()[x.flatten() > 0].sum(), False),  # a data-dependent shape
        (lambda x: x * torch.ones(3).view(1, 3, 1, 1), False),  # a tensor made on the host
        (lambda x: x * torch.tensor([1.0, 2.0, 3.0], device=x.device).view(1, 3, 1, 1), False),
        (lambda x: x * torch.arange(3, device=x.device).view(1, 3, 1, 1), True),
        (lambda x: x * torch.tensor(2.0) + x.shape[-1], True),  # scalars and shapes are fine
    ],
)
def test_the_meta_step_tells_what_a_cuda_graph_cannot_capture(forward, capturable):
    prediction, problems = _meta_step(_Forward(forward), torch.randn(1, 3, 8, 8, device="meta"))
    assert (problems == []) is capturable, problems
    assert (prediction is not None) or not capturable


@pytest.mark.parametrize("name", NAMES)
def test_inference_step_needs_no_tensor_values_on_the_host(name, meta_autocast):
    """The step runs on the meta device (shapes only, no memory) at both protocol sizes, plain and fused.

    What keeps a forward from being captured into a CUDA graph, or makes it synchronise with the
    host, fails here (see `_meta_step`): the capture contract checked without a GPU (the `gpu`
    test below captures for real).
    """
    spec = archs.get_spec(name)
    with torch.device("meta"):
        model = archs.build(name, num_classes=19)
    # the plain form at one protocol size, the inference form at the other (a meta forward of the
    # large models takes seconds: shape functions run in Python)
    for dataset, fused in (("ade20k", False), ("cityscapes", True)):
        size = input_size(spec, dataset)
        x = torch.randn(1, 3, *size, device="meta")
        if fused:
            with torch.no_grad():
                fuse_for_inference(model, x)  # once, before a capture
        prediction, problems = _meta_step(model, x)
        assert problems == [], f"{name} at {size}{' fused' * fused}: {problems[:3]}"
        assert prediction.shape == (1, *size)


def _covers_the_input(extent: int, size: int, stride: int) -> bool:
    """Whether logits of ``extent`` at ``stride`` cover a side of ``size`` pixels, give or take one logit.

    A model may pad its input to a multiple of at most 32 and return the padded area's logits: the
    padding a ViT's patch grid needs (mmseg's ViT keeps it); most size their maps from the input or
    crop the padding back.
    """
    return size - stride <= extent * stride <= -(-size // 32) * 32 + stride


@pytest.mark.parametrize("name", NAMES)
def test_any_input_size_runs_with_logits_at_the_output_stride(name, meta_autocast):
    """The inference step at sides that are no multiple of 32, on the meta device: shapes only, so that the
    largest models cost a second or two each instead of a CPU forward at 512x683."""
    spec = archs.get_spec(name)
    with torch.device("meta"):
        model = archs.build(name, num_classes=19)
    logits = []
    model.register_forward_hook(lambda module, args, out: logits.append(out))
    for size in ANY_SIZES:
        prediction, problems = _meta_step(model, torch.empty(1, 3, *size, device="meta"))
        assert problems == [], f"{name} at {size}: {problems[:3]}"
        assert prediction.shape == (1, *size)
        shape = tuple(logits[-1].shape)
        assert shape[:2] == (1, 19) and len(shape) == 4, f"{name} at {size}: logits {shape}"
        assert all(_covers_the_input(e, s, spec.output_stride) for e, s in zip(shape[2:], size)), (
            f"{name} at {size}: logits {shape} do not cover the input at stride {spec.output_stride}"
        )


def _captured_prediction(step):
    """The step's prediction replayed from a CUDA graph (side-stream warm-up first, as CUDA requires)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    graph.replay()
    torch.cuda.synchronize()
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_inference_step_captures_into_a_cuda_graph(name):
    model = archs.build(name, num_classes=19).cuda()
    # fp32 as mode `graph-fp32` runs it; fp16 autocast in either layout as mode `graph` may (it keeps
    # the faster), then the same in its inference form as `graph-fused` does
    for precision, layout, agree, fused in (
        ("fp32", torch.contiguous_format, 0.999, False),
        ("fp16", torch.contiguous_format, 0.99, False),
        ("fp16", torch.channels_last, 0.99, False),
        ("fp16", torch.channels_last, 0.99, True),
    ):
        x = torch.randn(1, 3, 256, 512, device="cuda").contiguous(memory_format=layout)
        if fused:
            fuse_for_inference(model, x)
            precast_for_autocast(model, x, torch.float16)  # as `graph-fused` stores the weights
        model = model.to(memory_format=layout)
        with torch.no_grad():
            step = inference_step(model, x, precision)
            eager = step()
            out = _captured_prediction(step)
        share = (out == eager).float().mean().item()
        assert share > agree, (
            f"{name} {precision}{' fused' * fused}: the replayed graph agrees with eager on {share:.4f} of pixels"
        )


def _randomise_batchnorm(model: torch.nn.Module) -> None:
    """Running statistics and affine parameters away from their initial values, so folding them is not trivial."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            if module.affine:
                module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.data.copy_(torch.rand(n, generator=generator) - 0.5)


@pytest.mark.parametrize("name", NAMES)
def test_inference_form_computes_the_same_function(name):
    # float64: in float32 the folded weights' rounding flips near-tied max-pooling switches (DeconvNet's
    # and SegNet's unpooling reuses them), which moves whole values: a different function only by rounding
    torch.manual_seed(0)
    model = archs.build(name, num_classes=19).double()
    _randomise_batchnorm(model)
    x = torch.randn(1, 3, *FORM_SIZE, dtype=torch.float64)
    with torch.no_grad():
        try:
            before = model(x)
        except RuntimeError:  # parts kept in float32 on purpose (the CRF, EncNet's encoding, GSCNN's Canny)
            model, x = model.float(), x.float()
            before = model(x)
        report = fuse_for_inference(model, x)
        after = model(x)
    scale = before.abs().max().item()
    assert (after - before).abs().max().item() <= 1e-4 * scale + 1e-5, f"{name}: {report.as_dict()}"
    has_norms = report.folded + report.kept > 0
    assert not has_norms or report.folded > 0, f"{name}: no BatchNorm folded ({report.as_dict()})"
