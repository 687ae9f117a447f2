"""``train(cfg)``: build model, data, loss, optimizer and schedule from a ``Config``, then
hand ``fit`` (loop.py) the step, the validation and the checkpoint writer.

DeepLab's recipe (DeepLab-v3 sec. 4, DeepLab-v3+ sec. 4, the TF release's train.py): SGD
with momentum 0.9, the "poly" learning rate, weight decay on kernels only, batch norm
fine-tuned only when a BN layer sees >= 12 images per step, random scale/crop/flip
augmentation, cross-entropy with the ignore label and optional top-k% hard pixel mining.
Validation runs ``deeplab.evaluate.evaluate_split``, the evaluation ``deeplab eval`` uses.
Checkpoints are ``deeplab.checkpoint``'s: ``last.pt`` resumes exactly, ``best.pt`` keeps
the best validated model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from deeplab import checkpoint, hub
from deeplab.config import Config, ConfigError, normalisation, require_data_root, to_dict, validate
from deeplab.data.check import DataCheckError, diagnose
from deeplab.data.datasets import build_dataset, class_ids, duplicate_hard_images
from deeplab.data.transforms import train_transform
from deeplab.evaluate import evaluate_split, format_report
from deeplab.inference import Segmenter
from deeplab.losses import SegmentationLoss, load_class_weights
from deeplab.train.batchnorm import (
    configure_batchnorm,
    freeze_modules,
    precise_bn_batches,
    recompute_bn_statistics,
    resolve_bn_mode,
    set_train_mode,
)
from deeplab.train.loop import Plan, Progress, fit, train_step
from deeplab.train.optim import Clock, build_optimizer, poly_schedule
from deeplab.train.runtime import (
    MetricsLog,
    Process,
    autocast_for,
    gather_rng_states,
    init_process,
    max_over_processes,
    resolve_amp,
    seed_everything,
    set_rng_state,
    unwrap,
)
from deeplab.train.sampling import BatchStream, ShardedBatchSampler
from deeplab.tune import tune_checkpoint
from deeplab.viz import save_training_curve
from deeplab.weights import load_backbone_weights

log = logging.getLogger(__name__)

PRECISION = {"none": "fp32", "bf16": "bf16", "fp16": "fp16"}  # train.amp -> Segmenter


def train(
    cfg: Config,
    *,
    resume: str | Path | None = None,
    model: nn.Module | None = None,
    train_set: Any = None,
    val_set: Any = None,
    num_classes: int | None = None,
) -> Progress:
    """Train as ``cfg`` says; ``model``/``train_set``/``val_set`` replace the ones it describes.

    ``resume``: ``last.pt`` continues exactly; ``best.pt`` continues from its weights and
    step with a fresh optimizer (a note says so).
    """
    proc = init_process(cfg.train.device)
    validate(cfg, world_size=proc.world_size)
    if cfg.train.amp == "auto":  # resolved once, and saved resolved with the run
        amp, why = resolve_amp(proc.device)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, amp=amp))
        if proc.is_main:
            log.info("train.amp=auto: %s (%s)", amp, why)
    t, out = cfg.train, Path(cfg.train.out_dir)
    if proc.is_main:
        out.mkdir(parents=True, exist_ok=True)
    if t.threads:
        torch.set_num_threads(t.threads)
    state, note = checkpoint.resume_state(resume) if resume else (None, None)
    if note and proc.is_main:
        log.warning(note)
    seed_everything(t.seed)  # the same initial weights on every process

    mean, std = normalisation(cfg)
    if train_set is None:
        train_set, val_set = build_datasets(cfg, mean=mean, std=std, seed=t.seed, proc=proc)
    num_classes = num_classes or cfg.model.num_classes or getattr(train_set, "num_classes", None)
    if num_classes is None:
        raise ConfigError("set model.num_classes: the training set does not say its class count")
    # The saved config is the resolved one: it names the class count the model was built with.
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=num_classes))
    info = None
    if model is None:  # built from the config, so the checkpoints can describe it
        model = build_model(cfg, num_classes=num_classes, proc=proc)
        info = checkpoint.describe(
            to_dict(cfg), num_classes=num_classes, model=model,
            class_names=getattr(train_set, "class_names", None),
            palette=train_set.info.palette() if hasattr(train_set, "info") else None,
        )  # fmt: skip
    class_names = info.class_names if info else tuple(f"class_{i}" for i in range(num_classes))

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
        log.info("batch norm: %s (%d images per BN layer per step)", bn_mode, images_per_bn)
    model.to(proc.device)
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    if state is not None:
        model.load_state_dict(state["model"])
    if proc.distributed:
        model = DistributedDataParallel(
            model, device_ids=[proc.device.index] if proc.device.type == "cuda" else None
        )

    o = cfg.optim
    optimizer = build_optimizer(model, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                                decay_bn_and_bias=o.decay_bn_and_bias)  # fmt: skip
    # train.schedule=time: the decay spans train.max_minutes of training, whatever the
    # machine's speed (the clock carries the time of earlier runs of a resumed training).
    clock = Clock(60 * t.max_minutes if t.schedule == "time" else None,
                  elapsed_s=float(state.get("elapsed_s", 0.0)) if state else 0.0,
                  agree=lambda f: max_over_processes(f, proc))  # fmt: skip
    scheduler = poly_schedule(optimizer, max_iters=t.iters, power=o.poly_power,
                              warmup_iters=o.warmup_iters, warmup_factor=o.warmup_factor,
                              clock=clock)  # fmt: skip
    scaler = torch.amp.GradScaler(proc.device.type, enabled=t.amp == "fp16")
    weights = cfg.loss.class_weights
    loss_fn = SegmentationLoss(
        num_classes=num_classes,
        class_weights=load_class_weights(weights, num_classes=num_classes) if weights else None,
        top_k_percent_pixels=cfg.loss.top_k_percent_pixels,
        hard_example_mining_step=cfg.loss.hard_example_mining_step,
        label_smoothing=cfg.loss.label_smoothing,
    ).to(proc.device)
    sampler = ShardedBatchSampler(len(train_set), batch_size=micro_batch, seed=t.seed,
                                  rank=proc.rank, world_size=proc.world_size)  # fmt: skip
    batches = BatchStream(train_set, sampler, num_workers=cfg.data.num_workers)

    progress = Progress()
    if state is not None:
        position = checkpoint.restore_training(state, optimizer=optimizer, scheduler=scheduler,
                                               scaler=scaler)  # fmt: skip
        progress = Progress(step=position["step"], best_miou=position["best_miou"],
                            elapsed_s=clock.elapsed_s)  # fmt: skip
        if position["data"] is not None:
            batches.load_state(position["data"])
            rngs = position["rng"]
            if len(rngs) == proc.world_size:
                set_rng_state(rngs[proc.rank])
            elif proc.is_main:
                log.warning("%s was written by %d processes, not %d: data order continues, "
                            "random streams do not", resume, len(rngs),
                            proc.world_size)  # fmt: skip

    metrics = MetricsLog(out, enabled=proc.is_main, tensorboard=t.tensorboard)
    if proc.is_main:
        (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
        metrics.truncate_after(progress.step)  # the steps after a checkpoint run again
    config_dict = to_dict(cfg)
    autocast = autocast_for(t.amp, proc.device)

    def step(i: int) -> dict[str, Any]:
        position = batches.state()
        try:
            loss = train_step(model, batches, loss_fn, optimizer, scaler, step=i,
                              accum_steps=t.accum_steps, autocast=autocast, device=proc.device,
                              memory_format=memory_format)  # fmt: skip
        except BaseException:
            batches.load_state(position)  # a checkpoint now resumes at this step's first batch
            raise
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        return {"loss": loss, "lr": lr, "epoch": batches.epoch}

    def save(progress: Progress) -> None:
        rngs = gather_rng_states(proc)  # collective: every rank takes part
        if proc.is_main:
            checkpoint.save(out / "last.pt", checkpoint.last_state(
                model=unwrap(model), optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                rng=rngs, data=batches.state(), step=progress.step,
                best_miou=progress.best_miou, config=config_dict, info=info,
                world_size=proc.world_size, elapsed_s=progress.elapsed_s,
            ))  # fmt: skip

    def validate_and_keep_best(progress: Progress, elapsed_s: float) -> float:
        if cfg.eval.precise_bn_batches:
            batches_for_bn = precise_bn_batches(batches, seed=t.seed + 7919 * progress.step)
            recompute_bn_statistics(model, batches_for_bn, proc=proc,
                                    num_batches=cfg.eval.precise_bn_batches)  # fmt: skip
        results = validate_model(unwrap(model), val_set, cfg=cfg, proc=proc, mean=mean, std=std,
                                 class_names=class_names)  # fmt: skip
        set_train_mode(model, frozen_bn)
        metrics.write({"step": progress.step, "elapsed_s": elapsed_s,
                       **{f"val_{k}": v for k, v in results.items()}})  # fmt: skip
        if proc.is_main:
            log.info("step %d validation:\n%s", progress.step,
                     format_report(results, class_names))  # fmt: skip
        if results["miou"] > progress.best_miou:  # NaN (nothing labelled) never counts as better
            progress.best_miou = float(results["miou"])
            if proc.is_main:
                checkpoint.save(out / "best.pt", checkpoint.best_state(
                    model=unwrap(model), step=progress.step, config=config_dict, info=info,
                    metrics=results,
                ))  # fmt: skip
        return results["miou"]

    plan = Plan(iters=t.iters, images_per_step=t.batch_size, log_every=t.log_every,
                val_every=t.val_every, ckpt_every=t.ckpt_every, stop_at=t.stop_at,
                max_minutes=t.max_minutes, progress_bar=t.progress,
                clock=clock if t.schedule == "time" else None)  # fmt: skip
    set_train_mode(model, frozen_bn)
    try:
        progress = fit(step, plan=plan, progress=progress, proc=proc, log=metrics.write,
                       save=save, validate=validate_and_keep_best if val_set is not None else None)
    finally:
        metrics.close()
        if proc.is_main:
            draw_curve(out)
    if t.tune_crf and proc.is_main and progress.status == "done":
        # Each model the run leaves gets its own parameters: last.pt is the end of the
        # schedule (what a time budget delivers), best.pt the best validation.
        for target in (p for p in (out / "last.pt", out / "best.pt") if p.is_file()):
            tuning = tune_checkpoint(target)
            log.info("dense CRF tuned on %s in %.0f s: mIoU there %.2f -> %.2f with %s; stored "
                     "in %s", tuning.source, tuning.seconds, 100 * tuning.miou_without,
                     100 * tuning.miou_with, tuning.options, target)  # fmt: skip
    return progress


def draw_curve(out: Path) -> None:
    """``out/curve.png``: loss and val mIoU against step and minutes (needs matplotlib)."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return
    try:
        records = [json.loads(line) for line in path.read_text().splitlines()]
        save_training_curve(records, out / "curve.png")
    except ImportError as e:
        log.info("no curve.png: %s", e)


def validate_model(
    model: nn.Module,
    val_set: Any,
    *,
    cfg: Config,
    proc: Process,
    mean: list[float],
    std: list[float],
    class_names: tuple[str, ...],
) -> dict[str, Any]:
    """Validation during training: ``evaluate_split`` at ``eval.output_stride``, this
    process's shard, the model's output stride restored afterwards."""
    train_os = getattr(model, "output_stride", None)
    layout = "channels_last" if cfg.train.channels_last else "contiguous"  # as it trains
    segmenter = Segmenter(model, mean=mean, std=std, class_names=class_names,
                          precision=PRECISION[cfg.train.amp], device=proc.device,
                          memory_format=layout)  # fmt: skip
    if cfg.eval.output_stride:
        segmenter.set_output_stride(cfg.eval.output_stride)
    try:
        return evaluate_split(segmenter, val_set, batch_size=cfg.eval.batch_size,
                              workers=min(cfg.data.num_workers, 2),
                              shard=(proc.rank, proc.world_size), progress=False)  # fmt: skip
    finally:
        if cfg.eval.output_stride and train_os is not None:
            model.set_output_stride(train_os)


# --- building the model and the data from a Config ----------------------------------------


def build_model(cfg: Config, *, num_classes: int, proc: Process) -> nn.Module:
    """The registered model with its starting weights (DeepLab checkpoint or ImageNet backbone)."""
    m = cfg.model
    options = dict(m.options, num_classes=num_classes, output_stride=m.output_stride)
    if m.align_corners is not None:
        options["align_corners"] = m.align_corners
    source = m.backbone_weights
    if source and not Path(source).expanduser().is_file():
        # A zoo entry of ImageNet weights: create_model fills model.backbone from it.
        return hub.create_model(m.name, pretrained=source, **options)
    model = hub.create_model(m.name, pretrained=m.pretrained, init_from=m.init_from, **options)
    if source:
        report = load_backbone_weights(model.backbone, Path(source).expanduser())
        if proc.is_main:
            log.info("backbone weights from %s: %s", source, str(report).splitlines()[0])
    return model


def build_datasets(cfg: Config, *, mean, std, seed: int, proc: Process):
    """The training set (with augmentation drawn from ``seed``) and the validation set
    (its transform is set by the validation, as ``deeplab eval`` sets it)."""
    d = cfg.data
    root = require_data_root(cfg)
    options = dict(d.options)
    if d.dataset == "folder" and cfg.model.num_classes and "class_names" not in options:
        options.setdefault("num_classes", cfg.model.num_classes)
    train_tf = train_transform(crop_size=d.crop_size, scale_range=tuple(d.scale_range),
                               scale_step=d.scale_step, mean=mean, std=std, flip=d.hflip,
                               photometric=d.photometric, focus_prob=d.focus_prob)  # fmt: skip
    train_set = build_dataset(d.dataset, root=root, split=d.train_split, transform=train_tf,
                              seed=seed, **options)  # fmt: skip
    if d.focus_classes:  # names are known once the dataset is
        ids = class_ids(train_set.class_names, d.focus_classes, what="data.focus_classes:")
        train_set.transform = dataclasses.replace(train_tf, focus_classes=tuple(ids))
    val_set = build_dataset(d.dataset, root=root, split=d.val_split, **options) \
        if d.val_split else None  # fmt: skip
    check_data(cfg, train_set, val_set, proc=proc)
    if d.bootstrap_classes:
        hard = duplicate_hard_images(train_set, d.bootstrap_classes, copies=d.bootstrap_copies)
        if proc.is_main:
            log.info("bootstrapping: %d training images hold %s and are seen %dx; %d items per "
                     "epoch", len(hard), d.bootstrap_classes, d.bootstrap_copies,
                     len(train_set))  # fmt: skip
    return train_set, val_set


def check_data(cfg: Config, train_set: Any, val_set: Any, *, proc: Process) -> None:
    """The data doctor (``data.check``) on rank 0 before the first step: a report of every
    problem at once, and a ``DataCheckError`` instead of a run that fails at step 5."""
    num_classes = cfg.model.num_classes or train_set.num_classes
    weights = cfg.loss.class_weights
    weights = load_class_weights(weights, num_classes=None) if weights else None
    problems, report = [], ""
    if proc.is_main:
        diagnosis = diagnose(train_set, val_set, num_classes=num_classes, class_weights=weights,
                             mode=cfg.data.check)  # fmt: skip
        problems, report = diagnosis.problems, diagnosis.format()
        if diagnosis.ok and cfg.data.check != "off":
            log.info(report)
    if proc.distributed:  # every rank stops when rank 0 refuses
        shared = [problems]
        torch.distributed.broadcast_object_list(shared, src=0)
        problems = shared[0]
    if problems:
        raise DataCheckError(report or "the data check on rank 0 found problems")
