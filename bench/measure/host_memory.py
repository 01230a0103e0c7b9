"""Host memory while timing on a CPU: glibc keeps what a step frees in its heap, as the CUDA caching
allocator does on a GPU.

With glibc's defaults every block above its mmap threshold (128 KiB) is a fresh mapping whose pages
the kernel zeroes again at every step, which can double the time of a 1024x2048 step. A latency
record says which way its steps ran (``host_memory``).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Iterator

import torch

# glibc's mallopt parameters (malloc.h) and its defaults (a 128 KiB mmap and trim threshold).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_DEFAULT_THRESHOLD = 128 * 1024
_HOST_CACHE_BYTES = 2**31 - 1  # the largest value mallopt takes (a C int)
HOST_MEMORY_CACHED = "glibc heap kept between steps (mmap and trim thresholds 2 GiB)"


@functools.cache
def glibc() -> ctypes.CDLL | None:
    """glibc, or None where the C library is another one (musl, macOS): its allocator is left as it is."""
    try:
        libc = ctypes.CDLL("libc.so.6")  # glibc's soname
    except OSError:
        return None
    if not all(hasattr(libc, f) for f in ("mallopt", "malloc_trim", "gnu_get_libc_version")):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


@contextlib.contextmanager
def host_memory_cached(device: torch.device) -> Iterator[str | None]:
    """While timing on a CPU, let glibc keep freed memory in its heap instead of unmapping it.

    Yields `HOST_MEMORY_CACHED` when it did (glibc, CPU) and None otherwise; on leaving, glibc's
    default thresholds are set again (as fixed values: glibc no longer raises them by itself) and
    the heap is trimmed.
    """
    libc = glibc() if device.type == "cpu" else None
    if libc is None or not libc.mallopt(_M_MMAP_THRESHOLD, _HOST_CACHE_BYTES):
        yield None
        return
    try:
        libc.mallopt(_M_TRIM_THRESHOLD, _HOST_CACHE_BYTES)
        yield HOST_MEMORY_CACHED
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
        libc.malloc_trim(0)
