"""Training throughput (images/s) of the main DeepLab variants at a fixed crop.

Each variant runs a few SGD steps (forward, loss, backward, update) on random data;
the first step is a warm-up and is not timed. Prints a table; ratios against the first
row are steadier than absolute figures on a shared machine.

    python benchmarks/bench_train_throughput.py                       # main variants
    python benchmarks/bench_train_throughput.py --crop 321 --batch 8 --amp none bf16 \
        --bn freeze finetune --models deeplabv3plus_mobilenetv2
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from deeplab.losses import SegmentationLoss
from deeplab.models import create_model
from deeplab.train import build_optimizer, configure_batchnorm, set_train_mode

MAIN_VARIANTS = (
    "deeplabv3plus_mobilenetv2",
    "deeplabv3_mobilenetv2",
    "deeplabv3_resnet50",
    "deeplabv3plus_resnet101",
    "deeplabv3plus_xception65",
)


def images_per_second(
    name: str, *, crop: tuple[int, int], batch: int, steps: int, amp: str, bn: str,
    output_stride: int, num_classes: int,
) -> float:  # fmt: skip
    """Mean training images/s over ``steps`` timed steps after one warm-up step."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, output_stride=output_stride)
    frozen = configure_batchnorm(model, bn, images_per_bn=batch)
    set_train_mode(model, frozen)
    optimizer = build_optimizer(model, lr=1e-3, momentum=0.9, weight_decay=4e-5)
    loss_fn = SegmentationLoss(num_classes=num_classes)
    x = torch.randn(batch, 3, *crop)
    y = torch.randint(0, num_classes, (batch, *crop))
    autocast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if amp == "bf16"
        else contextlib.nullcontext
    )
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits = model(x)
        loss_fn(logits, y).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return batch * steps / sum(times[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MAIN_VARIANTS))
    p.add_argument("--crop", default="321", help="H or HxW (default 321)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--amp", nargs="+", default=["none"], choices=("none", "bf16"))
    p.add_argument(
        "--bn", nargs="+", default=["finetune"], choices=("finetune", "freeze", "freeze_backbone")
    )
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
        f"{args.steps} timed steps, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"{'model':28s} {'amp':5s} {'bn':15s} {'img/s':>7s} {'vs first':>8s}")
    base = None
    for name in args.models:
        for amp in args.amp:
            for bn in args.bn:
                ips = images_per_second(
                    name, crop=crop, batch=args.batch, steps=args.steps, amp=amp, bn=bn,
                    output_stride=args.output_stride, num_classes=args.num_classes,
                )  # fmt: skip
                base = base or ips
                print(f"{name:28s} {amp:5s} {bn:15s} {ips:7.2f} {ips / base:8.2f}", flush=True)


if __name__ == "__main__":
    main()
