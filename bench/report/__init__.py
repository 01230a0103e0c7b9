"""Tables (pandas + tabulate) and plots (matplotlib), always derived from the records."""

from __future__ import annotations

from pathlib import Path

from bench import protocol as proto
from bench.records import RecordStore
from bench.report.plot import write_plots
from bench.report.table import build_frame, published_frame, write_table


def write_reports(
    results: Path, device_slug: str, protocol: str = proto.PROTOCOL_VERSION, plots: bool = True
) -> list[Path]:
    """Regenerate table.md, table.csv and the plots of one device folder; returns the paths."""
    store = RecordStore(Path(results), device_slug)
    records = store.read()
    if not records:
        return []
    frame = build_frame(records, protocol)
    latest = [r for r in records if r.get("status") == "ok" and r.get("protocol") == protocol]
    provenance = latest[-1].get("provenance") if latest else None
    device = latest[-1]["device"] if latest else "cpu"
    paths = write_table(frame, store.folder, device=device, provenance=provenance)
    if plots:
        paths += write_plots(frame, store.folder, device=device)
    reported = Path(results) / "reported.csv"
    published_frame().to_csv(reported, index=False)
    return paths + [reported]
