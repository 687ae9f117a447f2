"""8-bit models, judged by the mIoU they cost, as Google shipped DeepLab's mobile models.

Google's 8-bit MobileNetV2 VOC model scored 74.26 mIoU against 75.32 in float: about a
point, for a file four times smaller and faster on phones and CPUs. Pixel agreement
with the float model is the wrong yardstick (Google's own 8-bit file agrees with its
float on 97% of pixels); the mIoU on labelled data from the user's domain is the right
one. ``quantize_onnx`` takes an exported file (``deeplab export``'s contract: uint8 in,
labels out) and quantizes its network with onnxruntime's static QDQ quantization,
calibrated on the user's photos: int8 weights per output channel, uint8 activations,
the normalisation, resizes and argmax left in float, and the layers most sensitive to
quantization (the first convolution, which sees raw pixels, and the classifier) kept in
float, as Nagel et al. (ICCV 2019) and the TF release's own recipe advise for
DeepLab-v3+ MobileNetV2. ``compare`` scores float and int8 side by side.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from deeplab.data.datasets import build_dataset, read_mask
from deeplab.data.images import read_image
from deeplab.export import (
    ExportError,
    export,
    export_tflite,
    onnx_session,
    read_metadata,
    tflite_interpreter,
)
from deeplab.extras import require
from deeplab.metrics import ConfusionMatrix

# The network's operators quantized; the pre- and post-processing of the contract (cast,
# normalisation, pad, resize, argmax) stays in float.
NETWORK_OPS = ("Conv", "Add", "Relu", "Clip", "Mul", "Concat", "GlobalAveragePool",
               "AveragePool", "MaxPool")  # fmt: skip
METHODS = ("minmax", "percentile", "entropy")


@dataclass(frozen=True)
class Int8Recipe:
    """How a float file becomes int8 (the defaults were chosen by measurement,
    docs/BENCHMARKS.md)."""

    per_channel: bool = True
    method: str = "percentile"  # minmax | percentile | entropy
    percentile: float = 99.999
    keep_float: tuple[str, ...] = ("first", "last")  # the stem conv, the classifier


# Photos calibrated at a time: one, so that photos of any size mix (a slice's tensors are
# stacked) and memory stays that of one photo; the histograms are merged between slices.
CHUNK = 1


class CalibrationPhotos:
    """onnxruntime's calibration reader over uint8 photos (the contract's ``image``), read
    ``CHUNK`` at a time: its histogram calibrators keep every intermediate tensor of what
    they are given, so 60 frames of 480x360 at once took 22 GB and were killed."""

    def __init__(self, photos: Sequence[np.ndarray]) -> None:
        self.photos = list(photos)
        self.start, self.end = 0, len(self.photos)

    def __len__(self) -> int:
        return len(self.photos)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, min(end_index, len(self.photos))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.start >= self.end:
            return None
        self.start += 1
        return {"image": np.ascontiguousarray(self.photos[self.start - 1])[None]}


@contextlib.contextmanager
def _root_log_level(level: int):
    root = logging.getLogger()
    before = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(before)


def quantize_onnx(float_path: str | Path, out: str | Path, photos: Sequence[np.ndarray], *,
                  recipe: Int8Recipe = Int8Recipe()) -> Path:  # fmt: skip
    """``float_path`` (a labels-contract export) quantized to int8 at ``out``, calibrated on
    ``photos``; the metadata are the float file's, plus ``quantization``."""
    require("export", "int8 export", ("onnx", "onnxruntime"))
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if recipe.method not in METHODS:
        raise ExportError(f"calibration {recipe.method!r}: choose one of {', '.join(METHODS)}")
    if not photos:
        raise ExportError("int8 needs calibration photos from your domain: --calibrate DIR")
    meta = read_metadata(float_path)
    if meta.get("contract") != "labels":
        raise ExportError("int8 export takes the labels contract (an export without --raw)")
    model = onnx.load(str(float_path))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    exclude = ([convs[0]] if "first" in recipe.keep_float and convs else []) + \
        ([convs[-1]] if "last" in recipe.keep_float and convs else [])  # fmt: skip
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[recipe.method]  # fmt: skip
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # onnxruntime's calibrators print a line per photo, and its root-logger warning asks for
    # a pre-processing pass that this graph does not need (BN is folded at export): quiet.
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()), \
            _root_log_level(logging.ERROR):  # fmt: skip
        raw = Path(tmp) / "int8.onnx"
        quantize_static(str(float_path), str(raw), CalibrationPhotos(photos),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=list(NETWORK_OPS),
                        per_channel=recipe.per_channel, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                        calibrate_method=method,
                        extra_options={"CalibPercentile": recipe.percentile,
                                       "CalibMovingAverage": True,
                                       # calibrate CHUNK photos at a time, whatever the
                                       # method (onnxruntime names the option for min-max)
                                       "CalibStridedMinMax": CHUNK})  # fmt: skip
        quantized = onnx.load(str(raw))
    del quantized.metadata_props[:]
    for prop in model.metadata_props:
        entry = quantized.metadata_props.add()
        entry.key, entry.value = prop.key, prop.value
    entry = quantized.metadata_props.add()
    entry.key = "quantization"
    entry.value = json.dumps({"int8": asdict(recipe), "calibration_photos": len(photos)})
    onnx.save(quantized, str(out))
    return out


class OnnxLabeler:
    """A labels-contract ONNX file: ``labels(rgb)`` at the photo's size."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        self.session = onnx_session(path, threads=threads)

    def labels(self, rgb: np.ndarray) -> np.ndarray:
        return self.session.run(["labels"], {"image": np.ascontiguousarray(rgb)[None]})[0][0]


class TfliteLabeler:
    """An exported .tflite file (fixed size, NHWC logits; float or int8 in and out) in
    Google's interpreter: the photo resized to the file's size and normalised as its
    sidecar says, quantized when the input is, the argmax resized back (nearest)."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        self.interpreter = tflite_interpreter(path, threads=threads)
        sidecar = json.loads(Path(f"{path}.json").read_text())
        (self.inp,), (self.out,) = (self.interpreter.get_input_details(),
                                    self.interpreter.get_output_details())  # fmt: skip
        self.size = tuple(int(v) for v in self.inp["shape"][1:3])
        self.mean = np.asarray(sidecar["mean"], np.float32)
        self.std = np.asarray(sidecar["std"], np.float32)

    def labels(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        resized = Image.fromarray(rgb).resize(self.size[::-1], Image.Resampling.BILINEAR)
        x = (np.asarray(resized, np.float32) - self.mean) / self.std
        scale, zero = self.inp["quantization"]
        if self.inp["dtype"] != np.float32:  # a full-integer model takes quantized input
            x = np.clip(np.round(x / scale + zero), -128, 127)
        self.interpreter.set_tensor(self.inp["index"], x[None].astype(self.inp["dtype"]))
        self.interpreter.invoke()
        scores = self.interpreter.get_tensor(self.out["index"])[0]
        labels = scores.argmax(-1).astype(np.uint8)  # the dequantization keeps the order
        return np.asarray(Image.fromarray(labels).resize((w, h), Image.Resampling.NEAREST))


def labeler(path: str | Path, *, threads: int | None = None):
    return TfliteLabeler(path, threads=threads) if str(path).endswith(".tflite") else \
        OnnxLabeler(path, threads=threads)  # fmt: skip


def ms_per_image(paths: Sequence[str | Path], photos: Sequence[np.ndarray], *, threads: int,
                 repeats: int = 3) -> list[float]:  # fmt: skip
    """Median milliseconds per photo of each file (after a warm-up), the files taking turns
    in each of ``repeats`` rounds: timed one after the other, two files with the same graph
    ran 24 and 35 ms on a 2-core machine, as its clock and neighbours changed."""
    runs = [labeler(path, threads=threads) for path in paths]
    for run in runs:
        for photo in photos[:2]:
            run.labels(photo)
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for run, kept in zip(runs, times, strict=True):
            for photo in photos:
                start = time.perf_counter()
                run.labels(photo)
                kept.append(time.perf_counter() - start)
    return [1000 * statistics.median(kept) for kept in times]


def label_agreement(a: str | Path, b: str | Path, photos: Sequence[np.ndarray]) -> float:
    """Share of pixels two files label alike on ``photos``."""
    ra, rb = labeler(a), labeler(b)
    same = total = 0
    for photo in photos:
        la, lb = ra.labels(photo), rb.labels(photo)
        same += int((la == lb).sum())
        total += la.size
    return same / max(total, 1)


class LabelledSplit:
    """A dataset split's (photo, mask) pairs, read each time it is iterated (the float
    and the int8 file are scored one after the other, without holding the split)."""

    def __init__(self, dataset: str, root: str | Path, split: str, **options) -> None:
        self.data = build_dataset(dataset, root=root, split=split, **options)
        self.name = f"{dataset} {split}, {len(self.data.pairs)} images"

    def __len__(self) -> int:
        return len(self.data.pairs)

    def __iter__(self):
        for image, mask in self.data.pairs:
            yield read_image(image), read_mask(mask, self.data.info)


def miou(path: str | Path, pairs, num_classes: int) -> float:
    """Mean IoU of a file on (photo, mask) pairs (the VOC measure: one confusion matrix)."""
    run = labeler(path)
    cm = ConfusionMatrix(num_classes)
    for rgb, mask in pairs:
        cm.update(run.labels(rgb), mask)
    return float(cm.compute()["miou"])


@dataclass
class Int8Report:
    """What ``export_int8`` made and measured: paths, sizes, speeds and, with labelled data,
    the mIoU of both files (else their pixel agreement on the check photos)."""

    path: Path
    float_mb: float
    int8_mb: float
    float_ms: float
    int8_ms: float
    photos: int  # calibration photos
    float_miou: float | None = None
    int8_miou: float | None = None
    scored_on: str = ""
    agreement: float | None = None
    max_drop: float = 1.0

    @property
    def drop(self) -> float | None:
        if self.float_miou is None or self.int8_miou is None:
            return None
        return 100 * (self.float_miou - self.int8_miou)

    @property
    def ok(self) -> bool:
        return self.drop is None or self.drop <= self.max_drop

    def table(self) -> str:
        rows = [("float", self.float_miou, self.float_ms, self.float_mb),
                ("int8", self.int8_miou, self.int8_ms, self.int8_mb)]  # fmt: skip
        head = f"| | mIoU ({self.scored_on}) |" if self.scored_on else "| |"
        lines = [head + " ms per image | MB |", "|---" * (4 if self.scored_on else 3) + "|"]
        for name, miou, ms, mb in rows:
            score = f" {100 * miou:.2f} |" if miou is not None else ""
            lines.append(f"| {name} |{score} {ms:.1f} | {mb:.1f} |")
        return "\n".join(lines)


def export_int8(model, info, out: str | Path, *, calibration: Sequence[np.ndarray],
                recipe: Int8Recipe = Int8Recipe(), timing: Sequence[np.ndarray],
                labelled: LabelledSplit | None = None,
                scored_on: str = "", max_drop: float = 1.0, threads: int = 2,
                format: str = "onnx", input_size: tuple[int, int] | None = None,
                ) -> Int8Report:  # fmt: skip
    """Export ``model`` in float and quantize it on ``calibration`` photos into ``out``
    (``format`` onnx: the labels contract, static QDQ; tflite: full integer), time both
    files on ``timing`` photos, and score both on ``labelled`` (photo, mask) pairs when
    given, else compare their labels on ``timing``."""
    with tempfile.TemporaryDirectory() as tmp:
        if format == "onnx":
            float_path, _ = export(model, info, Path(tmp) / "float.onnx")  # checked on photos
            path = quantize_onnx(float_path, out, calibration, recipe=recipe)
        elif format == "tflite":
            float_path = export_tflite(model, info, Path(tmp) / "float.tflite",
                                       input_size=input_size)  # fmt: skip
            path = export_tflite(model, info, out, input_size=input_size,
                                 calibration=list(calibration))  # fmt: skip
        else:
            raise ExportError(f"--int8 writes onnx or tflite, not {format}")
        ms = ms_per_image([float_path, path], timing, threads=threads)
        report = Int8Report(path=Path(path), float_mb=float_path.stat().st_size / 1e6,
                            int8_mb=Path(path).stat().st_size / 1e6,
                            float_ms=ms[0], int8_ms=ms[1],
                            photos=len(calibration), scored_on=scored_on,
                            max_drop=max_drop)  # fmt: skip
        if labelled:
            report.float_miou = miou(float_path, labelled, info.num_classes)
            report.int8_miou = miou(path, labelled, info.num_classes)
        else:
            report.agreement = label_agreement(float_path, path, timing)
    return report
