"""A long suite survives its jobs: faults become records, kills resume, concurrent writers agree."""

import json
import os
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
    # FLOPs: a traced forward, where each fault strikes (the default time limits only guard against a hang)
    proc = run_bench(
        "run", *PLUGIN, "--arch", "fault-raise,toy-w4,fault-oom,fault-kill,toy-w8",
        "--dataset", "ade20k", "--measure", "flops", "--results", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # something failed: the exit status says so
    records = {r["arch"]: r for r in map(json.loads, lines(tmp_path))}
    assert set(records) == {"fault-raise", "toy-w4", "fault-oom", "fault-kill", "toy-w8"}
    assert records["fault-raise"]["status"] == "error"
    assert records["fault-raise"]["error"] == "RuntimeError: injected fault in forward"
    assert records["fault-oom"]["status"] == "oom"
    assert records["fault-kill"]["status"] == "crashed" and "SIGKILL" in records["fault-kill"]["error"]
    assert records["toy-w4"]["status"] == records["toy-w8"]["status"] == "ok"
    assert "2 ok, 3 failed, 0 skipped" in proc.stderr
    # a rerun retries the failures only; a job that never ends times out, and the next one still runs
    # (fault-raise fails within the 1 s limit or by it: either way one more failure)
    again = run_bench(
        "run", *PLUGIN, "--arch", "toy-w4,fault-hang,fault-raise", "--dataset", "ade20k", "--measure", "flops",
        "--job-timeout", "1", "--results", str(tmp_path),
    )  # fmt: skip
    assert again.returncode == 1 and "0 ok, 2 failed, 1 skipped" in again.stderr, again.stderr
    rerun = list(map(json.loads, lines(tmp_path)))[len(records) :]
    assert [r["arch"] for r in rerun] == ["fault-hang", "fault-raise"]
    assert rerun[0]["status"] == "timeout" and rerun[0]["error"] == "no result within 1 s (--job-timeout)"


def _start(results, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "bench", "run", *PLUGIN, "--arch", TOYS, "--measure", "params,flops",
         "--results", str(results), "--no-report", *extra],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _wait_for_records(results, count: int, proc, guard_s: float = 600) -> None:
    """Until ``results`` holds ``count`` records or ``proc`` has ended (``guard_s``: against a hang only)."""
    deadline = time.monotonic() + guard_s
    while len(lines(results)) < count and proc.poll() is None:
        assert time.monotonic() < deadline, f"fewer than {count} records after {guard_s:g} s"
        time.sleep(0.05)


def test_sigkill_at_each_stage_of_a_run_then_resume_measures_each_job_exactly_once(tmp_path):
    # killed while it starts, then each time right after the run's 7th and 14th record, in the next job
    for written in (0, 7, 14):
        proc = _start(tmp_path)
        _wait_for_records(tmp_path, written, proc)
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


def test_shards_split_the_jobs_in_order_without_a_gap_or_an_overlap():
    from bench import jobs

    planned = jobs.plan(TOYS.split(","), ["ade20k", "cityscapes"], ["eager"], kinds=("params", "flops", "latency"))
    for count in (1, 2, 3, 7, len(planned) + 2):
        shards = [jobs.shard(planned, index, count) for index in range(1, count + 1)]
        assert sorted(map(planned.index, (job for part in shards for job in part))) == list(range(len(planned)))
        assert all(part == sorted(part, key=planned.index) for part in shards)
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


@pytest.mark.slow  # five `bench run` processes at once; the store's locking and shards have fast tests of their own
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


def _grandchildren(pid: int) -> set[int]:
    """The processes that the children of ``pid`` started, and theirs."""
    return {pid for child in _descendants(pid) for pid in _descendants(child)}


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
    deadline = time.monotonic() + 300  # against a hang only
    while not _grandchildren(proc.pid) and time.monotonic() < deadline:  # the job, a child of the fork server
        time.sleep(0.2)
    job = _grandchildren(proc.pid)
    left = _descendants(proc.pid)
    assert job and job < left
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 120  # against a hang only: each one ends as soon as it sees the run gone
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
