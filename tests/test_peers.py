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
        (("--modes", "graph,graph-fused"), ["CUDA modes only; on a CPU pass --modes eager"]),
        (("--sizes", ","), ["--sizes: pass at least one HxW"]),
        (("--modes", ""), ["bench: error: --modes", "at least one"]),  # not "--modes : CUDA modes only"
        (("--modes", ","), ["bench: error: --modes", "at least one"]),
    ],
)
def test_a_peers_run_with_nothing_to_time_on_a_cpu_is_an_error(tmp_path, capsys, options, message):
    from bench.cli import main

    assert main(["peers", "--device", "cpu", "--arch", "segformer-b0", "--results", str(tmp_path), *options]) == 2
    err = capsys.readouterr().err
    assert all(part in err for part in message) and len(err.splitlines()) == 1, err
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


@pytest.fixture
def toy_peers(tmp_path, monkeypatch, capsys):
    """`bench peers` on one toy pair in this process: a function -> (exit status, stderr)."""
    import warnings

    from bench.cli import main

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # main() installs its own
    monkeypatch.setattr(peers, "PAIRS", (peers.PeerPair("toy-w4", "toy peer", lambda n: ToyNet(n, 8), "torch"),))
    monkeypatch.setattr("bench.protocol.SPEED", {"cpu": FAST, "cuda": FAST})

    def run():
        code = main(["peers", "--device", "cpu", "--sizes", "32x32", "--modes", "eager", "--results", str(tmp_path)])
        return code, capsys.readouterr().err

    return run


TORN_AT = {  # where a writer was cut short: in which column, after how many of its characters
    "after the mode": ("mode", 6),
    "inside the mode": ("mode", 4),
    "inside a timing": ("ratio", 2),  # 1.2345 cut to 1.: still a number
    "inside the last value": ("commit", 3),
}


@pytest.mark.parametrize("column, keep", TORN_AT.values(), ids=TORN_AT.keys())
def test_a_torn_peers_row_is_dropped_with_a_warning_and_measured_again(tmp_path, toy_peers, column, keep):
    assert toy_peers()[0] == 0
    (csv,) = tmp_path.glob("*/peers.csv")
    header, row = csv.read_text().splitlines()
    fields = row.split(",")
    at = header.split(",").index(column)
    csv.write_text(f"{header}\n" + ",".join(fields[:at] + [f"{fields[at]},"[:keep]]))  # a writer cut short
    with pytest.warns(UserWarning, match=f"{csv}: dropping 1 incomplete row .*`bench peers` measures them again"):
        code, err = toy_peers()
    assert code == 0 and "1 ok, 0 failed, 0 skipped" in err, err
    table = pd.read_csv(csv)
    assert list(table["mode"]) == ["eager"] and table[["ours_ms", "peer_ms", "ratio"]].notna().all(axis=None)
    code, err = toy_peers()  # now measured: skipped, and nothing written, so nothing said to be
    assert code == 0 and "0 ok, 0 failed, 1 skipped" in err and "wrote" not in err, err
    assert pd.read_csv(csv).equals(table)


def test_a_peers_csv_that_cannot_be_written_stops_the_command_with_one_line_and_keeps_the_old_one(
    tmp_path, toy_peers, monkeypatch
):
    import errno
    from pathlib import Path

    assert toy_peers()[0] == 0
    (csv,) = tmp_path.glob("*/peers.csv")
    before = csv.read_bytes()
    csv.with_name("peers.md").unlink()
    csv.write_bytes(before.replace(b",eager,", b",eager-fused,"))  # a row the next run does not skip
    before = csv.read_bytes()
    real = Path.write_bytes

    def disk_full(path, data):
        real(path, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    code, err = toy_peers()
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        f"bench: error: cannot write {csv} (No space left on device); make it a writable file in a writable folder "
        "with free space (or move aside what is there) and rerun"
    )
    assert csv.read_bytes() == before and sorted(p.name for p in csv.parent.iterdir()) == ["peers.csv"]


def test_a_peers_row_of_a_mode_a_later_version_changed_is_kept_and_measured_again(tmp_path):
    from bench.commands.peers import PeersTable

    folder = tmp_path / "dev"
    folder.mkdir()
    base = {"ours": "toy-w4", "peer": "toy peer", "input": "32x32", "ours_ms": 2.0, "peer_ms": 3.0, "ratio": 1.5}
    # written before rows named their protocol version: version 1
    pd.DataFrame([{**base, "mode": "eager"}, {**base, "mode": "graph"}]).to_csv(folder / "peers.csv", index=False)
    table = PeersTable(folder)
    # eager is the same measurement under version 2, graph is not (its layout is probed now)
    assert table.keys() == {("toy-w4", "toy peer", "32x32", "eager")}
    prov = {"cpu": "test", "torch": "2.x"}
    table.add({**base, "mode": "graph", "ours_ms": 1.0, "ratio": 3.0, "protocol": "2"}, prov)
    table.add({**base, "mode": "eager", "ours_ms": 1.5, "ratio": 2.0, "protocol": "2"}, prov)
    rows = pd.read_csv(folder / "peers.csv")
    assert sorted(zip(rows["mode"], rows["protocol"], rows["ours_ms"])) == [
        ("eager", 2, 1.5),  # replaced: the same measurement
        ("graph", 1, 2.0),  # kept beside the new one
        ("graph", 2, 1.0),
    ]
    assert PeersTable(folder).keys() == {("toy-w4", "toy peer", "32x32", m) for m in ("eager", "graph")}
