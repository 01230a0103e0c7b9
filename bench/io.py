"""Files written whole or not at all, and folders checked before any work: the I/O every command shares."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

from bench.errors import BenchError, first_line


def write_bytes_atomic(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Replace ``path`` with ``data`` in one rename: a reader sees the old file or the new, never half.

    Each writer has its own temporary file, so concurrent writers of one path (shards rewriting a
    table) leave one of their files whole. With ``exclusive`` an existing ``path`` is not replaced:
    `FileExistsError`, and nothing written. A failed write (no space left, a folder in the way, no
    permission) leaves the old file and no temporary one, and is a `BenchError` naming ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    claimed = False
    try:
        tmp.write_bytes(data)
        if exclusive:  # claim the name (O_EXCL: one writer wins), then fill it in one rename
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            claimed = True
        tmp.replace(path)
    except FileExistsError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if claimed:
            with contextlib.suppress(OSError):
                path.unlink()
        raise BenchError(
            f"cannot write {path} ({exc.strerror or first_line(exc)}); make it a writable file in a writable folder "
            "with free space (or move aside what is there) and rerun"
        ) from None


def write_text_atomic(path: Path, text: str, *, exclusive: bool = False) -> None:
    """`write_bytes_atomic` of ``text`` in UTF-8."""
    write_bytes_atomic(path, text.encode(), exclusive=exclusive)


def ensure_writable_folder(
    folder: Path,
    *,
    appendable: Iterable[Path] = (),
    what: str = "results folder",
    fix: str = "pass --results DIR with a folder you can write",
) -> None:
    """Create ``folder`` and check that files can be written in it, or a `BenchError` naming the fix.

    Each of ``appendable`` is opened for appending too (and so created when missing). ``what`` and
    ``fix`` name the folder and the remedy in the error.
    """
    probe = Path(folder) / f".write-test-{uuid.uuid4().hex}"
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
        for path in appendable:
            with open(path, "a"):
                pass
    except OSError as exc:
        raise BenchError(f"{what} {folder} is not writable ({exc.strerror or exc}); {fix}") from None
