"""`bench` end to end on the CPU with the test models, and its one-line errors on bad input."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import ROOT, run_bench

PLUGIN = ("--plugin", "tests.toy_models")


def records(results):
    return [json.loads(line) for path in results.glob("*/records.jsonl") for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    proc = run_bench("run", *PLUGIN, "--arch", "toy-w4,toy-w8", "--results", str(results))
    return results, proc


def test_run_records_every_measurement_and_writes_table_and_plots(finished_run):
    results, proc = finished_run
    assert proc.returncode == 0, proc.stderr
    recs = records(results)
    # 2 archs x 2 datasets x (params, flops, latency eager); graph needs CUDA and is not planned on a CPU
    assert sorted((r["arch"], r["dataset"], r["kind"]) for r in recs) == sorted(
        (a, d, k)
        for a in ("toy-w4", "toy-w8")
        for d in ("ade20k", "cityscapes")
        for k in ("params", "flops", "latency")
    )
    assert all(r["status"] == "ok" and r["device"] == "cpu" for r in recs)
    latency = next(r for r in recs if r["kind"] == "latency")
    assert latency["provenance"]["device"] == "cpu" and latency["provenance"]["torch"]
    assert (
        latency["settings"]
        == {
            "input_size": [64, 64],
            "num_classes": 150,
            "precision": "fp32",
            "channels_last": False,
            "cuda_graph": False,
            "compile": False,
            "fused": False,
        }
        or latency["dataset"] == "cityscapes"
    )
    flops = next(r for r in recs if r["kind"] == "flops")
    assert flops["value"]["uncounted"] == {}
    (folder,) = [p.parent for p in results.glob("*/records.jsonl")]
    assert folder.name.startswith("cpu-")
    table = (folder / "table.md").read_text()
    assert "CPU" in table and "not a GPU number" in table and "graph" not in table.split("\n")[0]
    frame = pd.read_csv(folder / "table.csv")
    assert list(frame["arch"]) == ["toy-w4", "toy-w8"]
    # measured beside published, delta computed from both
    row = frame.set_index("arch").loc["toy-w8"]
    assert row["params_m_published"] == 0.001
    assert row["params_delta_pct"] == pytest.approx(100 * (row["params_m"] - 0.001) / 0.001, rel=1e-3)
    assert pd.isna(row["ade20k_miou"]) and row["ade20k_miou_published"] == 18.0
    assert (folder / "plots" / "ade20k_eager.png").stat().st_size > 1000
    assert (folder / "plots" / "ade20k_eager.svg").exists()
    assert not (folder / "plots" / "ade20k_graph.png").exists()


def one_line(text: str) -> str:
    """``text`` with its line breaks and runs of spaces as single spaces (rich wraps long lines at 80 columns)."""
    return " ".join(text.split())


def test_the_cpu_note_names_the_modes_this_run_times(finished_run):
    from bench.commands.run import cpu_note

    _, proc = finished_run
    assert (
        "note: mode graph, graph-fp32 need a CUDA GPU and are left out; on the CPU this run times eager "
        "(eager-fused also runs on a CPU: --modes eager,eager-fused)"
    ) in one_line(proc.stderr)
    assert cpu_note(["graph"], ["eager", "eager-fused"]) == (
        "mode graph needs a CUDA GPU and is left out; on the CPU this run times eager, eager-fused"
    )
    assert cpu_note(["graph"], []).startswith("mode graph needs a CUDA GPU and is left out: no latency is measured")


def test_another_machines_records_are_kept_as_references_and_a_rerun_here_resumes(tmp_path, bench_here, monkeypatch):
    results = tmp_path / "results"
    args = ("run", *PLUGIN, "--arch", "toy-w4", "--measure", "params", "--results", str(results))
    there = run_bench(*args, env={"SEGBENCH_MACHINE_ID": "machine-there"})
    assert there.returncode == 0 and "2 ok, 0 failed, 0 skipped" in there.stderr, there.stderr
    monkeypatch.setenv("SEGBENCH_MACHINE_ID", "machine-here")  # read at each run, not once per process
    here = bench_here(*args)
    assert here.returncode == 0 and "2 ok, 0 failed, 0 skipped" in here.stderr, here.stderr  # measured here
    (folder,) = [p.parent for p in results.glob("*/records.jsonl")]
    assert (
        f"records: {folder / 'records.jsonl'} (this machine machine-here); nothing of this machine's to reuse; "
        "2 records of other machines there are kept as references, not reused"
    ) in one_line(here.stderr)
    machines = [r["provenance"]["machine_id"] for r in records(results)]
    assert machines == ["machine-there"] * 2 + ["machine-here"] * 2  # the other machine's records stay
    again = bench_here(*args)
    assert "0 ok, 0 failed, 2 skipped (measured on this machine already)" in one_line(again.stderr), again.stderr
    assert "reusing 2 of this machine's records" in one_line(again.stderr)
    assert len(records(results)) == 4


def test_a_run_beside_reference_results_of_its_device_kind_measures_here_and_leaves_them(finished_run, tmp_path):
    """The quick start in a checkout whose results/ holds a folder named like this machine's."""
    import shutil

    (measured,) = [p.parent for p in finished_run[0].glob("*/records.jsonl")]
    references = shutil.copytree(measured, tmp_path / "results" / measured.name)
    shipped = {p: p.read_bytes() for p in references.rglob("*") if p.is_file()}
    proc = run_bench("run", *PLUGIN, "--arch", "toy-w4", "--measure", "params", "--no-report", cwd=tmp_path)
    assert proc.returncode == 0 and "2 ok, 0 failed, 0 skipped" in proc.stderr, proc.stderr
    assert f"records: runs/{measured.name}/records.jsonl (this machine " in one_line(proc.stderr)
    assert f"reference records of this device kind in results/{measured.name}/ are not reused" in one_line(proc.stderr)
    assert len(records(tmp_path / "runs")) == 2
    assert {p: p.read_bytes() for p in references.rglob("*") if p.is_file()} == shipped


def test_what_users_measure_is_ignored_by_git():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "-q", "runs/cpu-x/records.jsonl"], cwd=ROOT, timeout=30)
    assert ignored.returncode == 0
    shipped = subprocess.run(["git", "check-ignore", "-q", "results/cpu-x/records.jsonl"], cwd=ROOT, timeout=30)
    assert shipped.returncode == 1


def test_rerun_skips_recorded_and_force_redoes(finished_run, bench_here):
    results, _ = finished_run
    before = len(records(results))
    again = bench_here("run", *PLUGIN, "--arch", "toy-w4", "--results", str(results), "--measure", "params")
    assert again.returncode == 0, again.stderr
    assert "0 ok, 0 failed, 2 skipped" in again.stderr
    assert len(records(results)) == before
    forced = bench_here("run", *PLUGIN, "--arch", "toy-w4", "--results", str(results), "--measure", "params", "--force")
    assert "2 ok" in forced.stderr and len(records(results)) == before + 2


def test_a_record_taken_at_another_input_size_is_measured_again_and_kept(finished_run, tmp_path, bench_here):
    """A spec that changes its input size (or classes) makes its recorded counts stale, not reusable."""
    import shutil

    results = tmp_path / "results"
    shutil.copytree(finished_run[0], results)
    (path,) = results.glob("*/records.jsonl")
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        record = json.loads(line)
        if (record["arch"], record["dataset"], record["kind"]) == ("toy-w4", "ade20k", "flops"):
            current = record["settings"]["input_size"]
            record["settings"]["input_size"] = [32, 32]
            record["value"]["gflops"] = 123.0
            lines[i] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")
    proc = bench_here("run", *PLUGIN, "--arch", "toy-w4", "--results", str(results), "--measure", "flops")
    assert proc.returncode == 0 and "1 ok, 0 failed, 1 skipped" in proc.stderr, proc.stderr
    flops = [r for r in records(results) if (r["arch"], r["dataset"], r["kind"]) == ("toy-w4", "ade20k", "flops")]
    assert [r["settings"]["input_size"] for r in flops] == [[32, 32], current]  # the old one is kept, not lost
    frame = pd.read_csv(path.parent / "table.csv").set_index("arch")
    assert frame.loc["toy-w4", "ade20k_gflops"] == pytest.approx(flops[-1]["value"]["gflops"])
    assert frame.loc["toy-w4", "ade20k_input"] == "x".join(map(str, current))


def test_table_and_plot_commands_regenerate_from_records(finished_run, bench_here):
    results, _ = finished_run
    (folder,) = [p.parent for p in results.glob("*/records.jsonl")]
    (folder / "table.md").unlink()
    proc = bench_here("table", *PLUGIN, "--results", str(results))
    assert proc.returncode == 0, proc.stderr
    assert (folder / "table.md").exists() and "| Toy" in proc.stdout
    (folder / "plots" / "ade20k_eager.png").unlink()
    assert bench_here("plot", *PLUGIN, "--results", str(results)).returncode == 0
    assert (folder / "plots" / "ade20k_eager.png").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (("run", "--arch", "toy-w5"), "unknown architecture 'toy-w5'; did you mean"),
        (("run", "--suite", "fastest"), "unknown suite 'fastest'; choose from"),
        (("run", "--arch", "toy-w4", "--device", "cuda"), "no CUDA GPU is visible"),
        (("run", "--arch", "toy-w4", "--dataset", "pascal"), "unknown dataset 'pascal'"),
        (("run", "--arch", "toy-w4", "--shard", "3/2"), "--shard '3/2'"),
        (("run", "--arch", "toy-w4", "--plugin", "no_such_module"), "cannot import model module 'no_such_module'"),
        (("table", "--device", "nowhere"), "no records for device 'nowhere'"),
        (("run", "--arch", "toy-w4", "--modes", "turbo"), "unknown mode 'turbo'; choose from eager, graph"),
        (("run", "--arch", "toy-w4", "--measure", "vibes"), "unknown measurement 'vibes'; choose from"),
        (("plot", "--speed", "warp"), "--speed: unknown axis 'warp'; choose from eager"),
        (("overhead", "--arch", "toy-w4", "--device", "cpu"), "run it on a GPU machine"),
        (("run", "--arch", ""), "--arch: empty; give at least one value"),
        (("run", "--arch", "toy-w4", "--measure", ""), "--measure: empty"),
        (("run", "--arch", "toy-w4", "--suite", "bogus"), "unknown suite 'bogus'"),
        (("run", "--arch", "toy-w4", "--device", "cpu:3"), "the CPU has no device index"),
        (("profile", "toy-w4", "--size", "99999x99999"), "over 16384 pixels a side"),
        (("profile", "fault-build"), "building fault-build failed (ValueError: injected fault in the builder)"),
        (("run", "--arch", "toy-w4", "--job-timeout", "-1"), "--job-timeout -1: pass a positive number"),
        (("run", "--arch", "toy-w4", "--job-timeout", "inf"), "--job-timeout inf: pass a positive number"),
        (("run", "--arch", "toy-w4", "--weights", "/nope.pth"), "--weights is the checkpoint of the mIoU jobs"),
        (("run", "--arch", "toy-w4", "--dataset", ","), "--dataset: empty"),
        (("run", "--arch", "toy-w4", "--modes", "graph", "--measure", "latency", "--device", "cpu"), "CUDA GPU only"),
        (("table", "--protocol", "99"), "no successful record of protocol '99' in"),
        (("run", "--arch", "toy-w4", "--dataset", "ade20k", "--data-root", __file__), "a file, not a folder"),
        (("profile", "segformer-b0", "--size", "8x8", "--steps", "1"), "cannot run at --size 8x8"),
        (("profile", "toy-w4", "--device", "cpu", "--mode", "graph"), "needs a CUDA GPU"),
        (("profile", "toy-w4", "--device", "cpu", "--mode", "fast"), "unknown mode"),
        (("profile", "toy-w4", "--device", "cpu", "--steps", "0"), "--steps 0"),
        (("profile", "toy-w4", "--device", "cpu", "--size", "64"), "not HxW"),
    ],
)
def test_bad_input_is_one_line_and_nonzero_and_loses_nothing(finished_run, args, message, capsys, monkeypatch):
    """`bench.cli.main` in this process (the cases below run the real command line in a subprocess)."""
    import warnings

    from bench.cli import main

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # main() installs its own
    results, _ = finished_run
    paths = list(results.rglob("records.jsonl"))
    before = {p: p.read_bytes() for p in paths}
    code = main([*args, *PLUGIN, "--results", str(results)])
    stderr = capsys.readouterr().err
    assert code == 2
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert {p: p.read_bytes() for p in paths} == before


@pytest.mark.parametrize(
    "args, message",
    [
        (("run", "--arch", "toy-w5"), "unknown architecture 'toy-w5'; did you mean"),
        # argparse's own errors end the process: only the real command line shows them
        (("run", "--job-timeout", "abc"), "invalid float value: 'abc'; see bench run --help"),
        (("nosuch",), "invalid choice: 'nosuch'"),
        (("run", "--bogus"), "bench run: error: unrecognized arguments: --bogus; see bench run --help"),
        (("profile", "toy-w4", "--layout", "nhwc"), "invalid choice"),
    ],
)
def test_bad_input_from_the_command_line_is_one_line_and_nonzero(finished_run, args, message):
    results, _ = finished_run
    paths = list(results.rglob("records.jsonl"))
    before = {p: p.read_bytes() for p in paths}
    proc = run_bench(*args, *PLUGIN, "--results", str(results))
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in paths} == before


def test_unwritable_results_folder(tmp_path, bench_here):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the results folder should be")
    proc = bench_here("run", *PLUGIN, "--arch", "toy-w4", "--results", str(blocker))
    assert proc.returncode == 2
    assert "not writable" in proc.stderr and "--results DIR" in proc.stderr
    assert blocker.read_text() == "a file where the results folder should be"


def test_list_shows_suites_and_plugin_models(bench_here):
    proc = bench_here("list", *PLUGIN)
    assert proc.returncode == 0, proc.stderr
    assert "toy-w4" in proc.stdout and "realtime" in proc.stdout


def test_a_closed_stdout_pipe_stops_the_command_quietly():
    read, write = os.pipe()
    os.close(read)  # `bench list ... | head` after head has gone: every write fails with EPIPE
    try:  # the listing (about 23 kB) overflows stdout's buffer inside the command, not only at exit
        proc = subprocess.run(
            [sys.executable, "-m", "bench", "list", "--suite", "all", "--verbose"],
            cwd=ROOT, stdout=write, stderr=subprocess.PIPE, text=True, timeout=300,
        )  # fmt: skip
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_full_disk_under_the_output_is_one_line():
    with open("/dev/full", "w") as full:  # every write fails with ENOSPC
        proc = subprocess.run(
            [sys.executable, "-m", "bench", "list", "--suite", "all", "--verbose"],
            cwd=ROOT, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300,
        )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("bench: error: No space left on device; free some space"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_plugin_that_takes_a_built_in_name_is_blamed(tmp_path):
    (tmp_path / "dup_plugin.py").write_text(
        "import archs\n"
        "from archs import ArchSpec, register\n"
        "register(ArchSpec(name='segformer-b0', family='X', encoder='x', scale='realtime', paper='', year=2020,"
        " output_stride=8))(lambda *, num_classes: None)\n"
    )
    proc = run_bench("list", "--plugin", "dup_plugin", env={"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"})
    assert proc.returncode == 2, proc.stderr
    assert "cannot import model module 'dup_plugin'" in proc.stderr
    assert "'segformer-b0' is registered twice" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_run_with_data_root_adds_an_miou_record_and_the_table_shows_it(tmp_path, capsys, bench_here):
    from bench.cli import main

    assert main(["data", "synth", "--dataset", "ade20k", "--out", str(tmp_path / "data"), "--num", "3"]) == 0
    results = tmp_path / "results"
    root = tmp_path / "data" / "ADEChallengeData2016"
    args = ("--arch", "toy-w4", "--dataset", "ade20k", "--measure", "params", "--results", str(results))
    proc = run_bench("run", *PLUGIN, *args, "--data-root", str(root), "--weights", "none")
    assert proc.returncode == 0, proc.stderr
    (miou,) = [r for r in records(results) if r["kind"] == "miou"]
    assert miou["status"] == "ok" and 0.0 <= miou["value"]["mIoU"] <= 100.0
    frame = pd.read_csv(next(results.glob("*/table.csv")))
    assert frame.loc[0, "ade20k_miou"] == pytest.approx(miou["value"]["mIoU"], abs=1e-4)
    # the record says what it was measured with; its per-class IoU has its own CSV
    assert miou["value"]["weights"]["source"] == "none" and miou["value"]["identity"]["weights"] == "none"
    per_class = pd.read_csv(miou["value"]["per_class_csv"])
    assert len(per_class) == 150 and per_class["iou"].max() <= 1.0
    # the same weights and data: nothing to measure; other weights: the mIoU is measured again and shown
    again = bench_here("run", *PLUGIN, *args, "--data-root", str(root), "--weights", "none")
    assert again.returncode == 0 and "0 ok, 0 failed, 2 skipped" in again.stderr, again.stderr
    import torch

    from tests.toy_models import ToyNet

    torch.manual_seed(1)
    checkpoint = tmp_path / "toy.pth"
    torch.save(ToyNet(150, 4).state_dict(), checkpoint)
    other = bench_here("run", *PLUGIN, *args, "--data-root", str(root), "--weights", str(checkpoint))
    assert other.returncode == 0 and "1 ok, 0 failed, 1 skipped" in other.stderr, other.stderr
    newest = [r for r in records(results) if r["kind"] == "miou"][-1]
    assert newest["value"]["weights"]["source"] == str(checkpoint)
    assert newest["value"]["identity"]["weights"].startswith("sha256:")
    frame = pd.read_csv(next(results.glob("*/table.csv")))
    assert frame.loc[0, "ade20k_miou"] == pytest.approx(newest["value"]["mIoU"], abs=1e-4)
    capsys.readouterr()
    both = main(["run", *PLUGIN, "--arch", "toy-w4", "--data-root", str(root), "--results", str(results)])
    assert both == 2 and "single --dataset" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (("peers", "--arch", "segformer-b0", "--device", "cpu", "--results", "/dev/null/x"), "/dev/null/x"),
        (("data", "synth", "--dataset", "ade20k", "--out", "/dev/null/x", "--num", "2"), "cannot create /dev/null/x"),
    ],
)
def test_an_impossible_output_folder_is_one_line_before_any_work(args, message, bench_here):
    proc = bench_here(*args)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_latency_line_names_the_layout_a_probing_mode_kept():
    from bench.measurements import summarise
    from bench.store import Record

    value = {"median_ms": 2.0, "fps": 500.0, "spread": 0.001, "channels_last": False}
    line = {"arch": "a", "dataset": "ade20k", "kind": "latency", "mode": "graph", "protocol": "2", "device": "cuda"}
    line |= {"device_slug": "dev", "status": "ok", "value": {**value, "layout_ms": None}}
    assert "kept" not in summarise(Record.from_json(line))
    line["value"]["layout_ms"] = {"channels_last": 5.97, "contiguous": 2.05}
    assert (
        summarise(Record.from_json(line))
        == "2.00 ms median, 500.0 FPS (cuda), NCHW kept (probe 5.97 ms channels_last, 2.05 ms NCHW)"
    )


def test_the_device_ceilings_are_measured_once_per_machine_and_stored_beside_the_records(tmp_path, monkeypatch):
    import io

    from rich.console import Console

    from bench.commands import run
    from bench.store import read_peaks

    asked = []

    def measure(device):  # what the child process sends back on a GPU
        asked.append(device)
        return {"status": "ok", "value": {"matmul_fp16_tflops": 700.0}, "provenance": {"gpu_name": "Test GPU"}}

    monkeypatch.setattr(run.jobs_mod, "measure_device_peaks", measure)
    console = Console(file=io.StringIO())
    run._ensure_peaks(tmp_path, "cuda:0", "machine-a", False, console)
    run._ensure_peaks(tmp_path, "cuda:0", "machine-a", False, console)  # stored for this machine: kept
    assert asked == ["cuda:0"] and read_peaks(tmp_path).machine == "machine-a"
    run._ensure_peaks(tmp_path, "cuda:0", "machine-b", False, console)  # another machine's: measured here
    assert asked == ["cuda:0", "cuda:0"] and read_peaks(tmp_path).peaks == {"matmul_fp16_tflops": 700.0}
    assert read_peaks(tmp_path).machine == "machine-b" and "device ceilings: matmul_fp16_tflops 700.0" in (
        console.file.getvalue()
    )
