"""`bench`: the command line. Each subcommand lives in its own module under `bench.commands`.

A command module exposes ``register(subparsers)``, which adds its parser and sets
``handler=<function(args) -> int>``. Errors a user can fix are raised as `BenchError` (or
`archs.UnknownArchError`) and printed as one line, with exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import warnings
from pathlib import Path

from bench import __version__
from bench.errors import BenchError, interrupts_noted, was_interrupted

COMMANDS = ("run", "eval", "table", "plot", "list", "env", "peers", "overhead", "profile", "data", "weights")
RESUMABLE = ("run", "peers", "data")  # commands that skip, on a rerun, what they already measured (or wrote)


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line, as segbench's own (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but an unknown option is reported by the (sub)command it followed."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            _innermost(self, parsed).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


def _innermost(parser: argparse.ArgumentParser, parsed: argparse.Namespace) -> argparse.ArgumentParser:
    """The deepest subcommand parser that `parsed` chose (``bench data synth``'s for ``data synth``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(parsed, action.dest, None) or "")
            if chosen is not None:
                return _innermost(chosen, parsed)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    with interrupts_noted():
        try:
            from archs import UnknownArchError  # imports torch: inside the try, where Ctrl-C is handled

            args = build_parser().parse_args(argv)
            try:
                return int(args.handler(args) or 0)
            except (BenchError, UnknownArchError) as exc:
                if was_interrupted():  # a failure a swallowed Ctrl-C caused (a module it left half imported)
                    raise KeyboardInterrupt from None
                print(f"bench: error: {exc}", file=sys.stderr)
                return getattr(exc, "exit_code", 2)
            except BrokenPipeError:
                raise
            except OSError as exc:  # a file the command could not read or write that it did not name itself
                if was_interrupted():
                    raise KeyboardInterrupt from None
                print(f"bench: error: {_os_error(exc)}", file=sys.stderr)
                return 2
        except KeyboardInterrupt:
            return _interrupted_exit(argv)
        except BrokenPipeError:  # the reader of stdout went away (`bench list | head`): stop quietly, as on SIGPIPE
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # what is still buffered goes nowhere
            return 141  # 128 + SIGPIPE: what a shell reports for a command a closed pipe ended
        except Exception:
            if was_interrupted():
                return _interrupted_exit(argv)
            raise


def _interrupted_exit(argv: list[str] | None) -> int:
    command = sys.argv[1:2] if argv is None else argv[:1]
    resume = "; rerun the same command to resume" if command and command[0] in RESUMABLE else ""
    print(f"bench: interrupted{resume}", file=sys.stderr)
    return 130


def _os_error(exc: OSError) -> str:
    """An `OSError` as one line: the file, what went wrong, and what to do about it."""
    where = f"{exc.filename}: " if exc.filename is not None else ""
    what = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space (or write elsewhere) and rerun"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make it writable (or choose another path) and rerun"
    else:
        fix = "check the path and rerun"
    return f"{where}{what}; {fix}"


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
