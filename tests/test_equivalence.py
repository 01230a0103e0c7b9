"""The equivalence tests' own tools (`tests.equivalence`): they make a wrongly mapped tensor show, and refuse a
comparison that could not show one."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import archs
from archs.convert.hf import convert_hf_segformer
from tests.equivalence import TOL, assert_equivalent, scale_preserving_init


class Residual(nn.Module):
    """A residual scale initialised to 0 and a positional embedding of zeros, as reference models hold them."""

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))


def test_every_weight_keeps_the_scale_and_every_constant_is_drawn():
    torch.manual_seed(0)
    model = nn.ModuleDict(
        {
            "conv": nn.Conv2d(64, 32, 3),
            "depthwise": nn.Conv2d(32, 32, 3, groups=32),
            "bn": nn.BatchNorm2d(32),
            "ln": nn.LayerNorm(32),
            "linear": nn.Linear(256, 8),
            "attention": nn.MultiheadAttention(64, 4),
            "residual": Residual(),
        }
    )
    codewords = model["linear"].weight.detach().clone()
    scale_preserving_init(model, seed=1)
    for name, fan_in in (("conv", 64 * 9), ("depthwise", 9), ("linear", 256)):
        assert model[name].weight.std().item() == pytest.approx(1 / math.sqrt(fan_in), rel=0.2), name
    assert model["attention"].in_proj_weight.std().item() == pytest.approx(1 / 8, rel=0.2)
    assert not torch.equal(model["linear"].weight, codewords)
    tensors = dict(model.named_parameters()) | {k: v for k, v in model.named_buffers() if v.is_floating_point()}
    constant = [name for name, t in tensors.items() if t.numel() > 1 and bool((t == t.flatten()[0]).all())]
    assert constant == []
    assert model["residual"].gamma.item() != 0
    assert (model["bn"].running_var > 0).all()


def _segformer_b0_pair(scaled: bool):
    from tests.publishers import hf_segformer

    with torch.device("meta"):
        shape = archs.build("segformer-b0", 19)
    torch.manual_seed(0)
    # transformers' own initialisation: weights of std 0.02, zero biases, unit norms
    hf = hf_segformer(shape, 19, scale_preserving=scaled)
    ours = archs.build("segformer-b0", 19)
    ours.load_state_dict(convert_hf_segformer(hf.state_dict()))
    return hf, ours


@pytest.mark.parametrize("scaled", [False, True], ids=["transformers-init", "scale-preserving"])
def test_a_comparison_that_a_moved_norm_bias_cannot_break_is_refused(scaled):
    """With transformers' own initialisation a norm bias in the middle of SegFormer moved by 0.1 changes the
    logits by about 1e-5, under the tolerance: a wrongly mapped norm would pass, so the comparison is refused."""
    hf, ours = _segformer_b0_pair(scaled)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = hf(pixel_values=x).logits
    if scaled:
        diff, moved = assert_equivalent(expected, ours, lambda m: m(x))
        assert diff <= TOL < moved
    else:
        with pytest.raises(AssertionError, match="this comparison cannot fail"):
            assert_equivalent(expected, ours, lambda m: m(x))
