"""Checkpoints: safe reading, conversion, exact loading, one-line refusals, the official cache.

Fetching is tested offline with ``file://`` URLs (urllib reads them like https).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import archs
from archs import ArchSpec, Weights
from bench.errors import BenchError
from bench.weights import (
    cache_dir,
    cached_path,
    download_urls,
    fetch,
    list_official,
    load_weights,
    read_checkpoint,
    recognise_format,
)
from tests.toy_models import ToyNet


def _to_foreign(state: dict) -> dict:
    """A checkpoint layout unlike ours: ``stem.0`` -> ``backbone.conv1`` and so on."""
    names = {
        "stem.0.": "backbone.conv1.",
        "stem.1.": "backbone.bn1.",
        "down.": "backbone.conv2.",
        "classifier.": "head.cls.",
    }
    out = {}
    for key, value in state.items():
        for ours, theirs in names.items():
            if key.startswith(ours):
                out[theirs + key[len(ours) :]] = value
    out["auxiliary_head.conv.weight"] = torch.zeros(1)  # training-only, dropped by the converter
    return out


def _from_foreign(state):
    names = {
        "backbone.conv1.": "stem.0.",
        "backbone.bn1.": "stem.1.",
        "backbone.conv2.": "down.",
        "head.cls.": "classifier.",
    }
    out = {}
    for key, value in state.items():
        for theirs, ours in names.items():
            if key.startswith(theirs):
                out[ours + key[len(theirs) :]] = value
    return out


def _official_file(tmp_path, dataset: str, num_classes: int, *, damaged: bool = False):
    torch.manual_seed(7)
    model = ToyNet(num_classes, 4).eval()
    path = tmp_path / "upstream" / f"toy_{dataset}.pth"
    path.parent.mkdir(exist_ok=True)
    torch.save({"meta": {"classes": num_classes}, "state_dict": _to_foreign(model.state_dict())}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    named = path.with_name(f"toy_{dataset}_20260101-{('0' * 8) if damaged else digest[:8]}.pth")
    path.rename(named)
    return model, named


@pytest.fixture
def registered(tmp_path, monkeypatch):
    """A spec registered for this test whose official checkpoints are local files."""
    monkeypatch.setenv("SEGBENCH_WEIGHTS", str(tmp_path / "cache"))
    reference, ade = _official_file(tmp_path, "ade20k", 150)
    _, city = _official_file(tmp_path, "cityscapes", 19, damaged=True)
    spec = ArchSpec(
        name=f"toy-official-{tmp_path.name[-12:].lower()}",
        family="Toy",
        encoder="toy",
        scale="realtime",
        paper="tests",
        year=2026,
        output_stride=4,
        weights=(
            Weights("ade20k", ade.as_uri(), "mmseg", converter=_from_foreign),
            Weights("cityscapes", city.as_uri(), "mmseg", converter=_from_foreign),
        ),
    )
    archs.register(spec)(lambda *, num_classes: ToyNet(num_classes, 4))
    yield spec, reference
    archs.base._REGISTRY.pop(spec.name, None)


def test_official_checkpoint_is_fetched_verified_converted_and_loaded(registered):
    spec, reference = registered
    assert cached_path(spec, spec.weights[0]) is None
    with pytest.raises(BenchError, match=f"bench weights fetch {spec.name} --dataset ade20k"):
        load_weights(ToyNet(150, 4), spec, "ade20k", "official", download=False)
    path = fetch(spec, "ade20k", progress=False)
    assert path == cached_path(spec, spec.weights[0]) and path.parent.name == "ade20k"
    model = archs.build(spec.name, num_classes=150)
    loaded = load_weights(model, spec, "ade20k", "official")
    assert loaded.path == str(path) and loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    assert (spec, spec.weights[0]) in list_official()


def test_a_download_whose_hash_differs_is_refused_and_not_kept(registered):
    spec, _ = registered
    with pytest.raises(BenchError, match="does not match 00000000") as info:
        fetch(spec, "cityscapes", progress=False)
    assert "\n" not in str(info.value)
    assert cached_path(spec, spec.weights[1]) is None
    assert not [p for p in cache_dir().rglob("*") if p.is_file()]  # no partial or damaged file left


def test_checkpoint_formats_are_unwrapped(tmp_path):
    torch.manual_seed(0)
    reference = ToyNet(19, 4).eval()
    spec = ArchSpec(
        name="toy-formats", family="Toy", encoder="t", scale="realtime", paper="t", year=2026, output_stride=4
    )
    files = {
        "plain.pth": reference.state_dict(),
        "wrapped.pth": {"state_dict": reference.state_dict(), "meta": {"epoch": 3}},
        "dataparallel.pt": {f"module.{k}": v for k, v in reference.state_dict().items()},
    }
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "model.safetensors"))
    x = torch.randn(1, 3, 16, 16)
    for name in [*files, "model.safetensors"]:
        model = ToyNet(19, 4).eval()
        load_weights(model, spec, "cityscapes", tmp_path / name)
        with torch.no_grad():
            assert torch.equal(model(x), reference(x)), name


def test_pickled_code_never_runs(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(BenchError, match="weights_only=True"):
        read_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(BenchError, match="not a readable checkpoint"):
        read_checkpoint(tmp_path / "junk.pth")


@pytest.mark.parametrize(
    "name, content",
    [
        ("text.pth", b"e\x00some text that the unpickler reads as opcodes"),
        ("numbers.pth", b"101 102 103\n"),
        ("garbage.safetensors", b"\xff" * 64),
        ("empty.safetensors", b""),
        ("plain.pkl", __import__("pickle").dumps({"w": [1, 2, 3]}, protocol=4)),
    ],
)
def test_a_file_that_is_no_checkpoint_is_a_one_line_error(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(BenchError, match=r"not a readable checkpoint|holds no state dict") as info:
        read_checkpoint(tmp_path / name)
    assert str(tmp_path / name) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("raised", "says"),
    [(MemoryError(), "ran out of memory; free memory"), (PermissionError(13, "Permission denied"), "permissions")],
)
def test_a_checkpoint_that_cannot_be_loaded_is_not_called_damaged(tmp_path, monkeypatch, raised, says):
    torch.save({"w": torch.zeros(1)}, tmp_path / "fine.pth")

    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(torch, "load", fail)
    with pytest.raises(BenchError, match=says) as info:
        read_checkpoint(tmp_path / "fine.pth")
    assert "not a readable checkpoint" not in str(info.value) and str(tmp_path / "fine.pth") in str(info.value)


def test_keys_that_do_not_fit_are_listed_in_one_error(tmp_path):
    spec = ArchSpec(name="toy-keys", family="Toy", encoder="t", scale="realtime", paper="t", year=2026, output_stride=4)
    state = ToyNet(150, 4).state_dict()
    state.pop("down.weight")
    state["extra.bias"] = torch.zeros(2)
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(BenchError) as info:
        load_weights(ToyNet(150, 4), spec, "ade20k", tmp_path / "partial.pth")
    message = str(info.value)
    assert "1 missing (down.weight)" in message and "1 unexpected (extra.bias)" in message and "\n" not in message
    torch.save(ToyNet(19, 4).state_dict(), tmp_path / "city.pth")
    with pytest.raises(
        BenchError, match=r"city.pth predicts 19 classes \(classifier.weight\) but this dataset has 150"
    ):
        load_weights(ToyNet(150, 4), spec, "ade20k", tmp_path / "city.pth")


def test_hub_ids_resolve_to_huggingface_urls():
    assert download_urls("hf://nvidia/segformer-b0-finetuned-ade-512-512") == [
        "https://huggingface.co/nvidia/segformer-b0-finetuned-ade-512-512/resolve/main/model.safetensors",
        "https://huggingface.co/nvidia/segformer-b0-finetuned-ade-512-512/resolve/main/pytorch_model.bin",
    ]
    assert download_urls("hf://org/name@v1.0/weights.bin") == [
        "https://huggingface.co/org/name/resolve/v1.0/weights.bin"
    ]
    url = "https://download.openmmlab.com/mmsegmentation/v0.5/fcn/x/x_20200615_105816-fd192bd5.pth"
    assert download_urls(url) == [url]


def test_weights_cli_lists_the_registry(tmp_path, monkeypatch, capsys):
    from bench.cli import main

    monkeypatch.setenv("SEGBENCH_WEIGHTS", str(tmp_path))
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "fcn-r101" in out and "fcn_r101-d8_512x1024_80k_cityscapes_20200606_113038-3fb937eb.pth" in out
    assert str(tmp_path) in out
    assert main(["weights", "fetch", "toy-w4", "--plugin", "tests.toy_models"]) == 2
    assert "toy-w4 has no official ade20k checkpoint" in capsys.readouterr().err


def test_a_checkpoint_of_meta_tensors_is_a_one_line_error(tmp_path, monkeypatch):
    spec = ArchSpec(name="toy-meta", family="Toy", encoder="t", scale="realtime", paper="t", year=2026, output_stride=4)
    model = ToyNet(150, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({k: v.to("meta") for k, v in ToyNet(150, 4).state_dict().items()}, tmp_path / "meta.pth")
    with pytest.raises(BenchError) as info:
        load_weights(model, spec, "ade20k", tmp_path / "meta.pth")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'meta.pth'} holds meta tensors (shapes, no data: 11 of 11, first stem.")
    assert "save the state dict of a materialised model" in message and "\n" not in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model is untouched

    def refuse(self, state, strict=True):  # any other failure of torch's copy: its first reason, on one line
        raise RuntimeError(
            'Error(s) in loading state_dict for ToyNet:\n\tWhile copying the parameter named "down.bias", '
            "an exception occurred : ('boom',).\n\tWhile copying the parameter named \"classifier.bias\", ..."
        )

    torch.save(ToyNet(150, 4).state_dict(), tmp_path / "fine.pth")
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", refuse)
    with pytest.raises(BenchError) as info:
        load_weights(model, spec, "ade20k", tmp_path / "fine.pth")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'fine.pth'} does not load into the model (While copying the parameter")
    assert '"down.bias"' in message and "classifier" not in message and "\n" not in message


def test_a_path_in_the_home_of_no_user_is_a_one_line_error(monkeypatch, capsys):
    from bench.cli import main

    spec = ArchSpec(name="toy-home", family="Toy", encoder="t", scale="realtime", paper="t", year=2026, output_stride=4)
    for call in (
        lambda: read_checkpoint("~segbench-no-such-user/x.pth"),
        lambda: load_weights(ToyNet(150, 4), spec, "ade20k", "~segbench-no-such-user/x.pth"),
    ):
        with pytest.raises(BenchError, match=r"^--weights ~segbench-no-such-user/x.pth: no such user's home") as info:
            call()
        assert "give the full path" in str(info.value) and "\n" not in str(info.value)
    monkeypatch.setenv("SEGBENCH_WEIGHTS", "~segbench-no-such-user/weights")
    assert main(["weights", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: $SEGBENCH_WEIGHTS ~segbench-no-such-user/weights: no such user's home")
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "spoil, reason",
    [
        (lambda v: v.to(torch.complex64), "holds complex64 tensors where the model's are floating point (10 of 11"),
        (lambda v: v.to(torch.int64), "holds int64 tensors where the model's are floating point (10 of 11 tensors"),
        (lambda v: v > 0, "holds bool tensors where the model's are floating point (10 of 11 tensors, first"),
        (lambda v: torch.full_like(v, float("nan")), "holds NaN or infinite values (10 of 11 tensors, first"),
    ],
    ids=["complex", "int", "bool", "nan"],
)
def test_a_checkpoint_of_tensors_of_another_kind_or_non_finite_is_refused(tmp_path, spoil, reason):
    spec = ArchSpec(name="toy-nan", family="Toy", encoder="t", scale="realtime", paper="t", year=2026, output_stride=4)
    model = ToyNet(150, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: spoil(v) if v.is_floating_point() else v for k, v in ToyNet(150, 4).state_dict().items()}
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(BenchError) as info:
        load_weights(model, spec, "ade20k", tmp_path / "bad.pth")
    assert str(info.value).startswith(f"{tmp_path / 'bad.pth'} {reason}") and "\n" not in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model is untouched


def test_the_cache_without_a_home_directory_is_a_one_line_error(monkeypatch):
    import pwd

    monkeypatch.delenv("SEGBENCH_WEIGHTS", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: (_ for _ in ()).throw(KeyError(uid)))
    with pytest.raises(BenchError, match=r"\$HOME is unset\); set \$SEGBENCH_WEIGHTS to a folder$"):
        cache_dir()
    monkeypatch.setenv("XDG_CACHE_HOME", "~/cache")
    with pytest.raises(BenchError, match=r"^\$XDG_CACHE_HOME ~/cache: no home directory"):
        cache_dir()
    monkeypatch.setenv("XDG_CACHE_HOME", "/var/cache")
    assert cache_dir() == Path("/var/cache/segbench/weights")


def _toy_state():
    return ToyNet(150, 4).state_dict()


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (lambda: {"state_dict": list(_toy_state().values())}, "holds no state dict (found a mapping without tensors)"),
        (lambda: list(_toy_state().values()), "holds no state dict (found a list)"),
        (lambda: {**_toy_state(), 0: torch.zeros(1)}, "1 of its keys are not parameter names (first 0)"),
        (lambda: {0: torch.zeros(1), 1: torch.ones(1)}, "2 of its keys are not parameter names (first 0)"),
        (
            lambda: {k: v.to_sparse() if v.ndim == 4 else v for k, v in _toy_state().items()},
            "holds sparse or nested tensors (3, first stem.0.weight: sparse_coo); save dense ones",
        ),
        (
            lambda: {"a": torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)], layout=torch.jagged)},
            "holds sparse or nested tensors (1, first a: nested)",
        ),
    ],
    ids=["list-in-state-dict", "list", "int-key", "int-keys", "sparse", "nested"],
)
def test_a_checkpoint_in_another_layout_is_a_one_line_error(tmp_path, content, says):
    torch.save(content(), tmp_path / "odd.pth")
    with pytest.raises(BenchError) as info:
        read_checkpoint(tmp_path / "odd.pth")
    assert str(info.value).startswith(f"{tmp_path / 'odd.pth'}: {says}") and "\n" not in str(info.value)


def test_nested_training_checkpoints_and_float8_weights_load(tmp_path):
    spec = ArchSpec(name="toy-f8", family="Toy", encoder="t", scale="realtime", paper="t", year=2026, output_stride=4)
    reference = ToyNet(150, 4)
    torch.save({"model": {"state_dict": reference.state_dict()}, "epoch": 3}, tmp_path / "nested.pth")
    model = ToyNet(150, 4)
    load_weights(model, spec, "ade20k", tmp_path / "nested.pth")
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.state_dict().items())
    f8 = {k: v.to(torch.float8_e4m3fn) if v.is_floating_point() else v for k, v in reference.state_dict().items()}
    save_file(f8, tmp_path / "f8.safetensors")
    load_weights(model, spec, "ade20k", tmp_path / "f8.safetensors")
    assert all(torch.equal(v, f8[k].to(v.dtype)) for k, v in model.state_dict().items())


# --- the layout of a checkpoint decides its converter ----------------------------------------------------


def _mmseg_toy_layout(state: dict) -> dict:
    """A publisher's layout that shares most keys with ToyNet's: only the classifier is named otherwise."""
    return {key.replace("classifier.", "decode_head.conv_seg."): value for key, value in state.items()}


def _from_mmseg_toy_layout(state: dict) -> dict:
    return {key.replace("decode_head.conv_seg.", "classifier."): value for key, value in state.items()}


def _toy_spec(name: str, configure=None) -> ArchSpec:
    weights = Weights("ade20k", "https://example.org/toy.pth", "mmseg", None, _from_mmseg_toy_layout, configure)
    return ArchSpec(
        name=name,
        family="Toy",
        encoder="t",
        scale="realtime",
        paper="t",
        year=2026,
        output_stride=4,
        weights=(weights,),
    )


def test_a_publisher_layout_is_converted_though_most_of_its_keys_are_the_models(tmp_path):
    torch.manual_seed(0)
    reference = ToyNet(150, 4).eval()
    torch.save({"meta": {}, "state_dict": _mmseg_toy_layout(reference.state_dict())}, tmp_path / "toy.pth")
    model = ToyNet(150, 4).eval()
    loaded = load_weights(model, _toy_spec("toy-mostly-ours"), "ade20k", tmp_path / "toy.pth")
    assert loaded.format == "mmseg"
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    torch.save(reference.state_dict(), tmp_path / "own.pth")  # segbench's own keys load as they are
    assert load_weights(ToyNet(150, 4), _toy_spec("toy-mostly-ours"), "ade20k", tmp_path / "own.pth").format == (
        "segbench"
    )


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        (["encoder.stem.weight", "seg.cls.weight"], "is in a layout segbench does not recognise (keys encoder."),
        (["segformer.encoder.block.0.weight", "decode_head.classifier.weight"], "is in the hf layout (keys"),
        (["backbone.conv1.weight", "classifier.4.weight"], "is in the torchvision layout (keys"),
    ],
    ids=["unknown", "hf", "torchvision"],
)
def test_a_layout_the_model_does_not_load_names_what_was_found_and_what_loads(tmp_path, keys, says):
    torch.save({key: torch.zeros(2) for key in keys}, tmp_path / "other.pth")
    with pytest.raises(BenchError) as info:
        load_weights(ToyNet(150, 4), _toy_spec("toy-layouts"), "ade20k", tmp_path / "other.pth")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'other.pth'} {says}") and "\n" not in message
    assert message.endswith("toy-layouts loads: mmseg (official), segbench (its own state dict)")


@pytest.mark.parametrize(
    ("keys", "layout"),
    [
        (["backbone.layer1.0.conv1.weight", "decode_head.conv_seg.weight", "auxiliary_head.conv_seg.weight"], "mmseg"),
        (["backbone.stem.weight", "decode_head.0.conv_seg.weight", "decode_head.1.conv_seg.weight"], "mmseg"),
        (["segformer.encoder.patch_embeddings.0.proj.weight", "decode_head.linear_c.0.proj.weight"], "hf"),
        (["backbone.layer1.0.conv1.weight", "classifier.0.weight", "aux_classifier.0.weight"], "torchvision"),
        (["mod1.conv1.weight", "mod2.block1.bn1.0.weight", "final_seg.0.weight", "dsn1.weight"], "gscnn"),
        (["backbone.patch_embeds.0.proj.weight", "decode_head.linear_c.0.weight"], None),  # segbench's SegFormer
        (["backbone.stem.0.weight", "head.classifier.weight"], None),  # segbench's CNN rows
    ],
)
def test_publisher_layouts_are_recognised_from_their_keys(keys, layout):
    assert recognise_format(dict.fromkeys(keys, torch.zeros(1))) == layout


def test_a_checkpoints_configure_step_runs_once_it_has_loaded_and_never_after_a_refusal(tmp_path):
    configured = []
    spec = _toy_spec("toy-configure", configure=configured.append)
    torch.save({"state_dict": _mmseg_toy_layout(ToyNet(150, 4).state_dict())}, tmp_path / "toy.pth")
    torch.save({"state_dict": _mmseg_toy_layout(ToyNet(19, 4).state_dict())}, tmp_path / "city.pth")
    model = ToyNet(150, 4)
    with pytest.raises(BenchError, match="predicts 19 classes"):
        load_weights(model, spec, "ade20k", tmp_path / "city.pth")
    assert configured == []
    load_weights(model, spec, "ade20k", tmp_path / "toy.pth")
    assert configured == [model]
