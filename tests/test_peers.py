"""`bench peers`: pairs are well-formed and a comparison row carries both timings and their ratio."""

import pandas as pd
import pytest

import archs
from bench import peers
from bench.errors import BenchError
from bench.protocol import SpeedProtocol
from tests.toy_models import ToyNet

FAST = SpeedProtocol(warmup_steps=1, repeats=2, min_steps=2, min_repeat_s=0.0, max_repeat_s=1.0)


def test_every_pair_names_a_registered_model():
    registered = set(archs.list_archs())
    assert {p.ours for p in peers.PAIRS} <= registered


def test_compare_times_both_sides_and_reports_peer_over_ours():
    pair = peers.PeerPair("toy-w4", "toy peer (wider)", lambda n: ToyNet(n, 16), "torch")
    row = peers.compare(pair, (32, 32), "eager", device="cpu", protocol=FAST, num_classes=5)
    assert row["ours_params_m"] < row["peer_params_m"]
    assert row["ratio"] == pytest.approx(row["peer_ms"] / row["ours_ms"])
    assert row["input"] == "32x32" and row["mode"] == "eager"


def test_torchvision_peer_returns_logits():
    import torch

    model = peers.torchvision_model("fcn_resnet101")(7)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7, 64, 64)


def test_unknown_arch_without_peer_is_an_error():
    with pytest.raises(BenchError, match="no peer for toy-w4"):
        peers.select(["toy-w4"])


@pytest.mark.parametrize(
    "options, message",
    [
        (("--modes", "graph,graph-fused"), "CUDA modes only; on a CPU pass --modes eager"),
        (("--sizes", ","), "--sizes: pass at least one HxW"),
    ],
)
def test_a_peers_run_with_nothing_to_time_on_a_cpu_is_an_error(tmp_path, capsys, options, message):
    from bench.cli import main

    assert main(["peers", "--device", "cpu", "--arch", "segformer-b0", "--results", str(tmp_path), *options]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("variant", ["b0", "b2"])
def test_hf_segformer_peer_is_the_same_size_as_ours(variant):
    peer = peers.hf_segformer(variant)(150)
    ours = archs.build(f"segformer-{variant}", num_classes=150)
    assert sum(p.numel() for p in peer.parameters()) == sum(p.numel() for p in ours.parameters())


def test_the_peers_command_writes_every_row_at_once_and_resumes(tmp_path, monkeypatch, capsys):
    from bench.cli import main

    class Broken(ToyNet):
        def forward(self, x):
            raise RuntimeError("peer failed")

    toy = peers.PeerPair("toy-w4", "toy peer", lambda n: ToyNet(n, 4), "torch")
    wider = peers.PeerPair("toy-w8", "wider toy peer", lambda n: ToyNet(n, 16), "torch")
    broken = peers.PeerPair("toy-w8", "broken peer", lambda n: Broken(n, 4), "torch")
    monkeypatch.setattr(peers, "PAIRS", (toy, wider, broken))
    monkeypatch.setattr("bench.protocol.SPEED", {"cpu": FAST, "cuda": FAST})
    args = ["peers", "--device", "cpu", "--sizes", "32x32", "--results", str(tmp_path)]
    assert main([*args, "--arch", "toy-w4"]) == 0
    (csv,) = tmp_path.glob("*/peers.csv")
    first = pd.read_csv(csv)
    assert list(first["peer"]) == ["toy peer"] and bool(first["same_work"].iloc[0])
    # a failing peer is reported and skipped (exit 1); the rows measured before it, and the earlier run's, stay
    assert main(args) == 1
    table = pd.read_csv(csv)
    assert list(table["peer"]) == ["toy peer", "wider toy peer"]
    assert table[table["peer"] == "toy peer"]["ours_ms"].iloc[0] == first["ours_ms"].iloc[0]  # skipped, not re-run
    wide = table[table["peer"] == "wider toy peer"].iloc[0]
    assert not wide["same_work"] and wide["peer_gflops"] > wide["ours_gflops"]
    assert "broken peer" in capsys.readouterr().err
    assert "wider toy peer" in (csv.parent / "peers.md").read_text()
