"""The record store: one device folder's records file, append-only, the single source of every table and plot.

``<results>/<device-slug>/records.jsonl`` (``runs/`` a user's, ``results/`` the shipped references)
holds one JSON line per `Record`. An append is one ``write`` of whole lines to a file opened with
O_APPEND, under an exclusive ``flock`` on a sidecar lock file, then ``fsync``: concurrent `bench run`
processes (one per GPU, or shards on machines sharing the folder) never interleave or lose lines. A
line torn by a crash of an older writer, or one that is not a record of readable types
(`Record.from_json`), is skipped by the reader (one warning per file), and the next append starts on a
fresh line. Each record names the machine it was measured on; a run reuses only its own machine's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from bench.errors import BenchError, first_line
from bench.io import ensure_writable_folder
from bench.protocol import counts_as
from bench.store.record import Key, Record

RECORDS_FILE = "records.jsonl"


def latest_ok(
    records: Iterable[Record], protocol: str | None = None, *, prefer: Iterable[str] | None = None
) -> dict[Key, Record]:
    """The newest ``ok`` record per measurement key (the one the tables show), of one protocol version
    when ``protocol`` is given: the records taken under it, and those of older versions that count as it.

    Where machines disagree (a folder holding another machine's records beside this one's), the newest
    record of a machine in ``prefer`` wins (default: this computer and its GPUs,
    `bench.provenance.local_machine_ids`), and the newest of any machine where none of them measured it.
    """
    latest: dict[Key, Record] = {}
    by_machine: dict[Key, dict[str | None, tuple[int, Record]]] = {}
    for position, record in enumerate(records):
        if record.ok and protocol in (None, record.protocol, counts_as(record.protocol, record.mode)):
            key = record.key()
            latest[key] = record  # file order is append order: the last one wins
            by_machine.setdefault(key, {})[record.machine] = (position, record)
    disputed = [key for key, machines in by_machine.items() if len(machines) > 1]
    if disputed:
        if prefer is None:
            from bench.provenance import local_machine_ids  # imports torch: needed only here

            prefer = local_machine_ids()
        prefer = set(prefer)
        for key in disputed:
            own = [found for machine, found in by_machine[key].items() if machine in prefer]
            if own:
                latest[key] = max(own, key=lambda found: found[0])[1]
    return latest


# Warnings already given by this process: a file read again (each append reads it) warns once.
_warned: set[str] = set()


def read_records(path: Path) -> list[Record]:
    """Every valid record of ``path``; torn, corrupt or invalid lines are skipped with one warning.

    An existing ``path`` that cannot be read (no permission, a folder) is a `BenchError`.
    """
    records: list[Record] = []
    skipped: list[int] = []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return records
    except OSError as exc:
        raise BenchError(
            f"{path}: cannot read the records ({exc.strerror or first_line(exc)}); make it a readable file "
            "(chmod u+rw) or pass --results DIR with another results folder"
        ) from None
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(Record.from_json(json.loads(line)))
        except (ValueError, RecursionError):  # not JSON, or not a record; RecursionError: nesting too deep
            skipped.append(number)
    if skipped:
        shown = ", ".join(map(str, skipped[:10])) + (", ..." if len(skipped) > 10 else "")
        message = (
            f"{path}: skipping {len(skipped)} unreadable line{'s' if len(skipped) > 1 else ''} ({shown}): torn, "
            "corrupt or not a valid record; `bench run` measures what they held again"
        )
        if message not in _warned:
            _warned.add(message)
            warnings.warn(message, stacklevel=2)
    return records


def iter_record_files(results: Path) -> Iterator[Path]:
    """records.jsonl of every device folder under ``results``."""
    if results.is_dir():
        yield from sorted(results.glob(f"*/{RECORDS_FILE}"))


class RecordStore:
    """The records file of one device folder.

    Args:
        results: the results root (``runs/``, or ``results/`` for the reference results).
        device_slug: the device folder name.
    """

    def __init__(self, results: Path, device_slug: str) -> None:
        self.folder = Path(results) / device_slug
        self.path = self.folder / RECORDS_FILE
        self._lock_path = self.folder / (RECORDS_FILE + ".lock")

    def ensure_writable(self) -> None:
        """Create the folder and lock file (an existing records file must be appendable), or a `BenchError`."""
        ensure_writable_folder(self.folder, appendable=[self._lock_path] + ([self.path] if self.path.exists() else []))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def read(self) -> list[Record]:
        """The folder's valid records, all of one device: the folder's, or (a renamed folder) the newest
        record's; records of other devices (a merged or copied file) are left out with one warning."""
        records = read_records(self.path)
        slugs = {r.device_slug for r in records}
        if len(slugs) <= 1:
            return records
        mine = self.folder.name if self.folder.name in slugs else records[-1].device_slug
        others = sorted(slugs - {mine})
        n = sum(r.device_slug != mine for r in records)
        message = (
            f"{self.path}: {n} record{'s' * (n != 1)} of another device "
            f"({', '.join(others)}) {'is' if n == 1 else 'are'} left out of {mine}'s tables; "
            f"move them to {others[0]}/{RECORDS_FILE}"
        )
        if message not in _warned:
            _warned.add(message)
            warnings.warn(message, stacklevel=2)
        return [r for r in records if r.device_slug == mine]

    def done(self, machine: str | None = None) -> set[Key]:
        """Keys of the measurements already recorded ``ok`` by ``machine`` (by any machine when None)."""
        return self.triage(machine=machine)[0]

    def triage(
        self,
        reusable: Callable[[Record], bool] | None = None,
        *,
        machine: str | None = None,
        records: list[Record] | None = None,
    ) -> tuple[set[Key], set[Key]]:
        """The keys recorded ``ok`` by ``machine`` (by any machine when None), from one read of the file, as
        (kept, outdated): whether ``reusable`` holds for the newest such record of the key (every key is kept
        without ``reusable``). ``records``: the folder's records when the caller has read them already.

        Another machine's records are neither: they were not measured here, so they are measured again.
        """
        records = self.read() if records is None else records
        if machine is not None:
            records = [r for r in records if r.machine == machine]
        kept: set[Key] = set()
        outdated: set[Key] = set()
        for key, record in latest_ok(records, prefer=()).items():
            (kept if reusable is None or reusable(record) else outdated).add(key)
        return kept, outdated

    def append(self, records: Iterable[Record], *, replace_ok: bool = False) -> list[Record]:
        """Append ``records`` atomically; an ``ok`` record whose key its machine has already recorded ``ok``
        is dropped (another machine's record of the key does not count).

        Args:
            records: the records to write.
            replace_ok: write ``ok`` records even when their key is recorded (``--force``);
                the tables use the newest.

        Returns the records written.
        """
        with self._locked():
            done = {(r.machine, r.key()) for r in self.read() if r.ok}
            fresh = []
            for record in records:
                key = (record.machine, record.key())
                if record.ok:
                    if key in done and not replace_ok:
                        continue
                    done.add(key)
                fresh.append(record)
            if not fresh:
                return []
            payload = b"".join(json.dumps(r.to_json(), sort_keys=True, default=str).encode() + b"\n" for r in fresh)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if os.fstat(fd).st_size and not _ends_with_newline(self.path):
                    payload = b"\n" + payload  # a torn tail stays one bad line, not a glued record
                written = os.write(fd, payload)
                if written != len(payload):
                    raise OSError(f"short write to {self.path}: {written} of {len(payload)} bytes")
                os.fsync(fd)
            finally:
                os.close(fd)
        return fresh


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
