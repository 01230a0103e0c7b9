"""A suite as a job array through submitit: the tasks' command lines, the request, the serial run's table."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from bench.cli import build_parser
from bench.errors import BenchError
from bench.slurm import (
    CPUS_PER_GPU,
    EXTRA_HINT,
    SlurmOptions,
    _error_line,
    import_submitit,
    parse_time,
    submit_suite,
    task_argv,
    write_suite_reports,
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
            "--force", "--job-timeout", "30", "--results", "elsewhere", "--shard", "1/9"]  # fmt: skip
    args = parser.parse_args(user)
    argv = task_argv(parser, args, 2, 3, results=tmp_path / "shared")
    assert argv[0] == "run"
    task = parser.parse_args(argv[1:])
    assert (task.shard, task.results, task.no_report) == ("2/3", (tmp_path / "shared").resolve(), True)
    for key, value in vars(args).items():
        if key not in ("shard", "results", "no_report"):
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


def test_without_submitit_the_launcher_is_a_one_line_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # what an import of a missing package raises
    with pytest.raises(BenchError, match="needs submitit") as caught:
        import_submitit()
    assert EXTRA_HINT in str(caught.value) and "\n" not in str(caught.value)


def _local(tasks: int) -> SlurmOptions:
    return SlurmOptions(tasks=tasks, timeout_min=10, cluster="local")


@pytest.fixture
def importable(monkeypatch):
    """Local tasks are processes of their own: they import the checkout and its test models."""
    pytest.importorskip("submitit")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))


def test_a_two_task_local_array_into_one_folder_gives_the_serial_table(tmp_path, serial, importable):
    parser = _run_parser()
    args = parser.parse_args(["--plugin", toy_suite.PLUGIN, "--arch", ",".join(toy_suite.TOYS), "--measure",
                              "params,flops"])  # fmt: skip
    shared = tmp_path / "shared"
    suite = submit_suite(lambda i, n: task_argv(parser, args, i, n, results=shared), _local(2), shared)
    assert [argv[argv.index("--shard") + 1] for argv in suite.argvs] == ["1/2", "2/2"]
    console = Console(file=io.StringIO(), force_terminal=True)
    outcomes = suite.wait(console, poll_s=0.2)
    assert [(o.name, o.error) for o in outcomes] == [(f"task {i}/2 (job {j.job_id})", None)
                                                     for i, j in enumerate(suite.jobs, 1)]  # fmt: skip
    assert suite.records_written() == 20
    assert toy_suite.values(shared) == toy_suite.values(serial)  # each job once, by one task or the other
    assert {p.name for p in write_suite_reports(shared)} >= {"table.md", "table.csv"}
    pd.testing.assert_frame_equal(pd.read_csv(shared / toy_suite.SLUG / "table.csv"), toy_suite.table(serial))


def test_a_failed_task_is_named_with_its_error_and_its_logs_path(tmp_path, importable):
    shared = tmp_path / "shared"
    suite = submit_suite(lambda i, n: ["run", "--suite", "no-such-suite", "--results", str(shared)], _local(1), shared)
    (outcome,) = suite.wait(poll_s=0.2)
    assert outcome.error == "bench.slurm.TaskFailed: bench run --suite no-such-suite --results " + (
        f"{shared} exited with status 2"
    )
    assert outcome.line() == f"task 1/1 (job {suite.jobs[0].job_id}) failed: {outcome.error}; log: {outcome.log}"
    assert "bench: error: unknown suite 'no-such-suite'" in Path(outcome.log).read_text()
    assert suite.describe().startswith(f"submitted array {suite.array_id}: 1 task(s), records to {shared.resolve()}")


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
