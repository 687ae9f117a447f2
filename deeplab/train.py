"""The training loop: one process, or data-parallel under ``torchrun``.

DeepLab's recipe (DeepLab-v3 sec. 4, DeepLab-v3+ sec. 4, the TF release's train.py): SGD with
momentum 0.9, the "poly" learning rate ``lr * (1 - iter/max_iter)^0.9``, weight decay on
kernels only, batch norm fine-tuned only when a BN layer sees >= 12 images per step, random
scale/crop/flip augmentation, cross-entropy with the ignore label and optional top-k% hard
pixel mining.

``train(cfg)`` builds every object from a ``Config`` and hands them to ``fit``, the loop
itself. Tests and scripts may pass their own model and datasets.

Checkpoints (``out_dir/last.pt``, written atomically: temp file + ``os.replace``) hold the
model, optimizer, scheduler and grad-scaler states, the RNG states of every process
(python, numpy, torch), the data position (epoch, batches consumed), the step, the best
mIoU and the resolved config, so ``--resume`` continues exactly where the run stopped.
Data augmentation is drawn from (seed, epoch, index) by the dataset, so it does not depend
on the RNG state, the number of workers or where a run was resumed. ``out_dir/best.pt``
holds the model with the best validation mIoU (model, config, step, metrics).

Ctrl-C or SIGTERM ends the current step, writes ``last.pt`` and returns; a second Ctrl-C
stops at once. Under ``torchrun`` (env:// rendezvous; nccl on CUDA, gloo on CPU) every
process reads its own shard of each epoch, gradients are averaged, and only rank 0 logs and
writes checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import random
import signal
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from deeplab.config import Config, ConfigError, require_data_root, to_dict, validate
from deeplab.data.labels import IGNORE_INDEX
from deeplab.losses import SegmentationLoss, load_class_weights
from deeplab.models.layers import SingleValueBatchNorm2d

# --- processes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Process:
    """Where this process runs: rank, number of processes and device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_process(device: str = "auto") -> Process:
    """Join the ``torchrun`` process group if launched by it (env://), else a single process."""
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but CUDA is not available; use train.device=cpu")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Process(0, 1, torch.device("cuda" if want_cuda else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo", init_method="env://")
    dev = torch.device("cuda", local_rank) if want_cuda else torch.device("cpu")
    return Process(dist.get_rank(), dist.get_world_size(), dev)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


# --- data ---------------------------------------------------------------------------------


class ShardedBatchSampler:
    """Shuffled batches of this process's shard of each epoch, resumable mid-epoch.

    Yields lists of ``batch_size`` indices. Epoch ``e`` is a permutation drawn from
    ``seed + e``; it is padded to a multiple of the process count (like
    ``DistributedSampler``) and process ``r`` takes every ``world_size``-th index from ``r``,
    so the processes' batches at one step together hold the same images as one process
    with the global batch. ``set_position(epoch, batch)`` skips the batches already used.
    """

    def __init__(
        self,
        num_items: int,
        *,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.num_items, self.batch_size, self.seed, self.shuffle = (
            num_items,
            batch_size,
            seed,
            shuffle,
        )
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, batch: int = 0) -> None:
        self.epoch, self.start = epoch, batch

    def shard(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_items, generator=g).tolist()
        else:
            order = list(range(self.num_items))
        padded = -(-self.num_items // self.world_size) * self.world_size
        order += order[: padded - len(order)]
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        return (-(-self.num_items // self.world_size)) // self.batch_size  # drops the last partial

    def __iter__(self) -> Iterator[list[int]]:
        shard = self.shard()
        for b in range(self.start, len(self)):
            yield shard[b * self.batch_size : (b + 1) * self.batch_size]


class BatchStream:
    """An endless stream of training batches over epochs that remembers its position.

    ``state()`` is (epoch, batches consumed in it); ``load_state`` continues from there.
    Before each epoch the sampler and the dataset (``set_epoch``) learn the epoch number.
    """

    def __init__(
        self,
        dataset: Any,
        sampler: ShardedBatchSampler,
        *,
        num_workers: int = 0,
        collate_fn: Callable | None = None,
    ) -> None:
        if len(sampler) == 0:
            raise ConfigError(
                f"the training set has {len(dataset)} images, fewer than one batch per process "
                f"({sampler.batch_size}); lower train.batch_size or add images"
            )
        self.dataset, self.sampler = dataset, sampler
        self.num_workers, self.collate_fn = num_workers, collate_fn
        self.epoch, self.batch = 0, 0
        self._it: Iterator | None = None

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.batch, self._it = int(state["epoch"]), int(state["batch"]), None

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self):
        if self._it is None:
            self.sampler.set_position(self.epoch, self.batch)
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.epoch)
            # A new loader per epoch: workers start with the dataset's new epoch. Its own
            # generator keeps worker seeding away from the global torch RNG (exact resume).
            loader = DataLoader(
                self.dataset,
                batch_sampler=self.sampler,
                num_workers=self.num_workers,
                collate_fn=self.collate_fn,
                generator=torch.Generator().manual_seed(self.sampler.seed + self.epoch),
                worker_init_fn=_ignore_sigint if self.num_workers else None,
            )
            self._it = iter(loader)
        try:
            item = next(self._it)
        except StopIteration:
            self.epoch, self.batch, self._it = self.epoch + 1, 0, None
            return next(self)
        self.batch += 1
        return item


def _ignore_sigint(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; the main process saves and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def shard_indices(num_items: int, rank: int, world_size: int) -> list[int]:
    """Validation shard of one process: every ``world_size``-th item, no duplicates."""
    return list(range(rank, num_items, world_size))


# --- model, batch norm, optimizer, schedule -----------------------------------------------


def resolve_bn_mode(mode: str, *, images_per_bn: int) -> str:
    """``auto`` -> "finetune" when each BN layer sees >= 12 images per step, else "freeze"
    (the TF release: fine_tune_batch_norm needs a batch >= 12); other modes unchanged."""
    if mode == "auto":
        return "finetune" if images_per_bn >= 12 else "freeze"
    return mode


def configure_batchnorm(model: nn.Module, mode: str, *, images_per_bn: int) -> list[nn.Module]:
    """Apply the BN mode; return the frozen BN layers (kept in eval mode, no gradients)."""
    mode = resolve_bn_mode(mode, images_per_bn=images_per_bn)
    if mode == "finetune":
        return []
    if mode == "freeze_backbone":
        # The image-pooling BN goes with the backbone's: its statistics come from one
        # pooled vector per image, and over a few crops of similar scenes their variance
        # is tiny (~4e-5 on CamVid, batch 8), so at evaluation the shift between crop and
        # full-frame pooling was amplified ~150x and the model predicted a single class.
        frozen = [m for m in model.backbone.modules() if isinstance(m, _BatchNorm)]
        frozen += [m for m in model.modules() if isinstance(m, SingleValueBatchNorm2d)]
    else:
        frozen = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    for m in frozen:
        m.requires_grad_(False)
    return frozen


def freeze_modules(model: nn.Module, names: list[str]) -> list[nn.Module]:
    """Stop gradients to the named submodules; return their BN layers (to keep in eval mode)."""
    modules = dict(model.named_modules())
    frozen_bn: list[nn.Module] = []
    for name in names:
        if name not in modules:
            top = ", ".join(n for n in modules if n and "." not in n)
            raise ConfigError(
                f"model.frozen_modules: {name!r} is not a module of this model; names are as in "
                f"model.named_modules(), e.g. backbone.features.0 (top level: {top})"
            )
        modules[name].requires_grad_(False)
        frozen_bn += [m for m in modules[name].modules() if isinstance(m, _BatchNorm)]
    return frozen_bn


def set_train_mode(model: nn.Module, frozen_bn: list[nn.Module]) -> None:
    """``model.train()`` with the frozen BN layers back in eval mode (running statistics)."""
    model.train()
    for m in frozen_bn:
        m.eval()


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


def autocast_for(amp: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A context factory: bf16/fp16 autocast, or nothing for ``amp="none"``."""
    if amp == "none":
        return contextlib.nullcontext
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp=fp16 needs CUDA; on CPU use train.amp=bf16 or none")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


# --- checkpoints --------------------------------------------------------------------------


class CheckpointError(RuntimeError):
    """A checkpoint file is missing or unreadable; the message names it."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """``torch.save`` to a temp file beside ``path``, then ``os.replace``: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``; errors name the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} not found; pass --resume with the path of an existing last.pt"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and unpickler errors all mean "unreadable"
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); it may be truncated. "
            "Resume from another file (e.g. best.pt) or delete it to start over"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a deeplab training checkpoint (no 'model' entry)")
    return state


def rng_state() -> dict[str, Any]:
    """This process's python, numpy and torch RNG states, as plain types (weights_only-safe)."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "key": np_state["state"]["key"].tolist(),
            "pos": np_state["state"]["pos"],
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state({
        "bit_generator": "MT19937",
        "state": {"key": np.asarray(n["key"], dtype=np.uint32), "pos": n["pos"]},
        "has_gauss": n["has_gauss"], "gauss": n["gauss"],
    })  # fmt: skip
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def gather_rng_states(proc: Process) -> list[dict[str, Any]]:
    """Every process's RNG state, indexed by rank (collective under DDP)."""
    if not proc.distributed:
        return [rng_state()]
    states: list[Any] = [None] * proc.world_size
    dist.all_gather_object(states, rng_state())
    return states


# --- stopping -----------------------------------------------------------------------------


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks after each step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now, without a checkpoint
        self.signum = signum


def any_process(flag: bool, proc: Process) -> bool:
    """True if ``flag`` is set on any process (so all stop at the same step)."""
    if not proc.distributed:
        return flag
    t = torch.tensor([int(flag)], device=proc.device if proc.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# --- logging ------------------------------------------------------------------------------


class MetricsLog:
    """Rank 0 appends one JSON object per line to ``out_dir/metrics.jsonl`` (and TensorBoard)."""

    def __init__(self, out_dir: Path, *, enabled: bool, tensorboard: bool = False) -> None:
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "train.tensorboard=true needs the tensorboard package: "
                    "pip install tensorboard (or pip install 'deeplab[tensorboard]')"
                ) from None
            self.tb = SummaryWriter(str(out_dir / "tb"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# --- one step, one validation -------------------------------------------------------------


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


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    num_classes: int,
    proc: Process,
    output_stride: int | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, Any]:
    """Mean IoU of ``model`` on ``loader`` (this process's shard; summed over processes)."""
    from deeplab.metrics import ConfusionMatrix

    net = unwrap(model)
    train_os = getattr(net, "output_stride", None) or getattr(
        getattr(net, "backbone", None), "output_stride", None
    )
    if output_stride is not None:
        net.set_output_stride(output_stride)
    net.eval()
    cm = ConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX)
    for images, masks in loader:
        with autocast():
            logits = net(images.to(proc.device))
        cm.update(logits.argmax(1).cpu(), masks)
    if proc.distributed:
        cm.all_reduce()
    if output_stride is not None and train_os is not None:
        net.set_output_stride(train_os)
    return cm.compute()


@torch.no_grad()
def recompute_bn_statistics(
    model: nn.Module, batches: Iterable, *, num_batches: int, proc: Process
) -> None:
    """"Precise BN" (Wu and Johnson 2021, "Rethinking 'Batch' in BatchNorm", sec. 3): replace
    the running statistics of the BN layers in train mode by their plain average over
    ``num_batches`` batches under the current weights; frozen (eval-mode) BN is untouched.

    Why: the running averages (momentum 0.1) mix statistics of weights from the last ~10
    steps. While the learning rate is high they lag behind, and on CamVid a model scoring
    65% pixel accuracy with fresh statistics scored 31% with the running ones. Dropout is
    off during the pass, so it draws nothing from the global RNG (exact resume).
    """
    net = unwrap(model)
    bns = [m for m in net.modules() if isinstance(m, _BatchNorm) and m.training]
    if not bns:
        return
    dropouts = (nn.Dropout, nn.Dropout2d, nn.Dropout3d)
    dropout_was = {m: m.training for m in net.modules() if isinstance(m, dropouts)}
    for m in dropout_was:
        m.eval()
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
    for images, _ in itertools.islice(batches, num_batches):
        net(images.to(proc.device))
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
        if proc.distributed:  # the processes saw different images: average their estimates
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf)
                buf /= proc.world_size
    for m, was_training in dropout_was.items():
        m.train(was_training)


def precise_bn_batches(batches: BatchStream, *, seed: int) -> DataLoader:
    """Training batches for ``recompute_bn_statistics``, drawn apart from the training
    stream (its position and the global RNG stay as they are) and fixed by ``seed``."""
    sampler = ShardedBatchSampler(
        len(batches.dataset), batch_size=batches.sampler.batch_size, seed=seed,
        rank=batches.sampler.rank, world_size=batches.sampler.world_size,
    )  # fmt: skip
    return DataLoader(batches.dataset, batch_sampler=sampler, collate_fn=batches.collate_fn)


# --- the loop -----------------------------------------------------------------------------


@dataclass
class Progress:
    """What a checkpoint records about where training stands."""

    step: int = 0
    best_miou: float = -1.0
    status: str = "running"  # running | done | interrupted | time limit | stopped


def validate_and_keep_best(
    model: nn.Module,
    val_loader: DataLoader,
    *,
    cfg: Config,
    proc: Process,
    num_classes: int,
    progress: Progress,
    log: MetricsLog,
    elapsed_s: float,
) -> float:
    """Validate, log the metrics, write ``best.pt`` when the mIoU improves; return the mIoU."""
    autocast, os_ = autocast_for(cfg.train.amp, proc.device), cfg.eval.output_stride
    metrics = _jsonable(evaluate(model, val_loader, num_classes=num_classes, proc=proc,
                                 output_stride=os_, autocast=autocast))  # fmt: skip
    log.write({"step": progress.step, "elapsed_s": elapsed_s,
               **{f"val_{k}": v for k, v in metrics.items()}})  # fmt: skip
    if metrics["miou"] > progress.best_miou:  # NaN (nothing labelled) never counts as better
        progress.best_miou = float(metrics["miou"])
        if proc.is_main:
            save_checkpoint(Path(cfg.train.out_dir) / "best.pt", {
                "model": unwrap(model).state_dict(), "config": to_dict(cfg),
                "step": progress.step, "metrics": metrics,
            })  # fmt: skip
    return metrics["miou"]


def fit(
    model: nn.Module,
    batches: BatchStream,
    val_loader: DataLoader | None,
    loss_fn: SegmentationLoss,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    *,
    cfg: Config,
    proc: Process,
    frozen_bn: list[nn.Module],
    num_classes: int,
    progress: Progress,
    log: MetricsLog,
) -> Progress:
    """Train from ``progress.step`` to ``cfg.train.iters`` (or a stop); checkpoint; validate."""
    from tqdm import tqdm

    t, out = cfg.train, Path(cfg.train.out_dir)
    autocast = autocast_for(t.amp, proc.device)
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    stop_at = min(t.iters, t.stop_at) if t.stop_at else t.iters
    start_time = time.monotonic()
    show = proc.is_main and t.progress
    bar = tqdm(total=t.iters, initial=progress.step, disable=not show, dynamic_ncols=True)
    set_train_mode(model, frozen_bn)

    def checkpoint() -> None:
        rngs = gather_rng_states(proc)  # collective: every rank takes part
        if proc.is_main:
            save_checkpoint(out / "last.pt", {
                "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "rng": rngs, "data": batches.state(), "step": progress.step,
                "best_miou": progress.best_miou, "config": to_dict(cfg),
                "world_size": proc.world_size,
            })  # fmt: skip

    # fmt: off
    with StopRequest() as stop:
        window_start, window_images = time.perf_counter(), 0
        while progress.step < stop_at:
            loss = train_step(model, batches, loss_fn, optimizer, scaler, step=progress.step,
                              accum_steps=t.accum_steps, autocast=autocast, device=proc.device,
                              memory_format=memory_format)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            progress.step += 1
            window_images += t.batch_size
            if progress.step % t.log_every == 0 or progress.step == stop_at:
                img_s = window_images / max(time.perf_counter() - window_start, 1e-9)
                log.write({"step": progress.step, "epoch": batches.epoch, "loss": loss, "lr": lr,
                           "img_s": img_s, "elapsed_s": time.monotonic() - start_time})
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", img_s=f"{img_s:.1f}")
                window_start, window_images = time.perf_counter(), 0
            bar.update(1)

            due_val = t.val_every and progress.step % t.val_every == 0
            if val_loader is not None and (due_val or progress.step == t.iters):
                if cfg.eval.precise_bn_batches:
                    loader = precise_bn_batches(batches, seed=t.seed + 7919 * progress.step)
                    recompute_bn_statistics(model, loader, proc=proc,
                                            num_batches=cfg.eval.precise_bn_batches)
                miou = validate_and_keep_best(model, val_loader, cfg=cfg, proc=proc,
                                              num_classes=num_classes, progress=progress, log=log,
                                              elapsed_s=time.monotonic() - start_time)
                set_train_mode(model, frozen_bn)
                if proc.is_main:
                    bar.write(f"step {progress.step}: val mIoU {100 * miou:.2f}%")

            out_of_time = t.max_minutes and time.monotonic() - start_time > 60 * t.max_minutes
            if any_process(stop.signum is not None or bool(out_of_time), proc):
                progress.status = "interrupted" if stop.signum is not None else "time limit"
                break
            if progress.step % t.ckpt_every == 0 and progress.step < stop_at:
                checkpoint()
        else:
            progress.status = "done" if progress.step >= t.iters else "stopped"
        checkpoint()
    # fmt: on
    bar.close()
    return progress


def _jsonable(metrics: dict[str, Any]) -> dict[str, Any]:
    def conv(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.tolist()
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, (np.floating, np.integer)):
            return v.item()
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return {k: conv(v) for k, v in metrics.items()}


# --- building everything from a Config ----------------------------------------------------


def build_model(cfg: Config, *, num_classes: int) -> nn.Module:
    """The registered model with its starting weights (DeepLab checkpoint or ImageNet backbone)."""
    from deeplab.models import create_model

    m = cfg.model
    options = dict(m.options, num_classes=num_classes, output_stride=m.output_stride)
    if m.align_corners is not None:
        options["align_corners"] = m.align_corners
    source = m.backbone_weights
    if source and not Path(source).expanduser().is_file():
        # A zoo entry of ImageNet weights: create_model fills model.backbone from it.
        return create_model(m.name, pretrained=source, **options)
    model = create_model(m.name, pretrained=m.pretrained, **options)
    if source:
        from deeplab.weights import load_backbone_weights

        report = load_backbone_weights(model.backbone, Path(source).expanduser())
        print(f"backbone weights from {source}: {str(report).splitlines()[0]}", flush=True)
    return model


def build_datasets(cfg: Config, *, mean, std, seed: int):
    """The training set (with augmentation drawn from ``seed``) and the validation set."""
    from deeplab.data.datasets import build_dataset
    from deeplab.data.transforms import eval_transform, train_transform

    d = cfg.data
    root = require_data_root(cfg)
    options = dict(d.options)
    if d.dataset == "folder" and cfg.model.num_classes and "class_names" not in options:
        options.setdefault("num_classes", cfg.model.num_classes)
    train_tf = train_transform(
        crop_size=d.crop_size,
        scale_range=tuple(d.scale_range),
        scale_step=d.scale_step,
        mean=mean,
        std=std,
        flip=d.hflip,
    )
    eval_os = cfg.eval.output_stride or cfg.model.output_stride
    val_tf = eval_transform(mean=mean, std=std, output_stride=eval_os)
    train_set = build_dataset(
        d.dataset, root=root, split=d.train_split, transform=train_tf, seed=seed, **options
    )
    if d.bootstrap_classes:
        from deeplab.data.datasets import duplicate_hard_images

        hard = duplicate_hard_images(train_set, d.bootstrap_classes, copies=d.bootstrap_copies)
        if int(os.environ.get("RANK", "0")) == 0:
            print(
                f"bootstrapping: {len(hard)} training images hold {d.bootstrap_classes} and are "
                f"seen {d.bootstrap_copies}x; {len(train_set)} items per epoch",
                flush=True,
            )
    val_set = None
    if d.val_split:
        val_set = build_dataset(
            d.dataset, root=root, split=d.val_split, transform=val_tf, **options
        )
    return train_set, val_set


def normalisation(cfg: Config) -> tuple[list[float], list[float]]:
    """Input mean/std (0-255): the config's, else the pretrained entry's, else ImageNet's."""
    from deeplab.data.labels import IMAGENET_MEAN, IMAGENET_STD

    mean, std = cfg.data.mean, cfg.data.std
    if (mean is None or std is None) and cfg.model.pretrained:
        try:
            from deeplab.weights import get_entry

            entry = get_entry(cfg.model.pretrained)
            mean, std = mean or list(entry.mean), std or list(entry.std)
        except (ImportError, KeyError, ValueError):
            pass  # a weight file, not a zoo entry: ImageNet statistics
    return list(mean or IMAGENET_MEAN), list(std or IMAGENET_STD)


def train(
    cfg: Config,
    *,
    resume: str | Path | None = None,
    model: nn.Module | None = None,
    train_set: Any = None,
    val_set: Any = None,
    num_classes: int | None = None,
) -> Progress:
    """Build model, data, loss, optimizer and schedule from ``cfg`` and run ``fit``.

    ``model``/``train_set``/``val_set`` replace the ones the config describes.
    ``resume`` is a checkpoint path (``last.pt``) to continue from exactly.
    """
    proc = init_process(cfg.train.device)
    validate(cfg, world_size=proc.world_size)
    t = cfg.train
    out = Path(t.out_dir)
    if proc.is_main:
        out.mkdir(parents=True, exist_ok=True)
    if t.threads:
        torch.set_num_threads(t.threads)
    state = load_checkpoint(resume) if resume else None
    _seed_everything(t.seed)  # the same initial weights on every process

    if train_set is None:
        mean, std = normalisation(cfg)
        train_set, val_set = build_datasets(cfg, mean=mean, std=std, seed=t.seed)
    num_classes = num_classes or cfg.model.num_classes or getattr(train_set, "num_classes", None)
    if num_classes is None:
        raise ConfigError("set model.num_classes: the training set does not say its class count")
    # The saved config is the resolved one: it names the class count the model was built with.
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=num_classes))
    if model is None:
        model = build_model(cfg, num_classes=num_classes)

    micro_batch = t.batch_size // (t.accum_steps * proc.world_size)
    # SyncBatchNorm pools the statistics of all processes; torch implements it on CUDA only,
    # so on CPU each process normalises with its own micro-batch.
    sync = proc.distributed and cfg.model.sync_bn and proc.device.type == "cuda"
    images_per_bn = micro_batch * (proc.world_size if sync else 1)
    bn_mode = resolve_bn_mode(cfg.model.bn, images_per_bn=images_per_bn)
    if sync and bn_mode != "freeze":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    frozen_bn = configure_batchnorm(model, bn_mode, images_per_bn=images_per_bn)
    frozen_bn += freeze_modules(model, cfg.model.frozen_modules)
    if proc.is_main:
        print(f"batch norm: {bn_mode} ({images_per_bn} images per BN layer per step)", flush=True)
    model.to(proc.device)
    if t.channels_last:
        model.to(memory_format=torch.channels_last)
    if state is not None:
        unwrap(model).load_state_dict(state["model"])
    if proc.distributed:
        model = DistributedDataParallel(
            model, device_ids=[proc.device.index] if proc.device.type == "cuda" else None
        )

    o = cfg.optim
    optimizer = build_optimizer(
        model,
        lr=o.lr,
        momentum=o.momentum,
        weight_decay=o.weight_decay,
        decay_bn_and_bias=o.decay_bn_and_bias,
    )
    scheduler = poly_schedule(
        optimizer,
        max_iters=t.iters,
        power=o.poly_power,
        warmup_iters=o.warmup_iters,
        warmup_factor=o.warmup_factor,
    )
    scaler = torch.amp.GradScaler(proc.device.type, enabled=t.amp == "fp16")
    weights = cfg.loss.class_weights
    loss_fn = SegmentationLoss(
        num_classes=num_classes,
        class_weights=load_class_weights(weights, num_classes=num_classes) if weights else None,
        top_k_percent_pixels=cfg.loss.top_k_percent_pixels,
        hard_example_mining_step=cfg.loss.hard_example_mining_step,
    ).to(proc.device)

    sampler = ShardedBatchSampler(
        len(train_set),
        batch_size=micro_batch,
        seed=t.seed,
        rank=proc.rank,
        world_size=proc.world_size,
    )
    batches = BatchStream(train_set, sampler, num_workers=cfg.data.num_workers)
    val_loader = None
    if val_set is not None:
        val_loader = DataLoader(
            torch.utils.data.Subset(
                val_set, shard_indices(len(val_set), proc.rank, proc.world_size)
            ),
            batch_size=cfg.eval.batch_size,
            num_workers=min(cfg.data.num_workers, 2),
        )

    progress = Progress()
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        batches.load_state(state["data"])
        progress = Progress(step=int(state["step"]), best_miou=float(state["best_miou"]))
        rngs = state["rng"]
        if len(rngs) == proc.world_size:
            set_rng_state(rngs[proc.rank])
        else:
            warnings.warn(
                f"{resume} was written by {len(rngs)} processes, not "
                f"{proc.world_size}: data order continues, random streams do not",
                stacklevel=2,
            )

    log = MetricsLog(out, enabled=proc.is_main, tensorboard=t.tensorboard)
    if proc.is_main and state is None:
        (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    try:
        return fit(
            model,
            batches,
            val_loader,
            loss_fn,
            optimizer,
            scheduler,
            scaler,
            cfg=cfg,
            proc=proc,
            frozen_bn=frozen_bn,
            num_classes=num_classes,
            progress=progress,
            log=log,
        )
    finally:
        log.close()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
