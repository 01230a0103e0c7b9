"""`bench table`: regenerate the comparison tables from the stored records."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import protocol as proto
from bench.commands.common import REFERENCES, add_common_options, csv_list, load_plugins
from bench.errors import BenchError
from bench.io import ensure_writable_folder
from bench.report.writers import WRITERS
from bench.store import Record, RecordStore, iter_record_files


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "table", help="regenerate table.md / table.csv from the records (table-vN.* for another protocol version)"
    )
    add_common_options(p, writes="table.md|csv", device="folder", protocol="tabulate")
    p.add_argument(
        "--format",
        default=",".join(WRITERS),
        help=f"table formats, comma-separated: {', '.join(WRITERS)} (default: all); md is also printed",
    )
    p.set_defaults(handler=run, plots=False)


def device_folders(results: Path, device: str | None) -> list[str]:
    """Device folders holding records, or a `BenchError` naming the folder and the fix."""
    slugs = [path.parent.name for path in iter_record_files(results)]
    if device:
        if device not in slugs:
            raise BenchError(f"no records for device {device!r} under {results}; found: {', '.join(slugs) or 'none'}")
        return [device]
    if not slugs:
        raise BenchError(
            f"no records under {results}; run `bench run` first, or pass --results DIR (the reference results "
            f"shipped with segbench: --results {REFERENCES})"
        )
    return slugs


def _formats(text: str) -> list[str]:
    formats = csv_list([text], "--format")
    unknown = sorted(set(formats) - set(WRITERS))
    if unknown:
        raise BenchError(f"--format: unknown {', '.join(unknown)}; choose from {', '.join(WRITERS)}")
    return formats


def _speeds(text: str | None) -> tuple[str, ...] | None:
    """The plots' speed axes of ``--speed`` (None: every measured one)."""
    if not text:
        return None
    from bench.report.plot import SPEED_AXES

    speeds = tuple(csv_list([text]))
    for speed in speeds:
        if speed not in SPEED_AXES:
            raise BenchError(f"--speed: unknown axis {speed!r}; choose from {', '.join(SPEED_AXES)}")
    return speeds


def run(args: argparse.Namespace) -> int:
    from bench.report import write_reports

    load_plugins(args)
    formats, speeds = _formats(args.format), _speeds(getattr(args, "speed", None))
    written, untouched = 0, []
    for slug in device_folders(args.results, args.device):
        ensure_writable_folder(args.results / slug)
        store = RecordStore(args.results, slug)
        records = store.read()
        paths = write_reports(args.results, slug, args.protocol, args.plots, speeds, records, formats)
        if paths:
            written += 1
            _show(args, slug, paths, speeds)
        else:
            untouched.append(_why_untouched(store.path, records, args.protocol))
    if not written:
        raise BenchError(f"nothing to tabulate: {'; '.join(untouched)}")
    for why in untouched:
        print(f"note: {why}; its tables are left as they are", file=sys.stderr)
    return 0


def _show(args: argparse.Namespace, slug: str, paths: list[Path], speeds: tuple[str, ...] | None) -> None:
    """What was written for one device folder; the plots' axes that had nothing to plot; table.md itself."""
    for path in paths:
        print(f"wrote {path}")
    suffix = proto.file_suffix(args.protocol)
    unplotted = [s for s in speeds or () if not any(p.stem.endswith(f"_{s}{suffix}") for p in paths)]
    if args.plots and unplotted:
        print(f"note: {slug} has no {', '.join(unplotted)} measurements: no plot for that axis", file=sys.stderr)
    table_md = next((p for p in paths if p.name == f"table{suffix}.md"), None)
    if not args.plots and table_md is not None:
        print(f"\n# {slug}: {table_md}\n")
        print(table_md.read_text())


def _why_untouched(path: Path, records: list[Record], protocol: str) -> str:
    """Why a records file gave no table: nothing readable, only failures, or none of ``protocol``."""
    if not records:
        return f"no readable record in {path}; run `bench run` first"
    if not any(r.ok for r in records):
        last = records[-1]
        error = " ".join(str(last.error or last.status).split())[:160]  # one line
        error = f"{last.arch} {last.dataset} {last.kind}: {error}"
        return (
            f"no successful record in {path} ({len(records)} failed, the last {error}); `bench run` measures them again"
        )
    found = sorted({r.protocol for r in records if r.ok})
    return (
        f"no successful record of protocol {protocol!r} in {path.parent} (protocols there: {', '.join(found)}); "
        "pass --protocol with a version the records have"
    )
