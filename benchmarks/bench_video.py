"""Video segmentation on a real clip: frames per second, flicker, and accuracy.

The 101 CamVid val frames are consecutive frames of one drive (every second frame of the
30 Hz camera, so 15 Hz): they are encoded, in order, into an H.264 clip, which
``deeplab.video.segment_video`` then reads, segments and writes like any user's video.
For each model and each ``--smooth`` setting: frames per second of the whole pass
(decode, segment, encode the overlay, write the label PNGs), flicker (the share of pixels
whose label changes from one frame to the next) and, for a CamVid model, the val mIoU of
the label PNGs against the ground truth (measured, not tuned: nothing is chosen on val).

    pip install -e ".[test]"
    DEEPLAB_WEIGHTS_DIR=../shared/weights python benchmarks/bench_video.py \
        --camvid-weights runs/camvid/best.pt
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from deeplab.data.labels import CAMVID_CLASSES
from deeplab.metrics import ConfusionMatrix
from deeplab.predict import segmenter_for
from deeplab.video import segment_video


def make_clip(camvid: Path, out: Path) -> tuple[Path, list[Path]]:
    """The val frames in order as a 15 Hz H.264 clip; returns it and the frames' masks."""
    pairs = [line.split() for line in (camvid / "val.txt").read_text().splitlines() if line]
    pairs.sort(key=lambda p: p[0])
    clip = out / "camvid_val_0016E5.mp4"
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("libx264", rate=15, options={"crf": "18"})
        first = Image.open(camvid / pairs[0][0])
        stream.width, stream.height = first.size
        stream.pix_fmt = "yuv420p"
        for image, _ in pairs:
            rgb = np.asarray(Image.open(camvid / image).convert("RGB"))
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return clip, [camvid / mask for _, mask in pairs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--camvid", type=Path, default=Path("../shared/data/camvid"))
    p.add_argument("--camvid-weights", help="a CamVid checkpoint: also scores val mIoU")
    p.add_argument("--models", nargs="*", default=["deeplabv3_mnv2_pascal_quant",
                                                   "deeplabv3_257_mv_gpu"])  # fmt: skip
    p.add_argument("--smooth", type=float, nargs="*", default=[0.0, 0.5])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    print(f"CPU: {cpu}; {args.threads} threads; torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        clip, masks = make_clip(args.camvid, Path(tmp))
        print(f"clip: {clip.name}, {len(masks)} frames at 15 Hz, 480x360\n")
        runs = [(name, dict(model=name)) for name in args.models]
        if args.camvid_weights:
            runs.append((Path(args.camvid_weights).name, dict(weights=args.camvid_weights)))
        print(f"{'model':32s} {'runtime':12s} {'smooth':>6s} {'frames/s':>9s} "
              f"{'flicker':>8s} {'val mIoU':>9s}")  # fmt: skip
        for name, source in runs:
            seg = segmenter_for(**source, runtime="auto")
            seg.predict(Image.open(args.camvid / "val" / masks[0].name))  # warm-up
            for smooth in args.smooth:
                out = Path(tmp) / f"{name}-{smooth}"
                result = segment_video(seg, clip, out, labels=True, progress=False,
                                       smooth=smooth or None)  # fmt: skip
                miou = ""
                if tuple(seg.class_names) == tuple(CAMVID_CLASSES):
                    confusion = ConfusionMatrix(len(CAMVID_CLASSES))
                    frames = sorted((out / f"{clip.stem}_labels").glob("*.png"))
                    for frame, mask in zip(frames, masks, strict=True):
                        target = np.asarray(Image.open(mask)).astype(np.int64)
                        target[target >= len(CAMVID_CLASSES)] = 255  # 11: CamVid's void
                        confusion.update(np.asarray(Image.open(frame)).astype(np.int64), target)
                    miou = f"{100 * confusion.compute()['miou']:8.2f}%"
                print(f"{name:32s} {seg.runtime:12s} {smooth:6.2f} "
                      f"{result.frames_per_second:9.1f} {100 * result.flicker:7.2f}% {miou:>9s}",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
