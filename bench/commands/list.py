"""`bench list`: the registered architectures, or what a suite will run."""

from __future__ import annotations

import argparse

import archs
from bench import protocol as proto
from bench.commands.common import add_common_options, load_plugins
from bench.suites import SUITES, get_suite


def register(subparsers) -> None:
    p = subparsers.add_parser("list", help="list registered architectures and suites")
    p.add_argument("--suite", default=None, help=f"only this suite ({', '.join(SUITES)})")
    p.add_argument("--verbose", "-v", action="store_true", help="print every job the suite would run")
    add_common_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    load_plugins(args)
    suite = get_suite(args.suite) if args.suite is not None else None
    names = suite.names() if suite else archs.list_archs()
    rows = []
    for name in names:
        spec = archs.get_spec(name)
        sizes = ", ".join(f"{d} {'x'.join(map(str, proto.input_size(spec, d)))}" for d in proto.DATASETS)
        rows.append([name, spec.family, spec.encoder, spec.scale, f"{spec.paper}", sizes])
    print(tabulate(rows, headers=["name", "method", "encoder", "scale", "paper", "input"]))
    if not suite:
        print(
            "\nsuites: "
            + "; ".join(f"{s.name} ({len(s.archs) or 'every model'}: {s.description})" for s in SUITES.values())
        )
    elif args.verbose:
        from bench.jobs import plan
        from bench.measurements import defaults

        print(f"\n{suite.name}: datasets {', '.join(suite.datasets)}; jobs (each in its own child process):")
        for job in plan(names, list(suite.datasets), list(proto.DEFAULT_MODES), kinds=defaults("cuda")):
            print(f"  {job.label}")
    return 0
