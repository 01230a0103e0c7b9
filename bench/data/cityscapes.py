"""Cityscapes (fine annotations): layout, labelId -> trainId mapping, class names and palette.

Layout (the official ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip``)::

    leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
    gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png   (optional)

The 19 evaluated classes are the labelIds with a train id (cityscapesScripts ``labels.py``);
every other labelId (void, ignoreInEval) becomes 255. A ``*_labelTrainIds.png`` written by
cityscapesScripts' ``createTrainIdLabelImgs`` (or mmsegmentation's converter) is read as is when
present; otherwise the ``*_labelIds.png`` is mapped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.data.base import IGNORE_INDEX, SegDataset, apply_lut
from bench.data.layout import DiskLayout

LABEL_IDS = "_gtFine_labelIds.png"
TRAIN_IDS = "_gtFine_labelTrainIds.png"
IMAGE_SUFFIX = "_leftImg8bit.png"
NUM_LABEL_IDS = 34  # labelIds 0..33 (license plate, id -1, is never written to a label map)
LAYOUT = DiskLayout(
    title="Cityscapes",
    folder="cityscapes",
    splits={"val": "val", "validation": "val", "train": "train", "training": "train"},
    images="leftImg8bit",
    image_glob=f"*/*{IMAGE_SUFFIX}",
    labels="gtFine",
    label_suffixes=(TRAIN_IDS, LABEL_IDS),  # train ids, when written, are read as they are
    pass_root="pass the folder holding leftImg8bit and gtFine",
    restore="extract leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip into {root}",
    unlabelled_splits=("test",),
)

# fmt: off
CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
    (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
# labelId of each train id 0..18
TRAIN_TO_LABEL_ID = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
# fmt: on

# labelIds: 0..33 -> train id or 255; 255 stays ignored; anything else cannot occur (-1)
LABEL_ID_LUT = np.full(256, -1, dtype=np.int16)
LABEL_ID_LUT[:NUM_LABEL_IDS] = IGNORE_INDEX
LABEL_ID_LUT[list(TRAIN_TO_LABEL_ID)] = np.arange(len(TRAIN_TO_LABEL_ID))
LABEL_ID_LUT[IGNORE_INDEX] = IGNORE_INDEX
# train ids: 0..18 and 255
TRAIN_ID_LUT = np.full(256, -1, dtype=np.int16)
TRAIN_ID_LUT[: len(CLASSES)] = np.arange(len(CLASSES))
TRAIN_ID_LUT[IGNORE_INDEX] = IGNORE_INDEX


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """``uint8`` train ids (255 = ignore) of a labelIds map (values 0..33 or 255)."""
    return apply_lut(label_ids, LABEL_ID_LUT, Path("<array>"), "0..33 (Cityscapes labelIds)")


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """labelIds of a train-id prediction (for the official evaluation or a submission)."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[: len(TRAIN_TO_LABEL_ID)] = TRAIN_TO_LABEL_ID
    return lut[train_ids]


class Cityscapes(SegDataset):
    """Cityscapes val (or train) images with their fine labels as train ids.

    Args:
        root: the folder holding ``leftImg8bit`` and ``gtFine`` (or its parent ``cityscapes``).
        split: ``val`` (default) or ``train``.
    """

    name = "cityscapes"
    num_classes = 19
    layout = LAYOUT

    def map_label(self, raw: np.ndarray, label_path: Path) -> np.ndarray:
        if label_path.name.endswith(TRAIN_IDS):
            return apply_lut(raw, TRAIN_ID_LUT, label_path, "0..18 or 255 (Cityscapes train ids)")
        return apply_lut(raw, LABEL_ID_LUT, label_path, "0..33 (Cityscapes labelIds)")
