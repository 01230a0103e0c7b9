"""Generated datasets in the real on-disk layouts, for smoke tests and throughput benchmarks.

Label maps are random rectangles on a 16-pixel grid (JPEG's largest block, so a region's colour
survives compression). Each raw label value ``v`` is painted with a colour code that a
per-pixel classifier can read back, plus uniform noise: channel levels ``LEVELS[v // 36]``,
``LEVELS[v // 6 % 6]``, ``LEVELS[v % 6]``, 42 apart, so noise and JPEG error below 21 never move
a pixel to another code. `code_colors` gives the colour of each train id: tests build an oracle
model from it that predicts the ground truth exactly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from bench.data import cityscapes
from bench.data.base import SYNTHETIC_MARKER, DataError
from bench.io import ensure_writable_folder, write_text_atomic

LEVELS = np.array([21, 64, 106, 149, 191, 234], dtype=np.int16)
GRID = 16
# (H, W) of generated ADE20K images: mostly short side 512, one size the test pipeline resizes
ADE20K_SIZES = ((512, 683), (512, 512), (683, 512), (512, 768), (384, 512))
CITYSCAPES_SIZE = (1024, 2048)
CITIES = ("frankfurt", "lindau", "munster")


def code_color(values: np.ndarray | int) -> np.ndarray:
    """The colour (``..., 3`` int16) painted for raw label value(s) ``values`` (0..215)."""
    values = np.asarray(values, dtype=np.int64)
    return np.stack([LEVELS[values // 36], LEVELS[values // 6 % 6], LEVELS[values % 6]], axis=-1)


def code_colors(dataset: str) -> np.ndarray:
    """``(num_classes, 3)``: the colour of each train id in generated images of ``dataset``."""
    if dataset == "ade20k":
        return code_color(np.arange(1, 151))  # train id k is annotation value k + 1
    if dataset == "cityscapes":
        return code_color(np.array(cityscapes.TRAIN_TO_LABEL_ID))
    raise ValueError(f"unknown dataset {dataset!r}")


def random_label_map(rng: np.random.Generator, size: tuple[int, int], values: np.ndarray) -> np.ndarray:
    """``uint8 (H, W)``: a background value and 3..12 rectangles of other values, on the 16-px grid."""
    h, w = size
    gh, gw = -(-h // GRID), -(-w // GRID)
    coarse = np.full((gh, gw), rng.choice(values), dtype=np.uint8)
    for _ in range(rng.integers(3, 13)):
        y0, x0 = rng.integers(0, gh), rng.integers(0, gw)
        y1, x1 = y0 + rng.integers(1, max(2, gh // 2)), x0 + rng.integers(1, max(2, gw // 2))
        coarse[y0:y1, x0:x1] = rng.choice(values)
    return np.repeat(np.repeat(coarse, GRID, axis=0), GRID, axis=1)[:h, :w]


def render(rng: np.random.Generator, label: np.ndarray, noise: int) -> np.ndarray:
    """``uint8 (H, W, 3)`` image: the code colour of every pixel's raw label, plus uniform noise."""
    image = code_color(label)
    if noise:
        image = image + rng.integers(-noise, noise + 1, size=image.shape, dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


# Generated images stay within what the loader decodes without PIL's decompression-bomb warning
# (Image.MAX_IMAGE_PIXELS, 89 MP; rendering a pair takes about 30 bytes a pixel: 2.7 GB at the limit)
# and within JPEG's largest side.
MAX_SIDE = 65500
# the options of the set a split folder holds: a rerun resumes it, and an evaluation says the set is generated
MANIFEST = SYNTHETIC_MARKER
FORMATS = {".jpg": "JPEG", ".png": "PNG"}


def _check_sizes(sizes: tuple[tuple[int, int], ...]) -> None:
    limit = Image.MAX_IMAGE_PIXELS or MAX_SIDE * MAX_SIDE
    for h, w in sizes:
        if min(h, w) < 1 or max(h, w) > MAX_SIDE or h * w > limit:
            raise DataError(
                f"--size {h}x{w}: pass at most {limit / 1e6:.0f} megapixels (what PIL decodes without a "
                f"decompression-bomb warning; the real sets are at most 1024x2048) and sides of at most {MAX_SIDE} "
                "(nothing was written)"
            )


def _prepare(folders: tuple[Path, Path], options: dict) -> None:
    """Create the split folders; a `DataError` when they hold files other than a set these options started.

    The options are kept in the image folder's `MANIFEST`, so a rerun of an interrupted command resumes.
    """
    options = json.loads(json.dumps(options))
    manifest = folders[0] / MANIFEST
    held = [p for folder in folders if folder.is_dir() for p in folder.rglob("[!.]*") if p.is_file()]
    if held:
        try:
            started = json.loads(manifest.read_text())
        except (OSError, ValueError):
            started = None
        if started != options:
            first = next(folder for folder in folders if any(p.is_relative_to(folder) for p in held))
            raise DataError(
                f"{first} already holds files; generate into an empty --out folder (or rerun the command that wrote "
                f"them, which resumes), or delete {folders[0]} and {folders[1]} (nothing was written)"
            )
        for folder in folders:  # temporary files of the interrupted run
            for part in folder.rglob(".*.part"):
                part.unlink(missing_ok=True)
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cannot create {folder} ({exc.strerror}); pass a writable --out folder") from None
        ensure_writable_folder(folder, what="output folder", fix="pass a writable --out folder")
    if not held:
        write_text_atomic(manifest, json.dumps(options, indent=1) + "\n")


def _save(path: Path, array: np.ndarray, quality: int) -> None:
    """Write one file under a temporary name, then rename it: a file under its real name is complete."""
    tmp = path.with_name(f".{path.name}.part")
    options = {"quality": quality, "subsampling": 0} if path.suffix == ".jpg" else {"compress_level": 1}
    try:
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(array).save(tmp, format=FORMATS[path.suffix], **options)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise DataError(
                f"cannot write {path} ({exc.strerror or exc}); free space or pass a writable --out folder, then "
                "rerun the same command (it resumes)"
            ) from None
        raise


def _write_pairs(folders: tuple[Path, Path], options: dict, num: int, paths, arrays, quality: int = 90) -> None:
    """Write the files ``paths(i)`` with the contents ``arrays(i)`` for ``i < num``; an index whose files all exist
    (written by an interrupted run of the same command: contents depend on the seed and index only) is skipped."""
    _prepare(folders, {**options, "num": num})
    for i in range(num):
        files = paths(i)
        if all(path.is_file() for path in files):
            continue
        try:
            contents = arrays(i)
        except MemoryError:
            raise DataError(f"generating {files[0].name} ran out of memory; pass a smaller --size") from None
        for path, array in zip(files, contents):
            _save(path, array, quality)


def write_ade20k(
    out: str | Path,
    num: int,
    *,
    split: str = "validation",
    seed: int = 0,
    sizes: tuple[tuple[int, int], ...] = ADE20K_SIZES,
    noise: int = 6,
    quality: int = 90,
) -> Path:
    """Write ``num`` ADE20K-layout pairs under ``out/ADEChallengeData2016``; returns that root.

    Args:
        out: output folder (the split folders in it must be empty or absent, or hold an interrupted run of the
            same call, which is resumed).
        num: number of image/annotation pairs.
        split: ``validation`` or ``training``.
        seed: random seed (same seed, same files).
        sizes: (H, W) of the images, in turn.
        noise: amplitude of the uniform noise added to the colour code (with JPEG's error below 21).
        quality: JPEG quality of the images (4:4:4, no chroma subsampling: it would blur region edges).
    """
    _check_sizes(sizes)
    root = Path(out) / "ADEChallengeData2016"
    images, labels = root / "images" / split, root / "annotations" / split
    prefix = "ADE_val" if split == "validation" else "ADE_train"

    def paths(i: int) -> tuple[Path, Path]:
        return images / f"{prefix}_{i + 1:08d}.jpg", labels / f"{prefix}_{i + 1:08d}.png"

    def arrays(i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng((seed, i))  # each pair from its own stream: a rerun can skip it
        size = sizes[i % len(sizes)]
        label = random_label_map(rng, size, np.arange(151))  # 0 = "other", 1..150 = classes
        return render(rng, label, noise), label

    options = {"dataset": "ade20k", "seed": seed, "sizes": sizes, "noise": noise, "quality": quality}
    _write_pairs((images, labels), options, num, paths, arrays, quality)
    return root


def write_cityscapes(
    out: str | Path,
    num: int,
    *,
    split: str = "val",
    seed: int = 0,
    size: tuple[int, int] = CITYSCAPES_SIZE,
    noise: int = 8,
    train_ids: bool = False,
) -> Path:
    """Write ``num`` Cityscapes-layout pairs (labelIds 0..33) under ``out``; returns ``out``.

    Args:
        out: output folder (its ``leftImg8bit/<split>`` and ``gtFine/<split>`` must be empty or absent, or hold
            an interrupted run of the same call, which is resumed).
        num: number of image/label pairs, spread over three cities.
        split: ``val`` or ``train``.
        seed: random seed.
        size: (H, W) of the images (the real set is 1024x2048).
        noise: amplitude of the uniform noise added to the colour code (< 21).
        train_ids: also write ``*_gtFine_labelTrainIds.png`` (as cityscapesScripts' converter does).
    """
    _check_sizes((size,))
    root = Path(out)
    images, labels = root / "leftImg8bit" / split, root / "gtFine" / split

    def paths(i: int) -> tuple[Path, ...]:
        city = CITIES[i % len(CITIES)]
        stem = f"{city}_000000_{i:06d}"
        files = (images / city / f"{stem}{cityscapes.IMAGE_SUFFIX}", labels / city / f"{stem}{cityscapes.LABEL_IDS}")
        return files + ((labels / city / f"{stem}{cityscapes.TRAIN_IDS}",) if train_ids else ())

    def arrays(i: int) -> tuple[np.ndarray, ...]:
        rng = np.random.default_rng((seed, i))  # each pair from its own stream: a rerun can skip it
        label = random_label_map(rng, size, np.arange(cityscapes.NUM_LABEL_IDS))
        image = render(rng, label, noise)
        return (image, label) + ((cityscapes.label_ids_to_train_ids(label),) if train_ids else ())

    options = {"dataset": "cityscapes", "seed": seed, "size": size, "noise": noise, "train_ids": train_ids}
    _write_pairs((images, labels), options, num, paths, arrays)
    return root


def write(dataset: str, out: str | Path, num: int, **kwargs) -> Path:
    """`write_ade20k` or `write_cityscapes` by protocol dataset name; returns the data root."""
    writers: dict[str, Callable[..., Path]] = {"ade20k": write_ade20k, "cityscapes": write_cityscapes}
    if dataset not in writers:
        raise DataError(f"--dataset {dataset!r}: choose from {', '.join(writers)}")
    return writers[dataset](out, num, **kwargs)
