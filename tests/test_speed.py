"""Latency measurement: statistics on the CPU; CUDA modes on a GPU (marker gpu)."""

import pytest
import torch

from bench.measure.speed import ModeUnavailable, inference_step, measure_latency
from bench.protocol import SPEED, SpeedProtocol
from tests.toy_models import ToyNet

FAST = SpeedProtocol(warmup_steps=1, repeats=3, min_steps=2, min_repeat_s=0.0, max_repeat_s=1.0)


def test_step_resizes_logits_to_the_input_and_takes_the_argmax():
    model = ToyNet(5).eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        pred = inference_step(model, x, "fp32")()
        logits = torch.nn.functional.interpolate(model(x), size=(32, 48), mode="bilinear", align_corners=False)
    assert pred.shape == (2, 32, 48)
    assert torch.equal(pred, logits.argmax(1))


def test_cpu_latency_statistics_are_consistent():
    result = measure_latency(ToyNet(5), (32, 32), device="cpu", protocol=FAST)
    assert result.repeats == 3 and result.steps >= 2
    assert result.min_ms <= result.median_ms <= result.p90_ms
    assert result.fps == pytest.approx(1000.0 / result.median_ms)
    assert len(result.repeat_medians_ms) == 3 and result.spread >= 0
    assert result.peak_memory_mb is None and result.energy_j_per_frame is None


def test_graph_mode_needs_cuda():
    with pytest.raises(ModeUnavailable, match="CUDA"):
        measure_latency(ToyNet(5), (32, 32), device="cpu", mode="graph", protocol=FAST)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_cuda_modes_measure_and_graph_replays_the_same_prediction(mode):
    model = ToyNet(5).eval()
    result = measure_latency(model, (64, 64), device="cuda", mode=mode, protocol=SPEED["cuda"])
    assert result.median_ms > 0 and result.peak_memory_mb > 0
    x = torch.randn(1, 3, 64, 64, device="cuda")
    with torch.no_grad():
        assert inference_step(model.cuda().float(), x, "fp32")().shape == (1, 64, 64)
