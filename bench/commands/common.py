"""The options the `bench` subcommands share (`add_common_options`), and the parsing of their values."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Literal

import archs
from bench.data.base import expand_user
from bench.errors import BenchError, check_interrupt, described

PLUGIN_ENV = "SEGBENCH_PLUGINS"
# A user's own measurements (git-ignored), and the reference results segbench ships: a command reads and
# writes the first unless --results names another folder.
RUNS = Path("runs")
REFERENCES = Path("results")
MAX_SIDE = 16384  # --size / --sizes: 16 times the protocol's 1024 rows; one 3-channel fp32 input is then 3 GiB


# What --device names: the device a command computes on, or the device folder of the records it reads.
DEVICE_HELP = {
    "compute": "cuda, cuda:N or cpu (default: cuda when available)",
    "gpu": "cuda or cuda:N (default: cuda)",
    "folder": "only this device folder (default: every folder with records)",
}


def add_common_options(
    parser: argparse.ArgumentParser,
    *,
    archs: str | None = None,
    modes: str | None = None,
    writes: str | None = None,
    device: Literal["compute", "gpu", "folder"] | None = None,
    protocol: str | None = None,
    plugins: bool = True,
) -> None:
    """The options the commands share, each declared here once.

    Args:
        parser: the command's parser.
        archs: adds ``--arch`` (repeated or comma-separated): the architectures it defaults to, for the help.
        modes: adds ``--modes``: the speed modes it defaults to, comma-separated.
        writes: adds ``--results DIR``: what the command writes under ``<results>/<device>/``, for the help
            (e.g. ``profiles/``; "" for nothing named); default `RUNS` (this machine's measurements;
            `REFERENCES` holds the shipped ones).
        device: adds ``--device``: what it names (`DEVICE_HELP`).
        protocol: adds ``--protocol VERSION`` (default: the current one): what the command does with it.
        plugins: adds ``--plugin MODULE`` (repeatable; also $SEGBENCH_PLUGINS), see `load_plugins`.
    """
    from bench import protocol as proto

    if archs is not None:
        parser.add_argument(
            "--arch", action="append", default=[], help=f"architectures, repeat or comma-separate (default: {archs})"
        )
    if modes is not None:
        parser.add_argument(
            "--modes",
            default=modes,
            help=f"speed modes, comma-separated (default: {modes}; all: {', '.join(proto.MODES)}; a CPU leaves out "
            "those that need CUDA)",
        )
    if writes is not None:
        what = f"writes <results>/<device>/{writes}; " if writes else ""
        parser.add_argument(
            "--results",
            type=path_arg,
            default=RUNS,
            help=f"results folder ({what}default: ./{RUNS}, git-ignored; the reference results shipped with "
            f"segbench are in ./{REFERENCES})",
        )
    if device is not None:
        parser.add_argument("--device", default=None, help=DEVICE_HELP[device])
    if protocol is not None:
        parser.add_argument("--protocol", default=proto.PROTOCOL_VERSION, help=f"protocol version to {protocol}")
    if plugins:
        parser.add_argument(
            "--plugin",
            action="append",
            default=[],
            metavar="MODULE",
            help=f"import MODULE to register extra models (also ${PLUGIN_ENV}, comma-separated)",
        )


def load_plugins(args: argparse.Namespace) -> list[str]:
    """Import the --plugin modules (and $SEGBENCH_PLUGINS); returns them for child processes."""
    modules = csv_list(args.plugin, "--plugin") + csv_list([os.environ.get(PLUGIN_ENV, "")])
    for module in modules:
        archs.import_models(module)
    return modules


def csv_list(values: list[str] | None, option: str | None = None) -> list[str]:
    """Flatten repeated and comma-separated options, dropping empty items, keeping order.

    With ``option``, an option given with nothing in it (``--arch ""``) is a `BenchError`, not its default.
    """
    out: list[str] = []
    for value in values or []:
        for item in value.split(","):
            item = item.strip()
            if item and item not in out:
                out.append(item)
    if option and values and not out:
        raise BenchError(f"{option}: empty; give at least one value (or leave the option out for its default)")
    return out


def parse_modes(text: str) -> list[str]:
    """The speed modes of a comma-separated ``--modes``; a `BenchError` naming the choices otherwise."""
    from bench import protocol as proto

    modes = csv_list([text], "--modes")
    for mode in modes:
        if mode not in proto.MODES:
            raise BenchError(f"--modes: unknown mode {mode!r}; choose from {', '.join(proto.MODES)}")
    return modes


def parse_dataset(name: str):
    """The `bench.protocol.DatasetProtocol` of ``--dataset name``; a `BenchError` naming the choices otherwise."""
    from bench import protocol as proto

    try:
        return proto.dataset(name)
    except ValueError as exc:
        raise BenchError(f"--dataset: {exc}") from None


def parse_size(text: str, option: str) -> tuple[int, int]:
    """``HxW`` as (H, W) positive ints; a `BenchError` naming ``option`` otherwise."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise BenchError(f"{option}: {text!r} is not HxW (e.g. 512x512)") from None
    if h <= 0 or w <= 0:
        raise BenchError(f"{option}: {text!r} needs a positive height and width (e.g. 512x512)")
    if max(h, w) > MAX_SIDE:
        raise BenchError(f"{option}: {text!r} is over {MAX_SIDE} pixels a side; the protocol's largest is 1024x2048")
    return h, w


def resolve_device(requested: str | None) -> str:
    """``cuda``/``cuda:N``/``cpu``; default cuda when available. A `BenchError` without a GPU."""
    import torch

    if requested is None:
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise BenchError(f"--device {requested!r}: expected cuda, cuda:N or cpu") from None
    if device.type == "cpu":
        if device.index not in (None, 0):
            raise BenchError(f"--device {requested!r}: the CPU has no device index; use --device cpu")
        return "cpu"
    if device.type != "cuda":
        raise BenchError(f"--device {requested!r}: expected cuda, cuda:N or cpu")
    if not torch.cuda.is_available():
        raise BenchError(
            f"--device {requested}: no CUDA GPU is visible to PyTorch; use --device cpu or run on a GPU machine"
        )
    index = device.index or 0
    if index >= torch.cuda.device_count():
        raise BenchError(f"--device {requested}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return f"cuda:{index}"


def job_progress(console):
    """The progress bar of a command that works through a list of jobs: the current job's label, the
    bar, done/total and the time elapsed; it vanishes when done (each job prints its own line)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def path_arg(text: str) -> Path:
    """argparse ``type`` of a path option: ``~`` expanded; an empty or unexpandable one is a usage error."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path; give a folder (or leave the option out for its default)")
    try:
        return expand_user(text, "path")
    except BenchError as exc:  # ~user of no such user
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_model(name: str, num_classes: int):
    """``archs.build``, with a builder that fails (a plugin's) as a `BenchError` naming the model."""
    check_interrupt()
    try:
        return archs.build(name, num_classes=num_classes)
    except archs.UnknownArchError:
        raise
    except Exception as exc:
        raise BenchError(
            f"building {name} failed ({described(exc)}); fix the model's builder (or its --plugin module)"
        ) from exc
