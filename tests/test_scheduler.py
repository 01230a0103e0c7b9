"""A suite spread over several workers: devices, cores, order, and the serial run's records and table."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from bench.records import RecordStore

from bench import jobs
from bench.errors import BenchError
from bench.scheduler import estimate_s, longest_first, measured_gflops, run_parallel
from bench.workers import Worker, cores_text, parse_devices, split_cores, visible_device
from tests import toy_suite


@pytest.fixture(scope="session")
def serial(tmp_path_factory) -> Path:
    return toy_suite.serial_results(tmp_path_factory.getbasetemp())


@pytest.fixture
def bound(monkeypatch):
    monkeypatch.setattr(jobs, "run_in_child", toy_suite.run_in_child_bound)


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
        ("cpu:0,cpu:1,cpu:2", 0, "3 CPU workers but this process may use 2 core(s); pass at most 2"),
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
    measured = measured_gflops(
        [{"arch": "large", "dataset": "ade20k", "kind": "flops", "status": "ok", "value": {"gflops": 900.0}}]
    )
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


def _fake_record(job) -> dict:
    return {"arch": job.arch, "kind": job.kind, "provenance": {"host": "h"}}


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
    assert sorted(r["arch"] + r["kind"] for r in records) == sorted(j.arch + j.kind for j in planned)
    placements = [r["provenance"]["placement"] for r in records]
    assert all(p["exclusive"] is exclusive and p["workers"] == 2 and p["host"] for p in placements)
    assert {r["provenance"]["host"] for r in records} == {"h"}  # the record's own provenance is kept
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


def test_a_suite_over_two_cpu_workers_gives_the_serial_runs_records_and_table(tmp_path, serial, bound):
    planned = toy_suite.plan()
    assert len(planned) == 20
    store = RecordStore(tmp_path, toy_suite.SLUG)
    workers = parse_devices("cpu:0,cpu:1", cores=sorted(os.sched_getaffinity(0))[:2])
    both_started = threading.Barrier(2, timeout=120)
    ordered = longest_first(planned, "cpu", measured_gflops(RecordStore(serial, toy_suite.SLUG).read()))
    first_two = set(ordered[:2])
    run_real = toy_suite.bound_runner()

    def run_one(job, worker):
        if job in first_two:
            both_started.wait()  # both workers hold a job at once: each was a neighbour of the other
        return run_real(job, worker)

    records = run_parallel(ordered, workers, run_one, on_record=lambda job, record: store.append([record]))
    assert len(records) == len(store.read()) == 20 and {r["status"] for r in records} == {"ok"}
    assert toy_suite.values(tmp_path) == toy_suite.values(serial)  # one per job, the same params and FLOPs
    placements = {r["provenance"]["placement"]["device"]: r["provenance"]["placement"] for r in records}
    assert set(placements) == {"cpu:0", "cpu:1"}
    assert {p["cores"] for p in placements.values()} == {cores_text(w.cores) for w in workers}
    assert {r["provenance"]["torch_threads"] for r in records} == {len(workers[0].cores)}  # bound in the child
    assert max(r["provenance"]["placement"]["neighbours"] for r in records) == 1
    pd.testing.assert_frame_equal(toy_suite.table(tmp_path), toy_suite.table(serial))


@dataclass(frozen=True)
class _AnnounceThenHold:
    """In a job's child: write its pid to ``path``, then wait to be killed (instead of measuring)."""

    path: str

    def __call__(self, *args) -> dict:
        Path(self.path + ".tmp").write_text(str(os.getpid()))
        os.replace(self.path + ".tmp", self.path)
        threading.Event().wait()
        return {}


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


def test_a_job_child_killed_mid_suite_loses_no_other_record_and_a_rerun_completes_it(tmp_path, serial, bound):
    planned = toy_suite.plan()
    victim, pid_file = planned[9], tmp_path / "victim.pid"
    store = RecordStore(tmp_path, toy_suite.SLUG)
    workers = parse_devices("cpu:0,cpu:1", cores=sorted(os.sched_getaffinity(0))[:2])
    run_one = toy_suite.bound_runner(lambda job, fn: _AnnounceThenHold(str(pid_file)) if job == victim else fn)
    killer = threading.Thread(target=lambda: os.kill(_pid_from(pid_file), signal.SIGKILL), daemon=True)
    killer.start()
    records = run_parallel(planned, workers, run_one, on_record=lambda job, record: store.append([record]))
    killer.join()
    assert len(records) == len(store.read()) == 20
    (crashed,) = [r for r in records if r["status"] != "ok"]
    assert (crashed["arch"], crashed["dataset"], crashed["kind"]) == (victim.arch, victim.dataset, victim.kind)
    assert crashed["status"] == "crashed" and "SIGKILL" in crashed["error"]
    # the rerun: what this machine has not recorded ok, which is the killed job alone
    done = store.done(toy_suite.run_options().machine_id)
    left = [job for job in planned if job.key(toy_suite.SLUG) not in done]
    assert left == [victim]
    run_parallel(left, workers, toy_suite.bound_runner(), on_record=lambda job, record: store.append([record]))
    assert toy_suite.values(tmp_path) == toy_suite.values(serial)
    pd.testing.assert_frame_equal(toy_suite.table(tmp_path), toy_suite.table(serial))


def test_ctrl_c_stops_every_worker_and_ends_their_jobs_children(tmp_path, bound):
    planned = toy_suite.plan()
    workers = parse_devices("cpu:0,cpu:1", cores=sorted(os.sched_getaffinity(0))[:2])
    held = {job: tmp_path / f"held-{i}.pid" for i, job in enumerate(planned[:2])}
    run_held = toy_suite.bound_runner(lambda job, fn: _AnnounceThenHold(str(held[job])) if job in held else fn)
    taken: list = []

    def run_one(job, worker):
        taken.append(job)
        return run_held(job, worker)

    pids: list[int] = []

    def ctrl_c_once_both_hold() -> None:
        pids.extend(_pid_from(path) for path in held.values())
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=ctrl_c_once_both_hold, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run_parallel(planned, workers, run_one)
    assert sorted(map(planned.index, taken)) == [0, 1]  # no job started after the Ctrl-C
    assert len(pids) == 2 and all(_gone(pid) for pid in pids)  # ended by the run, not by their time limit


def _gpus_seen() -> dict:
    import torch

    from bench.provenance import gpu_uuid

    return {"count": torch.cuda.device_count(), "uuid": gpu_uuid("cuda:0")}


@pytest.mark.gpu
def test_a_gpu_workers_jobs_see_its_gpu_alone_and_name_its_board(bound):
    from dataclasses import replace

    from bench.provenance import device_slug, gpu_uuid, machine_id

    workers = parse_devices("all")
    for worker in workers:  # the binding alone: one GPU visible, the worker's own
        seen = jobs.run_in_child("bench test", 300, worker.bind(_gpus_seen))
        assert seen == {"status": "ok", "count": 1, "uuid": gpu_uuid(worker.name)}
    # a latency job per GPU, on every GPU at once: each record names its worker's board (the child's own reading)
    planned = [jobs.Job(arch, "ade20k", "latency", "eager") for arch in toy_suite.TOYS[: len(workers)]]
    on_gpu = replace(toy_suite.run_options(), device_slug=device_slug("cuda:0"), machine_id=None)
    records = run_parallel(planned, workers, toy_suite.bound_runner(options=on_gpu))
    assert len(records) == len(workers) and {r["status"] for r in records} == {"ok"}
    for record in records:
        worker = record["provenance"]["placement"]["device"]
        assert record["device"] == "cuda" and record["provenance"]["machine_id"] == machine_id(worker)
