"""Segmentation metrics from one confusion matrix accumulated over the whole set, on the device.

Rows are ground truth, columns prediction; pixels whose ground truth is the ignore index (255)
or any value outside ``0..K-1`` are not counted. The definitions are FCN's (``score.py``),
mmsegmentation's ``IoUMetric`` and cityscapesScripts' (dataset-level, not per-image means):

- IoU_c = TP / (TP + FP + FN); NaN when class c is absent from both ground truth and prediction,
  and then excluded from mIoU (a class predicted but absent from the ground truth scores 0).
- Acc_c = TP / (TP + FN); NaN when c is absent from the ground truth, excluded from mAcc.
- aAcc = sum TP / labelled pixels; fwIoU = sum_c freq_c IoU_c over classes present in the ground
  truth, freq_c = (TP + FN)_c / labelled pixels.

All summaries are percentages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Metrics:
    """Summary and per-class metrics (percent; NaN marks a class excluded from the mean).

    Args:
        aAcc, mAcc, mIoU, fwIoU: the summaries.
        iou, acc: per class, in train-id order.
        gt_pixels, pred_pixels: per class, pixels labelled and predicted as the class.
    """

    aAcc: float
    mAcc: float
    mIoU: float
    fwIoU: float
    iou: list[float]
    acc: list[float]
    gt_pixels: list[int]
    pred_pixels: list[int]


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def metrics_from_matrix(matrix: np.ndarray | torch.Tensor) -> Metrics:
    """`Metrics` of a ``(K, K)`` confusion matrix (rows ground truth, columns prediction)."""
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().numpy()
    hist = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(hist)
    gt = hist.sum(axis=1)
    pred = hist.sum(axis=0)
    total = hist.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (gt + pred - tp)  # 0/0 = NaN: absent from both
        acc = tp / gt  # 0/0 = NaN: absent from the ground truth
    present = gt > 0
    freq = gt / total if total else np.zeros_like(gt)
    return Metrics(
        aAcc=100.0 * float(tp.sum() / total) if total else math.nan,
        mAcc=100.0 * _nanmean(acc),
        mIoU=100.0 * _nanmean(iou),
        fwIoU=100.0 * float((freq[present] * iou[present]).sum()) if total else math.nan,
        iou=(100.0 * iou).tolist(),
        acc=(100.0 * acc).tolist(),
        gt_pixels=np.asarray(matrix).sum(axis=1).astype(np.int64).tolist(),
        pred_pixels=np.asarray(matrix).sum(axis=0).astype(np.int64).tolist(),
    )


class ConfusionMatrix:
    """A ``(K, K)`` int64 confusion matrix updated on the device without host synchronisation.

    The counts live in a ``(256, K)`` histogram indexed by ``gt * K + pred``: every uint8 ground
    truth value has a row, so ignored pixels (255, or any value >= K) need no mask and fall in rows
    that are never read. Two kernels per update: the bin index (``add`` with ``alpha=K``) and the
    count, ``torch.bincount`` on the CPU and ``scatter_add_`` into the fixed-size histogram on
    CUDA, whose ``bincount`` reads the input's min and max back to the host (two syncs per image).

    Args:
        num_classes: K (at most 255).
        device: where the matrix lives (the device of the predictions).
        ignore_index: ground-truth value that is never counted (any value outside 0..K-1 is not).
    """

    ROWS = 256

    def __init__(self, num_classes: int, *, device: str | torch.device = "cpu", ignore_index: int = 255) -> None:
        if not 0 < num_classes < self.ROWS:
            raise ValueError(f"num_classes must be in 1..{self.ROWS - 1}, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.device = torch.device(device)
        # the raw counts: (256 * K,) int64, index gt * K + pred (summed over ranks as a whole)
        self.histogram = torch.zeros(self.ROWS * num_classes, dtype=torch.int64, device=self.device)
        self._one = torch.ones(1, dtype=torch.int64, device=self.device)
        self.use_bincount = self.device.type == "cpu"

    @property
    def matrix(self) -> torch.Tensor:
        """The ``(K, K)`` counts (a view; rows ground truth, columns prediction)."""
        k = self.num_classes
        return self.histogram.view(self.ROWS, k)[:k]

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count one batch of predictions against the ground truth.

        Args:
            pred: predicted class ids, all in ``0..K-1`` (an argmax).
            target: ground-truth ids of the same shape; the ignore index and every other value outside
                ``0..K-1`` are not counted.
        """
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(target.shape)} differ in shape")
        k = self.num_classes
        pred = pred.reshape(-1).to(device=self.device, dtype=torch.int64)
        target = target.reshape(-1).to(self.device)
        if target.dtype != torch.uint8:  # out-of-range values go to an ignored row
            target = torch.where((target >= 0) & (target < k), target, self.ROWS - 1).to(torch.uint8)
        bins = torch.add(pred, target, alpha=k)  # gt * K + pred, in int64
        if self.use_bincount:
            self.histogram += torch.bincount(bins, minlength=self.histogram.numel())
        else:
            self.histogram.scatter_add_(0, bins, self._one.expand_as(bins))

    def add_matrix(self, matrix: torch.Tensor | np.ndarray) -> None:
        """Add counts from another ``(K, K)`` matrix (another shard, a saved run)."""
        self.matrix.add_(torch.as_tensor(np.asarray(matrix), dtype=torch.int64).to(self.device))

    def reset(self) -> None:
        self.histogram.zero_()

    def compute(self) -> Metrics:
        """`Metrics` of the counts so far (one copy to the host)."""
        return metrics_from_matrix(self.matrix)
