"""Dense CRF speed: deeplab.crf.dense_crf against pydensecrf on the same inputs.

    pip install -e ".[test]"        # pydensecrf2 is in the test extra
    python benchmarks/bench_crf.py --camvid ../shared/data/camvid

Inputs are real CamVid val photos (480x360, and resized to 513x513, the VOC
crop); the probabilities are softened, noisy versions of their label masks
(softmax of Gaussian noise + 1.5 on the true class) with ``--classes``
channels, so every run sees the same data. Both implementations get the same
parameters (Gaussian sxy 3 compat 3, bilateral sxy 80 srgb 13 compat 10).
Prints one row per size and iteration count: median milliseconds per image,
the ratio pydensecrf / ours (> 1: ours is faster) and the lowest share of
pixels whose label agrees. "cold" builds both lattices; "size seen before"
reuses the position-only lattice, which depends on the image size alone (an
evaluation loop over same-size images pays for it once).

``--first-frames N``: what a fresh process pays, as ``deeplab predict --crf`` runs: each
implementation in its own new process over the first N frames (480x360, 5 iterations),
timed from the process's first CRF call. Ours starts loading the compiled CRF in the
background when the segmenter is made (``deeplab.crf.prepare``), here while the default
VOC model loads, as in predict; "ours, no overlap" calls it with nothing to overlap.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deeplab.crf import clear_cache, dense_crf


def noisy_probs(mask: np.ndarray, classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.where(mask < classes, mask, 0)
    logits = rng.normal(0.0, 1.0, (classes, *labels.shape)).astype(np.float32)
    np.put_along_axis(logits, labels[None], np.take_along_axis(logits, labels[None], 0) + 1.5, 0)
    p = np.exp(logits - logits.max(0))
    return (p / p.sum(0)).astype(np.float32)


def load_inputs(camvid: Path, count: int, size: tuple[int, int] | None, classes: int):
    names = sorted((camvid / "val").glob("*.png"))[:count]
    if not names:
        raise SystemExit(f"no PNG images in {camvid / 'val'}; pass --camvid <folder with val/>")
    inputs = []
    for i, path in enumerate(names):
        image = Image.open(path).convert("RGB")
        mask = Image.open(camvid / "valannot" / path.name)
        if size is not None:
            image = image.resize(size, Image.BILINEAR)
            mask = mask.resize(size, Image.NEAREST)
        inputs.append(
            (np.asarray(image).copy(), noisy_probs(np.asarray(mask).astype(np.int64), classes, i))
        )
    return inputs


def run_pydensecrf(image: np.ndarray, probs: np.ndarray, iterations: int) -> np.ndarray:
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    c, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=80, srgb=13, rgbim=np.array(image, order="C"), compat=10)
    return np.asarray(crf.inference(iterations)).reshape(c, h, w)


def timed(fns: dict, repeats: int, clock) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Median ms of each function; the functions take turns so they share the machine's load."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    outs = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            outs[name] = fn()
            times[name].append(clock() - start)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}, outs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--camvid", type=Path, default=Path("../shared/data/camvid"))
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="device for ours (cpu or cuda)")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="cpu: this process's CPU time, steadier than wall time on a busy machine "
        "(comparable only with --threads 1)",
    )
    parser.add_argument("--first-frames", type=int, help="time the first N frames of fresh "
                        "processes instead (see the docstring)")
    args = parser.parse_args()
    if args.first_frames:
        return first_frames(args)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    print(
        f"torch threads {torch.get_num_threads()}, device {device}, classes {args.classes}, "
        f"{args.clock} clock, median of {args.repeats} runs x {args.images} images"
    )
    print(
        "| size | iterations | pydensecrf ms | ours ms (cold) | ratio | "
        "ours ms (size seen before) | ratio | labels agree |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for size in (None, (513, 513)):
        inputs = load_inputs(args.camvid, args.images, size, args.classes)
        h, w = inputs[0][1].shape[1:]
        for iterations in (5, 10):
            ref_ms, cold_ms, warm_ms, agree = [], [], [], []
            for image, probs in inputs:
                ours = partial(
                    run_ours, torch.from_numpy(image).to(device),
                    torch.from_numpy(probs).to(device), iterations,
                )
                ours(cold=False)  # warm-up: first MKL/CUDA calls, caches the position lattice
                ms, outs = timed(
                    {
                        "ref": partial(run_pydensecrf, image, probs, iterations),
                        "cold": partial(ours, cold=True),
                        "warm": partial(ours, cold=False),
                    },
                    args.repeats,
                    clock,
                )
                ref_ms.append(ms["ref"])
                cold_ms.append(ms["cold"])
                warm_ms.append(ms["warm"])
                agree.append(float((outs["ref"].argmax(0) == outs["cold"].argmax(0)).mean()))
            r = statistics.median(ref_ms)
            c, o = statistics.median(cold_ms), statistics.median(warm_ms)
            print(
                f"| {w}x{h} | {iterations} | {r:.0f} | {c:.0f} | {r / c:.2f} | {o:.0f} | "
                f"{r / o:.2f} | {100 * min(agree):.3f}% |"
            )


FRESH = """
import sys, time, numpy as np, torch
sys.path.insert(0, {bench!r})
from bench_crf import load_inputs, run_pydensecrf
inputs = load_inputs(__import__("pathlib").Path({camvid!r}), {n}, None, 21)
kind = {kind!r}
if kind == "ours, model loading beside":
    from deeplab.crf import dense_crf, prepare
    prepare()  # as a Segmenter made with crf=True does
    from deeplab.inference import Segmenter
    Segmenter.from_pretrained()  # the model loads meanwhile
    run = lambda image, probs: dense_crf(image, probs, iterations=5)
elif kind == "ours, no overlap":
    from deeplab.crf import dense_crf
    run = lambda image, probs: dense_crf(image, probs, iterations=5)
else:
    run = lambda image, probs: run_pydensecrf(image, probs, 5)
start = time.perf_counter()
for image, probs in inputs:
    run(image, probs)
print(time.perf_counter() - start)
"""


def first_frames(args: argparse.Namespace) -> None:
    import subprocess
    import sys

    kinds = ("pydensecrf", "ours, no overlap", "ours, model loading beside")
    seconds = {kind: [] for kind in kinds}
    for _ in range(args.repeats):
        for kind in kinds:
            code = FRESH.format(bench=str(Path(__file__).parent), camvid=str(args.camvid),
                                n=args.first_frames, kind=kind)  # fmt: skip
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True).stdout  # fmt: skip
            seconds[kind].append(float(out.split()[-1]))
    ref = statistics.median(seconds["pydensecrf"])
    print(f"the first {args.first_frames} CamVid val frames (480x360, 21 classes, 5 iterations) "
          f"of a fresh process, from its first CRF call; median of {args.repeats} processes")
    print("| CRF | seconds | pydensecrf / it |")
    print("|---|---|---|")
    for kind in kinds:
        t = statistics.median(seconds[kind])
        print(f"| {kind} | {t:.2f} | {ref / t:.2f} |")


def run_ours(image: torch.Tensor, probs: torch.Tensor, iterations: int, *, cold: bool):
    if cold:  # as for the first image of a size: build the position lattice too
        clear_cache()
    out = dense_crf(image, probs, iterations=iterations)
    if out.device.type == "cuda":
        torch.cuda.synchronize()
    return out.cpu().numpy()


if __name__ == "__main__":
    main()
