"""The built-in models' cards (archs/<family>.yaml): each read into its model's spec, mistakes named."""

import shutil

import pytest
import yaml

from archs import base, cards
from archs.convert.mmseg import convert_mmseg_ccnet, convert_mmseg_state_dict


@pytest.fixture
def card_folder(tmp_path, monkeypatch):
    """Point `card` at copies of the card files that a test may edit."""
    for path in cards.CARD_FOLDER.glob("*.yaml"):
        shutil.copy(path, tmp_path / path.name)
    monkeypatch.setattr(cards, "CARD_FOLDER", tmp_path)
    cards._cards.cache_clear()
    yield tmp_path
    cards._cards.cache_clear()


def _edit(path, name, **fields):
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data[name].update(fields)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")


def test_every_built_in_model_has_its_card_beside_its_builder_and_no_card_is_spare():
    built_in = {n: base._entry(n).builder.__module__ for n in base.list_archs()}
    built_in = {n: m for n, m in built_in.items() if m.startswith("archs.")}
    where = {name: f"archs.{path.stem}" for name, (path, _) in cards._cards().items()}
    assert where == built_in


def test_a_card_is_what_the_registry_holds():
    # the registered spec is the card read with its module's converter: same figures, tuples, converters
    spec = base.get_spec("ccnet-r101")
    assert cards.card("ccnet-r101", converter=convert_mmseg_ccnet) == spec
    assert cards.card("ccnet-r101") != spec  # the format's default converter is another function
    assert {w.converter for w in cards.card("ccnet-r101").weights} == {convert_mmseg_state_dict}
    assert base.get_spec("segformer-b5").input_size == {"ade20k": (640, 640)}


def test_the_figures_come_from_the_file(card_folder):
    _edit(card_folder / "fcn.yaml", "fcn-r101", year=1999, published={"ade20k": {"miou": 12.5, "source": "a test"}})
    spec = cards.card("fcn-r101")
    assert spec.year == 1999
    assert spec.published == {"ade20k": base.Published(miou=12.5, source="a test")}


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"yaer": 2015}, r"yaer"),
        ({"scale": "fast"}, r"scale must be one of"),
        ({"published": {"ade20k": {"mIoU": 41.4}}}, r"mIoU"),
    ],
)
def test_a_mistake_in_a_card_names_the_file_and_the_model(card_folder, fields, message):
    _edit(card_folder / "fcn.yaml", "fcn-r101", **fields)
    with pytest.raises(ValueError, match=f"^{card_folder / 'fcn.yaml'}: card 'fcn-r101': .*{message}"):
        cards.card("fcn-r101")


def test_a_missing_or_twice_written_card_is_named(card_folder):
    with pytest.raises(ValueError, match=r"no card 'no-such-model' in .*; add one"):
        cards.card("no-such-model")
    shutil.copy(card_folder / "fcn.yaml", card_folder / "zz.yaml")
    cards._cards.cache_clear()
    with pytest.raises(ValueError, match=r"zz.yaml: card 'fcn-mobilenetv2' is also in .*fcn.yaml; keep one"):
        cards.card("fcn-r101")
