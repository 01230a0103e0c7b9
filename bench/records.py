"""Records: one JSON line per measurement, the single source of every table and plot.

``<results>/<device-slug>/records.jsonl`` (``runs/`` a user's, ``results/`` the shipped references) is
append-only. An append is one ``write`` of whole lines to a file opened with O_APPEND, under an
exclusive ``flock`` on a sidecar lock file, then ``fsync``: concurrent `bench run` processes (one
per GPU, or shards on machines sharing the folder) never interleave or lose lines. A line torn by
a crash of an older writer, or a record whose values are not of the shapes the tables read, is
skipped by the reader (one warning per file), and the next append starts on a fresh line. Each
record names the machine it was measured on (`machine_of`); a run reuses only its own machine's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

from bench.errors import BenchError, first_line
from bench.protocol import counts_as

SCHEMA = 1
RECORDS_FILE = "records.jsonl"
OK = "ok"
FAILED_STATUSES = ("error", "oom", "timeout", "crashed")


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


def record_key(record: dict) -> tuple:
    """What makes two records measure the same thing (a rerun skips an ``ok`` one).

    Its version is the one the record counts as (`bench.protocol.counts_as`): a record of an older
    protocol whose measurement no later version changed is the same measurement as a current one.
    """
    return (
        record["arch"],
        record["dataset"],
        record["kind"],
        record.get("mode"),
        counts_as(record["protocol"], record.get("mode")),
        record["device_slug"],
    )


def machine_of(record: dict) -> str | None:
    """The `bench.provenance.machine_id` a record was measured on (None: a record that does not name one)."""
    provenance = record.get("provenance")
    machine = provenance.get("machine_id") if isinstance(provenance, dict) else None
    return machine if isinstance(machine, str) else None


def machine_label(record: dict) -> str:
    """The machine a record names, as a reader knows it: its host name, else its machine id, else "unnamed"."""
    provenance = record.get("provenance") if isinstance(record.get("provenance"), dict) else {}
    host = provenance.get("host")
    return host if isinstance(host, str) and host else machine_of(record) or "unnamed"


def latest_ok(
    records: Iterable[dict], protocol: str | None = None, *, prefer: Iterable[str] | None = None
) -> dict[tuple, dict]:
    """The newest ``ok`` record per measurement key (the one the tables show), of one protocol version
    when ``protocol`` is given: the records taken under it, and those of older versions that count as it.

    Where machines disagree (a folder holding another machine's records beside this one's), the newest
    record of a machine in ``prefer`` wins (default: this computer and its GPUs,
    `bench.provenance.local_machine_ids`), and the newest of any machine where none of them measured it.
    """
    latest: dict[tuple, dict] = {}
    by_machine: dict[tuple, dict[str | None, tuple[int, dict]]] = {}
    for position, record in enumerate(records):
        taken = record.get("protocol")
        if record.get("status") == OK and (
            protocol is None or protocol == taken or protocol == counts_as(str(taken), record.get("mode"))
        ):
            key = record_key(record)
            latest[key] = record  # file order is append order: the last one wins
            by_machine.setdefault(key, {})[machine_of(record)] = (position, record)
    disputed = [key for key, machines in by_machine.items() if len(machines) > 1]
    if disputed:
        if prefer is None:
            from bench.provenance import local_machine_ids  # noqa: PLC0415 - imports torch, needed only here

            prefer = local_machine_ids()
        prefer = set(prefer)
        for key in disputed:
            own = [found for machine, found in by_machine[key].items() if machine in prefer]
            if own:
                latest[key] = max(own, key=lambda found: found[0])[1]
    return latest


def new_record(**fields) -> dict:
    return {"schema": SCHEMA, "id": uuid.uuid4().hex, **fields}


# Fields every record has, and their types (a line without them is not a record).
_REQUIRED = {"arch": str, "dataset": str, "kind": str, "protocol": str, "device_slug": str, "status": str}


def is_number(value) -> bool:
    """An int or float of JSON, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _size(value) -> bool:
    """``[H, W]``, positive ints."""
    return isinstance(value, list) and len(value) == 2 and all(map(_positive_int, value))


def _flag(value) -> bool:
    return isinstance(value, bool)


def _split(value) -> bool:
    """A FLOP count by operator: operator name -> number."""
    return isinstance(value, dict) and all(isinstance(k, str) and is_number(v) for k, v in value.items())


def _shape(*, required: tuple[str, ...] = (), **fields):
    """A check for a dict whose ``fields`` are absent, None or pass their check (``required`` ones present)."""

    def check(value) -> bool:
        return (
            isinstance(value, dict)
            and all(value.get(key) is not None for key in required)
            and all(value.get(key) is None or ok(value[key]) for key, ok in fields.items())
        )

    return check


# What the tables, plots and run summaries read from an ``ok`` record, per kind: a record whose values
# are of other types is skipped like a corrupt line (so `bench run` measures it again).
_VALUE_SHAPES = {
    "params": _shape(params_m=is_number),
    "flops": _shape(
        gflops=is_number,
        input_size=_size,
        by_operator=_split,
        dynamic=_shape(
            required=("gflops_mean", "gflops_min", "gflops_max", "inputs"),
            gflops_mean=is_number,
            gflops_min=is_number,
            gflops_max=is_number,
            inputs=_positive_int,
        ),
    ),
    "latency": _shape(
        median_ms=is_number,
        fps=is_number,
        spread=is_number,
        energy_j_per_frame=is_number,
        compile_s=is_number,
        unstable=_flag,
        throttled=_flag,
        tf32=_flag,
        tf32_matmul=_flag,
        inference_form=_shape(executed_gflops=is_number, executed_by_operator=_split),
    ),
    "sweep": _shape(best_batch=_positive_int, images_s=is_number),
    "miou": _shape(mIoU=is_number),
}
_OK_SHAPE = _shape(
    required=("device",),
    device=lambda v: isinstance(v, str),
    provenance=_shape(git_commit=lambda v: isinstance(v, str)),
    settings=_shape(input_size=_size, num_classes=_positive_int),
)


def is_record(obj) -> bool:
    """True for a JSON object with every field a record has (`record_key`'s and ``status``), typed as written,
    and, for an ``ok`` one, a device and values of the shapes the reports read (`_VALUE_SHAPES`)."""
    if not (
        isinstance(obj, dict)
        and all(isinstance(obj.get(key), kind) for key, kind in _REQUIRED.items())
        and isinstance(obj.get("mode"), (str, type(None)))
        and isinstance(obj.get("value"), (dict, type(None)))
    ):
        return False
    if obj["status"] != OK:
        return True  # a failure is kept for its error; the reports read none of its values
    value_ok = _VALUE_SHAPES.get(obj["kind"], lambda value: True)
    return _OK_SHAPE(obj) and (obj.get("value") is None or value_ok(obj["value"]))


# Warnings already given by this process: a file read again (each append reads it) warns once.
_warned: set[str] = set()


def read_records(path: Path) -> list[dict]:
    """Every valid record of ``path``; torn, corrupt or invalid lines are skipped with one warning.

    An existing ``path`` that cannot be read (no permission, a folder) is a `BenchError`.
    """
    records, skipped = [], []
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
            record = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: nesting too deep for the parser
            record = None
        if is_record(record):
            records.append(record)
        else:
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
    def _locked(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def read(self) -> list[dict]:
        """The folder's valid records, all of one device: the folder's, or (a renamed folder) the newest
        record's; records of other devices (a merged or copied file) are left out with one warning."""
        records = read_records(self.path)
        slugs = {r["device_slug"] for r in records}
        if len(slugs) <= 1:
            return records
        mine = self.folder.name if self.folder.name in slugs else records[-1]["device_slug"]
        others = sorted(slugs - {mine})
        n = sum(r["device_slug"] != mine for r in records)
        message = (
            f"{self.path}: {n} record{'s' * (n != 1)} of another device "
            f"({', '.join(others)}) {'is' if n == 1 else 'are'} left out of {mine}'s tables; "
            f"move them to {others[0]}/{RECORDS_FILE}"
        )
        if message not in _warned:
            _warned.add(message)
            warnings.warn(message, stacklevel=2)
        return [r for r in records if r["device_slug"] == mine]

    def done(self, machine: str | None = None) -> set[tuple]:
        """Keys of the measurements already recorded ``ok`` by ``machine`` (by any machine when None)."""
        return self.triage(machine=machine)[0]

    def triage(self, reusable=None, *, machine: str | None = None, records=None) -> tuple[set[tuple], set[tuple]]:
        """The keys recorded ``ok`` by ``machine`` (by any machine when None), from one read of the file, as
        (kept, outdated): whether ``reusable`` holds for the newest such record of the key (every key is kept
        without ``reusable``). ``records``: the folder's records when the caller has read them already.

        Another machine's records are neither: they were not measured here, so they are measured again.
        """
        records = self.read() if records is None else records
        if machine is not None:
            records = [r for r in records if machine_of(r) == machine]
        kept, outdated = set(), set()
        for key, record in latest_ok(records, prefer=()).items():
            (kept if reusable is None or reusable(record) else outdated).add(key)
        return kept, outdated

    def append(self, records: Iterable[dict], *, replace_ok: bool = False) -> list[dict]:
        """Append ``records`` atomically; an ``ok`` record whose key its machine has already recorded ``ok``
        is dropped (another machine's record of the key does not count).

        Args:
            records: the records to write.
            replace_ok: write ``ok`` records even when their key is recorded (``--force``);
                the tables use the newest.

        Returns the records written.
        """
        records = list(records)
        with self._locked():
            done = {(machine_of(r), record_key(r)) for r in self.read() if r["status"] == OK}
            fresh = []
            for record in records:
                key = (machine_of(record), record_key(record))
                if record.get("status") == OK:
                    if key in done and not replace_ok:
                        continue
                    done.add(key)
                fresh.append(record)
            if not fresh:
                return []
            payload = b"".join(json.dumps(r, sort_keys=True, default=str).encode() + b"\n" for r in fresh)
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


def load_all(results: Path) -> list[dict]:
    """Records of every device folder under ``results``."""
    return [r for path in iter_record_files(Path(results)) for r in read_records(path)]
