"""State-dict converters: a published checkpoint's keys onto segbench's modules, one file per layout.

`mmseg` (mmsegmentation's model zoo), `torchvision`, `hf` (transformers' hub ports) and `authors`
(the official repositories' own files). A spec's `Weights` and `CheckpointFormat` entries name them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import Tensor

# (pattern, replacement) pairs applied in order; a replacement may be a function of the match.
RenameRules = Iterable[tuple[str, str | Callable[[re.Match[str]], str]]]


def unwrap(checkpoint: Mapping[str, Any]) -> Mapping[str, Tensor]:
    """The ``state_dict`` of a training checkpoint (``{"meta", "state_dict", ...}``), or the mapping itself."""
    inner = checkpoint.get("state_dict")
    return inner if isinstance(inner, Mapping) else checkpoint


def rename(key: str, rules: RenameRules) -> str:
    """``key`` after every rule of ``rules``, in order."""
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def move_prefixes(state_dict: Mapping[str, Tensor], prefixes: Mapping[str, str]) -> dict[str, Tensor]:
    """The entries whose key starts with a key of ``prefixes``, that prefix replaced by its value."""
    out = {}
    for key, value in state_dict.items():
        for src, dst in prefixes.items():
            if key.startswith(src):
                out[dst + key[len(src) :]] = value
    return out
