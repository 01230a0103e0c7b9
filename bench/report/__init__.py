"""Tables (pandas + tabulate) and plots (matplotlib), always derived from the records.

The frame (`table`) holds every measurement's columns; the renderers (`markdown`, `speed_table`)
and the writers (`writers`) turn it into files, and `plot` into figures.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from bench import protocol as proto
from bench.io import write_text_atomic
from bench.report.writers import WRITERS, write_tables
from bench.store import Record, RecordStore, latest_ok, read_peaks

if TYPE_CHECKING:
    from bench.report.text import MeasuredOn


def measured_on(records: list[Record], peaks: dict[str, float] | None) -> MeasuredOn:
    """Where the tabulated ``records`` (in file order) were measured: the newest's device and provenance."""
    from bench.report.text import MeasuredOn

    newest = records[-1]
    commits = {(r.provenance or {}).get("git_commit") for r in records} - {None}
    return MeasuredOn(
        device=newest.device or "cpu",
        provenance=newest.provenance,
        peaks=peaks,
        commits=len(commits),
        machines=tuple(sorted({r.machine_label for r in records})),
    )


def write_reports(
    results: Path,
    device_slug: str,
    protocol: str = proto.PROTOCOL_VERSION,
    plots: bool = True,
    speeds: tuple[str, ...] | None = None,
    records: list[Record] | None = None,
    formats: Iterable[str] = tuple(WRITERS),
) -> list[Path]:
    """Regenerate the tables (table.md, speed.md, table.csv) and the plots of one device folder; returns the paths.

    A folder without a successful record of ``protocol`` is left as it is (no paths).

    Args:
        results: the results root.
        device_slug: the device folder.
        protocol: the protocol version tabulated.
        plots: also the plots.
        speeds: the speed axes plotted (`bench.report.plot.SPEED_AXES`); default: every measured mode.
        records: the folder's records when the caller has read them already (default: read here).
        formats: the table formats written (keys of `bench.report.writers.WRITERS`).
    """
    from bench.report.plot import write_plots  # pandas and matplotlib: imported by the commands that draw
    from bench.report.table import build_frame, published_frame

    store = RecordStore(Path(results), device_slug)
    if records is None:
        records = store.read()
    shown = {id(r) for r in latest_ok(records, protocol).values()}
    tabulated = [r for r in records if id(r) in shown]  # in file order
    if not tabulated:  # nothing to tabulate: the tables already there stay as they are
        return []
    stored = read_peaks(store.folder)
    where = measured_on(tabulated, stored.peaks if stored else None)
    frame = build_frame(records, protocol, where.peaks)
    paths = write_tables(frame, store.folder, where, formats)
    if plots:
        paths += write_plots(frame, store.folder, device=where.device, speeds=speeds, provenance=where.provenance)
    reported = Path(results) / "reported.csv"
    write_text_atomic(reported, published_frame().to_csv(index=False))
    return paths + [reported]
