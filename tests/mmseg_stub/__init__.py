"""Test-only oracle: mmsegmentation 1.2.2 models on CPU with random weights, no download.

mmseg's import needs ``mmcv.ops``, whose package ``__init__`` loads compiled extensions that
``mmcv-lite`` does not ship. `install` registers a stand-in ``mmcv.ops`` module (`mmseg_stub.ops`)
that exposes mmcv's own pure-PyTorch ``point_sample`` and ``CrissCrossAttention`` (loaded from
mmcv-lite's source files) and placeholders for the compiled operators, which fail when used.

Requirements (test extra): ``mmsegmentation==1.2.2 mmengine mmcv-lite==2.1.0 ftfy``.

    from tests.mmseg_stub import build_mmseg_model, mmseg_logits
    model = build_mmseg_model("fcn/fcn_r101-d8_4xb4-160k_ade20k-512x512.py", num_classes=150)
    logits = mmseg_logits(model, x)  # decode-head logits before the resize to the input size
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

__all__ = ["available", "build_mmseg_model", "config_for_checkpoint", "config_path", "install", "mmseg_logits"]

# Checkpoints of the model zoo that mmseg 1.x's metafiles no longer list (they list a retrained file of the
# same configuration): file name -> packaged config.
_RETRAINED = {
    "fcn_m-v2-d8_512x1024_80k_cityscapes_20200825_124817-d24c28c1.pth": (
        "mobilenet_v2/mobilenet-v2-d8_fcn_4xb2-80k_cityscapes-512x1024.py"
    ),
}


def available() -> bool:
    """True when mmsegmentation, mmengine and mmcv(-lite) are importable."""
    return all(importlib.util.find_spec(name) is not None for name in ("mmseg", "mmengine", "mmcv"))


def install() -> None:
    """Register the ``mmcv.ops`` stand-in (idempotent); call before importing ``mmseg``."""
    import mmcv

    if getattr(sys.modules.get("mmcv.ops"), "IS_SEGBENCH_STUB", False):
        return
    from . import ops

    sys.modules["mmcv.ops"] = ops
    mmcv.ops = ops


def config_path(config_relpath: str) -> Path:
    """Path of a config packaged with mmseg (``mmseg/.mim/configs/<config_relpath>``)."""
    spec = importlib.util.find_spec("mmseg")
    path = Path(spec.origin).parent / ".mim" / "configs" / config_relpath
    if not path.is_file():
        raise FileNotFoundError(f"mmseg has no packaged config {config_relpath!r} ({path})")
    return path


@functools.cache
def _configs_by_checkpoint() -> dict[str, str]:
    import yaml

    root = config_path("_base_/default_runtime.py").parent.parent
    index = dict(_RETRAINED)
    for metafile in sorted(root.glob("*/metafile.yaml")):
        for model in yaml.safe_load(metafile.read_text()).get("Models") or ():
            if model.get("Weights") and model.get("Config"):
                index[model["Weights"].rsplit("/", 1)[-1]] = model["Config"].removeprefix("configs/")
    return index


def config_for_checkpoint(url: str) -> str:
    """The packaged config (path under ``configs/``) of an mmseg model-zoo checkpoint, found by its file name."""
    name = url.rsplit("/", 1)[-1]
    try:
        return _configs_by_checkpoint()[name]
    except KeyError:
        raise LookupError(f"no mmseg metafile lists the checkpoint {name}") from None


def _revert_sync_bn(cfg):
    """A copy of ``cfg`` with every ``SyncBN`` norm config replaced by ``BN``."""
    if isinstance(cfg, dict):
        out = {k: _revert_sync_bn(v) for k, v in cfg.items()}
        if out.get("type") == "SyncBN":
            out["type"] = "BN"
        return out
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(_revert_sync_bn(v) for v in cfg)
    return cfg


def build_mmseg_model(
    config_relpath: str, num_classes: int, *, aux_head: bool = False, seed: int | None = 0
) -> nn.Module:
    """Build the model of an mmseg packaged config: random weights, BN instead of SyncBN, eval mode.

    Args:
        config_relpath: path under ``mmseg/.mim/configs`` (``fcn/fcn_r101-d8_4xb4-160k_ade20k-512x512.py``).
        num_classes: classes of every head.
        aux_head: keep the training-only auxiliary head(s) (dropped by default, as mmseg's
            ``get_flops.py`` does).
        seed: ``torch.manual_seed`` before building, for reproducible weights (None: leave the RNG).
    """
    install()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mmcv-lite/mmseg deprecation and missing-op notices
        from mmengine.config import Config
        from mmengine.registry import init_default_scope
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules

        register_all_modules(init_default_scope=False)
    init_default_scope("mmseg")
    cfg = Config.fromfile(str(config_path(config_relpath)))
    model_cfg = _revert_sync_bn(copy.deepcopy(cfg.model.to_dict()))
    model_cfg["pretrained"] = None
    model_cfg.get("backbone", {}).pop("init_cfg", None)
    model_cfg.pop("data_preprocessor", None)
    heads = model_cfg["decode_head"] if isinstance(model_cfg["decode_head"], list) else [model_cfg["decode_head"]]
    for head in heads:
        head["num_classes"] = num_classes
    if not aux_head:
        model_cfg.pop("auxiliary_head", None)
    elif model_cfg.get("auxiliary_head") is not None:
        aux = model_cfg["auxiliary_head"]
        for head in aux if isinstance(aux, list) else [aux]:
            head["num_classes"] = num_classes
    if seed is not None:
        torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # loss-config notices of the (unused) training losses
        model = MODELS.build(model_cfg)
    return model.eval()


def mmseg_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The decode head's logits for ``x`` (``EncoderDecoder`` before its resize to the input size)."""
    with torch.no_grad():
        return model.decode_head(model.extract_feat(x))
