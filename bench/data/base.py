"""What every dataset shares: image/label pairs on disk, decoding, label checks, the `Sample`.

A dataset item is decoded in a DataLoader worker: the image as ``uint8 (3, H, W)`` RGB at its
original size (resizing belongs to the test pipeline, on the device), the label as ``uint8
(H, W)`` train ids with 255 = ignore. A file a user can fix (unreadable, wrong size, values out of
range) does not raise inside the worker: the `Sample` carries the one-line error, and the
evaluation loop raises it as a `DataError` in the main process.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.errors import BenchError

IGNORE_INDEX = 255


class DataError(BenchError):
    """A dataset file or folder a user can fix; the message names it and the fix."""


@dataclass
class Sample:
    """One decoded image and its label map (or the error that prevented decoding them).

    Args:
        index: position in the dataset.
        name: the image path relative to the dataset root.
        image: ``uint8 (3, H, W)`` RGB.
        label: ``uint8 (H, W)`` class ids, 255 = ignore.
        error: one-line message when the pair could not be read.
    """

    index: int
    name: str
    image: torch.Tensor | None = None
    label: torch.Tensor | None = None
    error: str | None = None

    def pin_memory(self) -> Sample:
        """Page-locked copies, so the host-to-device copies can be asynchronous (DataLoader hook)."""
        if self.image is not None:
            self.image = self.image.pin_memory()
            self.label = self.label.pin_memory()
        return self


def expand_user(path: str | Path, what: str) -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded; a `BenchError` naming ``what`` (``--weights``, an
    environment variable) when that home cannot be found (`Path.expanduser` raises a bare RuntimeError)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        home = str(path).split("/", 1)[0]
        who = f"no such user's home ({home})" if home != "~" else "no home directory ($HOME is unset)"
        raise BenchError(f"{what} {path}: {who}; give the full path") from None


def first_sample(batch: list[Sample]) -> Sample:
    """DataLoader ``collate_fn`` for batch size 1: images of a split differ in size."""
    return batch[0]


def _reason(exc: Exception, path: Path) -> str:
    """PIL's message without the path the error already names ("cannot identify image file")."""
    return str(exc).replace(f" '{path}'", "").replace(f"'{path}'", "the file")


def open_image(path: Path, what: str, *, warn: bool = True) -> Image.Image:
    """``Image.open`` with PIL's decompression-bomb guard in our words: above ``Image.MAX_IMAGE_PIXELS`` (89 MP)
    a one-line warning when ``warn``, not PIL's two (the file is the user's own dataset: it is decoded); above
    twice that, where PIL refuses to decode, a `DataError` saying so (its logits would not fit in memory either)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as exc:
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f" ({int(pixels[1]) / 1e6:.0f} MP)" if pixels else ""
        raise DataError(
            f"{what} {path} is too large to decode{size}: PIL refuses more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} "
            "MP (a decompression-bomb guard); evaluate a downscaled copy of the image and its label map"
        ) from None
    pixels = img.width * img.height
    if warn and Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
        warnings.warn(
            f"{what} {path} is {img.width}x{img.height} ({pixels / 1e6:.0f} MP), above PIL's decompression-bomb "
            f"limit of {Image.MAX_IMAGE_PIXELS / 1e6:.0f} MP; decoding it anyway",
            stacklevel=2,
        )
    return img


def read_image(path: Path) -> np.ndarray:
    """``uint8 (H, W, 3)`` RGB; a `DataError` naming the file when it cannot be decoded."""
    try:
        with open_image(path, "image") as img:
            return np.array(img.convert("RGB"))
    except (OSError, ValueError) as exc:
        reason = _reason(exc, path)
        raise DataError(f"cannot read image {path} ({reason}); replace the file with an intact copy") from None


def read_label(path: Path) -> np.ndarray:
    """A single-channel label map as integers; a `DataError` for colour or unreadable files."""
    try:
        with open_image(path, "label map", warn=False) as img:  # its image has warned
            mode = img.mode
            array = np.array(img)
    except (OSError, ValueError) as exc:
        reason = _reason(exc, path)
        raise DataError(f"cannot read label map {path} ({reason}); replace the file with an intact copy") from None
    if array.ndim != 2:
        raise DataError(
            f"label map {path} has mode {mode} ({array.shape[-1]} channels); expected a single-channel PNG of "
            "class ids, not a colour rendering"
        )
    return array


def check_size(label: np.ndarray, image: np.ndarray, label_path: Path, image_path: Path) -> None:
    if label.shape != image.shape[:2]:
        raise DataError(
            f"label map {label_path} is {label.shape[1]}x{label.shape[0]} (WxH) but its image {image_path.name} is "
            f"{image.shape[1]}x{image.shape[0]}; the label must have the image's size (replace the label map)"
        )


def apply_lut(raw: np.ndarray, lut: np.ndarray, path: Path, valid: str) -> np.ndarray:
    """Map raw label values through ``lut`` (``-1`` marks a value that may not occur)."""
    if raw.dtype != np.uint8:
        if raw.size and (raw.min() < 0 or raw.max() > 255):
            bad = raw.max() if raw.max() > 255 else raw.min()
            raise DataError(f"label map {path} holds value {int(bad)}, outside {valid}; the file is not a label map")
        raw = raw.astype(np.uint8)
    mapped = lut[raw]
    if mapped.size and mapped.min() < 0:
        bad = np.unique(raw[mapped < 0])
        raise DataError(
            f"label map {path} holds value(s) {', '.join(map(str, bad[:5].tolist()))} outside {valid}; "
            "check that the file belongs to this dataset"
        )
    return mapped.astype(np.uint8)


class SegDataset(torch.utils.data.Dataset):
    """Image/label pairs of one split; subclasses map raw label values to train ids.

    Args:
        root: the dataset root as found on disk.
        split: the split folder name.
        pairs: (image path, label path) per image, sorted.
    """

    name = ""
    num_classes = 0

    def __init__(self, root: Path, split: str, pairs: list[tuple[Path, Path]]) -> None:
        self.root = Path(root)
        self.split = split
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def map_label(self, raw: np.ndarray, label_path: Path) -> np.ndarray:
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image ``uint8 (H, W, 3)``, label ``uint8 (H, W)`` train ids); raises `DataError`."""
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        raw = read_label(label_path)
        check_size(raw, image, label_path, image_path)
        return image, self.map_label(raw, label_path)

    def __getitem__(self, index: int) -> Sample:
        name = str(self.pairs[index][0].relative_to(self.root))
        try:
            image, label = self.load(index)
        except DataError as exc:
            return Sample(index, name, error=str(exc))
        return Sample(index, name, torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(label))


def split_folders(root: Path, images: Path, labels: Path, *, missing_one: str, missing_both: str) -> None:
    """Both the image and the label folder of a split must exist; a `DataError` names which is missing.

    Args:
        root: the dataset root.
        images, labels: the split's two folders.
        missing_one: the fix when only one exists (how to restore the other).
        missing_both: the fix when neither exists (which folder to pass).
    """
    for path, other in ((images, labels), (labels, images)):
        if not path.is_dir():
            if other.is_dir():
                raise DataError(f"{path} does not exist but {other} does; {missing_one}")
            raise DataError(
                f"{root}: neither {images.relative_to(root)} nor {labels.relative_to(root)} exists; {missing_both}"
            )


def pair_files(
    image_dir: Path,
    label_dir: Path,
    image_glob: str,
    label_glob: str,
    image_suffix: str,
    label_suffixes: tuple[str, ...],
    root: Path,
) -> list[tuple[Path, Path]]:
    """Match every image to its label file by stem; a `DataError` for any image or label left alone.

    Args:
        image_dir, label_dir: the split folders.
        image_glob, label_glob: patterns of the files under each folder (``*.jpg``, ``*/*.png``).
        image_suffix: the part of an image's name replaced by a label suffix.
        label_suffixes: label name endings, in order of preference.
        root: the dataset root, for messages.
    """
    images = sorted(image_dir.glob(image_glob))
    if not images:
        raise DataError(
            f"{image_dir} holds no images matching {image_glob}; pass the dataset root that holds this split"
        )
    labels = {p for p in label_dir.glob(label_glob) if p.name.endswith(label_suffixes)}
    pairs, missing, used = [], [], set()
    for image in images:
        stem = image.relative_to(image_dir).as_posix()[: -len(image_suffix)]
        for suffix in label_suffixes:
            candidate = label_dir / f"{stem}{suffix}"
            if candidate in labels:
                pairs.append((image, candidate))
                used.update(label_dir / f"{stem}{s}" for s in label_suffixes)
                break
        else:
            missing.append(image)
    if missing:
        first = missing[0]
        expected = label_dir / (first.relative_to(image_dir).as_posix()[: -len(image_suffix)] + label_suffixes[-1])
        raise DataError(
            f"{len(missing)} of {len(images)} images under {image_dir} have no label map (first: {first.name}, "
            f"expected {expected.relative_to(root)}); restore the labels or remove those images"
        )
    orphans = sorted(labels - used)
    if orphans:
        raise DataError(
            f"{len(orphans)} label maps under {label_dir} have no image (first: {orphans[0].relative_to(root)}); "
            f"restore the images under {image_dir.relative_to(root)} or remove those labels"
        )
    return pairs


def require_dir(path: Path, what: str, fix: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{what} {path} does not exist; {fix}")
    return path
