"""Official checkpoints: the registry's entries and where each is cached once fetched.

Each `archs.ArchSpec` lists its official checkpoints (`archs.Weights`: dataset, ``hf://<hub id>``
or URL, format, sha256, converter); a fetched file lives in the cache (``$SEGBENCH_WEIGHTS`` or
``~/.cache/segbench/weights/<arch>/<dataset>/``).
"""

from __future__ import annotations

import os
from pathlib import Path

import archs
from archs import ArchSpec, Weights
from bench.data.base import expand_user
from bench.errors import BenchError

CACHE_ENV = "SEGBENCH_WEIGHTS"
HF_FILES = ("model.safetensors", "pytorch_model.bin")


def cache_dir() -> Path:
    """Root of the checkpoint cache (``$SEGBENCH_WEIGHTS`` or ``~/.cache/segbench/weights``)."""
    if os.environ.get(CACHE_ENV):
        return expand_user(os.environ[CACHE_ENV], f"${CACHE_ENV}")
    if os.environ.get("XDG_CACHE_HOME"):
        return expand_user(os.environ["XDG_CACHE_HOME"], "$XDG_CACHE_HOME") / "segbench" / "weights"
    try:
        return Path.home() / ".cache" / "segbench" / "weights"
    except RuntimeError:  # no $HOME and no entry in the password database
        raise BenchError(
            f"no home directory for the checkpoint cache ($HOME is unset); set ${CACHE_ENV} to a folder"
        ) from None


def official(spec: ArchSpec, dataset: str) -> Weights:
    """The official checkpoint of ``spec`` for ``dataset``; a `BenchError` when there is none."""
    for weights in spec.weights:
        if weights.dataset == dataset:
            return weights
    have = ", ".join(w.dataset for w in spec.weights) or "none"
    raise BenchError(
        f"{spec.name} has no official {dataset} checkpoint (official: {have}); pass --weights PATH to a checkpoint"
    )


def list_official() -> list[tuple[ArchSpec, Weights]]:
    """(spec, checkpoint) of every registered architecture, in name order."""
    return [(spec, w) for spec in map(archs.get_spec, archs.list_archs()) for w in spec.weights]


# Hosts whose files a script cannot download (a confirmation page stands in front of large files).
BROWSER_ONLY = ("https://drive.google.com/",)


def download_urls(uri: str) -> list[str]:
    """Candidate URLs of ``uri``: ``hf://org/name[@revision][/file]`` or a URL as is."""
    if not uri.startswith("hf://"):
        return [uri]
    parts = uri[len("hf://") :].split("/")
    repo, files = "/".join(parts[:2]), ["/".join(parts[2:])] if len(parts) > 2 else list(HF_FILES)
    repo, _, revision = repo.partition("@")
    return [f"https://huggingface.co/{repo}/resolve/{revision or 'main'}/{name}" for name in files]


def cached_path(spec: ArchSpec, weights: Weights) -> Path | None:
    """The cached file of ``weights``, or None when it has not been fetched."""
    folder = cache_dir() / spec.name / weights.dataset
    if weights.uri.startswith(BROWSER_ONLY):
        return None
    for url in download_urls(weights.uri):
        path = folder / url.rsplit("/", 1)[-1]
        if path.is_file():
            return path
    return None
