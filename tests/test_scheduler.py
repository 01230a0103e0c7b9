"""A suite spread over several workers: devices, cores, order, and the serial run's records and table."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from bench import jobs
from bench.errors import BenchError
from bench.scheduler import estimate_s, longest_first, measured_gflops, run_parallel
from bench.store import Record
from bench.workers import Worker, cores_text, parse_devices, split_cores, visible_device
from tests import toy_suite
from tests.toy_models import HoldJobs


@pytest.fixture(scope="session")
def serial(tmp_path_factory) -> Path:
    return toy_suite.serial_results(tmp_path_factory.getbasetemp())


def _no_gpu_asked() -> int:
    raise AssertionError("CPU workers do not count GPUs")


def test_devices_name_one_worker_each_and_split_the_cores_evenly():
    four = lambda: 4  # noqa: E731
    workers = parse_devices("cuda:0,cuda:2", gpu_count=four, cores=range(16))
    assert [(w.name, w.cores) for w in workers] == [("cuda:0", tuple(range(8))), ("cuda:2", tuple(range(8, 16)))]
    assert [w.child_device for w in workers] == ["cuda:0", "cuda:0"]  # the child sees its GPU alone
    workers = parse_devices("all", gpu_count=lambda: 3, cores=[0, 1, 2, 3, 4, 5, 6, 7])
    assert [w.name for w in workers] == ["cuda:0", "cuda:1", "cuda:2"]
    assert [cores_text(w.cores) for w in workers] == ["0-2", "3-5", "6-7"]
    workers = parse_devices(" cpu:0, cpu:1 ", gpu_count=_no_gpu_asked, cores=[2, 3])
    assert [(w.name, w.cores, w.child_device) for w in workers] == [("cpu:0", (2,), "cpu"), ("cpu:1", (3,), "cpu")]


@pytest.mark.parametrize(
    ("text", "gpus", "message"),
    [
        ("all", 0, "no CUDA GPU is visible; on a machine without GPUs pass CPU workers, e.g. --devices cpu:0,cpu:1"),
        ("cuda:1,cuda:4", 4, "cuda:4 not visible (4 CUDA device(s)); use cuda:0..cuda:3, or all"),
        ("cuda:0", 0, "no CUDA GPU is visible"),
        ("cuda:0,cpu:0", 1, "GPUs and CPU workers in one run"),
        ("cuda:1,cuda:1", 2, "cuda:1 named twice"),
        ("tpu:0", 1, "'tpu:0' is not a device"),
        ("cpu:0,cpu:1,cpu:2", 0, "this process may use 2 core(s), so at most 2 CPU workers, cpu:0..cpu:1"),
        ("cpu:9", 0, "this process may use 2 core(s), so at most 2 CPU workers, cpu:0..cpu:1"),
        (",", 0, "empty"),
    ],
)
def test_a_bad_devices_value_is_a_one_line_error_naming_it(text, gpus, message):
    with pytest.raises(BenchError, match="^--devices ") as caught:
        parse_devices(text, gpu_count=lambda: gpus, cores=[0, 1])
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("count", [1, 2, 3, 5, 16, 20])
def test_core_shares_are_contiguous_cover_every_core_once_and_differ_by_one_at_most(count):
    cores = list(range(4, 20))
    shares = split_cores(cores, count)
    assert len(shares) == count
    if count <= len(cores):
        assert [core for share in shares for core in share] == cores
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    else:  # more shares than cores: one core each, wrapping around
        assert all(len(share) == 1 for share in shares) and {s[0] for s in shares} == set(cores)


def test_a_gpu_is_named_to_the_child_as_the_parent_numbers_it():
    assert visible_device(1, None) == visible_device(1, "") == "1"
    assert visible_device(1, "4,6") == "6"
    assert visible_device(0, "GPU-abc, GPU-def") == "GPU-abc"
    with pytest.raises(RuntimeError, match="CUDA device 2 is not among CUDA_VISIBLE_DEVICES=4,6"):
        visible_device(2, "4,6")


def test_jobs_start_longest_first_by_their_models_flops_and_measurement():
    planned = jobs.plan(
        ["small", "large", "new"], ["ade20k"], ["eager", "compile"], kinds=("params", "flops", "latency")
    )
    planned.append(jobs.Job("small", "ade20k", "miou", "eager"))
    flops = {"arch": "large", "dataset": "ade20k", "kind": "flops", "status": "ok", "value": {"gflops": 900.0}}
    measured = measured_gflops([Record.from_json({**flops, "protocol": "1", "device_slug": "x", "device": "cpu"})])
    published = {("small", "ade20k"): 10.0}
    ordered = longest_first(planned, "cpu", measured, published=lambda arch, dataset: published.get((arch, dataset)))
    labels = [job.label for job in ordered]
    assert labels[0] == "small ade20k miou eager"  # a validation pass outlasts everything
    assert labels[1:3] == ["large ade20k latency compile", "new ade20k latency compile"]  # new: the median, 455
    assert labels.index("large ade20k flops") < labels.index("new ade20k latency eager")  # 900 GFLOPs on a CPU
    assert labels[-3:] == ["large ade20k params", "new ade20k params", "small ade20k params"]
    gflops = {"small": 10.0, "large": 900.0, "new": 455.0}
    costs = [estimate_s(job, gflops[job.arch], "cpu") for job in ordered]
    assert costs == sorted(costs, reverse=True)
    # on a GPU the fixed costs lead: any latency before any FLOP count
    on_gpu = [job.kind for job in longest_first(planned, "cuda", measured, published=lambda a, d: None)]
    assert on_gpu.index("flops") > max(i for i, kind in enumerate(on_gpu) if kind == "latency")


def _fake_record(job) -> Record:
    return Record(
        arch=job.arch, dataset=job.dataset, kind=job.kind, mode=job.mode, protocol="1", device_slug="x", status="ok",
        provenance={"host": "h"},
    )  # fmt: skip


@pytest.mark.parametrize("exclusive", [False, True])
def test_exclusive_runs_one_job_at_a_time_and_says_so_in_every_placement(exclusive):
    planned = jobs.plan(list(toy_suite.TOYS), ["ade20k"], [], kinds=("params", "flops"))
    workers = parse_devices("cpu:0,cpu:1", cores=[0, 1])
    running, most, lock = [0], [0], threading.Lock()
    both_started = threading.Barrier(2, timeout=60)

    def run_one(job, worker):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        if not exclusive and job in planned[:2]:
            both_started.wait()  # the first two jobs overlap: each worker holds one
        with lock:
            running[0] -= 1
        return _fake_record(job)

    records = run_parallel(planned, workers, run_one, exclusive=exclusive)
    assert sorted(r.arch + r.kind for r in records) == sorted(j.arch + j.kind for j in planned)
    placements = [r.provenance["placement"] for r in records]
    assert all(p["exclusive"] is exclusive and p["workers"] == 2 and p["host"] for p in placements)
    assert {r.provenance["host"] for r in records} == {"h"}  # the record's own provenance is kept
    if exclusive:
        assert most[0] == 1 and {p["neighbours"] for p in placements} == {0}
    else:
        assert most[0] == 2 and max(p["neighbours"] for p in placements) == 1


def _binding() -> dict:
    import torch

    return {
        "affinity": sorted(os.sched_getaffinity(0)),
        "threads": torch.get_num_threads(),
        "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def test_a_job_child_takes_its_workers_cores_threads_and_gpu_alone():
    cpu = Worker("cpu", 1, (1,))
    assert jobs.run_in_child("bench test", 120, cpu.bind(_binding)) == {
        "status": "ok", "affinity": [1], "threads": 1, "cuda_visible": ""
    }  # fmt: skip
    gpu = Worker("cuda", 1, (0, 1))
    bound = jobs.run_in_child("bench test", 120, gpu.bind(_binding))
    assert bound == {
        "status": "ok", "affinity": [0, 1], "threads": 2,
        "cuda_visible": visible_device(1, os.environ.get("CUDA_VISIBLE_DEVICES")),
    }  # fmt: skip


def _records(results: Path) -> list[dict]:
    return [json.loads(line) for line in (results / toy_suite.SLUG / "records.jsonl").read_text().splitlines()]


def test_a_suite_over_two_cpu_workers_gives_the_serial_runs_records_and_table(tmp_path, serial):
    assert toy_suite.bench_run(tmp_path, "--devices", "cpu:0,cpu:1") == 0
    records = _records(tmp_path)
    assert len(records) == 20 and {r["status"] for r in records} == {"ok"}
    assert toy_suite.values(tmp_path) == toy_suite.values(serial)  # one per job, the same params and FLOPs
    pd.testing.assert_frame_equal(toy_suite.written_table(tmp_path), toy_suite.written_table(serial))
    cores = {w.name: w.cores for w in parse_devices("cpu:0,cpu:1")}
    placements = [r["provenance"]["placement"] for r in records]
    assert {p["device"] for p in placements} == set(cores)
    for record, placement in zip(records, placements):
        assert placement["cores"] == cores_text(cores[placement["device"]]) and placement["workers"] == 2
        assert record["provenance"]["torch_threads"] == len(cores[placement["device"]])  # bound in the child
        assert placement["host"] == record["provenance"]["host"] and placement["neighbours"] in (0, 1)
        assert placement["exclusive"] is False


def _pid_from(path: Path, guard_s: float = 120) -> int:
    """The pid a held child wrote to ``path`` (``guard_s``: against a hang only)."""
    deadline = time.monotonic() + guard_s
    while not path.exists():
        assert time.monotonic() < deadline, f"no child wrote {path}"
        time.sleep(0.02)
    return int(path.read_text())


def _gone(pid: int, guard_s: float = 60) -> bool:
    deadline = time.monotonic() + guard_s
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return not Path(f"/proc/{pid}").exists()


def test_a_worker_whose_child_is_killed_mid_suite_loses_no_record_and_a_rerun_completes(
    tmp_path, serial, monkeypatch, capsys
):
    victim, pid_file = toy_suite.plan()[9], tmp_path / "victim.pid"
    killer = threading.Thread(target=lambda: os.kill(_pid_from(pid_file), signal.SIGKILL), daemon=True)
    killer.start()
    with monkeypatch.context() as patched:
        patched.setattr(jobs, "_measure_job", HoldJobs(((victim, str(pid_file)),)))
        assert toy_suite.bench_run(tmp_path, "--devices", "cpu:0,cpu:1", "--no-report") == 1  # a job failed
    killer.join()
    records = _records(tmp_path)
    assert len(records) == 20 and sum(r["status"] == "ok" for r in records) == 19
    (crashed,) = [r for r in records if r["status"] != "ok"]
    assert (crashed["arch"], crashed["dataset"], crashed["kind"]) == (victim.arch, victim.dataset, victim.kind)
    assert crashed["status"] == "crashed" and "SIGKILL" in crashed["error"]
    assert crashed["provenance"]["placement"]["device"] in ("cpu:0", "cpu:1")
    capsys.readouterr()
    # the rerun measures what this machine has not recorded ok: the killed job alone
    assert toy_suite.bench_run(tmp_path, "--devices", "cpu:0,cpu:1", "--exclusive", "--no-report") == 0
    assert "done: 1 ok, 0 failed, 19 skipped" in capsys.readouterr().err
    assert _records(tmp_path)[-1]["provenance"]["placement"]["exclusive"] is True
    assert toy_suite.values(tmp_path) == toy_suite.values(serial)
    pd.testing.assert_frame_equal(toy_suite.table(tmp_path), toy_suite.written_table(serial))


def test_ctrl_c_stops_every_worker_and_ends_their_jobs_children(tmp_path, monkeypatch):
    planned = toy_suite.plan()
    workers = parse_devices("cpu:0,cpu:1", cores=sorted(os.sched_getaffinity(0))[:2])
    held = {job: tmp_path / f"held-{i}.pid" for i, job in enumerate(planned[:2])}
    monkeypatch.setattr(jobs, "_measure_job", HoldJobs(tuple((job, str(path)) for job, path in held.items())))
    options = jobs.RunOptions(device="cpu", device_slug=toy_suite.SLUG, plugins=(toy_suite.PLUGIN,))
    taken: list = []

    def run_one(job, worker):
        taken.append(job)
        return jobs.run_job(job, options, 120, worker)

    pids: list[int] = []

    def ctrl_c_once_both_hold() -> None:
        pids.extend(_pid_from(path) for path in held.values())
        os.kill(os.getpid(), signal.SIGINT)

    # Python's own handler, as in a terminal (a shell's background job starts with SIGINT ignored)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=ctrl_c_once_both_hold, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            run_parallel(planned, workers, run_one)
    finally:
        signal.signal(signal.SIGINT, before)
    assert sorted(map(planned.index, taken)) == [0, 1]  # no job started after the Ctrl-C
    assert len(pids) == 2 and all(_gone(pid) for pid in pids)  # ended by the run, not by their time limit


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--devices", "cuda:0"), "--devices 'cuda:0': no CUDA GPU is visible; use CPU workers, e.g. --devices cpu:0"),
        (("--devices", "all"), "--devices all: no CUDA GPU is visible; on a machine without GPUs pass CPU workers"),
        (("--devices", "cpu:CORES"), "core(s), so at most CORES CPU workers, cpu:0..cpu:"),
        (("--devices", "cpu:0", "--device", "cpu"), "--device cpu and --devices cpu:0: pass one"),
        (("--wait",), "--wait belongs to a submitted array: pass it with --launcher slurm (or local)"),
        (("--nodes", "2"), "--nodes belongs to a submitted array: pass it with --launcher slurm (or local)"),
    ],
)
def test_a_bad_parallel_run_is_a_one_line_error_with_its_fix(tmp_path, monkeypatch, capsys, options, message):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # a machine without GPUs
    cores = str(len(os.sched_getaffinity(0)))
    assert toy_suite.bench_run(tmp_path, *(o.replace("CORES", cores) for o in options)) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: ") and err.count("\n") == 1, err
    assert message.replace("CORES", cores) in err
    assert not (tmp_path / toy_suite.SLUG).exists()  # nothing measured, nothing written


def _gpus_seen() -> dict:
    import torch

    from bench.provenance import gpu_uuid

    return {"count": torch.cuda.device_count(), "uuid": gpu_uuid("cuda:0")}


@pytest.mark.gpu
def test_a_gpu_workers_jobs_see_its_gpu_alone_and_name_its_board():
    from bench.provenance import device_slug, gpu_uuid, machine_id

    workers = parse_devices("all")
    for worker in workers:  # the binding alone: one GPU visible, the worker's own
        seen = jobs.run_in_child("bench test", 300, worker.bind(_gpus_seen))
        assert seen == {"status": "ok", "count": 1, "uuid": gpu_uuid(worker.name)}
    # a latency job per GPU, on every GPU at once: each record names its worker's board (the child's own reading)
    planned = [jobs.Job(arch, "ade20k", "latency", "eager") for arch in toy_suite.TOYS[: len(workers)]]
    options = jobs.RunOptions(device="cuda:0", device_slug=device_slug("cuda:0"), plugins=(toy_suite.PLUGIN,))
    records = run_parallel(planned, workers, lambda job, worker: jobs.run_job(job, options, 300, worker))
    assert len(records) == len(workers) and {r.status for r in records} == {"ok"}
    for record in records:
        worker = record.provenance["placement"]["device"]
        assert record.device == "cuda" and record.provenance["machine_id"] == machine_id(worker)


@pytest.mark.gpu
def test_a_run_over_every_gpu_records_each_job_once_and_resumes(tmp_path, capsys):
    from bench.provenance import device_slug, machine_id

    workers = parse_devices("all")
    args = ("--dataset", "ade20k", "--measure", "params,latency", "--modes", "eager", "--devices", "all", "--no-report")
    assert toy_suite.bench_run(tmp_path, *args) == 0
    records = [
        json.loads(line) for line in (tmp_path / device_slug("cuda:0") / "records.jsonl").read_text().splitlines()
    ]
    assert len(records) == 10 and {r["status"] for r in records} == {"ok"}
    boards = {w.name: machine_id(w.name) for w in workers}
    for record in records:
        placement = record["provenance"]["placement"]
        assert record["provenance"]["machine_id"] == boards[placement["device"]] and placement["workers"] == len(
            workers
        )
    capsys.readouterr()
    assert toy_suite.bench_run(tmp_path, *args) == 0  # what any of the GPUs recorded is done
    assert "done: 0 ok, 0 failed, 10 skipped" in capsys.readouterr().err
