"""The lecture's path from FCN to DeepLab v3: FCN-VGG16, DeconvNet, SegNet, DeepLab v1/v2/v3, the dense CRF,
Attention-to-Scale and Hierarchical Multi-Scale Attention.

What is proven here (the forward/FLOP-coverage/CUDA-graph contract of every registered model is in
test_contract.py):

- parameter counts within 1% of the papers' (counted on the meta device: no weights allocated);
- the geometry of the reference nets: FCN's crop offsets re-derived with Caffe's coordinate-map
  rules (for transposed and resize-convolution upsampling), DeepLab-LargeFOV's 321 -> 41 output,
  DeconvNet's fc6 at 1x1 on 224x224 inputs, DeepLab v2/v3 dilations and ASPP rates;
- the resize-convolution option removes the transposed convolution's checkerboard on a flat input;
- torchvision's ``deeplabv3_resnet101`` (random weights) loads into our DeepLab v3 through the
  torchvision-layout converter and gives the same outputs with the builder's torchvision options,
  and the paper configuration differs exactly by multi-grid and the extra 3x3 convolution;
- torchvision's VGG-16 classifier converts onto FCN's fc6/fc7 convolutions;
- the CRF equals a brute-force dense mean-field CRF when its window covers the image; on a
  synthetic image it cleans a noisy unary along the colour edges (mIoU up, and above smoothing
  alone); a pixel unlike every cell around it stays finite and keeps its own label; as a model step
  it upsamples the logits and de-normalises the input;
- Attention-to-Scale's output is the attention-weighted sum of the scales' score maps, and HMSA's
  chained fusion equals NVIDIA's ``nscale_forward`` written out literally.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import archs
from archs.attention_scale import AttentionToScale, HierarchicalMultiScaleAttention
from archs.common import learned_upsample
from archs.convert.torchvision import convert_torchvision_deeplabv3_to_v3, convert_torchvision_vgg16_classifier
from archs.crf import DEEPLAB_V1_LARGEFOV_CRF, CRFRefinement, DenseCRF
from archs.deeplab_v3 import deeplabv3_r101
from archs.fcn import FCN_VGG_CROPS
from bench.compare import agrees
from bench.measure.params import count_params
from tests.equivalence import assert_equivalent, scale_preserving_init

TOL = 1e-4

# registered name, classes of the published count, published millions (source in the spec)
PUBLISHED_PARAMS = [
    ("fcn32s-vgg16", 21, 134.0),
    ("fcn16s-vgg16", 21, 134.0),
    ("fcn8s-vgg16", 21, 134.0),
    ("fcn8s-vgg16-resizeconv", 21, 134.0),
    ("segnet-vgg16", 11, 29.5),
    ("deconvnet-vgg16", 21, 252.0),
    ("deeplabv1-largefov-vgg16", 21, 20.5),
    ("deeplabv1-largefov-vgg16-crf", 21, 20.5),
]


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affines, so that a wrong BN mapping shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.25)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


# --- parameters and geometry ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "num_classes", "published"), PUBLISHED_PARAMS)
def test_params_match_the_papers(name, num_classes, published):
    spec = archs.get_spec(name)
    assert all(p.params_m == published and p.source for p in spec.published.values())
    with torch.device("meta"):
        model = archs.build(name, num_classes=num_classes)
    measured = count_params(model) / 1e6
    assert agrees(measured, published, 0.01), f"{name}: {measured:.2f} M vs {published} M"


def _caffe_map(layers):
    """Compose Caffe's coord_map rules: returns (a, b) with input coordinate = a * output coordinate + b."""
    a, b = 1.0, 0.0
    for kind, k, s, p in layers:  # applied from the input side
        if kind in ("conv", "pool"):  # bottom = s * top + (k - 1) / 2 - p
            a, b = a * s, a * ((k - 1) / 2 - p) + b
        elif kind == "deconv":  # top = s * bottom + (k - 1) / 2 - p
            a, b = a / s, b - a * ((k - 1) / 2 - p) / s
        elif kind == "nearest2x":  # top pixel y reads bottom pixel floor(y / 2): centres y = 2 * x + 0.5
            a, b = a / 2, b - a * 0.5 / 2
    return a, b


@pytest.mark.parametrize("mode", ["transposed", "resize"])
def test_fcn_crop_offsets_follow_caffe_coordinate_maps(mode):
    vgg = [("conv", 3, 1, 100), ("conv", 3, 1, 1), ("pool", 2, 2, 0)]
    vgg += [("conv", 3, 1, 1)] * 2 + [("pool", 2, 2, 0)]
    pool3 = vgg + ([("conv", 3, 1, 1)] * 3 + [("pool", 2, 2, 0)])
    pool4 = pool3 + [("conv", 3, 1, 1)] * 3 + [("pool", 2, 2, 0)]
    fc7 = pool4 + [("conv", 3, 1, 1)] * 3 + [("pool", 2, 2, 0), ("conv", 7, 1, 0), ("conv", 1, 1, 0)]
    up2 = [("deconv", 4, 2, 0)] if mode == "transposed" else [("nearest2x", 0, 0, 0), ("conv", 3, 1, 2)]

    def offset(of, ref):  # crop offset of layer `of` so that it aligns with layer `ref`
        (a1, b1), (a2, b2) = _caffe_map(of), _caffe_map(ref)
        assert a1 == a2
        return (b2 - b1) / a1

    assert offset(fc7 + [("deconv", 64, 32, 0)], []) == FCN_VGG_CROPS[32]["out"]
    up_pool4 = fc7 + up2
    assert offset(pool4, up_pool4) == FCN_VGG_CROPS[16]["pool4"] == FCN_VGG_CROPS[8]["pool4"]
    assert offset(up_pool4 + [("deconv", 32, 16, 0)], []) == FCN_VGG_CROPS[16]["out"]
    up_pool3 = up_pool4 + up2
    assert offset(pool3, up_pool3) == FCN_VGG_CROPS[8]["pool3"]
    assert offset(up_pool3 + [("deconv", 16, 8, 0)], []) == FCN_VGG_CROPS[8]["out"]


@pytest.mark.parametrize("name", ["fcn32s-vgg16", "fcn16s-vgg16", "fcn8s-vgg16", "fcn8s-vgg16-resizeconv"])
def test_fcn_output_is_cropped_to_the_input_at_any_size(name):
    with torch.device("meta"):
        model = archs.build(name, num_classes=21)
        for size in ((32, 32), (67, 93), (130, 131), (500, 375)):
            assert model(torch.empty(1, 3, *size)).shape == (1, 21, *size)


def test_reference_net_geometry():
    with torch.device("meta"):
        # DeepLab-LargeFOV: Caffe ceil-mode 3x3 pooling, n = 32k - 31 -> 4k - 3 (321 -> 41).
        largefov = archs.build("deeplabv1-largefov-vgg16", num_classes=21)
        assert largefov(torch.empty(1, 3, 321, 321)).shape == (1, 21, 41, 41)
        # DeconvNet on the paper's 224x224 proposals: fc6 reduces pool5 (7x7) to 1x1, fc6-deconv restores it.
        deconvnet = archs.build("deconvnet-vgg16", num_classes=21)
        shapes = {}
        deconvnet.fc.register_forward_hook(lambda m, i, o: shapes.__setitem__("fc7", tuple(o.shape)))
        deconvnet.fc6_deconv.register_forward_hook(lambda m, i, o: shapes.__setitem__("deconv", tuple(o.shape)))
        assert deconvnet(torch.empty(1, 3, 224, 224)).shape == (1, 21, 224, 224)
        assert shapes == {"fc7": (1, 4096, 1, 1), "deconv": (1, 512, 7, 7)}
        for upsampling in ("transposed", "resize"):
            model = archs.build("deconvnet-vgg16", num_classes=5, upsampling=upsampling)
            assert model(torch.empty(1, 3, 67, 93)).shape == (1, 5, 67, 93)
        assert archs.build("segnet-vgg16", num_classes=11)(torch.empty(1, 3, 67, 93)).shape == (1, 11, 67, 93)

        v2 = archs.build("deeplabv2-r101", num_classes=21)
        v3_16 = archs.build("deeplabv3-r101-os16", num_classes=21)
        v3_8 = archs.build("deeplabv3-r101-os8", num_classes=21)
    dilations = [tuple(b.conv2.dilation[0] for b in layer) for layer in v2.backbone.layers()]
    assert dilations[2] == (2,) * 23 and dilations[3] == (4,) * 3  # no contraction, no multi-grid
    assert v2.backbone.layer2[0].conv1.stride == (2, 2)  # Caffe ResNet: stride on the 1x1
    assert [b.dilation for b in v2.head.branches] == [(r, r) for r in (6, 12, 18, 24)]
    for model, grid, rates in ((v3_16, (2, 4, 8), (6, 12, 18)), (v3_8, (4, 8, 16), (12, 24, 36))):
        assert tuple(b.conv2.dilation[0] for b in model.backbone.layer4) == grid
        assert [m[0].dilation[0] for m in model.head.aspp.convs[1:4]] == list(rates)
        assert isinstance(model.head.refine, nn.Identity)


def test_torchvision_vgg16_classifier_converts_onto_fcn_fc6_fc7():
    with torch.device("meta"):
        fcn = archs.build("fcn32s-vgg16", num_classes=21)
        classifier = {"classifier.0.weight": torch.empty(4096, 25088), "classifier.0.bias": torch.empty(4096)}
        classifier |= {"classifier.3.weight": torch.empty(4096, 4096), "classifier.3.bias": torch.empty(4096)}
    converted = convert_torchvision_vgg16_classifier(classifier)
    expected = {k: v.shape for k, v in fcn.state_dict().items() if k.startswith("fc.")}
    assert {k: v.shape for k, v in converted.items()} == expected


def test_resize_convolution_has_no_checkerboard_on_a_flat_input():
    torch.manual_seed(0)
    flat = torch.ones(1, 4, 8, 8)
    with torch.no_grad():
        transposed = learned_upsample("transposed", 4, 4, padding=1)(flat)[..., 2:-2, 2:-2]
        resize = learned_upsample("resize", 4, 4, padding=1)(flat)[..., 2:-2, 2:-2]
    assert transposed.shape == resize.shape
    # Transposed: even and odd output pixels see different kernel taps -> a period-2 pattern.
    assert (transposed[..., 0::2, :] - transposed[..., 1::2, :]).abs().max() > 1e-3
    assert (resize - resize[..., :1, :1]).abs().max() < 1e-6


# --- DeepLab v3 against torchvision --------------------------------------------------------------------


def test_deeplabv3_reproduces_torchvision_and_says_how_the_paper_differs():
    torch.manual_seed(0)
    reference = torchvision.models.segmentation.deeplabv3_resnet101(
        weights=None, weights_backbone=None, aux_loss=False, num_classes=7
    ).eval()
    scale_preserving_init(reference)
    state = reference.state_dict()
    ours = deeplabv3_r101(num_classes=7, output_stride=8, multi_grid=None, head="torchvision").eval()
    ours.load_state_dict(convert_torchvision_deeplabv3_to_v3(state), strict=True)
    x = torch.randn(1, 3, 65, 97)
    with torch.no_grad():
        expected = reference(x)["out"]
    assert_equivalent(
        expected, ours, lambda m: F.interpolate(m(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
    )

    # The paper's v3 (registered rows): same ASPP, but no 3x3 refinement conv and multi-grid block4.
    paper = deeplabv3_r101(num_classes=7, output_stride=8).eval()
    result = paper.load_state_dict(convert_torchvision_deeplabv3_to_v3(state), strict=False)
    assert result.missing_keys == []
    assert {k.rsplit(".", 1)[0] for k in result.unexpected_keys} == {"head.refine.0", "head.refine.1"}
    tv_dilations = tuple(b.conv2.dilation[0] for b in reference.backbone.layer4)
    assert tv_dilations == (2, 4, 4) and tuple(b.conv2.dilation[0] for b in paper.backbone.layer4) == (4, 8, 16)


# --- dense CRF -------------------------------------------------------------------------------------------


def _dense_crf_reference(logits, image, iterations, w1, theta_alpha, theta_beta, w2, theta_gamma):
    """Mean-field inference with the full N x N kernels (float64); the smoothness kernel truncated like ours."""
    _, k, h, w = logits.shape
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], 1).double()
    rgb = image[0].reshape(3, -1).T.double()
    d_pos = torch.cdist(pos, pos) ** 2
    appearance = torch.exp(-d_pos / (2 * theta_alpha**2) - torch.cdist(rgb, rgb) ** 2 / (2 * theta_beta**2))
    reach = max(1, math.ceil(3 * theta_gamma))
    box = ((pos[:, None] - pos[None]).abs() <= reach).all(-1)
    smoothness = torch.exp(-d_pos / (2 * theta_gamma**2)) * box
    unary = logits[0].reshape(k, -1).T.double()
    q = unary.softmax(1)
    for _ in range(iterations):
        energy = unary + w1 * appearance @ q / appearance.sum(1, keepdim=True)
        energy = energy + w2 * smoothness @ q / smoothness.sum(1, keepdim=True)
        q = energy.softmax(1)
    return energy.T.reshape(1, k, h, w)


def test_crf_is_exact_when_its_window_covers_the_image():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 4, 12, 10, generator=g)
    image = torch.rand(1, 3, 12, 10, generator=g) * 80
    params = {**DEEPLAB_V1_LARGEFOV_CRF, "iterations": 5, "theta_alpha": 6.0, "theta_beta": 20.0, "theta_gamma": 2.0}
    crf = DenseCRF(**params, cell=1, radius=12)
    expected = _dense_crf_reference(logits, image, 5, 4.0, 6.0, 20.0, 3.0, 2.0)
    assert (crf(logits, image).double() - expected).abs().max().item() < TOL


def test_crf_keeps_a_pixel_unlike_any_cell_around_it_finite():
    # Its colour matches no 8x8 cell mean: every pixel-to-cell weight underflows to 0. The exactly
    # counted self term keeps the normaliser >= 1 (no 0/0) and the pixel's strong unary wins.
    image = torch.full((1, 3, 43, 50), 100.0)  # not a multiple of the cell: the edge cells are padded
    image[..., 21, 17] = torch.tensor([250.0, 0.0, 250.0])
    logits = torch.zeros(1, 2, 43, 50)
    logits[:, 0] = 3.0
    logits[0, :, 21, 17] = torch.tensor([0.0, 10.0])
    labels = DenseCRF(**DEEPLAB_V1_LARGEFOV_CRF)(logits, image)[0].argmax(0)
    assert labels[21, 17] == 1 and labels.sum() == 1


def _miou(pred: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    ious = [((pred == c) & (labels == c)).sum() / ((pred == c) | (labels == c)).sum() for c in range(k)]
    return float(sum(ious) / k)


def test_crf_cleans_a_noisy_unary_along_colour_edges():
    g = torch.Generator().manual_seed(0)
    h, w, k = 64, 80, 3
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    labels = torch.zeros(h, w, dtype=torch.long)
    labels[(yy - 28) ** 2 + (xx - 40) ** 2 < 18**2] = 1
    labels[(yy > 48) & (xx < 26)] = 2
    colours = torch.tensor([[30.0, 120.0, 200.0], [200.0, 60.0, 40.0], [90.0, 200.0, 90.0]])
    image = colours[labels].permute(2, 0, 1)[None] + 2 * torch.randn(1, 3, h, w, generator=g)
    onehot = F.one_hot(labels, k).permute(2, 0, 1)[None].float()
    logits = 2 * onehot + 1.5 * torch.randn(1, k, h, w, generator=g)  # about a third of the pixels wrong

    before = _miou(logits[0].argmax(0), labels, k)
    after = _miou(DenseCRF(**DEEPLAB_V1_LARGEFOV_CRF)(logits, image)[0].argmax(0), labels, k)
    smoothing_only = DenseCRF(**{**DEEPLAB_V1_LARGEFOV_CRF, "appearance_weight": 0.0})
    smoothed = _miou(smoothing_only(logits, image)[0].argmax(0), labels, k)
    assert before < 0.6 and after > 0.97
    assert after > smoothed + 0.05  # the colour term, not just smoothing, does the cleaning

    # As a model step: the wrapper upsamples the logits and de-normalises the input before the CRF.
    mean, std = (120.0, 110.0, 100.0), (50.0, 60.0, 70.0)
    coarse = F.avg_pool2d(logits, 4)

    class Fixed(nn.Module):
        def forward(self, x):
            return coarse

    x = (image - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    crf = DenseCRF(**DEEPLAB_V1_LARGEFOV_CRF)
    wrapped = CRFRefinement(Fixed(), crf, mean, std)(x)
    upsampled = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    assert (wrapped - crf(upsampled, image)).abs().max().item() < 1e-3


# --- multi-scale attention --------------------------------------------------------------------------------


def test_attention_to_scale_is_the_attention_weighted_sum_of_score_maps():
    torch.manual_seed(0)
    model = AttentionToScale(5, scales=(1.0, 0.5)).eval()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        out = model(x)
        f1 = model.net.features(x)
        x05 = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=True)
        f05 = F.interpolate(model.net.features(x05), size=f1.shape[-2:], mode="bilinear", align_corners=True)
        s05 = F.interpolate(
            model.net.classifier(model.net.features(x05)), size=f1.shape[-2:], mode="bilinear", align_corners=True
        )
        weights = model.attention(torch.cat([f1, f05], 1)).softmax(1)
        expected = weights[:, :1] * model.net.classifier(f1) + weights[:, 1:] * s05
    assert out.shape == (1, 5, 9, 11)
    assert (out - expected).abs().max().item() < TOL


def test_hmsa_matches_nvidia_nscale_forward():
    torch.manual_seed(0)
    model = HierarchicalMultiScaleAttention(4, scales=(0.5, 1.0, 2.0), width=18).eval()
    randomize_batchnorm(model)
    x = torch.randn(1, 3, 48, 64)

    def up(t, size):
        return F.interpolate(t, size=size, mode="bilinear", align_corners=False)

    with torch.no_grad():
        got = model(x)
        pred = None  # NVIDIA network/ocrnet.py MscaleOCR.nscale_forward, written out
        for s in (2.0, 1.0, 0.5):
            xs = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False, recompute_scale_factor=True)
            feats = model.trunk(xs)
            cls_out, attn_out = up(model.classifier(feats), xs.shape[-2:]), up(model.attention(feats), xs.shape[-2:])
            if pred is None:
                pred = cls_out
            elif s >= 1.0:
                pred = up(pred, cls_out.shape[-2:])
                pred = attn_out * cls_out + (1 - attn_out) * pred
            else:
                cls_out = up(attn_out * cls_out, pred.shape[-2:])
                pred = cls_out + (1 - up(attn_out, pred.shape[-2:])) * pred
    assert got.shape == (1, 4, 48, 64)
    assert pred.std() > 100 * TOL
    assert (got - pred).abs().max().item() < TOL
