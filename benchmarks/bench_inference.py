"""Cost and effect of the test-time options, on the default VOC zoo model.

    DEEPLAB_WEIGHTS_DIR=../shared/weights python benchmarks/bench_inference.py \\
        [--image deeplab/photos/astronaut.jpg] [--repeats 3] [--voc-example DIR]

For each option set: median seconds per image over rounds that interleave the
sets, the ratio against plain single-scale inference measured in the same run,
the share of pixels whose label differs from the single-scale result, and the
"person" share. With ``--voc-example`` (a folder in VOC layout, e.g. written by
``deeplab labelme2voc``) it also prints mean IoU of each option set on those
images. Times on a shared machine move with its load; the ratios move less.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from deeplab.data.datasets import build_dataset
from deeplab.data.images import read_image
from deeplab.evaluate import evaluate_split
from deeplab.inference import Segmenter

OPTION_SETS: list[tuple[str, dict]] = [
    ("single scale (baseline)", {}),
    ("flip", {"flip": True}),
    ("output stride 8", {"output_stride": 8}),
    ("scales 0.5:0.25:1.75", {"scales": (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)}),
    ("scales 0.5:0.25:1.75 + flip", {"scales": (0.5, 0.75, 1.0, 1.25, 1.5, 1.75), "flip": True}),
    ("dense CRF (5 iterations)", {"crf": True}),
]


def voc_example_miou(segmenter: Segmenter, root: Path) -> float:
    dataset = build_dataset("folder", root=root, split="val")
    return evaluate_split(segmenter, dataset, progress=False)["miou"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="deeplab/photos/astronaut.jpg")
    parser.add_argument("--model", default=None, help="zoo entry (default: the VOC default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--voc-example", type=Path, help="VOC-layout folder for mean IoU")
    args = parser.parse_args()

    image = read_image(args.image)
    base = Segmenter.from_pretrained(args.model, device=args.device)
    train_stride = base.model.output_stride
    segmenters = []
    for name, options in OPTION_SETS:
        fields = dict(mean=base.mean.flatten().tolist(), std=base.std.flatten().tolist(),
                      class_names=base.class_names, input_size=base.input_size)  # fmt: skip
        options = dict(options)
        stride = options.pop("output_stride", None)  # applied per call: the model is shared
        segmenters.append(
            (name, stride, Segmenter(base.model, device=args.device, **fields, **options))
        )

    def run(stride, segmenter):
        base.model.set_output_stride(stride or train_stride)
        try:
            return segmenter.predict(image)
        finally:
            base.model.set_output_stride(train_stride)

    # Rounds interleave the option sets, so a change in the machine's load hits all of them.
    times = {name: [] for name, _, _ in segmenters}
    preds = {}
    for round_ in range(args.repeats + 1):
        for name, stride, segmenter in segmenters:
            start = time.perf_counter()
            preds[name] = run(stride, segmenter)
            if round_ > 0:  # round 0 warms up
                times[name].append(time.perf_counter() - start)

    print(f"model: {args.model or 'default zoo entry'}, image {args.image} "
          f"{image.shape[1]}x{image.shape[0]}, device {args.device}, "
          f"threads {torch.get_num_threads()}, {args.repeats} interleaved rounds")  # fmt: skip
    header = "| options | s/image (median) | x baseline | labels changed | person share |"
    if args.voc_example:
        header += " mIoU (VOC example) |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    base_name = segmenters[0][0]
    base_time = statistics.median(times[base_name])
    for name, stride, segmenter in segmenters:
        seconds = statistics.median(times[name])
        changed = float((preds[name].labels != preds[base_name].labels).mean())
        person = preds[name].shares().get("person", 0.0)
        row = (f"| {name} | {seconds:.2f} | {seconds / base_time:.1f} | "
               f"{100 * changed:.1f}% | {100 * person:.1f}% |")  # fmt: skip
        if args.voc_example:
            base.model.set_output_stride(stride or train_stride)
            row += f" {100 * voc_example_miou(segmenter, args.voc_example):.2f} |"
            base.model.set_output_stride(train_stride)
        print(row, flush=True)


if __name__ == "__main__":
    main()
