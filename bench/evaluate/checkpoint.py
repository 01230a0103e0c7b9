"""An evaluation's progress on disk, so that one stopped part-way (Ctrl-C, a kill, a crash, a bad file)
continues where it stopped instead of starting over.

The checkpoint holds the confusion matrix so far and the images it counts. It sits beside the
evaluation's outputs, named after what a rerun must share to continue it (model, weights, data,
test protocol, device kind): ``<arch>_<dataset>.<digest>.partial.json``. It is replaced in one
rename every `Resume.every_s` seconds and when the evaluation stops, and removed when it finishes.
Only a single process keeps one: under torchrun every rank starts from the beginning.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.errors import BenchError
from bench.io import write_text_atomic

SCHEMA = 1


@dataclass(frozen=True)
class Resume:
    """Where an evaluation keeps its progress, and what else a rerun must share to continue it.

    Args:
        folder: the folder of the evaluation's outputs.
        identity: what the caller alone knows of the run and must match (the weights' digest).
        every_s: seconds between saves while it runs (0: after every image); it is also saved when it stops.
    """

    folder: Path
    identity: dict = field(default_factory=dict)
    every_s: float = 10.0


def _plain(value) -> object:
    """``value`` as JSON reads it back (tuples as lists), for comparing with a saved identity."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


class Checkpoint:
    """The progress file of one evaluation.

    Args:
        resume: where it goes and the caller's part of the identity.
        identity: the evaluation's part (arch, dataset, data, protocol, device kind).
    """

    def __init__(self, resume: Resume, identity: dict) -> None:
        self.identity = _plain({**identity, **resume.identity})
        digest = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:12]
        self.path = Path(resume.folder) / f"{identity['arch']}_{identity['dataset']}.{digest}.partial.json"
        self.every_s = resume.every_s
        self.problem: str | None = None  # why the last save failed (None: saved, or nothing to save yet)
        self._saved_at = time.monotonic()

    def load(self, num_classes: int, indices: list[int]) -> tuple[list[int], np.ndarray] | None:
        """(images done, their ``(K, K)`` counts) of an earlier run of this evaluation, or None (none, another
        evaluation's, or a file that is not a checkpoint: then it starts over, and replaces the file)."""
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(saved, dict) or saved.get("schema") != SCHEMA or saved.get("identity") != self.identity:
            return None
        done, counts = saved.get("done"), saved.get("confusion")
        allowed = set(indices)
        if not (isinstance(done, list) and all(isinstance(i, int) and i in allowed for i in done)):
            return None
        try:
            matrix = np.asarray(counts, dtype=np.int64)
        except (TypeError, ValueError, OverflowError):
            return None
        if matrix.shape != (num_classes, num_classes) or (matrix < 0).any() or len(set(done)) != len(done):
            return None
        return done, matrix

    def due(self) -> bool:
        """Whether `every_s` have passed since the last save."""
        return time.monotonic() - self._saved_at >= self.every_s

    def save(self, done: list[int], matrix: np.ndarray) -> bool:
        """Replace the file with ``done`` and ``matrix``; False (and `problem` says why) when it cannot be
        written: the evaluation goes on, and a stop then says its progress is lost."""
        self._saved_at = time.monotonic()
        state = {
            "schema": SCHEMA,
            "identity": self.identity,
            "saved": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "done": list(done),
            "confusion": np.asarray(matrix, dtype=np.int64).tolist(),
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, json.dumps(state, separators=(",", ":")) + "\n")
        except (BenchError, OSError) as exc:
            self.problem = str(exc)
            return False
        self.problem = None
        return True

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)
