"""SegNet: an encoder-decoder whose decoder upsamples with the encoder's max-pooling indices.

Badrinarayanan, Kendall & Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder Architecture for
Image Segmentation", TPAMI 2017 (arXiv:1511.00561). Official Caffe model:
https://github.com/alexgkendall/SegNet-Tutorial ``Models/segnet_inference.prototxt`` (the layer
list below was read there):

- encoder: VGG-16's 13 convolutions (3x3, bias) each followed by BatchNorm and ReLU, and five
  2x2/2 max-poolings that keep their argmax indices ("pool*_mask");
- decoder: the mirror image. Each stage unpools with the indices of its encoder stage ("Upsample"
  layer: values go back to where the maxima were, zeros elsewhere; nothing is learned), then
  3x3 conv-BN-ReLU blocks: 512,512,512 | 512,512,256 | 256,256,128 | 128,64 | 64, and a final
  3x3 convolution to the classes (``conv1_1_D``; no BN/ReLU), at full resolution;
- no fully connected layers, so 29.5 M parameters instead of FCN's 134 M.

Figures and sources: docs/models/segnet.md.
"""

from __future__ import annotations

from torch import Tensor, nn

from archs.backbones.vgg import VGG16
from archs.base import register
from archs.cards import card
from archs.common import UnpoolingDecoder

__all__ = ["SegNet", "segnet_vgg16"]

# Decoder stages (deepest first): output channels of the 3x3 conv-BN-ReLU blocks after each unpooling.
SEGNET_DECODER = ((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64,))


class SegNet(nn.Module):
    """VGG-16-BN encoder, index-unpooling decoder; logits at the input resolution.

    Args:
        num_classes: output classes.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.encoder = VGG16(batch_norm=True, pooling="indices")
        self.decoder = UnpoolingDecoder(512, SEGNET_DECODER)
        self.classifier = nn.Conv2d(self.decoder.out_channels, num_classes, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        pooled, indices, sizes = self.encoder.encode(x)
        return self.classifier(self.decoder(pooled[-1], indices, sizes))


@register(card("segnet-vgg16"))
def segnet_vgg16(*, num_classes: int) -> SegNet:
    """SegNet with the VGG-16 encoder, as in the official SegNet-Tutorial model."""
    return SegNet(num_classes)
