"""Modified aligned Xception-65/71 of DeepLab-v3+ (Chen et al., ECCV 2018, sec. 3.2).

Changes to Chollet's Xception, as in the v3+ paper and the TF release's
``xception_65`` / ``xception_71``:
- more layers: the middle flow repeats its unit 16 times (8 in Xception);
- every max-pool is replaced by a depthwise separable conv with stride 2, so
  atrous rates can replace any stride (output stride 8, 16 or 32);
- batch norm after every depthwise conv.

Layout: stem ``conv1_1`` (3x3, 32, stride 2) and ``conv1_2`` (3x3, 64); entry flow
of units with (128, 256, 728) channels (Xception-71 adds a stride-1 unit before
the 256 and 728 ones, TF release); middle flow of 16 residual units of 728;
exit flow (728, 1024, 1024 with a 1x1 shortcut; then 1536, 1536, 2048 without).
Each unit is three separable convs, the third one carrying the unit's stride.

``relu_after_depthwise=True`` (default) puts BN + ReLU after every depthwise and
pointwise conv, the paper's description. ``False`` gives the TF release's
placement: a ReLU *before* each separable conv of the entry/middle/exit-block1
units and none inside it (only the last exit-flow unit has ReLU after its
depthwise convs), for importing TF checkpoints. The multiply-adds are the same.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from deeplab.models.layers import ConvBNAct, SeparableConv2d, atrous_schedule

# (channels of the three separable convs, shortcut kind, unit stride) per unit.
_ENTRY_65 = (
    ((128, 128, 128), "conv", 2),
    ((256, 256, 256), "conv", 2),
    ((728, 728, 728), "conv", 2),
)
_ENTRY_71 = (
    ((128, 128, 128), "conv", 2),
    ((256, 256, 256), "conv", 1),
    ((256, 256, 256), "conv", 2),
    ((728, 728, 728), "conv", 1),
    ((728, 728, 728), "conv", 2),
)
# The entry unit whose second separable conv gives the stride-4 "low" features for the
# decoder (TF release: entry_flow/block2 for Xception-65, block3 for Xception-71).
_LOW_UNIT = {65: 1, 71: 2}
_MIDDLE = ((728, 728, 728), "sum", 1)
_EXIT = (((728, 1024, 1024), "conv", 2), ((1536, 1536, 2048), "none", 1))


class XceptionUnit(nn.Module):
    """[N, Cin, H, W] -> [N, C3, H/stride, W/stride]: three separable convs + shortcut.

    ``shortcut``: "conv" (1x1 conv + BN with the unit's stride), "sum" (identity) or "none".
    """

    def __init__(
        self,
        in_channels: int,
        channels: tuple[int, int, int],
        *,
        shortcut: str,
        stride: int,
        relu_inside: bool,
    ) -> None:
        super().__init__()
        # Pre-activation (TF layout) applies a ReLU to each separable conv's input instead.
        self.pre_activation = not relu_inside
        widths = (in_channels, *channels)
        self.sepconv = nn.ModuleList(
            SeparableConv2d(
                widths[i], widths[i + 1], stride=stride if i == 2 else 1, relu=relu_inside
            )
            for i in range(3)
        )
        self.shortcut_kind = shortcut
        self.shortcut = None
        if shortcut == "conv":
            self.shortcut = ConvBNAct(in_channels, channels[2], 1, stride=stride, activation=None)

    def forward_with_low(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit output, output of the second separable conv) for the decoder's low features."""
        y = x
        mid = x
        for i, conv in enumerate(self.sepconv):
            y = conv(torch.relu(y) if self.pre_activation else y)
            if i == 1:
                mid = y
        if self.shortcut_kind == "conv":
            y = y + self.shortcut(x)
        elif self.shortcut_kind == "sum":
            y = y + x
        return y, mid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_low(x)[0]

    def set_atrous(self, *, stride: int, rate: int) -> None:
        for i, conv in enumerate(self.sepconv):
            conv.set_atrous(stride=stride if i == 2 else 1, rate=rate)
        if self.shortcut is not None:
            self.shortcut[0].stride = (stride, stride)


class Xception(nn.Module):
    """[N, 3, H, W] -> {"low": [N, 256, H/4, W/4], "out": [N, 2048, H/OS, W/OS]}."""

    out_channels = 2048
    low_channels = 256

    def __init__(
        self, *, depth: int = 65, output_stride: int = 16, relu_after_depthwise: bool = True
    ) -> None:
        super().__init__()
        if depth not in _LOW_UNIT:
            raise ValueError(f"Xception depth {depth} is not available; choose 65 or 71")
        self.conv1_1 = ConvBNAct(3, 32, 3, stride=2)
        self.conv1_2 = ConvBNAct(32, 64, 3)
        entry = _ENTRY_65 if depth == 65 else _ENTRY_71
        flows = {"entry_flow": entry, "middle_flow": (_MIDDLE,) * 16, "exit_flow": _EXIT}
        in_channels = 64
        self._strides: list[int] = []
        for flow_name, specs in flows.items():
            units = []
            for channels, shortcut, stride in specs:
                # The TF release keeps ReLU inside the separable convs of the last unit only.
                relu_inside = relu_after_depthwise or shortcut == "none"
                units.append(
                    XceptionUnit(
                        in_channels, channels, shortcut=shortcut, stride=stride,
                        relu_inside=relu_inside,
                    )
                )  # fmt: skip
                self._strides.append(stride)
                in_channels = channels[2]
            setattr(self, flow_name, nn.Sequential(*units))
        self._low_unit = _LOW_UNIT[depth]
        self.set_output_stride(output_stride)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.conv1_2(self.conv1_1(x))
        low = x
        for i, unit in enumerate(self.entry_flow):
            if i == self._low_unit:
                x, low = unit.forward_with_low(x)
            else:
                x = unit(x)
        x = self.exit_flow(self.middle_flow(x))
        return {"low": low, "out": x}

    def set_output_stride(self, output_stride: int) -> None:
        """Strides of the units past ``output_stride`` become atrous rates, keeping weights."""
        plan = atrous_schedule(self._strides, input_stride=2, output_stride=output_stride)
        units = [*self.entry_flow, *self.middle_flow, *self.exit_flow]
        for unit, (stride, rate) in zip(units, plan, strict=True):
            unit.set_atrous(stride=stride, rate=rate)
        self.output_stride = output_stride
