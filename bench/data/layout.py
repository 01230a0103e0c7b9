"""Where a dataset's files lie on disk: its root, a split's two folders, every image paired with its label map.

A dataset module describes its official layout once (`DiskLayout`); `DiskLayout.locate` finds a split
under the folder a user passes, and a missing or misnamed folder, or an image without its label map,
is a `DataError` naming what was found and the fix.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.data.base import DataError, expand_user


@dataclass(frozen=True)
class SplitFiles:
    """The files of one split, as found on disk.

    Args:
        root: the dataset root.
        split: the split's folder name.
        pairs: (image path, label path) per image, sorted.
        image_dir: the split's image folder.
    """

    root: Path
    split: str
    pairs: list[tuple[Path, Path]]
    image_dir: Path


@dataclass(frozen=True)
class DiskLayout:
    """A dataset's layout as its official archives extract: ``<images>/<split>/<image_glob>`` and, beside
    each image, ``<labels>/<split>/<the image's path, its suffix replaced by a label suffix>``.

    Args:
        title: the dataset's name in messages.
        folder: the name of the extracted root, looked for inside the folder passed too.
        splits: the split names accepted -> the split's folder name; the first is read by default.
        images: the folder holding the images, one subfolder per split.
        image_glob: the pattern of a split's images under its folder; what follows its last ``*`` is
            the suffix a label suffix replaces.
        labels: the folder holding the label maps, one subfolder per split.
        label_suffixes: label name endings, in order of preference.
        pass_root: which folder to pass, for messages.
        restore: how to restore a missing split folder, for messages (``{root}``: the dataset root).
        unlabelled_splits: split folders of the archive without labels (not misnamed splits).
    """

    title: str
    folder: str
    splits: dict[str, str]
    images: str
    image_glob: str
    labels: str
    label_suffixes: tuple[str, ...]
    pass_root: str
    restore: str
    unlabelled_splits: tuple[str, ...] = ()

    @property
    def image_suffix(self) -> str:
        return self.image_glob.rsplit("*", 1)[1]

    def example(self) -> str:
        """A split's image and label paths, in words (``images/validation/*.jpg, annotations/validation/*.png``)."""
        split = self.splits[next(iter(self.splits))]
        label = self.image_glob.removesuffix(self.image_suffix) + self.label_suffixes[-1]
        return f"{self.images}/{split}/{self.image_glob}, {self.labels}/{split}/{label}"

    def find_root(self, path: Path) -> Path:
        """The folder holding the image and label folders: ``path`` or ``path/<folder>``."""
        for candidate in (path, path / self.folder):
            if (candidate / self.images).is_dir() or (candidate / self.labels).is_dir():
                return candidate
        raise DataError(f"--data-root {path}: no {self.title} layout ({self.example()}); {self.pass_root}")

    def locate(self, root: str | Path, split: str | None = None) -> SplitFiles:
        """The files of ``split`` (default: the first of `splits`) under ``root``; a `DataError` naming what is wrong.

        Args:
            root: the folder passed as ``--data-root``.
            split: a name of `splits`.
        """
        found = self.find_root(dataset_folder(root, self.pass_root))
        folder = self.splits.get(split or next(iter(self.splits)))
        if folder is None:
            choices = " or ".join(dict.fromkeys(self.splits.values()))
            raise DataError(f"{self.title} split {split!r}: choose {choices}")
        images, labels = found / self.images / folder, found / self.labels / folder
        split_folders(
            found,
            images,
            labels,
            missing_one=f"{self.title} needs both {self.images}/{folder} and {self.labels}/{folder} "
            f"({self.restore.format(root=found)})",
            missing_both=self.pass_root,
            splits=(*self.splits.values(), *self.unlabelled_splits),
        )
        pairs = pair_files(images, labels, self.image_glob, self.image_suffix, self.label_suffixes, found)
        return SplitFiles(found, folder, pairs, images)


def dataset_folder(root: str | Path, fix: str) -> Path:
    """``--data-root`` expanded, or a `DataError` saying that there is no such folder or that it is a file.

    Args:
        root: the path given.
        fix: which folder to pass instead.
    """
    path = expand_user(root, "--data-root")
    if path.is_dir():
        return path
    if path.exists():
        archive = path.name.lower().endswith((".zip", ".tar", ".tgz", ".tar.gz", ".tar.xz", ".7z"))
        extract = " (an archive: extract it first)" if archive else ""
        raise DataError(f"--data-root {path}: a file, not a folder{extract}; {fix}")
    raise DataError(f"--data-root {path}: no such folder; {fix}")


def _found_instead(missing: list[Path], root: Path, splits: Iterable[str]) -> tuple[str, str | None]:
    """The folders found beside the missing split folders ``missing`` (``images/val``), in words, and the
    rename that would fix a folder of no split name of the dataset (None when every one is a split's)."""
    found, misnamed = [], []
    for path in missing:
        try:
            names = sorted(p.name for p in path.parent.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            names = []
        found += [str((path.parent / name).relative_to(root)) for name in names]
        misnamed += [name for name in names if name not in splits and name not in misnamed]
    if not found:
        return "", None
    shown = "found " + ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
    target = missing[0].name
    if len(misnamed) == 1:
        return shown, f"rename {misnamed[0]} to {target}"
    if misnamed:
        return shown, f"rename the folders of this split to {target}"
    return shown, None


def split_folders(
    root: Path, images: Path, labels: Path, *, missing_one: str, missing_both: str, splits: Iterable[str] = ()
) -> None:
    """Both the image and the label folder of a split must exist; a `DataError` names which is missing, and
    the folders found in its place (a split folder of another name, ``val`` for ``validation``, is named).

    Args:
        root: the dataset root.
        images, labels: the split's two folders.
        missing_one: the fix when only one exists (how to restore the other).
        missing_both: the fix when neither exists (which folder to pass).
        splits: the dataset's split folder names (a folder of another name is taken for a misnamed split).
    """
    splits = set(splits)
    for path, other in ((images, labels), (labels, images)):
        if path.is_dir():
            continue
        if other.is_dir():
            found, rename = _found_instead([path], root, splits)
            where = f" ({found}: {rename})" if rename else f" ({found})" if found else ""
            raise DataError(f"{path} does not exist but {other} does{where}; {missing_one}")
        found, rename = _found_instead([images, labels], root, splits)
        missing = f"{root}: neither {images.relative_to(root)} nor {labels.relative_to(root)} exists"
        if rename:
            raise DataError(f"{missing}; {found}: {rename}")
        raise DataError(f"{missing}{f' ({found})' if found else ''}; {missing_both}")


def pair_files(
    image_dir: Path,
    label_dir: Path,
    image_glob: str,
    image_suffix: str,
    label_suffixes: tuple[str, ...],
    root: Path,
) -> list[tuple[Path, Path]]:
    """Match every image to its label file by stem; a `DataError` for any image or label left alone.

    Args:
        image_dir, label_dir: the split folders.
        image_glob: the pattern of the images under their folder (``*.jpg``, ``*/*.png``); the label maps lie
            in the same subfolders of theirs.
        image_suffix: the part of an image's name replaced by a label suffix.
        label_suffixes: label name endings, in order of preference.
        root: the dataset root, for messages.
    """
    images = sorted(image_dir.glob(image_glob))
    if not images:
        raise DataError(
            f"{image_dir} holds no images matching {image_glob}; pass the dataset root that holds this split"
        )
    label_glob = image_glob.rpartition("/")[0] + "/*" if "/" in image_glob else "*"
    labels = {p for p in label_dir.glob(label_glob) if p.name.endswith(label_suffixes)}
    pairs: list[tuple[Path, Path]] = []
    missing: list[Path] = []
    used: set[Path] = set()
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
