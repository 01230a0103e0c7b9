"""A 20-job suite of the toy models (params and FLOPs, both datasets) through `bench run`, run serially once
per test session: what a parallel or an array run of the same suite must reproduce."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

import tests.toy_models  # noqa: F401 - registers the toy-* models in this process
from bench import jobs
from bench.cli import main
from bench.provenance import device_slug
from bench.report import write_reports
from bench.store import RecordStore

TOYS = ("toy-w4", "toy-w8", "toy-w12", "toy-w16", "toy-w20")
PLUGIN = "tests.toy_models"
# the suite as `bench run` options
SUITE = ("--plugin", PLUGIN, "--arch", ",".join(TOYS), "--measure", "params,flops")
SLUG = device_slug("cpu")
_serial: dict[str, Path] = {}


def plan() -> list[jobs.Job]:
    return jobs.plan(list(TOYS), ["ade20k", "cityscapes"], [], kinds=("params", "flops"))


def bench_run(results: Path, *extra: str) -> int:
    """`bench run` of the suite into ``results``, in this process; its exit status."""
    return main(["run", *SUITE, "--results", str(results), *extra])


def written_table(results: Path) -> pd.DataFrame:
    """table.csv as the run wrote it."""
    return pd.read_csv(results / SLUG / "table.csv")


def table(results: Path) -> pd.DataFrame:
    """table.csv of ``results``, written now from its records."""
    write_reports(results, SLUG, plots=False)
    return written_table(results)


def serial_results(root: Path) -> Path:
    """The results folder of the suite run serially, job after job (once per session), with its tables."""
    if "folder" not in _serial:
        folder = root / "serial"
        assert bench_run(folder) == 0
        _serial["folder"] = folder
    return _serial["folder"]


def values(results: Path) -> dict[tuple, dict]:
    """The value of every ok record of ``results``, by job (a job recorded ok twice fails the caller's check)."""
    found: dict[tuple, dict] = {}
    for record in RecordStore(results, SLUG).read():
        if record.ok and record.value is not None:
            key = (record.arch, record.dataset, record.kind, record.mode)
            assert key not in found, f"{key} recorded twice"
            found[key] = record.value.to_json()
    return found
