"""Tables (pandas + tabulate) and plots (matplotlib), always derived from the records."""

from __future__ import annotations

from pathlib import Path

from bench import protocol as proto
from bench.measure.roofline import read_peaks
from bench.records import RecordStore, latest_ok, machine_label, write_text_atomic
from bench.report.markdown import write_table
from bench.report.plot import write_plots
from bench.report.table import build_frame, published_frame


def write_reports(
    results: Path,
    device_slug: str,
    protocol: str = proto.PROTOCOL_VERSION,
    plots: bool = True,
    speeds: tuple[str, ...] | None = None,
    records: list[dict] | None = None,
) -> list[Path]:
    """Regenerate table.md, table.csv (speed.md) and the plots of one device folder; returns the paths.

    A folder without a successful record of ``protocol`` is left as it is (no paths).

    Args:
        speeds: the speed axes plotted (`bench.report.plot.SPEED_AXES`); default: every measured mode.
        records: the folder's records when the caller has read them already (default: read here).
    """
    store = RecordStore(Path(results), device_slug)
    if records is None:
        records = store.read()
    shown = {id(r) for r in latest_ok(records, protocol).values()}
    latest = [r for r in records if id(r) in shown]  # in file order
    if not latest:  # nothing to tabulate: the tables already there stay as they are
        return []
    stored = read_peaks(store.folder)
    peaks = stored["peaks"] if stored else None
    frame = build_frame(records, protocol, peaks)
    provenance = latest[-1].get("provenance")
    device = latest[-1]["device"]
    commits = len({(r.get("provenance") or {}).get("git_commit") for r in latest} - {None})
    machines = tuple(sorted({machine_label(r) for r in latest}))
    paths = write_table(
        frame, store.folder, device=device, provenance=provenance, peaks=peaks, commits=commits, machines=machines
    )
    if plots:
        paths += write_plots(frame, store.folder, device=device, speeds=speeds, provenance=provenance)
    reported = Path(results) / "reported.csv"
    write_text_atomic(reported, published_frame().to_csv(index=False))
    return paths + [reported]
