"""Inference-time parameter count."""

from __future__ import annotations

from torch import nn


def count_params(model: nn.Module) -> int:
    """Parameters of ``model`` as built for inference (buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters())
