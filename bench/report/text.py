"""How the tables write numbers, marks and the measuring device: shared by table.md and speed.md."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bench import protocol as proto

MISSING = "—"
SIGNIFICANT = 3
UNSTABLE, THROTTLED = "†", "‡"
THROTTLED_NOTE = f"{THROTTLED} = the GPU clock throttled during the measurement."
FLOPS_NOTE = (
    "GFLOPs: fvcore count of the model's forward on one image, one fused multiply-add = one FLOP "
    "(the published figures' convention); norms, resizes, pooling and attention matmuls counted, "
    "element-wise activations not."
)


@dataclass(frozen=True)
class MeasuredOn:
    """Where the records of a table were measured.

    Args:
        device: the device type (``cuda``, ``cpu``).
        provenance: the newest record's (`bench.provenance.provenance`).
        peaks: the device's roofline ceilings (`bench.store.peaks`).
        commits: how many segbench commits the records name.
        machines: the machines they were measured on (`bench.store.Record.machine_label`).
    """

    device: str
    provenance: dict[str, Any] | None = None
    peaks: dict[str, float] | None = None
    commits: int = 1
    machines: tuple[str, ...] = ()


def known(value: Any) -> Any:
    """``value``, or None where it is missing (None, or NaN in a pandas frame)."""
    if value is None:
        return None
    try:
        return None if math.isnan(value) else value
    except TypeError:
        return value


def significant(value: float, digits: int = SIGNIFICANT) -> str:
    """``value`` to ``digits`` significant figures, never in exponent form: 1234.5 -> "1230", 0.01234 -> "0.0123"."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    magnitude = math.floor(math.log10(abs(value)))
    rounded = round(value, digits - 1 - magnitude)
    if rounded and math.floor(math.log10(abs(rounded))) > magnitude:  # 999.6 -> 1000: one digit more to the left
        magnitude += 1
    return f"{rounded:.{max(digits - 1 - magnitude, 0)}f}"


def latency_text(ms: float) -> str:
    """A latency with its unit, three significant figures: "512 ms", "1.24 s"."""
    return f"{significant(ms / 1000)} s" if ms >= 1000 else f"{significant(ms)} ms"


def number_text(value: Any, digits: int) -> str:
    """``value`` with ``digits`` decimals, or the missing mark."""
    value = known(value)
    return MISSING if value is None else f"{value:.{digits}f}"


def pair_text(measured: Any, published: Any, digits: int, pct: Any = None, points: bool = False) -> str:
    """``measured / published (Δ)``: Δ relative (``pct``, in %), or with ``points`` in the value's own units."""
    measured, published, pct = known(measured), known(published), known(pct)
    if measured is None and published is None:
        return MISSING
    text = f"{number_text(measured, digits)} / {number_text(published, 1)}"
    if pct is not None:
        text += f" ({pct:+.1f}%)"
    elif points and measured is not None and published is not None:
        text += f" ({measured - published:+.{digits}f})"
    return text


class Footnotes:
    """Numbered footnotes, each distinct text once; rows cite them by number."""

    def __init__(self) -> None:
        self.numbers: dict[str, int] = {}

    def cite(self, text: str) -> int:
        return self.numbers.setdefault(text, len(self.numbers) + 1)

    def lines(self) -> list[str]:
        return [f"{number}. {text}" for text, number in self.numbers.items()]


def speed_marks(row: Any, ds: str, mode: str) -> str:
    """† for a measurement whose repeats spread too far, ‡ for one during which the GPU throttled."""
    marks = ((UNSTABLE, "unstable"), (THROTTLED, "throttled"))
    return "".join(mark for mark, key in marks if known(row.get(f"{ds}_{key}_{mode}")))


def layout_tag(row: Any, ds: str, mode: str) -> str:
    """ " NHWC" or " NCHW" after a latency whose mode chose its layout by timing both ("auto")."""
    chosen = known(row.get(f"{ds}_channels_last_{mode}"))
    if chosen is None:
        return ""
    return " NHWC" if chosen else " NCHW"


def _layout(protocol: str) -> str:
    """What an "auto" layout mode used under ``protocol``."""
    if protocol == "1":
        return "channels_last"
    return "the faster of channels_last and NCHW (timed both; speed.md says which)"


def mode_description(mode: str, protocol: str = proto.PROTOCOL_VERSION) -> str:
    """``graph = fp16 autocast + ... + CUDA-graph replay``: what a speed mode runs, from its settings."""
    settings = proto.MODES[mode]
    parts = [settings["precision"] if settings["precision"] == "fp32" else f"{settings['precision']} autocast"]
    if settings["channels_last"] == "auto":
        parts.append(_layout(protocol))
    elif settings["channels_last"]:
        parts.append("channels_last")
    if settings["fused"]:
        parts.append("the model's inference form (BatchNorm folded into its convolution, its exact rewrites)")
    if settings["compile"]:
        parts.append(f"torch.compile ({proto.COMPILE_MODE})")
    if settings["cuda_graph"]:
        parts.append("CUDA-graph replay")
    return f"{mode} = {' + '.join(parts)}"


def device_line(where: MeasuredOn) -> str:
    """Where the newest record was measured, and how many commits and machines all the records name."""
    device, prov, commits, machines = where.device, where.provenance or {}, where.commits, where.machines
    commit = prov.get("git_commit")
    line = f"{device_name(device, prov)}"
    if device == "cpu":
        line += " — not a GPU number"
    else:
        line += f", driver {prov.get('driver', '?')}, CUDA {prov.get('cuda', '?')}"
    line += f"; torch {prov.get('torch', '?')}" + (f"; segbench {commit[:10]}" if commit else "")
    if commit and commits > 1:
        line += f" (the newest record's; the records span {commits} commits, each record names its own)"
    if len(machines) > 1:
        line += (
            f"; measured on {len(machines)} machines of this kind ({', '.join(machines)}; "
            "table.csv's `machines` column names each row's)"
        )
    return line


def device_name(device: str, prov: dict[str, Any] | None) -> str:
    """ "NVIDIA H200" or "CPU (AMD EPYC, 2 threads)": the measuring device as titles name it."""
    prov = prov or {}
    if device == "cpu":
        return f"CPU ({prov.get('cpu', 'unknown')}, {prov.get('torch_threads', '?')} threads)"
    return prov.get("gpu_name") or "GPU"
