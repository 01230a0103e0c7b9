"""The error every `bench` command turns into one line on stderr and a non-zero exit, and Ctrl-C."""

from __future__ import annotations

import contextlib
import signal
import threading


class BenchError(Exception):
    """A user-facing error: the message names the file or value and the fix."""

    exit_code = 2


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of ``exc``'s message (its type's name when it has none), for a one-line error."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


def described(exc: BaseException, limit: int | None = None) -> str:
    """``Type: first line`` of ``exc`` (its type's name alone when it has no message), for a record or a report."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:limit]}" if lines else type(exc).__name__


# What the allocators say when memory runs out (CUDA's caching allocator, the host's, and cuBLAS's or
# cuDNN's own workspace allocations: CUBLAS_STATUS_ALLOC_FAILED, CUDNN_STATUS_ALLOC_FAILED).
OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "status_alloc_failed")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc``, or an error it was raised from or while handling, reports exhausted device or host
    memory (torch's OutOfMemoryError, MemoryError, an allocator's message)."""
    seen = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if type(cause).__name__ in ("OutOfMemoryError", "MemoryError") or any(
            marker in str(cause).lower() for marker in OOM_MARKERS
        ):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


_interrupted = False
_deferred = False


def _note_interrupt(signum, frame):
    global _interrupted
    _interrupted = True
    if not _deferred:
        raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_noted():
    """Ctrl-C raises `KeyboardInterrupt` as always, and is also noted, for `check_interrupt`.

    Some imports swallow the exception (torch's C extension catches any error of its numpy import),
    which would let a command run to its end after a Ctrl-C, or fail later on a half-imported module.
    Where SIGINT is not Python's default handler (ignored, or another handler), nothing changes.
    """
    global _interrupted
    _interrupted = False
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    signal.signal(signal.SIGINT, _note_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def was_interrupted() -> bool:
    """Whether Ctrl-C came during this command (see `interrupts_noted`)."""
    return _interrupted


@contextlib.contextmanager
def interrupts_deferred():
    """A Ctrl-C inside the block raises `KeyboardInterrupt` at its end, not in its middle: for steps that must
    happen together (a count and the list of what it counted). In force under `interrupts_noted` only."""
    global _deferred
    outer = _deferred
    _deferred = True
    try:
        yield
    finally:
        _deferred = outer
    if not outer:
        check_interrupt()


def check_interrupt() -> None:
    """`KeyboardInterrupt` again if a Ctrl-C came and was swallowed: called before each job or image."""
    if _interrupted:
        raise KeyboardInterrupt
