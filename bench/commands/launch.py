"""`bench run --launcher`: the run as a job array of shards (`bench.slurm`), instead of on this machine.

Each array task runs the same `bench run` on its shard (``--shard i/n``) on a node of its own, on
every GPU the task asks for (``--devices all``), and appends to the one shared results folder.
``--launcher local`` runs the same tasks as processes of this machine, through submitit's local
executor: a dry run of a submission. ``--wait`` follows the array, names each failed task with its
log, and writes the tables at the end.
"""

from __future__ import annotations

import argparse

from bench import slurm
from bench.errors import BenchError
from bench.workers import device_names

LAUNCHERS = ("slurm", "local")
# Options that only a launcher takes: given without --launcher, each is an error.
LAUNCHER_FLAGS = {"partition": "--partition", "nodes": "--nodes", "gpus_per_node": "--gpus-per-node"}
LAUNCHER_FLAGS |= {"time": "--time", "wait": "--wait"}
DEFAULT_TIME = "24:00:00"
# Seconds between looks at the tasks' states while --wait follows them: Slurm's accounting is asked
# sparingly; a local task is a process of this machine.
POLL_S = {"slurm": 10.0, "local": 0.5}


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default=None,
        help="submit the run as a job array, one shard per task: slurm (through submitit, the optional extra "
        "slurm), or local (the same tasks as processes of this machine: a dry run)",
    )
    parser.add_argument("--partition", default=None, help="with --launcher slurm: the Slurm partition")
    parser.add_argument("--nodes", type=int, default=None, help="with --launcher: array tasks, a node and a shard each")
    parser.add_argument(
        "--gpus-per-node",
        type=int,
        default=None,
        help="with --launcher: GPUs per task, each a worker (--devices all); default 0: jobs one by one on the CPU",
    )
    parser.add_argument(
        "--time", default=None, help=f"with --launcher: each task's time limit, [D-]HH:MM:SS (default {DEFAULT_TIME})"
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="with --launcher: follow the array to its end, name each failed task with its log, write the tables",
    )


def check_unlaunched(args: argparse.Namespace) -> None:
    """A `BenchError` for an option of the launcher given to a run on this machine."""
    for dest, flag in LAUNCHER_FLAGS.items():
        if getattr(args, dest) not in (None, False):
            raise BenchError(f"{flag} belongs to a submitted array: pass it with --launcher slurm (or local)")


def slurm_options(args: argparse.Namespace) -> slurm.SlurmOptions:
    """What each array task asks for; a `BenchError` for an option a submission cannot take."""
    slurm.import_submitit(args.launcher)
    if args.shard is not None:
        raise BenchError(f"--shard {args.shard}: --launcher gives each task its shard; leave --shard out")
    if args.devices is not None:
        device_names(args.devices)  # its form; each task checks its node has the devices
    nodes = 1 if args.nodes is None else args.nodes
    gpus = 0 if args.gpus_per_node is None else args.gpus_per_node
    if nodes < 1:
        raise BenchError(f"--nodes {nodes}: give at least one node (one array task each)")
    if gpus < 0:
        raise BenchError(f"--gpus-per-node {gpus}: give 0 (the CPU) or more GPUs")
    return slurm.SlurmOptions(
        tasks=nodes,
        partition=args.partition,
        gpus_per_node=gpus,
        timeout_min=slurm.parse_time(args.time or DEFAULT_TIME),
        cluster=args.launcher,
    )


def launch(args: argparse.Namespace) -> int:
    """Submit the run's array; with --wait, follow it, report each failed task and write the tables.

    Exit status 1 when a task failed (its shard's jobs may be missing: a rerun submits them again).
    """
    from rich.console import Console

    console = Console(stderr=True)
    options = slurm_options(args)
    devices = "all" if options.gpus_per_node else None  # a CPU task runs its jobs one by one

    def argv(index: int, count: int) -> list[str]:
        return slurm.task_argv(args.command_parser, args, index, count, results=args.results, devices=devices)

    submitted = slurm.submit_suite(argv, options, args.results)
    console.print(submitted.describe(), markup=False, soft_wrap=True)
    if not args.wait:
        return 0
    outcomes = submitted.wait(console, poll_s=POLL_S[options.cluster])
    failed = [outcome for outcome in outcomes if outcome.error is not None]
    for outcome in failed:
        console.print(outcome.line(), markup=False, soft_wrap=True)
    console.print(
        f"done: {len(outcomes) - len(failed)} task(s) done, {len(failed)} failed; "
        f"{submitted.records_written()} record(s) written"
    )
    if not args.no_report:
        for path in slurm.write_suite_reports(args.results):
            console.print(f"  wrote {path}")
    return 1 if failed else 0
