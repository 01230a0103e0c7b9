"""Records: typed in and out of JSON, atomic appends, dedupe of finished measurements, torn lines, concurrent
writers."""

import errno
import json
import multiprocessing as mp
import uuid
import warnings
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.io import write_text_atomic
from bench.measurements import MEASUREMENTS
from bench.store import Record, RecordStore, read_records
from tests.conftest import ROOT


def line(arch="a", status="ok", **kw) -> dict:
    """A record as a line of records.jsonl holds it (``kw`` overrides or adds fields)."""
    fields = {"dataset": "ade20k", "kind": "params", "mode": None, "protocol": "1", "device": "cpu"}
    return {"schema": 1, "id": uuid.uuid4().hex, "arch": arch, "device_slug": "dev", "status": status, **fields, **kw}


def rec(arch="a", status="ok", **kw) -> Record:
    return Record.from_json(line(arch, status, **kw))


def test_append_and_read_back(tmp_path):
    store = RecordStore(tmp_path, "dev")
    written = store.append([rec("a"), rec("b", status="error", error="boom")])
    assert len(written) == 2
    assert [r.arch for r in store.read()] == ["a", "b"]
    assert store.done() == {rec("a").key()}


def test_an_ok_measurement_is_recorded_once_unless_forced(tmp_path):
    store = RecordStore(tmp_path, "dev")
    store.append([rec("a")])
    assert store.append([rec("a")]) == []
    assert len(store.append([rec("a")], replace_ok=True)) == 1
    assert len(store.append([rec("a", status="error")])) == 1  # failures are kept, and retried
    assert [r.status for r in store.read()] == ["ok", "ok", "error"]


def test_reuse_is_judged_on_the_newest_ok_record_the_one_the_tables_show(tmp_path):
    store = RecordStore(tmp_path, "dev")
    store.append([rec("a", value={"weights": "A"})])
    store.append([rec("a", value={"weights": "B"})], replace_ok=True)
    store.append([rec("a", status="error")])  # a failure after them changes nothing
    asks_for = lambda weights: lambda r: r.value.data["weights"] == weights  # noqa: E731
    key = rec("a").key()
    assert store.triage(asks_for("B")) == ({key}, set())
    assert store.triage(asks_for("A")) == (set(), {key})  # an older record of A is not what the table shows
    assert store.done() == {key}


def test_an_older_version_s_record_is_done_where_no_later_version_changed_its_measurement(tmp_path):
    from bench.jobs import Job

    store = RecordStore(tmp_path, "dev")
    old = {"dataset": "ade20k", "kind": "latency", "protocol": "1"}
    store.append([rec("a"), rec("a", mode="eager", **old), rec("a", mode="graph", **old)])
    done = store.done()
    # params and eager are the same measurement under version 2; graph is not (its layout is probed now)
    assert Job("a", "ade20k", "params").key("dev") in done and Job("a", "ade20k", "latency", "eager").key("dev") in done
    assert Job("a", "ade20k", "latency", "graph").key("dev") not in done
    assert len(store.append([rec("a", mode="graph", dataset="ade20k", kind="latency", protocol="2")])) == 1
    assert len(store.append([rec("a", mode="eager", dataset="ade20k", kind="latency", protocol="2")])) == 0


def test_torn_last_line_is_skipped_and_next_append_starts_a_new_line(tmp_path):
    store = RecordStore(tmp_path, "dev")
    store.append([rec("a")])
    with open(store.path, "ab") as f:
        f.write(b'{"schema": 1, "arch": "torn", "dat')  # a writer killed mid-line
    with pytest.warns(UserWarning, match="torn"):
        assert [r.arch for r in store.read()] == ["a"]
    with warnings.catch_warnings():  # an append reads the file again: the same bad line is not warned of twice
        warnings.simplefilter("error")
        store.append([rec("b")])
        assert [r.arch for r in read_records(store.path)] == ["a", "b"]


@pytest.mark.parametrize(
    "line",
    [
        {"arch": "x", "dataset": "ade20k", "protocol": "1", "device_slug": "dev", "status": "ok"},  # no kind
        line("x", value="not an object"),
        line("x", device_slug=None),
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
        assert [r.arch for r in store.read()] == ["a", "b"]


BAD_VALUES = {
    "provenance not an object": line("x", provenance="oops"),
    "no device": {k: v for k, v in line("x").items() if k != "device"},
    "params_m a string": line("x", value={"params_m": "3.7"}),
    "params_m a list": line("x", value={"params_m": [3.7]}),
    "params_m a bool": line("x", value={"params_m": True}),
    "gflops a string": line("x", kind="flops", value={"gflops": "1", "input_size": [64, 64]}),
    "input_size a word": line("x", kind="flops", value={"gflops": 1.0, "input_size": "big"}),
    "input_size not positive": line("x", kind="flops", value={"gflops": 1.0, "input_size": [64, 0]}),
    "dynamic without its mean": line("x", kind="flops", value={"dynamic": {"gflops_min": 1.0, "inputs": 4}}),
    "median_ms a string": line("x", kind="latency", mode="eager", value={"median_ms": "x", "fps": 1.0}),
    "a probe's ms a string": line("x", kind="latency", mode="graph", value={"layout_ms": {"contiguous": "2"}}),
    "best_batch zero": line("x", kind="sweep", mode="graph", value={"best_batch": 0, "images_s": 1.0}),
    "settings a list": line("x", settings=[512, 512]),
    "num_classes not positive": line("x", settings={"input_size": [64, 64], "num_classes": 0}),
}


@pytest.mark.parametrize("line", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_a_whole_record_with_values_of_the_wrong_type_is_skipped_like_a_corrupt_line(tmp_path, line):
    store = RecordStore(tmp_path, "dev")
    store.append([rec("a")])
    with open(store.path, "a") as f:
        f.write(json.dumps(line) + "\n")
    with pytest.warns(UserWarning, match=r"records.jsonl: skipping 1 unreadable line \(2\)"):
        assert [r.arch for r in store.read()] == ["a"]
    assert store.done() == {rec("a").key()}  # not done: `bench run` measures it again
    assert json.loads(store.path.read_text().splitlines()[1]) == line  # skipped, not removed


def test_records_of_another_device_are_left_out_of_a_folder_with_one_warning(tmp_path):
    store = RecordStore(tmp_path, "dev")
    store.append([rec("a"), rec("b", device_slug="cpu-x"), rec("c", device_slug="cpu-x")])
    with pytest.warns(UserWarning, match=r"records.jsonl: 2 records of another device \(cpu-x\) are left out of dev's"):
        assert [r.arch for r in store.read()] == ["a"]
    assert len(store.path.read_text().splitlines()) == 3  # left out, not removed
    renamed = tmp_path / "run-1"
    (tmp_path / "dev").rename(renamed)  # a renamed folder: the newest record's device
    with pytest.warns(UserWarning, match=r"1 record of another device \(dev\) is left out of cpu-x's tables"):
        assert [r.arch for r in RecordStore(tmp_path, "run-1").read()] == ["b", "c"]


def test_a_failed_record_is_kept_whatever_its_values(tmp_path):
    store = RecordStore(tmp_path, "dev")
    store.folder.mkdir()
    store.path.write_text(json.dumps(line("a", status="error", error="boom", value={"params_m": "?"}, provenance="?")))
    (failed,) = store.read()
    assert (failed.arch, failed.error, failed.value.data, failed.provenance) == ("a", "boom", {"params_m": "?"}, None)


def test_many_bad_lines_give_one_warning_naming_how_many_and_where(tmp_path):
    store = RecordStore(tmp_path, "dev")
    store.append([rec("a")])
    with open(store.path, "a") as f:
        f.write("[" * 100_000 + "\n")  # too deep for the JSON parser: RecursionError, not a crash
        f.write("garbage\n" * 30)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store.append([rec("b")])  # reads the file for the keys recorded
        assert [r.arch for r in read_records(store.path)] == ["a", "b"]  # read again: not warned again
    (warning,) = caught
    message = str(warning.message)
    assert message.startswith(f"{store.path}: skipping 31 unreadable lines (2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ...)")
    assert "\n" not in message and "`bench run` measures what they held again" in message


@pytest.mark.parametrize("how", ["a folder in its place", "no permission"])
def test_a_records_file_that_cannot_be_read_is_a_one_line_error_naming_it(tmp_path, monkeypatch, capsys, how):
    from bench.cli import main

    store = RecordStore(tmp_path, "dev")
    if how == "a folder in its place":
        store.path.mkdir(parents=True)
    else:  # the tests run as root, who reads any file: the refusal is simulated
        store.append([rec("a")])
        real = Path.read_bytes

        def refuse(path):
            if path == store.path:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real(path)

        monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(BenchError, match=f"{store.path}: cannot read the records"):
        store.read()
    assert main(["table", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bench: error: {store.path}: cannot read the records (") and len(err.splitlines()) == 1
    assert "chmod u+rw" in err and not (tmp_path / "dev" / "table.md").exists()


def test_a_failed_atomic_write_keeps_the_old_file_leaves_no_temporary_and_names_the_path(tmp_path, monkeypatch):
    target = tmp_path / "table.md"
    target.write_text("old")
    real = Path.write_bytes

    def disk_full(path, data):
        real(path, data[:3])  # half written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    with pytest.raises(BenchError, match=rf"cannot write {target} \(No space left on device\)"):
        write_text_atomic(target, "new table")
    monkeypatch.undo()
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["table.md"]
    folder = tmp_path / "speed.md"
    folder.mkdir()  # a folder where the file goes
    with pytest.raises(BenchError, match=rf"cannot write {folder} \(Is a directory\)"):
        write_text_atomic(folder, "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["speed.md", "table.md"] and folder.is_dir()


def test_unwritable_results_folder_is_a_one_line_error(tmp_path):
    from bench.errors import BenchError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(BenchError, match="not writable.*--results"):
        RecordStore(blocker, "dev").ensure_writable()


def _start(target, argses) -> list:
    """Processes running ``target`` on each of ``argses`` at once (spawned: nothing inherited)."""
    procs = [mp.get_context("spawn").Process(target=target, args=args) for args in argses]
    for p in procs:
        p.start()
    return procs


def _join(procs) -> None:
    for p in procs:
        p.join(120)
        assert p.exitcode == 0


def _writer(folder, worker, count):
    store = RecordStore(folder, "dev")
    for i in range(count):
        store.append([rec(f"w{worker}-{i}", traceback="x" * 5000)])


def test_concurrent_writers_never_interleave_lines(tmp_path):
    _join(_start(_writer, [(tmp_path, w, 40) for w in range(4)]))
    lines = (tmp_path / "dev" / "records.jsonl").read_bytes().splitlines()
    assert len(lines) == 160
    assert {json.loads(line)["arch"] for line in lines} == {f"w{w}-{i}" for w in range(4) for i in range(40)}


def _rewriter(path, letter, count):
    for _ in range(count):
        write_text_atomic(path, letter * 20000)


def test_concurrent_rewrites_of_one_file_never_fail_or_show_half_a_file(tmp_path):
    target = tmp_path / "table.md"
    target.write_text("A" * 20000)
    procs = _start(_rewriter, [(target, letter, 300) for letter in "AB"])
    seen = set()
    while any(p.is_alive() for p in procs):
        text = target.read_text()
        seen.add(text[:1])
        assert text in ("A" * 20000, "B" * 20000), f"a reader saw {len(text)} characters"
    _join(procs)  # no writer lost its temporary file to the other
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.md"] and seen


class _Result:
    """What `write_outputs` reads of an evaluation result."""

    arch, dataset, class_names = "toy", "ade20k", ["wall", "sky"]
    protocol = {"mode": "whole", "aug_test": False}
    per_class_iou = per_class_acc = [0.5, float("nan")]
    gt_pixels = pred_pixels = [1, 0]
    synthetic = None

    def __init__(self, tag):
        self.tag = tag

    def as_dict(self, confusion):
        return {"tag": self.tag}


def _evaluator(folder, worker, count):
    from bench.evaluate.outputs import write_outputs

    for i in range(count):
        write_outputs(_Result(f"{worker}-{i}"), folder, {})


def test_evaluations_finishing_together_each_keep_their_files(tmp_path):
    from bench.evaluate.outputs import write_outputs

    _join(_start(_evaluator, [(tmp_path, w, 30) for w in range(2)]))
    tags = sorted(json.loads(path.read_text())["tag"] for path in tmp_path.glob("*.json"))
    assert tags == sorted(f"{w}-{i}" for w in range(2) for i in range(30))  # none replaced another
    pairs = {p.name.removesuffix(".json") for p in tmp_path.glob("*.json")}
    assert pairs == {p.name.removesuffix(".per_class.csv") for p in tmp_path.glob("*.per_class.csv")}
    stray = tmp_path / "stray"
    stray.mkdir()
    taken = write_outputs(_Result("first"), stray, {})[1]
    (stray / taken.name.replace(".json", "-2.per_class.csv")).write_text("someone else's")
    csv_path, json_path = write_outputs(_Result("second"), stray, {})
    if json_path.name.startswith(taken.name.removesuffix(".json")):  # the same second: the next free pair
        assert json_path.name == taken.name.replace(".json", "-3.json")
        assert (stray / taken.name.replace(".json", "-2.per_class.csv")).read_text() == "someone else's"
    assert not list(stray.glob(".*.tmp")) and json.loads(taken.read_text())["tag"] == "first"


def test_a_copy_without_git_names_its_commit_from_the_environment(tmp_path, monkeypatch):
    from bench.provenance import COMMIT_ENV, git_commit

    monkeypatch.delenv(COMMIT_ENV, raising=False)
    assert git_commit(tmp_path / "bare") == {"commit": None, "dirty": None}
    monkeypatch.setenv(COMMIT_ENV, "0123456789abcdef")
    assert git_commit(tmp_path / "exported") == {"commit": "0123456789abcdef", "dirty": None}


def test_a_device_folder_name_drops_trademark_marks():
    from bench.provenance import slugify

    assert slugify("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz") == "intel-xeon-platinum-8481c-cpu-2-70ghz"
    assert slugify("Intel(TM) Core(tm) i7") == "intel-core-i7"
    assert slugify("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert slugify("(R)") == "unknown"


def on(machine, arch="a", **kw):
    """A record of ``arch`` measured on ``machine`` (its `bench.provenance.machine_id`)."""
    return rec(arch, provenance={"machine_id": machine, "git_commit": "0" * 40}, **kw)


def test_another_machines_record_is_not_done_here_and_stays_in_the_file(tmp_path):
    store = RecordStore(tmp_path, "dev")
    store.append([on("machine-a", "a"), on("machine-a", "b"), rec("c")])  # c names no machine
    key = rec("a").key()
    assert store.done("machine-a") == {key, rec("b").key()}
    assert store.done("machine-b") == set()  # neither another machine's records nor one that names none
    assert store.triage(machine="machine-b") == (set(), set())
    written = store.append([on("machine-b", "a")])  # measured here: written beside the other machine's
    assert len(written) == 1 and store.append([on("machine-b", "a")]) == []  # and then done here
    assert [(r.arch, r.machine) for r in store.read() if r.arch == "a"] == [
        ("a", "machine-a"),
        ("a", "machine-b"),
    ]
    assert store.done("machine-b") == {key} and store.done() == {key, rec("b").key(), rec("c").key()}


def test_the_tables_take_this_machines_newest_record_over_a_newer_one_of_another_machine():
    from bench.store import latest_ok

    records = [
        on("here", value={"params_m": 1.0}),
        on("here", value={"params_m": 2.0}),
        on("there", value={"params_m": 3.0}),  # newer, but another machine's
        on("there", "b", value={"params_m": 4.0}),  # measured nowhere else: shown
    ]
    chosen = {key[0]: r.value.params_m for key, r in latest_ok(records, prefer={"here"}).items()}
    assert chosen == {"a": 2.0, "b": 4.0}
    chosen = {key[0]: r.value.params_m for key, r in latest_ok(records, prefer={"elsewhere"}).items()}
    assert chosen == {"a": 3.0, "b": 4.0}  # none of them this machine's: the newest


def test_this_machine_is_named_by_its_installation_and_host_not_its_processor(tmp_path, monkeypatch):
    from bench import provenance

    def identity(machine_file_text, host):
        (tmp_path / "machine-id").write_text(machine_file_text)
        monkeypatch.setattr(provenance, "MACHINE_ID_FILES", (str(tmp_path / "missing"), str(tmp_path / "machine-id")))
        monkeypatch.setattr(provenance.socket, "gethostname", lambda: host)
        provenance.host_id.cache_clear()
        try:
            return provenance.machine_id("cpu")
        finally:
            provenance.host_id.cache_clear()

    monkeypatch.delenv(provenance.MACHINE_ENV, raising=False)
    monkeypatch.setattr(provenance, "cpu_model", lambda: "AMD EPYC")  # every such machine's name
    first = identity("3d1219c7c4c5404aaa1f6d2a48adfda4\n", "vm")
    assert first == identity("3d1219c7c4c5404aaa1f6d2a48adfda4", "vm") and len(first) == 12
    assert identity("0123456789abcdef0123456789abcdef", "vm") != first  # another installation
    assert identity("3d1219c7c4c5404aaa1f6d2a48adfda4", "vm-2") != first  # a clone of it, another host
    monkeypatch.setenv(provenance.MACHINE_ENV, "bench-node-7")
    assert provenance.machine_id("cpu") == "bench-node-7" and provenance.local_machine_ids() == {"bench-node-7"}


@pytest.mark.parametrize("path", sorted((ROOT / "results").glob("*/records.jsonl")), ids=lambda p: p.parent.name)
def test_every_shipped_record_reads_as_a_typed_record_and_writes_back_the_same_line(path):
    lines = [text for text in path.read_text().splitlines() if text.strip()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no line of the reference results is skipped
        records = read_records(path)
    assert len(records) == len(lines)
    assert [json.dumps(r.to_json(), sort_keys=True, default=str) for r in records] == lines
    for record in records:  # an ok record's value is its kind's type, with the fields the tables read
        if record.ok:
            assert type(record.value) is MEASUREMENTS[record.kind].value_type


def test_a_value_reads_its_typed_fields_keeps_the_rest_and_names_the_field_of_a_wrong_type():
    from bench.measurements.flops import DynamicFlops, FlopsValue

    data = {"gflops": 2.5, "input_size": [64, 128], "dynamic": None, "convention": "fvcore"}
    value = FlopsValue.from_json(data)
    assert (value.gflops, value.input_size, value.dynamic) == (2.5, (64, 128), None)
    assert value.to_json() == data  # the fields no annotation names, and a null, stay as written
    built = FlopsValue(gflops=1.0, dynamic=DynamicFlops(gflops_mean=0.5, gflops_min=0.4, gflops_max=0.6, inputs=4))
    assert built.to_json() == {
        "gflops": 1.0,
        "dynamic": {"gflops_mean": 0.5, "gflops_min": 0.4, "gflops_max": 0.6, "inputs": 4},
    }  # a value built in code writes the fields it sets
    assert FlopsValue.from_json(built.to_json()) == built
    with pytest.raises(ValueError, match=r"FlopsValue.input_size: \[64, -1\] is not"):
        FlopsValue.from_json({"input_size": [64, -1]})
    with pytest.raises(ValueError, match=r"DynamicFlops.gflops_mean: missing"):
        FlopsValue.from_json({"dynamic": {"gflops_min": 1.0, "gflops_max": 1.0, "inputs": 4}})


def test_the_device_ceilings_are_stored_beside_the_records_with_the_machine_they_were_measured_on(tmp_path):
    from bench.store import read_peaks, write_peaks

    write_peaks(tmp_path, {"matmul_fp16_tflops": 760.9}, {"gpu_name": "Test GPU", "machine_id": "m-1"})
    stored = read_peaks(tmp_path)
    assert stored.peaks == {"matmul_fp16_tflops": 760.9} and stored.provenance["gpu_name"] == "Test GPU"
    assert stored.machine == "m-1"
    assert read_peaks(tmp_path / "none") is None
