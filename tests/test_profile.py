"""`bench profile`: per-operator time of one model's inference step (CPU here; the GPU path is the same code)."""

import pytest

import archs
from bench.measure.profile import profile_step
from bench.protocol import SpeedProtocol
from tests.conftest import run_bench
from tests.toy_models import ToyNet

FAST = SpeedProtocol(warmup_steps=1, repeats=1, min_steps=1, min_repeat_s=0.0, max_repeat_s=1.0)


def test_operators_are_ranked_by_their_own_time_and_shares_add_up():
    result = profile_step(ToyNet(5), (64, 64), device="cpu", mode="eager", protocol=FAST, steps=3)
    names = [o.name for o in result.operators]
    assert result.timed_on == "cpu" and result.steps == 3
    assert any("conv" in n for n in names) and "aten::argmax" in names
    times = [o.self_ms for o in result.operators]
    assert times == sorted(times, reverse=True)
    assert sum(o.share for o in result.operators) == pytest.approx(1.0)
    conv = next(o for o in result.operators if o.name == "aten::mkldnn_convolution" or o.name == "aten::convolution")
    assert conv.calls >= 1  # per step, not in total


def test_a_fused_mode_profiles_the_inference_form():
    model = archs.build("segformer-b0", num_classes=19)
    result = profile_step(model, (64, 64), device="cpu", mode="eager-fused", protocol=FAST, steps=1)
    assert result.inference_form["rewritten"] == ["decode_head"]
    assert "aten::cat" not in [o.name for o in result.operators]  # the merged decoder concatenates nothing


def test_the_profile_command_writes_its_table(tmp_path):
    proc = run_bench(
        "profile", "toy-w4", "--plugin", "tests.toy_models", "--device", "cpu", "--steps", "2", "--top", "5",
        "--results", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (path,) = tmp_path.glob("*/profiles/*.md")
    assert path.name == "toy-w4-64x64-eager.md"
    text = path.read_text()
    assert "self CPU ms/step" in text and text.count("\n| ") == 5 + 1  # five operators and the header
    assert "Memory layout: NCHW." in text
    held = run_bench(
        "profile", "toy-w4", "--plugin", "tests.toy_models", "--device", "cpu", "--steps", "1", "--layout",
        "channels_last", "--results", str(tmp_path),
    )  # fmt: skip
    assert held.returncode == 0, held.stderr
    assert "Memory layout: channels_last." in (path.parent / "toy-w4-64x64-eager-channels-last.md").read_text()


@pytest.mark.gpu
def test_a_graph_mode_is_profiled_on_the_device_uncaptured():
    result = profile_step(ToyNet(5), (64, 64), device="cuda", mode="graph", protocol=FAST, steps=2)
    assert result.timed_on == "device" and result.total_ms > 0
    assert any("conv" in o.name for o in result.operators)  # kernels attributed to operators, not to a graph
