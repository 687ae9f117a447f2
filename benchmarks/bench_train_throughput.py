"""Training throughput (images/s) of the main DeepLab variants at a fixed crop.

Each variant runs SGD steps (forward, loss, backward, update) on random data after one
untimed warm-up step; rounds interleave the variants and the median is reported. Ratios
against the first row are steadier than absolute figures on a shared machine.

    python benchmarks/bench_train_throughput.py                       # main variants
    python benchmarks/bench_train_throughput.py --crop 321 --batch 8 --amp none bf16 \
        --bn freeze finetune --models deeplabv3plus_mobilenetv2
    python benchmarks/bench_train_throughput.py --models deeplabv3plus_mobilenetv2 \
        --layout nchw nhwc --frozen none backbone.features.0,backbone.features.1
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from deeplab.config import parse_assignments
from deeplab.hub import create_model
from deeplab.losses import SegmentationLoss
from deeplab.train import build_optimizer, configure_batchnorm, freeze_modules, set_train_mode

MAIN_VARIANTS = (
    "deeplabv3plus_mobilenetv2",
    "deeplabv3_mobilenetv2",
    "deeplabv3_resnet50",
    "deeplabv3plus_resnet101",
    "deeplabv3plus_xception65",
)


class Variant:
    """One model + optimizer + random batch, ready to time training steps."""

    def __init__(
        self, name: str, *, crop: tuple[int, int], batch: int, amp: str, bn: str,
        output_stride: int, num_classes: int, layout: str = "nchw", frozen: str = "none",
    ) -> None:  # fmt: skip
        torch.manual_seed(0)
        names = [] if frozen == "none" else frozen.split(",")
        self.label = (name, amp, bn, layout, f"{len(names)} modules" if names else "none")
        name, _, option = name.partition(":")  # e.g. deeplabv3plus_mobilenetv2:atrous_rates=[]
        extra = dict(parse_assignments([option], what="option", example="x=1")) if option else {}
        self.model = create_model(name, num_classes=num_classes, output_stride=output_stride,
                                  **extra)
        frozen_bn = configure_batchnorm(self.model, bn, images_per_bn=batch)
        set_train_mode(self.model, frozen_bn + freeze_modules(self.model, names))
        fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
        self.model.to(memory_format=fmt)
        self.optimizer = build_optimizer(self.model, lr=1e-3, momentum=0.9, weight_decay=4e-5)
        self.loss_fn = SegmentationLoss(num_classes=num_classes)
        self.x = torch.randn(batch, 3, *crop).contiguous(memory_format=fmt)
        self.y = torch.randint(0, num_classes, (batch, *crop))
        self.autocast = (
            (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
            if amp == "bf16"
            else contextlib.nullcontext
        )
        self.step()  # warm-up: allocator and kernel selection, not timed

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            logits = self.model(self.x)
        self.loss_fn(logits, self.y).backward()
        self.optimizer.step()

    def images_per_second(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        return self.x.shape[0] * steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MAIN_VARIANTS),
                   help="registered names, optionally NAME:option=value")
    p.add_argument("--crop", default="321", help="H or HxW (default 321)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=2, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median taken)")
    p.add_argument("--amp", nargs="+", default=["none"], choices=("none", "bf16"))
    p.add_argument(
        "--bn", nargs="+", default=["finetune"], choices=("finetune", "freeze", "freeze_backbone")
    )
    p.add_argument("--layout", nargs="+", default=["nchw"], choices=("nchw", "nhwc"),
                   help="memory format: nhwc = channels_last (train.channels_last)")
    p.add_argument("--frozen", nargs="+", default=["none"],
                   help="comma-separated module names to freeze (model.frozen_modules), or none")
    p.add_argument("--output-stride", type=int, default=16)
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    h, _, w = args.crop.partition("x")
    crop = (int(h), int(w or h))

    print(
        f"crop {crop[0]}x{crop[1]}, batch {args.batch}, OS {args.output_stride}, "
        f"{args.rounds} rounds of {args.steps} steps, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}"
    )
    variants = [
        Variant(name, crop=crop, batch=args.batch, amp=amp, bn=bn, layout=layout, frozen=frozen,
                output_stride=args.output_stride, num_classes=args.num_classes)
        for name in args.models for amp in args.amp for bn in args.bn
        for layout in args.layout for frozen in args.frozen
    ]  # fmt: skip
    # Rounds interleave the variants so that load from other processes hits them alike.
    rates: list[list[float]] = [[] for _ in variants]
    for _ in range(args.rounds):
        for v, r in zip(variants, rates, strict=True):
            r.append(v.images_per_second(args.steps))
    print(f"{'model':28s} {'amp':5s} {'bn':15s} {'layout':6s} {'frozen':10s} {'img/s':>7s} "
          f"{'vs first':>8s}  (median of rounds)")  # fmt: skip
    base = statistics.median(rates[0])
    for v, r in zip(variants, rates, strict=True):
        ips = statistics.median(r)
        name, amp, bn, layout, frozen = v.label
        print(f"{name:28s} {amp:5s} {bn:15s} {layout:6s} {frozen:10s} {ips:7.2f} {ips / base:8.2f}")


if __name__ == "__main__":
    main()
