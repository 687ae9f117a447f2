"""Does the dense CRF help? mIoU and trimap IoU on CamVid val, with and without it.

DeepLab v1 (sec. 4) and v2 (sec. 3.3) pick the CRF's bilateral weight and widths by
cross-validation on held-out images, then report mean IoU with and without the CRF
and the "trimap" mean IoU in bands around object boundaries (v2, Fig. 10), where the
CRF's gain concentrates. This script does the same for a model trained here:

1. softmax probabilities of the model on ``--tune-images`` CamVid *train* images and on
   every val image (computed once, reused by every CRF setting);
2. a small grid over the bilateral kernel (weight, position and colour widths) with the
   Gaussian kernel fixed at DeepLab's w2 = 3, theta = 3, scored by mIoU on the train
   images (val is never used for choosing);
3. val mIoU and trimap IoU without the CRF, with pydensecrf's example setting, and
   with the chosen setting; a table is printed and ``--out`` gets the JSON.

    python benchmarks/crf_camvid.py --checkpoint runs/camvid60/best.pt
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deeplab.crf import dense_crf
from deeplab.data.labels import CAMVID_CLASSES
from deeplab.inference import Segmenter
from deeplab.metrics import ConfusionMatrix, TrimapIoU

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEEPLAB_SHARED", REPO.parent / "shared"))
WIDTHS = (1, 2, 4, 8, 16, 32)
PYDENSECRF_EXAMPLE = dict(bilateral_sxy=80, bilateral_srgb=13, bilateral_compat=10)
GRID = dict(bilateral_sxy=(20, 50, 80), bilateral_srgb=(3, 5, 13), bilateral_compat=(3, 5, 10))


def load_split(root: Path, split: str, limit: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(RGB uint8 HxWx3, labels int64 HxW with CamVid's unlabelled 11 -> 255) pairs."""
    pairs = []
    lines = (root / f"{split}.txt").read_text().split("\n")
    for line in [ln for ln in lines if ln.strip()][:limit]:
        image_path, mask_path = line.split()
        rgb = np.asarray(Image.open(root / image_path).convert("RGB"))
        mask = np.asarray(Image.open(root / mask_path)).astype(np.int64)
        mask[mask == 11] = 255
        pairs.append((rgb, mask))
    return pairs


def probabilities(segmenter: Segmenter, pairs) -> list[np.ndarray]:
    return [segmenter.predict(rgb, probabilities=True).probabilities for rgb, _ in pairs]


def score(pairs, probs, crf: dict | None, *, trimap: bool) -> tuple[dict, float]:
    """(metrics, seconds of CRF per image) for one CRF setting (None: no CRF)."""
    cm = ConfusionMatrix(len(CAMVID_CLASSES))
    tri = TrimapIoU(len(CAMVID_CLASSES), widths=WIDTHS) if trimap else None
    crf_s = 0.0
    for (rgb, mask), p in zip(pairs, probs, strict=True):
        if crf is not None:
            start = time.perf_counter()
            p = dense_crf(rgb, p, **crf)
            crf_s += time.perf_counter() - start
        pred = p.argmax(0)
        cm.update(pred, mask)
        if tri is not None:
            tri.update(pred, mask)
    metrics = cm.compute()
    if tri is not None:
        metrics["trimap"] = tri.compute()
    return metrics, crf_s / len(pairs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="training checkpoint (best.pt)")
    p.add_argument("--root", default=str(SHARED / "data" / "camvid"))
    p.add_argument("--tune-images", type=int, default=24, help="train images for the grid")
    p.add_argument("--val-images", type=int, default=None, help="default: all 101")
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    torch.set_num_threads(2)
    root = Path(args.root)

    segmenter = Segmenter.from_checkpoint(args.checkpoint)
    tune = load_split(root, "train", args.tune_images)
    val = load_split(root, "val", args.val_images)
    tune_probs, val_probs = probabilities(segmenter, tune), probabilities(segmenter, val)

    fixed = dict(iterations=args.iterations, gaussian_sxy=3, gaussian_compat=3)
    best, best_miou = None, score(tune, tune_probs, None, trimap=False)[0]["miou"]
    print(f"tuning on {len(tune)} train images: no CRF mIoU {100 * best_miou:.2f}")
    for values in itertools.product(*GRID.values()):
        setting = dict(zip(GRID, values, strict=True))
        miou = score(tune, tune_probs, {**fixed, **setting}, trimap=False)[0]["miou"]
        print(f"  {setting}: {100 * miou:.2f}")
        if miou > best_miou:
            best, best_miou = setting, miou
    print(f"chosen on train: {best}")

    rows = [("no CRF", None), ("CRF, pydensecrf example", {**fixed, **PYDENSECRF_EXAMPLE})]
    if best is not None:
        rows.append(("CRF, tuned on train", {**fixed, **best}))
    results = {}
    header = "| setting | val mIoU | " + " | ".join(f"trimap {w}px" for w in WIDTHS)
    print(f"\n{len(val)} CamVid val images, {args.checkpoint}\n{header} | CRF s/image |")
    print("|---" * (len(WIDTHS) + 3) + "|")
    for label, crf in rows:
        metrics, seconds = score(val, val_probs, crf, trimap=True)
        results[label] = {"crf": crf, "miou": metrics["miou"], "trimap": metrics["trimap"],
                          "iou": metrics["iou"], "crf_seconds_per_image": seconds}  # fmt: skip
        bands = " | ".join(f"{100 * metrics['trimap'][w]:.2f}" for w in WIDTHS)
        print(f"| {label} | {100 * metrics['miou']:.2f} | {bands} | {seconds:.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
