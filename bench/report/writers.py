"""The table files of one device folder, one writer per format: `bench table --format` chooses among `WRITERS`.

A writer turns the comparison frame (`bench.report.table`) into its files in the device folder and
returns their paths; a new output format is one such function added to `WRITERS`. For another
protocol version than the current one, the file names carry it (table-v1.md, `bench.protocol.file_suffix`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from bench import protocol as proto
from bench.io import write_text_atomic

if TYPE_CHECKING:  # the command line reads `WRITERS` without importing pandas and the renderers
    import pandas as pd

    from bench.report.text import MeasuredOn

Writer = Callable[["pd.DataFrame", Path, "MeasuredOn"], list[Path]]


def _suffix(frame: pd.DataFrame) -> str:
    return proto.file_suffix(frame.attrs.get("protocol", proto.PROTOCOL_VERSION))


def write_markdown(frame: pd.DataFrame, folder: Path, where: MeasuredOn) -> list[Path]:
    """table.md, and on a GPU (where speed was measured) speed.md."""
    from bench.report.markdown import to_markdown
    from bench.report.speed_table import to_speed_markdown

    paths = [folder / f"table{_suffix(frame)}.md"]
    write_text_atomic(paths[0], to_markdown(frame, where))
    speed = to_speed_markdown(frame, where) if where.device != "cpu" else ""
    if speed:
        paths.append(folder / f"speed{_suffix(frame)}.md")
        write_text_atomic(paths[1], speed)
    return paths


def write_csv(frame: pd.DataFrame, folder: Path, where: MeasuredOn) -> list[Path]:
    """table.csv: every column of the frame, six significant figures."""
    path = folder / f"table{_suffix(frame)}.csv"
    write_text_atomic(path, frame.to_csv(index=False, float_format="%.6g"))
    return [path]


WRITERS: dict[str, Writer] = {"md": write_markdown, "csv": write_csv}


def write_tables(
    frame: pd.DataFrame, folder: Path, where: MeasuredOn, formats: Iterable[str] = tuple(WRITERS)
) -> list[Path]:
    """The files of ``formats`` (keys of `WRITERS`) in ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    return [path for name in formats for path in WRITERS[name](frame, folder, where)]
