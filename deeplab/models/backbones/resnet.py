"""Atrous ResNet-50/101 with multi-grid (DeepLab-v2 sec. 3.1, DeepLab-v3 sec. 3.2-3.3).

Bottleneck units as in torchvision (stride on the 3x3 conv) and with its key
layout (``conv1``, ``bn1``, ``layer1`` ... ``layer4``, ``downsample.0/1``), so
torchvision ImageNet state_dicts load by name. For an output stride below 32 the
strides of the last layers become atrous rates instead.

Atrous rates per unit of a dilated layer:
- ``multi_grid=None`` (DeepLab-v2): the first unit keeps the previous rate and the
  others use the layer's rate, torchvision's ``replace_stride_with_dilation``;
- ``multi_grid=(1, 2, 4)`` (DeepLab-v3, sec. 3.2): layer4's units use
  ``multi_grid[i] * block rate``, e.g. 2 * (1, 2, 4) = (2, 4, 8) at output stride 16.

``beta_stem=True`` replaces the 7x7 stem conv by three 3x3 convs (64, 64, 128
channels) as in the TF release's ``resnet_v1_beta``; it is off by default so
torchvision weights load.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from deeplab.models.layers import ConvBNAct, check_output_stride, set_atrous

_LAYERS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
_EXPANSION = 4


class Bottleneck(nn.Module):
    """[N, Cin, H, W] -> [N, 4 * width, H/s, W/s]: 1x1, atrous 3x3 (stride s), 1x1 + shortcut."""

    def __init__(self, in_channels: int, width: int, *, stride: int = 1, rate: int = 1) -> None:
        super().__init__()
        out_channels = width * _EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(
            width, width, 3, stride=stride, padding=rate, dilation=rate, bias=False
        )
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + shortcut)

    def set_atrous(self, *, stride: int, rate: int) -> None:
        set_atrous(self.conv2, stride=stride, rate=rate)
        if self.downsample is not None:
            self.downsample[0].stride = (stride, stride)


class ResNet(nn.Module):
    """[N, 3, H, W] -> {"low": [N, 256, H/4, W/4], "out": [N, 2048, H/OS, W/OS]}."""

    out_channels = 512 * _EXPANSION
    low_channels = 64 * _EXPANSION

    def __init__(
        self,
        *,
        depth: int = 101,
        output_stride: int = 16,
        multi_grid: Sequence[int] | None = None,
        beta_stem: bool = False,
    ) -> None:
        super().__init__()
        if depth not in _LAYERS:
            raise ValueError(f"ResNet depth {depth} is not available; choose 50 or 101")
        self.multi_grid = tuple(multi_grid) if multi_grid is not None else None
        if self.multi_grid is not None and len(self.multi_grid) != _LAYERS[depth][3]:
            raise ValueError(
                f"multi_grid {multi_grid} needs one rate per unit of layer4 ({_LAYERS[depth][3]})"
            )
        if beta_stem:
            # conv1 is the three-conv stem; bn1 + relu below finish its last conv.
            self.conv1: nn.Module = nn.Sequential(
                ConvBNAct(3, 64, 3, stride=2),
                ConvBNAct(64, 64, 3),
                nn.Conv2d(64, 128, 3, padding=1, bias=False),
            )
            stem_channels = 128
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            stem_channels = 64
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

        in_channels = stem_channels
        layers = []
        for i, n_units in enumerate(_LAYERS[depth]):
            width = 64 * 2**i
            units = [Bottleneck(in_channels, width)]
            units += [Bottleneck(width * _EXPANSION, width) for _ in range(n_units - 1)]
            layers.append(nn.Sequential(*units))
            in_channels = width * _EXPANSION
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.set_output_stride(output_stride)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        x = self.layer4(self.layer3(self.layer2(low)))
        return {"low": low, "out": x}

    def set_output_stride(self, output_stride: int) -> None:
        """Set layer strides and unit rates for ``output_stride`` (8, 16 or 32), keeping weights."""
        check_output_stride(output_stride)
        current, rate = 4, 1  # the stem (conv1 + maxpool) has stride 4
        layers = (self.layer1, self.layer2, self.layer3, self.layer4)
        for layer, stride in zip(layers, (1, 2, 2, 2), strict=True):
            previous_rate = rate
            if current * stride > output_stride:
                rate, stride = rate * stride, 1
            else:
                current *= stride
            if layer is self.layer4 and self.multi_grid is not None:
                rates = [rate * m for m in self.multi_grid]
            else:
                rates = [previous_rate] + [rate] * (len(layer) - 1)
            for i, (unit, unit_rate) in enumerate(zip(layer, rates, strict=True)):
                unit.set_atrous(stride=stride if i == 0 else 1, rate=unit_rate)
        self.output_stride = output_stride
