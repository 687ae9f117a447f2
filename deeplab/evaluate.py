"""THE evaluation loop: mean IoU of a model on a dataset, with DeepLab's test-time options.

The PASCAL VOC measure is the intersection over union averaged over classes,
from one confusion matrix accumulated over the whole split (DeepLab-v1, sec. 5).
Test-time options come from the ``Segmenter``: multi-scale inputs with flips
(DeepLab-v3, sec. 4.1), a finer output stride than in training (v3, sec. 3.3),
sliding windows for large images, the dense CRF (v1, sec. 4). ``trimap``
widths add the boundary measure of DeepLab-v2 (sec. 4.1, fig. 14): mean IoU
counted only within a band of N pixels around object boundaries.

``evaluate_split`` feeds a dataset to a segmenter the one way this project does: images
normalised with the segmenter's mean/std and padded to its model's feature grid. The
training loop's validation and ``deeplab eval`` both go through it, so they agree.
``evaluate_dataset`` is ``deeplab eval``: which data, which model, then ``evaluate_split``.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from deeplab.config import Config, normalisation
from deeplab.crf import dense_crf
from deeplab.data.datasets import SegmentationDataset, build_dataset
from deeplab.data.labels import IGNORE_INDEX
from deeplab.data.transforms import eval_transform, pad_collate
from deeplab.inference import Segmenter
from deeplab.metrics import ConfusionMatrix, TrimapIoU
from deeplab.models.layers import OUTPUT_STRIDES
from deeplab.predict import use_runtime
from deeplab.upsample import channel_argmax


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
    the segmenter's (the CRF undoes it to see colours). ``distributed``: sum the
    matrices of every process (each evaluated its own shard).
    """
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
        preds = channel_argmax(probs).cpu()
        matrix.update(preds, masks)
        if bands is not None:
            bands.update(preds, masks)
        images_seen += images.shape[0]
    if distributed:
        matrix.all_reduce()
        if bands is not None:
            bands.all_reduce()
        count = torch.tensor([images_seen], device=matrix.matrix.device)
        torch.distributed.all_reduce(count)
        images_seen = int(count.item())
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
    refined = []
    for x, p in zip(images, probs, strict=True):
        rgb = segmenter.denormalize(x)
        refined.append(
            torch.from_numpy(dense_crf(rgb, p.float().cpu().numpy(), **segmenter.crf_options))
        )
    return torch.stack(refined).to(probs.device)


def evaluate_split(
    segmenter: Segmenter,
    dataset: Any,
    *,
    batch_size: int = 1,
    workers: int = 0,
    trimap: Sequence[int] = (),
    max_images: int | None = None,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
) -> dict[str, Any]:
    """Mean IoU of ``segmenter`` on ``dataset``, fed as the segmenter wants it.

    A ``SegmentationDataset`` gets an evaluation transform from the segmenter: its mean/std
    and padding to the model's feature grid (k * output_stride + 1; models made for one
    input size resize inside the segmenter instead). Other datasets must yield normalised
    ``(image, mask)`` tensors. ``shard=(rank, world_size)``: this process evaluates every
    world_size-th image and the confusion matrices are summed over processes.
    """
    if isinstance(dataset, SegmentationDataset):
        stride = None if segmenter.input_size else getattr(segmenter.model, "output_stride", None)
        if stride not in OUTPUT_STRIDES:  # an exported labels graph (stride 1) pads itself
            stride = None
        dataset = copy.copy(dataset)
        dataset.transform = eval_transform(
            mean=segmenter.mean.flatten().tolist(), std=segmenter.std.flatten().tolist(),
            output_stride=stride,
        )  # fmt: skip
    rank, world_size = shard
    indices = range(len(dataset))
    if max_images is not None:
        indices = indices[:max_images]
    loader = DataLoader(Subset(dataset, list(indices)[rank::world_size]), batch_size=batch_size,
                        num_workers=workers, collate_fn=pad_collate)  # fmt: skip
    return evaluate(segmenter, loader, num_classes=segmenter.num_classes, trimap=trimap,
                    distributed=world_size > 1, progress=progress)  # fmt: skip


# --- `deeplab eval`: which data, which model ------------------------------------------------


@dataclass
class EvalRun:
    """What ``evaluate_dataset`` evaluated and found."""

    results: dict[str, Any]
    dataset: str
    split: str
    class_names: tuple[str, ...]
    setup: dict[str, Any]
    model: str | None


def evaluate_dataset(
    *,
    config: Config | None = None,
    dataset: str | None = None,
    data_root: str | None = None,
    split: str | None = None,
    weights: str | None = None,
    pretrained: str | None = None,
    model: str | None = None,
    num_classes: int | None = None,
    model_options: dict | None = None,
    segmenter_options: dict | None = None,
    batch_size: int = 1,
    workers: int = 0,
    trimap: Sequence[int] = (),
    max_images: int | None = None,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
    runtime: str = "torch",
) -> EvalRun:
    """``deeplab eval``: the dataset from the arguments or the training ``config``, the model
    from ``weights`` (a checkpoint describes itself; a bare state_dict is the config's
    network), ``pretrained``, the config's pretrained entry or its ``out_dir/best.pt``.
    ``shard=(rank, world_size)`` under ``torchrun``: each process scores its share and the
    confusion matrices are summed. ``runtime``: see ``predict.use_runtime``."""
    name = dataset or (config.data.dataset if config else None)
    root = data_root or (config.data.root if config else None)
    split = split or (config.data.val_split if config else None) or "val"
    if not name or not root:
        raise ValueError("say which data: --dataset NAME --data-root DIR, or -c config.yaml")
    options = dict(config.data.options) if config else {}
    wanted = num_classes or (config.model.num_classes if config else None)
    if name == "folder" and wanted:  # else class_names.txt says the count
        options.setdefault("num_classes", wanted)
    data = build_dataset(name, root=root, split=split, **options)
    options = dict(segmenter_options or {})
    if weights:
        fallback = {"num_classes": data.num_classes, "dataset": name}
        if config is not None:
            mean, std = normalisation(config)
            fallback.update(arch=config.model.name, options=dict(config.model.options),
                            mean=mean, std=std)  # fmt: skip
        segmenter = Segmenter.from_weights(weights, model=model, num_classes=num_classes,
                                           model_options=model_options, fallback=fallback,
                                           **options)  # fmt: skip
    elif pretrained or (config and config.model.pretrained):
        segmenter = Segmenter.from_pretrained(pretrained or config.model.pretrained, **options)
    elif config is not None:
        best = Path(config.train.out_dir) / "best.pt"
        if not best.is_file():
            raise ValueError(f"no weights to evaluate: {best} does not exist; pass --weights FILE")
        segmenter = Segmenter.from_weights(best, **options)
        weights = str(best)
    else:
        raise ValueError(
            "say what to evaluate: --weights FILE, --pretrained NAME or -c config.yaml"
        )
    segmenter = use_runtime(segmenter, runtime)
    if segmenter.num_classes != data.num_classes:
        raise ValueError(
            f"the model predicts {segmenter.num_classes} classes but {name} has "
            f"{data.num_classes}; evaluate a model trained on {name}"
        )
    results = evaluate_split(segmenter, data, batch_size=batch_size, workers=workers,
                             trimap=trimap, max_images=max_images, progress=progress,
                             shard=shard)  # fmt: skip
    stride = None if segmenter.input_size else getattr(segmenter.model, "output_stride", None)
    setup = dict(scales=list(segmenter.scales), flip=segmenter.flip, crf=segmenter.crf,
                 crop=segmenter.crop, output_stride=stride)  # fmt: skip
    return EvalRun(results, name, split, data.class_names, setup,
                   model=weights or pretrained or (config.model.pretrained if config else None))


# --- reports --------------------------------------------------------------------------------


def format_report(results: dict[str, Any], class_names: Sequence[str] | None = None) -> str:
    """The per-class IoU table of ``evaluate``'s results, with trimap lines if present."""
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
    text = json.dumps(jsonable(payload), indent=2, allow_nan=False)
    path.write_text(text + "\n")
    return path


def jsonable(value: Any) -> Any:
    """Tensors, numpy values, paths and NaN (-> null) turned into plain JSON types."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return jsonable(value.tolist())
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value
