"""The CNN rows of the comparison table: FCN, PSPNet, DeepLabV3+ (ResNet-101, MobileNetV2) and ICNet.

Correctness: each row's official mmseg checkpoint layout loads through `bench.weights.load_weights` and
gives mmsegmentation 1.2.2's logits (test_official_layouts.py); here the training-only auxiliary heads
convert too, and torchvision's ``fcn_resnet101``/``deeplabv3_resnet101`` give the same outputs through
the torchvision-layout converters. Every comparison runs on weights that keep activations at scale and
fails when one loaded parameter moves (`tests.equivalence`). Faithfulness: parameter and FLOP counts
against the published figures (full-size FLOP counts are marked slow).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import archs
from archs.backbones.mobilenetv2 import IMAGENET_STRIDES, MobileNetV2
from archs.backbones.resnet import ResNet, resnet101_v1c
from archs.convert.mmseg import convert_mmseg_state_dict
from archs.convert.torchvision import convert_torchvision_deeplabv3, convert_torchvision_fcn
from archs.deeplab_v3 import deeplabv3_r101_torchvision
from archs.fcn import fcn_r101_torchvision
from bench.compare import agrees
from bench.measure.flops import count_flops
from bench.measure.params import count_params
from bench.protocol import dataset as protocol_dataset
from bench.weights import check_fit
from tests.equivalence import assert_equivalent, scale_preserving_init

MMSEG_ROWS = {
    # registered name: mmseg 1.x packaged config of the same model
    "fcn-r101": "fcn/fcn_r101-d8_4xb4-160k_ade20k-512x512.py",
    "pspnet-r101": "pspnet/pspnet_r101-d8_4xb4-160k_ade20k-512x512.py",
    "deeplabv3plus-r101": "deeplabv3plus/deeplabv3plus_r101-d8_4xb4-160k_ade20k-512x512.py",
    "fcn-mobilenetv2": "mobilenet_v2/mobilenet-v2-d8_fcn_4xb4-160k_ade20k-512x512.py",
    "pspnet-mobilenetv2": "mobilenet_v2/mobilenet-v2-d8_pspnet_4xb4-160k_ade20k-512x512.py",
    "deeplabv3plus-mobilenetv2": "mobilenet_v2/mobilenet-v2-d8_deeplabv3plus_4xb4-160k_ade20k-512x512.py",
}
MMSEG_FAMILIES = tuple(MMSEG_ROWS)
ALL_NAMES = (*MMSEG_FAMILIES, "icnet")


# --- backbones ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output_stride", "grid", "expected"),
    [
        (8, None, [(1,) * 3, (1,) * 4, (1,) + (2,) * 22, (2, 4, 4)]),
        (16, None, [(1,) * 3, (1,) * 4, (1,) * 23, (1, 2, 2)]),
        (16, (1, 2, 4), [(1,) * 3, (1,) * 4, (1,) * 23, (2, 4, 8)]),
    ],
)
def test_resnet_dilations_follow_mmseg(output_stride, grid, expected):
    net = resnet101_v1c(output_stride=output_stride, multi_grid=grid)
    dilations = [tuple(block.conv2.dilation[0] for block in layer) for layer in net.layers()]
    assert dilations == expected
    with torch.no_grad():
        feats = net.eval()(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == [256, 512, 1024, 2048]
    strides = [64 // f.shape[2] for f in feats]
    assert strides == [4, 8, min(16, output_stride), output_stride]


def test_resnet_v1c_stem_and_caffe_style():
    net = ResNet(50, style="caffe")
    assert [m.kernel_size for m in net.stem if isinstance(m, nn.Conv2d)] == [(3, 3)] * 3
    assert net.layer2[0].conv1.stride == (2, 2) and net.layer2[0].conv2.stride == (1, 1)
    assert resnet101_v1c().layer2[0].conv2.stride == (2, 2)


def test_mobilenetv2_d8_channels_strides_and_torchvision_keys():
    net = MobileNetV2().eval()
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 64, 64))
    assert [(f.shape[1], 64 // f.shape[2]) for f in feats] == [(24, 4), (32, 8), (96, 8), (320, 8)]
    # Keys and shapes are torchvision's features[:18]: its ImageNet checkpoints load as they are.
    tv = torchvision.models.mobilenet_v2().features[:18]
    expected = {f"features.{k}": v.shape for k, v in tv.state_dict().items()}
    assert {k: v.shape for k, v in net.state_dict().items()} == expected


def test_mobilenetv2_undilated_equals_torchvision():
    tv = scale_preserving_init(torchvision.models.mobilenet_v2().features[:18].eval())
    net = MobileNetV2(strides=IMAGENET_STRIDES, dilations=(1,) * 7, out_indices=(6,)).eval()
    net.features.load_state_dict(tv.state_dict())
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        expected = tv(x)
    assert_equivalent(expected, net, lambda m: m(x)[0])


# --- oracles: mmsegmentation -------------------------------------------------------------------


@pytest.fixture(scope="module")
def mmseg_oracle():
    pytest.importorskip("mmseg", reason="test extra: mmsegmentation==1.2.2 mmengine mmcv-lite==2.1.0 ftfy")
    from tests.mmseg_stub import build_mmseg_model, install, mmseg_logits

    install()
    return build_mmseg_model, mmseg_logits


@pytest.mark.parametrize("name", MMSEG_FAMILIES)
def test_the_auxiliary_head_converts_onto_a_model_built_with_it(name, mmseg_oracle):
    """Keys and shapes (meta device): the training-only head the published parameter counts include."""
    build_mmseg_model, _ = mmseg_oracle
    from tests.publishers import registered_on_meta

    with registered_on_meta():
        reference = build_mmseg_model(MMSEG_ROWS[name], num_classes=19, aux_head=True, seed=None)
    with torch.device("meta"):
        ours = archs.build(name, 19, aux_head=True)
    checkpoint = {"meta": {}, "state_dict": reference.state_dict()}  # the layout of an mmseg .pth
    check_fit(ours, convert_mmseg_state_dict(checkpoint, aux_head=True), num_classes=19, source=name)


def test_the_auxiliary_head_equals_mmsegs(mmseg_oracle):
    build_mmseg_model, _ = mmseg_oracle
    reference = scale_preserving_init(build_mmseg_model(MMSEG_ROWS["fcn-mobilenetv2"], num_classes=19, aux_head=True))
    ours = archs.build("fcn-mobilenetv2", 19, aux_head=True)
    ours.load_state_dict(convert_mmseg_state_dict({"state_dict": reference.state_dict()}, aux_head=True))
    x = torch.randn(1, 3, 65, 97)
    with torch.no_grad():
        expected = reference.auxiliary_head(reference.extract_feat(x))
    assert_equivalent(expected, ours, lambda m: m.aux_head(m.backbone(x)), shifted="aux_head.convs.0.1.bias")


def test_mmcv_ops_stand_in_exposes_mmcv_pure_pytorch_ops(mmseg_oracle):
    import mmcv.ops

    assert mmcv.ops.CrissCrossAttention.__module__ == "mmcv.ops.cc_attention"
    grid = torch.full((1, 4, 2), 0.5)
    assert torch.allclose(mmcv.ops.point_sample(torch.ones(1, 2, 5, 5), grid), torch.ones(1, 2, 4))
    with pytest.raises(NotImplementedError, match="compiled"):
        mmcv.ops.PSAMask("collect", (3, 3))


# --- oracles: torchvision ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "builder", "converter"),
    [
        (torchvision.models.segmentation.fcn_resnet101, fcn_r101_torchvision, convert_torchvision_fcn),
        (
            torchvision.models.segmentation.deeplabv3_resnet101,
            deeplabv3_r101_torchvision,
            convert_torchvision_deeplabv3,
        ),
    ],
    ids=["fcn_resnet101", "deeplabv3_resnet101"],
)
def test_equal_outputs_to_torchvision_through_the_converter(factory, builder, converter):
    torch.manual_seed(0)
    reference = factory(weights=None, weights_backbone=None, num_classes=19, aux_loss=True).eval()
    scale_preserving_init(reference)
    ours = builder(num_classes=19).eval()
    ours.load_state_dict(converter(reference.state_dict()))  # strict; torchvision's aux classifier dropped
    x = torch.randn(1, 3, 65, 97)
    with torch.no_grad():
        expected = reference(x)["out"]
    # torchvision resizes the logits to the input inside the model; segbench's harness does it.
    assert_equivalent(
        expected, ours, lambda m: F.interpolate(m(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
    )


# --- the inference contract --------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_NAMES)
def test_aux_head_is_training_only(name):
    model = archs.build(name, 5, aux_head=True)
    inference = archs.build(name, 5)
    assert count_params(inference) < count_params(model)
    spec = archs.get_spec(name)
    x = torch.randn(2, 3, 32, 32)  # batch 2: train-mode BN on pooled 1x1 maps
    with torch.no_grad():
        assert isinstance(model(x), torch.Tensor)  # eval: logits only, the aux head does not run
        assert inference(x).shape == (2, 5, 32 // spec.output_stride, 32 // spec.output_stride)
        out = model.train()(x)
    assert isinstance(out, tuple) and all(o.shape[1] == 5 for o in out)


def test_icnet_matches_the_official_prototxt_parameter_count():
    model = archs.build("icnet", 19)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    # BN folded into the preceding conv (weight + one bias per channel), as in the deploy prototxt.
    folded = sum(c.weight.numel() + (c.out_channels if c.bias is not None else 0) for c in convs)
    folded += sum(b.num_features for b in bns)
    assert folded == 6_685_715
    assert len(convs) == 64  # the prototxt's 64 Convolution layers


# --- published parameter and FLOP counts -------------------------------------------------------


@pytest.mark.parametrize("name", MMSEG_FAMILIES)
def test_params_with_aux_head_agree_with_published(name):
    """The published counts include the training-only auxiliary head (mmseg 0.x get_flops.py)."""
    published = archs.get_spec(name).published["ade20k"]
    assert "auxiliary" in published.note
    with_aux = count_params(archs.build(name, 150, aux_head=True)) / 1e6
    inference = count_params(archs.build(name, 150)) / 1e6
    assert agrees(with_aux, published.params_m, 0.01)
    assert not agrees(inference, published.params_m, 0.005)


def _check_flops(name: str, dataset: str) -> None:
    protocol = protocol_dataset(dataset)
    published = archs.get_spec(name).published[dataset]
    count = count_flops(archs.build(name, protocol.num_classes), protocol.input_size)
    assert count.uncounted == {}
    assert agrees(count.gflops, published.gflops, 0.05), (count.gflops, published.gflops)


@pytest.mark.parametrize("name", MMSEG_FAMILIES)
def test_flops_agree_with_published_ade20k(name):
    _check_flops(name, "ade20k")


@pytest.mark.slow
@pytest.mark.parametrize("name", MMSEG_FAMILIES)
def test_flops_agree_with_published_cityscapes(name):
    _check_flops(name, "cityscapes")
