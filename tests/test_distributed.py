"""`torchrun --nproc-per-node 2 -m bench eval` on the CPU (gloo) gives exactly the 1-process matrix."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import archs
from bench.data import synthetic
from bench.evaluate import evaluate
from bench.evaluate.distributed import DistContext, shard_indices
from bench.weights import load_weights
from tests.conftest import ROOT
from tests.toy_models import ToyNet


def test_shards_cover_every_image_once():
    for count, world in ((5, 2), (7, 3), (2, 4)):
        shards = [shard_indices(count, DistContext(rank, world)) for rank in range(world)]
        assert sorted(i for s in shards for i in s) == list(range(count))


def _torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return subprocess.run(
        [*command, "-m", "bench", "eval", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("dist")
    root = synthetic.write_ade20k(base / "ade", 5, sizes=((96, 128), (128, 96), (64, 64)), seed=3)  # odd: uneven shards
    torch.manual_seed(4)
    checkpoint = base / "toy150.pth"
    torch.save(ToyNet(150, 4).state_dict(), checkpoint)
    return base, root, checkpoint


def test_two_gloo_processes_give_exactly_the_single_process_matrix(setup):
    base, root, checkpoint = setup
    results = base / "results"
    args = ["toy-w4", "--plugin", "tests.toy_models", "--dataset", "ade20k", "--data-root", str(root)]
    proc = _torchrun(
        *args, "--weights", str(checkpoint), "--results", str(results), "--device", "cpu", "--workers", "0"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("mIoU") == 1  # rank 0 alone prints
    (json_path,) = results.glob("*/eval/*.json")  # and writes
    saved = json.loads(json_path.read_text())
    assert saved["world_size"] == 2 and saved["num_images"] == 5

    spec = archs.get_spec("toy-w4")
    model = archs.build("toy-w4", num_classes=150)
    load_weights(model, spec, "ade20k", checkpoint)
    single = evaluate(model, spec, "ade20k", root, device="cpu", progress=False, workers=0)
    assert single.world_size == 1 and single.confusion.sum() > 0
    assert np.array_equal(np.array(saved["confusion"]), single.confusion)
    assert saved["mIoU"] == single.mIoU


def test_a_bad_file_on_one_rank_stops_every_rank_without_a_hang(setup, tmp_path):
    _, root, checkpoint = setup
    import shutil

    copy = shutil.copytree(root, tmp_path / "ADEChallengeData2016")
    # image index 1 belongs to rank 1 only
    Image.fromarray(np.full((5, 5), 3, np.uint8)).save(copy / "annotations" / "validation" / "ADE_val_00000002.png")
    args = ["toy-w4", "--plugin", "tests.toy_models", "--dataset", "ade20k", "--data-root", str(copy)]
    proc = _torchrun(
        *args, "--weights", str(checkpoint), "--results", str(tmp_path / "r"), "--device", "cpu", "--workers", "0"
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("bench: error:")]
    # the failing rank always reports; the other may be stopped by torchrun before it prints
    assert 1 <= len(errors) <= 2 and all("ADE_val_00000002.png is 5x5 (WxH)" in line for line in errors)
    # torchrun prints its own traceback for the failed ranks; none of segbench's frames may appear
    assert not any(f'File "{ROOT / package}' in proc.stderr for package in ("bench", "archs", "tests"))
    assert not list((tmp_path / "r").glob("*/eval/*"))


@pytest.mark.parametrize(
    "env, says",
    [
        ({"WORLD_SIZE": "abc"}, "$WORLD_SIZE is 'abc', not a process count or rank; launch with `torchrun"),
        ({"WORLD_SIZE": "2"}, "$WORLD_SIZE is 2 but $RANK is not set; launch with `torchrun"),
        ({"WORLD_SIZE": "2", "RANK": "0"}, "$WORLD_SIZE is 2 but $MASTER_ADDR is not set; launch with `torchrun"),
        (
            {"WORLD_SIZE": "2", "RANK": "x", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"},
            "$RANK is 'x', not a process count or rank",
        ),
        (
            {"WORLD_SIZE": "2", "RANK": "5", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"},
            "$RANK is 5 but $WORLD_SIZE is 2 (ranks 0..1); launch with `torchrun",
        ),
        (
            {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "2", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"},
            "$LOCAL_RANK is 2 but $WORLD_SIZE is 2 (ranks 0..1)",
        ),
    ],
)
@pytest.mark.parametrize("with_benchmark", [False, True])
def test_a_bad_torchrun_environment_is_a_one_line_error(
    setup, tmp_path, monkeypatch, capsys, env, says, with_benchmark
):
    from bench.cli import main

    _, root, _ = setup
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = ["eval", "toy-w4", "--plugin", "tests.toy_models", "--dataset", "ade20k", "--data-root", str(root)]
    args += [
        "--weights",
        "none",
        "--results",
        str(tmp_path / "r"),
        "--device",
        "cpu",
        "--workers",
        "0",
        "--no-progress",
    ]
    code = main(args + (["--benchmark"] if with_benchmark else []))
    err = capsys.readouterr().err
    if with_benchmark and env["WORLD_SIZE"] == "2":
        says = "--benchmark times one process"  # refused before the group is joined
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("bench: error: ") and says in err, err
    assert not list((tmp_path / "r").glob("*/eval/*"))
