"""Small building blocks shared by backbones, heads and the decoder.

- ``ConvBNAct``: conv (no bias) -> BatchNorm -> activation, the unit of every
  DeepLab-v3/v3+ module;
- ``SeparableConv2d``: depthwise 3x3 (atrous) -> BN [-> ReLU] -> pointwise 1x1
  -> BN [-> ReLU] (DeepLab-v3+, sec. 3.1, Fig. 3);
- ``SingleValueBatchNorm2d``: BatchNorm that copes with one value per channel,
  as the image pooling branch sees at batch size 1;
- helpers to turn strides into atrous rates for a requested output stride.

Padding is symmetric, ``rate * (kernel - 1) / 2`` on each side. That equals
TensorFlow's "SAME" padding for the odd input sizes DeepLab uses
(k * output_stride + 1, e.g. 257, 513) and keeps stride-1 atrous convs
size-preserving for every input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

OUTPUT_STRIDES = (8, 16, 32)


class ConvBNAct(nn.Sequential):
    """[N, Cin, H, W] -> [N, Cout, ceil(H/stride), ceil(W/stride)]: conv -> BN -> activation.

    Children are indexed 0 (conv), 1 (BN), 2 (activation, if any), the layout of
    torchvision's ``Conv2dNormActivation`` so its MobileNetV2 weights load by name.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        *,
        stride: int = 1,
        rate: int = 1,
        groups: int = 1,
        activation: type[nn.Module] | None = nn.ReLU,
        norm: type[nn.BatchNorm2d] = nn.BatchNorm2d,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=rate * (kernel_size - 1) // 2,
                dilation=rate,
                groups=groups,
                bias=False,
            ),
            norm(out_channels),
        ]
        if activation is not None:
            # In place is safe: the activation only ever sees this block's own BN output.
            layers.append(activation(inplace=True))
        super().__init__(*layers)


class SeparableConv2d(nn.Module):
    """[N, Cin, H, W] -> [N, Cout, H/stride, W/stride]: depthwise 3x3 -> BN -> pointwise 1x1 -> BN.

    ``relu=True`` puts a ReLU after both BNs (the v3+ paper's form, sec. 3.2: "extra
    batch normalization and ReLU after each 3x3 depthwise convolution"; also what
    the TF release's ASPP and decoder use). ``relu=False`` leaves both linear, for
    the TF release's pre-activation Xception units.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        rate: int = 1,
        relu: bool = True,
    ) -> None:
        super().__init__()
        act = nn.ReLU if relu else None
        self.depthwise = ConvBNAct(
            in_channels, in_channels, 3, stride=stride, rate=rate, groups=in_channels,
            activation=act,
        )  # fmt: skip
        self.pointwise = ConvBNAct(in_channels, out_channels, 1, activation=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))

    def set_atrous(self, *, stride: int, rate: int) -> None:
        set_atrous(self.depthwise[0], stride=stride, rate=rate)


class SingleValueBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that normalises with its running statistics when a training batch
    holds a single value per channel (batch 1 on a 1x1 map).

    Why: the image pooling branch of ASPP sees a 1x1 map, so at batch size 1 the
    batch has one value per channel. PyTorch raises on that, and even if it did
    not, the batch variance is 0 and every channel would become exactly ``bias``:
    the branch would carry no information and pass no gradient to its conv.
    Using the running statistics (without updating them) keeps the branch
    meaningful; they are estimated on larger batches, or stay at their ImageNet /
    checkpoint values when BN is frozen, as the DeepLab recipe does for batches
    below 12 anyway. Batches with more than one value per channel are untouched.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias,
                training=False, momentum=0.0, eps=self.eps,
            )  # fmt: skip
        return super().forward(x)


def set_atrous(conv: nn.Conv2d, *, stride: int, rate: int) -> None:
    """Give an existing conv a new stride and atrous rate, keeping its weights.

    Padding follows the rate so a stride-1 conv keeps the spatial size.
    """
    k = conv.kernel_size[0]
    conv.stride = (stride, stride)
    conv.dilation = (rate, rate)
    conv.padding = (rate * (k - 1) // 2,) * 2


def check_output_stride(output_stride: int, allowed: Sequence[int] = OUTPUT_STRIDES) -> None:
    if output_stride not in allowed:
        raise ValueError(
            f"output_stride {output_stride} is not supported; choose one of "
            f"{', '.join(map(str, allowed))}"
        )


def atrous_schedule(
    strides: Sequence[int], *, input_stride: int, output_stride: int
) -> list[tuple[int, int]]:
    """(stride, rate) for each unit of a backbone so that its total stride stops at
    ``output_stride``: once reached, a unit's stride becomes 1 and all later units
    use atrous rate = the product of the strides removed so far. The unit whose
    stride is removed keeps the previous rate (TF DeepLab's ``stack_blocks_dense``).

    ``strides`` are the nominal unit strides; ``input_stride`` is the stride of the
    features entering the first unit (e.g. 2 after a stride-2 stem conv).
    """
    check_output_stride(output_stride)
    current, rate = input_stride, 1
    plan = []
    for s in strides:
        if current * s > output_stride:
            plan.append((1, rate))
            rate *= s
        else:
            plan.append((s, rate))
            current *= s
    if current != output_stride:
        raise ValueError(
            f"output stride {output_stride} cannot be reached (network stops at {current})"
        )
    return plan


def scale_rates(rates: Sequence[int], *, defined_at: int, output_stride: int) -> tuple[int, ...]:
    """Atrous rates given at output stride ``defined_at``, rescaled so they cover the
    same field of view in pixels at ``output_stride``: 6, 12, 18 at OS 16 become
    12, 24, 36 at OS 8 (DeepLab-v3, sec. 3.3) and 3, 6, 9 at OS 32. Never below 1."""
    return tuple(max(1, int(r * defined_at / output_stride + 0.5)) for r in rates)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` (at least ``min_value``),
    never going more than 10% below ``value``: the rule of the TF and torchvision
    MobileNets, so width multipliers give the same channel counts as their weights."""
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def aligned_size(length: int, output_stride: int, *, align_corners: bool = True) -> int:
    """The smallest size >= ``length`` that the model's feature grid fits: k * OS + 1 with
    corner-aligned resizes (513 = 32 * 16 + 1, DeepLab-v2 sec. 4; the TF release feeds
    such sizes so feature corners sit on image corners), else a multiple of OS."""
    if output_stride <= 1:
        return length
    if align_corners:
        return -(-(length - 1) // output_stride) * output_stride + 1
    return -(-length // output_stride) * output_stride


def scaled_size(length: int, scale: float) -> int:
    """``length`` at ``scale`` keeping k * OS + 1 sizes aligned: (length - 1) * s + 1
    (TF's scale_dimension: 513 -> 257 at 0.5)."""
    return max(1, int((length - 1) * scale + 1))


def resize(x: torch.Tensor, size: Sequence[int], *, align_corners: bool) -> torch.Tensor:
    """Bilinear resize of [N, C, h, w] to [N, C, *size]; a no-op when sizes match."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


def init_weights(module: nn.Module) -> None:
    """He initialisation for convs (fan-out, as torchvision's ResNet), BN at identity."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
