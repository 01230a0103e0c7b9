"""Jobs: one (arch, dataset, measurement[, mode]) each, run in a child process with a time limit.

A run's jobs come from the measurement registry (`bench.measurements`): each kind says in which
modes it is measured, and measures one job in the child. An exception, a CUDA out-of-memory, a
crash of the child (a signal) or a timeout becomes a record with its ``status`` and the error's
first line; the suite goes on with the next job.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from typing import TYPE_CHECKING, Any

import archs
from bench import protocol as proto
from bench.errors import check_interrupt, described, is_out_of_memory
from bench.measurements import MEASUREMENTS, JobContext, Modes, Value
from bench.provenance import provenance
from bench.store import Key, Record

if TYPE_CHECKING:
    from bench.workers import Worker

# Time limit of the device ceilings' measurement (`bench.measure.roofline.measure_peaks`), seconds.
PEAKS_TIMEOUT_S = 600


@dataclass(frozen=True)
class Job:
    """One measurement of one architecture on one dataset protocol."""

    arch: str
    dataset: str
    kind: str
    mode: str | None = None

    @property
    def label(self) -> str:
        return " ".join(p for p in (self.arch, self.dataset, self.kind, self.mode) if p)

    def timeout_s(self, asked: float | None = None) -> float:
        """Its time limit: ``asked`` (``--job-timeout``), else its measurement's."""
        return asked or MEASUREMENTS[self.kind].timeout_s

    def key(self, device_slug: str) -> Key:
        """The `bench.store.Record.key` of its record, measured now on ``device_slug``."""
        return (self.arch, self.dataset, self.kind, self.mode, proto.PROTOCOL_VERSION, device_slug)


def plan(
    names: Sequence[str],
    datasets: Sequence[str],
    modes: Sequence[str],
    *,
    kinds: Sequence[str] = ("params", "flops", "latency"),
    sweep_mode: str = proto.SWEEP_MODE,
) -> list[Job]:
    """Every job of a run, in a fixed order (the order `--shard` splits): per architecture and dataset,
    each of ``kinds`` in registry order, in each of its modes.

    Args:
        names: the architectures.
        datasets: the protocol datasets.
        modes: the speed modes timed.
        kinds: the measurements (`bench.measurements.MEASUREMENTS`).
        sweep_mode: the batch sweep's mode.
    """
    asked = Modes(tuple(modes), sweep_mode)
    chosen = [m for m in MEASUREMENTS.values() if m.name in kinds]
    return [
        Job(arch, dataset, measurement.name, mode)
        for arch in names
        for dataset in datasets
        for measurement in chosen
        for mode in measurement.modes(asked)
    ]


def shard(jobs: list[Job], index: int, count: int) -> list[Job]:
    """Jobs of shard ``index`` (1-based) of ``count``: every count-th job, deterministically."""
    return jobs[index - 1 :: count]


@dataclass(frozen=True)
class RunOptions:
    """What a child needs besides the job."""

    device: str
    device_slug: str
    plugins: tuple[str, ...] = ()
    data_root: str | None = None
    weights: str | None = None
    eval_folder: str | None = None  # where mIoU jobs write their per-class CSV and full result (and their progress)
    machine_id: str | None = None  # `bench.provenance.machine_id` of the run, stored in every record


def reusable(record: Record, options: RunOptions) -> bool:
    """Whether a recorded measurement answers this run: taken at the input size and classes its job has now,
    and with what its kind compares besides (an mIoU: the same checkpoint and data)."""
    measurement = MEASUREMENTS.get(record.kind)
    return proto.is_current(record) and (measurement is None or measurement.reusable(record, options))


def measure(job: Job, options: RunOptions) -> Value:
    """Run one measurement in this process and return its value (the child's work)."""
    import torch

    spec = archs.get_spec(job.arch)
    ds = proto.dataset(job.dataset)
    device = torch.device(options.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device.index)  # cuda:N: streams, events and graphs of the child act on it
    torch.manual_seed(proto.MODEL_SEED)  # random weights, the same every run (input-dependent FLOPs follow them)
    model = archs.build(job.arch, num_classes=ds.num_classes)
    context = JobContext(job, spec, ds, proto.input_size(spec, job.dataset), device, model, options)
    return MEASUREMENTS[job.kind].run(context)


def _die_with(parent_pid: int) -> None:
    """End this child as soon as the `bench run` process ``parent_pid`` is gone (a killed run leaves no orphan).

    The child's parent is the fork server, which itself lives as long as any child does, so the
    kernel's parent-death signal would never fire: a daemon thread waits on a pidfd of the run
    (Linux 5.3+) or, where there is none, polls the process, and exits the child when the run ends.
    """
    import select
    import threading

    def watch() -> None:
        try:
            fd = os.pidfd_open(parent_pid)
        except (AttributeError, OSError):
            fd = None
        if fd is not None:
            select.select([fd], [], [])  # readable once the process has ended
        else:
            while True:
                try:
                    os.kill(parent_pid, 0)
                except ProcessLookupError:
                    break
                except PermissionError:
                    pass
                time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="bench-parent-watch", daemon=True).start()


def _call(conn: Connection, parent_pid: int, fn: Callable[..., dict[str, Any]], *args: Any) -> None:
    """The child's body: ``fn(*args)`` and its result (or its failure) sent back as one message."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends its children
    _die_with(parent_pid)
    try:
        message = {"status": "ok", **fn(*args)}
    except BaseException as exc:  # every failure becomes a record
        message = {
            "status": "oom" if is_out_of_memory(exc) else "error",
            "error": described(exc),
            "traceback": traceback.format_exc(limit=-8)[-4000:],
        }
    conn.send(message)
    conn.close()


def _measure_job(job: Job, options: RunOptions) -> dict[str, Any]:
    for module in options.plugins:
        archs.import_models(module)
    return {"value": measure(job, options), "provenance": provenance(options.device)}


def _measure_peaks(device: str) -> dict[str, Any]:
    from bench.measure.roofline import measure_peaks

    return {"value": measure_peaks(device), "provenance": provenance(device)}


def _signal_name(exitcode: int | None) -> str:
    if exitcode is None:
        return "no exit code"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


_context: ForkServerContext | None = None


def _job_context() -> ForkServerContext:
    """Children come from a fork server that preloads torch and the registry (see bench.warm_imports)."""
    global _context
    if _context is None:
        _context = mp.get_context("forkserver")
        _context.set_forkserver_preload(["bench.warm_imports"])
    return _context


def start_job_server() -> None:
    """Start the fork server now, without waiting for it: its imports overlap the caller's planning.

    The first job would start it anyway; started early, the seconds it spends importing torch and
    the registry pass while `bench run` imports the same and plans its jobs.
    """
    from multiprocessing import forkserver

    _job_context()
    forkserver.ensure_running()


def stop_job_server() -> None:
    """End the fork server now, even in the middle of its imports (a run that stops early does not wait).

    The server would end by itself once its imports are done and its run has exited, but until
    then it holds the run's stdout and stderr open. This kills it and lets multiprocessing reap
    it (`ForkServer._stop`, the hook of CPython's own tests); a later job starts a new one.
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    pid, stop = getattr(server, "_forkserver_pid", None), getattr(server, "_stop", None)
    if pid is None or stop is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    stop()


def run_in_child(name: str, timeout_s: float, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``fn(*args)`` in a child process with a time limit; a message with ``status`` (never raises for its faults)."""
    check_interrupt()
    ctx = _job_context()
    receiver, sender = ctx.Pipe(duplex=False)
    # Not daemonic: an evaluation job starts DataLoader workers; `_die_with` ends the child with the run.
    child = ctx.Process(target=_call, args=(sender, os.getpid(), fn, *args), daemon=False, name=name)
    child.start()
    sender.close()
    message: dict[str, Any] | None = None
    try:
        if receiver.poll(timeout_s):
            try:
                message = receiver.recv()
            except EOFError:
                message = None
            child.join(30)
        if message is None:
            if child.is_alive():
                child.kill()
                child.join()
                message = {"status": "timeout", "error": f"no result within {timeout_s:g} s (--job-timeout)"}
            else:
                child.join()
                message = {
                    "status": "crashed",
                    "error": f"child process ended without a result ({_signal_name(child.exitcode)})",
                }
    finally:
        if child.is_alive():  # Ctrl-C or any error in the parent: never leave a child behind
            child.kill()
            child.join()
        receiver.close()
    return message


def measure_device_peaks(device: str, timeout_s: float = PEAKS_TIMEOUT_S) -> dict[str, Any]:
    """The roofline ceilings of ``device``, measured in a child process (see `bench.measure.roofline`)."""
    return run_in_child("bench peaks", timeout_s, _measure_peaks, device)


def run_job(job: Job, options: RunOptions, timeout_s: float, worker: Worker | None = None) -> Record:
    """Run ``job`` in a child process and return its record (never raises for the job's faults).

    Args:
        job: the job.
        options: the run's; ``machine_id`` is the machine the record names (with ``worker``: the worker's).
        timeout_s: the child's time limit.
        worker: a worker of a parallel run (`bench.workers`): the child is bound to its GPU and cores first,
            and measures on `Worker.child_device`.
    """
    started = time.monotonic()
    if worker is None:
        message = run_in_child(f"bench {job.label}", timeout_s, _measure_job, job, options)
    else:
        bound = replace(options, device=worker.child_device)
        message = run_in_child(f"bench {job.label} on {worker.name}", timeout_s, worker.bind(_measure_job), job, bound)
    # a child that sent nothing: this process reads the device, as it numbers the worker's GPU
    where = dict(message.get("provenance") or provenance(options.device if worker is None else worker.name))
    if options.machine_id is not None:  # the machine the run reuses records of, whatever the child read
        where["machine_id"] = options.machine_id
    return Record(
        arch=job.arch,
        dataset=job.dataset,
        kind=job.kind,
        mode=job.mode,
        settings=proto.job_settings(archs.get_spec(job.arch), job.dataset, job.mode),
        protocol=proto.PROTOCOL_VERSION,
        device=options.device.split(":")[0],
        device_slug=options.device_slug,
        status=message["status"],
        error=message.get("error"),
        traceback=message.get("traceback"),
        value=message.get("value"),
        duration_s=round(time.monotonic() - started, 3),
        provenance=where,
    )
