"""Stand-in for ``mmcv.ops`` (test only): mmcv's pure-PyTorch operators, placeholders for the rest.

``point_sample`` and ``CrissCrossAttention`` are mmcv's own implementations, loaded from the
source files mmcv-lite ships (``mmcv/ops/point_sample.py``, ``mmcv/ops/cc_attention.py``), which
need no compiled extension. Every other name resolves to a placeholder that raises when called,
so that modules importing compiled operators at import time (focal loss, PSA mask, deformable
convolution) import, and a test that would really use one fails loudly.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

IS_SEGBENCH_STUB = True


def _load_mmcv_source(name: str):
    origin = importlib.util.find_spec("mmcv").origin
    path = Path(origin).parent / "ops" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"mmcv.ops.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_point_sample = _load_mmcv_source("point_sample")
point_sample = _point_sample.point_sample
bilinear_grid_sample = _point_sample.bilinear_grid_sample
SimpleRoIAlign = _point_sample.SimpleRoIAlign
CrissCrossAttention = _load_mmcv_source("cc_attention").CrissCrossAttention


def _placeholder(name: str):
    class Unavailable:
        """A compiled mmcv operator that mmcv-lite does not have."""

        def __init__(self, *args, **kwargs):
            raise NotImplementedError(f"mmcv.ops.{name} needs mmcv's compiled extensions (not in mmcv-lite)")

        def __call__(self, *args, **kwargs):  # used as a function, e.g. sigmoid_focal_loss(...)
            raise NotImplementedError(f"mmcv.ops.{name} needs mmcv's compiled extensions (not in mmcv-lite)")

    Unavailable.__name__ = Unavailable.__qualname__ = name
    return Unavailable


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    value = _placeholder(name)
    globals()[name] = value
    return value
