"""CPU inference speed of the main DeepLab variants, batch 1, and three ways to run them.

    python benchmarks/bench_models.py                      # 513x513, 2 threads
    python benchmarks/bench_models.py --models deeplabv3_mobilenetv2 --repeats 5
    python benchmarks/bench_models.py --models deeplabv3plus_resnet101 \
        deeplabv3plus_resnet101:separable=false        # NAME:option=value builds a variant

Modes, each on the same randomly initialised weights and input:
- ``no_grad``: ``model.eval()`` + ``torch.no_grad()`` (the baseline);
- ``inference_mode``: ``torch.inference_mode()`` instead of ``no_grad``;
- ``channels_last``: model and input in channels-last memory format + inference_mode.

Modes are timed round-robin (one run of each mode in turn, ``--repeats`` times)
so a change in machine load hits all three alike; the table gives the median
milliseconds per image and the speed-up against ``no_grad`` of the same model
in the same run, which is more trustworthy than the absolute times on a shared
machine.
"""

from __future__ import annotations

import os

# With two OpenMP threads on a busy machine, the default spin-waiting makes threads
# fight for the cores (a 40x56 forward pass then takes seconds). Passive waiting
# must be chosen before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from deeplab.config import parse_assignments  # noqa: E402
from deeplab.hub import create_model  # noqa: E402

MODELS = (
    "deeplabv3_mobilenetv2",
    "deeplabv3plus_mobilenetv2",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "deeplabv3plus_xception65",
    "deeplabv1_vgg16_largefov",
)
MODES = ("no_grad", "inference_mode", "channels_last")


def _run(model: torch.nn.Module, x: torch.Tensor, mode: str) -> float:
    """Seconds for one forward pass in ``mode``."""
    context = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with context:
        start = time.perf_counter()
        model(x)
        return time.perf_counter() - start


def bench(name: str, *, size: tuple[int, int], repeats: int) -> dict[str, float]:
    """Median milliseconds per image for each mode."""
    torch.manual_seed(0)
    name, _, option = name.partition(":")
    extra = dict(parse_assignments([option], what="option", example="x=1")) if option else {}
    model = create_model(name, **extra).eval()
    x = torch.randn(1, 3, *size)
    variants = {
        "no_grad": (model, x),
        "inference_mode": (model, x),
        "channels_last": (
            copy.deepcopy(model).to(memory_format=torch.channels_last),
            x.contiguous(memory_format=torch.channels_last),
        ),
    }
    for mode in MODES:  # warm-up: first calls choose kernels and allocate
        _run(*variants[mode], mode)
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(repeats):
        for mode in MODES:
            times[mode].append(_run(*variants[mode], mode))
    return {mode: 1000 * statistics.median(t) for mode, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--size", type=int, nargs=2, default=(513, 513), metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    h, w = args.size
    print(
        f"CPU inference, batch 1, {h}x{w}, {args.threads} threads, median of {args.repeats} "
        f"runs; torch {torch.__version__}"
    )
    header = f"{'model':40s} {'no_grad ms':>11s} {'inference_mode':>20s} {'channels_last':>20s}"
    print(header)
    print("-" * len(header))
    for name in args.models:
        ms = bench(name, size=(h, w), repeats=args.repeats)
        base = ms["no_grad"]
        cells = [f"{ms[m]:8.0f} ({base / ms[m]:.2f}x)" for m in MODES[1:]]
        print(f"{name:40s} {base:11.0f} {cells[0]:>20s} {cells[1]:>20s}", flush=True)


if __name__ == "__main__":
    main()
