"""`bench run`: measure a suite, append records, regenerate the tables and plots."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import archs
from bench import jobs as jobs_mod
from bench import protocol as proto
from bench.commands.common import (
    REFERENCES,
    add_plugin_argument,
    add_results_argument,
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
from bench.records import OK, RECORDS_FILE, RecordStore, machine_of
from bench.suites import SUITES, get_suite


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run",
        help="measure a suite (params, FLOPs, speed[, mIoU]) and regenerate tables and plots",
        description="Measure every architecture of a suite under the fixed protocol. Each measurement runs "
        "in its own child process with a time limit; a rerun skips what is already recorded.",
    )
    p.add_argument("--suite", default="realtime", help=f"one of {', '.join(SUITES)} (default: realtime)")
    p.add_argument("--arch", action="append", default=[], help="only these architectures (repeat or comma-separate)")
    p.add_argument("--dataset", default="ade20k,cityscapes", help="comma-separated protocol datasets")
    p.add_argument(
        "--modes",
        default=",".join(proto.DEFAULT_MODES),
        help=f"speed modes (default: {','.join(proto.DEFAULT_MODES)}; all: {', '.join(proto.MODES)})",
    )
    p.add_argument(
        "--measure",
        default=None,
        help="measurements: params, flops, latency, sweep (default: all four on a GPU, no sweep on a CPU; "
        "mIoU: --data-root)",
    )
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    add_results_argument(p, "records.jsonl, tables, plots")
    p.add_argument("--force", action="store_true", help="measure again what is already recorded")
    p.add_argument("--job-timeout", type=float, default=None, help="seconds per job (default: per measurement)")
    p.add_argument("--shard", default=None, help="i/n: run the i-th of n deterministic shards of the job list")
    p.add_argument("--data-root", default=None, help="dataset root: adds mIoU jobs (needs official weights)")
    p.add_argument(
        "--weights", default=None, help="checkpoint of the mIoU jobs: official (default), PATH, none (random weights)"
    )
    p.add_argument("--no-report", action="store_true", help="do not regenerate tables and plots")
    add_plugin_argument(p)
    p.set_defaults(handler=run)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise BenchError(f"--shard {text!r}: expected i/n with 1 <= i <= n, e.g. --shard 1/2")
    return int(match[1]), int(match[2])


def run(args: argparse.Namespace) -> int:
    jobs_mod.start_job_server()  # its imports overlap the planning below
    try:
        return _run(args)
    finally:
        jobs_mod.stop_job_server()


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    plugins = load_plugins(args)
    suite = get_suite(args.suite)  # checked even when --arch chooses the models
    names = csv_list(args.arch, "--arch") or suite.names()
    for name in names:
        archs.get_spec(name)
    datasets = csv_list([args.dataset], "--dataset")
    for d in datasets:
        parse_dataset(d)
    modes = parse_modes(args.modes)
    device = resolve_device(args.device)
    cpu_skips = [m for m in modes if device == "cpu" and proto.needs_cuda(m)]
    modes = [m for m in modes if m not in cpu_skips]
    measurable = ("params", "flops", "latency", "sweep")
    default_kinds = ",".join(measurable if device != "cpu" else measurable[:3])
    kinds = csv_list([default_kinds if args.measure is None else args.measure], "--measure")
    for k in kinds:
        if k not in measurable:
            raise BenchError(f"--measure: unknown measurement {k!r}; choose from {', '.join(measurable)}")
    shard = parse_shard(args.shard)
    if args.job_timeout is not None and not (math.isfinite(args.job_timeout) and args.job_timeout > 0):
        raise BenchError(f"--job-timeout {args.job_timeout:g}: pass a positive number of seconds per job")
    if args.data_root is not None and len(datasets) != 1:
        raise BenchError("--data-root belongs to one dataset: pass it with a single --dataset (ade20k or cityscapes)")
    if args.data_root is not None:  # a bad root or layout fails now, not as a failed record per model
        open_dataset(datasets[0], args.data_root)
    if args.weights is not None and args.data_root is None:
        raise BenchError("--weights is the checkpoint of the mIoU jobs: pass it with --data-root DIR")
    if args.weights not in (None, "official", "none") and not expand_user(args.weights, "--weights").is_file():
        raise BenchError(f"--weights {args.weights}: no such file; pass a checkpoint file, official or none")

    slug = device_slug(device)
    this_machine = machine_id(device)
    store = RecordStore(args.results, slug)
    store.ensure_writable()
    sweep_mode = proto.SWEEP_MODE if device != "cpu" else "eager"
    planned = jobs_mod.plan(names, datasets, modes, kinds=kinds, miou=args.data_root is not None, sweep_mode=sweep_mode)
    if not planned:
        cpu_only = f" (every mode asked for, {', '.join(cpu_skips)}, runs on a CUDA GPU only)" if not modes else ""
        raise BenchError(
            f"nothing to measure: datasets {','.join(datasets) or 'none'}, measurements {','.join(kinds) or 'none'}, "
            f"modes {','.join(modes) or 'none'}{cpu_only}; pass --dataset, --measure or --modes with at least one value"
        )
    if shard:
        planned = jobs_mod.shard(planned, *shard)
    identity = None
    if args.data_root is not None:
        identity = jobs_mod.miou_identity(args.weights, args.data_root)

    def reusable(record: dict) -> bool:
        """A record taken at another input size, or an mIoU of other weights or data, is measured again."""
        if not jobs_mod.is_current(record):
            return False
        return record["kind"] != "miou" or (record.get("value") or {}).get("identity") == identity

    # outdated: measured again, and the new record replaces them; another machine's records are neither
    recorded = store.read()
    done, outdated = (set(), set()) if args.force else store.triage(reusable, machine=this_machine, records=recorded)
    options = jobs_mod.RunOptions(
        device=device,
        device_slug=slug,
        plugins=tuple(plugins),
        data_root=args.data_root,
        weights=args.weights,
        eval_folder=str(store.folder / "eval"),
        miou_identity=identity,
        machine_id=this_machine,
    )
    stale = sum(job.key(slug) in outdated for job in planned)
    if stale:
        console.print(
            f"[yellow]note:[/] {stale} recorded measurement(s) were taken at another input size or classes, or with "
            "other weights or data: measured again (the older records stay in the file; the tables use the newest)"
        )
    if cpu_skips and "latency" in kinds:
        console.print(f"[yellow]note:[/] {cpu_note(cpu_skips, modes)}")
    console.print(
        f"segbench run: {len(names)} architectures x {len(datasets)} datasets, {len(planned)} jobs on {device} ({slug})"
    )
    reused = sum(job.key(slug) in done for job in planned)
    # one line however long (a terminal folds it; a log keeps it whole)
    console.print(start_line(store, this_machine, recorded, reused, args.force), markup=False, soft_wrap=True)
    if device != "cpu" and {"latency", "sweep"} & set(kinds):
        _ensure_peaks(store.folder, device, this_machine, args.force, console)
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    with job_progress(console) as progress:
        task = progress.add_task("measuring", total=len(planned))
        for job in planned:
            if job.key(slug) in done:
                counts["skipped"] += 1
                progress.advance(task)
                continue
            progress.update(task, description=job.label)
            timeout = args.job_timeout or jobs_mod.DEFAULT_TIMEOUT_S[job.kind]
            record = jobs_mod.run_job(job, options, timeout)
            store.append([record], replace_ok=args.force or job.key(slug) in outdated)
            if record["status"] == OK:
                counts["ok"] += 1
                console.print(f"  [green]ok[/]      {job.label}: {summarise(record)}")
            else:
                counts["failed"] += 1
                console.print(f"  [red]{record['status']:<7}[/] {job.label}: {record['error']}")
            progress.advance(task)
    console.print(
        f"done: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped (measured on this machine "
        "already)"
    )
    if not args.no_report:
        from bench.report import write_reports

        for path in write_reports(args.results, slug):
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


def start_line(store: RecordStore, machine: str, recorded: list[dict], reused: int, force: bool) -> str:
    """Where the run's records go and what it reuses, in one line: this machine's records of its jobs; never
    another machine's (in the folder, or the reference records segbench ships for this device kind)."""
    parts = [f"records: {_shown(store.path)} (this machine {machine})"]
    if force:
        parts.append("--force: measuring everything again")
    else:
        parts.append(f"reusing {reused} of this machine's records" if reused else "nothing of this machine's to reuse")
    others = sum(r["status"] == OK and machine_of(r) != machine for r in recorded)
    if others:
        parts.append(f"{others} record{'s' * (others != 1)} of other machines there are kept as references, not reused")
    slug = store.folder.name
    for references in dict.fromkeys((REFERENCES / slug, CHECKOUT / REFERENCES / slug)):
        if (references / RECORDS_FILE).is_file() and references.resolve() != store.folder.resolve():
            parts.append(f"reference records of this device kind in {_shown(references)}/ are not reused")
            break
    return "; ".join(parts)


def _ensure_peaks(folder: Path, device: str, machine: str, force: bool, console) -> None:
    """Measure the device's roofline ceilings once per machine (a child process) and store them with the records."""
    from bench.measure.roofline import read_peaks, write_peaks

    stored = read_peaks(folder)
    if stored is not None and machine_of(stored) == machine and not force:
        return
    message = jobs_mod.measure_device_peaks(device)
    if message["status"] != OK:
        console.print(f"  [yellow]roofline ceilings not measured[/]: {message['error']}")
        return
    write_peaks(folder, message["value"], {**message["provenance"], "machine_id": machine})
    peaks = ", ".join(f"{k} {v:.1f}" for k, v in message["value"].items())
    console.print(f"  [green]ok[/]      device ceilings: {peaks}")


def summarise(record: dict) -> str:
    value = record["value"] or {}
    kind = record["kind"]
    if kind == "params":
        return f"{value['params_m']:.2f} M params"
    if kind == "flops":
        extra = f", uncounted: {', '.join(value['uncounted'])}" if value.get("uncounted") else ""
        return f"{value['gflops']:.1f} GFLOPs at {value['input_size'][0]}x{value['input_size'][1]}{extra}"
    if kind == "latency":
        flags = [f for f in ("unstable", "throttled") if value.get(f)]
        extra = f" [yellow]{', '.join(flags)}[/] (spread {100 * value['spread']:.1f}%)" if flags else ""
        if value.get("compile_s") is not None:
            extra += f", compiled in {value['compile_s']:.0f} s"
        if value.get("layout_ms"):  # a mode that timed both layouts: which it kept, and the other's probe
            probe = value["layout_ms"]
            extra += (
                f", {'channels_last' if value['channels_last'] else 'NCHW'} kept "
                f"(probe {probe['channels_last']:.2f} ms channels_last, {probe['contiguous']:.2f} ms NCHW)"
            )
        return f"{value['median_ms']:.2f} ms median, {value['fps']:.1f} FPS ({record['device']}){extra}"
    if kind == "sweep":
        stop = f"; {value['stopped']}" if value.get("stopped") else ""
        return f"best batch {value['best_batch']}: {value['images_s']:.1f} images/s{stop}"
    if kind == "miou":
        return f"mIoU {value.get('mIoU', float('nan')):.2f}"
    return ""
