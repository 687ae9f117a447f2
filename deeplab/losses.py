"""Pixel-wise losses for DeepLab training.

Cross-entropy over every labelled pixel, with the ignore label (255), optional class
weights (e.g. the median-frequency weights `deeplab check-data` writes) and the TF release's
hard-pixel mining: average only the top k% largest pixel losses
(``top_k_percent_pixels``), ramped in linearly over ``hard_example_mining_step`` steps
(deeplab/utils/train_utils.py in the TF release).

Normalisation follows the TF release: the weighted sum of pixel losses is divided by
the number of labelled pixels (or, with mining, by the number of kept non-zero losses),
not by the sum of the class weights as ``torch.nn.CrossEntropyLoss`` does.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from deeplab.data.labels import IGNORE_INDEX


def pixel_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    top_k_percent: float = 1.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy of logits [N,C,H,W] against target [N,H,W] -> scalar.

    ``top_k_percent < 1`` keeps only that fraction of all pixels in the batch (ignored
    ones count in the total but have zero loss), the largest losses, and averages the
    non-zero ones among them.
    """
    if logits.shape[-2:] != target.shape[-2:]:
        raise ValueError(
            f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in size; "
            "the model should return logits at the input's height and width"
        )
    # Compute in float32 even under autocast: log-softmax over many pixels in bf16 is coarse.
    losses = F.cross_entropy(
        logits.float(), target, weight=weight, ignore_index=ignore_index, reduction="none",
        label_smoothing=label_smoothing,
    ).flatten()  # fmt: skip
    if top_k_percent >= 1.0:
        labelled = (target != ignore_index).sum()
        return losses.sum() / labelled.clamp(min=1)
    k = max(1, int(top_k_percent * losses.numel()))
    top = torch.topk(losses, k, sorted=False).values
    kept = (top != 0).sum()
    return top.sum() / kept.clamp(min=1)


def mining_fraction(step: int, *, top_k_percent: float, ramp_steps: int) -> float:
    """Fraction of pixels kept at ``step``: 1.0 falling linearly to ``top_k_percent``.

    The TF release's schedule: ratio = min(1, step / ramp_steps);
    kept = ratio * top_k_percent + (1 - ratio).
    """
    if ramp_steps <= 0:
        return top_k_percent
    ratio = min(1.0, step / ramp_steps)
    return ratio * top_k_percent + (1.0 - ratio)


class SegmentationLoss(nn.Module):
    """Cross-entropy with ignore label, class weights and scheduled hard-pixel mining.

    ``loss(logits [N,C,H,W], target [N,H,W], step) -> scalar``.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        class_weights: list[float] | torch.Tensor | None = None,
        ignore_index: int = IGNORE_INDEX,
        top_k_percent_pixels: float = 1.0,
        hard_example_mining_step: int = 0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if class_weights is not None:
            class_weights = torch.as_tensor(class_weights, dtype=torch.float32)
            if class_weights.shape != (num_classes,):
                raise ValueError(
                    f"{class_weights.numel()} class weights for {num_classes} classes; give one "
                    "weight per class (loss.class_weights)"
                )
        self.register_buffer("weight", class_weights, persistent=False)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.top_k_percent_pixels = top_k_percent_pixels
        self.hard_example_mining_step = hard_example_mining_step
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor, step: int = 0) -> torch.Tensor:
        fraction = mining_fraction(
            step, top_k_percent=self.top_k_percent_pixels, ramp_steps=self.hard_example_mining_step
        )
        return pixel_cross_entropy(
            logits, target, weight=self.weight, ignore_index=self.ignore_index,
            top_k_percent=fraction, label_smoothing=self.label_smoothing,
        )  # fmt: skip


def load_class_weights(
    source: list[float] | str | Path, *, num_classes: int | None
) -> list[float]:
    """Class weights from a list or a JSON file (a list, or an object with "weights");
    ``num_classes=None`` skips the length check (the data check reports it with the fix)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"class weight file {path} not found; set loss.class_weights to a JSON file "
                "holding one weight per class, or to a list"
            ) from None
        except json.JSONDecodeError as e:
            raise ValueError(f"class weight file {path} is not valid JSON: {e}") from None
        if isinstance(data, dict):
            data = data.get("weights", data.get("class_weights"))
        where = str(path)
    else:
        data, where = source, "loss.class_weights"
    if not isinstance(data, list) or not all(isinstance(v, (int, float)) for v in data):
        raise ValueError(f'{where}: expected a list of numbers (or {{"weights": [...]}})')
    if num_classes is not None and len(data) != num_classes:
        raise ValueError(f"{where}: {len(data)} weights for {num_classes} classes")
    return [float(v) for v in data]
