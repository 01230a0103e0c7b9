"""A 20-job suite of the toy models (params and FLOPs, both datasets), run serially once per test session:
what a parallel or a Slurm run of the same suite must reproduce."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pandas as pd
from bench.records import RecordStore

import tests.toy_models  # noqa: F401 - registers the toy-* models in this process
from bench import jobs
from bench.provenance import device_slug, machine_id
from bench.report import write_reports

TOYS = ("toy-w4", "toy-w8", "toy-w12", "toy-w16", "toy-w20")
PLUGIN = "tests.toy_models"
JOB_TIMEOUT_S = 120  # against a hang only
SLUG = device_slug("cpu")
_run_in_child = jobs.run_in_child
_bindings = threading.local()
_serial: dict[str, Path] = {}


def plan() -> list[jobs.Job]:
    return jobs.plan(list(TOYS), ["ade20k", "cityscapes"], [], kinds=("params", "flops"))


def run_options() -> jobs.RunOptions:
    return jobs.RunOptions(device="cpu", device_slug=SLUG, plugins=(PLUGIN,), machine_id=machine_id("cpu"))


def run_in_child_bound(name: str, timeout_s: float, fn, *args) -> dict:
    """`bench.jobs.run_in_child` with the calling worker thread's binding around ``fn``: in place of
    ``run_job(job, options, timeout, worker=worker)``, which passes ``worker.bind(_measure_job)``."""
    wrap = getattr(_bindings, "wrap", None)
    return _run_in_child(name, timeout_s, fn if wrap is None else wrap(fn), *args)


def bound_runner(wrap_job=None, options: jobs.RunOptions | None = None):
    """A ``run_one(job, worker)`` for `bench.scheduler.run_parallel` running real jobs in bound children
    (`run_in_child_bound` must be patched in). ``wrap_job(job, fn)``: what the child runs instead of ``fn``;
    ``options``: the run's (default: this module's, on the CPU)."""
    base = run_options() if options is None else options

    def run_one(job: jobs.Job, worker) -> dict:
        _bindings.wrap = lambda fn: worker.bind(fn if wrap_job is None else wrap_job(job, fn))
        try:
            return jobs.run_job(job, replace(base, device=worker.child_device), JOB_TIMEOUT_S)
        finally:
            _bindings.wrap = None

    return run_one


def table(results: Path) -> pd.DataFrame:
    """table.csv of ``results`` (written now), as the tables show it."""
    write_reports(results, SLUG, plots=False)
    return pd.read_csv(results / SLUG / "table.csv")


def serial_results(root: Path) -> Path:
    """The results folder of the suite run serially, job after job (once per session)."""
    if "folder" not in _serial:
        folder = root / "serial"
        store = RecordStore(folder, SLUG)
        for job in plan():
            store.append([jobs.run_job(job, run_options(), JOB_TIMEOUT_S)])
        table(folder)
        _serial["folder"] = folder
    return _serial["folder"]


def values(results: Path) -> dict[tuple, dict]:
    """The value of every ok record of ``results``, by job key (a job recorded twice fails the caller's check)."""
    found: dict[tuple, dict] = {}
    for record in RecordStore(results, SLUG).read():
        if record["status"] == "ok":
            key = (record["arch"], record["dataset"], record["kind"], record["mode"])
            assert key not in found, f"{key} recorded twice"
            found[key] = record["value"]
    return found
