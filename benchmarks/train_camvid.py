"""Train a DeepLab on CamVid within a wall-clock budget; val mIoU against time.

Follows the recipe ``camvid_v3plus_mobilenetv2`` (set DEEPLAB_WEIGHTS_DIR to a folder
holding the zoo files when offline). The poly schedule is driven by time
(``train.schedule=time``): it decays over what is left of ``--minutes`` after a short
calibration run of ``deeplab.train.train`` itself (same loader, workers, precision and
frozen layers), whose seconds per step only space the ``--evals`` validations; the
run's last steps are at the end of the decay on a slow or busy machine too, and the
final model is always scored. With ``train.tune_crf`` (the CamVid recipe) 180 s of the
budget are kept for choosing the CRF's parameters on training images (last.pt and best.pt,
about 90 s each on 2 cores).

The curve (minutes, step, val mIoU) goes to ``OUT/curve.jsonl``; a table and the final
per-class IoU are printed. Nothing of val is used for training or for choosing anything:
``--holdout`` trains on the 0001TP and 0016E5 training frames and validates on the 101
0006R0 training frames (another drive), the split on which recipes are compared.

    python benchmarks/train_camvid.py --minutes 60
    python benchmarks/train_camvid.py --minutes 10 --evals 2 --holdout --out runs/tune_1
    python benchmarks/train_camvid.py --minutes 60 optim.lr=0.01 data.crop_size=257
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import torch

from deeplab.config import apply_overrides, load_config, normalisation
from deeplab.data.labels import CAMVID_CLASSES
from deeplab.evaluate import evaluate_split
from deeplab.inference import Segmenter
from deeplab.train import Process, train
from deeplab.train.run import PRECISION, build_datasets, build_model
from deeplab.train.runtime import resolve_amp

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEEPLAB_SHARED", REPO.parent / "shared"))


def calibrate(cfg, *, steps: int, val_images: int) -> tuple[float, float]:
    """(seconds per training step of the real loop, seconds per validation image)."""
    probe = Path(cfg.train.out_dir) / "calibration"
    shutil.rmtree(probe, ignore_errors=True)
    train(apply_overrides(cfg, [f"train.out_dir={probe}", f"train.iters={steps + 3}",
                                "train.val_every=0", "train.log_every=1", "data.val_split=null",
                                "train.progress=false", "train.tune_crf=false",
                                "train.schedule=iters"]))  # fmt: skip
    rows = [json.loads(x) for x in (probe / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(probe, ignore_errors=True)
    # The first steps start the workers and pick kernels; the median of the rest is robust
    # to one step slowed by other load.
    step_s = cfg.train.batch_size / statistics.median(r["img_s"] for r in rows[3:])
    proc = Process(0, 1, torch.device("cpu"))
    mean, std = normalisation(cfg)
    _, val_set = build_datasets(cfg, mean=mean, std=std, seed=0, proc=proc)
    model = build_model(cfg, num_classes=cfg.model.num_classes, proc=proc)
    segmenter = Segmenter(model, mean=mean, std=std, class_names=CAMVID_CLASSES,
                          precision=PRECISION[cfg.train.amp])  # fmt: skip
    evaluate_split(segmenter, val_set, max_images=1, progress=False)  # warm-up
    start = time.perf_counter()
    evaluate_split(segmenter, val_set, max_images=val_images, progress=False)
    return step_s, (time.perf_counter() - start) / val_images


def holdout_root(camvid: Path, out: Path, held: str = "0006R0") -> Path:
    """A CamVid root whose ``train.txt`` lacks the frames of drive ``held`` and whose
    ``holdout.txt`` holds them (links to the real folders; nothing is copied)."""
    root = out / "holdout_data"
    root.mkdir(parents=True, exist_ok=True)
    for folder in ("train", "trainannot"):
        if not (root / folder).exists():
            (root / folder).symlink_to((camvid / folder).resolve())
    lines = (camvid / "train.txt").read_text().splitlines()
    (root / "train.txt").write_text("".join(f"{x}\n" for x in lines if held not in x))
    (root / "holdout.txt").write_text("".join(f"{x}\n" for x in lines if held in x))
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget (default 60)")
    p.add_argument("--root", default=str(SHARED / "data" / "camvid"), help="CamVid folder")
    p.add_argument("--config", default="camvid_v3plus_mobilenetv2", help="recipe name or file")
    p.add_argument("--out", default="runs/camvid_bench")
    p.add_argument("--evals", type=int, default=8, help="validations during the run")
    p.add_argument("--calibration-steps", type=int, default=6)
    p.add_argument("--holdout", action="store_true",
                   help="train without drive 0006R0 and validate on it (for comparing recipes)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_args()

    root = holdout_root(Path(args.root), Path(args.out)) if args.holdout else args.root
    split = ["data.val_split=holdout"] if args.holdout else []
    cfg = load_config(args.config, [f"data.root={root}", f"train.out_dir={args.out}", *split,
                                    *args.overrides])  # fmt: skip
    if cfg.train.amp == "auto":  # the calibration's validation uses the resolved precision
        amp, why = resolve_amp(torch.device("cpu"))
        print(f"train.amp=auto: {amp} ({why})")
        cfg = apply_overrides(cfg, [f"train.amp={amp}"])
    val_name = "holdout (101 frames of drive 0006R0)" if args.holdout else "val (101 images)"
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    began = time.monotonic()
    step_s, val_image_s = calibrate(cfg, steps=args.calibration_steps, val_images=4)
    # A validation: every val image, plus the precise-BN pass (forward only, about a third
    # of a training step per batch).
    val_s = val_image_s * 101 + cfg.eval.precise_bn_batches * step_s / 3
    # Choosing the CRF's parameters after training (train.tune_crf) is part of the budget.
    tune_s = 180.0 if cfg.train.tune_crf else 0.0
    budget_s = 60 * args.minutes - (time.monotonic() - began) - tune_s
    # The schedule is driven by time (train.schedule=time): the poly decay spans the budget
    # however fast this machine turns out to be; the calibration only spaces validations.
    expected = max(1, int((budget_s - args.evals * val_s) / step_s))
    val_every = max(1, expected // max(1, args.evals))
    rate = cfg.train.batch_size / step_s
    print(f"calibration: {step_s:.2f} s/step ({rate:.2f} img/s), {val_s:.0f} s per validation"
          f" -> about {expected} steps in {budget_s / 60:.1f} min, validating every "
          f"{val_every}", flush=True)  # fmt: skip
    iters = 4 * expected  # an upper bound: the clock ends the run
    cfg = apply_overrides(cfg, [f"train.iters={iters}", f"train.val_every={val_every}",
                                f"train.ckpt_every={max(1, val_every // 2)}",
                                "train.schedule=time",
                                f"train.max_minutes={budget_s / 60}"])  # fmt: skip

    out = Path(cfg.train.out_dir)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    progress = train(cfg)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in rows if "val_miou" in r]
    offset = (time.monotonic() - began) - (rows[-1]["elapsed_s"] if rows else 0.0)
    with (out / "curve.jsonl").open("w") as f:
        for r in vals:
            f.write(json.dumps({"minutes": (r["elapsed_s"] + offset) / 60, "step": r["step"],
                                "miou": r["val_miou"]}) + "\n")  # fmt: skip
    train_rates = [r["img_s"] for r in rows if "img_s" in r]

    print(f"\nCamVid {val_name}, 480x360, {cfg.model.name}, {progress.status} at step "
          f"{progress.step} (time-driven schedule); {torch.get_num_threads()} threads; "
          f"{(time.monotonic() - began) / 60:.1f} minutes in all, calibration and CRF "
          f"tuning included")  # fmt: skip
    print(f"{'minutes':>8s} {'step':>6s} {'val mIoU':>9s}")
    for r in vals:
        print(f"{(r['elapsed_s'] + offset) / 60:8.1f} {r['step']:6d} {100 * r['val_miou']:8.2f}%")
    if train_rates:
        print(f"training throughput: median {statistics.median(train_rates):.2f} img/s")
    if vals:
        print(f"\nper-class IoU at step {vals[-1]['step']}:")
        for name, iou in zip(CAMVID_CLASSES, vals[-1]["val_iou"], strict=True):
            print(f"  {name:12s} {100 * iou:6.2f}%")
        print(f"  {'mean':12s} {100 * vals[-1]['val_miou']:6.2f}%")
    print(f"\ncurve: {out / 'curve.jsonl'}; checkpoints: {out / 'last.pt'}, {out / 'best.pt'}")


if __name__ == "__main__":
    main()
