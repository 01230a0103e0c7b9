"""`bench weights`: the official checkpoints (`list`) and downloading them (`fetch`)."""

from __future__ import annotations

import argparse

import archs
from bench import protocol as proto
from bench.commands.common import add_common_options, load_plugins


def register(subparsers) -> None:
    p = subparsers.add_parser("weights", help="official checkpoints: list them, fetch them into the cache")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every official checkpoint, its source and whether it is cached")
    listing.add_argument("--verbose", "-v", action="store_true", help="print full URLs, not only file names")
    add_common_options(listing)
    listing.set_defaults(handler=run_list)
    fetch = actions.add_parser("fetch", help="download and verify an official checkpoint (needs internet)")
    fetch.add_argument("name", help="registered architecture")
    fetch.add_argument("--dataset", choices=list(proto.DATASETS), default=None, help="only this dataset's checkpoint")
    fetch.add_argument("--force", action="store_true", help="download again even when cached")
    add_common_options(fetch)
    fetch.set_defaults(handler=run_fetch)


def run_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from bench.weights import cache_dir, cached_path, list_official

    load_plugins(args)
    rows = []
    for spec, weights in list_official():
        path = cached_path(spec, weights)
        source = weights.uri if args.verbose or weights.uri.startswith("hf://") else weights.uri.rsplit("/", 1)[-1]
        rows.append([spec.name, weights.dataset, weights.format, source, "yes" if path else "-"])
    print(tabulate(rows, headers=["arch", "dataset", "format", "source", "cached"]))
    print(f"\ncache: {cache_dir()} (set $SEGBENCH_WEIGHTS to move it)")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from bench.weights import fetch, official, sha256sum

    load_plugins(args)
    spec = archs.get_spec(args.name)
    datasets = [args.dataset] if args.dataset else [w.dataset for w in spec.weights]
    if not datasets:
        official(spec, "ade20k")  # raises: no official checkpoint at all
    for dataset in datasets:
        path = fetch(spec, dataset, force=args.force)
        print(f"{spec.name} {dataset}: {path} (sha256 {sha256sum(path)})")
    return 0
