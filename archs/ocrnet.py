"""OCRNet: object-contextual representations on HRNetV2-W48.

Yuan, Chen & Wang, "Object-Contextual Representations for Semantic Segmentation", ECCV 2020
(arXiv:1909.11065). Official repository: https://github.com/HRNet/HRNet-Semantic-Segmentation
(branch HRNet-OCR, MIT). The configuration of the comparison table's row is mmsegmentation's
``configs/ocrnet/ocrnet_hr48_4xb4-160k_ade20k-512x512.py`` /
``ocrnet_hr48_4xb2-160k_cityscapes-512x1024.py`` (https://github.com/open-mmlab/mmsegmentation,
Apache-2.0), whose heads and checkpoints this module reproduces:

- the four HRNetV2 branches are upsampled to stride 4 and concatenated (720 channels);
- soft object regions: 1x1 conv 720->720 + BN + ReLU, then a 1x1 classifier (mmseg's stage-1
  ``FCNHead``; it is trained with an auxiliary loss but its logits drive the OCR module, so it is
  part of the inference network);
- 3x3 conv 720->512 + BN + ReLU (pixel representations);
- spatial gather: the region logits, soft-maxed over the pixels, pool the pixel representations
  into one 512-d descriptor per class;
- object attention: pixels (query, two 1x1 conv+BN+ReLU to 256) attend over the class
  descriptors (key: two 1x1 conv+BN+ReLU; value: one), scaled by 256^-0.5, output 1x1 256->512,
  concatenated with the pixel representations and fused by a 1x1 conv 1024->512;
- a 1x1 classifier. Logits at stride 4.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from archs.backbones.hrnet import HRNet
from archs.base import ArchSpec, Published, Weights, register

__all__ = ["OCRHead", "OCRNet", "convert_mmseg_ocrnet", "ocrnet_hr48"]


def _cbr(in_channels: int, out_channels: int, kernel_size: int = 1) -> Conv2dNormActivation:
    return Conv2dNormActivation(in_channels, out_channels, kernel_size)


class OCRHead(nn.Module):
    """Soft object regions, spatial gather and object attention on concatenated HRNet features.

    Args:
        in_channels: channels of the concatenated backbone features (720 for W48).
        num_classes: output classes.
        channels: width of the pixel representations (512).
        ocr_channels: width of the key/query/value projections (256).
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 512, ocr_channels: int = 256) -> None:
        super().__init__()
        self.region = nn.Sequential(_cbr(in_channels, in_channels), nn.Conv2d(in_channels, num_classes, 1))
        self.bottleneck = _cbr(in_channels, channels, 3)
        self.query_project = nn.Sequential(_cbr(channels, ocr_channels), _cbr(ocr_channels, ocr_channels))
        self.key_project = nn.Sequential(_cbr(channels, ocr_channels), _cbr(ocr_channels, ocr_channels))
        self.value_project = _cbr(channels, ocr_channels)
        self.out_project = _cbr(ocr_channels, channels)
        self.fuse = _cbr(2 * channels, channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        regions = self.region(x)
        feats = self.bottleneck(x)
        n, c, h, w = feats.shape
        # Spatial gather: per class, the softmax-over-pixels weighted mean of the representations.
        probs = regions.flatten(2).softmax(dim=2)  # (N, K, HW)
        context = torch.bmm(probs, feats.flatten(2).transpose(1, 2))  # (N, K, C)
        context = context.transpose(1, 2).unsqueeze(3)  # (N, C, K, 1): class descriptors as a 1-wide map
        query = self.query_project(feats).flatten(2).transpose(1, 2).unsqueeze(1)  # (N, 1, HW, C')
        key = self.key_project(context).flatten(2).transpose(1, 2).unsqueeze(1)  # (N, 1, K, C')
        value = self.value_project(context).flatten(2).transpose(1, 2).unsqueeze(1)
        attended = F.scaled_dot_product_attention(query, key, value)  # scale C'^-0.5, as mmseg's matmul_norm
        attended = attended.squeeze(1).transpose(1, 2).reshape(n, -1, h, w)
        obj = self.out_project(attended)
        return self.classifier(self.fuse(torch.cat([obj, feats], dim=1)))


class OCRNet(nn.Module):
    """HRNetV2 backbone + OCR head; logits at stride 4.

    Args:
        num_classes: output classes.
        width: HRNetV2 width (48 for the comparison table's row).
        channels: OCR pixel-representation width.
        ocr_channels: OCR key/query/value width.
    """

    def __init__(self, num_classes: int, width: int = 48, channels: int = 512, ocr_channels: int = 256) -> None:
        super().__init__()
        self.backbone = HRNet(width)
        self.decode_head = OCRHead(sum(self.backbone.out_channels), num_classes, channels, ocr_channels)

    def forward(self, x: Tensor) -> Tensor:
        feats = self.backbone(x)
        size = feats[0].shape[-2:]
        up = [feats[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats[1:]]
        return self.decode_head(torch.cat(up, dim=1))


# mmseg CascadeEncoderDecoder keys -> ours. ConvModule's ``conv``/``bn`` are our ``0``/``1``.
_HEAD_RENAMES = (
    (r"^decode_head\.0\.convs\.0\.", "decode_head.region.0."),
    (r"^decode_head\.0\.conv_seg\.", "decode_head.region.1."),
    (r"^decode_head\.1\.bottleneck\.", "decode_head.bottleneck."),
    (r"^decode_head\.1\.object_context_block\.bottleneck\.", "decode_head.fuse."),
    (r"^decode_head\.1\.object_context_block\.", "decode_head."),
    (r"^decode_head\.1\.conv_seg\.", "decode_head.classifier."),
)


def convert_mmseg_ocrnet(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An mmseg OCRNet-HRNet checkpoint (its ``state_dict``, or the whole checkpoint dict) -> `OCRNet` keys."""
    if "state_dict" in state_dict:
        state_dict = state_dict["state_dict"]
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("backbone."):
            out[key] = value
            continue
        if not key.startswith("decode_head."):
            continue
        for pattern, repl in _HEAD_RENAMES:
            new, n = re.subn(pattern, repl, key)
            if n:
                key = re.sub(r"\.conv\.(weight|bias)$", r".0.\1", new)
                key = re.sub(r"\.bn\.([a-z_]+)$", r".1.\1", key)
                out[key] = value
                break
    return out


_MMSEG = "https://download.openmmlab.com/mmsegmentation/v0.5/ocrnet"


@register(
    ArchSpec(
        name="ocrnet-hr48",
        family="OCRNet",
        encoder="HRNet-W48",
        scale="non-realtime",
        paper="Yuan et al., ECCV 2020",
        year=2020,
        output_stride=4,
        published={
            "ade20k": Published(
                params_m=70.5,
                gflops=164.8,
                fps=17.0,
                miou=45.6,
                source="SegFormer (Xie et al., NeurIPS 2021) Table 4; FPS = mmseg OCRNet README (16.99, V100)",
            ),
            "cityscapes": Published(
                params_m=70.5,
                gflops=1296.8,
                fps=4.2,
                miou=81.1,
                source="SegFormer (Xie et al., NeurIPS 2021) Table 4; FPS = mmseg OCRNet README 512x1024 (4.22, V100)",
            ),
        },
        weights=(
            Weights(
                "ade20k",
                f"{_MMSEG}/ocrnet_hr48_512x512_160k_ade20k/ocrnet_hr48_512x512_160k_ade20k_20200615_184705-a073726d.pth",
                "mmseg",
                converter=convert_mmseg_ocrnet,
            ),
            Weights(
                "cityscapes",
                f"{_MMSEG}/ocrnet_hr48_512x1024_160k_cityscapes/"
                "ocrnet_hr48_512x1024_160k_cityscapes_20200602_191037-dfbf1b0c.pth",
                "mmseg",
                converter=convert_mmseg_ocrnet,
            ),
        ),
        notes="mmseg configuration; the soft-object-region FCN head is part of inference (it drives the OCR module)",
    )
)
def ocrnet_hr48(*, num_classes: int) -> nn.Module:
    """OCRNet with HRNetV2-W48 (mmseg ``ocrnet_hr48`` configuration).

    Args:
        num_classes: output classes.
    """
    return OCRNet(num_classes, width=48)
