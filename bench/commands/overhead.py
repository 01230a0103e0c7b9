"""`bench overhead`: the harness's own cost — `bench` latency against a bare CUDA-event loop, one process."""

from __future__ import annotations

import argparse
import sys

from bench import protocol as proto
from bench.commands.common import (
    add_common_options,
    build_model,
    csv_list,
    load_plugins,
    parse_dataset,
    parse_modes,
    resolve_device,
)
from bench.errors import BenchError, is_out_of_memory
from bench.io import ensure_writable_folder, write_text_atomic


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "overhead",
        help="bench's latency against a bare CUDA-event loop around the same step (GPU): the harness's overhead",
    )
    add_common_options(p, archs="the realtime suite", modes="eager,graph", writes="overhead.md", device="gpu")
    p.add_argument("--dataset", default="ade20k", help="protocol dataset (input size, classes)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import pandas as pd
    import torch

    import archs
    from bench.measure.latency import bare_latency, measure_latency
    from bench.provenance import device_slug, provenance
    from bench.suites import get_suite

    load_plugins(args)
    device = resolve_device(args.device) if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        raise BenchError("bench overhead compares CUDA-event loops: run it on a GPU machine (--device cuda or cuda:N)")
    names = csv_list(args.arch, "--arch") or get_suite("realtime").names()
    specs = [archs.get_spec(name) for name in names]  # every name checked before the first measurement
    ds = parse_dataset(args.dataset)
    modes = parse_modes(args.modes)
    folder = args.results / device_slug(device)
    ensure_writable_folder(folder)
    speed = proto.SPEED["cuda"]
    prov = provenance(device)
    note = (
        f"\n\nOne process on {prov.get('gpu_name')}, driver {prov.get('driver')}, torch {prov['torch']}, segbench "
        f"{(prov.get('git_commit') or '?')[:10]}. bench: `measure_latency` (a pair of CUDA events around every step, "
        "repeats, NVML telemetry); bare: one pair of CUDA events around the same number of steps of the same "
        "callable. overhead = bench mean / bare mean - 1.\n"
    )
    rows = []
    for spec in specs:
        name = spec.name
        size = proto.input_size(spec, ds.name)
        for mode in modes:
            try:
                model = build_model(name, ds.num_classes)
                ours = measure_latency(model, size, device=device, mode=mode, protocol=speed)
                bare = bare_latency(
                    model, size, device=device, mode=mode, protocol=speed, steps=ours.steps * ours.repeats,
                    channels_last=ours.channels_last,  # the layout bench kept: the same callable
                )  # fmt: skip
            except (RuntimeError, MemoryError) as exc:  # out of memory: this row is left out, the others go on
                if not is_out_of_memory(exc):
                    raise
                print(f"{name} {mode}: out of memory at {size[0]}x{size[1]}, left out", file=sys.stderr)
                torch.cuda.empty_cache()
                continue
            rows.append(
                {
                    "arch": name,
                    "input": "x".join(map(str, size)),
                    "mode": mode,
                    "bench_median_ms": ours.median_ms,
                    "bench_mean_ms": ours.mean_ms,
                    "bare_mean_ms": bare,
                    "overhead_pct": 100.0 * (ours.mean_ms / bare - 1.0),
                }
            )
            print(f"{name} {mode}: bench {ours.mean_ms:.3f} ms mean vs bare loop {bare:.3f} ms")
            # rewritten after every row: a run cut short keeps what it measured
            write_text_atomic(
                folder / "overhead.md", pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f") + note
            )
    if not rows:
        raise BenchError("bench overhead: no model could be measured (each ran out of memory); see above")
    print(f"wrote {folder / 'overhead.md'}")
    return 0
