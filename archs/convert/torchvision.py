"""torchvision's layouts: ImageNet ResNet and VGG-16, ``fcn_resnet101`` and ``deeplabv3_resnet101``."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from archs.convert import move_prefixes

__all__ = [
    "convert_torchvision_deeplabv3",
    "convert_torchvision_deeplabv3_to_v3",
    "convert_torchvision_fcn",
    "convert_torchvision_resnet_keys",
    "convert_torchvision_vgg16_classifier",
]

# The stem is our ``stem`` Sequential (conv, bn, relu); the stages keep their names.
_RESNET_PREFIXES = {"conv1.": "stem.0.", "bn1.": "stem.1.", **{f"layer{i}.": f"layer{i}." for i in range(1, 5)}}


def convert_torchvision_resnet_keys(state_dict: Mapping[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """torchvision ResNet keys (``conv1``, ``bn1``, ``layer*``; ``fc`` dropped) -> `archs.backbones.resnet.ResNet` keys.

    Args:
        state_dict: a torchvision ``resnet*`` state dict, or a segmentation model's.
        prefix: the backbone's prefix in ``state_dict`` (``"backbone."`` for torchvision's
            segmentation models).
    """
    return move_prefixes(state_dict, {prefix + src: dst for src, dst in _RESNET_PREFIXES.items()})


def _with_backbone(state_dict: Mapping[str, Tensor], head: Mapping[str, str]) -> dict[str, Tensor]:
    out = {f"backbone.{k}": v for k, v in convert_torchvision_resnet_keys(state_dict, "backbone.").items()}
    return out | move_prefixes(state_dict, head)


def convert_torchvision_fcn(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """torchvision ``fcn_resnet101`` keys -> `archs.fcn.fcn_r101_torchvision` keys (``aux_classifier`` dropped)."""
    # torchvision's FCNHead is Sequential(conv, bn, relu, dropout, conv).
    head = {"classifier.0.": "head.convs.0.0.", "classifier.1.": "head.convs.0.1.", "classifier.4.": "head.classifier."}
    return _with_backbone(state_dict, head)


def convert_torchvision_deeplabv3(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """torchvision ``deeplabv3_resnet101`` keys -> `archs.deeplab_v3.deeplabv3_r101_torchvision` keys (aux dropped)."""
    return _with_backbone(state_dict, {"classifier.": "head.classifier."})


def convert_torchvision_deeplabv3_to_v3(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """torchvision ``deeplabv3_resnet101`` keys -> `archs.deeplab_v3.deeplabv3_r101` (``head="torchvision"``) keys."""
    # torchvision's DeepLabHead is Sequential(ASPP, conv, bn, relu, conv).
    head = {
        "classifier.0.": "head.aspp.",
        "classifier.1.": "head.refine.0.",
        "classifier.2.": "head.refine.1.",
        "classifier.4.": "head.classifier.",
    }
    return _with_backbone(state_dict, head)


def convert_torchvision_vgg16_classifier(state_dict: Mapping[str, Tensor], prefix: str = "fc.") -> dict[str, Tensor]:
    """torchvision ``vgg16`` ``classifier.0``/``classifier.3`` (Linear) -> fc6/fc7 convolutions under ``prefix``.

    The keys follow `archs.backbones.vgg.vgg_fc_convolutions` without BatchNorm but with Dropout
    (fc6 = ``0``, fc7 = ``3``).
    """
    fc6 = state_dict["classifier.0.weight"].reshape(4096, 512, 7, 7)
    fc7 = state_dict["classifier.3.weight"].reshape(4096, 4096, 1, 1)
    return {
        f"{prefix}0.weight": fc6,
        f"{prefix}0.bias": state_dict["classifier.0.bias"],
        f"{prefix}3.weight": fc7,
        f"{prefix}3.bias": state_dict["classifier.3.bias"],
    }
