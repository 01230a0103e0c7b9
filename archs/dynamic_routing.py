"""Dynamic Routing: a routing space of cells with soft conditional gates, Layer33, with a PSP module.

Li et al., "Learning Dynamic Routing for Semantic Segmentation", CVPR 2020 (arXiv:2003.10401).
Official code: https://github.com/Megvii-BaseDetection/DynamicRouting (Apache-2.0;
``dl_lib/modeling/dynamic_arch/*``, ``meta_arch/dynamic4seg.py``,
``playground/Dynamic/Seg.Layer33.ImageNet/config.py``), whose Layer33 network this follows:

- stem to stride 4: 3x3 conv stride 2 (no padding) 3->64 + BN + ReLU; depthwise 3x3 + 1x1 64->64 +
  BN + ReLU; depthwise 3x3 stride 2 + 1x1 64->64 + BN + ReLU;
- routing space: an initial cell, then 33 layers of cells at strides 4, 8, 16, 32 (64, 128, 256,
  512 channels). A cell sums what its neighbours of the previous layer sent it, computes
  ``h = SepConv3x3(x) + x`` and a soft gate ``g = max(0, tanh(conv1x1(avgpool(ReLU(BN(conv1x1(x)))))))``
  per route: keep (``g_keep * ReLU(h)``, plus ``x`` when every gate is closed), up (1x1 conv to C/2,
  x2 bilinear, times ``g_up``), down (1x1 stride-2 conv to 2C, times ``g_down``);
- PSP (bins 1, 2, 3, 6) on the stride-32 output, where PSPNet puts it: the Layer33-PSP network of
  the paper's final results was not released;
- decoder: from stride 32 to 4, 1x1 conv-BN-ReLU, x2 bilinear, added to the next finer output; a
  3x3 classifier: logits at stride 4.

Inputs are zero-padded to a multiple of 32 as the official code pads them, and the logits cropped
to the image's area. Every route is computed and multiplied by its gate (no host synchronisation,
CUDA-graph capturable), so the FLOP count is the maximum; `DynamicRoutingNet.inactive_modules`
lists what the official code would skip for an input. Details: docs/models/dynamic-routing.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from archs.base import register
from archs.cards import card

__all__ = ["DynamicCell", "DynamicRoutingNet", "PyramidPooling", "SepConv", "dynamic_routing_l33_psp"]

GATE_THRESHOLD = 1e-4


class SepConv(nn.Sequential):
    """DARTS separable conv: (depthwise KxK, 1x1 + BN + ReLU), (depthwise KxK, 1x1 + BN).

    Args:
        channels: input and output channels.
        kernel_size: depthwise kernel.
    """

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        pad = kernel_size // 2
        super().__init__(
            nn.Conv2d(channels, channels, kernel_size, 1, pad, groups=channels, bias=False),
            Conv2dNormActivation(channels, channels, 1),
            nn.Conv2d(channels, channels, kernel_size, 1, pad, groups=channels, bias=False),
            Conv2dNormActivation(channels, channels, 1, activation_layer=None),
        )


class DynamicCell(nn.Module):
    """A routing cell: candidate operations, a soft conditional gate, and keep/up/down routes.

    ``forward`` returns ``(up, keep, down, gates)``; a route the cell does not have is None.

    Args:
        channels: channels at the cell's scale.
        allow_up: has a route to the finer scale (C/2 channels, x2 resolution).
        allow_down: has a route to the coarser scale (2C channels, /2 resolution).
        gate_bias: initial bias of the gate logits (1.5 in the official configuration).
    """

    def __init__(self, channels: int, allow_up: bool, allow_down: bool, gate_bias: float = 1.5) -> None:
        super().__init__()
        self.allow_up, self.allow_down = allow_up, allow_down
        self.ops = SepConv(channels, 3)
        num_gates = 1 + int(allow_up) + int(allow_down)
        reduce = Conv2dNormActivation(channels, channels // 2, 1)
        gate_logits = nn.Conv2d(channels // 2, num_gates, 1)
        nn.init.constant_(gate_logits.get_parameter("bias"), gate_bias)
        self.gate = nn.Sequential(reduce, nn.AdaptiveAvgPool2d(1), gate_logits)
        self.res_up = nn.Sequential(nn.ReLU(), Conv2dNormActivation(channels, channels // 2, 1)) if allow_up else None
        self.res_down = (
            nn.Sequential(nn.ReLU(), Conv2dNormActivation(channels, 2 * channels, 1, stride=2, padding=0))
            if allow_down
            else None
        )

    def forward(self, x: Tensor) -> tuple[Tensor | None, Tensor, Tensor | None, Tensor]:
        gates = F.relu(torch.tanh(self.gate(x)))  # (N, routes, 1, 1): keep, [up], [down]
        closed = (gates.sum(dim=1, keepdim=True) < GATE_THRESHOLD).to(x.dtype)
        h = self.ops(x) + x
        keep = closed * x + gates[:, :1] * F.relu(h)
        up = down = None
        if self.res_up is not None:
            up = F.interpolate(self.res_up(h), scale_factor=2.0, mode="bilinear", align_corners=False) * gates[:, 1:2]
        if self.res_down is not None:
            down = self.res_down(h) * gates[:, -1:]
        return up, keep, down, gates


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: per bin, adaptive average pooling and 1x1 conv (C/4), upsampled;
    concatenated with the input and fused by a 3x3 conv + BN + ReLU to ``out_channels``.

    Args:
        channels: input channels.
        out_channels: output channels.
        bins: pooling grid sizes.
    """

    def __init__(self, channels: int, out_channels: int, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.bins = tuple(bins)
        self.stages = nn.ModuleList(Conv2dNormActivation(channels, channels // 4, 1) for _ in bins)
        self.bottleneck = Conv2dNormActivation(channels + len(bins) * (channels // 4), out_channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(stage(F.adaptive_avg_pool2d(x, b)), size=size, mode="bilinear", align_corners=False)
            for b, stage in zip(self.bins, self.stages, strict=True)
        ]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class DynamicRoutingNet(nn.Module):
    """Stem, routing space of ``num_layers`` layers, optional PSP, and the decoder.

    Args:
        num_classes: output classes.
        num_layers: layers of the routing space (33 for Layer33, 16 for Layer16).
        init_channels: channels at stride 4 (doubling per scale).
        num_scales: scales of the routing space (4: strides 4 to 32).
        psp: add the pyramid pooling module on the coarsest output.
        gate_bias: initial bias of the gate logits.
    """

    def __init__(
        self,
        num_classes: int,
        num_layers: int = 33,
        init_channels: int = 64,
        num_scales: int = 4,
        psp: bool = True,
        gate_bias: float = 1.5,
    ) -> None:
        super().__init__()
        c = init_channels
        # the official MAX_STRIDE: inputs are padded to a multiple of the coarsest scale's stride
        self.size_divisibility = 4 * 2 ** (num_scales - 1)
        self.stem = nn.Sequential(
            Conv2dNormActivation(3, c, 3, stride=2, padding=0),
            nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False),
            Conv2dNormActivation(c, c, 1),
            nn.Conv2d(c, c, 3, 2, 1, groups=c, bias=False),
            Conv2dNormActivation(c, c, 1),
        )
        self.init_cell = DynamicCell(c, allow_up=False, allow_down=True, gate_bias=gate_bias)
        counts = [min(i + 2, num_scales) for i in range(num_layers)]  # 2, 3, 4, 4, ...
        self.layers = nn.ModuleList()
        self.inputs: list[list[tuple[bool, bool, bool]]] = []  # per cell: from finer, same, coarser scale
        for layer, n in enumerate(counts):
            last = layer == num_layers - 1
            cells, sources = [], []
            for i in range(n):
                cells.append(
                    DynamicCell(
                        c * 2**i, allow_up=i > 0 and not last, allow_down=i < 3 and not last, gate_bias=gate_bias
                    )
                )
                growing = layer <= 2
                from_coarser = i < n - (2 if growing else 1)
                from_same = not (growing and i == n - 1)
                sources.append((i > 0, from_same, from_coarser))
            self.layers.append(nn.ModuleList(cells))
            self.inputs.append(sources)
        channels = [c * 2**i for i in range(num_scales)]
        self.psp = PyramidPooling(channels[-1], channels[-1]) if psp else None
        self.decoder = nn.ModuleList(
            Conv2dNormActivation(ch, ch if i == 0 else ch // 2, 1) for i, ch in enumerate(channels)
        )
        self.predictor = nn.Conv2d(c, num_classes, 3, padding=1)

    def _routing(self, x: Tensor) -> tuple[list[Tensor], list[tuple[str, Tensor]]]:
        """The last layer's outputs per scale and every cell's gates (with the cell's module name).

        ``x`` is padded to a multiple of ``size_divisibility`` first, as the official code pads its images.
        """
        pad_h, pad_w = -x.shape[-2] % self.size_divisibility, -x.shape[-1] % self.size_divisibility
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))  # zeros at the bottom and right: the mean colour once normalised
        up, keep, down, gates = self.init_cell(self.stem(x))
        previous = [(up, keep, down)]
        all_gates = [("init_cell", gates)]
        for layer, (cells, sources) in enumerate(zip(self.layers, self.inputs, strict=True)):
            outputs = []
            for i, (cell, (from_finer, from_same, from_coarser)) in enumerate(
                zip(cast(nn.ModuleList, cells), sources, strict=True)
            ):
                parts = []
                if from_finer:
                    parts.append(previous[i - 1][2])
                if from_same:
                    parts.append(previous[i][1])
                if from_coarser:
                    parts.append(previous[i + 1][0])
                h = parts[0]
                for part in parts[1:]:
                    h = h + part
                up, keep, down, gates = cell(h)
                outputs.append((up, keep, down))
                all_gates.append((f"layers.{layer}.{i}", gates))
            previous = outputs
        return [keep for _, keep, _ in previous], all_gates

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        features, _ = self._routing(x)
        if self.psp is not None:
            features[-1] = self.psp(features[-1])
        pred = None
        for i in range(len(features) - 1, -1, -1):
            feat = features[i] if pred is None else features[i] + pred
            pred = self.decoder[i](feat)
            if i > 0:
                pred = F.interpolate(pred, scale_factor=2.0, mode="bilinear", align_corners=False)
        logits = self.predictor(pred)
        if height % self.size_divisibility or width % self.size_divisibility:
            logits = logits[..., : -(-height // 4), : -(-width // 4)]  # the image's own area, without the padding
        return logits

    @torch.no_grad()
    def inactive_modules(self, x: Tensor) -> list[str]:
        """Submodules the official implementation would skip for ``x`` (batch of one).

        A cell whose gates are all below 1e-4 runs only its gate; an open cell skips the up/down
        route whose gate is closed. Subtracting these modules' FLOPs from the static count gives
        the per-image FLOPs the paper reports. This method synchronises with the host.
        """
        if x.shape[0] != 1:
            raise ValueError("inactive_modules takes a batch of one image")
        _, all_gates = self._routing(x)
        inactive = []
        for name, gates in all_gates:
            g = gates.flatten().tolist()
            cell = self.get_submodule(name)
            if sum(g) < GATE_THRESHOLD:
                inactive += [f"{name}.ops"] + [f"{name}.{r}" for r in ("res_up", "res_down") if getattr(cell, r)]
                continue
            if cell.res_up is not None and g[1] <= GATE_THRESHOLD:
                inactive.append(f"{name}.res_up")
            if cell.res_down is not None and g[-1] <= GATE_THRESHOLD:
                inactive.append(f"{name}.res_down")
        return inactive


@register(card("dynamic-routing-l33-psp"))
def dynamic_routing_l33_psp(*, num_classes: int) -> nn.Module:
    """Dynamic Routing, Layer33 routing space with soft conditional gates, plus a PSP module."""
    return DynamicRoutingNet(num_classes, num_layers=33, psp=True)
