"""Train DeepLab-v3+ MobileNetV2 on CamVid within a wall-clock budget; val mIoU vs time.

Starts from ImageNet MobileNetV2 weights (zoo entry ``mobilenet_v2_imagenet``; set
DEEPLAB_WEIGHTS_DIR to a folder holding the file when offline) and follows
``configs/camvid_v3plus_mobilenetv2.yaml``. A few calibration steps measure the time of a
training step and of validating one image; the poly schedule is then sized so that
training plus ``--evals`` validations on the 101 val images (480x360) fit in ``--minutes``.
The curve (minutes, step, val mIoU) goes to ``OUT/curve.jsonl``; a table and the final
per-class IoU are printed.

    python benchmarks/train_camvid.py --minutes 60
    python benchmarks/train_camvid.py --minutes 3 --evals 1 --out runs/camvid_smoke
    python benchmarks/train_camvid.py --minutes 60 optim.lr=0.01 data.crop_size=257
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from deeplab.config import apply_overrides, load_config, normalisation
from deeplab.data.labels import CAMVID_CLASSES
from deeplab.evaluate import evaluate_split
from deeplab.inference import Segmenter
from deeplab.losses import SegmentationLoss
from deeplab.train import (
    Process,
    build_optimizer,
    configure_batchnorm,
    freeze_modules,
    set_train_mode,
    train,
)
from deeplab.train.run import build_datasets, build_model

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEEPLAB_SHARED", REPO.parent / "shared"))


def calibrate(cfg, *, steps: int, val_images: int) -> tuple[float, float]:
    """(seconds per training step, seconds per validation image), measured on real data."""
    proc = Process(0, 1, torch.device("cpu"))
    mean, std = normalisation(cfg)
    train_set, val_set = build_datasets(cfg, mean=mean, std=std, seed=cfg.train.seed, proc=proc)
    model = build_model(cfg, num_classes=cfg.model.num_classes, proc=proc)
    frozen = configure_batchnorm(model, cfg.model.bn, images_per_bn=cfg.train.batch_size)
    frozen += freeze_modules(model, cfg.model.frozen_modules)
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    optimizer = build_optimizer(model, lr=1e-4, momentum=0.9, weight_decay=0.0)
    loss_fn = SegmentationLoss(num_classes=cfg.model.num_classes)
    loader = iter(DataLoader(train_set, batch_size=cfg.train.batch_size, shuffle=True))
    times = []
    set_train_mode(model, frozen)
    for _ in range(steps + 2):  # two warm-up steps (allocator, kernel choice) are not counted
        images, masks = next(loader)
        images = images.contiguous(memory_format=fmt)
        start = time.perf_counter()
        optimizer.zero_grad()
        loss_fn(model(images), masks).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times[2:])  # robust to one step slowed by other load
    start = time.perf_counter()
    segmenter = Segmenter(model, mean=mean, std=std, class_names=CAMVID_CLASSES)
    evaluate_split(segmenter, val_set, max_images=val_images, progress=False)
    return step_s, (time.perf_counter() - start) / val_images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget (default 60)")
    p.add_argument("--root", default=str(SHARED / "data" / "camvid"), help="CamVid folder")
    p.add_argument("--config", default=str(REPO / "configs" / "camvid_v3plus_mobilenetv2.yaml"))
    p.add_argument("--out", default="runs/camvid_bench")
    p.add_argument("--evals", type=int, default=8, help="validations during the run")
    p.add_argument("--calibration-steps", type=int, default=3)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_args()

    cfg = load_config(args.config, [f"data.root={args.root}", f"train.out_dir={args.out}",
                                    *args.overrides])  # fmt: skip
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    step_s, val_image_s = calibrate(cfg, steps=args.calibration_steps, val_images=3)
    # A validation: 101 val images, plus the precise-BN pass (forward only, about a third
    # of a training step per batch).
    val_s = val_image_s * 101 + cfg.eval.precise_bn_batches * step_s / 3
    budget_s = 60 * args.minutes
    iters = max(1, int((budget_s - args.evals * val_s) / step_s))
    val_every = max(1, iters // max(1, args.evals))
    iters = val_every * max(1, args.evals)  # so that the last validation is at the end
    rate = cfg.train.batch_size / step_s
    print(f"calibration: {step_s:.1f} s/step ({rate:.2f} img/s), {val_s:.0f} s per validation"
          f" -> {iters} steps, validating every {val_every}")  # fmt: skip
    cfg = apply_overrides(cfg, [f"train.iters={iters}", f"train.val_every={val_every}",
                                f"train.ckpt_every={max(1, val_every // 2)}",
                                # a safety stop in case steps slow down (shared machine)
                                f"train.max_minutes={1.15 * args.minutes}"])  # fmt: skip

    out = Path(cfg.train.out_dir)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    progress = train(cfg)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in rows if "val_miou" in r]
    with (out / "curve.jsonl").open("w") as f:
        for r in vals:
            f.write(json.dumps({"minutes": r["elapsed_s"] / 60, "step": r["step"],
                                "miou": r["val_miou"]}) + "\n")  # fmt: skip
    train_rates = [r["img_s"] for r in rows if "img_s" in r]

    print(f"\nCamVid val (101 images, 480x360), {cfg.model.name}, {progress.status} at step "
          f"{progress.step} of {iters}; {torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'minutes':>8s} {'step':>6s} {'val mIoU':>9s}")
    for r in vals:
        print(f"{r['elapsed_s'] / 60:8.1f} {r['step']:6d} {100 * r['val_miou']:8.2f}%")
    if train_rates:
        print(f"training throughput: median {sorted(train_rates)[len(train_rates) // 2]:.2f} img/s")
    if vals:
        print(f"\nper-class IoU at step {vals[-1]['step']}:")
        for name, iou in zip(CAMVID_CLASSES, vals[-1]["val_iou"], strict=True):
            print(f"  {name:12s} {100 * iou:6.2f}%")
        print(f"  {'mean':12s} {100 * vals[-1]['val_miou']:6.2f}%")
    print(f"\ncurve: {out / 'curve.jsonl'}; checkpoints: {out / 'last.pt'}, {out / 'best.pt'}")


if __name__ == "__main__":
    main()
