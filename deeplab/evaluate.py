"""Evaluation loop: mean IoU of a model on a dataset, with DeepLab's test-time options.

The PASCAL VOC measure is the intersection over union averaged over classes,
from one confusion matrix accumulated over the whole split (DeepLab-v1, sec. 5).
Test-time options come from the ``Segmenter``: multi-scale inputs with flips
(DeepLab-v3, sec. 4.1), a finer output stride than in training (v3, sec. 3.3),
sliding windows for large images, the dense CRF (v1, sec. 4). ``trimap``
widths add the boundary measure of DeepLab-v2 (sec. 4.1, fig. 14): mean IoU
counted only within a band of N pixels around object boundaries.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm import tqdm

from deeplab.data.labels import IGNORE_INDEX
from deeplab.inference import Segmenter


def as_segmenter(model_or_segmenter: Segmenter | nn.Module, **options) -> Segmenter:
    """A Segmenter as is; a bare model is wrapped for inputs the loader already normalised."""
    if isinstance(model_or_segmenter, Segmenter):
        return model_or_segmenter
    # mean 0 / std 1: the loader's tensors go to the model unchanged.
    return Segmenter(model_or_segmenter, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), **options)


@torch.no_grad()
def evaluate(
    model_or_segmenter: Segmenter | nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    trimap: Sequence[int] = (),
    distributed: bool = False,
    progress: bool = True,
    max_batches: int | None = None,
) -> dict[str, Any]:
    """Run over ``loader`` of ``(images Nx3xHxW normalised, masks NxHxW)`` -> metrics dict.

    Keys: those of ``ConfusionMatrix.compute()`` (``iou`` per class, ``miou``,
    ``pixel_acc``, ``mean_class_acc``, ``fw_iou``, ``pixels``), ``confusion_matrix``
    (rows = ground truth), ``images``, and ``trimap`` ({width: mIoU within the band})
    when widths are given. With a ``Segmenter`` the loader's normalisation must be
    the segmenter's (the CRF undoes it to see colours).
    """
    from deeplab.metrics import ConfusionMatrix, TrimapIoU

    segmenter = as_segmenter(model_or_segmenter)
    if segmenter.num_classes != num_classes:
        raise ValueError(
            f"the model predicts {segmenter.num_classes} classes, the dataset has {num_classes}"
        )
    matrix = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    bands = TrimapIoU(num_classes, trimap, ignore_index) if trimap else None
    total = len(loader) if hasattr(loader, "__len__") else None
    if max_batches is not None:
        loader = itertools.islice(loader, max_batches)
        total = max_batches if total is None else min(total, max_batches)
    images_seen = 0
    for images, masks in tqdm(loader, total=total, desc="eval", disable=not progress):
        probs = segmenter.probabilities(images)
        if segmenter.crf:
            probs = _refine_with_crf(segmenter, images, probs)
        preds = probs.argmax(1).cpu()
        matrix.update(preds, masks)
        if bands is not None:
            bands.update(preds, masks)
        images_seen += images.shape[0]
    if distributed:
        matrix.all_reduce()
        if bands is not None:
            bands.all_reduce()
    results = dict(matrix.compute())
    results["confusion_matrix"] = matrix.matrix.cpu().tolist()
    results["images"] = images_seen
    if bands is not None:
        results["trimap"] = bands.compute()
    return results


def _refine_with_crf(
    segmenter: Segmenter, images: torch.Tensor, probs: torch.Tensor
) -> torch.Tensor:
    """Dense CRF per image; its colour term needs the image in 0-255 RGB again."""
    from deeplab.crf import dense_crf

    refined = []
    for x, p in zip(images, probs, strict=True):
        rgb = segmenter.denormalize(x)
        refined.append(
            torch.from_numpy(dense_crf(rgb, p.float().cpu().numpy(), **segmenter.crf_options))
        )
    return torch.stack(refined).to(probs.device)


def format_report(results: dict[str, Any], class_names: Sequence[str] | None = None) -> str:
    """The per-class IoU table of ``evaluate``'s results, with trimap lines if present."""
    from deeplab.metrics import ConfusionMatrix

    counts = torch.tensor(results["confusion_matrix"], dtype=torch.int64)
    matrix = ConfusionMatrix(counts.shape[0])
    matrix.matrix = counts
    lines = [matrix.format_table(class_names)]
    for width, miou in results.get("trimap", {}).items():
        lines.append(f"trimap {int(width):>3d} px mean IoU  {100 * miou:6.2f}")
    return "\n".join(lines)


def save_results(results: dict[str, Any], path: str | Path, **extra: Any) -> Path:
    """Write ``results`` (plus ``extra`` fields such as the model and options) as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**extra, **results}
    # JSON has no NaN: an absent class's IoU is written as null.
    text = json.dumps(_jsonable(payload), indent=2, allow_nan=False)
    path.write_text(text + "\n")
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value
