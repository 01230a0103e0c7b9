"""The error every `bench` command turns into one line on stderr and a non-zero exit."""


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
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ in ("OutOfMemoryError", "MemoryError") or any(
            marker in str(exc).lower() for marker in OOM_MARKERS
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
