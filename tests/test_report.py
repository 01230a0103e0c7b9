"""Tables and plots from records: measured beside published, missing stays missing, versions apart."""

import pandas as pd

from bench.records import new_record
from bench.report.plot import pareto_front, write_plots
from bench.report.table import MISSING, build_frame, to_markdown
from tests import toy_models  # noqa: F401 - registers toy-*


def rec(arch, dataset, kind, value, mode=None, protocol="1"):
    return new_record(
        arch=arch, dataset=dataset, kind=kind, mode=mode, protocol=protocol, device_slug="dev", device="cuda",
        status="ok", value=value, provenance={"gpu_name": "Test GPU"},
    )  # fmt: skip


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
    assert row["ade20k_fps_eager"] == 250.0  # the protocol-0 record never reaches a v1 cell
    assert pd.isna(row["cityscapes_gflops"]) and pd.isna(row["ade20k_fps_graph"])
    assert pd.isna(frame.loc["toy-w4", "ade20k_gflops"])
    assert build_frame(RECORDS, protocol="0").set_index("arch").loc["toy-w8", "ade20k_fps_eager"] == 999.0


def test_markdown_shows_missing_as_missing_and_says_what_was_measured_where():
    text = to_markdown(build_frame(RECORDS), device="cuda", provenance={"gpu_name": "Test GPU"})
    header = text.splitlines()[0]
    w8 = next(line for line in text.splitlines() if "toy-w8" in line)
    w4 = next(line for line in text.splitlines() if "toy-w4" in line)
    assert "graph fp16" in header and "Test GPU" in text and "one fused multiply-add = one FLOP" in text
    assert "0.01 / 0.0 (+910.0%)" in w8 and "@64x64" in w8
    assert f"| {MISSING} / 0.0 " in w4  # published FLOPs without a measurement


def test_pareto_front_keeps_only_undominated_points():
    points = [(10, 30), (20, 25), (5, 40), (8, 20), (20, 10)]
    assert pareto_front(points) == [(5, 40), (10, 30), (20, 25)]


def test_plots_are_written_only_for_measured_speed_modes(tmp_path):
    paths = write_plots(build_frame(RECORDS), tmp_path, device="cuda")
    names = sorted(p.name for p in paths)
    assert names == ["ade20k_eager.png", "ade20k_eager.svg"]  # nothing to plot for Cityscapes
