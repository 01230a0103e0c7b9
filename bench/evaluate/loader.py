"""The input pipeline: decoding in worker processes, pinned memory, a bounded prefetch queue.

Workers decode images and map labels (CPU work, off the critical path); the main process only
launches device work. Inside a daemonic process (a `bench run` job), which may not start worker
processes, the same pipeline runs on threads (PIL's decoders and numpy release the GIL).
"""

from __future__ import annotations

import collections
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.utils.data import DataLoader, Subset

from bench.data import Sample, first_sample

PREFETCH_PER_WORKER = 4


def default_workers() -> int:
    """Decoding workers: the CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus))


class ThreadedLoader:
    """Samples of ``dataset`` decoded by ``workers`` threads, at most ``prefetch`` ahead, in order."""

    def __init__(self, dataset, workers: int, pin: bool, prefetch: int) -> None:
        self.dataset, self.workers, self.pin, self.prefetch = dataset, workers, pin, prefetch

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[Sample]:
        indices = iter(range(len(self.dataset)))
        with ThreadPoolExecutor(self.workers, thread_name_prefix="bench-decode") as pool:
            pending = collections.deque(
                pool.submit(self.dataset.__getitem__, i) for _, i in zip(range(self.prefetch), indices)
            )
            while pending:
                sample = pending.popleft().result()
                nxt = next(indices, None)
                if nxt is not None:
                    pending.append(pool.submit(self.dataset.__getitem__, nxt))
                yield sample.pin_memory() if self.pin and sample.error is None else sample


def make_loader(dataset, indices: list[int], *, workers: int | None, pin: bool):
    """An iterable of `Sample` for ``indices`` of ``dataset``, in order.

    Args:
        dataset: a `bench.data.SegDataset`.
        indices: this rank's share of the dataset.
        workers: decoding processes (None: `default_workers`; 0: decode in this process).
        pin: return page-locked tensors (for asynchronous copies to a GPU).
    """
    subset = Subset(dataset, indices)
    workers = default_workers() if workers is None else min(workers, len(indices))  # no idle decoders
    if workers and multiprocessing.current_process().daemon:
        return ThreadedLoader(subset, workers, pin and torch.cuda.is_available(), workers * PREFETCH_PER_WORKER)
    return DataLoader(
        subset,
        batch_size=1,
        shuffle=False,
        num_workers=workers,
        collate_fn=first_sample,
        pin_memory=pin and torch.cuda.is_available(),
        prefetch_factor=PREFETCH_PER_WORKER if workers else None,
    )
