"""Atrous VGG-16 of DeepLab-v1 and v2 (Chen et al., ICLR 2015, sec. 3.1).

The five conv stages of VGG-16 with DeepLab's changes: the 3x3 max-pools use
stride 2 and padding 1 (Caffe's DeepLab prototxt), pool4 and pool5 keep stride 1
and the conv5 layers after them use atrous rate 2, so the features leave at
output stride 8. fc6/fc7 live in the head (``heads.ASPPSum``).

Children keep torchvision's ``vgg16().features`` indices (convs at 0, 2, 5, ...,
pools at 4, 9, 16, 23, 30), so an ImageNet state_dict in that layout loads by name.
"""

from __future__ import annotations

import torch
import torch.nn as nn

# (channels, number of 3x3 convs, pool stride, conv rate) per stage (v1 paper, sec. 3.1).
_STAGES = ((64, 2, 2, 1), (128, 2, 2, 1), (256, 3, 2, 1), (512, 3, 1, 1), (512, 3, 1, 2))


class VGG16(nn.Module):
    """[N, 3, H, W] -> {"low": [N, 128, H/4, W/4], "out": [N, 512, H/8, W/8]}."""

    out_channels = 512
    low_channels = 128
    output_stride = 8

    def __init__(self, *, output_stride: int = 8) -> None:
        super().__init__()
        self.set_output_stride(output_stride)
        layers: list[nn.Module] = []
        in_ch = 3
        for channels, n_convs, pool_stride, rate in _STAGES:
            for _ in range(n_convs):
                layers += [
                    nn.Conv2d(in_ch, channels, 3, padding=rate, dilation=rate),
                    nn.ReLU(inplace=True),
                ]
                in_ch = channels
            layers.append(nn.MaxPool2d(3, stride=pool_stride, padding=1))
            if channels == 128:
                # pool2's output is the stride-4 "low" feature map.
                self._low_index = len(layers) - 1
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        low = x
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == self._low_index:
                low = x
        return {"low": low, "out": x}

    def set_output_stride(self, output_stride: int) -> None:
        # The atrous VGG is defined at output stride 8 only: pool4/pool5 already run
        # at stride 1 and fc6's rate 12 is chosen for that grid (v1 paper, sec. 3.1).
        if output_stride != 8:
            raise ValueError(
                f"output_stride {output_stride}: the DeepLab VGG-16 (v1, v2) runs at output "
                "stride 8 by design; use output_stride=8, or a ResNet/Xception/MobileNetV2 "
                "model for 16 or 32"
            )
