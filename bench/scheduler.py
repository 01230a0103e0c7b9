"""Run a suite's jobs over several workers at once: one job per worker at a time, the longest first.

`run_parallel` gives each `bench.workers.Worker` a thread of this process; the thread takes the next
job and runs it through the caller's ``run_one(job, worker)``, which runs the job in a child process
bound to the worker (`Worker.bind`) and returns its record. A child that crashes or hangs becomes
that job's failure record (the job runner's isolation); the other workers go on. Records reach the
caller in this thread, in the order the jobs finish, each with its placement (`Placement`): where
it ran and how many jobs of the run ran beside it. Ctrl-C, or a fault of the run itself, stops
every worker and ends every job's child at once.

`longest_first` orders the jobs by an estimate of their duration (`estimate_s`), so that the long
jobs do not start last and leave the other workers idle at the end.
"""

from __future__ import annotations

import multiprocessing
import queue
import socket
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from bench.store import Record
from bench.workers import Worker, cores_text


class JobLike(Protocol):
    """What the scheduler reads of a job (`bench.jobs.Job` has it)."""

    @property
    def arch(self) -> str: ...

    @property
    def dataset(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def mode(self) -> str | None: ...


J = TypeVar("J", bound=JobLike)

# How long the run waits for its workers' threads once it has told their children to end.
STOP_GRACE_S = 30.0


@dataclass(frozen=True)
class Cost:
    """A job's duration: ``fixed_s`` (build, warm-up, the timed repeats' floor) plus ``per_gflop_s`` times the
    model's GFLOPs at the dataset's input size.

    Args:
        fixed_s: seconds whatever the model.
        per_gflop_s: seconds per GFLOP of the model.
    """

    fixed_s: float
    per_gflop_s: float


# Per device type and measurement; fitted to the durations of the reference runs under results/ (params,
# FLOPs, latency) and guessed from the protocol for the rest (a sweep times seven batch sizes, an mIoU job
# a whole validation set). Only their order matters: they decide which job starts first.
JOB_COSTS: dict[str, dict[str, Cost]] = {
    "cuda": {
        "params": Cost(0.5, 0.0),
        "flops": Cost(1.5, 0.0005),
        "latency": Cost(5.5, 0.003),
        "sweep": Cost(20.0, 0.05),
        "miou": Cost(300.0, 0.2),
    },
    "cpu": {
        "params": Cost(1.0, 0.0003),
        "flops": Cost(15.0, 0.055),
        "latency": Cost(7.0, 0.09),
        "sweep": Cost(20.0, 0.5),
        "miou": Cost(3600.0, 20.0),
    },
}
# Speed modes that take longer than eager at the same FLOPs: the "auto" layout modes time both layouts
# first; `compile` compiles the model (minutes on the large ones).
MODE_FACTORS = {"graph": 1.3, "graph-bf16": 1.3, "graph-fused": 1.3, "eager-fp16": 1.2, "compile": 10.0}


def estimate_s(job: JobLike, gflops: float, device_type: str = "cuda") -> float:
    """Rough seconds ``job`` takes on a ``device_type`` device for a model of ``gflops`` (see `JOB_COSTS`)."""
    costs = JOB_COSTS.get(device_type, JOB_COSTS["cuda"])
    cost = costs.get(job.kind, costs["latency"])
    return (cost.fixed_s + cost.per_gflop_s * gflops) * MODE_FACTORS.get(job.mode or "", 1.0)


def measured_gflops(records: Iterable[Record]) -> dict[tuple[str, str], float]:
    """GFLOPs per (arch, dataset) of the ``ok`` FLOPs records (the last one of a pair wins)."""
    found = {}
    for record in records:
        gflops = getattr(record.value, "gflops", None)
        if record.kind == "flops" and record.ok and isinstance(gflops, (int, float)):
            found[(record.arch, record.dataset)] = float(gflops)
    return found


def published_gflops(arch: str, dataset: str) -> float | None:
    """The GFLOPs the spec of ``arch`` publishes for ``dataset``, or None."""
    import archs

    try:
        published = archs.get_spec(arch).published.get(dataset)
    except archs.UnknownArchError:
        return None
    return None if published is None else published.gflops


def longest_first(
    jobs: Sequence[J],
    device_type: str = "cuda",
    measured: Mapping[tuple[str, str], float] | None = None,
    published: Callable[[str, str], float | None] = published_gflops,
) -> list[J]:
    """``jobs`` ordered by `estimate_s`, the longest first (ties keep their order).

    A job's GFLOPs are its model's measured ones (``measured``, e.g. `measured_gflops` of the folder's
    records), else the published ones, else the median of the others' (a model nobody counted yet).

    Args:
        jobs: the jobs, in plan order.
        device_type: ``cuda`` or ``cpu`` (`JOB_COSTS`).
        measured: GFLOPs per (arch, dataset), measured.
        published: GFLOPs per (arch, dataset), published (None where none is).
    """
    measured = measured or {}
    pairs = {(job.arch, job.dataset) for job in jobs}
    known = {pair: measured.get(pair, published(*pair)) for pair in pairs}
    values = [v for v in known.values() if v is not None]
    fallback = statistics.median(values) if values else 0.0
    gflops = {pair: fallback if v is None else v for pair, v in known.items()}
    order = sorted(
        range(len(jobs)),
        key=lambda i: (-estimate_s(jobs[i], gflops[(jobs[i].arch, jobs[i].dataset)], device_type), i),
    )
    return [jobs[i] for i in order]


@dataclass(frozen=True)
class Placement:
    """Where a job of a parallel run ran, and beside what.

    Args:
        host: the machine's host name.
        device: the worker, as ``--devices`` names it (``cuda:1``: the GPU's index in the run's numbering).
        cores: the CPU cores its child was pinned to, as ``0-7``.
        workers: how many workers the run had.
        neighbours: the most other jobs of the run that ran at the same time as this one, at any moment
            while it ran (0: it ran alone on the node, as far as this run knows).
        exclusive: the run ran one job at a time (``--exclusive``).
    """

    host: str
    device: str
    cores: str
    workers: int
    neighbours: int
    exclusive: bool

    def as_dict(self) -> dict:
        return {
            "host": self.host,
            "device": self.device,
            "cores": self.cores,
            "workers": self.workers,
            "neighbours": self.neighbours,
            "exclusive": self.exclusive,
        }


def attach_placement(record: Record, placement: Placement) -> Record:
    """``record`` with ``placement`` in its provenance (``provenance.placement``)."""
    return replace(record, provenance={**(record.provenance or {}), "placement": placement.as_dict()})


class _Neighbours:
    """Counts, for each running job, the most other jobs that ran at the same time as it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._most: dict[int, int] = {}
        self._next = 0

    def start(self) -> int:
        with self._lock:
            token, self._next = self._next, self._next + 1
            self._most[token] = len(self._most)
            for other in self._most:
                self._most[other] = max(self._most[other], len(self._most) - 1)
            return token

    def end(self, token: int) -> int:
        with self._lock:
            return self._most.pop(token)


@dataclass
class _Run:
    """What the workers' threads share: the jobs left, the events for the calling thread, the stop flag."""

    pending: deque
    events: queue.Queue
    gate: threading.Semaphore
    neighbours: _Neighbours
    stopping: threading.Event
    lock: threading.Lock

    def take(self):
        with self.lock:
            return None if self.stopping.is_set() or not self.pending else self.pending.popleft()


def _work(run: _Run, worker: Worker, run_one: Callable[[Any, Worker], Any]) -> None:
    """A worker's thread: the next job, one at a time (under the gate: one on the node with --exclusive)."""
    try:
        while True:
            with run.gate:
                job = run.take()
                if job is None:
                    break
                run.events.put(("start", job, worker))
                token = run.neighbours.start()
                try:
                    record = run_one(job, worker)
                finally:
                    beside = run.neighbours.end(token)
            run.events.put(("done", job, worker, record, beside))
    except BaseException as exc:  # a fault of the run (or Ctrl-C), not of a job: the calling thread raises it
        run.events.put(("failed", exc))
    finally:
        run.events.put(("exit",))


def run_parallel(
    jobs: Sequence[J],
    workers: Sequence[Worker],
    run_one: Callable[[J, Worker], Record],
    *,
    exclusive: bool = False,
    on_start: Callable[[J, Worker], None] | None = None,
    on_record: Callable[[J, Record], None] | None = None,
) -> list[Record]:
    """Run ``jobs`` in order over ``workers``, one job per worker at a time; the records in the order jobs end.

    ``run_one(job, worker)`` runs one job and returns its record, never raising for the job's own faults;
    it runs the job's child through ``worker.bind(fn)``, so that the child takes the worker's GPU and cores,
    and ends when the run stops. ``on_start`` and ``on_record`` are called in this thread (append the record,
    print, advance a progress bar); an exception from them, from ``run_one``, or Ctrl-C stops every worker,
    ends the running jobs' children, and is raised here. Records of jobs ended that way are not returned.

    Args:
        jobs: the jobs, in the order they start (`longest_first`).
        workers: where they run (`bench.workers.parse_devices`).
        run_one: runs one job on one worker, returns its record.
        exclusive: one job at a time on the node, on any worker (measurements free of neighbours).
        on_start: called as a job starts.
        on_record: called with each record, its placement attached (`attach_placement`).
    """
    if not workers:
        raise ValueError("run_parallel needs at least one worker")
    run = _Run(
        pending=deque(jobs),
        events=queue.Queue(),
        gate=threading.Semaphore(1 if exclusive else len(workers)),
        neighbours=_Neighbours(),
        stopping=threading.Event(),
        lock=threading.Lock(),
    )
    # A bound child watches the read end; closing the write end ends every child at once.
    stop_reader, stop_writer = multiprocessing.Pipe(duplex=False)
    threads = [
        threading.Thread(
            target=_work, args=(run, worker.with_stop(stop_reader), run_one), name=f"bench {worker.name}", daemon=True
        )
        for worker in workers
    ]
    host = socket.gethostname()
    records: list[Record] = []
    try:
        for thread in threads:
            thread.start()
        running = len(threads)
        while running:
            event = run.events.get()
            if event[0] == "exit":
                running -= 1
            elif event[0] == "failed":
                raise event[1]
            elif event[0] == "start" and on_start is not None:
                on_start(event[1], event[2])
            elif event[0] == "done":
                job, worker, record, beside = event[1:]
                where = Placement(host, worker.name, cores_text(worker.cores), len(workers), beside, exclusive)
                record = attach_placement(record, where)
                records.append(record)
                if on_record is not None:
                    on_record(job, record)
    finally:
        run.stopping.set()
        stop_writer.close()
        deadline = time.monotonic() + STOP_GRACE_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stop_reader.close()
    return records
