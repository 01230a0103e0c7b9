"""Official checkpoints: where they live, fetching and verifying them, loading them into a model.

Each `archs.ArchSpec` lists its official checkpoints (`archs.Weights`: dataset, ``hf://<hub id>``
or URL, format, sha256, converter). `fetch` downloads one into the cache
(``$SEGBENCH_WEIGHTS`` or ``~/.cache/segbench/weights/<arch>/<dataset>/``) and verifies it:
against the spec's sha256, else the hash prefix in the file name (mmseg and torchvision files end
in ``-<first hex digits of the sha256>.pth``), else the hub's ``X-Linked-Etag`` (the sha256 of an
HF LFS file). `load_weights` reads a checkpoint only through safetensors or
``torch.load(weights_only=True)`` (no pickled code runs), converts it and loads it exactly; a
checkpoint that does not fit says which keys are missing and which unexpected, and one for another
class count is refused.

Conversion always applies the converter of the checkpoint's layout: a file whose keys are exactly
the model's is segbench's own state dict and loads as it is; any other is recognised from its keys
(`recognise_format`: mmseg, hf, torchvision, gscnn) or, for ``official``, taken to be the entry's
declared format, and goes through that format's converter (the spec's entries and `ArchSpec.formats`);
a layout the spec does not load is a one-line error naming what was found and what is accepted.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import archs
from archs import ArchSpec, CheckpointFormat, Weights
from bench import __version__
from bench import protocol as proto
from bench.data.base import expand_user
from bench.errors import BenchError, described, first_line
from bench.io import ensure_writable_folder

CACHE_ENV = "SEGBENCH_WEIGHTS"
HF_FILES = ("model.safetensors", "pytorch_model.bin")
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.(?:pth|pt|bin|safetensors)$")
_SHOWN_KEYS = 4
_WRAPPERS = ("state_dict", "model", "model_state_dict")
SEGBENCH_FORMAT = "segbench"
# Every mmseg decode head (BaseDecodeHead) has its classifier `conv_seg`; a cascade's heads are numbered.
_MMSEG_CLASSIFIER = re.compile(r"decode_head\.(\d+\.)?conv_seg\.weight")


@dataclass(frozen=True)
class LoadedWeights:
    """Which checkpoint was loaded.

    Args:
        source: ``official``, ``none`` (random weights) or the path given.
        path: the file read (None for random weights).
        sha256: its digest.
        uri: where the official file comes from.
        format: the layout it was read in (``segbench`` for the model's own keys).
    """

    source: str
    path: str | None = None
    sha256: str | None = None
    uri: str | None = None
    format: str | None = None


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


def sha256sum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class _RecordingRedirects(urllib.request.HTTPRedirectHandler):
    """Keeps the hub's ``X-Linked-Etag`` (an LFS file's sha256) seen on the redirect to the CDN."""

    linked_etag: str | None = None

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.linked_etag = self.linked_etag or headers.get("X-Linked-Etag")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _expected_digest(weights: Weights, url: str, linked_etag: str | None) -> tuple[str | None, str]:
    """(expected sha256 or its prefix, where it comes from)."""
    if weights.sha256:
        return weights.sha256.lower(), "the spec"
    match = _HASH_IN_NAME.search(url)
    if match and not url.startswith("https://huggingface.co/"):
        return match[1], "the file name"
    etag = (linked_etag or "").strip('"').lower()
    if re.fullmatch(r"[0-9a-f]{64}", etag):
        return etag, "the hub's X-Linked-Etag"
    return None, ""


def _download(url: str, dest: Path, weights: Weights, progress: bool) -> str:
    """Stream ``url`` into ``dest`` (via a temporary file), verify it, return its sha256."""
    redirects = _RecordingRedirects()
    opener = urllib.request.build_opener(redirects)
    request = urllib.request.Request(url, headers={"User-Agent": f"segbench/{__version__}"})
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f"{dest.name}.part-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with opener.open(request, timeout=60) as response, open(part, "wb") as out:
            total, done = int(response.headers.get("Content-Length") or 0), 0
            etag = redirects.linked_etag or response.headers.get("X-Linked-Etag")
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress and total:
                    print(f"\r  {dest.name}: {done / 2**20:.0f} / {total / 2**20:.0f} MiB", end="", flush=True)
        if progress and total:
            print()
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    sha = digest.hexdigest()
    expected, origin = _expected_digest(weights, url, etag)
    if expected and not sha.startswith(expected):
        part.unlink(missing_ok=True)
        raise BenchError(
            f"{url}: sha256 {sha[:16]}... does not match {expected[:16]}... from {origin}; the download is damaged "
            "or the file changed upstream (nothing was kept; run the fetch again)"
        )
    os.replace(part, dest)
    return sha


def fetch(spec: ArchSpec | str, dataset: str, *, force: bool = False, progress: bool = True) -> Path:
    """Download the official ``dataset`` checkpoint of ``spec`` into the cache (if not there); its path.

    Args:
        spec: the spec or registered name.
        dataset: protocol dataset name.
        force: download again even when cached.
        progress: print the download progress.
    """
    spec = archs.get_spec(spec) if isinstance(spec, str) else spec
    weights = official(spec, dataset)
    if not force and (path := cached_path(spec, weights)):
        return path
    folder = cache_dir() / spec.name / dataset
    if weights.uri.startswith(BROWSER_ONLY):
        raise BenchError(
            f"the {spec.name} {dataset} checkpoint is on Google Drive ({weights.uri}), which serves it to browsers "
            "only: download it there and pass --weights PATH (it loads through the spec's converter)"
        )
    ensure_writable_folder(folder, what="checkpoint cache", fix=f"set {CACHE_ENV} to a folder you can write")
    errors = []
    for url in download_urls(weights.uri):
        dest = folder / url.rsplit("/", 1)[-1]
        try:
            _download(url, dest, weights, progress)
            return dest
        except urllib.error.HTTPError as exc:
            errors.append(f"{url}: HTTP {exc.code}")
            if exc.code != 404:
                break
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            errors.append(f"{url}: {getattr(exc, 'reason', exc)}")
            break
    raise BenchError(
        f"cannot download the {spec.name} {dataset} checkpoint ({'; '.join(errors)}); on a machine without internet "
        f"download it elsewhere and pass --weights PATH, or put it in {folder}/"
    )


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (safetensors, or a pickle read with ``weights_only=True``).

    A training checkpoint's ``state_dict`` / ``model`` entry is taken, and a ``module.`` prefix
    (DataParallel) is removed.
    """
    path = expand_user(path, "--weights")
    if not path.is_file():
        raise BenchError(f"--weights {path}: no such file; pass a checkpoint file, or `official`")
    unreadable = "pass a state dict saved with torch.save or safetensors (a fetched file: delete it and fetch it again)"
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the error below says what is wrong with the file
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if refused:
            raise BenchError(
                f"{path}: torch.load(weights_only=True) refuses it (it pickles {refused[1]}); segbench loads tensors "
                "only: re-save its state dict with torch.save or convert it to safetensors"
            ) from None
        reason = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
        reason = reason[1].strip() if reason else "unpickling failed"
        raise BenchError(f"{path}: not a readable checkpoint ({reason}); {unreadable}") from None
    except MemoryError:
        size = path.stat().st_size / 2**30
        raise BenchError(f"{path}: loading it ({size:.1f} GiB) ran out of memory; free memory and run again") from None
    except OSError as exc:  # the file is there but cannot be read: not a damaged checkpoint
        raise BenchError(f"{path}: cannot be read ({first_line(exc)}); check its permissions and the disk") from None
    except Exception as exc:  # noqa: BLE001 - a damaged file fails in the unpickler or parser in many ways
        raise BenchError(f"{path}: not a readable checkpoint ({described(exc, 160)}); {unreadable}") from None
    return checkpoint_tensors(obj, str(path))


def checkpoint_tensors(obj: object, source: str) -> dict[str, torch.Tensor]:
    """The state dict in a loaded checkpoint object (`read_checkpoint` after reading the file).

    A training checkpoint's ``state_dict`` / ``model`` entry is taken, and a ``module.`` prefix
    (DataParallel) is removed.

    Args:
        obj: what ``torch.load`` or safetensors returned.
        source: the file, for messages.
    """
    for _ in range(3):  # a training checkpoint's state dict, possibly nested ({"model": {"state_dict": ...}})
        inner = [obj[k] for k in _WRAPPERS if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)]
        if not inner:
            break
        obj = inner[0]
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, Mapping) else {}
    if not tensors:
        found = "a mapping without tensors" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        raise BenchError(
            f"{source}: holds no state dict (found {found}); pass a model checkpoint: a mapping of parameter names "
            "to tensors, saved with torch.save(model.state_dict(), ...)"
        )
    names = [k for k in tensors if not isinstance(k, str)]
    if names:
        raise BenchError(
            f"{source}: {len(names)} of its keys are not parameter names (first {names[0]!r}); pass a state dict "
            "keyed by parameter names (torch.save(model.state_dict(), ...))"
        )
    dense = [k for k, v in tensors.items() if v.layout != torch.strided or v.is_nested]
    if dense:
        raise BenchError(
            f"{source}: holds sparse or nested tensors ({len(dense)}, first {dense[0]}: {_layout(tensors[dense[0]])}); "
            "save dense ones (tensor.to_dense())"
        )
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _layout(tensor: torch.Tensor) -> str:
    return "nested" if tensor.is_nested else str(tensor.layout).removeprefix("torch.")


def _shown(keys: list[str]) -> str:
    more = f", ... {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else ""
    return ", ".join(keys[:_SHOWN_KEYS]) + more


def _fit(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> float:
    return sum(k in state for k in own) / max(1, len(own))


def _finite(tensor: torch.Tensor) -> bool:
    if not tensor.is_floating_point():
        return True
    if tensor.element_size() == 1:  # float8: no isfinite kernel
        tensor = tensor.float()
    return bool(torch.isfinite(tensor).all())


def _keys(state: Mapping[str, torch.Tensor]) -> set[str]:
    return {k for k in state if not k.endswith("num_batches_tracked")}


def recognise_format(state: Mapping[str, torch.Tensor]) -> str | None:
    """The publisher's layout that ``state``'s keys show (wrappers and DataParallel's prefix removed), or None."""
    prefixes = {key.split(".", 1)[0] for key in state}
    if any(_MMSEG_CLASSIFIER.fullmatch(key) for key in state):
        return "mmseg"
    if "decode_head" in prefixes and len(prefixes) == 2 and "backbone" not in prefixes:
        return "hf"  # a transformers *ForSemanticSegmentation: the base model under its type's name, decode_head
    if {"backbone", "classifier"} <= prefixes:
        return "torchvision"  # torchvision.models.segmentation: backbone, classifier (, aux_classifier)
    if {"mod1", "final_seg"} <= prefixes:
        return "gscnn"  # nv-tlabs/GSCNN: the WideResNet trunk's mod1..mod7 beside the shape stream and heads
    return None


def accepted_formats(spec: ArchSpec, dataset: str) -> dict[str, CheckpointFormat]:
    """The layouts ``spec`` loads, by name: its ``dataset`` entry's first, then its other entries', then its formats."""
    out: dict[str, CheckpointFormat] = {}
    for entry in sorted(spec.weights, key=lambda w: w.dataset != dataset):
        if entry.converter is not None and entry.format not in out:
            out[entry.format] = CheckpointFormat(entry.format, entry.converter, entry.configure, "official")
    for layout in spec.formats:
        out.setdefault(layout.format, layout)
    return out


@dataclass(frozen=True)
class Converted:
    """A checkpoint's tensors in the model's keys.

    Args:
        format: the layout it was read in.
        state: the tensors, keyed as the model's state dict.
        configure: to apply to the model once loaded (`archs.Weights.configure`), or None.
    """

    format: str
    state: dict[str, torch.Tensor]
    configure: Callable[[nn.Module], None] | None = None


def convert(
    spec: ArchSpec,
    dataset: str,
    state: Mapping[str, torch.Tensor],
    own: Mapping[str, torch.Tensor],
    *,
    declared: str | None = None,
    source: str = "the checkpoint",
) -> Converted:
    """``state`` in the model's keys, through the converter of its layout.

    Args:
        spec: the architecture's spec (its official entries and formats).
        dataset: protocol dataset name (its entry's converter comes first).
        state: the checkpoint's tensors (`read_checkpoint`).
        own: the model's state dict.
        declared: the layout the file is known to be in (an official entry's format); None: recognised
            from the keys.
        source: the file, for messages.
    """
    if _keys(state) == _keys(own):
        return Converted(SEGBENCH_FORMAT, dict(state))
    formats = accepted_formats(spec, dataset)
    found = recognise_format(state)
    layout = declared if declared in formats else found
    if layout in formats:
        try:
            converted = formats[layout].converter(state)
        except (KeyError, ValueError, IndexError, RuntimeError) as exc:
            raise BenchError(
                f"{source}: its {layout} layout does not convert onto {spec.name} ({first_line(exc, 400)})"
            ) from None
        return Converted(layout, converted, formats[layout].configure)
    if found is None and _fit(state, own) >= 0.5:  # segbench's own keys, some missing or extra: the load names them
        return Converted(SEGBENCH_FORMAT, dict(state))
    what = f"is in the {found} layout" if found else "is in a layout segbench does not recognise"
    accepted = [f"{name} ({fmt.source})" if fmt.source else name for name, fmt in formats.items()]
    raise BenchError(
        f"{source} {what} (keys {_shown(sorted(state))}); {spec.name} loads: "
        f"{', '.join([*accepted, 'segbench (its own state dict)'])}"
    )


def resized_on_load(model: nn.Module) -> set[str]:
    """State-dict keys whose shape the loaded tensor sets (a module's ``resized_on_load`` names, e.g. ViT's
    positional embeddings, which adopt a checkpoint's grid)."""
    return {
        f"{name}.{attr}" if name else attr
        for name, module in model.named_modules()
        for attr in getattr(module, "resized_on_load", ())
    }


def check_fit(model: nn.Module, state: Mapping[str, torch.Tensor], *, num_classes: int, source: str) -> None:
    """One `BenchError` unless ``state`` has exactly ``model``'s state-dict keys and shapes.

    Args:
        model: the built model (on any device, the meta device included).
        state: tensors in the model's keys.
        num_classes: the dataset's class count (a checkpoint for another count is refused).
        source: the file, for messages.
    """
    own, resized = model.state_dict(), resized_on_load(model)
    for key, value in state.items():
        mine = own.get(key)
        if mine is not None and mine.shape != value.shape and mine.ndim and mine.shape[0] == num_classes:
            if value.ndim == mine.ndim and value.shape[1:] == mine.shape[1:]:
                raise BenchError(
                    f"{source} predicts {value.shape[0]} classes ({key}) but this dataset has {num_classes}; "
                    "use a checkpoint trained on this dataset (`bench weights list`)"
                )
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and k not in resized and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing ({_shown(missing)})"] if missing else []
        parts += [f"{len(unexpected)} unexpected ({_shown(unexpected)})"] if unexpected else []
        parts += [f"{len(shapes)} of another shape ({_shown(shapes)})"] if shapes else []
        raise BenchError(
            f"{source} does not fit the model: keys {'; '.join(parts)}; pass a checkpoint of this architecture "
            "(official format or segbench's own state dict)"
        )


def load_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], *, num_classes: int, source: str) -> None:
    """Load ``state`` into ``model`` exactly; one `BenchError` listing what does not fit.

    Args:
        model: the built model.
        state: tensors in the model's keys.
        num_classes: the dataset's class count (a checkpoint for another count is refused).
        source: the file, for messages.
    """
    check_fit(model, state, num_classes=num_classes, source=source)
    own = model.state_dict()
    meta = [k for k, v in state.items() if v.is_meta]
    if meta:
        raise BenchError(
            f"{source} holds meta tensors (shapes, no data: {len(meta)} of {len(state)}, first {meta[0]}); it was "
            "saved from a model on the meta device: save the state dict of a materialised model"
        )
    kinds = [k for k, v in state.items() if own[k].is_floating_point() and not v.is_floating_point()]
    if kinds:  # torch would cast them (a complex one losing its imaginary part) without a word
        first = kinds[0]
        raise BenchError(
            f"{source} holds {str(state[first].dtype).removeprefix('torch.')} tensors where the model's are floating "
            f"point ({len(kinds)} of {len(state)} tensors, first {first}); pass a checkpoint of this architecture's "
            "trained weights"
        )
    broken = [k for k, v in state.items() if not _finite(v) and _finite(own[k])]
    if broken:
        raise BenchError(
            f"{source} holds NaN or infinite values ({len(broken)} of {len(state)} tensors, first {broken[0]}); "
            "the training run diverged or the file is damaged: pass a checkpoint from before it"
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # torch's message lists every key on its own line: keep the first reason
        reason = re.search(r"(While copying the parameter named .*)", str(exc))
        raise BenchError(
            f"{source} does not load into the model ({reason[1] if reason else first_line(exc)}); pass a checkpoint "
            "of this architecture (official format or segbench's own state dict)"
        ) from None


def load_weights(
    model: nn.Module, spec: ArchSpec, dataset: str, weights: str | Path = "official", *, download: bool = True
) -> LoadedWeights:
    """Load a checkpoint into ``model`` (in place).

    Args:
        model: built by ``archs.build(spec.name, num_classes=<dataset's>)``.
        spec: its spec (official checkpoints, converters).
        dataset: protocol dataset name.
        weights: ``official`` (the cached official file, fetched when missing), ``none`` (keep the random
            weights) or a checkpoint path.
        download: fetch a missing official file (False: a `BenchError` naming the fetch command).
    """
    num_classes = proto.dataset(dataset).num_classes
    if str(weights) == "none":
        return LoadedWeights("none")
    uri = declared = None
    if str(weights) == "official":
        entry = official(spec, dataset)
        uri, declared = entry.uri, entry.format
        path = cached_path(spec, entry)
        if path is None:
            if not download:
                raise BenchError(
                    f"the official {spec.name} {dataset} checkpoint is not in {cache_dir()}; run "
                    f"`bench weights fetch {spec.name} --dataset {dataset}` on a connected machine, "
                    "or pass --weights PATH"
                )
            path = fetch(spec, dataset)
        if entry.sha256 and sha256sum(path) != entry.sha256.lower():
            raise BenchError(f"{path}: sha256 differs from the spec's; delete it and fetch it again")
    else:
        path = expand_user(weights, "--weights")
    state = read_checkpoint(path)
    converted = convert(spec, dataset, state, model.state_dict(), declared=declared, source=str(path))
    load_state_dict(model, converted.state, num_classes=num_classes, source=str(path))
    if converted.configure is not None:
        converted.configure(model)
    return LoadedWeights(str(weights), str(path), sha256sum(path), uri, converted.format)
