"""Parameter and multiply-add counts, and the table behind ``deeplab models``.

What is counted: the multiply-adds of every ``nn.Conv2d`` and ``nn.Linear`` in
one forward pass, i.e. for each output element ``in_channels / groups * kh * kw``
(conv) or ``in_features`` (linear). Depthwise convs therefore count ``kh * kw``
per output element. Not counted: bias additions, batch norm, activations,
pooling, bilinear resizes, residual sums, concatenations. This is the convention
of the MobileNet papers and of the DeepLab model zoo's "multiply-adds" column,
which these counts reproduce within 1.5% (see ``tests/test_flops.py``).

Counting runs on ``torch.device("meta")`` tensors: only shapes are computed, so
a 1025x2049 Xception-65 costs nothing to count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from deeplab.models.registry import get_builder, list_models
from deeplab.table import text_table


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not); buffers such as BN statistics excluded."""
    return sum(p.numel() for p in model.parameters())


def count_multiply_adds(model: nn.Module, size: Sequence[int], *, batch: int = 1) -> int:
    """Multiply-adds of ``model``'s convs and linears for a [batch, 3, H, W] input.

    Runs one eval-mode forward pass on the device of the model's parameters
    (use a model built under ``torch.device("meta")`` to count for free); the
    model's train/eval mode is restored afterwards.
    """
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(batch, 3, *size, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


def model_table(
    *, size: Sequence[int] = (513, 513), output_stride: int = 16, num_classes: int = 21
) -> str:
    """A printable table of every registered model: parameters and multiply-adds at ``size``.

    Models defined at one output stride only (the VGG-16 ones: 8) are listed at
    theirs; the "OS" column shows the stride each row was counted at.
    """
    h, w = size
    rows = []
    for name in list_models():
        builder = get_builder(name)
        with torch.device("meta"):
            try:
                model = builder(num_classes=num_classes, output_stride=output_stride)
            except ValueError:
                model = builder(num_classes=num_classes)
        rows.append(
            (
                name,
                str(model.output_stride),
                f"{count_parameters(model) / 1e6:.2f}",
                f"{count_multiply_adds(model, (h, w)) / 1e9:.2f}",
            )
        )
    header = ("model", "OS", "params (M)", f"mult-adds at {h}x{w} (B)")
    footer = (f"{num_classes} classes; multiply-adds of conv and linear layers, batch 1 "
              "(deeplab.models.flops).")  # fmt: skip
    return text_table(header, rows, right=(1, 2, 3), footer=[footer])
