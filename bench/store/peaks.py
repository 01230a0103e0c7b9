"""The device's roofline ceilings, stored once per machine beside its records (``<device-slug>/peaks.json``).

`bench run` measures them on a GPU (`bench.measure.roofline.measure_peaks`, in a child process) and
the tables compare each speed mode's achieved TFLOP/s with them.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import first_line
from bench.io import write_text_atomic
from bench.measurements.base import is_number
from bench.store.record import machine_in

PEAKS_FILE = "peaks.json"


@dataclass(frozen=True)
class DevicePeaks:
    """A device's stored ceilings.

    Args:
        peaks: ceiling name -> matmul TFLOP/s per precision, or copy TB/s.
        provenance: the device's provenance when they were measured.
    """

    peaks: dict[str, float]
    provenance: dict[str, Any]

    @property
    def machine(self) -> str | None:
        """The `bench.provenance.machine_id` they were measured on."""
        return machine_in(self.provenance)


def read_peaks(folder: Path) -> DevicePeaks | None:
    """The stored ceilings of a device folder, or None.

    A file that cannot be read, or whose ``peaks`` is not ceiling name -> positive number, counts as
    absent, with a warning: the tables go without % of peak, and a GPU `bench run` measures them again.
    """
    path = Path(folder) / PEAKS_FILE
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:
        problem = getattr(exc, "strerror", None) or first_line(exc)
    else:
        peaks = stored.get("peaks") if isinstance(stored, dict) else None
        if isinstance(peaks, dict) and all(
            isinstance(k, str) and is_number(v) and 0 < v < math.inf for k, v in peaks.items()
        ):
            provenance = stored.get("provenance")
            return DevicePeaks(peaks, provenance if isinstance(provenance, dict) else {})
        problem = 'not {"peaks": {ceiling name: positive number}}'
    warnings.warn(
        f"{path}: device ceilings unreadable ({problem}); ignored: delete it, and the next GPU `bench run` "
        "measures them again",
        stacklevel=2,
    )
    return None


def write_peaks(folder: Path, peaks: dict[str, float], provenance: dict[str, Any]) -> Path:
    """Store the ceilings atomically beside the device's records."""
    path = Path(folder) / PEAKS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    stored = {"peaks": peaks, "provenance": provenance, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_text_atomic(path, json.dumps(stored, indent=1))
    return path
