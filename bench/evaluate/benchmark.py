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

import torch
from torch import nn

from archs import ArchSpec
from bench import protocol as proto
from bench.data import DataError, open_dataset
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


def model_only_throughput(
    model: nn.Module,
    spec: ArchSpec,
    dataset: str,
    data_root,
    *,
    device: str,
    images: int,
    mode: str | None = None,
    aug_test: bool = False,
) -> float:
    """Images/s of the inference alone on the first `CACHED_IMAGES` images of the set, kept on the device."""
    data = open_dataset(dataset, data_root)
    dev = torch.device(device)
    samples = [data[i] for i in range(min(CACHED_IMAGES, len(data), images))]
    for sample in samples:
        if sample.error:
            raise DataError(sample.error)
    cached = [s.image.to(dev).unsqueeze(0) for s in samples]
    model = model.to(dev).eval()
    protocol = eval_protocol(spec, dataset, mode)
    predict = Predictor(
        model, protocol, num_classes=proto.dataset(dataset).num_classes, mean=spec.mean, std=spec.std, aug_test=aug_test
    )
    for image in cached:  # warm-up: one pass per cached size
        predict(image)
    _sync(dev)
    started = time.perf_counter()
    for i in range(images):
        predict(cached[i % len(cached)])
    _sync(dev)
    return images / (time.perf_counter() - started)


def benchmark(
    model: nn.Module,
    spec: ArchSpec,
    dataset: str,
    data_root,
    *,
    device: str,
    mode: str | None = None,
    aug_test: bool = False,
    workers: int | None = None,
    limit: int | None = None,
) -> BenchmarkResult:
    """The model alone, then the whole evaluation, over the same number of images (see module doc)."""
    count = len(open_dataset(dataset, data_root))
    count = count if limit is None else min(limit, count)
    alone = model_only_throughput(
        model, spec, dataset, data_root, device=device, images=count, mode=mode, aug_test=aug_test
    )
    result = evaluate(
        model,
        spec,
        dataset,
        data_root,
        device=device,
        mode=mode,
        aug_test=aug_test,
        progress=False,
        workers=workers,
        limit=limit,
    )
    return BenchmarkResult(alone, result.images_per_s, result.images_per_s / alone, count, result)
