"""A suite as a job array through submitit: the tasks' command lines, the request, the serial run's table."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import build_parser
from bench.errors import BenchError
from bench.slurm import (
    CPUS_PER_GPU,
    EXTRA_HINT,
    SlurmOptions,
    _error_line,
    parse_time,
    task_argv,
)
from tests import toy_suite
from tests.conftest import ROOT


@pytest.fixture(scope="session")
def serial(tmp_path_factory) -> Path:
    return toy_suite.serial_results(tmp_path_factory.getbasetemp())


def _run_parser():
    (subparsers,) = [a for a in build_parser()._actions if a.dest == "command"]
    return subparsers.choices["run"]


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("90", 90), ("4:00:00", 240), ("30:30", 31), ("1-00", 1440), ("2-12:30", 3630), ("0-0:0:1", 1)],
)
def test_slurm_time_formats_become_whole_minutes(text, minutes):
    assert parse_time(text) == minutes


@pytest.mark.parametrize("text", ["", "4h", "1:2:3:4", "0", "0:00:00", "-1"])
def test_a_bad_time_is_a_one_line_error_naming_it(text):
    with pytest.raises(BenchError, match=r"^--time "):
        parse_time(text)


def test_the_request_asks_each_task_for_one_whole_node_with_its_gpus_and_cores():
    options = SlurmOptions(tasks=4, partition="gpu", gpus_per_node=8, timeout_min=240)
    assert options.parameters() == {
        "name": "segbench", "timeout_min": 240, "nodes": 1, "tasks_per_node": 1, "gpus_per_node": 8,
        "cpus_per_task": 8 * CPUS_PER_GPU, "slurm_array_parallelism": 4, "slurm_partition": "gpu",
        "slurm_exclusive": True,
    }  # fmt: skip
    local = SlurmOptions(tasks=2, cpus_per_task=3, exclusive_nodes=False, cluster="local").parameters()
    assert local["cpus_per_task"] == 3 and not any(key.startswith("slurm_") and key != "slurm_array_parallelism"
                                                   for key in local)  # fmt: skip


def test_a_task_runs_the_users_command_on_its_shard_into_the_shared_folder(tmp_path):
    parser = _run_parser()
    user = ["--plugin", "tests.toy_models", "--arch", "toy-w4", "--arch", "toy-w8", "--measure", "params,flops",
            "--force", "--job-timeout", "30", "--exclusive", "--results", "elsewhere", "--shard", "1/9"]  # fmt: skip
    launcher = ["--launcher", "slurm", "--partition", "gpu", "--nodes", "3", "--gpus-per-node", "8", "--time", "60",
                "--wait"]  # fmt: skip
    args = parser.parse_args(user + launcher)
    argv = task_argv(parser, args, 2, 3, results=tmp_path / "shared")
    assert argv[0] == "run"
    task = parser.parse_args(argv[1:])
    assert (task.shard, task.results, task.no_report) == ("2/3", (tmp_path / "shared").resolve(), True)
    assert task.devices == "all"  # every GPU of the task's node
    mine = vars(parser.parse_args(user))  # the user's options without the launcher's
    for key, value in mine.items():
        if key not in ("shard", "results", "no_report", "devices"):
            assert getattr(task, key) == value, key


def test_a_task_takes_every_gpu_of_its_node_unless_the_user_chose_devices(tmp_path):
    parser = argparse.ArgumentParser()
    for flag in ("--devices", "--device", "--launcher", "--shard", "--results"):
        parser.add_argument(flag)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--wait", action="store_true")
    args = parser.parse_args(["--launcher", "slurm", "--nodes", "4", "--wait"])
    tail = ["--shard", "1/4", "--results", str(tmp_path), "--no-report"]
    assert task_argv(parser, args, 1, 4, results=tmp_path) == ["run", *tail, "--devices", "all"]
    assert task_argv(parser, args, 1, 4, results=tmp_path, devices=None) == ["run", *tail]  # a CPU suite
    chosen = parser.parse_args(["--devices", "cuda:0,cuda:1", "--launcher", "slurm"])
    assert task_argv(parser, chosen, 1, 4, results=tmp_path) == ["run", "--devices", "cuda:0,cuda:1", *tail]


@pytest.fixture
def importable(monkeypatch):
    """Local tasks are processes of their own: they import the checkout and its test models."""
    pytest.importorskip("submitit")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))


def test_a_two_task_local_array_into_one_folder_gives_the_serial_table(tmp_path, serial, importable, capsys):
    shared = tmp_path / "shared"
    assert toy_suite.bench_run(shared, "--launcher", "local", "--nodes", "2", "--wait") == 0
    err = capsys.readouterr().err
    assert f"2 task(s), records to {shared.resolve()}, logs in {shared.resolve() / 'slurm'}" in err
    assert "done: 2 task(s) done, 0 failed; 20 record(s) written" in err
    assert toy_suite.values(shared) == toy_suite.values(serial)  # each job once, by one task or the other
    pd.testing.assert_frame_equal(toy_suite.written_table(shared), toy_suite.written_table(serial))


def test_a_failed_task_is_named_with_its_error_and_its_logs_path(tmp_path, importable, capsys):
    shared = tmp_path / "shared"
    # what the submitting machine cannot judge for the nodes: each task finds one CPU worker too many
    too_many = ",".join(f"cpu:{i}" for i in range(len(os.sched_getaffinity(0)) + 1))
    assert toy_suite.bench_run(shared, "--launcher", "local", "--devices", too_many, "--wait") == 1
    err = capsys.readouterr().err
    match = re.search(r"^task 1/1 \(job (\S+)\) failed: (.*); log: (\S+)$", err, re.M)
    assert match, err
    job_id, error, log = match.groups()
    assert error.startswith("bench.slurm.TaskFailed: bench run ") and "--plugin tests.toy_models" in error
    assert error.endswith(
        f"--devices {too_many} --shard 1/1 --results {shared.resolve()} --no-report exited with status 2"
    )
    assert Path(log) == shared.resolve() / "slurm" / f"{job_id}_0_log.err"
    assert f"bench: error: --devices '{too_many}': this process may use" in Path(log).read_text()
    assert "done: 0 task(s) done, 1 failed; 0 record(s) written" in err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--launcher", "slurm"), f"--launcher slurm needs submitit, an optional extra: {EXTRA_HINT}"),
        (("--launcher", "local", "--shard", "1/2"), "--shard 1/2: --launcher gives each task its shard"),
        (("--launcher", "local", "--nodes", "0"), "--nodes 0: give at least one node"),
        (("--launcher", "local", "--time", "4h"), "--time '4h': expected minutes or Slurm's [D-]HH:MM:SS"),
        (("--launcher", "local", "--devices", "tpu:0"), "--devices 'tpu:0': 'tpu:0' is not a device"),
        (("--launcher", "local", "--measure", "speed"), "--measure: unknown measurement 'speed'"),
    ],
)
def test_a_bad_submission_is_a_one_line_error_before_anything_is_submitted(
    tmp_path, monkeypatch, capsys, options, message
):
    if options[1] == "slurm":
        monkeypatch.setitem(sys.modules, "submitit", None)  # what an import of a missing package raises
    else:
        pytest.importorskip("submitit")
    results = tmp_path / "results"
    assert toy_suite.bench_run(results, *options) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bench: error: {message}") and err.count("\n") == 1, err
    assert not results.exists()  # nothing submitted


def test_a_failed_task_is_told_by_its_last_exception_and_a_task_slurm_ended_by_its_state():
    submitit = pytest.importorskip("submitit")
    trace = "Traceback (most recent call last):\n  File x\nbench.slurm.TaskFailed: bench run exited with status 2"
    failed = submitit.core.utils.FailedJobError(
        f"Job (task=0) failed during processing with trace:\n----------------------\n{trace}\n"
        "----------------------\nYou can check full logs ... at paths:\n  - a.err\n  - a.out"
    )
    assert _error_line(failed, "FAILED") == "bench.slurm.TaskFailed: bench run exited with status 2"
    ended = submitit.core.utils.UncompletedJobError("Job 7_1 (task: 0) with path p\nhas not produced any output")
    assert _error_line(ended, "TIMEOUT") == "no result (state TIMEOUT)"
