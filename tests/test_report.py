"""Tables and plots from records: measured beside published, missing stays missing, versions apart."""

import dataclasses

import pandas as pd
import pytest

from bench.protocol import PROTOCOL_VERSION
from bench.report.markdown import to_markdown
from bench.report.plot import pareto_front, write_plots
from bench.report.table import build_frame, measured_modes
from bench.report.text import MISSING, MeasuredOn
from bench.store import Record, RecordStore
from tests import toy_models  # noqa: F401 - registers toy-*

GPU = MeasuredOn("cuda", {"gpu_name": "Test GPU"})


def rec(arch, dataset, kind, value, mode=None, protocol=PROTOCOL_VERSION, **fields) -> Record:
    """An ok record of ``value`` (a JSON object, read by its kind's value type as a records file is)."""
    line = {
        "arch": arch, "dataset": dataset, "kind": kind, "mode": mode, "protocol": protocol, "device_slug": "dev",
        "device": "cuda", "status": "ok", "value": value, "provenance": {"gpu_name": "Test GPU"}, **fields,
    }  # fmt: skip
    return Record.from_json(line)


def with_value(record: Record, **changes) -> Record:
    """``record`` with fields of its value changed."""
    value = type(record.value).from_json({**record.value.to_json(), **changes})
    return dataclasses.replace(record, value=value)


RECORDS = [
    rec("toy-w8", "ade20k", "params", {"params_m": 0.0101}),
    rec("toy-w8", "ade20k", "flops", {"gflops": 0.00105, "input_size": [64, 64]}),
    rec("toy-w8", "ade20k", "latency", {"fps": 250.0, "median_ms": 4.0}, mode="eager"),
    rec("toy-w8", "ade20k", "latency", {"fps": 999.0, "median_ms": 1.0}, mode="eager", protocol="0"),
    rec("toy-w4", "ade20k", "params", {"params_m": 0.002}),
]


def test_frame_puts_measured_beside_published_and_keeps_protocols_apart():
    frame = build_frame(RECORDS).set_index("arch")
    row = frame.loc["toy-w8"]
    assert row["params_m"] == 0.0101 and row["params_m_published"] == 0.001
    assert row["ade20k_fps_eager"] == 250.0  # the protocol-0 record never reaches a current cell
    assert pd.isna(row["cityscapes_gflops"]) and pd.isna(row["ade20k_fps_graph"])
    assert pd.isna(frame.loc["toy-w4", "ade20k_gflops"])
    assert build_frame(RECORDS, protocol="0").set_index("arch").loc["toy-w8", "ade20k_fps_eager"] == 999.0


def section(text: str, title: str) -> list[str]:
    """The table lines of one dataset's section of table.md."""
    part = text.split(f"## {title} ", 1)[1].split("\n\n")[1]
    return part.splitlines()


def test_markdown_shows_missing_as_missing_and_says_what_was_measured_where():
    text = to_markdown(build_frame(RECORDS), GPU)
    header, _, *rows = section(text, "ADE20K")
    w8 = next(line for line in rows if "toy-w8" in line)
    w4 = next(line for line in rows if "toy-w4" in line)
    assert "| eager FPS " in header and "| graph FPS " in header and "| GFLOPs (ours / pub.) " in header
    assert text.startswith("# Results on Test GPU") and "one fused multiply-add = one FLOP" in text
    assert "0.01 / 0.0 (+910.0%)" in w8 and "@64x64" in w8 and "| 250 " in w8  # FPS to 3 significant figures
    assert f"| {MISSING} / 0.0 " in w4  # published FLOPs without a measurement
    assert "graph: no measurement of protocol v2 on this device" in text


def test_a_record_counts_under_later_versions_that_did_not_change_its_measurement():
    # version 2 changed mode graph (the layout is probed) but not eager, params or FLOPs
    old = [
        rec("toy-w8", "ade20k", "params", {"params_m": 0.0101}, protocol="1"),
        rec("toy-w8", "ade20k", "latency", {"fps": 250.0, "median_ms": 4.0}, mode="eager", protocol="1"),
        rec("toy-w8", "ade20k", "latency", {"fps": 500.0, "median_ms": 2.0}, mode="graph", protocol="1"),
    ]
    row = build_frame(old, protocol="2").set_index("arch").loc["toy-w8"]
    assert row["params_m"] == 0.0101 and row["ade20k_fps_eager"] == 250.0
    assert pd.isna(row["ade20k_fps_graph"])  # a v1 graph latency is not a v2 one
    v1 = build_frame(old, protocol="1")
    assert v1.set_index("arch").loc["toy-w8", "ade20k_fps_graph"] == 500.0 and v1.attrs["protocol"] == "1"
    assert "Protocol v1:" in to_markdown(v1, GPU) and "channels_last + CUDA-graph" in to_markdown(v1, GPU)
    new = rec("toy-w8", "ade20k", "latency", {"fps": 400.0, "median_ms": 2.5}, mode="graph", protocol="2")
    both = build_frame([*old, new], protocol="2").set_index("arch").loc["toy-w8"]
    assert both["ade20k_fps_graph"] == 400.0 and both["ade20k_fps_eager"] == 250.0


def test_a_record_taken_at_another_size_than_its_spec_gives_now_is_footnoted():
    settings = {"input_size": [32, 32], "num_classes": 150}  # toy-w4's spec says 64x64
    stale = rec("toy-w4", "ade20k", "flops", {"gflops": 0.5, "input_size": [32, 32]}, settings=settings)
    frame = build_frame([*RECORDS, stale])
    assert frame.set_index("arch").loc["toy-w4", "outdated"] == "ADE20K flops at 32x32, 150 classes"
    assert pd.isna(frame.set_index("arch").loc["toy-w8", "outdated"])
    text = to_markdown(frame, MeasuredOn("cuda"))
    assert (
        "Toy" in text
        and "than its spec gives now (ADE20K flops at 32x32, 150 classes); `bench run` measures these again" in text
    )


def test_the_device_line_names_the_newest_commit_and_how_many_the_records_span(tmp_path):
    from bench.report import write_reports

    store = RecordStore(tmp_path, "dev")
    commits = ["a" * 40, None, "b" * 40, "e" * 40, "c" * 40]
    store.append(
        dataclasses.replace(r, provenance={"gpu_name": "Test GPU", "git_commit": c}) for r, c in zip(RECORDS, commits)
    )
    write_reports(tmp_path, "dev", plots=False)
    text = (tmp_path / "dev" / "table.md").read_text()
    # the current protocol's records name a, b and c, one names none, and e is protocol 0's; the newest is c
    assert "segbench cccccccccc (the newest record's; the records span 3 commits, each record names its own)" in text
    one = RecordStore(tmp_path / "one", "dev")
    one.append([dataclasses.replace(RECORDS[0], provenance={"gpu_name": "Test GPU", "git_commit": "d" * 40})])
    write_reports(tmp_path / "one", "dev", plots=False)
    assert "segbench dddddddddd." in (tmp_path / "one" / "dev" / "table.md").read_text()


def test_pareto_front_keeps_only_undominated_points():
    points = [(10, 30), (20, 25), (5, 40), (8, 20), (20, 10)]
    assert pareto_front(points) == [(5, 40), (10, 30), (20, 25)]


def test_plots_are_written_only_for_measured_speed_modes(tmp_path):
    paths = write_plots(build_frame(RECORDS), tmp_path, device="cuda")
    names = sorted(p.name for p in paths)
    assert names == ["ade20k_eager.png", "ade20k_eager.svg"]  # nothing to plot for Cityscapes


def test_the_legend_lists_what_is_plotted_and_a_model_without_miou_is_named_under_the_plot(tmp_path, monkeypatch):
    import matplotlib

    monkeypatch.setitem(matplotlib.rcParams, "svg.fonttype", "none")  # text stays text in the SVG
    records = [*RECORDS, rec("icnet", "ade20k", "latency", {"fps": 30.0, "median_ms": 33.3}, mode="eager")]
    write_plots(build_frame(records), tmp_path, device="cuda")
    svg = (tmp_path / "plots" / "ade20k_eager.svg").read_text()
    assert "not plotted, no ADE20K mIoU: ICNet PSPNet-50 (half width)" in svg  # ICNet publishes no ADE20K mIoU
    assert "measured speed, published mIoU" in svg and "published FPS and mIoU" in svg
    assert "measured speed and mIoU" not in svg  # no mIoU was measured
    write_plots(build_frame(RECORDS), tmp_path / "all", device="cuda")
    assert "not plotted" not in (tmp_path / "all" / "plots" / "ade20k_eager.svg").read_text()


GPU_RECORDS = [
    rec("toy-w8", "ade20k", "params", {"params_m": 0.0101}),
    rec("toy-w8", "ade20k", "flops", {"gflops": 5.0, "input_size": [512, 512]}),
    rec("toy-w8", "ade20k", "latency", {"fps": 100.0, "median_ms": 10.0, "spread": 0.01, "tf32": True}, mode="eager"),
    rec(
        "toy-w8",
        "ade20k",
        "latency",
        {"fps": 400.0, "median_ms": 2.5, "spread": 0.05, "unstable": True},
        mode="graph-fp32",
    ),
    rec(
        "toy-w8",
        "ade20k",
        "latency",
        {
            "fps": 500.0,
            "median_ms": 2.0,
            "spread": 0.001,
            "energy_j_per_frame": 0.25,
            "channels_last": False,
            "layout_ms": {"channels_last": 2.6, "contiguous": 2.0},
        },
        mode="graph",
    ),
    rec("toy-w8", "ade20k", "sweep", {"best_batch": 16, "images_s": 2000.0, "points": []}, mode="graph"),
]
PEAKS = {"matmul_tf32_tflops": 400.0, "matmul_fp32_tflops": 50.0, "matmul_fp16_tflops": 800.0}


def test_roofline_overhead_and_sweep_columns_come_from_the_records_and_the_device_ceilings():
    row = build_frame(GPU_RECORDS, peaks=PEAKS).set_index("arch").loc["toy-w8"]
    assert row["ade20k_tflops_graph"] == 2 * 5e9 / 2e-3 / 1e12  # 5 TFLOP/s
    assert row["ade20k_peak_graph_pct"] == 100 * 5.0 / 800.0
    assert row["ade20k_peak_eager_pct"] == 100 * 1.0 / 400.0  # fp32 with TF32 allowed: the TF32 ceiling
    assert row["ade20k_launch_overhead_pct"] == 75.0 and row["ade20k_bound"] == "launch"
    assert row["ade20k_best_batch"] == 16 and row["ade20k_images_s_best"] == 2000.0
    assert pd.isna(build_frame(GPU_RECORDS).set_index("arch").loc["toy-w8", "ade20k_peak_graph_pct"])  # no ceilings


def test_a_fused_mode_rate_counts_what_its_inference_form_executes():
    fused = rec(
        "toy-w8",
        "ade20k",
        "latency",
        {"fps": 1000.0, "median_ms": 1.0, "spread": 0.001, "inference_form": {"executed_gflops": 2.0}},
        mode="graph-fused",
    )
    frame = build_frame([*GPU_RECORDS, fused], peaks=PEAKS)
    row = frame.set_index("arch").loc["toy-w8"]
    assert row["ade20k_tflops_graph-fused"] == 2 * 2e9 / 1e-3 / 1e12  # 4 TFLOP/s: 2 executed GFLOPs, not 5
    assert row["ade20k_gflops"] == 5.0  # the table's count stays the model's as built
    assert "graph-fused" in measured_modes(frame, "cuda")


def test_a_fused_fp32_mode_splits_its_ceiling_by_what_its_inference_form_executes():
    # built: all convolution (TF32 ceiling 400); executed: half of it, the other half true-fp32 matmuls (50)
    built = rec("toy-w8", "ade20k", "flops", {"gflops": 4.0, "by_operator": {"conv": 4_000_000_000}})
    form = {"executed_gflops": 4.0, "executed_by_operator": {"conv": 2_000_000_000, "linear": 2_000_000_000}}
    timing = {"fps": 1000.0, "median_ms": 1.0, "spread": 0.001, "tf32": True, "tf32_matmul": False}
    fused = rec("toy-w8", "ade20k", "latency", {**timing, "inference_form": form}, mode="eager-fused")
    plain = rec("toy-w8", "ade20k", "latency", timing, mode="eager")
    row = build_frame([built, fused, plain], peaks=PEAKS).set_index("arch").loc["toy-w8"]
    assert row["ade20k_peak_eager_pct"] == pytest.approx(100 * 8.0 / 400.0)
    assert row["ade20k_peak_eager-fused_pct"] == pytest.approx(100 * 8.0 / (4.0 / (2.0 / 400.0 + 2.0 / 50.0)))


def test_cpu_tables_show_the_cpu_modes_that_were_measured():
    cpu = [dataclasses.replace(r, device="cpu") for r in RECORDS]
    assert measured_modes(build_frame(cpu), "cpu") == ["eager"]
    fused = rec("toy-w8", "ade20k", "latency", {"fps": 10.0, "median_ms": 100.0, "spread": 0.01}, mode="eager-fused")
    assert measured_modes(build_frame([*cpu, fused]), "cpu") == ["eager", "eager-fused"]


def test_gpu_tables_gain_the_speed_columns_and_speed_md_flags_unstable_repeats(tmp_path):
    from bench.report.speed_table import to_speed_markdown
    from bench.report.writers import write_tables

    frame = build_frame(GPU_RECORDS, peaks=PEAKS)
    text = to_markdown(frame, GPU)
    header, _, w8 = section(text, "ADE20K")
    for column in ("| eager FPS ", "| graph FPS ", "| graph-fp32 FPS "):
        assert column in header
    assert "400†" in w8 and "| 500 " in w8 and "| 100 " in w8
    # the per-mode details stay in table.csv (and speed.md), out of the table a reader scans
    assert not any(column in text for column in ("img/s", "J/frame", "% peak graph", "2000"))
    assert "† = the timed repeats spread more than 2%" in text and "‡" not in text  # only the marks shown
    speed = to_speed_markdown(frame, dataclasses.replace(GPU, peaks=PEAKS))
    assert "2.50 (5.0)†" in speed and "5.0 (0.6)" in speed and "| launch " in speed and "16: 2000" in speed
    assert "2.00 (0.1) NCHW" in speed and "2.50 (5.0)† N" not in speed  # the layout graph kept; graph-fp32 has one
    unprobed = build_frame([with_value(r, layout_ms=None) for r in GPU_RECORDS], peaks=PEAKS)
    assert " NCHW" not in to_speed_markdown(unprobed, MeasuredOn("cuda", peaks=PEAKS)).split("\n\n")[1]
    paths = write_tables(frame, tmp_path, MeasuredOn("cuda", peaks=PEAKS))
    assert sorted(p.name for p in paths) == ["speed.md", "table.csv", "table.md"]
    cpu_paths = write_tables(build_frame(RECORDS), tmp_path / "cpu", MeasuredOn("cpu"))
    assert sorted(p.name for p in cpu_paths) == ["table.csv", "table.md"]
    assert [p.name for p in write_tables(frame, tmp_path / "csv", GPU, formats=["csv"])] == ["table.csv"]


def test_any_measured_speed_can_be_the_plot_axis(tmp_path):
    frame = build_frame(GPU_RECORDS, peaks=PEAKS)
    assert {p.name for p in write_plots(frame, tmp_path, device="cuda", speeds=("best-batch",))} == {
        "ade20k_best-batch.png", "ade20k_best-batch.svg",
    }  # fmt: skip
    every = {p.stem for p in write_plots(frame, tmp_path, device="cuda")}
    assert every == {"ade20k_eager", "ade20k_graph", "ade20k_graph-fp32", "ade20k_best-batch"}
    assert write_plots(frame, tmp_path / "none", device="cuda", speeds=("compile",)) == []  # not measured: no plot


def test_another_version_s_tables_and_plots_sit_beside_the_current_ones_and_stale_plots_go(tmp_path):
    from bench.report import write_reports

    store = RecordStore(tmp_path, "dev")
    graph_v1 = rec("toy-w8", "ade20k", "latency", {"fps": 500.0, "median_ms": 2.0}, mode="graph", protocol="1")
    store.append([*GPU_RECORDS[:3], graph_v1])  # v2: params, FLOPs, eager; v1 also a graph latency
    folder = tmp_path / "dev"
    (folder / "plots").mkdir(parents=True)
    for ext in ("png", "svg"):  # a plot of an axis the current records no longer measure
        (folder / "plots" / f"ade20k_graph.{ext}").write_text("stale")
    current = {p.relative_to(folder).as_posix() for p in write_reports(tmp_path, "dev") if folder in p.parents}
    assert current == {"table.md", "table.csv", "speed.md", "plots/ade20k_eager.png", "plots/ade20k_eager.svg"}
    assert not (folder / "plots" / "ade20k_graph.png").exists()
    old = {p.relative_to(folder).as_posix() for p in write_reports(tmp_path, "dev", "1") if folder in p.parents}
    assert {"table-v1.md", "table-v1.csv", "speed-v1.md", "plots/ade20k_graph-v1.png"} <= old
    assert "Protocol v1:" in (folder / "table-v1.md").read_text()
    assert "Protocol v2:" in (folder / "table.md").read_text()  # the current table untouched by v1's


def test_a_model_that_adds_a_step_to_another_gets_the_steps_own_cost():
    base, with_crf = "deeplabv1-largefov-vgg16", "deeplabv1-largefov-vgg16-crf"
    records = [
        rec(base, "ade20k", "flops", {"gflops": 129.1, "input_size": [512, 512]}),
        rec(with_crf, "ade20k", "flops", {"gflops": 211.1, "input_size": [512, 512]}),
        rec(base, "ade20k", "latency", {"fps": 200.0, "median_ms": 5.0}, mode="eager"),
        rec(with_crf, "ade20k", "latency", {"fps": 50.0, "median_ms": 20.0}, mode="eager"),
        rec(with_crf, "ade20k", "latency", {"fps": 100.0, "median_ms": 10.0}, mode="graph"),  # base not timed
    ]
    frame = build_frame(records).set_index("arch")
    row = frame.loc[with_crf]
    assert row["step"] == "CRF" and row["ade20k_step_gflops"] == pytest.approx(82.0)
    assert row["ade20k_step_eager_ms"] == pytest.approx(15.0) and pd.isna(row["ade20k_step_graph_ms"])
    assert pd.isna(frame.loc[base, "step"])
    text = to_markdown(build_frame(records), GPU)
    assert "the CRF step alone (this row minus DeepLab v1's, same device and mode): 82.0 GFLOPs, 15.0 ms eager" in text


def test_measured_miou_is_shown_beside_the_published_with_the_difference_in_points():
    records = [rec("toy-w8", "ade20k", "miou", {"mIoU": 16.5}, mode="eager")]  # toy-w8 publishes 18.0
    assert "16.50 / 18.0 (-1.50)" in to_markdown(build_frame(records), MeasuredOn("cuda"))


@pytest.fixture
def table_cli(monkeypatch, capsys):
    """`bench.cli.main` in this process: (exit status, stderr)."""
    import warnings

    from bench.cli import main

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # main() installs its own

    def run(*args):
        code = main(list(args))
        return code, capsys.readouterr().err

    return run


def _store(tmp_path, records):
    store = RecordStore(tmp_path, "dev")
    store.append(records, replace_ok=True)
    return store


def line(record: Record, **changes) -> dict:
    """``record``'s line of records.jsonl, with ``changes`` (a value of the wrong types) written into it."""
    return {**record.to_json(), **changes}


WRONG_TYPES = {
    "provenance a string": line(RECORDS[0], provenance="oops"),
    "params_m a string": line(RECORDS[0], value={"params_m": "0.01"}),
    "gflops a list": line(RECORDS[1], value={"gflops": [1.0], "input_size": [64, 64]}),
    "input_size a word": line(RECORDS[1], value={"gflops": 1.0, "input_size": "big"}),
    "median_ms a string": line(RECORDS[2], value={"fps": 1.0, "median_ms": "x"}),
}


@pytest.mark.parametrize("bad", WRONG_TYPES.values(), ids=WRONG_TYPES.keys())
def test_a_record_of_the_wrong_value_types_is_skipped_with_a_warning_and_the_table_is_written(tmp_path, table_cli, bad):
    import json

    store = _store(tmp_path, RECORDS)
    with open(store.path, "a") as f:  # the newest of its key: the one tabulated
        f.write(json.dumps(bad) + "\n")
    before = store.path.read_bytes()
    with pytest.warns(UserWarning, match=r"records.jsonl: skipping 1 unreadable line \(6\)"):
        code, err = table_cli("table", "--results", str(tmp_path))
    assert code == 0, err
    frame = pd.read_csv(tmp_path / "dev" / "table.csv").set_index("arch")
    assert frame.loc["toy-w8", "params_m"] == 0.0101 and frame.loc["toy-w8", "ade20k_fps_eager"] == 250.0
    assert store.path.read_bytes() == before


@pytest.mark.parametrize(
    "content",
    ['{"peaks": "x"}', '{"peaks": 5}', '{"peaks": [1, 2]}', '{"peaks": {"matmul_fp32_tflops": "b"}}', "[1]", "{", None],
    ids=["string", "number", "list", "string ceiling", "not an object", "unparsable", "a folder"],
)
def test_a_malformed_peaks_file_is_ignored_with_a_warning_naming_it_and_the_fix(tmp_path, content):
    from bench.report import write_reports
    from bench.store import read_peaks

    _store(tmp_path, GPU_RECORDS)
    peaks = tmp_path / "dev" / "peaks.json"
    if content is None:
        peaks.mkdir()
    else:
        peaks.write_text(content)
    with pytest.warns(UserWarning, match=rf"{peaks}: device ceilings unreadable .*delete it, and the next GPU"):
        paths = write_reports(tmp_path, "dev", plots=False)
    assert {p.name for p in paths} == {"table.md", "table.csv", "speed.md", "reported.csv"}
    assert "Device ceilings (matmul TFLOP/s, copy TB/s): not measured" in (tmp_path / "dev" / "speed.md").read_text()
    if peaks.is_dir():
        peaks.rmdir()
    peaks.write_text('{"peaks": {"matmul_fp32_tflops": 50.0}, "provenance": {}}')
    assert read_peaks(tmp_path / "dev").peaks == {"matmul_fp32_tflops": 50.0}


@pytest.mark.parametrize("target", ["reported.csv", "dev/table.md", "dev/plots"])
def test_a_report_file_that_cannot_be_written_is_a_one_line_error_and_leaves_no_temporary(tmp_path, table_cli, target):
    store = _store(tmp_path, RECORDS)
    before = store.path.read_bytes()
    path = tmp_path / target
    if target == "dev/plots":
        path.touch()  # a file where the folder goes
    else:
        path.mkdir()  # a folder where the file goes
    code, err = table_cli("plot", "--results", str(tmp_path))
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("bench: error: ") and str(path) in err and "move aside what is there" in err
    assert not [p for p in tmp_path.rglob(".*.tmp")]
    assert store.path.read_bytes() == before


def test_a_table_of_only_failed_records_says_so_not_that_the_protocol_is_wrong(tmp_path, table_cli):
    failed = [
        rec("toy-w8", "ade20k", kind, None, status="error", error=f"RuntimeError: {kind} broke\n  at line")
        for kind in ("params", "flops")
    ]
    store = _store(tmp_path, failed)
    code, err = table_cli("table", "--results", str(tmp_path))
    assert code == 2 and len(err.splitlines()) == 1, err
    assert (
        f"no successful record in {store.path} (2 failed, the last toy-w8 ade20k flops: RuntimeError: flops broke "
        "at line); `bench run` measures them again" in err
    )
    assert "--protocol" not in err and not (tmp_path / "dev" / "table.md").exists()


def test_speed_has_three_significant_figures_and_a_cpu_table_gives_latency_in_one_unit_per_column():
    from bench.report.text import latency_text, significant

    assert [significant(v) for v in (1234.5, 311.8, 88.84, 5.0, 0.01234, 999.6)] == [
        "1230", "312", "88.8", "5.00", "0.0123", "1000",
    ]  # fmt: skip
    assert latency_text(512.3) == "512 ms" and latency_text(1240.0) == "1.24 s"
    cpu = [dataclasses.replace(r, device="cpu") for r in RECORDS]
    slow = rec("toy-w4", "ade20k", "latency", {"fps": 0.08, "median_ms": 12500.0}, mode="eager", device="cpu")
    text = to_markdown(build_frame([*cpu, slow]), MeasuredOn("cpu"))
    header, _, *rows = section(text, "ADE20K")
    assert "| eager latency (s) " in header and "FPS" not in header.replace("pub. FPS", "")
    w4, w8 = (next(r for r in rows if name in r) for name in ("toy-w4", "toy-w8"))
    assert "| 12.5 " in w4 and "| 0.00400 " in w8
    assert "graph" not in text  # a CPU table explains only the modes it shows
    fast = to_markdown(build_frame(cpu), MeasuredOn("cpu"))
    assert "| eager latency (ms) " in section(fast, "ADE20K")[0] and "| 4.00 " in fast


def test_each_footnote_is_printed_once_and_rows_cite_it_by_number():
    # five real-time models whose published params all count a training-only auxiliary head
    names = ["fcn-mobilenetv2", "pspnet-mobilenetv2", "deeplabv3plus-mobilenetv2", "fcn-r101", "pspnet-r101"]
    records = [rec(name, "ade20k", "params", {"params_m": 10.0}) for name in names]
    text = to_markdown(build_frame(records), MeasuredOn("cuda"))
    assert text.count("include the training-only auxiliary FCN head") == 1
    header, _, *rows = section(text, "ADE20K")
    assert header.rstrip(" |").endswith("Notes") and all(row.rstrip(" |").endswith("| 1") for row in rows)
    assert "\n1. published params (mmseg 0.x get_flops.py" in text
    assert "@HxW" not in text and "†" not in text and "‡" not in text  # no mark shown, none explained


def test_published_fps_name_their_gpu_and_a_row_measured_on_another_gpu_says_which():
    from bench.measurements.latency import published_gpu

    assert published_gpu("FPS = mmseg configs/ccnet README (14.11, V100)") == "V100"
    assert published_gpu("33 ms per image on a TitanX (Maxwell); the SegFormer Table 4 row gives") == "Titan X Maxwell"
    assert published_gpu("SegFormer paper (Xie et al., NeurIPS 2021) Table 4") == "V100"  # the seed table's GPU
    assert published_gpu("paper, Table 3") is None
    records = [rec(name, "cityscapes", "params", {"params_m": 10.0}) for name in ("fcn-mobilenetv2", "icnet")]
    text = to_markdown(build_frame(records), MeasuredOn("cuda"))
    header, _, fcn, icnet = section(text, "Cityscapes")
    assert "| pub. FPS (V100) " in header and "| 14.2 " in fcn and "| 30.3 (Titan X Maxwell) " in icnet


def test_a_table_of_several_machines_names_them_and_each_row_its_own(tmp_path):
    from bench.report import write_reports

    def on(host, record):
        where = {"gpu_name": "Test GPU", "host": host, "machine_id": f"id-{host}"}
        return dataclasses.replace(record, provenance=where)

    store = RecordStore(tmp_path, "dev")
    store.append([on("alpha", rec("toy-w8", "ade20k", "params", {"params_m": 0.0101}))])
    store.append([on("beta", rec("toy-w4", "ade20k", "params", {"params_m": 0.002}))])
    write_reports(tmp_path, "dev", plots=False)
    text = (tmp_path / "dev" / "table.md").read_text()
    assert "measured on 2 machines of this kind (alpha, beta;" in text
    frame = pd.read_csv(tmp_path / "dev" / "table.csv").set_index("arch")
    assert frame.loc["toy-w8", "machines"] == "alpha" and frame.loc["toy-w4", "machines"] == "beta"
    store.append([on("alpha", rec("toy-w4", "ade20k", "params", {"params_m": 0.002}))])
    write_reports(tmp_path, "dev", plots=False)
    assert "machines of this kind" not in (tmp_path / "dev" / "table.md").read_text()  # the newest record is shown
