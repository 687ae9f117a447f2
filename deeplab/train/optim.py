"""SGD with momentum and the "poly" learning rate of DeepLab (v2 sec. 4.1, v3 sec. 4.1):
``lr * (1 - progress)^0.9``, weight decay on kernels only (the TF release).

``progress`` is ``step / max_iters``, or, for a run with a time budget
(``train.schedule=time``), the larger of that and the share of the budget spent
(``Clock``): a run on a slower or busier machine does fewer steps, but its last steps are
still at the end of the decay, where the poly schedule earns its accuracy.
"""

from __future__ import annotations

import time
from collections.abc import Callable

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


class Clock:
    """Training time against a budget: ``fraction()`` is the share spent, 0..1.

    ``elapsed_s`` carries the time of earlier runs of the same training (resume);
    ``reserve_s`` is kept back for the final validation, so the decay ends before it.
    ``tick()`` reads the time once per step; ``agree`` makes every process of a DDP run use
    the same value (their clocks differ by milliseconds, their learning rates must not).
    ``now`` is the time source (tests pass a fake one).
    """

    def __init__(self, budget_s: float | None, *, elapsed_s: float = 0.0,
                 now: Callable[[], float] | None = None,
                 agree: Callable[[float], float] | None = None) -> None:  # fmt: skip
        self.budget_s = budget_s
        self.now = now or time.monotonic
        self.agree = agree
        self.started = self.now() - elapsed_s
        self.reserve_s = 0.0
        self._fraction = 0.0

    @property
    def elapsed_s(self) -> float:
        return self.now() - self.started

    def tick(self) -> float:
        """The share of the budget spent now (0 without a budget), kept for ``fraction``."""
        if self.budget_s:
            spent = min(1.0, self.elapsed_s / max(self.budget_s - self.reserve_s, 1e-9))
            self._fraction = self.agree(spent) if self.agree else spent
        return self._fraction

    def fraction(self) -> float:
        return self._fraction


def poly_schedule(
    optimizer: torch.optim.Optimizer,
    *,
    max_iters: int,
    power: float = 0.9,
    warmup_iters: int = 0,
    warmup_factor: float = 0.1,
    clock: Clock | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """lr * (1 - progress)^power, after an optional linear warmup from warmup_factor*lr;
    progress = step / max_iters, or the clock's spent share when that is larger."""

    def factor(step: int) -> float:
        # The clock is read as the step ends, so the next step's rate reflects the time now.
        progress = max(step / max_iters, clock.tick() if clock is not None else 0.0)
        poly = max(0.0, 1.0 - progress) ** power
        if step < warmup_iters:
            return poly * (warmup_factor + (1.0 - warmup_factor) * step / warmup_iters)
        return poly

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
