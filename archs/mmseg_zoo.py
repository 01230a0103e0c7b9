"""mmsegmentation's model zoo as the SegFormer paper's comparison table quotes it: checkpoints and published rows.

The table's CNN baselines are mmsegmentation configurations (https://github.com/open-mmlab/mmsegmentation,
Apache-2.0); `mmseg_row` turns one row into an `ArchSpec`'s ``published`` and ``weights``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypedDict

from archs.base import Published, Weights
from archs.convert.mmseg import convert_mmseg_state_dict

__all__ = ["AUX_NOTE", "MMSEG_URL", "MOBILENETV2_SOURCE", "SEGFORMER_TABLE", "MmsegRow", "mmseg_row", "mmseg_weights"]

MMSEG_URL = "https://download.openmmlab.com/mmsegmentation/v0.5"
SEGFORMER_TABLE = "SegFormer (Xie et al., NeurIPS 2021) Table 4"
MOBILENETV2_SOURCE = (
    f"{SEGFORMER_TABLE}; FPS/mIoU = mmseg configs/mobilenet_v2 README (V100; ADE 512x512 160k, "
    "Cityscapes 512x1024 80k, whole 1024x2048 inference)"
)
AUX_NOTE = (
    "published params (mmseg 0.x get_flops.py counts every parameter) include the training-only auxiliary "
    "FCN head; the inference model has none (aux_head=True reproduces the count)"
)

# (GFLOPs, FPS, mIoU) as the table prints them.
Figures = tuple[float, float, float]
# (params M, ADE20K figures, Cityscapes figures): one row of the table.
Row = tuple[float, Figures, Figures]


class MmsegRow(TypedDict):
    """The ``published`` and ``weights`` fields of an `ArchSpec`, from one table row."""

    published: Mapping[str, Published]
    weights: tuple[Weights, ...]


def mmseg_weights(
    algo: str, ade20k: str, cityscapes: str, converter: Callable[[Mapping], dict] = convert_mmseg_state_dict
) -> tuple[Weights, ...]:
    """Official mmseg checkpoints of one row, by their file stems (``<config>_<date>_<time>-<hash>``).

    Args:
        algo: the model zoo's folder (``pspnet``, ``mobilenet_v2``...).
        ade20k: stem of the ADE20K checkpoint.
        cityscapes: stem of the Cityscapes checkpoint.
        converter: maps the checkpoint onto the model's keys.
    """
    return tuple(
        Weights(dataset, f"{MMSEG_URL}/{algo}/{stem.rsplit('_', 2)[0]}/{stem}.pth", "mmseg", None, converter)
        for dataset, stem in (("ade20k", ade20k), ("cityscapes", cityscapes))
    )


def mmseg_row(
    config: str,
    stamps: tuple[str, str],
    row: Row,
    *,
    source: str | tuple[str, str],
    note: str = AUX_NOTE,
    converter: Callable[[Mapping], dict] = convert_mmseg_state_dict,
    cityscapes_iterations: str = "80k",
) -> MmsegRow:
    """One row of the comparison table with its mmseg checkpoints, as `ArchSpec` fields (``**mmseg_row(...)``).

    Args:
        config: ``<model-zoo folder>/<config>`` (``pspnet/pspnet_r101-d8``).
        stamps: ``<date>_<time>-<hash>`` of the ADE20K (512x512, 160k) and Cityscapes (512x1024) checkpoints.
        row: published (params M, ADE20K (GFLOPs, FPS, mIoU), Cityscapes (GFLOPs, FPS, mIoU)).
        source: where the figures come from; a pair for (ADE20K, Cityscapes) when they differ.
        note: what the figures include that inference does not (by default the auxiliary head).
        converter: maps the checkpoints onto the model's keys.
        cityscapes_iterations: the Cityscapes schedule in the checkpoint's name.
    """
    params_m, *figures = row
    sources = (source, source) if isinstance(source, str) else source
    published = {
        dataset: Published(params_m, gflops, fps, miou, source=text, note=note)
        for dataset, (gflops, fps, miou), text in zip(("ade20k", "cityscapes"), figures, sources)
    }
    algo, name = config.split("/")
    ade20k = f"{name}_512x512_160k_ade20k_{stamps[0]}"
    cityscapes = f"{name}_512x1024_{cityscapes_iterations}_cityscapes_{stamps[1]}"
    return {"published": published, "weights": mmseg_weights(algo, ade20k, cityscapes, converter)}
