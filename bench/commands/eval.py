"""`bench eval`: mIoU of one architecture on a validation set under its published test protocol.

Checks every image and label map first (a bad file fails in seconds, named), then prints aAcc,
mAcc, mIoU and fwIoU beside the published mIoU and writes, under ``<results>/<device>/eval/``
(``runs/`` by default), the per-class IoU and accuracy (CSV) and the whole result with its
confusion matrix (JSON), in new files named after the run (an existing file is never touched).
A set `bench data synth` generated is called synthetic in all of them. An evaluation stopped
part-way keeps its progress there, and the same command continues it. Under ``torchrun
--nproc-per-node N -m bench eval ...`` the set is sharded over the processes, only rank 0 prints
and writes, and a stopped evaluation starts over.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import archs
from bench import protocol as proto
from bench.commands.common import add_common_options, build_model, load_plugins, resolve_device
from bench.errors import BenchError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="mIoU of one model on ADE20K or Cityscapes val (published test protocol)",
        description="Evaluate one architecture on a validation set: whole or sliding-window inference as its "
        "published configuration runs it, optional multi-scale + flip test, metrics from one confusion matrix.",
    )
    p.add_argument("arch", help="registered architecture (`bench list`)")
    p.add_argument("--dataset", required=True, choices=list(proto.DATASETS), help="protocol dataset")
    p.add_argument("--data-root", required=True, help="ADEChallengeData2016, or the folder holding leftImg8bit+gtFine")
    p.add_argument(
        "--weights",
        default="official",
        help="official (default: the cached official checkpoint, fetched when missing), a checkpoint PATH, "
        "or none (random weights, for smoke tests and --benchmark)",
    )
    p.add_argument("--mode", choices=("whole", "slide"), default=None, help="override the published inference mode")
    p.add_argument("--aug-test", action="store_true", help="multi-scale (0.5-1.75) + flip test")
    add_common_options(p, writes="eval/", device="compute")
    p.add_argument("--workers", type=int, default=None, help="decoding worker processes (default: up to 8)")
    p.add_argument("--split", default=None, help="dataset split (default: the validation split)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images (smoke test)")
    p.add_argument(
        "--benchmark",
        action="store_true",
        help="also time the model alone on device-resident images and print both throughputs",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def _fmt(value: float | None) -> str:
    return "  n/a" if value is None or math.isnan(value) else f"{value:5.2f}"


def run(args: argparse.Namespace) -> int:
    import torch

    from bench.data import open_dataset
    from bench.evaluate import Resume, check_files, distributed, evaluate
    from bench.evaluate.outputs import result_json, write_outputs
    from bench.io import ensure_writable_folder
    from bench.provenance import device_slug, provenance
    from bench.weights import load_weights

    load_plugins(args)
    spec = archs.get_spec(args.arch)
    device = resolve_device(args.device)
    if args.limit is not None and args.limit < 1:
        raise BenchError(f"--limit {args.limit}: pass a positive number of images")
    if distributed.world_size() > 1 and args.benchmark:  # a bad $WORLD_SIZE fails before any download
        raise BenchError("--benchmark times one process on one GPU against its model alone: run it without torchrun")
    if args.workers is not None and args.workers < 0:
        raise BenchError(f"--workers {args.workers}: pass 0 (decode in this process) or more worker processes")
    data = open_dataset(args.dataset, args.data_root, args.split)  # a bad root fails before any download
    single = distributed.world_size() == 1
    if single:  # so does a bad file (under torchrun each rank checks its share, in `evaluate`)
        count = len(data) if args.limit is None else min(args.limit, len(data))
        check_files(data, list(range(count)), progress=not args.no_progress)
    folder = Path(args.results) / device_slug(device) / "eval"
    ensure_writable_folder(folder)
    num_classes = proto.dataset(args.dataset).num_classes
    # random weights (--weights none) are the same in every process and run: torchrun's ranks share one model
    torch.manual_seed(proto.MODEL_SEED)
    model = build_model(spec.name, num_classes)
    loaded = load_weights(model, spec, args.dataset, args.weights)
    options = dict(device=device, mode=args.mode, aug_test=args.aug_test, workers=args.workers, limit=args.limit)
    timing = None
    if args.benchmark:
        from bench.evaluate.benchmark import benchmark

        timing = benchmark(model, spec, args.dataset, args.data_root, **options)
        result = timing.result
    else:
        resume = Resume(folder, {"weights": loaded.sha256 or loaded.source})
        result = evaluate(
            model,
            spec,
            args.dataset,
            args.data_root,
            progress=not args.no_progress,
            split=args.split,
            resume=resume,
            check_inputs=not single,
            **options,
        )
    if result.rank != 0:
        return 0
    published = spec.published.get(args.dataset)
    reference = f" (published {published.miou:g})" if published and published.miou is not None else ""
    print(f"{spec.name} on {result.data}, {result.num_images} images")
    print(f"  protocol: {result.description}")
    if loaded.path is None:
        print("  weights:  none (random initialisation)")
    else:
        origin = f"official, {loaded.uri} -> " if loaded.uri else ""
        print(f"  weights:  {origin}{loaded.path} (sha256 {(loaded.sha256 or '?')[:12]})")
    print(f"  aAcc {_fmt(result.aAcc)}   mAcc {_fmt(result.mAcc)}   mIoU {_fmt(result.mIoU)}{reference}", end="")
    print(f"   fwIoU {_fmt(result.fwIoU)}")
    ranks = f" x {result.world_size} processes" if result.world_size > 1 else ""
    resumed = f" (and {result.resumed_images} images from a stopped run)" if result.resumed_images else ""
    print(f"  {result.seconds:.1f} s, {result.images_per_s:.1f} images/s on {result.device}{ranks}{resumed}")
    extra = {"weights": dataclasses.asdict(loaded), "provenance": provenance(result.device)}
    if timing is not None:
        print(
            f"  throughput: model alone {timing.model_only:.1f} images/s, whole evaluation {timing.evaluation:.1f} "
            f"images/s ({100 * timing.ratio:.1f}% of the model alone)"
        )
        extra["benchmark"] = {"model_only": timing.model_only, "evaluation": timing.evaluation, "ratio": timing.ratio}
    try:
        csv_path, json_path = write_outputs(result, folder, extra)
    except BenchError as exc:  # the evaluation is not lost with the file: the whole result goes to stdout
        print(result_json(result, extra, indent=None), end="", flush=True)
        raise BenchError(f"{exc} (the whole result is on stdout, as one line of JSON)") from None
    print(f"  per-class IoU: {csv_path}\n  result + confusion matrix: {json_path}")
    return 0
