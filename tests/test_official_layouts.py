"""Every official checkpoint loads from a file in its publisher's layout, through the loader `bench eval` uses.

Parametrised over the registry (`bench.weights.list_official`), so a new entry is tested with no new
test code; its publisher's file comes from `tests.publishers` (the reference implementation where one
runs here: mmsegmentation 1.2.2 and transformers; the converter's inverse for GSCNN, which has none):

- every entry, on the meta device (keys and shapes, no weights): the file's layout is recognised as
  the entry's declared format and converts onto exactly the model's keys and shapes;
- every row, with real random weights (`tests.equivalence.scale_preserving_init`) on one of its
  entries: the file, saved as its publisher saves it, loads through `bench.weights.load_weights`
  and gives the reference implementation's logits within 1e-4 on a small input, and moving one
  loaded parameter breaks that match (the comparison can fail). The rows whose mapping others
  exercise (`COVERED_BY_OTHERS`) run with ``-m slow``.
"""

from __future__ import annotations

import gc

import pytest
import torch

import archs
from bench.evaluate.inference import forward_logits
from bench.protocol import DATASETS
from bench.weights import check_fit, checkpoint_tensors, convert, list_official, load_weights, recognise_format
from tests.equivalence import assert_equivalent
from tests.publishers import publisher_file

pytest.importorskip("mmseg", reason="test extra: mmsegmentation==1.2.2 mmengine mmcv-lite==2.1.0 ftfy")
pytest.importorskip("transformers", reason="test extra: transformers")

ENTRIES = list_official()
# one entry per row: Cityscapes where there is one (19 classes; SETR's 48x48 positional grid)
ROWS = {spec.name: (spec, weights) for spec, weights in sorted(ENTRIES, key=lambda e: e[1].dataset == "cityscapes")}
# Rows whose mapping others already exercise, run with the full-size FLOP counts (`-m slow`): the R101
# PSPNet and DeepLabV3+ (the MobileNetV2 rows' heads, fcn-r101's backbone), SegFormer B1 and B3-B5 (B0 and
# B2 cover both decoder widths), SETR-naive (PUP's head with other kernel sizes).
COVERED_BY_OTHERS = {
    "pspnet-r101",
    "deeplabv3plus-r101",
    "segformer-b1",
    "segformer-b3",
    "segformer-b4",
    "segformer-b5",
    "setr-naive-vit-l",
}
# small, not square, and no multiple of 32: the models' padding and resizing paths run too
INPUT = (1, 3, 56, 88)


@pytest.mark.parametrize(("spec", "weights"), ENTRIES, ids=[f"{s.name}-{w.dataset}" for s, w in ENTRIES])
def test_every_official_layout_is_recognised_and_converts_onto_the_model(spec, weights):
    publisher = publisher_file(spec, weights, meta=True)
    state = checkpoint_tensors(publisher.content, publisher.name)
    assert recognise_format(state) == weights.format
    num_classes = DATASETS[weights.dataset].num_classes
    with torch.device("meta"):
        model = archs.build(spec.name, num_classes)
    converted = convert(spec, weights.dataset, state, model.state_dict(), source=publisher.name)
    assert converted.format == weights.format
    check_fit(model, converted.state, num_classes=num_classes, source=publisher.name)


@pytest.mark.parametrize(
    ("spec", "weights"),
    [pytest.param(*row, marks=[pytest.mark.slow] if name in COVERED_BY_OTHERS else []) for name, row in ROWS.items()],
    ids=list(ROWS),
)
def test_a_publisher_file_loads_through_bench_and_gives_the_reference_logits(spec, weights, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(INPUT)
    publisher = publisher_file(spec, weights)
    path = publisher.save(tmp_path)
    expected, reference = publisher.logits(x), publisher.reference
    del publisher
    gc.collect()  # the reference goes before our model is built (ViT-L: 1.2 GB each)

    num_classes = DATASETS[weights.dataset].num_classes
    model = archs.build(spec.name, num_classes)
    loaded = load_weights(model, spec, weights.dataset, path)
    assert loaded.format == weights.format
    diff, moved = assert_equivalent(expected, model, lambda m: forward_logits(m, x, num_classes, align_corners=False))
    print(f"{spec.name}: {reference}: max diff {diff:.1e}, one norm bias moved by 0.1: {moved:.1e}")
