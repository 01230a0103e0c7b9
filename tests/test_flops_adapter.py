"""Contract of the fvcore adapter: our handles count what the formulas say; gaps are reported."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.measure.flops import count_flops


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        x = self.embed(x)
        b, _, h, w = x.shape
        q = x.flatten(2).transpose(1, 2).reshape(b, h * w, 2, 4).transpose(1, 2)  # (B, 2 heads, L, 4)
        kv = F.avg_pool2d(x, 2).flatten(2).transpose(1, 2).reshape(b, -1, 2, 4).transpose(1, 2)
        return F.scaled_dot_product_attention(q, kv, kv)


def test_sdpa_is_counted_as_two_matmuls():
    count = count_flops(Attention(), (16, 16))
    lq, lk = 16 * 16, 8 * 8
    assert count.by_operator["scaled_dot_product_attention"] == 2 * lq * lk * (4 + 4)
    assert count.uncounted == {}


def test_conv_matches_torch_flop_counter_halved():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.Conv2d(16, 8, 1, bias=False)).eval()
    count = count_flops(model, (32, 48))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 32, 48))
    assert count.total == counter.get_total_flops() // 2


def test_pooling_and_resizes_are_counted_and_activations_are_zero():
    class Net(nn.Module):
        def forward(self, x):
            y = F.max_pool2d(x, 2) + F.adaptive_avg_pool2d(x, 1)
            y = F.interpolate(F.gelu(y), scale_factor=2, mode="nearest") * torch.sigmoid(x)
            return F.interpolate(y, size=(20, 20), mode="bicubic", align_corners=False).softmax(1)

    count = count_flops(Net(), (16, 16))
    assert count.uncounted == {}
    numel = 3 * 16 * 16
    assert count.by_operator["max_pool2d"] == numel
    assert count.by_operator["upsample_nearest2d"] == numel
    assert count.by_operator["upsample_bicubic2d"] == 16 * 3 * 20 * 20


def test_an_operator_without_handle_is_reported_not_dropped():
    class Net(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, dim=1)

    count = count_flops(Net(), (8, 8))
    assert count.uncounted == {"aten::cumsum": 1}


class Gated(nn.Module):
    """Computes both routes and gates one off for a negative mean input, like a dynamic-routing cell."""

    def __init__(self):
        super().__init__()
        self.always = nn.Conv2d(3, 4, 1, bias=False)
        self.route = nn.Conv2d(4, 4, 3, padding=1, bias=False)

    def forward(self, x):
        y = self.always(x)
        return y + self.route(y) * (x.mean() > 0)

    def inactive_modules(self, x):
        return [] if x.mean() > 0 else ["route"]


def test_input_dependent_flops_are_the_static_count_minus_what_each_input_skips():
    from bench.measure.flops import count_dynamic_flops

    size = (8, 8)
    static = count_flops(Gated(), size).total
    route = 8 * 8 * 4 * 4 * 9
    dynamic = count_dynamic_flops(Gated(), size, inputs=16, seed=3)
    generator = torch.Generator().manual_seed(3)
    skipped = [float(torch.randn(1, 3, *size, generator=generator).mean() <= 0) for _ in range(16)]
    assert 0 < sum(skipped) < 16  # both kinds of input occur
    assert dynamic["gflops_max"] * 1e9 == pytest.approx(static)
    assert dynamic["gflops_min"] * 1e9 == pytest.approx(static - route)
    assert dynamic["gflops_mean"] * 1e9 == pytest.approx(static - route * sum(skipped) / 16)
    assert count_dynamic_flops(nn.Conv2d(3, 4, 1), size) is None  # a static model
    assert count_flops(Gated(), size).dynamic == count_dynamic_flops(Gated(), size)  # one trace serves both
