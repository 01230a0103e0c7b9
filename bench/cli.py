"""`bench`: the command line. Each subcommand lives in its own module under `bench.commands`.

A command module exposes ``register(subparsers)``, which adds its parser and sets
``handler=<function(args) -> int>``. Errors a user can fix are raised as `BenchError` (or
`archs.UnknownArchError`) and printed as one line, with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from pathlib import Path

from bench import __version__
from bench.errors import BenchError

COMMANDS = ("run", "eval", "table", "plot", "list", "env", "peers", "overhead", "profile", "data", "weights")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench",
        description="segbench: params, FLOPs, GPU speed and mIoU of semantic-segmentation architectures.",
    )
    parser.add_argument("--version", action="version", version=f"segbench {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"bench.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bench.commands.{name}":
                continue
            raise
        module.register(subparsers)
    return parser


_PACKAGES = tuple(str(Path(__file__).resolve().parent.parent / name) for name in ("bench", "archs"))
_default_formatwarning = warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """segbench's own warnings as one line, like its errors; everyone else's as Python prints them."""
    if str(Path(filename).resolve()).startswith(_PACKAGES):
        return f"bench: warning: {message}\n"
    return _default_formatwarning(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _format_warning
    try:
        from archs import UnknownArchError  # imports torch: inside the try, where Ctrl-C is handled

        args = build_parser().parse_args(argv)
        try:
            return int(args.handler(args) or 0)
        except (BenchError, UnknownArchError) as exc:
            print(f"bench: error: {exc}", file=sys.stderr)
            return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print("bench: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`bench list | head`): stop quietly, as on SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # what is still buffered goes nowhere
        return 141  # 128 + SIGPIPE: what a shell reports for a command a closed pipe ended


def entry() -> None:
    """The console script (and ``python -m bench``): `main`, then the process ends at once.

    Every file a command writes is closed before `main` returns (records are also fsynced), so
    what the immediate exit skips is only the interpreter's teardown of torch and the registry, a
    few seconds per command. An error `main` does not handle still ends with its traceback.
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`bench list | head`) or a closed stream
            pass
    os._exit(code)
