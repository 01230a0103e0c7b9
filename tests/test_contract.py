"""The common contract, parametrised over every built-in registered model (no per-model test code).

Each model: a complete spec; forward on a small non-square input gives finite float logits of the
right shape at the spec's output stride; the FLOP count leaves no operator uncounted; on a GPU
the whole inference step captures into a CUDA graph and replays the eager prediction.
"""

import math

import pytest
import torch

import archs
from archs import base
from bench.measure.flops import count_flops
from bench.measure.fusion import fuse_for_inference
from bench.measure.speed import inference_step
from bench.protocol import DATASETS

SMALL = (128, 192)


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
    # fp32 as mode `graph-fp32` runs it; fp16 autocast with channels_last as mode `graph` does, then
    # the same in its inference form as `graph-fused` does
    for precision, layout, agree, fused in (
        ("fp32", torch.contiguous_format, 0.999, False),
        ("fp16", torch.channels_last, 0.99, False),
        ("fp16", torch.channels_last, 0.99, True),
    ):
        x = torch.randn(1, 3, 256, 512, device="cuda").contiguous(memory_format=layout)
        if fused:
            fuse_for_inference(model, x)
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
    model = archs.build(name, num_classes=19)
    _randomise_batchnorm(model)
    x = torch.randn(1, 3, *SMALL)
    with torch.no_grad():
        before = model(x)
        report = fuse_for_inference(model, x)
        after = model(x)
    scale = before.abs().max().item()
    assert (after - before).abs().max().item() <= 1e-4 * scale + 1e-5, f"{name}: {report.as_dict()}"
    has_norms = report.folded + report.kept > 0
    assert not has_norms or report.folded > 0, f"{name}: no BatchNorm folded ({report.as_dict()})"
