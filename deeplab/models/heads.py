"""Context heads on top of the backbone's stride-OS features.

- ``ASPPSum``: DeepLab-v2's ASPP-L (TPAMI 2017, sec. 3.1, Fig. 4): parallel
  3x3 atrous branches, rates 6, 12, 18, 24 at output stride 8, each ending in its
  own classifier; the branch scores are summed. With a single branch of rate 12
  and fc6/fc7 of 1024 channels it is DeepLab-v1's LargeFOV head (ICLR 2015, sec. 4).
- ``ASPP``: DeepLab-v3's ASPP with batch norm (arXiv 2017, sec. 3.3): a 1x1 branch,
  3x3 atrous branches (rates 6, 12, 18 at output stride 16, doubled at 8) and
  image-level pooling, concatenated and projected to 256 channels. Features out,
  no classifier: the v3+ decoder or ``DeepLabV3Head`` adds it.
- ``DeepLabV3Head``: ``ASPP`` + 1x1 classifier.

Every head has ``set_output_stride(os)`` that rescales its rates, keeping weights.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn as nn

from deeplab.models.layers import (
    ConvBNAct,
    SeparableConv2d,
    SingleValueBatchNorm2d,
    scale_rates,
    set_atrous,
)


def _atrous_classifier(
    in_channels: int, num_classes: int, *, rate: int, hidden_channels: int | None, dropout: float
) -> nn.Sequential:
    """One ASPP-L branch; child 0 is always the atrous 3x3 conv.

    With ``hidden_channels`` (VGG-16, v1/v2 papers): fc6 3x3 atrous -> ReLU -> dropout
    -> fc7 1x1 -> ReLU -> dropout -> fc8 1x1 classifier. Without (ResNet-101 in v2):
    a single 3x3 atrous conv straight to class scores, as in the released v2 model.
    """
    if hidden_channels is None:
        return nn.Sequential(
            OrderedDict(fc=nn.Conv2d(in_channels, num_classes, 3, padding=rate, dilation=rate))
        )
    return nn.Sequential(
        OrderedDict(
            fc6=nn.Conv2d(in_channels, hidden_channels, 3, padding=rate, dilation=rate),
            relu6=nn.ReLU(inplace=True),
            drop6=nn.Dropout(dropout),
            fc7=nn.Conv2d(hidden_channels, hidden_channels, 1),
            relu7=nn.ReLU(inplace=True),
            drop7=nn.Dropout(dropout),
            fc8=nn.Conv2d(hidden_channels, num_classes, 1),
        )
    )


class ASPPSum(nn.Module):
    """[N, Cin, h, w] -> class scores [N, num_classes, h, w]: sum of atrous classifier branches."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        rates: Sequence[int] = (6, 12, 18, 24),
        defined_at: int = 8,
        hidden_channels: int | None = None,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.base_rates = tuple(rates)
        self.defined_at = defined_at
        self.branches = nn.ModuleList(
            _atrous_classifier(
                in_channels, num_classes, rate=r, hidden_channels=hidden_channels, dropout=dropout
            )
            for r in rates
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out

    def set_output_stride(self, output_stride: int) -> None:
        rates = scale_rates(
            self.base_rates, defined_at=self.defined_at, output_stride=output_stride
        )
        for branch, rate in zip(self.branches, rates, strict=True):
            set_atrous(branch[0], stride=1, rate=rate)


class ImagePooling(nn.Module):
    """[N, Cin, h, w] -> [N, Cout, h, w]: global average -> 1x1 conv -> BN -> ReLU -> broadcast.

    The BN sees one value per channel at batch size 1: ``SingleValueBatchNorm2d``
    explains why it then uses running statistics instead of failing.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_channels, out_channels, 1, norm=SingleValueBatchNorm2d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.mean(dim=(2, 3), keepdim=True))
        # A bilinear resize of a 1x1 map is a constant map in both align_corners modes, so
        # broadcasting is exact and avoids the resize. Broadcasting by a product (not
        # expand): the TFLite converter's layout change breaks its BROADCAST_TO.
        return y * torch.ones_like(x[:, :1])


class ASPP(nn.Module):
    """[N, Cin, h, w] -> [N, out_channels, h, w]: DeepLab-v3 ASPP, features (no classifier).

    Branches in the TF release's concat order: image pooling, 1x1, then one 3x3
    atrous branch per rate (depthwise separable with ``separable=True``, v3+
    sec. 3.1). ``rates=()`` gives the model-zoo MobileNetV2 head: image pooling
    and 1x1 branch only. Projection: 1x1 to ``out_channels`` + BN + ReLU + dropout.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        out_channels: int = 256,
        rates: Sequence[int] = (6, 12, 18),
        defined_at: int = 16,
        separable: bool = False,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.base_rates = tuple(rates)
        self.defined_at = defined_at
        self.out_channels = out_channels
        self.pooling = ImagePooling(in_channels, out_channels)
        self.conv1x1 = ConvBNAct(in_channels, out_channels, 1)
        self.atrous = nn.ModuleList(
            SeparableConv2d(in_channels, out_channels, rate=r)
            if separable
            else ConvBNAct(in_channels, out_channels, 3, rate=r)
            for r in rates
        )
        n_branches = 2 + len(self.atrous)
        self.project = ConvBNAct(n_branches * out_channels, out_channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.pooling(x), self.conv1x1(x)] + [branch(x) for branch in self.atrous]
        return self.dropout(self.project(torch.cat(branches, dim=1)))

    def set_output_stride(self, output_stride: int) -> None:
        rates = scale_rates(
            self.base_rates, defined_at=self.defined_at, output_stride=output_stride
        )
        for branch, rate in zip(self.atrous, rates, strict=True):
            if isinstance(branch, SeparableConv2d):
                branch.set_atrous(stride=1, rate=rate)
            else:
                set_atrous(branch[0], stride=1, rate=rate)


class DeepLabV3Head(nn.Module):
    """[N, Cin, h, w] -> class scores [N, num_classes, h, w]: ``ASPP`` -> 1x1 classifier."""

    def __init__(self, aspp: ASPP, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.aspp = aspp
        self.classifier = nn.Conv2d(aspp.out_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.aspp(x))

    def set_output_stride(self, output_stride: int) -> None:
        self.aspp.set_output_stride(output_stride)
