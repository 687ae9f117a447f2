"""A DeepLab-shaped toy network and synthetic data that train in milliseconds."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from deeplab.config import load_config

NUM_CLASSES = 3


class TinyNet(nn.Module):
    """A DeepLab-shaped toy: stride-2 conv (+BN) -> dropout -> 1x1 classifier -> upsample.

    ``forward(x [N,3,H,W]) -> logits [N,3,H,W]``.
    """

    def __init__(self, *, bn: bool = True, dropout: float = 0.1) -> None:
        super().__init__()
        self.num_classes = NUM_CLASSES
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=not bn),
            nn.BatchNorm2d(8) if bn else nn.Identity(),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(8, NUM_CLASSES, 1)
        self.output_stride = 2

    def set_output_stride(self, output_stride: int) -> None:
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.classifier(self.dropout(self.backbone(x)))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class Synthetic:
    """Random 20x20 images whose class is the brightest of the first 3 channels.

    Training items are random 16x16 crops with random flips, drawn from (seed, epoch, index)
    like the real datasets; without a seed, the full image.
    """

    def __init__(self, n: int = 16, *, seed: int | None = 0, size: int = 20) -> None:
        self.n, self.seed, self.size, self.epoch = n, seed, size, 0
        self.num_classes = NUM_CLASSES

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(1000 + i)
        image = F.avg_pool2d(torch.randn(1, 3, self.size + 2, self.size + 2, generator=g), 3, 1)[0]
        mask = image.argmax(0)
        if self.seed is None:
            return image, mask
        rng = np.random.default_rng((self.seed, self.epoch, i))
        top, left = (int(v) for v in rng.integers(0, self.size - 16 + 1, size=2))
        rows, cols = slice(top, top + 16), slice(left, left + 16)
        image, mask = image[:, rows, cols], mask[rows, cols]
        if rng.random() < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        return image.contiguous(), mask.contiguous()


def tiny_config(out_dir, *overrides: str):
    return load_config(None, [
        f"train.out_dir={out_dir}", "train.iters=6", "train.batch_size=4", "train.log_every=1",
        "train.ckpt_every=100", "train.val_every=0", "train.progress=false", "data.num_workers=0",
        "optim.lr=0.05", "model.bn=finetune", *overrides,
    ])  # fmt: skip
