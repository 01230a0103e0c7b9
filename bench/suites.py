"""Suites: plain lists of registered names. `bench list --suite S --verbose` prints what will run."""

from __future__ import annotations

from dataclasses import dataclass

import archs
from bench.errors import BenchError


@dataclass(frozen=True)
class Suite:
    """A named list of architectures and the datasets they are measured on.

    Args:
        name: as given to ``bench run --suite``.
        description: one line for ``bench list``.
        archs: registered names; empty means every registered model (``all``).
        datasets: protocol datasets measured for each architecture.
    """

    name: str
    description: str
    archs: tuple[str, ...]
    datasets: tuple[str, ...] = ("ade20k", "cityscapes")

    def names(self) -> list[str]:
        """The architectures of this suite; every one must be registered."""
        if not self.archs:
            return archs.list_archs()
        for name in self.archs:
            archs.get_spec(name)  # UnknownArchError names a suite member that is missing
        return list(self.archs)


SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite(
            "realtime",
            "the seed table's Real-Time rows",
            (
                "fcn-mobilenetv2",
                "icnet",
                "pspnet-mobilenetv2",
                "deeplabv3plus-mobilenetv2",
                "segformer-b0",
            ),
        ),
        Suite(
            "non-realtime",
            "the seed table's Non Real-Time rows",
            (
                "fcn-r101",
                "encnet-r101",
                "pspnet-r101",
                "ccnet-r101",
                "deeplabv3plus-r101",
                "ocrnet-hr48",
                "gscnn-wrn38",
                "axial-deeplab-xl",
                "dynamic-routing-l33-psp",
                "auto-deeplab-f48",
                "setr-pup-vit-l",
                "segformer-b4",
                "segformer-b5",
            ),
        ),
        Suite(
            "lecture",
            "the lecture's path from FCN to SegFormer",
            (
                "fcn32s-vgg16",
                "fcn16s-vgg16",
                "fcn8s-vgg16",
                "fcn8s-vgg16-resizeconv",
                "deconvnet-vgg16",
                "segnet-vgg16",
                "deeplabv1-largefov-vgg16",
                "deeplabv1-largefov-vgg16-crf",
                "attention-to-scale-vgg16",
                "hmsa-ocrnet-hr48",
                "pspnet-r101",
                "deeplabv2-r101",
                "deeplabv3-r101-os16",
                "deeplabv3-r101-os8",
                "deeplabv3plus-r101",
                "auto-deeplab-f48",
                "segformer-b0",
                "segformer-b1",
                "segformer-b2",
                "segformer-b3",
            ),
        ),
        Suite("all", "every registered architecture, plugins included", ()),
    )
}


def get_suite(name: str) -> Suite:
    """The suite ``name``; a `BenchError` listing the choices otherwise."""
    try:
        return SUITES[name]
    except KeyError:
        raise BenchError(f"unknown suite {name!r}; choose from {', '.join(SUITES)}") from None
