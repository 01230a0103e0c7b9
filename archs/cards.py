"""The built-in models' `ArchSpec`s: their facts as data beside their builders, their code from the caller.

``archs/<family>.yaml`` holds a card per model that ``archs/<family>.py`` registers, keyed by the
registry name: the fields of `ArchSpec`, `Published` and `Weights` (archs/base.py), left out where
they keep their default; published figures stay as their sources print them, each with its source.
The builder registers with ``@register(card("name"))``, and the caller adds what is code: a
checkpoint converter other than its format's default, a load-time fix-up, further checkpoint layouts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from archs.base import ArchSpec, CheckpointFormat, Evaluation, Published, Weights
from archs.convert.mmseg import convert_mmseg_state_dict

__all__ = ["CARD_FOLDER", "card"]

CARD_FOLDER = Path(__file__).parent
# libyaml's safe loader where PyYAML was built with it: every `bench` process reads the cards.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# The converter a checkpoint format gets when its card's module names none.
DEFAULT_CONVERTERS: dict[str, Callable[[Mapping], dict]] = {"mmseg": convert_mmseg_state_dict}


@functools.cache
def _cards() -> dict[str, tuple[Path, dict[str, Any]]]:
    """Every card of the folder's YAML files, by name, with the file it is in."""
    found: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path in sorted(CARD_FOLDER.glob("*.yaml")):
        with path.open(encoding="utf-8") as fh:
            try:
                cards = yaml.load(fh, Loader=_LOADER) or {}
            except yaml.YAMLError as exc:
                raise ValueError(f"{path}: not valid YAML ({' '.join(str(exc).split())}); fix the file") from None
        for name, facts in cards.items():
            if name in found:
                raise ValueError(f"{path}: card {name!r} is also in {found[name][0]}; keep one")
            found[name] = (path, facts)
    return found


def _as_size(value: list[int] | None) -> tuple[int, int] | None:
    return None if value is None else (value[0], value[1])


def _published(row: dict[str, Any]) -> Published:
    return Published(**{**row, "input_size": _as_size(row.get("input_size"))})


def card(
    name: str,
    *,
    converter: Callable[[Mapping], dict] | None = None,
    configure: Callable[[nn.Module], None] | None = None,
    formats: tuple[CheckpointFormat, ...] = (),
) -> ArchSpec:
    """The `ArchSpec` of the built-in model ``name``, from its card in ``archs/<family>.yaml``.

    Args:
        name: registry name, the card's key.
        converter: maps the card's checkpoints onto the model's keys (default: their format's converter).
        configure: applied to the model once one of the card's checkpoints has loaded (`Weights.configure`).
        formats: other checkpoint layouts the model loads.
    """
    try:
        path, facts = _cards()[name]
    except KeyError:
        raise ValueError(
            f"no card {name!r} in {CARD_FOLDER}/*.yaml; add one to the YAML file beside its builder's module"
        ) from None
    try:
        return _spec_from_facts(name, dict(facts), converter, configure, formats)
    except (TypeError, ValueError, KeyError) as exc:  # a misspelt or missing field, a value out of range
        raise ValueError(f"{path}: card {name!r}: {exc}") from None


def _spec_from_facts(
    name: str,
    facts: dict[str, Any],
    converter: Callable[[Mapping], dict] | None,
    configure: Callable[[nn.Module], None] | None,
    formats: tuple[CheckpointFormat, ...],
) -> ArchSpec:
    for key in ("mean", "std", "step_of"):
        if key in facts:
            facts[key] = tuple(facts[key])
    facts["input_size"] = {dataset: _as_size(size) for dataset, size in facts.get("input_size", {}).items()}
    facts["published"] = {dataset: _published(row) for dataset, row in facts.get("published", {}).items()}
    facts["evaluation"] = {
        dataset: Evaluation(how["mode"], _as_size(how.get("crop")), _as_size(how.get("stride")))
        for dataset, how in facts.get("evaluation", {}).items()
    }
    facts["weights"] = tuple(
        Weights(**entry, converter=converter or DEFAULT_CONVERTERS.get(entry["format"]), configure=configure)
        for entry in facts.get("weights", ())
    )
    return ArchSpec(name=name, formats=formats, **facts)
