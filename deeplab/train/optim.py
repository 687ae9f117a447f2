"""SGD with momentum and the "poly" learning rate of DeepLab (v2 sec. 4.1, v3 sec. 4.1):
``lr * (1 - step/max_steps)^0.9``, weight decay on kernels only (the TF release)."""

from __future__ import annotations

import torch
import torch.nn as nn


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    decay_bn_and_bias: bool = False,
) -> torch.optim.SGD:
    """SGD with momentum; weight decay on kernels only unless ``decay_bn_and_bias``."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            # 1-D parameters are BN gamma/beta and biases; TF regularises only kernels.
            (decay if p.ndim > 1 or decay_bn_and_bias else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def poly_schedule(
    optimizer: torch.optim.Optimizer,
    *,
    max_iters: int,
    power: float = 0.9,
    warmup_iters: int = 0,
    warmup_factor: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """lr * (1 - step/max_iters)^power, after an optional linear warmup from warmup_factor*lr."""

    def factor(step: int) -> float:
        poly = max(0.0, 1.0 - step / max_iters) ** power
        if step < warmup_iters:
            return poly * (warmup_factor + (1.0 - warmup_factor) * step / warmup_iters)
        return poly

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
