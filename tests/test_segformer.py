"""SegFormer: the same function as HF transformers' model, and the published params and FLOPs."""

import re

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import SegformerConfig, SegformerForSemanticSegmentation

import archs
from archs.segformer import convert_hf_state_dict
from bench.compare import agrees
from bench.measure.flops import count_flops
from bench.measure.params import count_params
from bench.protocol import DATASETS, input_size

HF_CONFIGS = {
    "b0": ([32, 64, 160, 256], [2, 2, 2, 2], 256),
    "b1": ([64, 128, 320, 512], [2, 2, 2, 2], 256),
    "b2": ([64, 128, 320, 512], [3, 4, 6, 3], 768),
}


def hf_model(variant: str, num_classes: int) -> SegformerForSemanticSegmentation:
    hidden, depths, decoder = HF_CONFIGS[variant]
    config = SegformerConfig(
        hidden_sizes=hidden,
        depths=depths,
        decoder_hidden_size=decoder,
        num_labels=num_classes,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation(config).eval()
    bn = model.decode_head.batch_norm  # random statistics, so BatchNorm is not the identity
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("variant", ["b0", "b2"])
@pytest.mark.parametrize("size", [(512, 512), (384, 640)])
def test_equal_outputs_to_hf_through_the_converter(variant, size):
    hf = hf_model(variant, 150)
    ours = archs.build(f"segformer-{variant}", num_classes=150)
    ours.load_state_dict(convert_hf_state_dict(hf.state_dict()))
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        expected = hf(pixel_values=x).logits
        got = ours(x)
    assert got.shape == expected.shape == (1, 150, size[0] // 4, size[1] // 4)
    assert (got - expected).abs().max().item() <= 1e-4


# The pre-v5 transformers layout, in which the nvidia/segformer-* hub checkpoints are stored.
V5_TO_V4 = [
    (r"segformer\.stages\.(\d+)\.patch_embeddings\.", r"segformer.encoder.patch_embeddings.\1."),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.", r"segformer.encoder.block.\1.\2."),
    (r"segformer\.stages\.(\d+)\.layer_norm\.", r"segformer.encoder.layer_norm.\1."),
    (r"\.layernorm_before\.", ".layer_norm_1."),
    (r"\.layernorm_after\.", ".layer_norm_2."),
    (r"\.attention\.q_proj\.", ".attention.self.query."),
    (r"\.attention\.k_proj\.", ".attention.self.key."),
    (r"\.attention\.v_proj\.", ".attention.self.value."),
    (r"\.attention\.sequence_reduction\.sequence_reduction\.", ".attention.self.sr."),
    (r"\.attention\.sequence_reduction\.layer_norm\.", ".attention.self.layer_norm."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".mlp.dense1."),
    (r"\.mlp\.fc2\.", ".mlp.dense2."),
    (r"decode_head\.linear_projections\.(\d+)\.", r"decode_head.linear_c.\1."),
]


def test_hub_checkpoint_layout_converts_too():
    hf = hf_model("b0", 19)
    v4 = {}
    for key, value in hf.state_dict().items():
        for pattern, repl in V5_TO_V4:
            key = re.sub(pattern, repl, key)
        v4[key] = value
    assert "segformer.encoder.block.1.0.attention.self.query.weight" in v4
    ours = archs.build("segformer-b0", num_classes=19)
    ours.load_state_dict(convert_hf_state_dict(v4))
    x = torch.randn(1, 3, 128, 256)
    with torch.no_grad():
        assert (ours(x) - hf(pixel_values=x).logits).abs().max().item() <= 1e-4


def test_a_foreign_state_dict_is_refused_by_name():
    with pytest.raises(ValueError, match="unexpected keys backbone_fc"):
        convert_hf_state_dict({"backbone_fc.weight": torch.zeros(1)})


def _check_published(name: str, dataset: str):
    spec = archs.get_spec(name)
    published = spec.published[dataset]
    model = archs.build(name, num_classes=DATASETS[dataset].num_classes)
    params_m = count_params(model) / 1e6
    count = count_flops(model, input_size(spec, dataset))
    assert count.uncounted == {}
    if dataset == "ade20k":  # the published params column is the 150-class model's
        assert agrees(params_m, published.params_m, 0.01), (params_m, published.params_m)
    assert agrees(count.gflops, published.gflops, 0.05), (count.gflops, published.gflops)


@pytest.mark.parametrize("variant", ["b0", "b1", "b2", "b3", "b4", "b5"])
def test_params_and_flops_agree_with_published_ade20k(variant):
    _check_published(f"segformer-{variant}", "ade20k")


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["b0", "b1", "b2", "b3", "b4", "b5"])
def test_params_and_flops_agree_with_published_cityscapes(variant):
    _check_published(f"segformer-{variant}", "cityscapes")


def test_fvcore_count_differs_from_torch_counter_only_by_what_torch_does_not_count():
    """torch's counter counts 2 per multiply-add in conv, linear and attention; fvcore also counts
    norms and resizes. Removing those, the two must agree exactly."""
    model = archs.build("segformer-b0", num_classes=150)
    size = (256, 320)
    count = count_flops(model, size)
    # the math backend decomposes attention into matmuls that torch's counter sees
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(torch.randn(1, 3, *size))
    extra = sum(v for k, v in count.by_operator.items() if k in ("layer_norm", "batch_norm", "upsample_bilinear2d"))
    assert count.total - extra == counter.get_total_flops() // 2
