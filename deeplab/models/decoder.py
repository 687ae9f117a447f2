"""The DeepLab-v3+ decoder (Chen et al., ECCV 2018, sec. 3.1, Fig. 2).

The ASPP features (stride OS) are upsampled to the stride-4 low-level features
(x4 at OS 16), which first go through a 1x1 conv to 48 channels so they do not
outweigh the rich encoder features (sec. 4.1, Table 1). The concatenation is
refined by two 3x3 convs of 256 channels (depthwise separable with
``separable=True``) and classified; ``DeepLab`` upsamples the scores to the input.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from deeplab.models.layers import ConvBNAct, SeparableConv2d, resize


class Decoder(nn.Module):
    """(features [N, C, h, w], low [N, L, H/4, W/4]) -> class scores [N, num_classes, H/4, W/4]."""

    def __init__(
        self,
        *,
        in_channels: int,
        low_channels: int,
        num_classes: int,
        low_projection: int = 48,
        channels: int = 256,
        separable: bool = False,
        align_corners: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.project_low = ConvBNAct(low_channels, low_projection, 1)
        # Concat order follows the TF release: upsampled features first, then low-level.
        widths = (in_channels + low_projection, channels, channels)
        self.refine = nn.Sequential(
            *(
                SeparableConv2d(widths[i], widths[i + 1])
                if separable
                else ConvBNAct(widths[i], widths[i + 1], 3)
                for i in range(2)
            )
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        low = self.project_low(low)
        x = resize(x, low.shape[-2:], align_corners=self.align_corners)
        return self.classifier(self.refine(torch.cat([x, low], dim=1)))
