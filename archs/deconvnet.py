"""DeconvNet: a VGG-16 encoder mirrored by a decoder of unpooling and deconvolution layers.

Noh, Hong & Han, "Learning Deconvolution Network for Semantic Segmentation", ICCV 2015
(arXiv:1505.04366). Official Caffe model: https://github.com/HyeonwooNoh/DeconvNet
``model/DeconvNet/DeconvNet_inference_deploy.prototxt`` (the layer list below was read there):

- encoder: VGG-16's 13 convolutions (3x3, bias) each followed by BatchNorm and ReLU, 2x2/2
  max-pooling that keeps the switch (argmax) positions; ``fc6`` 7x7 conv 512->4096 and ``fc7``
  1x1 conv 4096->4096, each with BN and ReLU ("fully connected layers implemented as
  convolutions": on the paper's 224x224 inputs fc6 reduces the 7x7 pool5 map to 1x1);
- decoder: ``fc6-deconv``, a 7x7 transposed convolution 4096->512 back to pool5's size, then per
  stage an unpooling with the encoder's switches followed by 3x3 stride-1 transposed convolutions
  ("deconvolutions"), each with BN and ReLU: 512,512,512 | 512,512,256 | 256,256,128 | 128,64 |
  64,64; a 1x1 convolution to the classes (``seg-score``) at full resolution.

Inputs smaller than 224 px (pool5 smaller than 7x7) are handled by zero-padding pool5 to 7x7 for
fc6 and cropping fc6-deconv's output back; at 224 px and above the computation is the prototxt's.
The paper runs the network on object proposals and also reports an ensemble with FCN (EDeconvNet)
and a CRF; segbench measures the single network on the whole image.

The ``upsampling`` option replaces each unpooling with a `archs.common.learned_upsample`, for the
lecture's checkerboard comparison. Figures and sources: docs/models/deconvnet.md.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from archs.backbones.vgg import VGG16, vgg_fc_convolutions
from archs.base import register
from archs.cards import card
from archs.common import UnpoolingDecoder

__all__ = ["DeconvNet", "deconvnet_vgg16"]

# Decoder stages (deepest first): output channels of the 3x3 deconvolutions after each unpooling.
DECONVNET_DECODER = ((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64, 64))


class DeconvNet(nn.Module):
    """VGG-16-BN encoder + fc6/fc7, mirrored unpooling/deconvolution decoder; logits at input resolution.

    Args:
        num_classes: output classes.
        upsampling: ``"unpool"`` (the paper: unpooling with the encoder's switches), or
            ``"transposed"`` / ``"resize"`` to replace every unpooling by a `learned_upsample`
            (the checkerboard comparison of the lecture; it adds a C->C layer per stage).
    """

    def __init__(self, num_classes: int, *, upsampling: str = "unpool") -> None:
        super().__init__()
        self.encoder = VGG16(batch_norm=True, pooling="indices")
        self.fc = vgg_fc_convolutions(batch_norm=True, dropout=0.0)
        self.fc6_deconv = nn.Sequential(nn.ConvTranspose2d(4096, 512, 7), nn.BatchNorm2d(512), nn.ReLU(inplace=True))
        self.decoder = UnpoolingDecoder(512, DECONVNET_DECODER, transposed=True, upsampling=upsampling)
        self.classifier = nn.Conv2d(self.decoder.out_channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        pooled, indices, sizes = self.encoder.encode(x)
        pool5 = pooled[-1]
        h, w = int(pool5.shape[-2]), int(pool5.shape[-1])  # Python ints, also when traced
        # fc6 is a 7x7 "valid" convolution: a pool5 map under 7x7 is zero-padded to 7x7 and cropped back.
        ph, pw = max(0, 7 - h), max(0, 7 - w)
        if ph or pw:
            pool5 = F.pad(pool5, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        out = self.fc6_deconv(self.fc(pool5))
        if ph or pw:
            out = out[..., ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]
        return self.classifier(self.decoder(out, indices, sizes))


@register(card("deconvnet-vgg16"))
def deconvnet_vgg16(*, num_classes: int, upsampling: str = "unpool") -> DeconvNet:
    """DeconvNet with the VGG-16 encoder, as in the official inference prototxt.

    Args:
        upsampling: ``"unpool"`` (paper), ``"transposed"`` or ``"resize"`` (see `DeconvNet`).
    """
    return DeconvNet(num_classes, upsampling=upsampling)
