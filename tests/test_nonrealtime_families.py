"""The rest of the non-real-time row: OCRNet, SETR, EncNet, CCNet, GSCNN, Auto-DeepLab, Axial-DeepLab,
Dynamic Routing.

What is proven here (the shape/FLOP-coverage/CUDA-graph contract of every model is in
test_contract.py):

- equal outputs to mmsegmentation's OCRNet-HRNetW48, SETR (naive, PUP, MLA), EncNet-R101 and
  CCNet-R101, and GSCNN's official layout, through `bench.weights.load_weights` (test_official_layouts.py);
  here the training-only auxiliary heads convert too;
- the published parameter counts, reproduced with what they include (auxiliary heads, SETR's
  Cityscapes positional grid), and the published FLOPs at the protocol sizes (slow);
- for the models without a runnable reference, their building blocks against the papers'
  equations on small inputs: criss-cross attention, the encoding layer, the GSCNN gated conv and
  in-model Canny (against OpenCV), pre-activation residual blocks, position-sensitive axial
  attention, the Auto-DeepLab cell path, the Dynamic Routing gates and its input-dependent FLOPs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fvcore.nn import FlopCountAnalysis
from torch import nn

import archs
from archs.autodeeplab import BACKBONE_PATH, AutoDeepLab
from archs.axial_deeplab import AxialDeepLab
from archs.backbones.axial_resnet import AxialAttention, AxialResNet
from archs.backbones.hrnet import HRNet
from archs.backbones.vit import VisionTransformer
from archs.backbones.wider_resnet import IdentityResidualBlock
from archs.ccnet import CrissCrossAttention
from archs.convert.mmseg import convert_mmseg_ccnet, convert_mmseg_encnet, convert_mmseg_setr
from archs.dynamic_routing import DynamicCell, DynamicRoutingNet
from archs.encnet import Encoding
from archs.gscnn import CannyEdges, GatedSpatialConv2d
from bench.compare import agrees
from bench.errors import BenchError
from bench.measure.flops import count_flops
from bench.measure.params import count_params
from bench.protocol import dataset as protocol_dataset
from bench.protocol import input_size
from bench.weights import check_fit

TOL = 1e-4
NAMES = (
    "ocrnet-hr48",
    "setr-pup-vit-l",
    "setr-naive-vit-l",
    "setr-mla-vit-l",
    "encnet-r101",
    "ccnet-r101",
    "gscnn-wrn38",
    "auto-deeplab-f48",
    "axial-deeplab-xl",
    "dynamic-routing-l33-psp",
)


def randomize_norms(model: nn.Module, seed: int = 1) -> None:
    """Non-trivial BN/LN statistics and affines (fresh ones would hide a swapped mean/var or scale)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)) and m.weight is not None:
            n = m.weight.shape[0]
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def test_registered_names_are_in_the_non_realtime_scale():
    registered = set(archs.list_archs("non-realtime"))
    assert set(NAMES) <= registered


# --- oracles: mmsegmentation -------------------------------------------------------------------


@pytest.fixture(scope="module")
def mmseg():
    pytest.importorskip("mmseg", reason="test extra: mmsegmentation==1.2.2 mmengine mmcv-lite==2.1.0 ftfy")
    from tests.mmseg_stub import build_mmseg_model, install, mmseg_logits

    install()
    return build_mmseg_model, mmseg_logits


# training-only heads of each checkpoint: registered name -> (mmseg config, converter)
AUX_HEADS = {
    "setr-naive-vit-l": ("setr/setr_vit-l_naive_8xb2-160k_ade20k-512x512.py", convert_mmseg_setr),
    "setr-pup-vit-l": ("setr/setr_vit-l_pup_8xb2-160k_ade20k-512x512.py", convert_mmseg_setr),
    "setr-mla-vit-l": ("setr/setr_vit-l_mla_8xb2-160k_ade20k-512x512.py", convert_mmseg_setr),
    "encnet-r101": ("encnet/encnet_r101-d8_4xb2-80k_cityscapes-512x1024.py", convert_mmseg_encnet),
    "ccnet-r101": ("ccnet/ccnet_r101-d8_4xb2-80k_cityscapes-512x1024.py", convert_mmseg_ccnet),
}


@pytest.mark.parametrize("name", sorted(AUX_HEADS))
def test_the_training_only_parts_convert_onto_a_model_built_with_them(name, mmseg):
    """Keys and shapes (meta device): the auxiliary heads (and EncNet's SE layer) the published counts include."""
    from tests.publishers import registered_on_meta

    build_mmseg_model, _ = mmseg
    config, converter = AUX_HEADS[name]
    classes = 150 if "ade20k" in config else 19
    with registered_on_meta():
        reference = build_mmseg_model(config, num_classes=classes, aux_head=True, seed=None)
    with torch.device("meta"):
        ours = archs.build(name, classes, aux_head=True)
    checkpoint = {"meta": {}, "state_dict": reference.state_dict()}  # the layout of an mmseg .pth
    check_fit(ours, converter(checkpoint, aux_head=True), num_classes=classes, source=name)


# --- published parameter counts ----------------------------------------------------------------

# What the published figure counts: builder keywords and classes that reproduce it.
PUBLISHED_PARAMS = {
    "ocrnet-hr48": ("ade20k", {}, 150),  # the soft-region head is part of inference; no aux head
    "encnet-r101": ("ade20k", {"aux_head": True}, 150),  # + SE layer and auxiliary FCN head
    "ccnet-r101": ("ade20k", {"aux_head": True}, 150),  # + auxiliary FCN head
    "setr-pup-vit-l": ("cityscapes", {"aux_head": True, "img_size": 768}, 19),  # + 3 aux heads, 48x48 grid
    "auto-deeplab-f48": ("cityscapes", {}, 19),
    "axial-deeplab-xl": ("cityscapes", {"instance_branch": True}, 19),  # + panoptic instance decoder and heads
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_params_agree_with_published(name):
    dataset, kwargs, num_classes = PUBLISHED_PARAMS[name]
    published = archs.get_spec(name).published[dataset].params_m
    measured = count_params(archs.build(name, num_classes, **kwargs)) / 1e6
    assert agrees(measured, published, 0.01), (measured, published)
    if kwargs.get("aux_head"):  # the inference model is smaller than the published count
        assert count_params(archs.build(name, num_classes)) / 1e6 < published * 0.99


@pytest.mark.parametrize("name", ["encnet-r101", "ccnet-r101"])
def test_training_only_parts_run_only_in_training(name):
    model = archs.build(name, 5, aux_head=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert isinstance(model(x), torch.Tensor)
        out = model.train()(x)
    assert isinstance(out, tuple) and len(out) == 2


# --- published FLOPs (full-size counts: slow) --------------------------------------------------

PUBLISHED_FLOPS = [
    ("ocrnet-hr48", "ade20k"),
    ("ocrnet-hr48", "cityscapes"),
    ("encnet-r101", "ade20k"),
    ("encnet-r101", "cityscapes"),
    ("ccnet-r101", "ade20k"),
    ("ccnet-r101", "cityscapes"),
    ("auto-deeplab-f48", "cityscapes"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "dataset"), PUBLISHED_FLOPS)
def test_flops_agree_with_published(name, dataset):
    protocol = protocol_dataset(dataset)
    published = archs.get_spec(name).published[dataset]
    size = input_size(archs.get_spec(name), dataset)  # where the harness counts it
    assert size == (published.input_size or protocol.input_size)
    count = count_flops(archs.build(name, protocol.num_classes), size)
    assert count.uncounted == {}
    assert agrees(count.gflops, published.gflops, 0.05), (count.gflops, published.gflops)


@pytest.mark.slow
def test_dynamic_routing_maximum_flops_agree_with_published():
    """The module runs every route, so its count is the maximum over inputs; the paper's 270.0 G is the
    per-image count of trained gates (with its own counting of norms and activations)."""
    published = archs.get_spec("dynamic-routing-l33-psp").published["cityscapes"].gflops
    count = count_flops(archs.build("dynamic-routing-l33-psp", 19), protocol_dataset("cityscapes").input_size)
    assert count.uncounted == {}
    assert agrees(count.gflops, published, 0.05), (count.gflops, published)


# --- building blocks against the papers' equations ---------------------------------------------


def test_hrnet_branches_have_the_v2_widths_and_strides():
    net = HRNet(18).eval()
    with torch.no_grad():
        outs = net(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape[1:]) for o in outs] == [(18, 16, 24), (36, 8, 12), (72, 4, 6), (144, 2, 3)]


def test_vit_interpolates_positions_and_adopts_a_checkpoint_grid():
    vit = VisionTransformer(img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2, out_indices=(0,)).eval()
    assert vit.pos_embed.shape == (1, 1 + 16, 32)
    same = vit._pos_embed(4, 4)
    assert same is vit.pos_embed
    grid = vit._pos_embed(2, 6)[:, 1:].reshape(1, 2, 6, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(
        vit.pos_embed[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2), size=(2, 6), mode="bilinear"
    )
    assert max_diff(grid, expected) == 0
    state = vit.state_dict()
    state["pos_embed"] = torch.randn(1, 1 + 36, 32)  # a checkpoint trained on a 6x6 grid
    vit.load_state_dict(state)
    assert vit.grid == 6 and vit.pos_embed.shape == (1, 37, 32)
    with torch.no_grad():
        assert vit(torch.randn(1, 3, 40, 72))[0].shape == (1, 32, 3, 5)  # padded to 48x80


def test_criss_cross_attention_follows_the_equation():
    torch.manual_seed(0)
    cca = CrissCrossAttention(16).eval()
    cca.gamma.data.fill_(0.5)
    x = torch.randn(2, 16, 5, 7)
    with torch.no_grad():
        out = cca(x)
        q, k, v = cca.query_conv(x), cca.key_conv(x), cca.value_conv(x)
    expected = torch.empty_like(x)
    for n in range(2):
        for h in range(5):
            for w in range(7):
                # Column without the pixel itself, then the whole row (the pixel counted once).
                keys = [(i, w) for i in range(5) if i != h] + [(h, j) for j in range(7)]
                e = torch.stack([q[n, :, h, w] @ k[n, :, i, j] for i, j in keys])
                a = e.softmax(0)
                agg = sum(a[t] * v[n, :, i, j] for t, (i, j) in enumerate(keys))
                expected[n, :, h, w] = 0.5 * agg + x[n, :, h, w]
    assert max_diff(out, expected) <= 1e-5


def test_encoding_layer_follows_the_equation():
    torch.manual_seed(0)
    enc = Encoding(8, 4)
    x = torch.randn(2, 8, 3, 5)
    flat = x.flatten(2).transpose(1, 2)  # (N, HW, C)
    residual = flat[:, :, None, :] - enc.codewords[None, None]  # x_i - d_k
    assign = (enc.scale * residual.pow(2).sum(-1)).softmax(dim=2)  # softmax_k(s_k ||x_i - d_k||^2)
    expected = (assign[..., None] * residual).sum(1)  # e_k = sum_i a_ik (x_i - d_k)
    with torch.no_grad():
        assert max_diff(enc(x), expected) <= 1e-5


def test_gated_spatial_conv_follows_the_equation():
    torch.manual_seed(0)
    gate = GatedSpatialConv2d(4, 3).eval()
    randomize_norms(gate)
    s, r = torch.randn(1, 4, 6, 6), torch.randn(1, 1, 6, 6)
    bn_in, conv1, _, conv2, bn_out, _ = gate._gate_conv
    with torch.no_grad():
        alpha = torch.sigmoid(bn_out(conv2(F.relu(conv1(bn_in(torch.cat([s, r], 1)))))))
        expected = torch.einsum("oc,nchw->nohw", gate.weight[:, :, 0, 0], s * (1 + alpha))
        assert max_diff(gate(s, r), expected) <= 1e-5


def test_the_official_gscnn_checkpoint_is_not_downloaded_from_google_drive(tmp_path, monkeypatch):
    from bench import weights

    # the official file is on Google Drive: `official` says how to get it instead of downloading a web page
    monkeypatch.setenv("SEGBENCH_WEIGHTS", str(tmp_path))
    with pytest.raises(BenchError, match="Google Drive.*--weights PATH"):
        weights.fetch(archs.get_spec("gscnn-wrn38"), "cityscapes", progress=False)


def test_identity_residual_block_is_pre_activation():
    block = IdentityResidualBlock(8, (8, 8)).eval()
    proj = IdentityResidualBlock(8, (16, 16), stride=2).eval()
    randomize_norms(block)
    randomize_norms(proj)
    x = torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        a = block.bn1(x)
        assert max_diff(block(x), x + block.convs.conv2(block.convs.bn2(block.convs.conv1(a)))) <= 1e-5
        a = proj.bn1(x)
        expected = proj.proj_conv(a) + proj.convs.conv2(proj.convs.bn2(proj.convs.conv1(a)))
        assert max_diff(proj(x), expected) <= 1e-5 and expected.shape == (1, 16, 4, 4)


def _canny_test_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Discs of random colours with mild noise, lightly blurred: edges of natural-image lengths."""
    img = np.zeros((h, w, 3))
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(5, h / 2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img = img + rng.normal(0, 4, img.shape)
    img = (img + np.roll(img, 1, 0) + np.roll(img, 1, 1) + np.roll(img, (1, 1), (0, 1))) / 4
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", ["shapes", "noise"])
def test_in_model_canny_equals_opencv(kind):
    cv2 = pytest.importorskip("cv2", reason="test extra: opencv-python-headless")
    rng = np.random.default_rng(0)
    canny = CannyEdges(10, 100)
    for h, w in ((64, 96), (37, 53)):
        if kind == "shapes":
            img = _canny_test_image(rng, h, w)
        else:
            img = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        expected = cv2.Canny(img, 10, 100)
        got = canny(torch.from_numpy(img).permute(2, 0, 1)[None].float())[0, 0].numpy()
        assert expected.sum() > 0
        assert np.array_equal(got, expected.astype(np.float32))


def _axial_attention_reference(layer: AxialAttention, x: torch.Tensor) -> torch.Tensor:
    """Position-sensitive axial attention (paper eq. 4) along the width, one position at a time: each query
    o meets the keys p within the span (|p - o| <= (span - 1) / 2; all of them for span=None), every
    relative embedding indexed by the offset p - o."""
    n, _, h, w = x.shape
    qkv = layer.bn_qkv(layer.qkv(x))
    d, heads = layer.d, layer.heads
    rel = layer.relative  # (2d, 2 * max_distance + 1): offset p - o at column max_distance + p - o
    center = layer.max_distance
    radius = w if layer.span is None else (layer.span - 1) // 2
    bn_s, bn_o = layer.bn_similarity, layer.bn_output

    def bn(norm, c, value):
        return (value - norm.running_mean[c]) / torch.sqrt(norm.running_var[c] + norm.eps) * norm.weight[c] + norm.bias[
            c
        ]

    out = torch.zeros(n, heads * d, h, w)
    for b in range(n):
        for row in range(h):
            for g in range(heads):
                chans = qkv[b, g * 2 * d : (g + 1) * 2 * d, row]  # (2d, W)
                q, k, v = chans[: d // 2], chans[d // 2 : d], chans[d:]
                for o in range(w):
                    keys = [p for p in range(w) if abs(p - o) <= radius]
                    logits = []
                    for p in keys:
                        r = rel[:, center + p - o]
                        qk = q[:, o] @ k[:, p]
                        qr = q[:, o] @ r[: d // 2]
                        kr = k[:, p] @ r[d // 2 : d]
                        logits.append(bn(bn_s, g, qk) + bn(bn_s, heads + g, qr) + bn(bn_s, 2 * heads + g, kr))
                    a = torch.stack(logits).softmax(0)
                    for c in range(d):
                        oc = g * d + c
                        content = sum(a[i] * v[c, p] for i, p in enumerate(keys))
                        positional = sum(a[i] * rel[d + c, center + p - o] for i, p in enumerate(keys))
                        out[b, oc, row, o] = bn(bn_o, 2 * oc, content) + bn(bn_o, 2 * oc + 1, positional)
    return out


# (5, 9): a local window, border and interior queries; (3, 9): a narrower one; (5, 3): every pair is within
# the span (attended globally); None: the whole axis.
@pytest.mark.parametrize(("span", "width"), [(5, 9), (3, 9), (5, 3), (None, 7)])
def test_axial_attention_follows_the_equation(span, width):
    torch.manual_seed(0)
    layer = AxialAttention(8, 8, heads=2, axis=3, span=span, max_distance=6).eval()
    randomize_norms(layer)
    x = torch.randn(2, 8, 3, width)
    with torch.no_grad():
        expected = _axial_attention_reference(layer, x)
        assert max_diff(layer(x), expected) <= 1e-4
        height = AxialAttention(8, 8, heads=2, axis=2, span=span, max_distance=6).eval()
        height.load_state_dict(layer.state_dict())
        assert max_diff(height(x.transpose(2, 3)), expected.transpose(2, 3)) <= 1e-4


@pytest.mark.parametrize("span", [5, None])
def test_axial_attention_chunking_and_training_path_agree(span, monkeypatch):
    from archs.backbones import axial_resnet

    torch.manual_seed(0)
    layer = AxialAttention(16, 16, heads=4, axis=2, span=span, max_distance=8).eval()
    randomize_norms(layer)
    x = torch.randn(2, 16, 9, 7)  # 14 sequences of 9
    # The largest tensor per sequence: the (heads, L, L) similarities, or the (L, span, 3/2 C) key/value windows.
    per_sequence = 4 * 9 * 9 if span is None else 9 * 5 * 24
    with torch.no_grad():
        whole = layer(x)
        monkeypatch.setattr(axial_resnet, "MAX_ATTENTION_ELEMENTS", per_sequence * 3)  # 3 sequences per chunk
        assert max_diff(layer(x), whole) <= 1e-6
        layer.training = True  # the unfolded path (batch norms still in inference mode)
        for bn in (layer.bn_qkv, layer.bn_similarity, layer.bn_output):
            bn.training = False
        assert max_diff(layer(x), whole) <= 1e-5


# Keys per query on a 4 x 12 map along the width: the window (padding included) or the whole row.
@pytest.mark.parametrize(("span", "keys"), [(5, 5), (None, 12)])
def test_axial_attention_flops_count_every_query_key_pair(span, keys):
    layer = AxialAttention(3, 16, heads=2, axis=3, span=span).eval()
    count = count_flops(layer, (4, 12))
    assert count.uncounted == {}
    pixels = 4 * 12
    assert count.by_operator["conv"] == 3 * 32 * pixels
    # q.k, q.r^q, k.r^k over C/2 channels, content and positional retrieval over C: 3.5 * C per query-key pair.
    attention = count.by_operator.get("matmul", 0) + count.by_operator.get("einsum", 0)
    assert attention == 7 * 16 // 2 * keys * pixels


# DeepLab2's unit test counts of its axial_deeplab_l and axial_deeplab_s backbones (stem at width 1,
# 509-embedding tables).
@pytest.mark.parametrize(("width", "expected"), [(1.0, 43_841_920), (0.5, 11_565_856)])
def test_axial_resnet_parameters_equal_deeplab2s(width, expected):
    assert count_params(AxialResNet(width, stem_multiplier=1.0)) == expected


@pytest.mark.slow
@pytest.mark.parametrize(("width", "published"), [(2.0, None), (1.0, 687.4)])
def test_axial_deeplab_panoptic_flops_agree_with_published(width, published):
    """The panoptic models (instance branch included) at 1024x2048 against the paper's Cityscapes M-Adds:
    XL from the spec, L (44.9 M, 687.4 B) as a check of the span and stem at the other width."""
    if published is None:
        published = archs.get_spec("axial-deeplab-xl").published["cityscapes"].gflops
    count = count_flops(AxialDeepLab(19, width, instance_branch=True).eval(), (1024, 2048))
    assert count.uncounted == {}
    assert agrees(count.gflops, published, 0.05), (count.gflops, published)


def test_auto_deeplab_follows_the_searched_path():
    model = AutoDeepLab(19, filter_multiplier=8).eval()
    sizes = []
    for cell in model.cells:
        cell.register_forward_hook(lambda m, i, o: sizes.append((o.shape[1], o.shape[-1])))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 128)).shape == (1, 19, 16, 32)
    # Level l: stride 4 * 2**l (width 128 / stride) and 5 * F * 2**l channels.
    assert sizes == [(5 * 8 * 2**level, 128 // (4 * 2**level)) for level in BACKBONE_PATH]


def test_auto_deeplab_returns_to_the_level_resolution_on_8k_plus_1_inputs():
    """Going down a level, the path takes back its resolution there: 2h - 1 on DeepLab's 8k + 1 sizes."""
    model = AutoDeepLab(19, filter_multiplier=8).eval()
    sizes = []
    for cell in model.cells:
        cell.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:])))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 129, 257)).shape == (1, 19, 33, 65)
    # TensorFlow's sizes: (n - 1) / stride + 1 at stride 4 * 2**level.
    assert sizes == [(128 // (4 * 2**level) + 1, 256 // (4 * 2**level) + 1) for level in BACKBONE_PATH]


def test_dynamic_cell_gates_route_and_a_closed_cell_passes_its_input():
    torch.manual_seed(0)
    cell = DynamicCell(8, allow_up=True, allow_down=True).eval()
    randomize_norms(cell)
    x = torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        up, keep, down, gates = cell(x)
        expected_gates = F.relu(torch.tanh(cell.gate(x)))
        assert max_diff(gates, expected_gates) == 0 and gates.shape == (1, 3, 1, 1)
        h = cell.ops(x) + x
        assert max_diff(keep, gates[:, :1] * F.relu(h)) <= 1e-6
        assert up.shape == (1, 4, 16, 16) and down.shape == (1, 16, 4, 4)
        cell.gate[2].bias.data.fill_(-10.0)  # every gate closed: the cell is dropped
        cell.gate[2].weight.data.zero_()
        up, keep, down, _ = cell(x)
    assert max_diff(keep, x) == 0 and up.abs().max() == 0 and down.abs().max() == 0


def _dynamic_flops(model: DynamicRoutingNet, x: torch.Tensor) -> tuple[float, float]:
    """(per-image FLOPs the official code executes, static maximum), one fvcore trace."""
    analysis = FlopCountAnalysis(model, (x,))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    by_module = analysis.by_module()
    skipped = sum(by_module[name] for name in model.inactive_modules(x))
    return by_module[""] - skipped, by_module[""]


def _set_gates(cells, bias: float) -> None:
    for cell in cells:
        cell.gate[2].bias.data.fill_(bias)
        cell.gate[2].weight.data.zero_()


def test_dynamic_routing_flops_depend_on_the_input():
    torch.manual_seed(0)
    model = DynamicRoutingNet(19, num_layers=4).eval()
    x = torch.randn(1, 3, 64, 64)
    cells = [model.init_cell] + [cell for layer in model.layers for cell in layer]
    with torch.no_grad():
        _set_gates(cells, 10.0)  # every route open: what the module always computes
        dynamic, static = _dynamic_flops(model, x)
        assert model.inactive_modules(x) == [] and dynamic == static
        _set_gates(model.layers[-1], -10.0)  # the last layer's cells closed: they pass their input on
        assert model.inactive_modules(x) == [f"layers.3.{i}.ops" for i in range(4)]
        dynamic, static = _dynamic_flops(model, x)
    skipped = 0
    for i, cell in enumerate(model.layers[-1]):  # at stride 4 * 2**i: 16 / 2**i pixels a side
        side = 16 // 2**i
        skipped += FlopCountAnalysis(cell.ops, (torch.randn(1, 64 * 2**i, side, side),)).total()
    assert static - dynamic == skipped > 0
