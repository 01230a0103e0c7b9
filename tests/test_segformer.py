"""SegFormer: the same function as HF transformers' model and the authors' code, and the published params
and FLOPs.

The hub (pre-v5) layout of every official entry loads through `bench.weights.load_weights` in
test_official_layouts.py; here: transformers' current layout, the authors' own checkpoints (an
mmsegmentation 0.13 fork's layout, with their LayerNorm eps), and mmsegmentation's SegFormer refused.
"""

import importlib.util
import re

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import archs
from archs.backbones.mit import AUTHORS_LAYER_NORM_EPS, HF_LAYER_NORM_EPS
from archs.convert.hf import convert_hf_segformer
from bench.compare import agrees
from bench.errors import BenchError
from bench.measure.flops import count_flops
from bench.measure.params import count_params
from bench.protocol import DATASETS, input_size
from bench.weights import load_weights
from tests.equivalence import assert_equivalent
from tests.publishers import hf_segformer, hub_layout


def hf_model(variant: str, num_classes: int) -> nn.Module:
    """transformers' SegFormer of ``variant`` with random weights that keep activations at scale."""
    with torch.device("meta"):
        shape = archs.build(f"segformer-{variant}", num_classes)
    return hf_segformer(shape, num_classes)


def hf_logits(hf: nn.Module):
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return hf(pixel_values=x).logits

    return run


@pytest.mark.parametrize("variant", ["b0", "b2"])
def test_transformers_current_layout_converts_to_the_same_function(variant):
    hf = hf_model(variant, 150)
    ours = archs.build(f"segformer-{variant}", num_classes=150)
    ours.load_state_dict(convert_hf_segformer(hf.state_dict()))
    x = torch.randn(1, 3, 96, 160)
    assert_equivalent(hf_logits(hf)(x), ours, lambda m: m(x))


# HF's SegFormer (v5 keys) -> the authors' layout (NVlabs/SegFormer mix_transformer.py, segformer_head.py).
HF_TO_AUTHORS = [
    (
        r"^segformer\.stages\.(\d)\.patch_embeddings\.layer_norm\.",
        lambda m: f"backbone.patch_embed{int(m[1]) + 1}.norm.",
    ),
    (r"^segformer\.stages\.(\d)\.patch_embeddings\.", lambda m: f"backbone.patch_embed{int(m[1]) + 1}."),
    (r"^segformer\.stages\.(\d)\.blocks\.(\d+)\.", lambda m: f"backbone.block{int(m[1]) + 1}.{m[2]}."),
    (r"^segformer\.stages\.(\d)\.layer_norm\.", lambda m: f"backbone.norm{int(m[1]) + 1}."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.q_proj\.", ".attn.q."),
    (r"\.attention\.o_proj\.", ".attn.proj."),
    (r"\.attention\.sequence_reduction\.sequence_reduction\.", ".attn.sr."),
    (r"\.attention\.sequence_reduction\.layer_norm\.", ".attn.norm."),
    (r"^decode_head\.linear_projections\.(\d)\.", lambda m: f"decode_head.linear_c{int(m[1]) + 1}."),
    (r"^decode_head\.linear_fuse\.", "decode_head.linear_fuse.conv."),
    (r"^decode_head\.batch_norm\.", "decode_head.linear_fuse.bn."),
    (r"^decode_head\.classifier\.", "decode_head.linear_pred."),
]


def authors_layout(hf: nn.Module) -> dict[str, torch.Tensor]:
    """``hf``'s weights as the authors' code names them (keys and value with keys concatenated in ``kv``)."""
    state = hf.state_dict()
    out = {}
    for key, value in state.items():
        if ".attention.v_proj." in key:
            continue
        if ".attention.k_proj." in key:
            value = torch.cat([value, state[key.replace("k_proj", "v_proj")]])
            key = key.replace(".attention.k_proj.", ".attn.kv.")
        for pattern, repl in HF_TO_AUTHORS:
            key = re.sub(pattern, repl, key)
        out[key] = value
    # mmseg 0.13's BaseDecodeHead builds a classifier (channels=128 in the authors' configs) the head never uses
    classes = hf.decode_head.classifier.out_channels
    out["decode_head.conv_seg.weight"] = torch.randn(classes, 128, 1, 1)
    out["decode_head.conv_seg.bias"] = torch.randn(classes)
    return out


def use_authors_eps(hf: nn.Module) -> None:
    """The authors' LayerNorm eps on HF's modules: 1e-6 in the blocks and stage ends, 1e-5 in the embeddings."""
    for name, module in hf.named_modules():
        if isinstance(module, nn.LayerNorm):
            embedding = name.endswith(("patch_embeddings.layer_norm", "sequence_reduction.layer_norm"))
            module.eps = AUTHORS_LAYER_NORM_EPS.embeddings if embedding else AUTHORS_LAYER_NORM_EPS.blocks


def _norm_eps(model: nn.Module) -> dict[str, float]:
    return {name: m.eps for name, m in model.named_modules() if isinstance(m, nn.LayerNorm)}


def test_the_authors_checkpoint_loads_with_their_layer_norm_eps(tmp_path):
    hf = hf_model("b0", 19)
    use_authors_eps(hf)
    torch.save({"meta": {"CLASSES": list(range(19))}, "state_dict": authors_layout(hf)}, tmp_path / "segformer.b0.pth")
    torch.save(hub_layout(hf.state_dict()), tmp_path / "pytorch_model.bin")
    spec = archs.get_spec("segformer-b0")
    x = torch.randn(1, 3, 64, 96)

    ours = archs.build("segformer-b0", num_classes=19)
    loaded = load_weights(ours, spec, "cityscapes", tmp_path / "segformer.b0.pth")
    assert loaded.format == "mmseg"
    eps = _norm_eps(ours)
    assert eps["backbone.blocks.1.0.norm1"] == eps["backbone.norms.3"] == AUTHORS_LAYER_NORM_EPS.blocks == 1e-6
    assert eps["backbone.patch_embeds.0.norm"] == eps["backbone.blocks.0.0.attn.sr_norm"] == 1e-5
    assert_equivalent(hf_logits(hf)(x), ours, lambda m: m(x))

    # the same weights from an HF file run with HF's eps: 1e-5 everywhere
    load_weights(ours, spec, "cityscapes", tmp_path / "pytorch_model.bin")
    assert set(_norm_eps(ours).values()) == {HF_LAYER_NORM_EPS.blocks} == {1e-5}


def test_the_authors_layout_is_the_one_mmsegs_own_converter_reads(tmp_path):
    """mmseg's tools/model_converters/mit2mmseg.py maps the authors' encoder keys onto mmseg's MiT: the encoder
    it builds from the file this test writes equals ours loaded from that file."""
    pytest.importorskip("mmseg", reason="test extra: mmsegmentation==1.2.2 mmengine mmcv-lite==2.1.0 ftfy")
    from tests.mmseg_stub import build_mmseg_model, config_path

    tool = config_path("_base_/default_runtime.py").parents[2] / "tools" / "model_converters" / "mit2mmseg.py"
    spec_ = importlib.util.spec_from_file_location("mit2mmseg", tool)
    mit2mmseg = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(mit2mmseg)

    hf = hf_model("b0", 19)
    authors = authors_layout(hf)
    mmseg = build_mmseg_model("segformer/segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py", num_classes=19)
    encoder = {k.removeprefix("backbone."): v for k, v in authors.items() if k.startswith("backbone.")}
    mmseg.backbone.load_state_dict(mit2mmseg.convert_mit(encoder))
    for name, module in mmseg.backbone.named_modules():  # mmseg's MiT runs 1e-6 throughout: the authors' eps
        if isinstance(module, nn.LayerNorm) and name.endswith((".0.norm", "attn.norm")):
            module.eps = AUTHORS_LAYER_NORM_EPS.embeddings

    torch.save({"state_dict": authors}, tmp_path / "segformer.b0.pth")
    ours = archs.build("segformer-b0", num_classes=19)
    load_weights(ours, archs.get_spec("segformer-b0"), "cityscapes", tmp_path / "segformer.b0.pth")
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = torch.cat([f.flatten() for f in mmseg.backbone(x)])
    assert_equivalent(expected, ours, lambda m: torch.cat([f.flatten() for f in m.backbone(x)]))


def test_an_mmseg_segformer_checkpoint_is_refused_naming_the_head_difference(tmp_path):
    pytest.importorskip("mmseg", reason="test extra: mmsegmentation==1.2.2 mmengine mmcv-lite==2.1.0 ftfy")
    from tests.mmseg_stub import build_mmseg_model

    mmseg = build_mmseg_model("segformer/segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py", num_classes=19)
    torch.save({"meta": {}, "state_dict": mmseg.state_dict()}, tmp_path / "segformer_mit-b0.pth")
    ours = archs.build("segformer-b0", num_classes=19)
    with pytest.raises(BenchError) as info:
        load_weights(ours, archs.get_spec("segformer-b0"), "cityscapes", tmp_path / "segformer_mit-b0.pth")
    message = str(info.value)
    assert "mmseg's head puts BatchNorm and ReLU after each stage's projection" in message and "\n" not in message
    assert message.startswith(f"{tmp_path / 'segformer_mit-b0.pth'}: its mmseg layout does not convert")


def test_a_foreign_state_dict_is_refused_by_name():
    with pytest.raises(ValueError, match="unexpected keys backbone_fc"):
        convert_hf_segformer({"backbone_fc.weight": torch.zeros(1)})


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
