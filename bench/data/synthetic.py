"""Generated datasets in the real on-disk layouts, for smoke tests and throughput benchmarks.

Label maps are random rectangles on a 16-pixel grid (JPEG's largest block, so a region's colour
survives compression). Each raw label value ``v`` is painted with a colour code that a
per-pixel classifier can read back, plus uniform noise: channel levels ``LEVELS[v // 36]``,
``LEVELS[v // 6 % 6]``, ``LEVELS[v % 6]``, 42 apart, so noise and JPEG error below 21 never move
a pixel to another code. `code_colors` gives the colour of each train id: tests build an oracle
model from it that predicts the ground truth exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bench.data import cityscapes
from bench.data.base import DataError

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


def _empty_dir(path: Path) -> Path:
    if path.is_dir() and any(path.iterdir()):
        raise DataError(f"{path} already holds files; generate into an empty --out folder (nothing was written)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {path} ({exc.strerror}); pass a writable --out folder") from None
    return path


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
        out: output folder (the split folders in it must be empty or absent).
        num: number of image/annotation pairs.
        split: ``validation`` or ``training``.
        seed: random seed (same seed, same files).
        sizes: (H, W) choices for the images.
        noise: amplitude of the uniform noise added to the colour code (with JPEG's error below 21).
        quality: JPEG quality of the images (4:4:4, no chroma subsampling: it would blur region edges).
    """
    root = Path(out) / "ADEChallengeData2016"
    images, labels = (_empty_dir(root / kind / split) for kind in ("images", "annotations"))
    rng = np.random.default_rng(seed)
    prefix = "ADE_val" if split == "validation" else "ADE_train"
    for i in range(1, num + 1):
        size = sizes[rng.integers(len(sizes))]
        label = random_label_map(rng, size, np.arange(151))  # 0 = "other", 1..150 = classes
        Image.fromarray(render(rng, label, noise)).save(
            images / f"{prefix}_{i:08d}.jpg", quality=quality, subsampling=0
        )
        Image.fromarray(label).save(labels / f"{prefix}_{i:08d}.png", compress_level=1)
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
        out: output folder (its ``leftImg8bit/<split>`` and ``gtFine/<split>`` must be empty or absent).
        num: number of image/label pairs, spread over three cities.
        split: ``val`` or ``train``.
        seed: random seed.
        size: (H, W) of the images (the real set is 1024x2048).
        noise: amplitude of the uniform noise added to the colour code (< 21).
        train_ids: also write ``*_gtFine_labelTrainIds.png`` (as cityscapesScripts' converter does).
    """
    root = Path(out)
    images, labels = (_empty_dir(root / kind / split) for kind in ("leftImg8bit", "gtFine"))
    rng = np.random.default_rng(seed)
    for i in range(num):
        city = CITIES[i % len(CITIES)]
        stem = f"{city}_000000_{i:06d}"
        (images / city).mkdir(exist_ok=True)
        (labels / city).mkdir(exist_ok=True)
        label = random_label_map(rng, size, np.arange(cityscapes.NUM_LABEL_IDS))
        Image.fromarray(render(rng, label, noise)).save(
            images / city / f"{stem}{cityscapes.IMAGE_SUFFIX}", compress_level=1
        )
        Image.fromarray(label).save(labels / city / f"{stem}{cityscapes.LABEL_IDS}", compress_level=1)
        if train_ids:
            train = cityscapes.label_ids_to_train_ids(label)
            Image.fromarray(train).save(labels / city / f"{stem}{cityscapes.TRAIN_IDS}", compress_level=1)
    return root


def write(dataset: str, out: str | Path, num: int, **kwargs) -> Path:
    """`write_ade20k` or `write_cityscapes` by protocol dataset name; returns the data root."""
    writers = {"ade20k": write_ade20k, "cityscapes": write_cityscapes}
    if dataset not in writers:
        raise DataError(f"--dataset {dataset!r}: choose from {', '.join(writers)}")
    return writers[dataset](out, num, **kwargs)
