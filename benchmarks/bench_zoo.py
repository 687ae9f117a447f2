"""Zoo models on real photos: accuracy on the labelme VOC examples and CPU time per image.

    python benchmarks/bench_zoo.py [--shared ../shared] [--repeats 3] [--threads 2]

For every segmentation entry of the zoo: mIoU / pixel accuracy on the three
PASCAL VOC photos of ``shared/data/labelme_voc_example`` (labelme polygons ->
masks, predictions resized back to the photo), the forward time at the entry's
input size (median of ``--repeats``) and that time as a ratio of the default
entry's, plus the TFLite interpreter's time on the same file when
``ai-edge-litert`` is installed. Three photos are a smoke check, not a VOC
evaluation: use ``deeplab eval`` on VOC val for that.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from deeplab.data.labelme import convert_labelme_file, read_labels
from deeplab.hub import create_model
from deeplab.metrics import ConfusionMatrix
from deeplab.weights import default_entry, entry_path, list_entries


def normalise(image: Image.Image, entry) -> torch.Tensor:
    h, w = entry.input_size
    x = torch.from_numpy(np.asarray(image.resize((w, h), Image.BILINEAR)).copy())
    x = x.permute(2, 0, 1).float()
    mean = torch.tensor(entry.mean)[:, None, None]
    std = torch.tensor(entry.std)[:, None, None]
    return ((x - mean) / std)[None]


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tflite_time(path: Path, image: Image.Image, entry, repeats: int, threads: int) -> float | None:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return None
    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    h, w = entry.input_size
    pixels = np.asarray(image.resize((w, h), Image.BILINEAR))[None]
    x = pixels if inp["dtype"] == np.uint8 else (pixels / 127.5 - 1).astype(np.float32)

    def run():
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()

    return timed(run, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=os.environ.get("DEEPLAB_SHARED", "../shared"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    folder = Path(args.shared) / "data" / "labelme_voc_example"
    labels = read_labels(folder / "labels.txt")
    photos = [convert_labelme_file(p, labels)[:2] for p in sorted(folder.glob("*.json"))]

    default = default_entry()
    rows = []
    for entry in list_entries(kind="segmentation"):
        path = entry_path(entry, progress=False)
        model = create_model(entry.arch, pretrained=str(path)).eval()
        cm = ConfusionMatrix(entry.num_classes)
        for image, mask in photos:
            with torch.no_grad():
                logits = model(normalise(image, entry))
            logits = F.interpolate(logits, size=mask.shape, mode="bilinear", align_corners=True)
            cm.update(logits.argmax(1)[0], torch.from_numpy(mask.astype(np.int64)))
        scores = cm.compute()
        x = normalise(photos[0][0], entry)
        with torch.no_grad():
            seconds = timed(lambda m=model, x=x: m(x), args.repeats)
        ref = tflite_time(path, photos[0][0], entry, args.repeats, args.threads)
        rows.append((entry, scores, seconds, ref))

    base = next(s for e, _, s, _ in rows if e.name == default.name)
    print(f"threads={args.threads}, repeats={args.repeats}, photos={len(photos)}")
    print("| entry | input | OS | mIoU (3 photos) | pixel acc | s / image | vs default "
          "| TFLite interpreter s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for entry, scores, seconds, ref in rows:
        mark = " (default)" if entry.name == default.name else ""
        ref_text = f"{ref:.3f}" if ref is not None else "-"
        print(
            f"| {entry.name}{mark} | {entry.input_size[0]} | {entry.output_stride} "
            f"| {scores['miou']:.3f} | {scores['pixel_acc']:.3f} | {seconds:.3f} "
            f"| {seconds / base:.2f}x | {ref_text} |"
        )


if __name__ == "__main__":
    main()
