"""The one interface: registration, lookup with suggestions, entry-point plugins."""

import inspect
import re
import sys
import textwrap
from pathlib import Path

import pytest

import archs
from archs import base
from tests import toy_models  # noqa: F401 - registers toy-* and fault-*


def test_build_returns_eval_model_with_requested_classes():
    model = archs.build("toy-w8", num_classes=7)
    assert not model.training
    assert model.classifier.out_channels == 7


def test_unknown_name_suggests_close_names():
    with pytest.raises(archs.UnknownArchError, match=r"toy-w8"):
        archs.get_spec("toy-w9")


def test_duplicate_registration_is_refused():
    spec = archs.get_spec("toy-w4")
    with pytest.raises(ValueError, match="registered twice"):
        archs.register(spec)(lambda *, num_classes: None)


@pytest.mark.parametrize(
    "source, reason",
    [
        ("raise RuntimeError('broken at import')", "RuntimeError: broken at import"),
        ("def f(:\n", "SyntaxError"),
        ("import sys\nsys.exit(0)\n", "SystemExit: 0"),  # not the end of the command, with exit status 0
        ("import archs\narchs.register(archs.get_spec('toy-w4'))(lambda *, num_classes: None)\n", "registered twice"),
    ],
)
def test_a_plugin_module_that_fails_to_import_is_a_one_line_error(tmp_path, monkeypatch, source, reason):
    (tmp_path / "plugin_under_test.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "plugin_under_test", raising=False)
    with pytest.raises(archs.UnknownArchError, match="cannot import model module 'plugin_under_test'") as info:
        base.import_models("plugin_under_test")
    assert reason in str(info.value) and "\n" not in str(info.value)


def test_bad_scale_is_refused():
    with pytest.raises(ValueError, match="scale"):
        archs.ArchSpec(name="x", family="X", encoder="X", scale="fast", paper="", year=2020, output_stride=8)


def test_every_built_in_name_is_the_def_of_its_builder():
    """`grep "def <name>"` (dashes as underscores, timm's convention) finds the builder of every built-in model."""
    built_in = [n for n in archs.list_archs() if base._entry(n).builder.__module__.startswith("archs.")]
    assert len(built_in) > 30
    for name in built_in:
        builder = base._entry(name).builder
        expected = name.replace("-", "_")
        assert builder.__name__ == expected, name
        source = inspect.getsource(sys.modules[builder.__module__])
        assert re.search(rf"^def {expected}\(", source, re.M), f"no `def {expected}(` in {builder.__module__}"


def _figure(value: str) -> float | None:
    return float(value) if value.strip() else None


def test_every_built_in_model_has_a_page_that_quotes_its_published_figures():
    """docs/models/<family>.md, named by the module's docstring, lists the spec's published figures as they are."""
    pages = Path(__file__).resolve().parents[1] / "docs" / "models"
    row = re.compile(r"^\| `([\w.-]+)` \| (\w+)[^|]* \|([^|]*)\|([^|]*)\|([^|]*)\|([^|]*)\|$", re.M)
    for name in archs.list_archs():
        module = sys.modules[base._entry(name).builder.__module__]
        if not module.__name__.startswith("archs."):
            continue
        page = re.search(r"docs/models/([\w-]+\.md)", module.__doc__ or "")
        assert page, f"{module.__name__}'s docstring names no docs/models page"
        text = (pages / page[1]).read_text()
        assert f"`{name}`" in text, f"{page[1]} does not mention {name}"
        quoted = {(m[1], m[2]): tuple(_figure(v) for v in m.groups()[2:]) for m in row.finditer(text)}
        for dataset, p in archs.get_spec(name).published.items():
            assert quoted.get((name, dataset)) == (p.params_m, p.gflops, p.fps, p.miou), (page[1], name, dataset)


def test_a_published_evaluation_is_whole_image_or_complete_sliding_windows():
    assert archs.Evaluation().mode == "whole"
    with pytest.raises(ValueError, match="mode"):
        archs.Evaluation("tiles")
    with pytest.raises(ValueError, match="crop and stride"):
        archs.Evaluation("slide", crop=(512, 512))
    with pytest.raises(ValueError, match="crop and stride"):
        archs.Evaluation("whole", crop=(512, 512), stride=(341, 341))
    slide = {name: archs.get_spec(name).evaluation for name in ("segformer-b0", "setr-pup-vit-l")}
    assert slide["segformer-b0"] == {"cityscapes": archs.Evaluation("slide", (1024, 1024), (768, 768))}
    assert slide["setr-pup-vit-l"]["ade20k"] == archs.Evaluation("slide", (512, 512), (341, 341))


def test_list_filters_by_scale():
    assert "toy-w4" in archs.list_archs("realtime")
    assert "toy-w4" not in archs.list_archs("non-realtime")
    assert archs.list() == archs.list_archs()


def test_a_published_count_at_its_own_size_is_measured_at_that_size():
    """The tables compare a count with the published one only when both are at the same input size."""
    from bench.protocol import input_size

    sized = [(n, ds, p.input_size) for n in archs.list_archs() for ds, p in archs.get_spec(n).published.items()]
    sized = [(n, ds, size) for n, ds, size in sized if size is not None]
    assert ("auto-deeplab-f48", "cityscapes", (1025, 2049)) in sized
    for name, ds, size in sized:
        assert input_size(archs.get_spec(name), ds) == size, (name, ds)


@pytest.fixture
def plugin_distribution(tmp_path, monkeypatch):
    """An installed distribution (dist-info on sys.path) exposing a `segbench.archs` entry point."""
    (tmp_path / "segbench_demo_plugin.py").write_text(
        textwrap.dedent(
            """
            from torch import nn
            from archs import ArchSpec, register

            @register(ArchSpec(name="demo-plugin-net", family="Demo", encoder="none", scale="realtime",
                               paper="demo", year=2026, output_stride=1))
            def demo(*, num_classes):
                return nn.Conv2d(3, num_classes, 1)
            """
        )
    )
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('broken on import')\n")
    info = tmp_path / "segbench_demo_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: segbench-demo-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[segbench.archs]\ndemo = segbench_demo_plugin\nbroken = broken_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(base, "_loaded", False)
    yield
    base._REGISTRY.pop("demo-plugin-net", None)
    sys.modules.pop("segbench_demo_plugin", None)


def test_entry_point_plugins_register_and_a_broken_one_only_warns(plugin_distribution):
    with pytest.warns(UserWarning, match="broken"):
        names = archs.list_archs()
    assert "demo-plugin-net" in names
    assert archs.build("demo-plugin-net", num_classes=3).out_channels == 3
