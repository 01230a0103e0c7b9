"""`bench table`: regenerate the comparison tables from the stored records."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import protocol as proto
from bench.commands.common import REFERENCES, add_plugin_argument, add_results_argument, csv_list, load_plugins
from bench.errors import BenchError
from bench.records import OK, RecordStore, ensure_writable_folder, iter_record_files


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "table", help="regenerate table.md / table.csv from the records (table-vN.* for another protocol version)"
    )
    add_results_argument(p, "table.md|csv")
    p.add_argument("--device", default=None, help="only this device folder (default: every folder with records)")
    p.add_argument("--format", default="md,csv", help="md, csv or both (default: md,csv); md is also printed")
    p.add_argument("--protocol", default=proto.PROTOCOL_VERSION, help="protocol version to tabulate")
    add_plugin_argument(p)
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


def run(args: argparse.Namespace) -> int:
    from bench.report import write_reports

    load_plugins(args)
    formats = csv_list([args.format])
    unknown = set(formats) - {"md", "csv"}
    if unknown:
        raise BenchError(f"--format: unknown {', '.join(sorted(unknown))}; use md, csv or md,csv")
    speeds = None
    if getattr(args, "speed", None):
        from bench.report.plot import SPEED_AXES

        speeds = tuple(csv_list([args.speed]))
        for speed in speeds:
            if speed not in SPEED_AXES:
                raise BenchError(f"--speed: unknown axis {speed!r}; choose from {', '.join(SPEED_AXES)}")
    written, untouched = 0, []
    for slug in device_folders(args.results, args.device):
        ensure_writable_folder(args.results / slug)
        store = RecordStore(args.results, slug)
        records = store.read()
        paths = write_reports(args.results, slug, args.protocol, plots=args.plots, speeds=speeds, records=records)
        if not paths:
            untouched.append(_why_untouched(store.path, records, args.protocol))
            continue
        written += 1
        for path in paths:
            if path.suffix.lstrip(".") in formats or path.suffix in (".png", ".svg"):
                print(f"wrote {path}")
        suffix = proto.file_suffix(args.protocol)
        unplotted = [s for s in speeds or () if not any(p.stem.endswith(f"_{s}{suffix}") for p in paths)]
        if args.plots and unplotted:
            print(f"note: {slug} has no {', '.join(unplotted)} measurements: no plot for that axis", file=sys.stderr)
        table_md = next((p for p in paths if p.name == f"table{suffix}.md"), None)
        if "md" in formats and not args.plots and table_md is not None:
            print(f"\n# {slug}: {table_md}\n")
            print(table_md.read_text())
    if not written:
        raise BenchError(f"nothing to tabulate: {'; '.join(untouched)}")
    for why in untouched:
        print(f"note: {why}; its tables are left as they are", file=sys.stderr)
    return 0


def _why_untouched(path: Path, records: list[dict], protocol: str) -> str:
    """Why a records file gave no table: nothing readable, only failures, or none of ``protocol``."""
    if not records:
        return f"no readable record in {path}; run `bench run` first"
    if not any(r["status"] == OK for r in records):
        last = records[-1]
        error = " ".join(str(last.get("error") or last["status"]).split())[:160]  # one line
        error = f"{last['arch']} {last['dataset']} {last['kind']}: {error}"
        return (
            f"no successful record in {path} ({len(records)} failed, the last {error}); `bench run` measures them again"
        )
    found = sorted({r["protocol"] for r in records if r["status"] == OK})
    return (
        f"no successful record of protocol {protocol!r} in {path.parent} (protocols there: {', '.join(found)}); "
        "pass --protocol with a version the records have"
    )
