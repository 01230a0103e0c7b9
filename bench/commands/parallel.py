"""`bench run --devices`: a run's jobs over several workers at once (`bench.workers`, `bench.scheduler`).

Each worker is a GPU, or a share of the CPU's cores, and runs one job at a time in a child process bound
to it; the longest jobs start first. Each GPU is a machine of its own for the records (its board's
`bench.provenance.machine_id`), and a rerun reuses what any of the run's workers recorded.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace

from bench import jobs as jobs_mod
from bench import scheduler, workers
from bench.errors import BenchError
from bench.provenance import device_slug, machine_id
from bench.store import Record


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--devices",
        default=None,
        help="run jobs in parallel, one per device at a time: all (every visible GPU), cuda:0,cuda:1,... or, "
        "without GPUs, CPU workers cpu:0,cpu:1,... (each gets an even share of the cores)",
    )
    parser.add_argument(
        "--exclusive", action="store_true", help="with --devices: one job at a time on the node (no neighbours)"
    )


def parse_workers(args: argparse.Namespace) -> list[workers.Worker]:
    """The workers of --devices (none without it); a `BenchError` for a device this machine does not have."""
    if args.devices is None:  # one job at a time already: --exclusive changes nothing
        return []
    if args.device is not None:
        raise BenchError(
            f"--device {args.device} and --devices {args.devices}: pass one (--devices cuda:1 runs on that GPU alone)"
        )
    return workers.parse_devices(args.devices)


def machines(found: Collection[workers.Worker], slug: str) -> dict[str, str]:
    """Each worker's `bench.provenance.machine_id`, by its name; a `BenchError` for a GPU of another model than
    ``slug`` (its records would belong to another device folder)."""
    for worker in found:
        if worker.kind == "cuda" and device_slug(worker.name) != slug:
            raise BenchError(
                f"--devices: {worker.name} is a {device_slug(worker.name)}, not a {slug} as the first; run each "
                "GPU model as its own --devices run"
            )
    return {worker.name: machine_id(worker.name) for worker in found}


def placed(record: Record) -> str:
    """`` on cuda:1``: the worker a job of a parallel run ran on ("" for a serial run's)."""
    placement = (record.provenance or {}).get("placement")
    return f" on {placement['device']}" if isinstance(placement, dict) else ""


def run_jobs(
    todo: Sequence[jobs_mod.Job],
    found: Sequence[workers.Worker],
    options: jobs_mod.RunOptions,
    machine_ids: dict[str, str],
    recorded: Sequence[Record],
    args: argparse.Namespace,
    show: Callable[..., None],
    keep: Callable[[jobs_mod.Job, Record], None],
) -> None:
    """``todo`` over the workers ``found``, the longest first; ``keep`` each record as its job ends.

    Args:
        todo: the jobs to run.
        found: the workers.
        options: the run's (each worker's record names its own machine, ``machine_ids``).
        machine_ids: each worker's machine, by its name (`machines`).
        recorded: the folder's records (their FLOP counts order the jobs).
        args: the run's options (``--job-timeout``, ``--exclusive``).
        show: called with ``description=`` what a worker starts (a progress bar's update).
        keep: called with each record, in this thread.
    """
    by_worker = {worker.name: replace(options, machine_id=machine_ids[worker.name]) for worker in found}
    ordered = scheduler.longest_first(todo, found[0].kind, scheduler.measured_gflops(recorded))

    def run_one(job: jobs_mod.Job, worker: workers.Worker) -> Record:
        return jobs_mod.run_job(job, by_worker[worker.name], job.timeout_s(args.job_timeout), worker)

    scheduler.run_parallel(
        ordered,
        found,
        run_one,
        exclusive=args.exclusive,
        on_start=lambda job, worker: show(description=f"{worker.name} {job.label}"),
        on_record=keep,
    )
