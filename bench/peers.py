"""Peers: our models against the reference implementations others use, same process, same mode.

The pairs and how each differs from ours: docs/gpu-runs.md. Random weights everywhere; only speed is
compared, and in a ``-fused`` mode both sides run in their inference form (`bench.measure.fusion`).
ratio = peer latency / our latency (above 1: ours is faster). Each row carries both sides' FLOPs, so a
pair that does not compute the same amount shows as such (``same_work``, ``ratio_per_flop``). smp's
PSPNet is not paired: without a dilated encoder it computes a sixth of our PSPNet's FLOPs.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import archs
from archs import kernels
from archs.backbones.mit import MIT_CONFIGS
from bench.errors import BenchError
from bench.measure.flops import count_flops
from bench.measure.latency import measure_latency
from bench.protocol import MODEL_SEED, SpeedProtocol


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


def hf_segformer(variant: str) -> Callable[[int], nn.Module]:
    """HF transformers' SegFormer of our ``segformer-<variant>``: its encoder from `MIT_CONFIGS`, its decoder
    width read from our model."""

    def build(num_classes: int) -> nn.Module:
        from transformers import SegformerConfig, SegformerForSemanticSegmentation

        mit = MIT_CONFIGS[variant]
        with torch.device("meta"):  # only its shape is read
            ours = archs.build(f"segformer-{variant}", num_classes=num_classes)
        config = SegformerConfig(
            hidden_sizes=mit.embed_dims,
            depths=mit.depths,
            num_attention_heads=mit.num_heads,
            sr_ratios=mit.sr_ratios,
            mlp_ratios=(mit.mlp_ratio,) * len(mit.depths),
            decoder_hidden_size=ours.get_parameter("decode_head.classifier.weight").shape[1],
        )
        config.num_labels = num_classes
        model = SegformerForSemanticSegmentation(config)
        model.set_attn_implementation("sdpa")
        return LogitsOnly(model, "logits").eval()

    return build


def torchvision_model(name: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        from torchvision.models import segmentation

        model = getattr(segmentation, name)(
            weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False
        )
        return LogitsOnly(model, "out").eval()

    return build


def smp_model(arch: str, encoder: str, **options) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import segmentation_models_pytorch as smp

        return getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, classes=num_classes, **options).eval()

    return build


PAIRS: tuple[PeerPair, ...] = (
    *(PeerPair(f"segformer-{v}", f"HF Segformer-{v.upper()}", hf_segformer(v), "transformers") for v in MIT_CONFIGS),
    PeerPair(
        "deeplabv3-r101-os8", "torchvision deeplabv3_resnet101", torchvision_model("deeplabv3_resnet101"), "torchvision"
    ),
    PeerPair("fcn-r101", "torchvision fcn_resnet101", torchvision_model("fcn_resnet101"), "torchvision"),
    PeerPair(
        "deeplabv3plus-r101",
        "smp DeepLabV3Plus resnet101 (OS 8)",
        smp_model("DeepLabV3Plus", "resnet101", encoder_output_stride=8),
        "segmentation_models_pytorch",
    ),
    PeerPair(
        "deeplabv3plus-mobilenetv2",
        "smp DeepLabV3Plus mobilenet_v2 (OS 8)",
        smp_model("DeepLabV3Plus", "mobilenet_v2", encoder_output_stride=8),
        "segmentation_models_pytorch",
    ),
    PeerPair(
        "deeplabv3plus-mobilenetv2",
        "torchvision deeplabv3_mobilenet_v3_large",
        torchvision_model("deeplabv3_mobilenet_v3_large"),
        "torchvision",
    ),
)
# Two sides do the same work when their FLOPs agree within this share.
SAME_WORK = 0.02


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
    gflops: dict[str, float] | None = None,
) -> dict:
    """Time our model and the peer one after the other in this process; one row of the peers table.

    Both sides' FLOPs at ``input_size`` (fvcore, our handles) are counted into ``gflops`` (keys
    "ours" and "peer") unless it holds them already, from another mode of the same pair and size;
    ``same_work`` says whether they agree within `SAME_WORK`.
    """
    gflops = {} if gflops is None else gflops
    row: dict[str, Any] = {"ours": pair.ours, "peer": pair.peer, "input": "x".join(map(str, input_size)), "mode": mode}
    results = {}
    for side, build in (
        ("ours", lambda: archs.build(pair.ours, num_classes=num_classes)),
        ("peer", lambda: pair.build_peer(num_classes)),
    ):
        torch.manual_seed(MODEL_SEED)
        model = build().eval()
        launched = kernels.launched
        try:
            row[f"{side}_params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
            if side not in gflops:
                gflops[side] = count_flops(model.to(device), input_size, device=device).gflops
            row[f"{side}_gflops"] = gflops[side]
            results[side] = measure_latency(
                model, input_size, device=device, mode=mode, protocol=protocol, nvml_handle=nvml_handle
            )
            if side == "ours":  # whether our model ran segbench's fused kernels (`archs.kernels`)
                row["ours_fused_kernels"] = kernels.launched > launched
        finally:  # a failed side (out of memory, say) must not leave its memory to the next pair
            del model
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
    for side, result in results.items():  # a fused mode: what each side's inference form executes
        if result.inference_form is not None:
            row[f"{side}_executed_gflops"] = result.inference_form["executed_gflops"]
    row["ours_ms"], row["peer_ms"] = results["ours"].median_ms, results["peer"].median_ms
    row["ours_spread"], row["peer_spread"] = results["ours"].spread, results["peer"].spread
    # each side's memory layout (an "auto" mode keeps the faster for each side on its own)
    row["ours_channels_last"], row["peer_channels_last"] = results["ours"].channels_last, results["peer"].channels_last
    row["ratio"] = row["peer_ms"] / row["ours_ms"]
    row["same_work"] = bool(abs(gflops["peer"] / gflops["ours"] - 1.0) <= SAME_WORK)
    # time per FLOP, peer over ours: the ratio a pair doing different work is fairly judged by
    row["ratio_per_flop"] = row["ratio"] * gflops["ours"] / gflops["peer"]
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
