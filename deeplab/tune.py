"""Choose the dense CRF's parameters for a model, on its training images, and keep them with it.

DeepLab v1 (sec. 4) and v2 (sec. 3.3) choose the CRF's appearance kernel (weight w1,
widths theta_alpha and theta_beta) by cross-validation on held-out images, the smoothness
kernel fixed at w2 = 3, theta_gamma = 3. The right values depend on the model: the common
defaults (pydensecrf's examples, suited to VOC photos) lowered the CamVid model's val mIoU
by 3.2 points, values chosen on its training images raised it by 1.3
(docs/BENCHMARKS.md). ``tune_crf`` scores a small grid by mIoU on training images, never
validation ones, and ``tune_checkpoint`` stores the choice in the checkpoint's
``ModelInfo.crf``, which ``--crf`` then uses (``inference.crf_options_for``).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from deeplab import checkpoint
from deeplab.config import from_dict
from deeplab.crf import dense_crf
from deeplab.data.datasets import build_dataset, read_mask
from deeplab.data.images import read_image
from deeplab.inference import Segmenter
from deeplab.metrics import ConfusionMatrix

log = logging.getLogger(__name__)

# The appearance kernel's weight and widths searched (w1, theta_alpha, theta_beta), around
# DeepLab v2's cross-validated ranges; the smoothness kernel is DeepLab's w2 = 3, theta = 3.
GRID: dict[str, tuple[float, ...]] = {
    "bilateral_sxy": (20, 50, 80),
    "bilateral_srgb": (3, 5, 13),
    "bilateral_compat": (3, 5, 10),
}
FIXED: dict[str, float] = {"gaussian_sxy": 3, "gaussian_compat": 3}


class TuningError(ValueError):
    """Tuning cannot run as asked (validation images, no labelled data); says why."""


@dataclass
class CrfTuning:
    """The grid's result: the chosen ``options`` (all of ``dense_crf``'s parameters that
    were set), mIoU on the tuning images without and with them, and every setting tried."""

    options: dict[str, float]
    miou_without: float
    miou_with: float
    images: int
    source: str
    seconds: float
    tried: list[tuple[dict[str, float], float]] = field(default_factory=list)

    @property
    def helps(self) -> bool:
        return self.miou_with > self.miou_without

    def record(self) -> dict[str, Any]:
        """What ``ModelInfo.crf`` keeps."""
        return {"options": self.options, "source": self.source, "images": self.images,
                "miou_without": self.miou_without, "miou_with": self.miou_with}  # fmt: skip


def tune_crf(
    segmenter: Segmenter,
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    iterations: int = 5,
    grid: dict[str, tuple[float, ...]] = GRID,
    source: str = "",
) -> CrfTuning:
    """Score every setting of ``grid`` on ``pairs`` (uint8 RGB, uint8 labels with 255
    ignored) by mIoU; the model's probabilities are computed once."""
    if not pairs:
        raise TuningError("no images to tune the CRF on")
    start = time.perf_counter()
    probs = [segmenter.predict(rgb, probabilities=True).probabilities for rgb, _ in pairs]
    fixed = {"iterations": iterations, **FIXED}

    def miou(options: dict[str, float] | None) -> float:
        cm = ConfusionMatrix(segmenter.num_classes)
        for (rgb, labels), p in zip(pairs, probs, strict=True):
            refined = p if options is None else dense_crf(rgb, p, **options)
            cm.update(refined.argmax(0), labels)
        return float(cm.compute()["miou"])

    without = miou(None)
    tried = []
    for values in itertools.product(*grid.values()):
        setting = {**fixed, **dict(zip(grid, values, strict=True))}
        tried.append((setting, miou(setting)))
    best, best_miou = max(tried, key=lambda t: t[1])
    return CrfTuning(options=best, miou_without=without, miou_with=best_miou, images=len(pairs),
                     source=source, seconds=time.perf_counter() - start,
                     tried=tried)  # fmt: skip


def training_pairs(
    dataset: str, root: str | Path, split: str, *, images: int, options: dict | None = None
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[Path]]:
    """``images`` image/label pairs spread evenly over ``split`` (consecutive video frames
    say little more than one frame), and their image paths."""
    data = build_dataset(dataset, root=root, split=split, **(options or {}))
    every = max(1, len(data.pairs) // max(1, images))
    chosen = data.pairs[::every][:images]
    pairs = [(read_image(image), read_mask(mask, data.info)) for image, mask in chosen]
    return pairs, [Path(image).resolve() for image, _ in chosen]


def tune_checkpoint(
    path: str | Path,
    *,
    dataset: str | None = None,
    data_root: str | Path | None = None,
    split: str | None = None,
    images: int = 24,
    iterations: int = 5,
    write: bool = True,
) -> CrfTuning:
    """Tune the CRF for the checkpoint at ``path`` on training images and (``write``) store
    the result in it, atomically. Dataset, root and split default to the checkpoint's own
    training config; the validation split, or any of its images, is refused."""
    state = checkpoint.read(path)
    cfg = from_dict(state["config"]) if "config" in state else None
    dataset = dataset or (cfg.data.dataset if cfg else None)
    data_root = data_root or (cfg.data.root if cfg else None)
    split = split or (cfg.data.train_split if cfg else "train")
    options = dict(cfg.data.options) if cfg and dataset == cfg.data.dataset else {}
    if dataset == "folder" and cfg and cfg.model.num_classes and "class_names" not in options:
        options.setdefault("num_classes", cfg.model.num_classes)  # as training built it
    if not dataset or not data_root:
        raise TuningError(f"{path} does not say its training data; pass --dataset and "
                          "--data-root (and --split, default train)")  # fmt: skip
    val_split = cfg.data.val_split if cfg else "val"
    if split == val_split or split in ("val", "test"):
        raise TuningError(f"--split {split} holds validation images; the CRF is tuned on "
                          "training images (--split train), so that validation stays a fair "
                          "measure of it")  # fmt: skip
    pairs, paths = training_pairs(dataset, data_root, split, images=images, options=options)
    if val_split:
        try:
            val = build_dataset(dataset, root=data_root, split=val_split, **options)
        except (FileNotFoundError, ValueError):
            val = None  # no validation split at this root: nothing to collide with
        shared = {Path(i).resolve() for i, _ in val.pairs} & set(paths) if val else set()
        if shared:
            raise TuningError(f"{len(shared)} of the {split} images are also {val_split} images "
                              f"(e.g. {sorted(shared)[0]}); tune on images the model is not "
                              "validated on")  # fmt: skip
    segmenter = Segmenter.from_checkpoint(path)
    tuning = tune_crf(segmenter, pairs, iterations=iterations,
                      source=f"{len(pairs)} {dataset} {split} images")  # fmt: skip
    if write:
        info = replace(checkpoint.info_of(state), crf=tuning.record())
        state["info"] = info.to_dict()
        checkpoint.save(path, state)
    return tuning
