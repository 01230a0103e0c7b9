"""Evaluation over several processes: ``torchrun --nproc-per-node N -m bench eval ...``.

Each rank evaluates every ``world_size``-th image (no padding, no image twice) into its own
confusion matrix; one ``all_reduce(SUM)`` of the integer matrices gives exactly the matrix of a
single process. torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``)
selects the process group; the backend is NCCL on GPUs (rank r on ``cuda:<LOCAL_RANK>``) and
gloo on CPUs. Multi-node runs are the same command with torchrun's ``--nnodes`` and rendezvous
options.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from bench.errors import BenchError, first_line

# What the env:// rendezvous needs beside WORLD_SIZE (torchrun sets them, and LOCAL_RANK, for every process).
TORCHRUN_ENV = ("RANK", "MASTER_ADDR", "MASTER_PORT")
_LAUNCH = "launch with `torchrun --nproc-per-node N -m bench ...` (or unset WORLD_SIZE for one process)"


def env_int(name: str, default: int) -> int:
    """The non-negative integer environment variable ``name`` (``default`` when unset), or a `BenchError`."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit():
        raise BenchError(f"${name} is {value!r}, not a process count or rank; {_LAUNCH}")
    return int(value)


def world_size() -> int:
    """``$WORLD_SIZE`` (1 when unset), or a `BenchError` for a value that is not a process count."""
    return max(1, env_int("WORLD_SIZE", 1))


@dataclass(frozen=True)
class DistContext:
    """This process's place in the evaluation.

    Args:
        rank: global rank.
        world_size: number of processes.
        local_rank: rank on this node (its GPU index).
        owns_group: the process group was created here and is destroyed by `teardown`.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> tuple[DistContext, str]:
    """Join the process group torchrun describes; returns the context and this rank's device.

    Without torchrun (``WORLD_SIZE`` unset or 1) and without an initialised group this is a
    single-process context and ``device`` unchanged.

    Args:
        device: ``cpu``, ``cuda`` or ``cuda:N`` (under torchrun a CUDA device becomes ``cuda:<LOCAL_RANK>``).
    """
    if dist.is_available() and dist.is_initialized():
        local = env_int("LOCAL_RANK", 0)
        if torch.device(device).type == "cuda":
            device = f"cuda:{local}"
        return DistContext(dist.get_rank(), dist.get_world_size(), local), device
    world = world_size()
    if world <= 1:
        return DistContext(), device
    for name in TORCHRUN_ENV:
        if not os.environ.get(name, "").strip():
            raise BenchError(f"$WORLD_SIZE is {world} but ${name} is not set; {_LAUNCH}")
    local = env_int("LOCAL_RANK", 0)
    for name, value in (("RANK", env_int("RANK", 0)), ("LOCAL_RANK", local)):
        if value >= world:  # the rendezvous would wait for ranks that never come
            raise BenchError(f"${name} is {value} but $WORLD_SIZE is {world} (ranks 0..{world - 1}); {_LAUNCH}")
    if torch.device(device).type == "cuda":
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    try:
        dist.init_process_group(backend=backend)
    except (ValueError, RuntimeError) as exc:  # the rendezvous failed (a port in use, a master that is not there)
        raise BenchError(f"joining the {backend} process group failed ({first_line(exc)}); {_LAUNCH}") from None
    return DistContext(dist.get_rank(), dist.get_world_size(), local, owns_group=True), device


def shard_indices(count: int, ctx: DistContext) -> list[int]:
    """The dataset indices of this rank: ``rank, rank + world_size, ...`` (each index exactly once)."""
    return list(range(ctx.rank, count, ctx.world_size))


def _reduce(tensor: torch.Tensor, op) -> None:
    if dist.get_backend() == "gloo" and tensor.device.type != "cpu":
        host = tensor.cpu()
        dist.all_reduce(host, op=op)
        tensor.copy_(host)
    else:
        dist.all_reduce(tensor, op=op)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, in place (a no-op for one process)."""
    if ctx.world_size > 1:
        _reduce(tensor, dist.ReduceOp.SUM)
    return tensor


def first_error(error: str | None, ctx: DistContext) -> str | None:
    """The error of the lowest failed rank, on every rank (every rank must call it, failed or not)."""
    if ctx.world_size == 1:
        return error
    errors: list[str | None] = [None] * ctx.world_size
    dist.all_gather_object(errors, error)
    return next((e for e in errors if e), None)


def teardown(ctx: DistContext) -> None:
    """Destroy the process group if `setup` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()
