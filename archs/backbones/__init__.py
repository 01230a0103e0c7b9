"""Backbones (encoders) shared by the segmentation heads."""

from __future__ import annotations

from collections.abc import Container

from torch import Tensor, nn

__all__ = ["layer_outputs"]


def layer_outputs(layers: nn.Sequential, x: Tensor, positions: Container[int]) -> list[Tensor]:
    """Run ``x`` through ``layers`` and return the outputs of the layers at ``positions``, shallowest first.

    Args:
        layers: a backbone's layers in order (torchvision's ``features``).
        x: the input image batch.
        positions: indices in ``layers`` of the layers whose outputs are the backbone's stage outputs.
    """
    outs = []
    for i, layer in enumerate(layers):
        x = layer(x)
        if i in positions:
            outs.append(x)
    return outs
