"""`bench run`: measure a suite, append records, regenerate the tables and plots.

A run is parse (`parse_request`: every option checked before any work) -> plan (`plan_run`: the jobs,
and which of them this machine has recorded already) -> execute (`execute`: each job in its child
process, its record appended; with ``--devices``, over several workers at once, `bench.scheduler`) ->
report (`report`: the counts, the tables and plots regenerated). ``--launcher`` submits the run as an array
of shards instead (`bench.commands.launch`).
"""

from __future__ import annotations

import argparse
import functools
import math
import re
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import archs
from bench import jobs as jobs_mod
from bench import measurements
from bench import protocol as proto
from bench.commands import launch, parallel
from bench.commands.common import (
    REFERENCES,
    add_common_options,
    csv_list,
    job_progress,
    load_plugins,
    parse_dataset,
    parse_modes,
    resolve_device,
)
from bench.data import open_dataset
from bench.data.base import expand_user
from bench.errors import BenchError
from bench.provenance import CHECKOUT, device_slug, machine_id
from bench.store import RECORDS_FILE, Key, Record, RecordStore, read_peaks, write_peaks
from bench.suites import SUITES, get_suite
from bench.workers import Worker


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="measure a suite (params, FLOPs, speed[, mIoU]) and regenerate tables and plots",
        description="Measure every architecture of a suite under the fixed protocol. Each measurement runs "
        "in its own child process with a time limit; a rerun skips what is already recorded.",
    )
    p.add_argument("--suite", default="realtime", help=f"one of {', '.join(SUITES)} (default: realtime)")
    p.add_argument("--dataset", default="ade20k,cityscapes", help="comma-separated protocol datasets")
    p.add_argument(
        "--measure",
        default=None,
        help=f"measurements: {', '.join(measurements.selectable())} (default on a GPU: "
        f"{', '.join(measurements.defaults('cuda'))}; on a CPU: {', '.join(measurements.defaults('cpu'))}; "
        "mIoU: --data-root)",
    )
    modes = ",".join(proto.DEFAULT_MODES)
    add_common_options(p, archs="the suite's", modes=modes, writes="records.jsonl, tables, plots", device="compute")
    p.add_argument("--force", action="store_true", help="measure again what is already recorded")
    p.add_argument("--job-timeout", type=float, default=None, help="seconds per job (default: per measurement)")
    p.add_argument("--shard", default=None, help="i/n: run the i-th of n deterministic shards of the job list")
    p.add_argument("--data-root", default=None, help="dataset root: adds mIoU jobs (needs official weights)")
    p.add_argument(
        "--weights", default=None, help="checkpoint of the mIoU jobs: official (default), PATH, none (random weights)"
    )
    p.add_argument("--no-report", action="store_true", help="do not regenerate tables and plots")
    parallel.add_options(p)
    launch.add_options(p)
    p.set_defaults(handler=run, command_parser=p)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise BenchError(f"--shard {text!r}: expected i/n with 1 <= i <= n, e.g. --shard 1/2")
    return int(match[1]), int(match[2])


@dataclass(frozen=True)
class Request:
    """What a run was asked for, every option checked.

    Args:
        names: the architectures.
        datasets: the protocol datasets.
        modes: the speed modes this device runs.
        cpu_skips: the speed modes asked for that a CPU cannot run (left out).
        kinds: the measurements (`bench.measurements`), those a dataset root adds included.
        device: ``cuda:N`` or ``cpu`` (with workers: the first worker's GPU, or the CPU).
        shard: (i, n): the i-th of n shards of the jobs, or None for all.
        plugins: the plugin modules, for the child processes.
        workers: the workers of ``--devices`` (none: one job after the other on ``device``).
    """

    names: list[str]
    datasets: list[str]
    modes: list[str]
    cpu_skips: list[str]
    kinds: list[str]
    device: str
    shard: tuple[int, int] | None
    plugins: list[str]
    workers: tuple[Worker, ...] = ()


@dataclass(frozen=True)
class Plan:
    """The jobs of a run and what it reuses.

    Args:
        store: the device folder's records.
        machine: this machine's `bench.provenance.machine_id`.
        recorded: the folder's records when the run began.
        jobs: the jobs of this run (this shard's).
        done: the keys this machine has recorded and the run reuses.
        outdated: the keys this machine has recorded that no longer answer the run (measured again).
        options: what each child needs besides its job.
        workers: the workers of a parallel run (none: a serial run).
        machines: the `bench.provenance.machine_id` of each worker, by its name.
    """

    store: RecordStore
    machine: str
    recorded: list[Record]
    jobs: list[jobs_mod.Job]
    done: set[Key]
    outdated: set[Key]
    options: jobs_mod.RunOptions
    workers: tuple[Worker, ...]
    machines: dict[str, str]


def run(args: argparse.Namespace) -> int:
    if args.launcher is not None:
        check_suite(args)
        return launch.launch(args)
    jobs_mod.start_job_server()  # its imports overlap the planning below
    try:
        from rich.console import Console

        console = Console(stderr=True)
        request = parse_request(args)
        planned = plan_run(args, request)
        announce(args, request, planned, console)
        counts = execute(args, planned, console)
        return report(args, planned, counts, console)
    finally:
        jobs_mod.stop_job_server()


def parse_request(args: argparse.Namespace) -> Request:
    """The run's architectures, datasets, modes, measurements and device, or a `BenchError` for the first bad one."""
    launch.check_unlaunched(args)
    plugins, names, datasets, asked = parse_suite(args)
    found = parallel.parse_workers(args)
    device = (found[0].name if found[0].kind == "cuda" else "cpu") if found else resolve_device(args.device)
    cpu_skips = [m for m in asked if device == "cpu" and proto.needs_cuda(m)]
    kinds = _kinds(args.measure, device)
    shard = parse_shard(args.shard)
    _check_timeout(args.job_timeout)
    if _check_evaluation(args, datasets):
        kinds += [m.name for m in measurements.KINDS if m.needs_data]
    modes = [m for m in asked if m not in cpu_skips]
    return Request(names, datasets, modes, cpu_skips, kinds, device, shard, plugins, tuple(found))


def parse_suite(args: argparse.Namespace) -> tuple[list[str], list[str], list[str], list[str]]:
    """The plugin modules (imported), architectures, datasets and speed modes; a `BenchError` for a bad one."""
    plugins = load_plugins(args)
    suite = get_suite(args.suite)  # checked even when --arch chooses the models
    names = csv_list(args.arch, "--arch") or suite.names()
    for name in names:
        archs.get_spec(name)
    datasets = csv_list([args.dataset], "--dataset")
    for dataset in datasets:
        parse_dataset(dataset)
    return plugins, names, datasets, parse_modes(args.modes)


def check_suite(args: argparse.Namespace) -> None:
    """What a launcher checks before it submits: the options that mean the same on any node (the rest, the
    devices and data a node has, its tasks check where they run)."""
    parse_suite(args)
    _kinds(args.measure, "cuda")
    _check_timeout(args.job_timeout)


def _check_timeout(seconds: float | None) -> None:
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise BenchError(f"--job-timeout {seconds:g}: pass a positive number of seconds per job")


def _kinds(measure: str | None, device: str) -> list[str]:
    """The measurements of --measure, by default those a run on ``device`` takes."""
    default = ",".join(measurements.defaults("cpu" if device == "cpu" else "cuda"))
    kinds = csv_list([default if measure is None else measure], "--measure")
    choices = measurements.selectable()
    for kind in kinds:
        if kind not in choices:
            raise BenchError(f"--measure: unknown measurement {kind!r}; choose from {', '.join(choices)}")
    return kinds


def _check_evaluation(args: argparse.Namespace, datasets: list[str]) -> bool:
    """Whether the run evaluates (--data-root), with a root and weights that can be (a `BenchError` if not)."""
    if args.data_root is not None and len(datasets) != 1:
        raise BenchError("--data-root belongs to one dataset: pass it with a single --dataset (ade20k or cityscapes)")
    if args.data_root is not None:  # a bad root or layout fails now, not as a failed record per model
        open_dataset(datasets[0], args.data_root)
    if args.weights is not None and args.data_root is None:
        raise BenchError("--weights is the checkpoint of the mIoU jobs: pass it with --data-root DIR")
    if args.weights not in (None, "official", "none") and not expand_user(args.weights, "--weights").is_file():
        raise BenchError(f"--weights {args.weights}: no such file; pass a checkpoint file, official or none")
    return args.data_root is not None


def plan_run(args: argparse.Namespace, request: Request) -> Plan:
    """The run's jobs (this shard's), and which of them this machine has recorded; nothing is measured yet."""
    slug, machine = device_slug(request.device), machine_id(request.device)
    machines = parallel.machines(request.workers, slug)
    store = RecordStore(args.results, slug)
    store.ensure_writable()
    sweep_mode = proto.SWEEP_MODE if request.device != "cpu" else "eager"
    jobs = jobs_mod.plan(request.names, request.datasets, request.modes, kinds=request.kinds, sweep_mode=sweep_mode)
    if not jobs:
        cpu_only = (
            f" (every mode asked for, {', '.join(request.cpu_skips)}, runs on a CUDA GPU only)"
            if not request.modes
            else ""
        )
        raise BenchError(
            f"nothing to measure: datasets {','.join(request.datasets) or 'none'}, measurements "
            f"{','.join(request.kinds) or 'none'}, modes {','.join(request.modes) or 'none'}{cpu_only}; "
            "pass --dataset, --measure or --modes with at least one value"
        )
    if request.shard:
        jobs = jobs_mod.shard(jobs, *request.shard)
    options = jobs_mod.RunOptions(
        device=request.device,
        device_slug=slug,
        plugins=tuple(request.plugins),
        data_root=args.data_root,
        weights=args.weights,
        eval_folder=str(store.folder / "eval"),
        machine_id=machine,
    )
    recorded = store.read()
    own = {machine, *machines.values()}
    # outdated: measured again, and the new record replaces them; another machine's records are neither
    done, outdated = (
        (set(), set())
        if args.force
        else store.triage(lambda r: jobs_mod.reusable(r, options), records=[r for r in recorded if r.machine in own])
    )
    return Plan(store, machine, recorded, jobs, done, outdated, options, request.workers, machines)


def announce(args: argparse.Namespace, request: Request, plan: Plan, console: Any) -> None:
    """What the run will do: its notes, its size, and where its records go and what it reuses."""
    slug = plan.options.device_slug
    stale = sum(job.key(slug) in plan.outdated for job in plan.jobs)
    if stale:
        console.print(
            f"[yellow]note:[/] {stale} recorded measurement(s) were taken at another input size or classes, or with "
            "other weights or data: measured again (the older records stay in the file; the tables use the newest)"
        )
    if _skips_measurements(request):
        console.print(f"[yellow]note:[/] {cpu_note(request.cpu_skips, request.modes)}")
    where = ",".join(w.name for w in request.workers) or request.device
    how = ", one job at a time (--exclusive)" if args.exclusive else ""
    console.print(
        f"segbench run: {len(request.names)} architectures x {len(request.datasets)} datasets, {len(plan.jobs)} jobs "
        f"on {where} ({slug}){how}"
    )
    reused = sum(job.key(slug) in plan.done for job in plan.jobs)
    # one line however long (a terminal folds it; a log keeps it whole)
    start = start_line(plan.store, {plan.machine, *plan.machines.values()}, plan.recorded, reused, args.force)
    console.print(start, markup=False, soft_wrap=True)
    if request.device != "cpu" and any(measurements.MEASUREMENTS[k].needs_peaks for k in request.kinds):
        _ensure_peaks(plan.store.folder, request.device, plan.machine, args.force, console)


def _skips_measurements(request: Request) -> bool:
    """Whether a measurement asked for would be taken in one of the modes a CPU leaves out."""
    if not request.cpu_skips:
        return False
    probe = jobs_mod.plan(request.names[:1], request.datasets[:1], request.cpu_skips, kinds=request.kinds)
    return any(job.mode in request.cpu_skips for job in probe)


def execute(args: argparse.Namespace, plan: Plan, console: Any) -> Counter[str]:
    """Each job not recorded yet, in its child process, its record appended as it ends; the counts."""
    slug = plan.options.device_slug
    todo = [job for job in plan.jobs if job.key(slug) not in plan.done]
    counts = Counter({"ok": 0, "failed": 0, "skipped": len(plan.jobs) - len(todo)})
    with job_progress(console) as progress:
        task = progress.add_task("measuring", total=len(plan.jobs), completed=counts["skipped"])

        def keep(job: jobs_mod.Job, record: Record) -> None:
            plan.store.append([record], replace_ok=args.force or job.key(slug) in plan.outdated)
            counts["ok" if record.ok else "failed"] += 1
            label = job.label + parallel.placed(record)
            if record.ok:
                console.print(f"  [green]ok[/]      {label}: {measurements.summarise(record)}")
            else:
                console.print(f"  [red]{record.status:<7}[/] {label}: {record.error}")
            progress.advance(task)

        if plan.workers:
            show = functools.partial(progress.update, task)
            parallel.run_jobs(todo, plan.workers, plan.options, plan.machines, plan.recorded, args, show, keep)
        else:
            for job in todo:
                progress.update(task, description=job.label)
                keep(job, jobs_mod.run_job(job, plan.options, job.timeout_s(args.job_timeout)))
    return counts


def report(args: argparse.Namespace, plan: Plan, counts: Counter[str], console: Any) -> int:
    """The counts, and the tables and plots regenerated; exit status 1 when a job failed."""
    console.print(
        f"done: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped (measured on this machine "
        "already)"
    )
    if not args.no_report:
        from bench.report import write_reports

        for path in write_reports(args.results, plan.options.device_slug):
            console.print(f"  wrote {path}")
    return 1 if counts["failed"] else 0


def cpu_note(left_out: list[str], modes: list[str]) -> str:
    """What a CPU times of the speed modes asked for: ``left_out`` need a CUDA GPU, ``modes`` run."""
    one = len(left_out) == 1
    need = f"{', '.join(left_out)} {'needs' if one else 'need'} a CUDA GPU and {'is' if one else 'are'} left out"
    cpu_modes = [m for m in proto.MODES if not proto.needs_cuda(m)]
    if not modes:
        return f"mode {need}: no latency is measured (modes a CPU runs: {', '.join(cpu_modes)}; pass --modes eager)"
    also = [m for m in cpu_modes if m not in modes]
    more = f" ({', '.join(also)} also runs on a CPU: --modes {','.join(modes + also)})" if also else ""
    return f"mode {need}; on the CPU this run times {', '.join(modes)}{more}"


def _shown(path: Path) -> str:
    """``path`` relative to the working folder where it is under it (as a user typed it), else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def start_line(store: RecordStore, own: Collection[str], recorded: list[Record], reused: int, force: bool) -> str:
    """Where the run's records go and what it reuses, in one line: the records of its jobs by this machine (``own``:
    its id, and its GPUs' in a parallel run); never another machine's (in the folder, or the reference records
    segbench ships for this device kind)."""
    machines = sorted(own)
    parts = [f"records: {_shown(store.path)} (this machine{'s' * (len(machines) > 1)} {', '.join(machines)})"]
    if force:
        parts.append("--force: measuring everything again")
    else:
        parts.append(f"reusing {reused} of this machine's records" if reused else "nothing of this machine's to reuse")
    others = sum(r.ok and r.machine not in own for r in recorded)
    if others:
        parts.append(f"{others} record{'s' * (others != 1)} of other machines there are kept as references, not reused")
    slug = store.folder.name
    for references in dict.fromkeys((REFERENCES / slug, CHECKOUT / REFERENCES / slug)):
        if (references / RECORDS_FILE).is_file() and references.resolve() != store.folder.resolve():
            parts.append(f"reference records of this device kind in {_shown(references)}/ are not reused")
            break
    return "; ".join(parts)


def _ensure_peaks(folder: Path, device: str, machine: str, force: bool, console: Any) -> None:
    """Measure the device's roofline ceilings once per machine (a child process) and store them with the records."""
    stored = read_peaks(folder)
    if stored is not None and stored.machine == machine and not force:
        return
    message = jobs_mod.measure_device_peaks(device)
    if message["status"] != "ok":
        console.print(f"  [yellow]roofline ceilings not measured[/]: {message['error']}")
        return
    write_peaks(folder, message["value"], {**message["provenance"], "machine_id": machine})
    peaks = ", ".join(f"{k} {v:.1f}" for k, v in message["value"].items())
    console.print(f"  [green]ok[/]      device ceilings: {peaks}")
