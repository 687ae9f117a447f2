"""int8 against float: mIoU on a labelled split, milliseconds per image, file size.

    python benchmarks/bench_int8.py --weights runs/camvid/best.pt \
        --camvid ../shared/data/camvid --calibrate 60

Exports the checkpoint (labels contract: uint8 in, labels out), quantizes it with each
recipe variant (per-channel or per-tensor weights, min-max / percentile / entropy
calibration, first and last convolutions in float or not) on ``--calibrate`` CamVid
*training* frames, evaluates float and every int8 file on the val split with
``deeplab.quantize.miou``, as ``deeplab export --int8`` scores (val is never used to
calibrate), then times every file with onnxruntime on the same frames and thread count in
interleaved rounds (each file in turn, ``--rounds`` times), so load from elsewhere and the
CPU's clock hit them alike: timed one after the other, two files with the same graph ran
24 and 35 ms. One table row per file; ``--only`` restricts the variants (e.g. ``--only
default``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from deeplab.data.images import read_image
from deeplab.export import export, model_to_export
from deeplab.quantize import (
    Int8Recipe,
    LabelledSplit,
    label_agreement,
    miou,
    ms_per_image,
    quantize_onnx,
)
from deeplab.system import cpu_name

REPO = Path(__file__).resolve().parents[1]
DEFAULT = Int8Recipe()
VARIANTS = {
    "default": DEFAULT,
    "per-tensor": replace(DEFAULT, per_channel=False),
    "minmax": replace(DEFAULT, method="minmax"),
    "entropy": replace(DEFAULT, method="entropy"),
    "all int8 (no float layers)": replace(DEFAULT, keep_float=()),
    "naive (per-tensor, minmax, all int8)": Int8Recipe(per_channel=False, method="minmax",
                                                      keep_float=()),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--camvid", type=Path, default=REPO.parent / "shared" / "data" / "camvid")
    p.add_argument("--split", default="val")
    p.add_argument("--calibrate", type=int, default=60, help="training frames to calibrate on")
    p.add_argument("--time-images", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    lines = (args.camvid / "train.txt").read_text().split()
    train = [args.camvid / x for x in lines[0::2]]
    calibration = [read_image(f) for f in train[:: max(1, len(train) // args.calibrate)]]
    calibration = calibration[: args.calibrate]
    val_lines = (args.camvid / f"{args.split}.txt").read_text().split()
    timing = [read_image(args.camvid / x) for x in val_lines[0::2][: args.time_images]]
    tmp = Path(tempfile.mkdtemp(prefix="int8-"))
    model, info = model_to_export(weights=args.weights)
    float_path, _ = export(model, info, tmp / "float.onnx", check=False)

    labelled = LabelledSplit("camvid", args.camvid, args.split)

    def score(path: Path) -> float:  # as `deeplab export --int8` scores its files
        return 100 * miou(path, labelled, info.num_classes)

    base = score(float_path)
    rows = {"float": (float_path, base, 1.0)}
    for name, recipe in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        path = quantize_onnx(float_path, tmp / f"{name[:8].strip()}.onnx", calibration,
                             recipe=recipe)  # fmt: skip
        rows[f"int8 {name}"] = (path, score(path), label_agreement(float_path, path, timing))
    times = ms_per_image([row[0] for row in rows.values()], timing, threads=args.threads,
                         repeats=args.rounds)  # fmt: skip
    ms = dict(zip(rows, times, strict=True))
    print(f"{args.weights}; CamVid {args.split}; calibration: {len(calibration)} train frames; "
          f"{cpu_name()}, {args.threads} threads; ms = median per photo over "
          f"{len(timing)} 480x360 frames, files interleaved, {args.rounds} rounds")  # fmt: skip
    print("| file | mIoU | drop | ms/image | speed-up | MB | labels = float |")
    print("|---|---|---|---|---|---|---|")
    for name, (path, value, agree) in rows.items():
        drop = "-" if name == "float" else f"{base - value:.2f}"
        print(f"| {name} | {value:.2f} | {drop} | {ms[name]:.1f} | {ms['float'] / ms[name]:.2f}x | "
              f"{os.path.getsize(path) / 1e6:.1f} | {100 * agree:.2f}% |")  # fmt: skip


if __name__ == "__main__":
    main()
