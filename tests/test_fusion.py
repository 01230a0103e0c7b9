"""The inference form (`bench.measure.fusion`): BatchNorm folding where it is exact, a model's own rewrites."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archs
from archs.convert.hf import convert_hf_segformer
from bench.measure.flops import count_flops
from bench.measure.fusion import fuse_for_inference, precast_for_autocast
from bench.measure.latency import measure_latency
from bench.protocol import SpeedProtocol
from tests.equivalence import assert_equivalent
from tests.test_contract import _randomise_batchnorm
from tests.test_segformer import hf_model

FAST = SpeedProtocol(warmup_steps=1, repeats=2, min_steps=2, min_repeat_s=0.0, max_repeat_s=1.0)


class ReadTwice(nn.Module):
    """The convolution's output feeds the norm and, again, the residual: folding would change the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class SharedNorm(nn.Module):
    """One norm after two different convolutions: it cannot be folded into both."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.a(x)) + self.bn(self.b(x))


class Foldable(nn.Module):
    """Conv -> BN, transposed conv -> BN, a shared conv -> BN block applied twice, and a norm after a view."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU())
        self.up = nn.ConvTranspose2d(6, 4, 2, stride=2)
        self.up_bn = nn.BatchNorm2d(4)
        self.shared = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
        self.flat_bn = nn.BatchNorm1d(4)

    def forward(self, x):
        y = self.up_bn(self.up(self.block(x)))
        y = self.shared(self.shared(y))
        return self.flat_bn(y.flatten(2)).view_as(y)


def _check(model, x):
    _randomise_batchnorm(model)
    model.eval()
    with torch.no_grad():
        before = model(x)
        report = fuse_for_inference(model, x)
        after = model(x)
    assert (after - before).abs().max().item() <= 1e-5 * before.abs().max().item() + 1e-6
    return report


def test_norms_fold_into_convolutions_and_transposed_convolutions():
    report = _check(Foldable(), torch.randn(2, 3, 8, 8))
    # block, up and shared fold (shared once, though applied twice); the norm after a view stays
    assert (report.folded, report.kept) == (3, 1)


@pytest.mark.parametrize("model", [ReadTwice, SharedNorm])
def test_a_norm_is_kept_where_folding_would_change_the_function(model):
    report = _check(model(), torch.randn(1, 3, 8, 8))
    assert report.folded == 0 and report.kept == 1


def test_a_model_in_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval mode"):
        fuse_for_inference(Foldable().train(), torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize("variant", ["b0", "b2"])
def test_merged_segformer_decoder_equals_hf_and_drops_the_fuse_convolution(variant):
    hf = hf_model(variant, 150)
    ours = archs.build(f"segformer-{variant}", num_classes=150)
    ours.load_state_dict(convert_hf_segformer(hf.state_dict()))
    x = torch.randn(1, 3, 96, 128)
    built = count_flops(ours, (256, 320)).total
    with torch.no_grad():
        expected = hf(pixel_values=x).logits
        report = fuse_for_inference(ours, x)
    assert report.rewritten == ["decode_head"]
    # the merged projections carry the fuse convolution and BatchNorm: moving one stage's projection bias shows
    assert_equivalent(expected, ours, lambda m: m(x), shifted="decode_head.merged.0.bias")
    # the 1x1 convolution over 4E channels at stride 4 is what goes: E * 4E multiply-adds per output pixel
    width = 256 if variant == "b0" else 768
    saved = built - count_flops(ours, (256, 320)).total
    assert saved >= width * 4 * width * (256 // 4) * (320 // 4)


def test_the_segformer_decoder_merges_only_in_eval_mode_and_needs_no_no_grad():
    head = archs.build("segformer-b0", num_classes=19).decode_head
    with pytest.raises(ValueError, match="eval"):
        head.train().fuse_for_inference()
    head.eval().fuse_for_inference()  # with autograd on: the merge itself runs without it
    assert head.merged is not None and not hasattr(head, "fuse")


def test_the_hf_peer_folds_its_decoder_norm():
    hf = hf_model("b0", 19)
    with torch.no_grad():
        report = fuse_for_inference(hf, torch.randn(1, 3, 64, 64))
    assert report.folded == 1 and report.kept == 0


def test_a_fused_mode_runs_on_a_cpu_and_records_the_inference_form():
    model = archs.build("segformer-b0", num_classes=19)
    result = measure_latency(model, (64, 64), device="cpu", mode="eager-fused", protocol=FAST)
    form = result.inference_form
    assert form["rewritten"] == ["decode_head"]
    built = count_flops(archs.build("segformer-b0", num_classes=19), (64, 64)).gflops
    assert 0 < form["executed_gflops"] < built
    assert sum(form["executed_by_operator"].values()) / 1e9 == form["executed_gflops"]  # the ceiling's split
    plain = measure_latency(archs.build("segformer-b0", num_classes=19), (64, 64), device="cpu", protocol=FAST)
    assert plain.inference_form is None


def test_a_fused_model_still_traces_without_uncounted_operators():
    model = archs.build("fcn-mobilenetv2", num_classes=19)
    fuse_for_inference(model, torch.randn(1, 3, 64, 64))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert count_flops(model, (64, 64)).uncounted == {}
    with torch.no_grad():
        assert F.softmax(model(torch.randn(1, 3, 64, 64)), 1).isfinite().all()


class ConvNormLinear(nn.Module):
    """conv -> BN -> LayerNorm over channels -> linear, and a linear weight also read outside its layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 5)
        self.gate = nn.Linear(8, 5)

    def forward(self, x):
        y = self.norm(self.bn(self.conv(x)).flatten(2).transpose(1, 2))
        return self.fc(y) * self.gate(y) + self.gate.weight.float().mean()


def _under_autocast(model, x, dtype):
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, cache_enabled=False):
        return model(x)


@pytest.mark.parametrize("name", ["toy", "segformer-b0"])
def test_precast_stores_what_autocast_casts_and_changes_no_bit(name):
    torch.manual_seed(0)
    model = (ConvNormLinear() if name == "toy" else archs.build(name, num_classes=19)).eval()
    _randomise_batchnorm(model)
    x = torch.randn(1, 3, 32, 48)
    before = _under_autocast(model, x, torch.bfloat16)
    converted = precast_for_autocast(model, x, torch.bfloat16)
    assert torch.equal(_under_autocast(model, x, torch.bfloat16), before)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert converted == sum(d == torch.bfloat16 for d in dtypes.values()) > 0
    if name == "toy":
        assert dtypes["conv.weight"] == dtypes["fc.weight"] == dtypes["fc.bias"] == torch.bfloat16
        # norms run in fp32 under autocast; gate.weight is also read as itself
        assert {dtypes[n] for n in ("bn.weight", "norm.weight", "gate.weight")} == {torch.float32}
        assert dtypes["gate.bias"] == torch.bfloat16
    else:  # every convolution and linear layer, no LayerNorm or BatchNorm
        layers = (nn.Conv2d, nn.Linear)
        for module_name, module in model.named_modules():
            for p in module.parameters(recurse=False):
                assert (p.dtype == torch.bfloat16) == isinstance(module, layers), module_name


def test_precast_refuses_a_model_in_training_mode():
    with pytest.raises(ValueError, match="eval"):
        precast_for_autocast(ConvNormLinear(), torch.randn(1, 3, 8, 8), torch.bfloat16)
