"""A long suite survives its jobs: faults become records, kills resume, concurrent writers agree."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT, run_bench

PLUGIN = ("--plugin", "tests.toy_models")
TOYS = "toy-w4,toy-w8,toy-w12,toy-w16,toy-w20"


def lines(results):
    return [line for path in sorted(results.glob("*/records.jsonl")) for line in path.read_text().splitlines() if line]


def test_faulty_models_become_failure_records_and_the_suite_goes_on(tmp_path):
    proc = run_bench(
        "run", *PLUGIN, "--arch", "fault-raise,toy-w4,fault-oom,fault-hang,fault-kill,toy-w8",
        "--dataset", "ade20k", "--measure", "latency", "--job-timeout", "20", "--results", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # something failed: the exit status says so
    records = {r["arch"]: r for r in map(json.loads, lines(tmp_path))}
    assert set(records) == {"fault-raise", "toy-w4", "fault-oom", "fault-hang", "fault-kill", "toy-w8"}
    assert records["fault-raise"]["status"] == "error"
    assert records["fault-raise"]["error"] == "RuntimeError: injected fault in forward"
    assert records["fault-oom"]["status"] == "oom"
    assert records["fault-hang"]["status"] == "timeout" and "20 s" in records["fault-hang"]["error"]
    assert records["fault-kill"]["status"] == "crashed" and "SIGKILL" in records["fault-kill"]["error"]
    assert records["toy-w4"]["status"] == records["toy-w8"]["status"] == "ok"
    assert "2 ok, 4 failed, 0 skipped" in proc.stderr
    # a rerun retries the failures only
    again = run_bench(
        "run", *PLUGIN, "--arch", "toy-w4,fault-raise", "--dataset", "ade20k", "--measure", "latency",
        "--results", str(tmp_path),
    )  # fmt: skip
    assert "0 ok, 1 failed, 1 skipped" in again.stderr


def _start(results, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "bench", "run", *PLUGIN, "--arch", TOYS, "--measure", "params,flops",
         "--results", str(results), "--no-report", *extra],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def test_sigkill_at_random_moments_then_resume_measures_each_job_exactly_once(tmp_path):
    rng = random.Random(20261124)
    for _ in range(10):
        proc = _start(tmp_path)
        time.sleep(rng.uniform(0.3, 4.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = run_bench("run", *PLUGIN, "--arch", TOYS, "--measure", "params,flops", "--results", str(tmp_path))
    assert final.returncode == 0, final.stderr
    records = [json.loads(line) for line in lines(tmp_path)]  # every line parses
    ok = Counter((r["arch"], r["dataset"], r["kind"]) for r in records if r["status"] == "ok")
    assert len(ok) == 20  # 5 archs x 2 datasets x (params, flops)
    assert set(ok.values()) == {1}  # nothing measured twice


def _table(results) -> pd.DataFrame:
    assert run_bench("table", *PLUGIN, "--results", str(results)).returncode == 0
    (csv,) = results.glob("*/table.csv")
    return pd.read_csv(csv)


def test_concurrent_runs_and_shards_give_the_single_run_table(tmp_path):
    single, concurrent, sharded = tmp_path / "single", tmp_path / "concurrent", tmp_path / "sharded"
    procs = [_start(single), _start(concurrent), _start(concurrent), _start(sharded, "--shard", "1/2"),
             _start(sharded, "--shard", "2/2")]  # fmt: skip
    for proc in procs:
        assert proc.wait(timeout=900) == 0
    for results in (concurrent, sharded):
        records = [json.loads(line) for line in lines(results)]
        assert len(records) == 20 and all(r["status"] == "ok" for r in records)
    expected = _table(single)
    assert len(expected) == 5
    pd.testing.assert_frame_equal(_table(concurrent), expected)
    pd.testing.assert_frame_equal(_table(sharded), expected)


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                children = {int(c) for c in (task / "children").read_text().split()}
            except OSError:
                continue
            todo += list(children - found)
            found |= children
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def test_a_killed_run_leaves_no_process_behind(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "run", *PLUGIN, "--arch", "fault-hang", "--dataset", "ade20k",
         "--measure", "latency", "--job-timeout", "600", "--results", str(tmp_path), "--no-report"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while len(_descendants(proc.pid)) < 2 and time.monotonic() < deadline:  # the fork server and the job
        time.sleep(0.2)
    time.sleep(1.0)
    left = _descendants(proc.pid)
    assert len(left) >= 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in left) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in left if _alive(pid)]


def test_the_job_server_stops_at_once_even_while_it_imports_and_a_later_job_starts_another():
    from multiprocessing import forkserver

    from bench import jobs

    jobs.start_job_server()
    pid = forkserver._forkserver._forkserver_pid
    assert _alive(pid)
    jobs.stop_job_server()  # a run that ended before its first job: it must not wait for the imports
    assert not _alive(pid)
    assert jobs.run_in_child("bench test", 120, dict) == {"status": "ok"}
    jobs.stop_job_server()


def test_an_error_is_described_by_its_type_and_first_line():
    from bench.errors import described

    assert described(RuntimeError("shapes differ\n  at layer 3")) == "RuntimeError: shapes differ"
    assert described(KeyError()) == "KeyError"  # no message: the type alone, no dangling colon
    assert described(ValueError("x" * 300), 160) == "ValueError: " + "x" * 160


def _sigint_disposition() -> dict:
    return {"sigint": "ignored" if signal.getsignal(signal.SIGINT) == signal.SIG_IGN else "handled"}


def test_jobs_and_their_server_leave_ctrl_c_to_the_run():
    from bench import jobs

    # ignored from the server's first import on: a Ctrl-C while it imports torch prints no traceback of its own
    assert jobs.run_in_child("bench test", 120, _sigint_disposition) == {"status": "ok", "sigint": "ignored"}
    jobs.stop_job_server()


@pytest.mark.parametrize("then", ["goes on", "fails"])
def test_a_ctrl_c_that_an_import_swallowed_still_stops_the_command(monkeypatch, capsys, then):
    import bench.commands.list
    from bench.cli import main
    from bench.commands.common import build_model

    def swallowing(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)  # the interrupt arrives here
        except KeyboardInterrupt:
            pass  # as torch's C extension does with any error of its numpy import
        if then == "fails":  # on a module the interrupt left half imported
            raise AttributeError("module 'numpy' has no attribute 'iterable'")
        build_model("segformer-b0", 150)  # the command goes on, to its next model or job
        raise AssertionError("not stopped")

    monkeypatch.setattr(bench.commands.list, "run", swallowing)
    # Python's own handler, as in a terminal (a shell's background job starts with SIGINT ignored)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert main(["list"]) == 130
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        signal.signal(signal.SIGINT, before)
    assert capsys.readouterr().err == "bench: interrupted\n"


def test_an_error_without_a_ctrl_c_is_not_taken_for_one(monkeypatch):
    import bench.commands.list
    from bench.cli import main

    def failing(args):
        raise AttributeError("a bug")

    monkeypatch.setattr(bench.commands.list, "run", failing)
    with pytest.raises(AttributeError, match="a bug"):
        main(["list"])


def test_a_ctrl_c_inside_a_deferred_block_is_raised_at_its_end(monkeypatch):
    """An evaluation's counts and the list of images they count are updated together, or not at all."""
    from bench import errors

    monkeypatch.setattr(errors, "_interrupted", False)  # restored when the test ends: later tests see no Ctrl-C
    steps = []
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with errors.interrupts_noted(), pytest.raises(KeyboardInterrupt):
            with errors.interrupts_deferred():
                os.kill(os.getpid(), signal.SIGINT)  # Python runs its handler at the next instruction: here
                steps.append("counted")
                steps.append("listed")
            steps.append("after the block")
    finally:
        signal.signal(signal.SIGINT, before)
    assert steps == ["counted", "listed"]
