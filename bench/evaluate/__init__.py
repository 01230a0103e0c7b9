"""mIoU of a model on a validation set under its published test protocol.

    from bench.evaluate import evaluate
    result = evaluate(model, spec, "ade20k", "~/data/ADEChallengeData2016", device="cuda")
    print(result.mIoU, result.per_class_iou)

One pass over the set (sharded over the ranks under torchrun): decode in DataLoader workers ->
pinned, asynchronous copy -> resize, normalise, whole or sliding-window forward, logits resized
to the label size, argmax -> confusion matrix on the device. Metrics come from the one matrix.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from archs import ArchSpec
from bench import protocol as proto
from bench.data import CLASSES, DataError, open_dataset
from bench.errors import BenchError, check_interrupt, is_out_of_memory
from bench.evaluate import distributed
from bench.evaluate.inference import EvalProtocol, Predictor, eval_protocol
from bench.evaluate.loader import make_loader
from bench.evaluate.metrics import ConfusionMatrix, Metrics, metrics_from_matrix

__all__ = [
    "ConfusionMatrix",
    "EvalProtocol",
    "EvalResult",
    "Metrics",
    "eval_protocol",
    "evaluate",
    "metrics_from_matrix",
]


def _finite(values: list[float]) -> list[float | None]:
    return [None if math.isnan(v) else v for v in values]


@dataclass
class EvalResult:
    """What one evaluation measured (percentages; None/NaN marks a class excluded from the means).

    Args:
        arch, dataset, split: what was evaluated.
        num_images, num_classes: size of the set and of the label space.
        aAcc, mAcc, mIoU, fwIoU: the summaries.
        per_class_iou, per_class_acc: per train id (NaN: excluded from the mean).
        class_names: per train id.
        gt_pixels, pred_pixels: per train id, labelled and predicted pixels.
        confusion: ``(K, K)`` int64 counts, rows ground truth.
        protocol: the test protocol (mode, scale, windows, multi-scale) as a dict.
        description: the protocol in words.
        device, world_size: where it ran.
        seconds, images_per_s: wall time of the pass (decoding included) and throughput.
        rank: this process's rank (0 without torchrun).
    """

    arch: str
    dataset: str
    split: str
    num_images: int
    num_classes: int
    aAcc: float
    mAcc: float
    mIoU: float
    fwIoU: float
    per_class_iou: list[float]
    per_class_acc: list[float]
    class_names: list[str]
    gt_pixels: list[int]
    pred_pixels: list[int]
    confusion: np.ndarray = field(repr=False)
    protocol: dict
    description: str
    device: str
    world_size: int
    seconds: float
    images_per_s: float
    rank: int = 0

    def as_dict(self, *, confusion: bool = False) -> dict:
        """JSON-ready values (NaN as None); the confusion matrix only when asked for."""
        out = asdict(self)
        out.pop("rank")
        matrix = out.pop("confusion")
        for key in ("aAcc", "mAcc", "mIoU", "fwIoU"):
            out[key] = None if math.isnan(out[key]) else out[key]
        out["per_class_iou"] = _finite(self.per_class_iou)
        out["per_class_acc"] = _finite(self.per_class_acc)
        if confusion:
            out["confusion"] = np.asarray(matrix).tolist()
        return out


def _out_of_memory(sample, root, num_classes: int, device: str) -> str:
    """The one-line error for an image whose inference ran out of memory (what its full-size logits take)."""
    height, width = sample.image.shape[-2:]
    need = num_classes * height * width * 4 / 1e9  # float32 logits, upsampled to the label's size before the argmax
    return (
        f"image {root / sample.name} ({width}x{height}) ran out of {device} memory: its {num_classes}-class logits "
        f"at the label's size alone take {need:.3g} GB; evaluate a downscaled copy of it and its label map (metrics "
        "are computed at the label's size; --mode slide does not shrink them), or use a device with more memory"
    )


@contextlib.contextmanager
def _progress(enabled: bool, total: int, description: str):
    """A progress bar with images/s on stderr; yields ``advance(n)``."""
    if not enabled:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:6.1f} img/s" if task.speed else "   -- img/s")

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def evaluate(
    model: nn.Module,
    spec: ArchSpec,
    dataset: str,
    data_root,
    *,
    device: str,
    mode: str | None = None,
    aug_test: bool = False,
    progress: bool = True,
    split: str | None = None,
    workers: int | None = None,
    limit: int | None = None,
    protocol: EvalProtocol | None = None,
) -> EvalResult:
    """Evaluate ``model`` on the validation split of ``dataset`` found under ``data_root``.

    Under torchrun each rank takes its share of the images and the confusion matrices are
    summed; every rank returns the same result.

    Args:
        model: built for the dataset's class count, weights loaded (moved to ``device`` here).
        spec: the model's spec (normalisation, family, input size).
        dataset: ``ade20k`` or ``cityscapes``.
        data_root: the dataset folder (see `bench.data.open_dataset`).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        mode: None for the spec's published test protocol, or ``whole`` / ``slide``.
        aug_test: multi-scale (0.5..1.75) and flip test.
        progress: show a progress bar with images/s (rank 0 only).
        split: dataset split (default: validation).
        workers: decoding worker processes (None: up to 8; 0: decode in this process).
        limit: evaluate only the first ``limit`` images (smoke tests).
        protocol: an explicit test protocol instead of the published one (``mode`` is then ignored).
    """
    try:
        num_classes = proto.dataset(dataset).num_classes
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    data = open_dataset(dataset, data_root, split)
    protocol = protocol or eval_protocol(spec, dataset, mode)
    ctx, device = distributed.setup(device)
    try:
        dev = torch.device(device)
        count = len(data) if limit is None else min(limit, len(data))
        indices = distributed.shard_indices(count, ctx)
        model = model.to(dev).eval()
        predict = Predictor(model, protocol, num_classes=num_classes, mean=spec.mean, std=spec.std, aug_test=aug_test)
        matrix = ConfusionMatrix(num_classes, device=dev)
        loader = make_loader(data, indices, workers=workers, pin=dev.type == "cuda")
        error = None
        label = f"{spec.name} {dataset}" + (f" (rank 0 of {ctx.world_size})" if ctx.world_size > 1 else "")
        started = time.perf_counter()
        with _progress(progress and ctx.is_main, len(indices), label) as advance, torch.inference_mode():
            try:
                for sample in loader:
                    check_interrupt()
                    if sample.error:
                        error = sample.error
                        break
                    try:
                        image = sample.image.to(dev, non_blocking=True).unsqueeze(0)
                        target = sample.label.to(dev, non_blocking=True)
                        matrix.update(predict(image)[0], target)
                    except (RuntimeError, MemoryError) as exc:
                        if not is_out_of_memory(exc):
                            raise
                        error = _out_of_memory(sample, data.root, num_classes, device)
                        break
                    advance(1)
            except BenchError as exc:  # the model's logits do not fit the dataset
                error = str(exc)
        error = distributed.first_error(error, ctx)  # every rank stops when one met a bad file
        if error:
            raise DataError(error)
        distributed.all_reduce_sum(matrix.histogram, ctx)
        confusion = matrix.matrix.cpu().numpy()  # waits for the device
        seconds = time.perf_counter() - started
    finally:
        distributed.teardown(ctx)
    metrics = metrics_from_matrix(confusion)
    return EvalResult(
        arch=spec.name,
        dataset=dataset,
        split=data.split,
        num_images=count,
        num_classes=num_classes,
        aAcc=metrics.aAcc,
        mAcc=metrics.mAcc,
        mIoU=metrics.mIoU,
        fwIoU=metrics.fwIoU,
        per_class_iou=metrics.iou,
        per_class_acc=metrics.acc,
        class_names=list(CLASSES[dataset]),
        gt_pixels=metrics.gt_pixels,
        pred_pixels=metrics.pred_pixels,
        confusion=confusion,
        protocol=protocol.as_dict(aug_test),
        description=protocol.describe(aug_test)
        + (" (TF32 convolutions: cuDNN's default)" if dev.type == "cuda" and torch.backends.cudnn.allow_tf32 else ""),
        device=device,
        world_size=ctx.world_size,
        seconds=seconds,
        images_per_s=count / seconds if seconds > 0 else math.nan,
        rank=ctx.rank,
    )
