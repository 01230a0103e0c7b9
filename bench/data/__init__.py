"""Datasets in their published on-disk layouts (ADE20K, Cityscapes) and generated copies of them.

from bench.data import open_dataset, CLASSES, PALETTES
ds = open_dataset("cityscapes", "~/data/cityscapes")   # a torch Dataset of `Sample`s
"""

from __future__ import annotations

from pathlib import Path

from bench.data import ade20k, cityscapes
from bench.data.base import IGNORE_INDEX, DataError, Sample, SegDataset, first_sample

DATASETS = {"ade20k": ade20k.ADE20K, "cityscapes": cityscapes.Cityscapes}
# class names and RGB palettes in train-id order, per protocol dataset
CLASSES = {"ade20k": ade20k.CLASSES, "cityscapes": cityscapes.CLASSES}
PALETTES = {"ade20k": ade20k.PALETTE, "cityscapes": cityscapes.PALETTE}

__all__ = [
    "CLASSES",
    "DATASETS",
    "IGNORE_INDEX",
    "PALETTES",
    "DataError",
    "Sample",
    "SegDataset",
    "first_sample",
    "open_dataset",
]


def open_dataset(name: str, root: str | Path, split: str | None = None) -> SegDataset:
    """The dataset ``name`` (``ade20k``, ``cityscapes``) found under ``root``; `DataError` otherwise.

    Args:
        name: protocol dataset name.
        root: the dataset folder (``ADEChallengeData2016``, or the folder holding ``leftImg8bit``).
        split: the split to read (default: the validation split).
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    return DATASETS[name](root, split)
