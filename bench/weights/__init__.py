"""Official checkpoints: where they live, fetching and verifying them, loading them into a model.

    from bench.weights import load_weights
    loaded = load_weights(model, spec, "ade20k", "official")   # or a checkpoint path, or "none"

`registry`: the official entries and the cache; `fetch`: downloading and verifying a file;
`checkpoint`: reading a file's tensors and converting its layout; `load`: loading them exactly.
"""

from __future__ import annotations

from bench.weights.checkpoint import (
    SEGBENCH_FORMAT,
    Converted,
    accepted_formats,
    checkpoint_tensors,
    convert,
    read_checkpoint,
    recognise_format,
)
from bench.weights.fetch import fetch, sha256sum
from bench.weights.load import LoadedWeights, check_fit, load_state_dict, load_weights, resized_on_load
from bench.weights.registry import (
    BROWSER_ONLY,
    CACHE_ENV,
    HF_FILES,
    cache_dir,
    cached_path,
    download_urls,
    list_official,
    official,
)

__all__ = [
    "BROWSER_ONLY",
    "CACHE_ENV",
    "HF_FILES",
    "SEGBENCH_FORMAT",
    "Converted",
    "LoadedWeights",
    "accepted_formats",
    "cache_dir",
    "cached_path",
    "check_fit",
    "checkpoint_tensors",
    "convert",
    "download_urls",
    "fetch",
    "list_official",
    "load_state_dict",
    "load_weights",
    "official",
    "read_checkpoint",
    "recognise_format",
    "resized_on_load",
    "sha256sum",
]
