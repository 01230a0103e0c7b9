"""Is the input pipeline hidden behind the GPU? The whole evaluation against the model alone.

`benchmark` times the same inference (resize, normalise, whole/slide forward, logit resizes,
argmax) twice over the same number of images: once on images already on the device (the model
alone: the upper bound), once as `evaluate` runs it (decoding in workers, copies, confusion
matrix). A ratio near 1 means decoding and copying overlap the GPU. Run it on a generated set:

    bench data synth --dataset ade20k --out /tmp/ade --num 2000
    bench eval segformer-b0 --dataset ade20k --data-root /tmp/ade --weights none --benchmark
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from archs import ArchSpec
from bench import protocol as proto
from bench.data import SegDataset, open_dataset
from bench.evaluate import EvalResult, evaluate
from bench.evaluate.inference import Predictor, eval_protocol

CACHED_IMAGES = 32


@dataclass
class BenchmarkResult:
    """Throughputs in images per second over ``images`` images.

    Args:
        model_only: the inference on device-resident images (cycled), no data pipeline.
        evaluation: the whole evaluation (`evaluate`'s wall time, decoding and metrics included).
        ratio: evaluation / model_only.
        images: images timed in each.
        result: the evaluation's result.
    """

    model_only: float
    evaluation: float
    ratio: float
    images: int
    result: EvalResult


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_only_throughput(predict: Predictor, data: SegDataset, *, device: torch.device, images: int) -> float:
    """Images/s of ``predict`` alone over ``images`` images, cycling through the first `CACHED_IMAGES` of
    ``data`` kept on the device."""
    cached = [data[i].decoded()[0].to(device).unsqueeze(0) for i in range(min(CACHED_IMAGES, len(data), images))]
    for image in cached:  # warm-up: one pass per cached size
        predict(image)
    _sync(device)
    started = time.perf_counter()
    for i in range(images):
        predict(cached[i % len(cached)])
    _sync(device)
    return images / (time.perf_counter() - started)


def benchmark(
    model: nn.Module, spec: ArchSpec, dataset: str, data_root: str | Path, *, device: str, mode: str | None = None,
    aug_test: bool = False, workers: int | None = None, limit: int | None = None,
) -> BenchmarkResult:  # fmt: skip
    """The model alone, then the whole evaluation, over the same number of images (see module doc).

    Args:
        model: built for the dataset's class count, weights loaded (moved to ``device`` here).
        spec: the model's spec (normalisation, family, input size).
        dataset: ``ade20k`` or ``cityscapes``.
        data_root: the dataset folder (see `bench.data.open_dataset`).
        device: ``cpu``, ``cuda`` or ``cuda:N`` (one process).
        mode: None for the spec's published test protocol, or ``whole`` / ``slide``.
        aug_test: multi-scale (0.5..1.75) and flip test.
        workers: the evaluation's decoding worker processes (`evaluate`).
        limit: only the first ``limit`` images.
    """
    data = open_dataset(dataset, data_root)
    count = len(data) if limit is None else min(limit, len(data))
    protocol = eval_protocol(spec, dataset, mode)
    dev = torch.device(device)
    num_classes = proto.dataset(dataset).num_classes
    predict = Predictor(
        model.to(dev).eval(), protocol, num_classes=num_classes, mean=spec.mean, std=spec.std, aug_test=aug_test
    )
    alone = model_only_throughput(predict, data, device=dev, images=count)
    result = evaluate(
        model, spec, dataset, data_root, device=device, protocol=protocol, aug_test=aug_test, progress=False,
        workers=workers, limit=limit,
    )  # fmt: skip
    return BenchmarkResult(alone, result.images_per_s, result.images_per_s / alone, count, result)
