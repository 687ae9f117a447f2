"""Atrous MobileNetV2 (Sandler et al., CVPR 2018) as DeepLab uses it.

torchvision's key layout: ``features.0`` (3x3 stride-2 conv) and the inverted
residual blocks ``features.1`` ... ``features.17`` (320 x width channels out).
DeepLab drops the final 1x1 conv to 1280 channels (``features.18``), as the TF
release's ``mobilenet_v2`` feature extractor stops at ``layer_18``.

Follows the TF graph that Google's DeepLab MobileNetV2 models were exported
from: ReLU6 after every expansion and depthwise conv, linear projections,
channels rounded to multiples of 8 for width multipliers (``make_divisible``),
and, below output stride 32, strides turned into atrous rates the way TF's
``mobilenet_base(output_stride=...)`` does (``layers.atrous_schedule``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from deeplab.models.layers import ConvBNAct, atrous_schedule, make_divisible, set_atrous

# (expansion t, channels c, repeats n, first stride s) per stage (MobileNetV2 paper, Table 2).
_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_LOW_INDEX = 3  # features.3: the last block at stride 4 (24 x width channels)


class InvertedResidual(nn.Module):
    """[N, Cin, H, W] -> [N, Cout, H/stride, W/stride]: 1x1 expand -> 3x3 depthwise -> 1x1 project.

    ``conv`` children are indexed like torchvision's: [expand,] depthwise, project conv, BN.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, expansion: int):
        super().__init__()
        # TF's expand_input_by_factor: a multiple of 8 at every width (the same as
        # torchvision's round(in * t) at width 1.0, where inputs are multiples of 8).
        hidden = in_channels if expansion == 1 else make_divisible(in_channels * expansion, 8)
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvBNAct(in_channels, hidden, 1, activation=nn.ReLU6))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride=stride, groups=hidden, activation=nn.ReLU6),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        # Only stride-1 blocks that keep the width add their input (every stride-2 block of
        # MobileNetV2 also changes the width, so this does not change when strides become rates).
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_residual else y

    def set_atrous(self, *, stride: int, rate: int) -> None:
        set_atrous(self.conv[-3][0], stride=stride, rate=rate)


class MobileNetV2(nn.Module):
    """[N, 3, H, W] -> {"low": [N, 24w, H/4, W/4], "out": [N, 320w, H/OS, W/OS]} (w = width)."""

    def __init__(self, *, width_mult: float = 1.0, output_stride: int = 16) -> None:
        super().__init__()
        self.width_mult = width_mult
        # DeepLab's TF feature extractor rounds channels to multiples of 8 at width 1.0 but
        # to the nearest integer otherwise (divisible_by=1, min_depth=1): 24 * 0.5 -> 12,
        # not torchvision's 16. Google's width-0.5 DeepLab models have those 12 channels.
        divisor = 8 if width_mult == 1.0 else 1

        def channels(c: int) -> int:
            return make_divisible(c * width_mult, divisor)

        in_channels = channels(32)
        layers: list[nn.Module] = [ConvBNAct(3, in_channels, 3, stride=2, activation=nn.ReLU6)]
        self._strides: list[int] = []
        for t, c, n, s in _SETTINGS:
            out_channels = channels(c)
            for i in range(n):
                stride = s if i == 0 else 1
                layers.append(
                    InvertedResidual(in_channels, out_channels, stride=stride, expansion=t)
                )
                self._strides.append(stride)
                in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.out_channels = in_channels
        self.low_channels = channels(24)
        self.set_output_stride(output_stride)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        low = x
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == _LOW_INDEX:
                low = x
        return {"low": low, "out": x}

    def set_output_stride(self, output_stride: int) -> None:
        """Strides of the blocks past ``output_stride`` become atrous rates, keeping weights."""
        plan = atrous_schedule(self._strides, input_stride=2, output_stride=output_stride)
        for block, (stride, rate) in zip(self.features[1:], plan, strict=True):
            block.set_atrous(stride=stride, rate=rate)
        self.output_stride = output_stride
