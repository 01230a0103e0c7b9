"""Fully connected CRF post-processing (mean-field inference with Gaussian edge potentials), on the GPU.

Krähenbühl & Koltun, "Efficient Inference in Fully Connected CRFs with Gaussian Edge Potentials",
NIPS 2011; used after the network by DeepLab v1/v2 (Chen et al., ICLR 2015 and TPAMI 2017,
https://bitbucket.org/aquariusjay/deeplab-public-ver2, whose ``densecrf`` is Krähenbühl's code).
Potts compatibility, an appearance kernel on positions and RGB colours (w1, theta_alpha,
theta_beta) and a smoothness kernel on positions (w2, theta_gamma); mean-field inference from
``Q = softmax(logits)``, messages normalised per pixel as Krähenbühl's code normalises them.
`DenseCRF` returns the last energies, whose argmax is the CRF labelling and whose softmax is Q.

Krähenbühl's permutohedral lattice does not map onto dense GPU kernels or CUDA graphs, so:

- the smoothness kernel is exact up to truncation at 3 theta_gamma (a separable depthwise convolution);
- the appearance kernel gathers, for each pixel, from the ``(2 radius + 1)^2`` cells of
  ``cell x cell`` pixels around its own: exact position term, colour term against the cell's mean
  colour, applied to the cell's mean Q; the pixel itself is counted exactly. The weights depend
  only on the image, so each iteration is one batched matrix product. With ``cell=1`` and a window
  covering the image the filter is exact (the tests check it against a brute-force dense CRF).

Everything runs in fp32 (colour distances need the precision). `CRFRefinement` makes the CRF part
of the timed inference step. The model and the approximation in full: docs/models/deeplab.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DEEPLAB_V1_LARGEFOV_CRF", "CRFParameters", "CRFRefinement", "DenseCRF"]


class CRFParameters(TypedDict):
    """Keyword arguments of `DenseCRF` that a published configuration fixes."""

    iterations: int
    appearance_weight: float
    theta_alpha: float
    theta_beta: float
    smoothness_weight: float
    theta_gamma: float


# DeepLab-LargeFOV's CRF (deeplab-public run_densecrf.sh, "FOV" line): bi_w 4, bi_xy_std 121,
# bi_rgb_std 5, pos_w 3, pos_xy_std 3, 10 mean-field iterations.
DEEPLAB_V1_LARGEFOV_CRF: CRFParameters = {
    "iterations": 10,
    "appearance_weight": 4.0,
    "theta_alpha": 121.0,
    "theta_beta": 5.0,
    "smoothness_weight": 3.0,
    "theta_gamma": 3.0,
}


class DenseCRF(nn.Module):
    """Mean-field inference of a fully connected CRF with appearance and smoothness kernels.

    ``forward(logits, image)``: ``logits`` (N, K, H, W) at the image's resolution (the unary is
    ``-log softmax(logits)``), ``image`` (N, 3, H, W) RGB on the 0..255 scale; returns the refined
    energies (N, K, H, W). The kernel parameters have no defaults: a published configuration such as
    `DEEPLAB_V1_LARGEFOV_CRF` gives them (``DenseCRF(**DEEPLAB_V1_LARGEFOV_CRF)``).

    Args:
        iterations: mean-field iterations.
        appearance_weight: w1 of the appearance (bilateral) kernel.
        theta_alpha: its spatial standard deviation, pixels.
        theta_beta: its colour standard deviation, 0..255 units.
        smoothness_weight: w2 of the smoothness kernel.
        theta_gamma: its spatial standard deviation, pixels.
        cell: side of the pixel cells the appearance kernel gathers from (1 = every pixel).
        radius: the appearance window spans ``2 * radius + 1`` cells per axis.
    """

    position_term: Tensor
    smoothness_taps: Tensor

    def __init__(
        self,
        *,
        iterations: int,
        appearance_weight: float,
        theta_alpha: float,
        theta_beta: float,
        smoothness_weight: float,
        theta_gamma: float,
        cell: int = 8,
        radius: int = 6,
    ) -> None:
        super().__init__()
        if iterations < 1 or cell < 1 or radius < 0:
            raise ValueError(f"need iterations >= 1, cell >= 1, radius >= 0; got {iterations}, {cell}, {radius}")
        self.iterations = iterations
        self.appearance_weight = appearance_weight
        self.smoothness_weight = smoothness_weight
        self.theta_beta = theta_beta
        self.cell = cell
        self.radius = radius
        # Position term between the pixel (py, px) of a cell and the centre of the cell at offset
        # (oy, ox): (P, O) with P = cell^2 pixels and O = (2 radius + 1)^2 cells, row-major.
        pix = torch.arange(cell, dtype=torch.float64)
        off = torch.arange(-radius, radius + 1, dtype=torch.float64) * cell + (cell - 1) / 2
        d = off[None, :] - pix[:, None]  # (cell, 2r+1): along one axis
        d2 = (d[:, None, :, None] ** 2 + d[None, :, None, :] ** 2).reshape(cell * cell, -1)
        self.register_buffer("position_term", (d2 / (2 * theta_alpha**2)).float(), persistent=False)
        # Smoothness: 1-D Gaussian taps truncated at 3 theta_gamma.
        reach = max(1, math.ceil(3 * theta_gamma))
        t = torch.arange(-reach, reach + 1, dtype=torch.float64)
        self.register_buffer("smoothness_taps", torch.exp(-(t**2) / (2 * theta_gamma**2)).float(), persistent=False)

    def forward(self, logits: Tensor, image: Tensor) -> Tensor:
        if logits.shape[-2:] != image.shape[-2:]:
            raise ValueError(f"logits {tuple(logits.shape)} and image {tuple(image.shape)} differ in size")
        with torch.autocast(logits.device.type, enabled=False):
            unary = logits.float()
            image = image.float()
            weights, self_weight = self._appearance_weights(image)
            smooth_norm = self._smooth(torch.ones_like(unary[:1, :1])).reciprocal()
            energy = unary
            q = unary.softmax(dim=1)
            for _ in range(self.iterations):
                appearance = self._gather(q, weights) + self_weight * q
                energy = unary + self.appearance_weight * appearance
                energy = energy + self.smoothness_weight * self._smooth(q) * smooth_norm
                q = energy.softmax(dim=1)
        return energy

    def _pad(self, x: Tensor) -> Tensor:
        """Replicate-pad the bottom/right edges to a multiple of ``cell``."""
        ph, pw = (-x.shape[-2]) % self.cell, (-x.shape[-1]) % self.cell
        return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x

    def _window(self, cells: Tensor) -> Tensor:
        """(N, C, hc, wc) cell map -> (N, hc * wc, O, C): each cell's window of cells (zeros outside)."""
        n, c = cells.shape[:2]
        size = 2 * self.radius + 1
        cols = F.unfold(cells, size, padding=self.radius)  # (N, C * O, hc * wc)
        return cols.view(n, c, size * size, -1).permute(0, 3, 2, 1).contiguous()

    def _appearance_weights(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised pixel-to-cell weights (N, cells, P, O) and the pixel's own weight (N, 1, H, W).

        A cell stands for its ``cell^2`` pixels at its mean colour; the pixel itself (kernel value 1)
        is taken out of its own cell and counted exactly, so the normaliser is at least 1 and a pixel
        whose colour matches no cell around it keeps its own Q, as in the exact filter. With
        ``cell=1`` this is the exact windowed filter.
        """
        s = self.cell
        h, w = image.shape[-2:]
        image = self._pad(image) / self.theta_beta
        n = image.shape[0]
        hc, wc = image.shape[-2] // s, image.shape[-1] // s
        pixels = image.view(n, 3, hc, s, wc, s).permute(0, 2, 4, 3, 5, 1).reshape(n, hc * wc, s * s, 3)
        cells = self._window(F.avg_pool2d(image, s))  # (N, cells, O, 3)
        colour = (pixels[..., 0, None] - cells[..., None, :, 0]) ** 2
        for ch in (1, 2):
            colour = colour + (pixels[..., ch, None] - cells[..., None, :, ch]) ** 2
        inside = self._window(torch.ones_like(image[:1, :1, ::s, ::s]))  # (1, cells, O, 1)
        weights = torch.exp(-0.5 * colour - self.position_term) * inside.transpose(-1, -2)
        own = weights[..., self.radius * (2 * self.radius + 2)]  # the centre of the window: the pixel's cell
        norm = (s * s) * weights.sum(dim=-1) - own + 1  # (N, cells, P), >= 1
        self_weight = self._to_image((-own + 1) / norm, hc, wc)[..., :h, :w]  # (1 - own) without aten::rsub
        return weights * ((s * s) / norm)[..., None], self_weight

    def _to_image(self, x: Tensor, hc: int, wc: int) -> Tensor:
        """(N, cells, P[, C]) in cell layout -> (N, C, hc * cell, wc * cell)."""
        s = self.cell
        n, c = x.shape[0], x.shape[3] if x.dim() == 4 else 1
        x = x.reshape(n, hc, wc, s, s, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(n, c, hc * s, wc * s)

    def _gather(self, q: Tensor, weights: Tensor) -> Tensor:
        """The cells' contribution to the appearance message: weights @ (the window's mean Q)."""
        h, w = q.shape[-2:]
        q_cells = F.avg_pool2d(self._pad(q), self.cell)
        hc, wc = q_cells.shape[-2:]
        message = torch.matmul(weights, self._window(q_cells))  # (N, cells, P, K)
        return self._to_image(message, hc, wc)[..., :h, :w]

    def _smooth(self, x: Tensor) -> Tensor:
        """Separable (truncated) Gaussian filter of every channel, zero outside the image."""
        n, c, h, w = x.shape
        taps = self.smoothness_taps
        reach = taps.numel() // 2
        y = x.reshape(n * c, 1, h, w)
        y = F.conv2d(y, taps.view(1, 1, 1, -1), padding=(0, reach))
        y = F.conv2d(y, taps.view(1, 1, -1, 1), padding=(reach, 0))
        return y.view(n, c, h, w)


class CRFRefinement(nn.Module):
    """A segmentation model followed by `DenseCRF`, as one module (the CRF becomes part of the timed step).

    ``forward(x)`` runs the model, upsamples its logits bilinearly to the input size, recovers the
    RGB image from the normalised input (``x * std + mean``) and returns the CRF's energies at
    full resolution.

    Args:
        model: the segmentation network (forward(x) -> logits at any stride).
        crf: the CRF.
        mean: per-channel mean the input was normalised with (RGB, 0..255).
        std: per-channel standard deviation of that normalisation.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, model: nn.Module, crf: DenseCRF, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.crf = crf
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model(x)
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.crf(logits, x * self.std + self.mean)
