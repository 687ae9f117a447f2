"""Segmentation metrics: confusion matrix -> IoU table, and boundary (trimap) IoU.

The PASCAL VOC measure is the intersection over union of each class, averaged
over classes, from ONE confusion matrix accumulated over the whole split
(DeepLab-v1, sec. 5), not an average of per-image scores. Boundary quality is
measured with the "trimap" of DeepLab-v1 (sec. 5) and DeepLab-v2 (sec. 4.1,
fig. 10): the same mean IoU, counted only within a band of N pixels around
ground-truth label boundaries.

Conventions, shared by every number below:

* rows of the matrix are ground truth, columns are predictions;
* pixels whose target is ``ignore_index`` (255 by default) are skipped;
* a class that appears neither in the ground truth nor in the predictions has
  an undefined IoU (0/0): it is reported as NaN and left out of the mean, so
  that evaluating on a subset of images does not count absent classes as 0.
  A class that is predicted but absent from the ground truth has IoU 0 and
  does count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from deeplab.data.labels import IGNORE_INDEX
from deeplab.table import text_table

__all__ = ["ConfusionMatrix", "TrimapIoU", "boundary_map", "trimap_bands"]


def _as_long_tensor(x: Any, name: str) -> torch.Tensor:
    """Torch tensor or NumPy array (or nested lists) of integer labels -> int64 tensor."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(
            f"{name} must hold integer class indices, got dtype {x.dtype}; "
            "pass logits.argmax(1) as prediction and the label map as target"
        )
    return x.long()


class ConfusionMatrix:
    """Accumulates a ``num_classes x num_classes`` confusion matrix (rows: truth, cols: prediction).

    ``update(pred, target)`` takes label maps of any equal shape ([H,W], [N,H,W], ...),
    as torch tensors or NumPy arrays; ``compute()`` returns the metrics dict.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def reset(self) -> None:
        """Forget everything seen so far (e.g. between two evaluations)."""
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: Any, target: Any) -> None:
        """Add one batch: ``pred`` and ``target`` integer label maps of the same shape."""
        pred = _as_long_tensor(pred, "pred")
        target = _as_long_tensor(target, "target")
        if pred.shape != target.shape:
            raise ValueError(
                f"pred shape {tuple(pred.shape)} differs from target shape "
                f"{tuple(target.shape)}; resize the logits to the mask size before argmax"
            )
        pred = pred.to(target.device).reshape(-1)
        target = target.reshape(-1)
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        k = self.num_classes
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= k):
            bad = int(target.max()) if int(target.max()) >= k else int(target.min())
            raise ValueError(
                f"target label {bad} is outside 0..{k - 1} and is not the ignore index "
                f"{self.ignore_index}; check num_classes or map the label to {self.ignore_index}"
            )
        if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= k):
            bad = int(pred.max()) if int(pred.max()) >= k else int(pred.min())
            raise ValueError(f"predicted label {bad} is outside 0..{k - 1}; check num_classes")
        # One bincount over truth*K + pred builds the whole matrix in a single pass.
        counts = torch.bincount(target * k + pred, minlength=k * k).reshape(k, k)
        if self.matrix.device != counts.device:
            self.matrix = self.matrix.to(counts.device)
        self.matrix += counts

    def all_reduce(self) -> None:
        """Sum the matrices of all processes (torch.distributed, gloo or nccl); no-op otherwise."""
        self.matrix = all_reduce_sum(self.matrix)

    def compute(self) -> dict[str, Any]:
        """Metrics as plain Python floats (fractions in 0..1; NaN where undefined).

        Keys: ``iou``, ``class_acc`` (recall) and ``precision`` (lists, one value per class),
        ``miou``,
        ``pixel_acc``, ``mean_class_acc``, ``fw_iou``, ``pixels`` (pixels counted).
        """
        m = self.matrix.double().cpu()
        tp = m.diagonal()
        gt = m.sum(1)  # pixels of each class in the ground truth
        pr = m.sum(0)  # pixels predicted as each class
        union = gt + pr - tp
        total = m.sum()
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
        class_acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)  # recall
        precision = torch.where(pr > 0, tp / pr.clamp(min=1), nan)
        # Frequency-weighted IoU: IoU weighted by each class's share of the ground truth.
        fw_iou = float((gt * iou.nan_to_num(0.0)).sum() / total) if total > 0 else math.nan
        return {
            "iou": iou.tolist(),
            "class_acc": class_acc.tolist(),
            "precision": precision.tolist(),
            "miou": _nanmean(iou),
            "pixel_acc": float(tp.sum() / total) if total > 0 else math.nan,
            "mean_class_acc": _nanmean(class_acc),
            "fw_iou": fw_iou,
            "pixels": int(total),
        }

    def format_table(self, class_names: Sequence[str] | None = None) -> str:
        """Per-class table (IoU, precision, recall, ground-truth pixels) and the summary."""
        names = list(class_names) if class_names is not None else []
        if names and len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names given for {self.num_classes} classes")
        if not names:
            names = [str(i) for i in range(self.num_classes)]
        r = self.compute()
        gt = self.matrix.sum(1).tolist()

        def pct(v: float) -> str:
            return "-" if math.isnan(v) else f"{100 * v:.2f}"

        rows = [(n, pct(iou), pct(prec), pct(acc), n_px) for n, iou, prec, acc, n_px
                in zip(names, r["iou"], r["precision"], r["class_acc"], gt, strict=True)]
        summary = [("mean IoU", "miou"), ("pixel acc", "pixel_acc"),
                   ("mean acc", "mean_class_acc"), ("fw IoU", "fw_iou")]  # fmt: skip
        rows += [(label, pct(r[key]), "", "", "") for label, key in summary]
        lines = text_table(("class", "IoU %", "precision %", "recall %", "pixels"), rows,
                           right=(1, 2, 3, 4), rule=False).splitlines()  # fmt: skip
        lines.insert(1 + len(names), "-" * len(lines[0]))
        return "\n".join(lines)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the processes of the default group (itself without one). NCCL
    reduces CUDA tensors only, so a CPU tensor makes the trip through this process's GPU."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    work = t.to(on) if on is not None else t.clone()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(t.device)


def _nanmean(values: torch.Tensor) -> float:
    valid = values[~values.isnan()]
    return float(valid.mean()) if valid.numel() else math.nan


def boundary_map(target: torch.Tensor) -> torch.Tensor:
    """[N,H,W] labels -> [N,H,W] bool: pixels whose label differs from a 4-neighbour.

    The ignore label counts as a label here: VOC draws a void band around every
    object, so its edges ARE the object boundaries the trimap measures
    (DeepLab-v1, sec. 5). Void pixels themselves are never scored.
    """
    edge = torch.zeros_like(target, dtype=torch.bool)
    dy = target[:, 1:, :] != target[:, :-1, :]
    dx = target[:, :, 1:] != target[:, :, :-1]
    edge[:, 1:, :] |= dy
    edge[:, :-1, :] |= dy
    edge[:, :, 1:] |= dx
    edge[:, :, :-1] |= dx
    return edge


def trimap_bands(target: torch.Tensor, widths: Sequence[int]) -> list[torch.Tensor]:
    """[N,H,W] labels -> one [N,H,W] bool band per width: pixels within ``w`` of a boundary.

    "Within w" is the chessboard distance (a (2w+1)x(2w+1) square dilation), done
    as two 1-D max-pools, which is exact for a square and linear in w.
    """
    edge = boundary_map(target).unsqueeze(1).float()
    bands = []
    for w in widths:
        if w < 0:
            raise ValueError(f"trimap width must be >= 0, got {w}")
        band = edge
        if w > 0:
            band = F.max_pool2d(band, kernel_size=(1, 2 * w + 1), stride=1, padding=(0, w))
            band = F.max_pool2d(band, kernel_size=(2 * w + 1, 1), stride=1, padding=(w, 0))
        bands.append(band.squeeze(1) > 0)
    return bands


class TrimapIoU:
    """Mean IoU restricted to bands around ground-truth boundaries, one matrix per band width.

    ``update(pred, target)`` takes label maps [H,W] or [N,H,W] (torch or NumPy);
    ``compute()`` returns ``{width: mIoU}``; ``matrices[w]`` holds the full
    ``ConfusionMatrix`` of each band for per-class figures.
    """

    def __init__(
        self,
        num_classes: int,
        widths: Sequence[int] = (1, 2, 4, 8, 12, 16, 20, 24, 32, 40),
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        if not widths:
            raise ValueError("give at least one trimap width, e.g. widths=(1, 2, 4, 8)")
        self.widths = tuple(int(w) for w in widths)
        self.ignore_index = int(ignore_index)
        self.matrices = {w: ConfusionMatrix(num_classes, ignore_index) for w in self.widths}

    def reset(self) -> None:
        for m in self.matrices.values():
            m.reset()

    @torch.no_grad()
    def update(self, pred: Any, target: Any) -> None:
        pred = _as_long_tensor(pred, "pred")
        target = _as_long_tensor(target, "target")
        if pred.shape != target.shape or target.dim() < 2:
            raise ValueError(
                f"trimap needs label maps of equal shape [..., H, W], got pred "
                f"{tuple(pred.shape)} and target {tuple(target.shape)}"
            )
        target = target.reshape(-1, *target.shape[-2:])
        pred = pred.to(target.device).reshape(target.shape)
        for w, band in zip(self.widths, trimap_bands(target, self.widths), strict=True):
            # Outside the band the pixel is treated as ignored.
            banded = torch.where(band, target, torch.full_like(target, self.ignore_index))
            self.matrices[w].update(pred, banded)

    def all_reduce(self) -> None:
        for m in self.matrices.values():
            m.all_reduce()

    def compute(self) -> dict[int, float]:
        return {w: m.compute()["miou"] for w, m in self.matrices.items()}
