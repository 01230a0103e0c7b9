"""Peers: our models against the reference implementations others use, same process, same mode.

Pairs: SegFormer B0–B5 against HF transformers' ``SegformerForSemanticSegmentation`` (SDPA
attention); the ResNet-101 and MobileNetV2 CNNs against torchvision's and
segmentation_models_pytorch's nearest equivalents (random weights everywhere; only speed is
compared). A ratio above 1 means ours is faster: ratio = peer latency / our latency.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import archs
from bench.errors import BenchError
from bench.measure.speed import measure_latency
from bench.protocol import SpeedProtocol


class LogitsOnly(nn.Module):
    """Adapts a peer whose forward returns a dict or a model output to ``forward(x) -> logits``."""

    def __init__(self, model: nn.Module, key: str) -> None:
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[self.key] if isinstance(out, dict) else getattr(out, self.key)


@dataclass(frozen=True)
class PeerPair:
    """One of our registered models and a peer built with the same class count.

    Args:
        ours: registry name.
        peer: how the table names the peer.
        build_peer: ``num_classes -> nn.Module`` returning logits.
        requires: the Python package the peer needs.
    """

    ours: str
    peer: str
    build_peer: Callable[[int], nn.Module]
    requires: str


_SEGFORMER = {  # (hidden sizes, depths, decoder width) of MiT-B0..B5
    "b0": ([32, 64, 160, 256], [2, 2, 2, 2], 256),
    "b1": ([64, 128, 320, 512], [2, 2, 2, 2], 256),
    "b2": ([64, 128, 320, 512], [3, 4, 6, 3], 768),
    "b3": ([64, 128, 320, 512], [3, 4, 18, 3], 768),
    "b4": ([64, 128, 320, 512], [3, 8, 27, 3], 768),
    "b5": ([64, 128, 320, 512], [3, 6, 40, 3], 768),
}


def hf_segformer(variant: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        from transformers import SegformerConfig, SegformerForSemanticSegmentation

        hidden, depths, decoder = _SEGFORMER[variant]
        config = SegformerConfig(
            hidden_sizes=hidden,
            depths=depths,
            decoder_hidden_size=decoder,
            num_attention_heads=[1, 2, 5, 8],
            num_labels=num_classes,
            attn_implementation="sdpa",
        )
        return LogitsOnly(SegformerForSemanticSegmentation(config), "logits").eval()

    return build


def torchvision_model(name: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        from torchvision.models import segmentation

        model = getattr(segmentation, name)(
            weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False
        )
        return LogitsOnly(model, "out").eval()

    return build


def smp_model(arch: str, encoder: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import segmentation_models_pytorch as smp

        return getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, classes=num_classes).eval()

    return build


PAIRS: tuple[PeerPair, ...] = (
    *(PeerPair(f"segformer-{v}", f"HF Segformer-{v.upper()}", hf_segformer(v), "transformers") for v in _SEGFORMER),
    PeerPair("fcn-r101", "torchvision fcn_resnet101", torchvision_model("fcn_resnet101"), "torchvision"),
    PeerPair(
        "deeplabv3plus-r101", "torchvision deeplabv3_resnet101", torchvision_model("deeplabv3_resnet101"), "torchvision"
    ),
    PeerPair(
        "deeplabv3plus-r101",
        "smp DeepLabV3Plus resnet101",
        smp_model("DeepLabV3Plus", "resnet101"),
        "segmentation_models_pytorch",
    ),
    PeerPair("pspnet-r101", "smp PSPNet resnet101", smp_model("PSPNet", "resnet101"), "segmentation_models_pytorch"),
    PeerPair(
        "deeplabv3plus-mobilenetv2",
        "torchvision deeplabv3_mobilenet_v3_large",
        torchvision_model("deeplabv3_mobilenet_v3_large"),
        "torchvision",
    ),
    PeerPair(
        "deeplabv3plus-mobilenetv2",
        "smp DeepLabV3Plus mobilenet_v2",
        smp_model("DeepLabV3Plus", "mobilenet_v2"),
        "segmentation_models_pytorch",
    ),
)


def available(pair: PeerPair) -> bool:
    return importlib.util.find_spec(pair.requires) is not None


def compare(
    pair: PeerPair,
    input_size: tuple[int, int],
    mode: str,
    *,
    device: str,
    protocol: SpeedProtocol,
    num_classes: int,
    nvml_handle=None,
) -> dict:
    """Time our model and the peer one after the other in this process; one row of the peers table."""
    row = {"ours": pair.ours, "peer": pair.peer, "input": "x".join(map(str, input_size)), "mode": mode}
    results = {}
    for side, build in (
        ("ours", lambda: archs.build(pair.ours, num_classes=num_classes)),
        ("peer", lambda: pair.build_peer(num_classes)),
    ):
        model = build()
        results[side] = measure_latency(
            model, input_size, device=device, mode=mode, protocol=protocol, nvml_handle=nvml_handle
        )
        row[f"{side}_params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
        del model
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    row["ours_ms"], row["peer_ms"] = results["ours"].median_ms, results["peer"].median_ms
    row["ours_spread"], row["peer_spread"] = results["ours"].spread, results["peer"].spread
    row["ratio"] = row["peer_ms"] / row["ours_ms"]
    return row


def select(names: list[str] | None) -> list[PeerPair]:
    """The pairs for ``names`` (all when empty); a `BenchError` for a name without a peer."""
    pairs = [p for p in PAIRS if not names or p.ours in names]
    missing = set(names or []) - {p.ours for p in pairs}
    if missing:
        raise BenchError(
            f"no peer for {', '.join(sorted(missing))}; models with peers: {', '.join(sorted({p.ours for p in PAIRS}))}"
        )
    return pairs
