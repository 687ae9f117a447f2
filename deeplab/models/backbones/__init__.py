"""Backbones: atrous feature extractors with a common contract.

Every backbone is an ``nn.Module`` with

- ``out_channels`` / ``low_channels``: channels of its two outputs;
- ``output_stride``: the current stride of ``"out"`` (8, 16 or 32);
- ``set_output_stride(os)``: turn strides into atrous rates (or back), keeping weights;
- ``forward(x) -> {"low": stride-4 features, "out": stride-OS features}``.

Heads and the decoder read the channel attributes; nothing hard-codes 2048 or 320.
"""

from deeplab.models.backbones.mobilenet import MobileNetV2
from deeplab.models.backbones.resnet import ResNet
from deeplab.models.backbones.vgg import VGG16
from deeplab.models.backbones.xception import Xception

__all__ = ["MobileNetV2", "ResNet", "VGG16", "Xception"]
