"""``DeepLab(backbone, head, decoder)`` and the registered DeepLab v1, v2, v3 and v3+ variants.

Papers: v1 Chen et al., ICLR 2015 ("Semantic image segmentation with deep
convolutional nets and fully connected CRFs"); v2 TPAMI 2017 ("DeepLab"); v3
arXiv:1706.05587 ("Rethinking atrous convolution"); v3+ ECCV 2018
("Encoder-decoder with atrous separable convolution").

Each registered function is a few lines filling the one private builder
``_deeplab``; options are keyword-only and typed. Common ones:

- ``num_classes``; ``output_stride`` 8, 16 or 32 (VGG-16 models: 8 only, by design);
- ``align_corners`` for every bilinear resize (default True, as the TF release,
  which feeds k * output_stride + 1 sized inputs such as 513);
- ``separable``: depthwise separable 3x3 convs in ASPP and decoder (v3, v3+);
- ``beta_stem`` / ``multi_grid`` (ResNet), ``width_mult`` (MobileNetV2),
  ``multi_scale`` (v2: inputs at scales 1, 0.75, 0.5 fused by max).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn

from deeplab.models.backbones import VGG16, MobileNetV2, ResNet, Xception
from deeplab.models.decoder import Decoder
from deeplab.models.heads import ASPP, ASPPSum, DeepLabV3Head
from deeplab.models.layers import init_weights, resize, scaled_size
from deeplab.models.registry import register_model

# ASPP-L rates at output stride 8 (DeepLab-v2, sec. 3.1).
V2_RATES = (6, 12, 18, 24)
# ASPP rates at output stride 16, doubled at 8 (DeepLab-v3, sec. 3.3).
V3_RATES = (6, 12, 18)
# Multi-grid unit rates of ResNet's block4 (DeepLab-v3, sec. 4.1, Table 3's best).
MULTI_GRID = (1, 2, 4)
# Input scales fused by max for v2's multi-scale inputs (DeepLab-v2, sec. 3.1 "MSC").
V2_SCALES = (1.0, 0.75, 0.5)


class DeepLab(nn.Module):
    """[N, 3, H, W] float -> logits [N, num_classes, H, W], the same in train and eval.

    ``backbone(x) -> {"low", "out"}``; ``head(out)`` gives class scores (v1, v2, v3)
    or features for ``decoder(features, low)`` (v3+); scores are resized to the
    input. With several ``scales`` the network runs on each rescaled input and
    the scores, resized to the input, are fused by an element-wise max.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        decoder: nn.Module | None = None,
        *,
        align_corners: bool = True,
        scales: Sequence[float] = (1.0,),
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.decoder = decoder
        self.align_corners = align_corners
        self.scales = tuple(scales)
        self.num_classes: int = (decoder if decoder is not None else head).num_classes

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    def set_output_stride(self, output_stride: int) -> None:
        """Switch backbone strides/rates and head rates, e.g. train at 16, evaluate at 8."""
        self.backbone.set_output_stride(output_stride)
        self.head.set_output_stride(output_stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        if self.scales == (1.0,):
            return self.scores(x, size)
        fused = None
        for s in self.scales:
            scaled = [scaled_size(d, s) for d in size]
            scores = self.scores(resize(x, scaled, align_corners=self.align_corners), size)
            fused = scores if fused is None else torch.maximum(fused, scores)
        return fused

    def scores(self, x: torch.Tensor, size: Sequence[int] | None) -> torch.Tensor:
        """Class scores of one input scale, resized to ``size`` (``None``: as the head or
        decoder gives them, at output stride or 4, for whoever resizes them later)."""
        features = self.backbone(x)
        y = self.head(features["out"])
        if self.decoder is not None:
            y = self.decoder(y, features["low"])
        return y if size is None else resize(y, size, align_corners=self.align_corners)


def _deeplab(
    backbone: nn.Module,
    *,
    version: Literal["v1", "v2", "v3", "v3+"],
    num_classes: int,
    align_corners: bool,
    separable: bool = False,
    atrous_rates: Sequence[int] = V3_RATES,
    branch_channels: int | None = None,
    multi_scale: bool = False,
) -> DeepLab:
    """The one builder: put the head of ``version`` (and the v3+ decoder) on ``backbone``.

    ``branch_channels``: fc6/fc7 width of the v2 ASPP-L branches (1024 for VGG-16,
    None for ResNet-101 whose branches are single convs). ``atrous_rates`` of the
    v3/v3+ ASPP at output stride 16; empty for the zoo MobileNetV2 head.
    """
    c = backbone.out_channels
    decoder = None
    if version == "v1":
        # LargeFOV = one ASPP-L branch: fc6 3x3 rate 12, 1024 channels (v1 sec. 4; v2 Fig. 4).
        head: nn.Module = ASPPSum(c, num_classes, rates=(12,), hidden_channels=1024)
    elif version == "v2":
        head = ASPPSum(c, num_classes, rates=V2_RATES, hidden_channels=branch_channels)
    elif version == "v3":
        head = DeepLabV3Head(ASPP(c, rates=atrous_rates, separable=separable), num_classes)
    else:
        head = ASPP(c, rates=atrous_rates, separable=separable)
        decoder = Decoder(
            in_channels=head.out_channels,
            low_channels=backbone.low_channels,
            num_classes=num_classes,
            separable=separable,
            align_corners=align_corners,
        )
    head.set_output_stride(backbone.output_stride)
    model = DeepLab(
        backbone,
        head,
        decoder,
        align_corners=align_corners,
        scales=V2_SCALES if multi_scale else (1.0,),
    )
    init_weights(model)
    _init_class_scores(model)
    return model


# Names of the layers that output class scores: v3 head / v3+ decoder ``classifier``,
# v2 VGG branches' ``fc8``, v2 ResNet branches' single ``fc``.
_SCORE_LAYERS = ("classifier", "fc8", "fc")


def _init_class_scores(model: DeepLab) -> None:
    """Start class-score layers small: normal, std 0.01, zero bias (the TF release's
    logits initialiser). With He init the first scores are large and random and the
    first loss is 3x ln(num_classes); small scores start it near ln(num_classes)."""
    for part in (model.head, model.decoder):
        for name, m in (part.named_modules() if part is not None else ()):
            if isinstance(m, nn.Conv2d) and name.rsplit(".", 1)[-1] in _SCORE_LAYERS:
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


# --- the registered variants ---------------------------------------------------------
# Every builder takes num_classes, output_stride and align_corners; the backbone decides
# which output strides it supports (VGG-16: 8 only, by design).


def _resnet(
    depth: int, version: Literal["v2", "v3", "v3+"], *, output_stride: int, beta_stem: bool,
    multi_grid: Sequence[int] | None = None, **head,
) -> DeepLab:  # fmt: skip
    """A DeepLab of ``version`` on an atrous ResNet; ``head`` options go to ``_deeplab``."""
    backbone = ResNet(
        depth=depth, output_stride=output_stride, multi_grid=multi_grid, beta_stem=beta_stem
    )
    return _deeplab(backbone, version=version, **head)


@register_model
def deeplabv1_vgg16_largefov(
    *, num_classes: int = 21, output_stride: int = 8, align_corners: bool = True
) -> DeepLab:
    """DeepLab-v1 LargeFOV: atrous VGG-16 (OS 8) + fc6 3x3 rate 12 (1024) + fc7 + fc8."""
    return _deeplab(VGG16(output_stride=output_stride), version="v1", num_classes=num_classes,
                    align_corners=align_corners)  # fmt: skip


@register_model
def deeplabv2_vgg16(
    *, num_classes: int = 21, output_stride: int = 8, multi_scale: bool = False,
    align_corners: bool = True,
) -> DeepLab:  # fmt: skip
    """DeepLab-v2 VGG-16: ASPP-L, four fc6 (rate 6/12/18/24) -> fc7 -> fc8 branches, summed."""
    return _deeplab(VGG16(output_stride=output_stride), version="v2", num_classes=num_classes,
                    branch_channels=1024, multi_scale=multi_scale,
                    align_corners=align_corners)  # fmt: skip


@register_model
def deeplabv2_resnet101(
    *, num_classes: int = 21, output_stride: int = 8, multi_scale: bool = False,
    beta_stem: bool = False, align_corners: bool = True,
) -> DeepLab:  # fmt: skip
    """DeepLab-v2 ResNet-101: ASPP-L, four 3x3 convs to class scores (rates 6..24), summed."""
    return _resnet(101, "v2", output_stride=output_stride, beta_stem=beta_stem,
                   num_classes=num_classes, multi_scale=multi_scale,
                   align_corners=align_corners)  # fmt: skip


@register_model
def deeplabv3_resnet50(
    *, num_classes: int = 21, output_stride: int = 16, separable: bool = False,
    beta_stem: bool = False, multi_grid: tuple[int, int, int] = MULTI_GRID,
    align_corners: bool = True,
) -> DeepLab:  # fmt: skip
    """DeepLab-v3 ResNet-50: multi-grid block4 + ASPP (1x1, rates 6/12/18, image pooling)."""
    return _resnet(50, "v3", output_stride=output_stride, beta_stem=beta_stem,
                   multi_grid=multi_grid, num_classes=num_classes, separable=separable,
                   align_corners=align_corners)  # fmt: skip


@register_model
def deeplabv3_resnet101(
    *, num_classes: int = 21, output_stride: int = 16, separable: bool = False,
    beta_stem: bool = False, multi_grid: tuple[int, int, int] = MULTI_GRID,
    align_corners: bool = True,
) -> DeepLab:  # fmt: skip
    """DeepLab-v3 ResNet-101: multi-grid block4 + ASPP (1x1, rates 6/12/18, image pooling)."""
    return _resnet(101, "v3", output_stride=output_stride, beta_stem=beta_stem,
                   multi_grid=multi_grid, num_classes=num_classes, separable=separable,
                   align_corners=align_corners)  # fmt: skip


@register_model
def deeplabv3_mobilenetv2(
    *, num_classes: int = 21, output_stride: int = 16, width_mult: float = 1.0,
    align_corners: bool = True,
) -> DeepLab:  # fmt: skip
    """DeepLab-v3 MobileNetV2, model-zoo form: image pooling + 1x1 branch, no atrous
    branches, no decoder (TF release's mobilenetv2 checkpoints). The head keeps 256
    channels at every width."""
    return _deeplab(MobileNetV2(width_mult=width_mult, output_stride=output_stride),
                    version="v3", num_classes=num_classes, atrous_rates=(),
                    align_corners=align_corners)  # fmt: skip


@register_model
def deeplabv3plus_resnet101(
    *, num_classes: int = 21, output_stride: int = 16, separable: bool = True,
    beta_stem: bool = False, multi_grid: tuple[int, int, int] = MULTI_GRID,
    align_corners: bool = True,
) -> DeepLab:  # fmt: skip
    """DeepLab-v3+ ResNet-101: v3 encoder + decoder on layer1 (stride 4) features, with
    depthwise separable 3x3 convs in ASPP and decoder, the TF release's default for v3+
    (``aspp_with_separable_conv``, ``decoder_use_separable_conv``): 56 vs 93 GMACs at
    513x513; ``separable=False`` gives regular convs."""
    return _resnet(101, "v3+", output_stride=output_stride, beta_stem=beta_stem,
                   multi_grid=multi_grid, num_classes=num_classes, separable=separable,
                   align_corners=align_corners)  # fmt: skip


@register_model
def deeplabv3plus_xception65(
    *, num_classes: int = 21, output_stride: int = 16, separable: bool = True,
    align_corners: bool = True,
) -> DeepLab:  # fmt: skip
    """DeepLab-v3+ Xception-65 with separable ASPP and decoder (the model-zoo configuration)."""
    return _deeplab(Xception(depth=65, output_stride=output_stride), version="v3+",
                    num_classes=num_classes, separable=separable,
                    align_corners=align_corners)  # fmt: skip


@register_model
def deeplabv3plus_xception71(
    *, num_classes: int = 21, output_stride: int = 16, separable: bool = True,
    align_corners: bool = True,
) -> DeepLab:  # fmt: skip
    """DeepLab-v3+ Xception-71 (two extra entry-flow units) with separable ASPP and decoder."""
    return _deeplab(Xception(depth=71, output_stride=output_stride), version="v3+",
                    num_classes=num_classes, separable=separable,
                    align_corners=align_corners)  # fmt: skip


@register_model
def deeplabv3plus_mobilenetv2(
    *, num_classes: int = 21, output_stride: int = 16, width_mult: float = 1.0,
    separable: bool = True, atrous_rates: tuple[int, ...] = V3_RATES,
    align_corners: bool = True,
) -> DeepLab:  # fmt: skip
    """DeepLab-v3+ MobileNetV2: ASPP (rates 6/12/18) + decoder on features.3 (stride 4).

    ``atrous_rates=()`` keeps the model-zoo head (image pooling + 1x1 branch, as in
    ``deeplabv3_mobilenetv2``) under the decoder, so Google's VOC model fills all of it."""
    return _deeplab(MobileNetV2(width_mult=width_mult, output_stride=output_stride),
                    version="v3+", num_classes=num_classes, separable=separable,
                    atrous_rates=tuple(atrous_rates), align_corners=align_corners)  # fmt: skip
