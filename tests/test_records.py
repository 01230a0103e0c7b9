"""Records: atomic appends, dedupe of finished measurements, torn lines, concurrent writers."""

import json
import multiprocessing as mp

import pytest

from bench.records import RecordStore, new_record, read_records, record_key


def rec(arch="a", status="ok", **kw):
    return new_record(
        arch=arch, dataset="ade20k", kind="params", mode=None, protocol="1", device_slug="dev", status=status, **kw
    )


def test_append_and_read_back(tmp_path):
    store = RecordStore(tmp_path, "dev")
    written = store.append([rec("a"), rec("b", status="error", error="boom")])
    assert len(written) == 2
    assert [r["arch"] for r in store.read()] == ["a", "b"]
    assert store.done() == {record_key(rec("a"))}


def test_an_ok_measurement_is_recorded_once_unless_forced(tmp_path):
    store = RecordStore(tmp_path, "dev")
    store.append([rec("a")])
    assert store.append([rec("a")]) == []
    assert len(store.append([rec("a")], replace_ok=True)) == 1
    assert len(store.append([rec("a", status="error")])) == 1  # failures are kept, and retried
    assert [r["status"] for r in store.read()] == ["ok", "ok", "error"]


def test_reuse_is_judged_on_the_newest_ok_record_the_one_the_tables_show(tmp_path):
    store = RecordStore(tmp_path, "dev")
    store.append([rec("a", value={"weights": "A"})])
    store.append([rec("a", value={"weights": "B"})], replace_ok=True)
    store.append([rec("a", status="error")])  # a failure after them changes nothing
    asks_for = lambda weights: lambda r: r["value"]["weights"] == weights  # noqa: E731
    key = record_key(rec("a"))
    assert store.triage(asks_for("B")) == ({key}, set())
    assert store.triage(asks_for("A")) == (set(), {key})  # an older record of A is not what the table shows
    assert store.done() == {key}


def test_torn_last_line_is_skipped_and_next_append_starts_a_new_line(tmp_path):
    store = RecordStore(tmp_path, "dev")
    store.append([rec("a")])
    with open(store.path, "ab") as f:
        f.write(b'{"schema": 1, "arch": "torn", "dat')  # a writer killed mid-line
    with pytest.warns(UserWarning, match="torn"):
        assert [r["arch"] for r in store.read()] == ["a"]
    with pytest.warns(UserWarning, match="torn"):  # an append reads the file for the keys already recorded
        store.append([rec("b")])
    with pytest.warns(UserWarning, match="torn"):
        assert [r["arch"] for r in read_records(store.path)] == ["a", "b"]


@pytest.mark.parametrize(
    "line",
    [
        {"arch": "x", "dataset": "ade20k", "protocol": "1", "device_slug": "dev", "status": "ok"},  # no kind
        {**rec("x"), "value": "not an object"},
        {**rec("x"), "device_slug": None},
        ["a", "list"],
    ],
)
def test_a_line_that_is_not_a_whole_record_is_skipped(tmp_path, line):
    store = RecordStore(tmp_path, "dev")
    store.append([rec("a")])
    with open(store.path, "a") as f:
        f.write(json.dumps(line) + "\n")
    with pytest.warns(UserWarning, match="corrupt"):
        store.append([rec("b")])
    with pytest.warns(UserWarning, match="corrupt"):
        assert [r["arch"] for r in store.read()] == ["a", "b"]


def test_unwritable_results_folder_is_a_one_line_error(tmp_path):
    from bench.errors import BenchError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(BenchError, match="not writable.*--results"):
        RecordStore(blocker, "dev").ensure_writable()


def _writer(folder, worker, count):
    store = RecordStore(folder, "dev")
    for i in range(count):
        store.append([rec(f"w{worker}-{i}", payload="x" * 5000)])


def test_concurrent_writers_never_interleave_lines(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(tmp_path, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    lines = (tmp_path / "dev" / "records.jsonl").read_bytes().splitlines()
    assert len(lines) == 160
    assert {json.loads(line)["arch"] for line in lines} == {f"w{w}-{i}" for w in range(4) for i in range(40)}


def test_a_copy_without_git_names_its_commit_from_the_environment(tmp_path, monkeypatch):
    from bench.provenance import COMMIT_ENV, git_commit

    monkeypatch.delenv(COMMIT_ENV, raising=False)
    assert git_commit(tmp_path / "bare") == {"commit": None, "dirty": None}
    monkeypatch.setenv(COMMIT_ENV, "0123456789abcdef")
    assert git_commit(tmp_path / "exported") == {"commit": "0123456789abcdef", "dirty": None}
