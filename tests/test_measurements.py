"""The measurement registry: each kind declared once, read by jobs, records and tables; the activation count."""

import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archs
from bench import jobs
from bench.measurements import KINDS, MEASUREMENTS, Cells, JobContext, defaults, selectable
from bench.measurements.base import Value
from bench.protocol import DATASETS
from bench.report.table import build_frame
from bench.store import Record
from tests import toy_models  # noqa: F401 - registers toy-*
from tests.conftest import run_bench


@pytest.mark.parametrize("measurement", KINDS, ids=lambda m: m.name)
def test_every_kind_declares_a_typed_value_its_jobs_and_table_columns_that_stay_missing_unmeasured(measurement):
    assert MEASUREMENTS[measurement.name] is measurement and issubclass(measurement.value_type, Value)
    assert measurement.value_type.from_json({}).to_json() == {}  # a record may lack any field the tables read
    planned = jobs.plan(["toy-w4"], ["ade20k"], ["eager", "graph"], kinds=[measurement.name], sweep_mode="graph")
    assert planned and {job.kind for job in planned} == {measurement.name}
    # a model with no spec (a plugin not loaded) and no record: every column is missing, none filled in
    columns = measurement.columns(Cells(None, None if not measurement.per_dataset else "ade20k", {}, None))
    assert columns and all(value is None for value in columns.values())
    frame = build_frame([Record.from_json(PARAMS_LINE)])
    assert set(columns) <= set(frame.columns)


PARAMS_LINE = {
    "arch": "toy-w4", "dataset": "ade20k", "kind": "params", "mode": None, "protocol": "2", "device": "cpu",
    "device_slug": "dev", "status": "ok", "value": {"params": 1000, "params_m": 0.001},
}  # fmt: skip


def test_a_run_measures_by_default_what_its_device_can_and_chooses_among_the_rest():
    assert defaults("cuda") == ["params", "flops", "latency", "sweep"]
    assert defaults("cpu") == ["params", "flops", "latency"]
    assert "activations" in selectable() and "miou" not in selectable()  # an mIoU comes with --data-root
    order = [job.kind for job in jobs.plan(["toy-w4"], ["ade20k"], ["eager"], kinds=[m.name for m in KINDS])]
    assert order == ["params", "flops", "latency", "sweep", "miou", "activations"]  # registry order


def _count(model: nn.Module, size: tuple[int, int]) -> dict:
    """The activations value of ``model`` at ``size``, as a job's child measures it."""
    from bench.measurements.activations import count

    job = jobs.Job("toy-w4", "ade20k", "activations")
    options = jobs.RunOptions(device="cpu", device_slug="dev")
    context = JobContext(job, archs.get_spec("toy-w4"), DATASETS["ade20k"], size, torch.device("cpu"), model, options)
    return count(context).to_json()


def test_the_activation_count_is_the_output_size_of_every_convolution_and_matrix_product():
    torch.manual_seed(0)
    value = _count(archs.build("toy-w4", num_classes=150), (64, 64))
    # stem conv 4x32x32, down conv 4x16x16, classifier 150x16x16; BatchNorm and ReLU are not counted
    assert value["activations"] == 4 * 32 * 32 + 4 * 16 * 16 + 150 * 16 * 16
    assert value["by_operator"] == {"conv": value["activations"]} and value["input_size"] == [64, 64]

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Conv2d(3, 24, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q, k, v = self.qkv(x).flatten(2).transpose(1, 2).reshape(1, -1, 3, 8).unbind(2)
            return F.scaled_dot_product_attention(q, k, v)

    attention = _count(Attention().eval(), (4, 4))
    assert attention["by_operator"] == {"conv": 24 * 4 * 4, "scaled_dot_product_attention": 16 * 8}


def test_a_new_kind_runs_end_to_end_from_the_command_line_to_the_table(tmp_path):
    proc = run_bench(
        "run", "--plugin", "tests.toy_models", "--arch", "toy-w4", "--dataset", "ade20k", "--measure", "activations",
        "--results", str(tmp_path), "--no-report",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "ok      toy-w4 ade20k activations: 0.0 M activations at 64x64" in proc.stderr
    (path,) = tmp_path.glob("*/records.jsonl")
    (line,) = [json.loads(text) for text in path.read_text().splitlines()]
    assert line["kind"] == "activations" and line["value"]["activations"] == 43520
    assert (
        run_bench("table", "--plugin", "tests.toy_models", "--results", str(tmp_path), "--format", "csv").returncode
        == 0
    )
    frame = pd.read_csv(path.parent / "table.csv").set_index("arch")
    assert frame.loc["toy-w4", "ade20k_activations_m"] == pytest.approx(0.04352)
    assert not (path.parent / "table.md").exists()  # --format csv: the csv writer alone
