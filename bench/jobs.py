"""Jobs: one (arch, dataset, measurement[, mode]) each, run in a child process with a time limit.

An exception, a CUDA out-of-memory, a crash of the child (a signal) or a timeout becomes a record
with its ``status`` and the error's first line; the suite goes on with the next job.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import archs
from bench import protocol as proto
from bench.errors import check_interrupt, described, is_out_of_memory
from bench.provenance import provenance
from bench.records import new_record

KINDS = ("params", "flops", "latency", "sweep", "miou")
# Default time limits per measurement, seconds (a CPU counting FLOPs of a 1024x2048 forward of
# a ResNet-101 needs minutes; an mIoU pass over a validation set needs hours on a slow GPU).
DEFAULT_TIMEOUT_S = {"params": 600, "flops": 1800, "latency": 1800, "sweep": 1800, "miou": 6 * 3600, "peaks": 600}


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

    def key(self, device_slug: str) -> tuple:
        return (self.arch, self.dataset, self.kind, self.mode, proto.PROTOCOL_VERSION, device_slug)


def plan(
    names: list[str],
    datasets: list[str],
    modes: list[str],
    *,
    kinds: tuple[str, ...] | list[str] = ("params", "flops", "latency"),
    miou: bool = False,
    sweep_mode: str = proto.SWEEP_MODE,
) -> list[Job]:
    """Every job of a run, in a fixed order (the order `--shard` splits)."""
    jobs = []
    for arch in names:
        for dataset in datasets:
            jobs.extend(Job(arch, dataset, kind) for kind in ("params", "flops") if kind in kinds)
            if "latency" in kinds:
                jobs.extend(Job(arch, dataset, "latency", mode) for mode in modes)
            if "sweep" in kinds:
                jobs.append(Job(arch, dataset, "sweep", sweep_mode))
            if miou:
                jobs.append(Job(arch, dataset, "miou", "eager"))
    return jobs


def miou_identity(weights: str | None, data_root: str | None) -> dict:
    """What an mIoU record was measured with: the checkpoint asked for (a file by its sha256) and the data root.

    A rerun reuses an mIoU record only when this is the same.
    """
    request = weights or "official"
    if request not in ("official", "none") and Path(request).is_file():
        from bench.weights import sha256sum  # noqa: PLC0415

        request = f"sha256:{sha256sum(Path(request))}"
    return {"weights": request, "data_root": None if data_root is None else str(Path(data_root).resolve())}


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
    miou_identity: dict | None = None  # `miou_identity` of the run, stored in its mIoU records
    machine_id: str | None = None  # `bench.provenance.machine_id` of the run, stored in every record


def measure(job: Job, options: RunOptions) -> dict:
    """Run one measurement in this process and return its value (the child's work)."""
    import torch

    from bench.measure.flops import count_flops
    from bench.measure.latency import measure_latency
    from bench.measure.params import count_params
    from bench.measure.sweep import sweep_batches
    from bench.provenance import gpu_handle

    spec = archs.get_spec(job.arch)
    ds = proto.dataset(job.dataset)
    size = proto.input_size(spec, job.dataset)
    device = torch.device(options.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device.index)  # cuda:N: streams, events and graphs of the child act on it
    torch.manual_seed(proto.MODEL_SEED)  # random weights, the same every run (input-dependent FLOPs follow them)
    model = archs.build(job.arch, num_classes=ds.num_classes)
    if job.kind == "params":
        n = count_params(model)
        return {"params": n, "params_m": n / 1e6}
    if job.kind == "flops":
        count = count_flops(model.to(device), size, device=device)
        return {
            "flops": count.total,
            "gflops": count.gflops,
            "input_size": list(size),
            "by_operator": count.by_operator,
            "uncounted": count.uncounted,
            "convention": "fvcore; one fused multiply-add = one FLOP; model forward only",
            "dynamic": count.dynamic,
        }
    if job.kind == "latency":
        handle = gpu_handle(options.device) if device.type == "cuda" else None
        result = measure_latency(
            model, size, device=device, mode=job.mode, protocol=proto.SPEED[device.type], nvml_handle=handle
        )
        return {**proto.MODES[job.mode], **result.as_dict()}  # the layout kept, where the mode's is "auto"
    if job.kind == "sweep":
        result = sweep_batches(
            model,
            size,
            device=device,
            mode=job.mode,
            protocol=proto.SWEEP[device.type],
            batches=proto.SWEEP_BATCHES[device.type],
            num_classes=ds.num_classes,
        )
        return {**proto.MODES[job.mode], **result.as_dict()}
    if job.kind == "miou":
        from bench.evaluate import evaluate  # noqa: PLC0415 - evaluation is optional per run
        from bench.evaluate.checkpoint import Resume
        from bench.weights import load_weights

        loaded = load_weights(model, spec, job.dataset, options.weights or "official")
        # a job stopped at its time limit keeps its progress there; the next run continues it
        resume = None
        if options.eval_folder is not None:
            resume = Resume(Path(options.eval_folder), {"weights": loaded.sha256 or loaded.source})
        result = evaluate(
            model, spec, job.dataset, options.data_root, device=options.device, progress=False, resume=resume
        )
        value = result.as_dict() if hasattr(result, "as_dict") else asdict(result)
        value["weights"] = asdict(loaded)
        value["identity"] = options.miou_identity
        if options.eval_folder is not None:
            from bench.evaluate.outputs import write_outputs  # noqa: PLC0415

            csv_path, json_path = write_outputs(result, Path(options.eval_folder), {"weights": value["weights"]})
            value["per_class_csv"], value["result_json"] = str(csv_path), str(json_path)
        return value
    raise ValueError(f"unknown measurement kind {job.kind!r}")


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


def _call(conn, parent_pid: int, fn, *args) -> None:
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


def _measure_job(job: Job, options: RunOptions) -> dict:
    for module in options.plugins:
        archs.import_models(module)
    return {"value": measure(job, options), "provenance": provenance(options.device)}


def _measure_peaks(device: str) -> dict:
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


_context = None


def _job_context():
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


def run_in_child(name: str, timeout_s: float, fn, *args) -> dict:
    """``fn(*args)`` in a child process with a time limit; a message with ``status`` (never raises for its faults)."""
    check_interrupt()
    ctx = _job_context()
    receiver, sender = ctx.Pipe(duplex=False)
    # Not daemonic: an evaluation job starts DataLoader workers; `_die_with` ends the child with the run.
    child = ctx.Process(target=_call, args=(sender, os.getpid(), fn, *args), daemon=False, name=name)
    child.start()
    sender.close()
    message = None
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


def measure_device_peaks(device: str, timeout_s: float = DEFAULT_TIMEOUT_S["peaks"]) -> dict:
    """The roofline ceilings of ``device``, measured in a child process (see `bench.measure.roofline`)."""
    return run_in_child("bench peaks", timeout_s, _measure_peaks, device)


def job_settings(job: Job) -> dict:
    """What ``job`` is measured with: input size and classes (the spec's), and its mode's settings."""
    return {
        "input_size": list(proto.input_size(archs.get_spec(job.arch), job.dataset)),
        "num_classes": proto.dataset(job.dataset).num_classes,
        **(proto.MODES[job.mode] if job.mode else {}),
    }


def is_current(record: dict) -> bool:
    """Whether ``record`` was taken at the input size and classes its job has now (a spec may change them)."""
    if record["arch"] not in archs.list_archs() or record["dataset"] not in proto.DATASETS:
        return True  # a plugin not loaded this run, or an old dataset: nothing to compare with
    settings = record.get("settings") or {}  # a setting the record does not name cannot be compared
    current = job_settings(Job(record["arch"], record["dataset"], record["kind"]))
    return all(settings[k] == v for k, v in current.items() if k in settings)


def run_job(job: Job, options: RunOptions, timeout_s: float) -> dict:
    """Run ``job`` in a child process and return its record (never raises for the job's faults)."""
    started = time.monotonic()
    message = run_in_child(f"bench {job.label}", timeout_s, _measure_job, job, options)
    where = dict(message.get("provenance") or provenance(options.device))
    if options.machine_id is not None:  # the machine the run reuses records of, whatever the child read
        where["machine_id"] = options.machine_id
    return new_record(
        arch=job.arch,
        dataset=job.dataset,
        kind=job.kind,
        mode=job.mode,
        settings=job_settings(job),
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
