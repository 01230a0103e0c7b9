"""Test-time inference as the published configurations run it (mmsegmentation's ``EncoderDecoder``).

The test pipeline resizes each image keeping its aspect ratio so that it fits ``scale = (long,
short)`` as far as possible (mmcv ``rescale_size``; ADE20K ``(2048, 512)``: short side 512, long
side at most 2048; Cityscapes ``(2048, 1024)``: the identity on 1024x2048). Then:

- ``whole``: one forward pass on the resized image;
- ``slide``: windows of ``crop`` every ``stride`` pixels, the last one clamped to the border;
  each window's logits are resized to the window, summed into the image and divided by the
  number of windows that cover each pixel.

The logits are resized bilinearly to the resized image, then to the original label size, before
the argmax (metrics are computed at the ground truth's resolution). ``aug_test`` averages the
softmax over scales ``ratios`` x the base scale and their horizontal flips (mmseg 0.x
``MultiScaleFlipAug``, as the papers' multi-scale numbers were taken).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from archs import ArchSpec, Evaluation
from bench import protocol as proto
from bench.errors import BenchError

MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
# keep-ratio resize bound (long side, short side) of each dataset's test pipeline
DATASET_SCALES = {"ade20k": (2048, 512), "cityscapes": (2048, 1024)}


@dataclass(frozen=True)
class EvalProtocol:
    """How one model is run on one dataset's test images.

    Args:
        mode: ``whole`` or ``slide``.
        scale: (long, short) bound of the keep-ratio resize.
        crop, stride: (H, W) of the sliding windows and their step (slide mode).
        align_corners: of the bilinear logit resizes (True only for mmseg's 769x769 configs).
        ratios: scales of the multi-scale test, relative to ``scale``.
        flip: add horizontally flipped passes to the multi-scale test.
        window_batch: windows of one image run as one batch (a speed setting, not part of the protocol).
    """

    mode: str = "whole"
    scale: tuple[int, int] = (2048, 512)
    crop: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    align_corners: bool = False
    ratios: tuple[float, ...] = MS_RATIOS
    flip: bool = True
    window_batch: int = 4

    def __post_init__(self) -> None:
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"mode must be whole or slide, got {self.mode!r}")
        if self.mode == "slide" and (self.crop is None or self.stride is None):
            raise ValueError("slide mode needs crop and stride")

    def windows(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(crop, stride) of the sliding windows; a ValueError in whole mode."""
        if self.crop is None or self.stride is None:
            raise ValueError(f"a {self.mode} protocol has no sliding windows")
        return self.crop, self.stride

    def describe(self, aug_test: bool = False) -> str:
        text = f"{self.mode}, resize to fit {self.scale[0]}x{self.scale[1]} (long x short side, keep ratio)"
        if self.mode == "slide":
            crop, stride = self.windows()
            text += f", {crop[0]}x{crop[1]} windows every {stride[0]}x{stride[1]}"
        if aug_test:
            text += f", scales {'/'.join(f'{r:g}' for r in self.ratios)}" + (" + flip" if self.flip else "")
        return text + ", fp32"

    def as_dict(self, aug_test: bool = False) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "window_batch"}
        if not aug_test:
            out.pop("ratios")
            out.pop("flip")
        return {**out, "aug_test": aug_test}


def eval_protocol(spec: ArchSpec, dataset: str, mode: str | None = None) -> EvalProtocol:
    """The published test protocol of ``spec`` on ``dataset``; ``mode`` overrides whole/slide.

    Args:
        spec: the architecture's spec (its per-dataset input size and published `evaluation`).
        dataset: protocol dataset name.
        mode: None (the published protocol), ``whole`` or ``slide``.
    """
    size = proto.input_size(spec, dataset)
    scale = DATASET_SCALES[dataset]
    if dataset == "ade20k":
        scale = (scale[0], min(size))  # SegFormer-B5 on ADE20K: (2048, 640)
    published = spec.evaluation.get(dataset, Evaluation())
    protocol = EvalProtocol(mode=published.mode, scale=scale, crop=published.crop, stride=published.stride)
    if mode is None or mode == protocol.mode:
        return protocol
    if mode == "whole":
        return replace(protocol, mode="whole", crop=None, stride=None)
    if mode == "slide":
        if dataset == "ade20k":
            crop = (min(size), min(size))
            stride = (crop[0] * 2 // 3, crop[1] * 2 // 3)  # 512 -> 341 as mmseg's ADE20K slide configs
        else:
            crop, stride = (1024, 1024), (768, 768)
        return replace(protocol, mode="slide", crop=crop, stride=stride)
    raise BenchError(f"--mode {mode!r}: choose whole or slide")


def rescale_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """(H, W) after mmcv's keep-ratio resize to fit ``scale = (long, short)``."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def window_grid(
    height: int, width: int, crop: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) of every sliding window, as mmseg's ``slide_inference`` places them."""
    rows = max(height - crop[0] + stride[0] - 1, 0) // stride[0] + 1
    cols = max(width - crop[1] + stride[1] - 1, 0) // stride[1] + 1
    windows = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride[0] + crop[0], height), min(c * stride[1] + crop[1], width)
            windows.append((max(y2 - crop[0], 0), y2, max(x2 - crop[1], 0), x2))
    return windows


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(N, 3, *size)`` in 0..255: bilinear, rounded as the uint8 ``cv2.resize`` of mmcv (the input as is
    when it already has that size)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image.float(), size=size, mode="bilinear", align_corners=False).round_().clamp_(0, 255)


def resize_logits(logits: torch.Tensor, size: tuple[int, ...], align_corners: bool) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


def forward_logits(model: nn.Module, x: torch.Tensor, num_classes: int, align_corners: bool) -> torch.Tensor:
    """The model's logits resized to ``x``'s size; a `BenchError` when it predicts another class count."""
    logits = model(x)
    if logits.ndim != 4 or logits.shape[1] != num_classes:
        raise BenchError(
            f"the model returns logits of shape {tuple(logits.shape)}, not (N, {num_classes}, h, w); "
            f"build it with num_classes={num_classes} for this dataset"
        )
    return resize_logits(logits.float(), tuple(x.shape[-2:]), align_corners)


def slide_logits(model: nn.Module, x: torch.Tensor, protocol: EvalProtocol, num_classes: int) -> torch.Tensor:
    """Sliding-window logits at ``x``'s size (``x``: one normalised image, ``(1, 3, H, W)``)."""
    height, width = x.shape[-2:]
    windows = window_grid(height, width, *protocol.windows())
    logits = x.new_zeros((1, num_classes, height, width))
    count = x.new_zeros((1, 1, height, width))
    for start in range(0, len(windows), protocol.window_batch):
        chunk = windows[start : start + protocol.window_batch]
        crops = torch.cat([x[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])
        out = forward_logits(model, crops, num_classes, protocol.align_corners)
        for i, (y1, y2, x1, x2) in enumerate(chunk):
            logits[:, :, y1:y2, x1:x2] += out[i : i + 1]
            count[:, :, y1:y2, x1:x2] += 1
    return logits / count


class Predictor:
    """Class ids for one image under a test protocol: the normalisation, resizes and forward passes.

    Args:
        model: the model, in eval mode, on the device of the images.
        protocol: the test protocol.
        num_classes: classes the model predicts.
        mean, std: the spec's RGB normalisation on the 0..255 scale.
        aug_test: multi-scale (+ flip) test.
    """

    def __init__(
        self,
        model: nn.Module,
        protocol: EvalProtocol,
        *,
        num_classes: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        aug_test: bool = False,
    ) -> None:
        self.model = model
        self.protocol = protocol
        self.num_classes = num_classes
        self.aug_test = aug_test
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def logits(self, image: torch.Tensor, scale: tuple[int, int], flip: bool = False) -> torch.Tensor:
        """Logits at the original size of ``image`` (``uint8 (1, 3, H, W)``) resized to fit ``scale``."""
        height, width = image.shape[-2:]
        x = resize_image(image, rescale_size(height, width, scale))
        if self._mean.device != x.device:
            self._mean, self._std = self._mean.to(x.device), self._std.to(x.device)
        x = (x - self._mean) / self._std  # a uint8 image is promoted to float here
        if flip:
            x = x.flip(-1)
        p = self.protocol
        if p.mode == "whole":
            out = forward_logits(self.model, x, self.num_classes, p.align_corners)
        else:
            out = slide_logits(self.model, x, p, self.num_classes)
        if flip:
            out = out.flip(-1)
        return resize_logits(out, (height, width), p.align_corners)

    @torch.inference_mode()
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """``int64 (1, H, W)`` class ids for ``image`` (``uint8 (1, 3, H, W)`` on the model's device)."""
        p = self.protocol
        if not self.aug_test:
            return self.logits(image, p.scale).argmax(1)
        probs = None
        for ratio in p.ratios:
            scale = (int(p.scale[0] * ratio), int(p.scale[1] * ratio))
            for flip in (False, True) if p.flip else (False,):
                prob = self.logits(image, scale, flip).softmax(1)
                probs = prob if probs is None else probs.add_(prob)
        if probs is None:
            raise ValueError("a multi-scale test needs at least one scale ratio")
        return probs.argmax(1)
