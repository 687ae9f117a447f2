"""The training loop, on one screen: step, log, validate, checkpoint, stop.

``fit`` knows nothing of models or files: ``step`` runs one optimizer step, ``validate``
scores the model, ``save`` writes ``last.pt``; ``deeplab.train.run`` builds them from a
config. ``train_step`` is the step of DeepLab's recipe: SGD over ``accum_steps``
micro-batches, optional mixed precision, cross-entropy with the ignore label.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from tqdm import tqdm

from deeplab.data.images import DataError
from deeplab.losses import SegmentationLoss
from deeplab.train.optim import Clock
from deeplab.train.runtime import Process, StopRequest, any_process


@dataclass
class Progress:
    """Where training stands; what a checkpoint records of it."""

    step: int = 0
    best_miou: float = -1.0
    last_val_step: int = -1
    status: str = "running"  # running | done | interrupted | time limit | stopped
    elapsed_s: float = 0.0  # training time, over every run of it (a time budget's clock)


@dataclass(frozen=True)
class Plan:
    """How long to train and when to log, validate and checkpoint (``TrainConfig``'s)."""

    iters: int
    images_per_step: int
    log_every: int = 20
    val_every: int = 0  # 0: validate at the end only
    ckpt_every: int = 500
    stop_at: int | None = None  # end here with a checkpoint, keeping the schedule of iters
    max_minutes: float | None = None  # then validate once more and stop
    progress_bar: bool = True
    # The clock of a time-driven schedule (train.schedule=time): the run is done when its
    # budget is spent, the decay then being at its end; max_minutes is that budget.
    clock: Clock | None = None


def fit(
    step: Callable[[int], dict[str, Any]],
    *,
    plan: Plan,
    progress: Progress,
    proc: Process,
    log: Callable[[dict[str, Any]], None],
    save: Callable[[Progress], None],
    validate: Callable[[Progress, float], float] | None = None,
) -> Progress:
    """Run ``step(i) -> {"loss", "lr", ...}`` from ``progress.step`` to the end of ``plan``.

    ``validate(progress, elapsed_s) -> mIoU`` runs every ``plan.val_every`` steps and at
    the end (also at a time limit); ``save(progress)`` writes ``last.pt`` every
    ``plan.ckpt_every`` steps, when the run ends, and before a data error stops it.
    """
    stop_at = min(plan.iters, plan.stop_at or plan.iters)
    clock = plan.clock or Clock(None, elapsed_s=progress.elapsed_s)
    run_start, window, images = time.monotonic(), time.perf_counter(), 0
    bar = tqdm(total=plan.iters, initial=progress.step, dynamic_ncols=True,
               disable=not (proc.is_main and plan.progress_bar))  # fmt: skip

    def run_validation() -> None:
        began = clock.now()
        miou = validate(progress, clock.elapsed_s)
        clock.reserve_s = clock.now() - began  # the last validation will take as long
        progress.elapsed_s = clock.elapsed_s
        progress.last_val_step = progress.step
        if proc.is_main:
            bar.write(f"step {progress.step}: val mIoU {100 * miou:.2f}%")

    with StopRequest() as stop:
        while progress.step < stop_at:
            try:
                record = step(progress.step)
            except (DataError, OSError):
                save(progress)  # the file broke mid-run: keep what was learned, then stop
                raise
            progress.step += 1
            spent = clock.tick() >= 1.0  # a time budget spent: the decay is at its end
            progress.elapsed_s = clock.elapsed_s
            images += plan.images_per_step
            bar.update(1)
            if progress.step % plan.log_every == 0 or progress.step == stop_at:
                img_s = images / max(time.perf_counter() - window, 1e-9)
                log({"step": progress.step, **record, "img_s": img_s,
                     "elapsed_s": progress.elapsed_s})  # fmt: skip
                bar.set_postfix(loss=f"{record['loss']:.3f}", img_s=f"{img_s:.1f}")
                window, images = time.perf_counter(), 0
            due = plan.val_every and progress.step % plan.val_every == 0
            if validate is not None and (due or progress.step == plan.iters):
                run_validation()
            late = (bool(plan.max_minutes) and clock.budget_s is None
                    and time.monotonic() - run_start > 60 * plan.max_minutes)  # fmt: skip
            if any_process(stop.signum is not None or late or spent, proc):
                progress.status = ("interrupted" if stop.signum is not None else
                                   "time limit" if late else "done")  # fmt: skip
                if (late or spent) and validate is not None and \
                        progress.last_val_step != progress.step:  # fmt: skip
                    run_validation()  # the run's end: its model gets scored (and kept if best)
                break
            if progress.step % plan.ckpt_every == 0 and progress.step < stop_at:
                save(progress)
        else:
            progress.status = "done" if progress.step >= plan.iters else "stopped"
        save(progress)
    bar.close()
    return progress


def train_step(
    model: nn.Module,
    batches: Iterator,
    loss_fn: SegmentationLoss,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    step: int,
    accum_steps: int,
    autocast: Callable[[], contextlib.AbstractContextManager],
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> float:
    """One optimizer step over ``accum_steps`` micro-batches; returns the mean loss."""
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for i in range(accum_steps):
        images, masks = next(batches)
        images = images.to(device, memory_format=memory_format, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        # DDP averages gradients only on the last micro-batch of the step.
        last = i == accum_steps - 1
        sync = (
            contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        )
        with sync:
            with autocast():
                logits = model(images)
            loss = loss_fn(logits, masks, step) / accum_steps
            scaler.scale(loss).backward()
        total += loss.item()
    if not math.isfinite(total):
        raise FloatingPointError(
            f"loss is {total} at step {step}; lower optim.lr, add optim.warmup_iters, "
            "or train without mixed precision (train.amp=none)"
        )
    scaler.step(optimizer)
    scaler.update()
    return total
