"""`bench plot`: regenerate the accuracy-vs-speed plots (and tables) from the stored records."""

from __future__ import annotations

from bench import protocol as proto
from bench.commands import table
from bench.commands.common import add_plugin_argument, add_results_argument


def register(subparsers) -> None:
    p = subparsers.add_parser("plot", help="regenerate the mIoU-vs-FPS plots (PNG and SVG) from the records")
    add_results_argument(p, "plots/")
    p.add_argument("--device", default=None, help="only this device folder (default: every folder with records)")
    p.add_argument("--protocol", default=proto.PROTOCOL_VERSION, help="protocol version to plot")
    p.add_argument(
        "--speed",
        default=None,
        help="speed axes, comma-separated: a speed mode's FPS or best-batch (images/s of the batch sweep); "
        "default: every measured one",
    )
    add_plugin_argument(p)
    p.set_defaults(handler=table.run, plots=True, format="md,csv")
