"""`bench plot`: regenerate the accuracy-vs-speed plots (and tables) from the stored records."""

from __future__ import annotations

import argparse

from bench.commands import table
from bench.commands.common import add_common_options
from bench.report.writers import WRITERS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("plot", help="regenerate the mIoU-vs-FPS plots (PNG and SVG) from the records")
    add_common_options(p, writes="plots/", device="folder", protocol="plot")
    p.add_argument(
        "--speed",
        default=None,
        help="speed axes, comma-separated: a speed mode's FPS or best-batch (images/s of the batch sweep); "
        "default: every measured one",
    )
    p.set_defaults(handler=table.run, plots=True, format=",".join(WRITERS))  # the tables are regenerated too
