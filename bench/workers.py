"""Workers of a parallel `bench run`: one per GPU (or per share of the CPU), each with its own cores.

`parse_devices` turns ``--devices`` into `Worker` s and splits this process's CPU cores evenly among
them. A job's child process is bound to its worker before it measures anything (`Worker.bind`):
``CUDA_VISIBLE_DEVICES`` names the worker's GPU alone (so the child measures on ``cuda:0``), the
child's CPU affinity is the worker's cores and torch uses as many threads. The binding must come
before CUDA initialises in the child, which holds for children forked from the job server (it
imports torch without touching CUDA).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any

from bench.errors import BenchError

_DEVICE = re.compile(r"(cuda|cpu)(?::(\d+))?")
# exit status of a job's child that the run stopped (Ctrl-C, or a fault of the run itself)
STOPPED_EXIT = 75


@dataclass(frozen=True)
class Worker:
    """One place where jobs run, one at a time: a CUDA device or a share of the CPU.

    Args:
        kind: ``cuda`` or ``cpu``.
        index: the CUDA device's index as this process numbers it (under its own ``CUDA_VISIBLE_DEVICES``),
            or the CPU worker's number.
        cores: the CPU cores its jobs' child processes are pinned to.
        stop: the read end of the run's stop pipe (set by `bench.scheduler.run_parallel`): a bound child
            ends as soon as the run closes the pipe's other end.
    """

    kind: str
    index: int
    cores: tuple[int, ...]
    stop: Connection | None = field(default=None, compare=False, repr=False)

    @property
    def name(self) -> str:
        """``cuda:1``, ``cpu:0``: the worker as ``--devices`` names it."""
        return f"{self.kind}:{self.index}"

    @property
    def child_device(self) -> str:
        """The device a bound child measures on: its one visible GPU, or the CPU."""
        return "cuda:0" if self.kind == "cuda" else "cpu"

    def with_stop(self, stop: Connection) -> Worker:
        return replace(self, stop=stop)

    def bind(self, fn: Callable[..., Any]) -> BoundCall:
        """``fn`` as a job's child runs it on this worker: `bind_to` first (what `bench.jobs.run_in_child` calls)."""
        return BoundCall(self, fn)


@dataclass(frozen=True)
class BoundCall:
    """``fn(*args)`` in a job's child process, bound to ``worker`` first; it is pickled into the child.

    Args:
        worker: the worker whose GPU and cores the child takes.
        fn: what the child runs (a module-level function, so that it pickles by name).
    """

    worker: Worker
    fn: Callable[..., Any]

    def __call__(self, *args: Any) -> Any:
        bind_to(self.worker)
        if self.worker.stop is not None:
            _end_when_closed(self.worker.stop)
        return self.fn(*args)


def bind_to(worker: Worker) -> None:
    """Bind this process (a job's child) to ``worker``: its GPU alone visible, its cores, as many torch threads.

    A CUDA worker's binding needs CUDA uninitialised in this process (it reads ``CUDA_VISIBLE_DEVICES``
    once, when it initialises): a `RuntimeError` otherwise, which the job records as its error.
    """
    import torch

    if worker.kind == "cuda":
        if torch.cuda.is_initialized():
            raise RuntimeError(f"CUDA was initialised before the job was bound to {worker.name}; it cannot change GPU")
        os.environ["CUDA_VISIBLE_DEVICES"] = visible_device(worker.index, os.environ.get("CUDA_VISIBLE_DEVICES"))
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU worker's job never takes a GPU from a neighbour
    os.sched_setaffinity(0, worker.cores)
    os.environ["OMP_NUM_THREADS"] = str(len(worker.cores))  # for the processes the job starts
    torch.set_num_threads(len(worker.cores))


def visible_device(index: int, visible: str | None) -> str:
    """What ``CUDA_VISIBLE_DEVICES`` names CUDA device ``index`` by, under the parent's ``visible`` (None: all).

    The parent numbers its devices under its own ``CUDA_VISIBLE_DEVICES``: index 1 under ``"4,6"`` is ``"6"``.
    """
    entries = [entry.strip() for entry in (visible or "").split(",") if entry.strip()]
    if visible is None or not visible.strip():
        return str(index)
    if index >= len(entries):
        raise RuntimeError(f"CUDA device {index} is not among CUDA_VISIBLE_DEVICES={visible}")
    return entries[index]


def _end_when_closed(stop: Connection) -> None:
    """End this process as soon as the run closes its end of the stop pipe (or the run itself ends)."""

    def watch() -> None:
        stop.poll(None)  # readable at end of file: the run's end is closed
        os._exit(STOPPED_EXIT)

    threading.Thread(target=watch, name="bench-stop-watch", daemon=True).start()


def visible_cores() -> list[int]:
    """The CPU cores this process may run on (its affinity: what a Slurm task or `taskset` gave it)."""
    return sorted(os.sched_getaffinity(0))


def split_cores(cores: Sequence[int], count: int) -> list[tuple[int, ...]]:
    """``cores`` in ``count`` contiguous shares as even as can be (sizes differ by one at most).

    With fewer cores than shares, each share is one core and shares wrap around onto the same cores.
    """
    if count < 1 or not cores:
        raise ValueError(f"cannot split {len(cores)} cores into {count} shares")
    if count > len(cores):
        return [(cores[i % len(cores)],) for i in range(count)]
    size, extra = divmod(len(cores), count)
    shares, start = [], 0
    for i in range(count):
        end = start + size + (i < extra)
        shares.append(tuple(cores[start:end]))
        start = end
    return shares


def cuda_device_count() -> int:
    """CUDA devices visible to this process, counted through NVML where it can (CUDA stays uninitialised)."""
    import torch

    return torch.cuda.device_count()


def parse_devices(
    text: str, *, gpu_count: Callable[[], int] = cuda_device_count, cores: Sequence[int] | None = None
) -> list[Worker]:
    """The workers of ``--devices``: ``all`` (every visible GPU), ``cuda:0,cuda:1``, or ``cpu:0,cpu:1``.

    A `BenchError` naming the value and the fix for anything else: an unknown or repeated device, a GPU
    that is not visible, CUDA and CPU workers together, a CPU worker beyond the cores (cpu:0 .. cpu:cores-1).

    Args:
        text: the value of ``--devices``.
        gpu_count: how many CUDA devices are visible (a function: asked only when GPUs are named).
        cores: the cores to split among the workers (default: this process's affinity).
    """
    cores = visible_cores() if cores is None else list(cores)
    if text.strip() == "all":
        count = gpu_count()
        if not count:
            raise BenchError(
                "--devices all: no CUDA GPU is visible; on a machine without GPUs pass CPU workers, "
                "e.g. --devices cpu:0,cpu:1"
            )
        names = [("cuda", i) for i in range(count)]
    else:
        names = device_names(text)
    _check(names, text, gpu_count, cores)
    return [Worker(kind, index, share) for (kind, index), share in zip(names, split_cores(cores, len(names)))]


def device_names(text: str) -> list[tuple[str, int]]:
    """The (kind, index) pairs ``--devices`` names (``all``: none), checked for what holds on any machine: the
    form, no device twice, GPUs or CPU workers but not both. A `BenchError` naming the value otherwise.

    A launcher checks this much where it submits; the node that runs the jobs checks the rest (`parse_devices`).
    """
    if text.strip() == "all":
        return []
    names = [_device(item, text) for item in text.split(",") if item.strip()]
    if not names:
        raise BenchError(f"--devices {text!r}: empty; use all, cuda:0,cuda:1 or cpu:0,cpu:1")
    repeated = sorted({f"{kind}:{index}" for kind, index in names if names.count((kind, index)) > 1})
    if repeated:
        raise BenchError(f"--devices {text!r}: {', '.join(repeated)} named twice; one worker per device")
    if len({kind for kind, _ in names}) > 1:
        raise BenchError(
            f"--devices {text!r}: GPUs and CPU workers in one run; their records go to different device folders, "
            "so run them as two commands"
        )
    return names


def _device(item: str, text: str) -> tuple[str, int]:
    match = _DEVICE.fullmatch(item.strip())
    if not match:
        raise BenchError(f"--devices {text!r}: {item.strip()!r} is not a device; use all, cuda:N,... or cpu:N,...")
    return match[1], int(match[2] or 0)


def _check(names: list[tuple[str, int]], text: str, gpu_count: Callable[[], int], cores: Sequence[int]) -> None:
    """What `device_names` leaves to the machine: the GPUs visible, the CPU workers within its cores."""
    if names[0][0] == "cuda":
        count = gpu_count()
        missing = [f"cuda:{index}" for _, index in names if index >= count]
        if missing:
            raise BenchError(
                f"--devices {text!r}: {', '.join(missing)} not visible ({count} CUDA device(s)); "
                f"use cuda:0..cuda:{count - 1}, or all"
                if count
                else f"--devices {text!r}: no CUDA GPU is visible; use CPU workers, e.g. --devices cpu:0,cpu:1"
            )
    elif len(names) > len(cores) or max(index for _, index in names) >= len(cores):
        raise BenchError(
            f"--devices {text!r}: this process may use {len(cores)} core(s), so at most {len(cores)} CPU "
            f"workers, cpu:0..cpu:{len(cores) - 1}"
        )


def cores_text(cores: Sequence[int]) -> str:
    """``0-3,8,10-11``: a set of cores as `taskset` and Slurm print it."""
    ordered = sorted(set(cores))
    runs: list[list[int]] = []
    for core in ordered:
        if runs and core == runs[-1][1] + 1:
            runs[-1][1] = core
        else:
            runs.append([core, core])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
