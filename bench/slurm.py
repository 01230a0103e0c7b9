"""A suite over a Slurm cluster: a job array through submitit, one shard of the suite per task.

Each array task runs ``bench run ... --shard i/n`` in its own process on its own node (using the
node's GPUs, ``--devices all``), and every task appends to one shared results folder (the record
store's file lock keeps concurrent writers apart). `submit_suite` submits the array;
`SubmittedSuite.wait` follows it with a progress bar and names each failed task with its log;
`write_suite_reports` then writes the tables of every device folder the tasks wrote.

submitit is an optional dependency (``pip install -e ".[slurm]"``); a missing one is a one-line error.
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError, first_line

EXTRA_HINT = 'pip install -e ".[slurm]" (or pip install submitit)'
# Options of `bench run` a task does not take from the user's command: the launcher's own, and those it
# sets for each task itself.
LAUNCHER_DESTS = frozenset(
    {"launcher", "partition", "nodes", "gpus_per_node", "cpus_per_task", "time", "wait"}
    | {"shard", "results", "no_report"}
)
# Cores asked for per GPU when --cpus-per-task is not given: each GPU's worker gets its own (a job's
# launch overhead is CPU-bound), and almost every GPU node has this many.
CPUS_PER_GPU = 4
# `bench run`'s exit statuses that mean the task did its work: 0 all ok, 1 some jobs failed (and recorded).
DONE_STATUSES = (0, 1)
_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


class TaskFailed(RuntimeError):
    """An array task whose `bench` command did not finish its shard (a usage error, an interrupt)."""


def import_submitit(launcher: str = "slurm") -> Any:
    """The submitit module; a `BenchError` naming the extra to install where it is missing."""
    try:
        import submitit
    except ImportError:
        raise BenchError(f"--launcher {launcher} needs submitit, an optional extra: {EXTRA_HINT}") from None
    return submitit


def parse_time(text: str) -> int:
    """Slurm's ``--time`` (``minutes``, ``HH:MM:SS``, ``MM:SS``, ``D-HH``, ``D-HH:MM[:SS]``) in whole minutes."""
    match = _TIME.fullmatch(text.strip())
    if not match:
        raise BenchError(f"--time {text!r}: expected minutes or Slurm's [D-]HH:MM:SS (e.g. --time 4:00:00)")
    days, hours_or_minutes, second, third = match.groups()
    first = int(hours_or_minutes)
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + first * 3600 + int(second or 0) * 60 + int(third or 0)
    elif third is not None:  # HH:MM:SS
        seconds = first * 3600 + int(second) * 60 + int(third)
    elif second is not None:  # MM:SS
        seconds = first * 60 + int(second)
    else:  # minutes
        seconds = first * 60
    if seconds <= 0:
        raise BenchError(f"--time {text!r}: give the tasks some time (e.g. --time 4:00:00)")
    return math.ceil(seconds / 60)


@dataclass(frozen=True)
class SlurmOptions:
    """How the suite's array tasks are asked for.

    Args:
        tasks: array tasks, one shard of the suite and one node each (``--nodes``).
        partition: the Slurm partition (None: the cluster's default).
        gpus_per_node: GPUs each task asks for (0: none, a CPU suite).
        cpus_per_task: cores each task asks for (None: `CPUS_PER_GPU` per GPU, the cluster's default without GPUs).
        timeout_min: each task's time limit in minutes (`parse_time` of ``--time``).
        name: the Slurm job name.
        exclusive_nodes: ask for whole nodes, so that no other job runs beside the measurements.
        cluster: ``slurm``, or ``local`` to run the tasks as processes of this machine (tests, a dry run).
    """

    tasks: int = 1
    partition: str | None = None
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    timeout_min: int = 24 * 60
    name: str = "segbench"
    exclusive_nodes: bool = True
    cluster: str = "slurm"

    def parameters(self) -> dict[str, Any]:
        """submitit's `update_parameters` of these options (``slurm_*`` ones apply on Slurm only)."""
        cpus = self.cpus_per_task
        if cpus is None and self.gpus_per_node:
            cpus = CPUS_PER_GPU * self.gpus_per_node
        parameters: dict[str, Any] = {
            "name": self.name,
            "timeout_min": self.timeout_min,
            "nodes": 1,
            "tasks_per_node": 1,
            "gpus_per_node": self.gpus_per_node,
            "cpus_per_task": cpus,
            "slurm_array_parallelism": self.tasks,
        }
        if self.cluster == "slurm":
            parameters.update(slurm_partition=self.partition, slurm_exclusive=self.exclusive_nodes or None)
        return {key: value for key, value in parameters.items() if value is not None}


def run_task(argv: list[str]) -> int:
    """One array task: `bench` with ``argv`` in this process. A status other than `DONE_STATUSES` raises,
    so that Slurm (and `SubmittedSuite.wait`) counts the task as failed."""
    from bench.cli import main

    try:
        code = main(argv)
    except SystemExit as exc:  # a usage error of argparse
        code = exc.code if isinstance(exc.code, int) else 2
    if code not in DONE_STATUSES:
        raise TaskFailed(f"bench {shlex.join(argv)} exited with status {code}")
    return code


def task_argv(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    index: int,
    count: int,
    *,
    results: Path,
    devices: str | None = "all",
) -> list[str]:
    """The ``bench run`` command line of array task ``index`` (1-based) of ``count``.

    The user's options as ``parser`` parsed them into ``args`` (the launcher's left out), then ``--shard
    index/count``, the shared ``--results`` folder (absolute) and ``--no-report``; and ``--devices devices``
    where the user chose no device (None: none, a task on a node without GPUs runs its jobs one by one).
    """
    argv = ["run"]
    dests = set()
    for action in parser._actions:
        dests.add(action.dest)
        if not action.option_strings or action.dest in LAUNCHER_DESTS | {"help"}:
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default or value is None:
            continue
        flag = max(action.option_strings, key=len)
        if action.nargs == 0:  # a flag: store_true and friends
            argv.append(flag)
        elif isinstance(value, list):  # an option given several times
            for item in value:
                argv += [flag, _text(item)]
        else:
            argv += [flag, _text(value)]
    argv += ["--shard", f"{index}/{count}", "--results", str(Path(results).resolve()), "--no-report"]
    chosen = {getattr(args, "devices", None), getattr(args, "device", None)} - {None}
    if devices is not None and "devices" in dests and not chosen:
        argv += ["--devices", devices]
    return argv


def _text(value: Any) -> str:
    return str(value.resolve()) if isinstance(value, Path) else str(value)


@dataclass(frozen=True)
class TaskOutcome:
    """How one array task ended.

    Args:
        index: the task's shard, 1-based.
        count: the array's tasks.
        job_id: Slurm's id of the task (``<array>_<task>``).
        state: Slurm's (or the local executor's) final state.
        error: the task's error, one line (None: it did its shard).
        log: the task's stderr log.
    """

    index: int
    count: int
    job_id: str
    state: str
    error: str | None
    log: Path

    @property
    def name(self) -> str:
        return f"task {self.index}/{self.count} (job {self.job_id})"

    def line(self) -> str:
        """``task 2/4 (job 123_1) failed: <error>; log: <path>``, or that it did its shard."""
        if self.error is None:
            return f"{self.name} done"
        return f"{self.name} failed: {self.error}; log: {self.log}"


def _error_line(exc: BaseException, state: str) -> str:
    """One line for a failed task: the exception its trace ended on (a task that raised), else its state
    (a task Slurm ended: a time limit, a node failure, a cancel)."""
    sections = str(exc).split("\n----------------------\n")
    if type(exc).__name__ == "FailedJobError" and len(sections) >= 3:
        lines = [line.strip() for line in sections[1].splitlines() if line.strip()]
        if lines:
            return lines[-1][:300]
    return f"no result (state {state})"


@dataclass
class SubmittedSuite:
    """A submitted array: its tasks' submitit jobs and command lines, and the shared results folder.

    Args:
        jobs: submitit's job of each task, in shard order.
        argvs: each task's ``bench`` command line.
        results: the shared results folder.
    """

    jobs: list[Any]
    argvs: list[list[str]]
    results: Path
    baseline: int = field(default=0)

    @property
    def array_id(self) -> str:
        return str(self.jobs[0].job_id).split("_")[0]

    @property
    def logs(self) -> Path:
        return Path(self.jobs[0].paths.stderr).parent

    def describe(self) -> str:
        """One line: what was submitted and where its logs and records go."""
        return (
            f"submitted array {self.array_id}: {len(self.jobs)} task(s), records to {self.results}, logs in "
            f"{self.logs}; when it ends: bench table --results {self.results}"
        )

    def records_written(self) -> int:
        """Records appended to the shared folder since the array was submitted."""
        return count_records(self.results) - self.baseline

    def wait(self, console: Any = None, poll_s: float = 10.0) -> list[TaskOutcome]:
        """Follow the array until every task has ended (a progress bar on ``console``); each task's outcome.

        Args:
            console: a rich console for the progress bar (None: no bar).
            poll_s: seconds between looks at the tasks' states.
        """
        submitit = import_submitit()
        progress = None
        if console is not None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=console, transient=True,
            )  # fmt: skip
        bar = None
        try:
            if progress is not None:
                progress.start()
                bar = progress.add_task(f"array {self.array_id}: tasks done", total=len(self.jobs))
            failed = 0
            for job in submitit.helpers.as_completed(self.jobs, poll_frequency=poll_s):
                failed += job.exception() is not None
                if progress is not None and bar is not None:
                    description = f"array {self.array_id}: {self.records_written()} records, {failed} task(s) failed"
                    progress.update(bar, advance=1, description=description)
        finally:
            if progress is not None:
                progress.stop()
        return self.outcomes()

    def outcomes(self) -> list[TaskOutcome]:
        """Each task's outcome (call once they have ended: `wait`)."""
        found = []
        for index, job in enumerate(self.jobs, start=1):
            exc, state = job.exception(), job.state
            error = None if exc is None else _error_line(exc, state)
            found.append(TaskOutcome(index, len(self.jobs), str(job.job_id), state, error, job.paths.stderr))
        return found


def count_records(results: Path) -> int:
    """Lines of every ``records.jsonl`` under ``results``."""
    total = 0
    for path in Path(results).glob("*/records.jsonl"):
        try:
            with open(path, "rb") as f:
                total += sum(1 for line in f if line.strip())
        except OSError:
            continue
    return total


def submit_suite(
    argv_for_task: Callable[[int, int], list[str]], options: SlurmOptions, results: Path
) -> SubmittedSuite:
    """Submit the suite as an array of ``options.tasks`` tasks; task i runs ``bench`` with ``argv_for_task(i, n)``.

    The executor's files (pickled tasks, logs ``<job id>_<task>_log.out|err``) go to ``<results>/slurm/``.

    Args:
        argv_for_task: the ``bench`` command line of task i (1-based) of n (`task_argv`).
        options: what each task asks for.
        results: the shared results folder the tasks write to (on a file system every node sees).
    """
    submitit = import_submitit()
    if options.tasks < 1:
        raise BenchError(f"--nodes {options.tasks}: give at least one node")
    results = Path(results).resolve()
    executor = submitit.AutoExecutor(folder=results / "slurm", cluster=options.cluster)
    executor.update_parameters(**options.parameters())
    argvs = [argv_for_task(index, options.tasks) for index in range(1, options.tasks + 1)]
    baseline = count_records(results)
    try:
        jobs = executor.map_array(run_task, argvs)
    except Exception as exc:  # sbatch refused: a partition, a limit, no Slurm on this machine
        raise BenchError(f"submitting the array failed: {first_line(exc, 400)}") from None
    return SubmittedSuite(jobs, argvs, results, baseline)


def write_suite_reports(results: Path) -> list[Path]:
    """The tables and plots of every device folder under ``results`` (the tasks may have had several kinds)."""
    from bench.report import write_reports
    from bench.store import iter_record_files

    written: list[Path] = []
    for path in iter_record_files(Path(results)):
        written += write_reports(Path(results), path.parent.name)
    return written
