"""A record: one measurement of one job, or its failure, with where and how it was taken; JSON in and out.

`Record.from_json` reads a line of any segbench that wrote this `SCHEMA` and rejects one whose fields
are not of their types. The value of an ``ok`` record is read by its kind's value type
(`bench.measurements`), so the tables and summaries never meet a value they cannot show; a failure
is kept for its error, whatever else it holds.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from bench.measurements import MEASUREMENTS
from bench.measurements.base import Count, Size, Value
from bench.protocol import counts_as

SCHEMA = 1
OK = "ok"
Key = tuple[str, str, str, str | None, str, str]  # arch, dataset, kind, mode, protocol counted as, device slug
FAILED_STATUSES = ("error", "oom", "timeout", "crashed")
# The fields that say what a record measured: a line without them is not a record.
KEY_FIELDS = ("arch", "dataset", "kind", "protocol", "device_slug", "status")
# The other fields, and their JSON types.
OPTIONAL_FIELDS: dict[str, Any] = {
    "device": str,
    "settings": dict,
    "error": str,
    "traceback": str,
    "duration_s": (int, float),
    "provenance": dict,
    "id": str,
    "schema": int,
}


class RecordError(ValueError):
    """A JSON value that is not a record segbench can read."""


def machine_in(provenance: object) -> str | None:
    """The `bench.provenance.machine_id` a provenance names (None: one that names none)."""
    machine = provenance.get("machine_id") if isinstance(provenance, dict) else None
    return machine if isinstance(machine, str) else None


@dataclass(frozen=True, kw_only=True)
class Record:
    """One measurement, or its failure, of one job.

    Args:
        arch, dataset, kind, mode: the job (`bench.jobs.Job`).
        protocol: the protocol version it was taken under.
        device_slug: the device folder it belongs to.
        status: ``ok``, or how it failed (`FAILED_STATUSES`).
        device: the device type it was measured on (``cuda``, ``cpu``).
        settings: input size, classes and the mode's settings (`bench.protocol.job_settings`).
        value: the measurement's value (its kind's value type for an ``ok`` record).
        error, traceback: a failure's first line and the end of its traceback.
        duration_s: the job's wall time, its child process included.
        provenance: machine, software and commit (`bench.provenance.provenance`).
        id: unique per record.
        schema: the version of the record format.
    """

    arch: str
    dataset: str
    kind: str
    mode: str | None
    protocol: str
    device_slug: str
    status: str
    device: str | None = None
    settings: dict[str, Any] | None = None
    value: Value | None = None
    error: str | None = None
    traceback: str | None = None
    duration_s: float | None = None
    provenance: dict[str, Any] | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    schema: int = SCHEMA

    @property
    def ok(self) -> bool:
        return self.status == OK

    def key(self) -> Key:
        """What makes two records measure the same thing (a rerun skips an ``ok`` one).

        Its version is the one the record counts as (`bench.protocol.counts_as`): a record of an older
        protocol whose measurement no later version changed is the same measurement as a current one.
        """
        version = counts_as(self.protocol, self.mode)
        return (self.arch, self.dataset, self.kind, self.mode, version, self.device_slug)

    @property
    def machine(self) -> str | None:
        """The `bench.provenance.machine_id` it was measured on (None: a record that names none)."""
        return machine_in(self.provenance)

    @property
    def machine_label(self) -> str:
        """The machine as a reader knows it: its host name, else its machine id, else "unnamed"."""
        host = (self.provenance or {}).get("host")
        return host if isinstance(host, str) and host else self.machine or "unnamed"

    def to_json(self) -> dict[str, Any]:
        """The JSON object of its line (`from_json` reads it back)."""
        fields = {name: getattr(self, name) for name in (*KEY_FIELDS, "mode", *OPTIONAL_FIELDS)}
        return {**fields, "value": None if self.value is None else self.value.to_json()}

    @classmethod
    def from_json(cls, obj: object) -> Record:
        """The record of a JSON object; `RecordError` naming the field that is missing or of another type."""
        if not isinstance(obj, dict):
            raise RecordError(f"{obj!r:.60} is not a JSON object")
        for name in KEY_FIELDS:
            if not isinstance(obj.get(name), str):
                raise RecordError(f"{name}: missing, or not a string")
        if not isinstance(obj.get("mode"), (str, type(None))):
            raise RecordError("mode: not a string or null")
        ok = obj["status"] == OK
        if ok:
            _check_measured(obj)
        fields = {name: _optional(obj, name, kind, strict=ok) for name, kind in OPTIONAL_FIELDS.items()}
        fields = {name: value for name, value in fields.items() if value is not None}
        return cls(
            **{name: obj[name] for name in KEY_FIELDS},
            mode=obj.get("mode"),
            value=_value(obj["kind"], obj.get("value"), ok),
            **fields,
        )


def _optional(obj: dict[str, Any], name: str, kind: Any, *, strict: bool) -> Any:
    """``obj[name]`` where it is of ``kind``; otherwise None, or with ``strict`` a `RecordError`."""
    value = obj.get(name)
    if value is None or (isinstance(value, kind) and not isinstance(value, bool)):
        return value
    if strict:
        raise RecordError(f"{name}: {value!r:.60} is of another type")
    return None


def _value(kind: str, value: object, ok: bool) -> Value | None:
    """An ``ok`` record's value read by its kind's value type; a failure's as a plain `Value`."""
    if value is None:
        return None
    measurement = MEASUREMENTS.get(kind) if ok else None
    try:
        return (measurement.value_type if measurement else Value).from_json(value)
    except ValueError as exc:
        raise RecordError(f"value: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class _Settings(Value):
    """What the tables read of a measurement's settings."""

    input_size: Size | None = None
    num_classes: Count | None = None


@dataclass(frozen=True, kw_only=True)
class _Provenance(Value):
    """What the tables read of a measurement's provenance."""

    git_commit: str | None = None


def _check_measured(obj: dict[str, Any]) -> None:
    """What an ``ok`` record must have besides its value: the device, and settings and provenance of their types."""
    if not isinstance(obj.get("device"), str):
        raise RecordError("device: missing from a measurement")
    for name, shape in (("settings", _Settings), ("provenance", _Provenance)):
        if obj.get(name) is not None:
            try:
                shape.from_json(obj[name])
            except ValueError as exc:
                raise RecordError(f"{name}: {exc}") from None
