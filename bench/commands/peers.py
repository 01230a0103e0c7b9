"""`bench peers`: our models against HF / torchvision / smp in one process, same mode."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from bench import protocol as proto
from bench.commands.common import csv_list, parse_modes, resolve_device
from bench.errors import BenchError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "peers",
        help="time our models against HF transformers / torchvision / smp equivalents (ratio > 1: ours faster)",
    )
    p.add_argument("--arch", action="append", default=[], help="only these of our models (default: all with peers)")
    p.add_argument("--sizes", default="512x512,1024x2048", help="comma-separated HxW input sizes")
    p.add_argument("--modes", default="eager,graph", help="speed modes (graph needs CUDA)")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    p.add_argument("--results", type=Path, default=Path("results"), help="writes <results>/<device>/peers.md|csv")
    p.set_defaults(handler=run)


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        return h, w
    except ValueError:
        raise BenchError(f"--sizes: {text!r} is not HxW (e.g. 512x512)") from None


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from bench import peers
    from bench.provenance import device_slug, gpu_handle, provenance

    console = Console(stderr=True)
    device = resolve_device(args.device)
    modes = parse_modes(args.modes)
    if device == "cpu":
        modes = [m for m in modes if not proto.needs_cuda(m)]
    sizes = [parse_size(s) for s in csv_list([args.sizes])]
    pairs = peers.select(csv_list(args.arch))
    skipped = sorted({p.requires for p in pairs if not peers.available(p)})
    if skipped:
        console.print(f"[yellow]note:[/] not installed, their peers are skipped: {', '.join(skipped)}")
    pairs = [p for p in pairs if peers.available(p)]
    handle = gpu_handle(device) if device != "cpu" else None
    speed = proto.SPEED["cuda" if device != "cpu" else "cpu"]
    rows = []
    for pair in pairs:
        for size in sizes:
            num_classes = 150 if size[0] == size[1] else 19
            for mode in modes:
                try:
                    row = peers.compare(
                        pair, size, mode, device=device, protocol=speed, num_classes=num_classes, nvml_handle=handle
                    )
                except Exception as exc:  # one peer failing (e.g. out of memory) must not end the comparison
                    console.print(
                        f"  [red]failed[/] {pair.ours} vs {pair.peer} {size} {mode}: {type(exc).__name__}: {exc}"
                    )
                    continue
                rows.append(row)
                console.print(
                    f"  {pair.ours} vs {pair.peer} @{row['input']} {mode}: "
                    f"{row['ours_ms']:.2f} ms vs {row['peer_ms']:.2f} ms -> {row['ratio']:.2f}x"
                )
    if not rows:
        raise BenchError("no peer comparison ran; install the peers (pip install -e '.[peers]') or pick --arch")
    folder = args.results / device_slug(device)
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(folder / "peers.csv", index=False, float_format="%.4f")
    prov = provenance(device)
    where = prov.get("gpu_name") or f"CPU ({prov['cpu']})"
    text = frame.to_markdown(index=False, floatfmt=".3f")
    text += (
        f"\n\nMeasured in one process on {where}, torch {prov['torch']}; ratio = peer ms / our ms (> 1: ours faster). "
        "Random weights; a step is forward + resize + argmax, median latency (protocol "
        f"v{proto.PROTOCOL_VERSION}). Classes: 150 at square sizes, 19 otherwise.\n"
    )
    (folder / "peers.md").write_text(text)
    console.print(f"wrote {folder / 'peers.md'} and peers.csv")
    return 0
