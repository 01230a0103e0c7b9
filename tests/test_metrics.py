"""Confusion-matrix metrics: hand-computed cases, then the official scorers as oracles.

cityscapesScripts (``evalPixelLevelSemanticLabeling``) scores labelId PNGs; mmsegmentation's
``IoUMetric`` scores reduced ADE20K labels. Both must give the per-class numbers segbench gives.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from bench.data import cityscapes
from bench.evaluate.metrics import ConfusionMatrix, metrics_from_matrix


def _matrix(pred, gt, k):
    cm = ConfusionMatrix(k)
    cm.update(torch.as_tensor(pred), torch.as_tensor(gt))
    return cm


def test_hand_computed_example_with_ignore_and_absent_classes():
    # classes 0..3; class 2 only predicted, class 3 in neither; 255 ignored whatever is predicted
    gt = np.array([[0, 0, 1, 1], [0, 1, 255, 255]])
    pred = np.array([[0, 1, 1, 2], [0, 1, 3, 0]])
    cm = _matrix(pred, gt, 4)
    assert cm.matrix.tolist() == [[2, 1, 0, 0], [0, 2, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    m = cm.compute()
    assert m.iou[0] == pytest.approx(100 * 2 / 3)
    assert m.iou[1] == pytest.approx(100 * 2 / 4)
    assert m.iou[2] == 0.0  # predicted, absent from the ground truth: counts as 0
    assert math.isnan(m.iou[3])  # absent from both: excluded
    assert m.mIoU == pytest.approx(100 * (2 / 3 + 2 / 4 + 0) / 3)
    assert math.isnan(m.acc[2]) and math.isnan(m.acc[3])
    assert m.mAcc == pytest.approx(100 * (2 / 3 + 2 / 3) / 2)
    assert m.aAcc == pytest.approx(100 * 4 / 6)
    assert m.fwIoU == pytest.approx(100 * (3 / 6 * 2 / 3 + 3 / 6 * 2 / 4))
    assert m.gt_pixels == [3, 3, 0, 0] and m.pred_pixels == [2, 3, 1, 0]


def test_fcn_definitions_on_a_random_matrix():
    rng = np.random.default_rng(1)
    hist = rng.integers(0, 50, size=(7, 7))
    hist[3, :] = 0  # a class absent from the ground truth
    hist[:, 5] = 0
    hist[5, :] = 0  # a class absent from both
    m = metrics_from_matrix(hist)
    diag = np.diag(hist)
    with np.errstate(invalid="ignore", divide="ignore"):
        iu = diag / (hist.sum(1) + hist.sum(0) - diag)
        acc = diag / hist.sum(1)
    freq = hist.sum(1) / hist.sum()
    assert m.mIoU == pytest.approx(100 * np.nanmean(iu), abs=1e-12)
    assert m.mAcc == pytest.approx(100 * np.nanmean(acc), abs=1e-12)
    assert m.aAcc == pytest.approx(100 * diag.sum() / hist.sum(), abs=1e-12)
    assert m.fwIoU == pytest.approx(100 * (freq[freq > 0] * iu[freq > 0]).sum(), abs=1e-12)


def test_bincount_and_scatter_paths_count_the_same():
    """The CUDA path (scatter_add_, no host sync) must count exactly what bincount counts."""
    rng = np.random.default_rng(2)
    gt = torch.as_tensor(rng.choice([*range(19), 255, 77], size=(3, 40, 50)))
    pred = torch.as_tensor(rng.integers(0, 19, size=(3, 40, 50)))
    a, b = ConfusionMatrix(19), ConfusionMatrix(19)
    b.use_bincount = False
    for i in range(3):
        a.update(pred[i], gt[i])
        b.update(pred[i], gt[i].to(torch.uint8))
    assert torch.equal(a.matrix, b.matrix)
    assert a.matrix.sum() == int(((gt >= 0) & (gt < 19)).sum())  # 255 and 77 are not counted
    a.add_matrix(b.matrix.numpy())
    assert torch.equal(a.matrix, 2 * b.matrix)


# ---------------------------------------------------------------- cityscapesScripts


def _random_label_ids(rng, shape):
    return rng.integers(0, cityscapes.NUM_LABEL_IDS, size=shape).astype(np.uint8)


def _cityscapes_cases():
    """(ground-truth labelIds, prediction train ids) pairs, random and adversarial."""
    rng = np.random.default_rng(3)
    shape = (24, 40)
    cases = [(_random_label_ids(rng, shape), rng.integers(0, 19, size=shape)) for _ in range(4)]
    # sky (23) on every non-void pixel of one image, predicted as wall there
    cases.append((np.where(rng.random(shape) < 0.3, 0, 23).astype(np.uint8), np.full(shape, 3)))
    # an all-ignore image (void labelIds only) with arbitrary predictions
    void = [0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30]
    cases.append((rng.choice(void, size=shape).astype(np.uint8), rng.integers(0, 19, size=shape)))
    out = []
    for gt, pred in cases:
        gt, pred = gt.copy(), pred.copy()
        gt[np.isin(gt, [31, 32])] = 26  # train, motorcycle: absent from the ground truth ...
        pred[np.isin(pred, [16, 17])] = 13  # ... and from the prediction
        pred[pred == 0] = 2  # road: in the ground truth, never predicted
        gt[gt == 33] = 21  # bicycle: predicted, absent from the ground truth
        out.append((gt, pred))
    return out


def _cityscapes_official(tmp_path, cases):
    cs = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")  # test extra

    gts, preds = [], []
    for i, (gt, pred) in enumerate(cases):
        gt_path = tmp_path / f"frankfurt_000000_{i:06d}_gtFine_labelIds.png"
        pred_path = tmp_path / f"frankfurt_000000_{i:06d}_pred.png"
        Image.fromarray(gt).save(gt_path)
        Image.fromarray(cityscapes.train_ids_to_label_ids(pred.astype(np.uint8))).save(pred_path)
        gts.append(str(gt_path))
        preds.append(str(pred_path))
    args = cs.args
    # numpy 2 removed np.in1d, used only by the instance-level and pixel-accuracy paths: switched off
    args.evalInstLevelScore = False
    args.evalPixelAccuracy = False
    args.JSONOutput = False
    args.quiet = True
    with np.errstate(invalid="ignore", divide="ignore"):
        return cs.evaluateImgLists(preds, gts, args)


def test_per_class_iou_equals_cityscapes_scripts(tmp_path):
    cases = _cityscapes_cases()
    official = _cityscapes_official(tmp_path, cases)
    cm = ConfusionMatrix(19)
    for gt, pred in cases:
        cm.update(torch.as_tensor(pred), torch.as_tensor(cityscapes.label_ids_to_train_ids(gt)))
    ours = cm.compute()
    scores = official["classScores"]
    excluded = []
    for train_id, name in enumerate(cityscapes.CLASSES):
        theirs = scores[name]
        if math.isnan(theirs):
            assert math.isnan(ours.iou[train_id]), name
            excluded.append(name)
        else:
            assert ours.iou[train_id] / 100 == pytest.approx(theirs, abs=1e-9), name
    assert excluded == ["train", "motorcycle"]  # the adversarial cases really happened
    assert ours.iou[cityscapes.CLASSES.index("road")] == 0.0  # in GT, never predicted
    assert ours.iou[cityscapes.CLASSES.index("bicycle")] == 0.0  # predicted, never in GT
    assert math.isnan(ours.acc[cityscapes.CLASSES.index("bicycle")])
    assert ours.mIoU / 100 == pytest.approx(official["averageScoreClasses"], abs=1e-9)


def test_cityscapes_all_ignore_set_gives_nan_like_the_official_scorer(tmp_path):
    rng = np.random.default_rng(4)
    gt = rng.choice([0, 1, 4, 5, 9], size=(16, 16)).astype(np.uint8)
    pred = rng.integers(0, 19, size=(16, 16))
    official = _cityscapes_official(tmp_path, [(gt, pred)])
    cm = _matrix(pred, cityscapes.label_ids_to_train_ids(gt), 19)
    ours = cm.compute()
    assert all(math.isnan(official["classScores"][n]) for n in cityscapes.CLASSES)
    assert all(math.isnan(v) for v in ours.iou) and math.isnan(ours.mIoU) and math.isnan(ours.aAcc)


# ---------------------------------------------------------------- mmsegmentation IoUMetric


@pytest.fixture(scope="module")
def mmseg_iou_metric():
    from tests import mmseg_stub

    if not mmseg_stub.available():
        pytest.skip("mmsegmentation is not installed (test extra)")
    mmseg_stub.install()
    from mmseg.evaluation.metrics.iou_metric import IoUMetric

    return IoUMetric


def test_equals_mmseg_iou_metric_on_ade20k_labels(mmseg_iou_metric):
    from bench.data.ade20k import _LUT

    rng = np.random.default_rng(5)
    totals = [torch.zeros(150, dtype=torch.float64) for _ in range(4)]
    cm = ConfusionMatrix(150)
    for i in range(4):
        raw = rng.integers(0, 151, size=(48, 64)).astype(np.uint8)  # 0 = "other", ignored after the reduction
        raw[raw == 150] = 1  # flag (150) absent from the ground truth ...
        pred = rng.integers(0, 150, size=(48, 64))
        pred[pred == 7] = 8  # ... bed (7) never predicted
        if i == 3:
            raw[:] = 0  # an all-ignore image
        # mmseg's reduce_zero_label, as LoadAnnotations applies it
        label = raw.astype(np.int64)
        label[label == 0] = 255
        label = label - 1
        label[label == 254] = 255
        areas = mmseg_iou_metric.intersect_and_union(torch.as_tensor(pred), torch.as_tensor(label), 150, 255)
        totals = [t + a.double() for t, a in zip(totals, areas)]
        ours = _LUT[raw]
        assert np.array_equal(ours, label)
        cm.update(torch.as_tensor(pred), torch.as_tensor(ours))
    intersect, union, pred_area, label_area = totals
    matrix = cm.matrix.double()
    assert torch.equal(torch.diag(matrix), intersect)
    assert torch.equal(matrix.sum(0), pred_area) and torch.equal(matrix.sum(1), label_area)
    official = mmseg_iou_metric.total_area_to_metrics(intersect, union, pred_area, label_area, ["mIoU"])
    ours = cm.compute()
    np.testing.assert_allclose(np.array(ours.iou) / 100, official["IoU"], rtol=1e-12, atol=0, equal_nan=True)
    np.testing.assert_allclose(np.array(ours.acc) / 100, official["Acc"], rtol=1e-12, atol=0, equal_nan=True)
    assert ours.aAcc / 100 == pytest.approx(official["aAcc"], abs=1e-12)
    assert ours.mIoU / 100 == pytest.approx(np.nanmean(official["IoU"]), abs=1e-12)
    assert ours.mAcc / 100 == pytest.approx(np.nanmean(official["Acc"]), abs=1e-12)
    assert ours.iou[149] == 0.0 and math.isnan(ours.acc[149])  # predicted, absent from GT
    assert ours.iou[7] == 0.0 and ours.acc[7] == 0.0  # in GT, never predicted
