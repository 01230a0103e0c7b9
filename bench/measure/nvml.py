"""NVML telemetry (nvidia-ml-py): GPU identity, clocks, power limit and energy.

Every function degrades to ``None``/empty where NVML is missing (no driver, a CPU machine) or a
query is not supported by the GPU: telemetry never fails a measurement.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

try:
    import pynvml
except ImportError:  # pragma: no cover - nvidia-ml-py is a dependency
    pynvml = None

_initialised: bool | None = None


def available() -> bool:
    """True when the NVML library loads and initialises (a GPU driver is present)."""
    global _initialised
    if _initialised is None:
        try:
            pynvml.nvmlInit()
            _initialised = True
        except Exception:  # NVMLError_LibraryNotFound / DriverNotLoaded on CPU machines
            _initialised = False
    return _initialised


def _query(fn, *args):
    try:
        return fn(*args)
    except Exception:  # NVMLError_NotSupported and friends
        return None


def handle(cuda_index: int = 0, uuid: str | None = None):
    """The NVML handle of a CUDA device (by UUID when given, which respects CUDA_VISIBLE_DEVICES).

    torch gives the UUID without NVML's prefix: ``GPU-`` for a whole GPU, ``MIG-`` for a MIG slice.
    The CUDA index stands in only where it is NVML's too (no CUDA_VISIBLE_DEVICES); otherwise a UUID
    that NVML does not know gives None (no telemetry) rather than another device's handle.
    """
    if not available():
        return None
    if uuid:
        names = [uuid] if uuid.startswith(("GPU-", "MIG-")) else [f"GPU-{uuid}", f"MIG-{uuid}"]
        for name in names:
            found = _query(pynvml.nvmlDeviceGetHandleByUUID, name)
            if found is not None:
                return found
        if os.environ.get("CUDA_VISIBLE_DEVICES"):
            return None
    return _query(pynvml.nvmlDeviceGetHandleByIndex, cuda_index)


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def gpu_info(h) -> dict:
    """Name, driver, clocks, power limit and temperature of NVML handle ``h`` (empty without one)."""
    if h is None:
        return {}
    limit = _query(pynvml.nvmlDeviceGetEnforcedPowerLimit, h)
    return {
        "gpu_name": _text(_query(pynvml.nvmlDeviceGetName, h)),
        "driver": _text(_query(pynvml.nvmlSystemGetDriverVersion)),
        "sm_clock_mhz": _query(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM),
        "sm_clock_max_mhz": _query(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_SM),
        "power_limit_w": None if limit is None else limit / 1000.0,
        "temperature_c": _query(pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU),
    }


# NVML clock-event ("throttle") reasons that mean the GPU slowed itself down: software power
# cap, hardware slowdown, software and hardware thermal slowdown, power-brake slowdown.
SLOWDOWN_REASONS = 0x4 | 0x8 | 0x20 | 0x40 | 0x80
# A loop whose SM clock after is this much below the clock before has throttled.
CLOCK_DROP = 0.05


def _clock_event_reasons(h):
    # the newer name first; drivers before 535 only have the older one
    for name in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"):
        query = getattr(pynvml, name, None)
        value = None if query is None else _query(query, h)
        if value is not None:
            return value
    return None


# NVML's cumulative violation counters (ns the clocks were held down) read before and after a loop.
VIOLATION_POLICIES = {"power": "NVML_PERF_POLICY_POWER", "thermal": "NVML_PERF_POLICY_THERMAL"}


def _violation_ns(h) -> dict:
    counters = {}
    for name, constant in VIOLATION_POLICIES.items():
        status = _query(pynvml.nvmlDeviceGetViolationStatus, h, getattr(pynvml, constant))
        counters[f"{name}_violation_ns"] = None if status is None else int(status.violationTime)
    return counters


def clocks(h) -> dict:
    """SM clock, temperature, clock-event reasons and violation counters now (before/after a timed loop)."""
    if h is None:
        return {}
    return {
        "sm_clock_mhz": _query(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM),
        "temperature_c": _query(pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU),
        "clock_event_reasons": _clock_event_reasons(h),
        **_violation_ns(h),
    }


# A violation counter flags a loop when the clocks were held down for more than this share of it: a GPU near
# its power limit is capped for a few milliseconds now and then without slowing the loop measurably.
VIOLATION_SHARE = 0.01


def throttled(before: dict, after: dict, loop_s: float | None = None) -> bool:
    """Whether the GPU slowed down during a loop of ``loop_s`` seconds.

    Any of: a power or thermal violation counter that grew during it by more than `VIOLATION_SHARE`
    of the loop (by anything when ``loop_s`` is None; the counters see a cap that came and went
    while the loop ran, which a reading after it, on an idle GPU, does not), a slowdown reason after
    it, an SM clock that dropped.
    """
    allowed_ns = 0.0 if loop_s is None else VIOLATION_SHARE * loop_s * 1e9
    for key in (f"{name}_violation_ns" for name in VIOLATION_POLICIES):
        start, end = before.get(key), after.get(key)
        if start is not None and end is not None and end - start > allowed_ns:
            return True
    reasons = after.get("clock_event_reasons")
    if reasons is not None and reasons & SLOWDOWN_REASONS:
        return True
    start, end = before.get("sm_clock_mhz"), after.get("sm_clock_mhz")
    return bool(start and end and end < (1.0 - CLOCK_DROP) * start)


@dataclass
class Energy:
    joules: float
    seconds: float

    @property
    def watts(self) -> float:
        return self.joules / self.seconds if self.seconds > 0 else float("nan")


class EnergyMeter:
    """Energy drawn by one GPU between ``start()`` and ``stop()``.

    Uses the GPU's cumulative energy counter (Volta and newer); where that is not supported,
    samples the power every 10 ms in a thread and integrates; where neither can be read, `stop`
    returns None. ``elapsed_s`` is the time from ``start()`` to ``stop()`` in every case.
    """

    def __init__(self, h) -> None:
        self._h = h
        self._start_mj = None
        self._t0 = 0.0
        self._samples: list[tuple[float, float]] = []
        self._thread: threading.Thread | None = None
        self._running = False
        self.elapsed_s: float | None = None

    def start(self) -> EnergyMeter:
        self._t0 = time.perf_counter()
        if self._h is None:
            return self
        self._start_mj = _query(pynvml.nvmlDeviceGetTotalEnergyConsumption, self._h)
        # Without an energy counter, sample the power; where that cannot be read either (a MIG slice), no energy.
        if self._start_mj is None and _query(pynvml.nvmlDeviceGetPowerUsage, self._h) is not None:
            self._running = True
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while self._running:
            mw = _query(pynvml.nvmlDeviceGetPowerUsage, self._h)
            if mw is not None:
                self._samples.append((time.perf_counter(), mw / 1000.0))
            time.sleep(0.01)

    def stop(self) -> Energy | None:
        seconds = self.elapsed_s = time.perf_counter() - self._t0
        if self._h is None:
            return None
        if self._start_mj is not None:
            end = _query(pynvml.nvmlDeviceGetTotalEnergyConsumption, self._h)
            return None if end is None else Energy((end - self._start_mj) / 1000.0, seconds)
        self._running = False
        if self._thread is not None:
            self._thread.join()
        if not self._samples:
            return None
        mean_w = sum(w for _, w in self._samples) / len(self._samples)
        return Energy(mean_w * seconds, seconds)
