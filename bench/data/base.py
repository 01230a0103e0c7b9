"""What every dataset shares: image/label pairs on disk, decoding, label checks, the `Sample`.

A dataset item is decoded in a DataLoader worker: the image as ``uint8 (3, H, W)`` RGB at its
original size (resizing belongs to the test pipeline, on the device), the label as ``uint8
(H, W)`` train ids with 255 = ignore. A file a user can fix (unreadable, wrong size, values out of
range) does not raise inside the worker: the `Sample` carries the one-line error, and the
evaluation loop raises it as a `DataError` in the main process.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from PIL import Image

from bench.errors import BenchError

if TYPE_CHECKING:  # the layout module reads this one's errors
    from bench.data.layout import DiskLayout

IGNORE_INDEX = 255
# Left by `bench data synth` in the image folder of a split it generated (its options, as JSON): the set is
# generated, and every evaluation of it says so.
SYNTHETIC_MARKER = ".segbench-synth.json"


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
        if self.image is not None and self.label is not None:
            self.image = self.image.pin_memory()
            self.label = self.label.pin_memory()
        return self

    def decoded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(image, label); a `DataError` with the error of a pair that could not be read."""
        if self.image is None or self.label is None:
            raise DataError(self.error or f"{self.name}: not decoded")
        return self.image, self.label


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
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f" ({int(found[1]) / 1e6:.0f} MP)" if found else ""
        refused = 2 * (Image.MAX_IMAGE_PIXELS or 0)  # set, or PIL would not have refused
        raise DataError(
            f"{what} {path} is too large to decode{size}: PIL refuses more than {refused / 1e6:.0f} "
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
    single_channel(mode, 1 if array.ndim == 2 else array.shape[-1], path)
    return array


def check_size(label: tuple[int, int], image: tuple[int, int], label_path: Path, image_path: Path) -> None:
    """A `DataError` unless the label map's (H, W) ``label`` is its image's ``image``."""
    if tuple(label) != tuple(image):
        raise DataError(
            f"label map {label_path} is {label[1]}x{label[0]} (WxH) but its image {image_path.name} is "
            f"{image[1]}x{image[0]}; the label must have the image's size (replace the label map)"
        )


def single_channel(mode: str, bands: int, path: Path) -> None:
    """A `DataError` for a label map of ``bands`` channels (a colour rendering, not class ids)."""
    if bands != 1:
        raise DataError(
            f"label map {path} has mode {mode} ({bands} channels); expected a single-channel PNG of "
            "class ids, not a colour rendering"
        )


# What ends an intact file of each format. A file whose last `TAIL_BYTES` hold no end marker is decoded whole
# before it is called cut short: an encoder may append data after the marker, which PIL decodes past.
END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}
TAIL_BYTES = 1024


def _ends_with_marker(path: Path, image_format: str | None) -> bool:
    marker = END_MARKERS.get(image_format or "")
    if marker is None:
        return True
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(max(0, size - TAIL_BYTES))
        return marker in f.read()


def inspect_file(path: Path, what: str) -> tuple[tuple[int, int], str, int]:
    """(H, W), mode and channels of the image file ``path``, from its header; a `DataError` naming it when it
    cannot be opened or is cut short (its end marker missing, and decoding it fails)."""
    try:
        with open_image(path, what, warn=False) as img:  # the decoding warns of a large image
            found = (img.height, img.width), img.mode, len(img.getbands())
            if not _ends_with_marker(path, img.format):
                img.load()
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot read {what} {path} ({_reason(exc, path)}); replace the file with an intact copy"
        ) from None
    return found


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
    """Image/label pairs of one split, found as the subclass's `layout` says; subclasses map raw label values
    to train ids.

    Args:
        root: the dataset folder (or the folder holding it, named as the layout's ``folder``).
        split: the split to read (default: the layout's ``default_split``).

    Attributes:
        synthetic: the options `bench data synth` generated the split with, or None for a set it did not write.
    """

    name = ""
    num_classes = 0
    layout: ClassVar[DiskLayout]

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        found = self.layout.locate(root, split)
        self.root, self.split, self.pairs = found.root, found.split, found.pairs
        self.synthetic = read_synthetic_marker(found.image_dir)  # left by `bench data synth` beside its images

    def __len__(self) -> int:
        return len(self.pairs)

    def map_label(self, raw: np.ndarray, label_path: Path) -> np.ndarray:
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image ``uint8 (H, W, 3)``, label ``uint8 (H, W)`` train ids); raises `DataError`."""
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        raw = read_label(label_path)
        check_size(raw.shape, image.shape[:2], label_path, image_path)
        return image, self.map_label(raw, label_path)

    def check_files(self, indices: Iterable[int] | None = None, advance: Callable[[], object] | None = None) -> None:
        """Open the image and label map of each pair of ``indices`` (all by default) and compare their sizes,
        from the files' headers: a file that does not open or is cut short, a label map of several channels or of
        another size is a `DataError` naming it, in seconds, where decoding would find it part-way through a run.

        Args:
            indices: the pairs to check.
            advance: called after each pair (a progress bar).
        """
        for index in range(len(self)) if indices is None else indices:
            image_path, label_path = self.pairs[index]
            image_size, _, _ = inspect_file(image_path, "image")
            label_size, mode, bands = inspect_file(label_path, "label map")
            single_channel(mode, bands, label_path)
            check_size(label_size, image_size, label_path, image_path)
            if advance is not None:
                advance()

    def __getitem__(self, index: int) -> Sample:
        name = str(self.pairs[index][0].relative_to(self.root))
        try:
            image, label = self.load(index)
        except DataError as exc:
            return Sample(index, name, error=str(exc))
        return Sample(index, name, torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(label))


def read_synthetic_marker(image_dir: Path) -> dict | None:
    """The options in ``image_dir``'s `SYNTHETIC_MARKER` (an empty dict when unreadable), or None without one."""
    marker = image_dir / SYNTHETIC_MARKER
    if not marker.is_file():
        return None
    try:
        options = json.loads(marker.read_text())
    except (OSError, ValueError):
        return {}
    return options if isinstance(options, dict) else {}
