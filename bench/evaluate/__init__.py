"""mIoU of a model on a validation set under its published test protocol.

    from bench.evaluate import evaluate
    result = evaluate(model, spec, "ade20k", "~/data/ADEChallengeData2016", device="cuda")
    print(result.mIoU, result.per_class_iou)

First every image and label map is opened and their sizes compared (a bad file fails in seconds,
not part-way). Then one pass over the set (sharded over the ranks under torchrun): decode in
DataLoader workers -> pinned, asynchronous copy -> resize, normalise, whole or sliding-window
forward, logits resized to the label size, argmax -> confusion matrix on the device. Metrics come
from the one matrix. With a `Resume`, the matrix so far is kept on disk and a rerun continues it
(`bench.evaluate.checkpoint`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from archs import ArchSpec
from bench import protocol as proto
from bench.data import CLASSES, DataError, Sample, SegDataset, open_dataset
from bench.errors import BenchError, check_interrupt, described, interrupts_deferred, is_out_of_memory
from bench.evaluate import distributed
from bench.evaluate.checkpoint import Checkpoint, Resume
from bench.evaluate.distributed import DistContext
from bench.evaluate.inference import EvalProtocol, Predictor, eval_protocol
from bench.evaluate.loader import make_loader
from bench.evaluate.metrics import ConfusionMatrix, Metrics, metrics_from_matrix
from bench.evaluate.result import EvalResult

__all__ = [
    "ConfusionMatrix",
    "EvalProtocol",
    "EvalResult",
    "Metrics",
    "Resume",
    "check_files",
    "eval_protocol",
    "evaluate",
    "metrics_from_matrix",
]


def _out_of_memory(sample: Sample, root: Path, num_classes: int, device: str) -> str:
    """The one-line error for an image whose inference ran out of memory (what its full-size logits take)."""
    height, width = sample.decoded()[0].shape[-2:]
    need = num_classes * height * width * 4 / 1e9  # float32 logits, upsampled to the label's size before the argmax
    return (
        f"image {root / sample.name} ({width}x{height}) ran out of {device} memory: its {num_classes}-class logits "
        f"at the label's size alone take {need:.3g} GB; evaluate a downscaled copy of it and its label map (metrics "
        "are computed at the label's size; --mode slide does not shrink them), or use a device with more memory"
    )


@contextlib.contextmanager
def _progress(enabled: bool, total: int, description: str, completed: int = 0) -> Iterator[Callable[..., object]]:
    """A progress bar with images/s on stderr, ``completed`` of ``total`` done at the start; yields ``advance(n)``."""
    if not enabled:

        def ignore(n: int = 1) -> None:
            pass

        yield ignore
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:6.1f} img/s" if task.speed else "   -- img/s")

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total, completed=completed)

        def advance(n: int = 1) -> None:
            bar.advance(task, n)

        yield advance


def _identity(spec: ArchSpec, dataset: str, data: SegDataset, count: int, protocol: dict, device: torch.device) -> dict:
    """What a rerun must share with a stopped evaluation to continue it (beside the caller's part, the weights)."""
    names = "\n".join(str(image.relative_to(data.root)) for image, _ in data.pairs[:count])
    return {
        "arch": spec.name,
        "dataset": dataset,
        "root": str(data.root.resolve()),
        "split": data.split,
        "images": count,
        "names_sha256": hashlib.sha256(names.encode()).hexdigest(),
        "protocol": protocol,
        "device": device.type,
    }


def check_files(data: SegDataset, indices: list[int], *, progress: bool) -> None:
    """`SegDataset.check_files` of ``indices`` (every image and label map opens; their sizes agree), with a
    progress bar; a `DataError` naming the first bad file."""
    with _progress(progress, len(indices), "checking images and label maps") as advance:
        data.check_files(indices, advance)


def _check_every_rank(data: SegDataset, todo: list[int], ctx: DistContext, *, check: bool, progress: bool) -> None:
    """`check_files` of this rank's ``todo`` (when ``check``); every rank stops when one met a bad file."""
    error = None
    if check:
        try:
            check_files(data, todo, progress=progress)
        except DataError as exc:
            error = str(exc)
    error = distributed.first_error(error, ctx)
    if error:
        raise DataError(error)


class _Counts:
    """The confusion matrix of one pass and the images it counts, kept on disk as it goes when resumable.

    Args:
        matrix: the confusion matrix on the device.
        count: images in the whole evaluation.
        checkpoint: where the progress is kept, or None.
    """

    def __init__(self, matrix: ConfusionMatrix, count: int, checkpoint: Checkpoint | None = None) -> None:
        self.matrix, self.count, self.checkpoint = matrix, count, checkpoint
        self.done: list[int] = []

    def resume(self, num_classes: int, indices: list[int]) -> int:
        """Continue the counts a stopped run saved (its images among ``indices``); how many images they hold."""
        saved = None if self.checkpoint is None else self.checkpoint.load(num_classes, indices)
        if saved is not None:
            self.done, counts = saved
            self.matrix.add_matrix(counts)
        return len(self.done)

    def add(self, index: int, prediction: torch.Tensor, target: torch.Tensor) -> None:
        with interrupts_deferred():  # the counts and the list of what they count go together
            self.matrix.update(prediction, target)
            self.done.append(index)
        if self.checkpoint is not None and self.checkpoint.due():
            with interrupts_deferred():  # a Ctrl-C here saves again, whole
                self.checkpoint.save(self.done, self.matrix.matrix.cpu().numpy())

    def kept(self) -> str:
        """Save the progress of a stopped evaluation; what a rerun will continue from, in words ("" for nothing)."""
        checkpoint = self.checkpoint
        if checkpoint is None or not self.done:
            return ""
        try:
            counts = self.matrix.matrix.cpu().numpy()
        except Exception:  # a device that failed with the evaluation: the last save made while it ran stays
            if not checkpoint.path.is_file():
                return ""
            return f"the progress saved while it ran is kept in {checkpoint.path}: rerun the same command to continue"
        if checkpoint.save(self.done, counts):
            return (
                f"{len(self.done)} of {self.count} images are kept in {checkpoint.path}: rerun the same command to "
                "continue"
            )
        return f"the {len(self.done)} images evaluated are lost ({checkpoint.problem})"


def _failure(arch: str, root: Path, num_classes: int, device: str, sample: Sample, exc: BaseException) -> str:
    """The one-line error for an image whose inference failed: out of memory, or the model's fault on it."""
    if is_out_of_memory(exc):
        return _out_of_memory(sample, root, num_classes, device)
    height, width = sample.decoded()[0].shape[-2:]
    return f"{arch} failed on image {root / sample.name} ({width}x{height}): {described(exc, 200)}"


def _count_images(
    loader: Iterable[Sample], predict: Predictor, counts: _Counts, advance: Callable[[int], object],
    failure: Callable[[Sample, BaseException], str],
) -> str | None:  # fmt: skip
    """Predict and count every image of ``loader``; the error that stopped it (a bad file, a failed image), or None."""
    device = counts.matrix.histogram.device
    for sample in loader:
        check_interrupt()
        if sample.error:
            return sample.error
        image, label = sample.decoded()
        try:
            x = image.to(device, non_blocking=True).unsqueeze(0)
            target = label.to(device, non_blocking=True)
            counts.add(sample.index, predict(x)[0], target)
        except (RuntimeError, MemoryError) as exc:
            return failure(sample, exc)
        advance(1)
    return None


def evaluate(
    model: nn.Module,
    spec: ArchSpec,
    dataset: str,
    data_root: str | Path,
    *,
    device: str,
    mode: str | None = None,
    aug_test: bool = False,
    progress: bool = True,
    split: str | None = None,
    workers: int | None = None,
    limit: int | None = None,
    protocol: EvalProtocol | None = None,
    resume: Resume | None = None,
    check_inputs: bool = True,
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
        resume: keep the progress on disk and continue an earlier run's (one process only; see
            `bench.evaluate.checkpoint`).
        check_inputs: open every image and label map before the pass (`SegDataset.check_files`); False
            where the caller has.
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
        checkpoint = None
        if resume is not None and ctx.world_size == 1:
            identity = _identity(spec, dataset, data, count, protocol.as_dict(aug_test), dev)
            checkpoint = Checkpoint(resume, identity)
        counts = _Counts(ConfusionMatrix(num_classes, device=dev), count, checkpoint)
        resumed = counts.resume(num_classes, indices)
        counted = set(counts.done)
        todo = [i for i in indices if i not in counted]
        _check_every_rank(data, todo, ctx, check=check_inputs, progress=progress and ctx.is_main)
        if checkpoint is not None and resumed:
            print(
                f"continuing {spec.name} on {dataset}: {resumed} of {count} images were evaluated by a stopped run "
                f"({checkpoint.path})",
                file=sys.stderr,
            )
        model = model.to(dev).eval()
        predict = Predictor(model, protocol, num_classes=num_classes, mean=spec.mean, std=spec.std, aug_test=aug_test)
        loader = make_loader(data, todo, workers=workers, pin=dev.type == "cuda")
        failure = functools.partial(_failure, spec.name, data.root, num_classes, device)
        label = f"{spec.name} {dataset}" + (f" (rank 0 of {ctx.world_size})" if ctx.world_size > 1 else "")
        started = time.perf_counter()
        with _progress(progress and ctx.is_main, len(indices), label, resumed) as advance, torch.inference_mode():
            try:
                error = _count_images(loader, predict, counts, advance, failure)
            except BenchError as exc:  # the model's logits do not fit the dataset
                error = str(exc)
            except BaseException:  # Ctrl-C, a kill the harness turned into an exception, a crash
                kept = counts.kept()
                if kept:
                    print(f"bench: {kept}", file=sys.stderr)
                raise
        error = distributed.first_error(error, ctx)  # every rank stops when one met a bad file
        if error:
            kept = counts.kept()
            raise DataError(f"{error} ({kept})" if kept else error)
        distributed.all_reduce_sum(counts.matrix.histogram, ctx)
        confusion = counts.matrix.matrix.cpu().numpy()  # waits for the device
        seconds = time.perf_counter() - started
        if checkpoint is not None:
            checkpoint.remove()
    finally:
        distributed.teardown(ctx)
    metrics = metrics_from_matrix(confusion)
    evaluated = count - resumed
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
        images_per_s=evaluated / seconds if seconds > 0 else math.nan,
        rank=ctx.rank,
        resumed_images=resumed,
        synthetic=data.synthetic,
    )
