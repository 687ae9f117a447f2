"""``deeplab predict``: the segmenter a user's arguments mean, and files through it.

``segmenter_for`` picks the model (a weight file, a zoo entry, the default) and
``use_runtime`` what runs it (PyTorch or onnxruntime, ``runtimes``); ``predict_files``
reads the next photos and writes the last outputs in threads while the network runs
(decoding, PNG/JPEG encoding and the network all work outside the GIL);
``save_prediction`` writes one prediction's files.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deeplab import viz
from deeplab.checkpoint import ModelInfo
from deeplab.data.labelme import mask_to_labelme
from deeplab.export import ExportError
from deeplab.extras import require
from deeplab.inference import Prediction, Segmenter
from deeplab.quick import through_files
from deeplab.runtimes import RUNTIMES, auto_runtime, onnx_network
from deeplab.weights import list_entries

log = logging.getLogger(__name__)
OUTPUTS = viz.OUTPUTS  # the files predict writes for each image


def segmenter_for(
    *,
    model: str | None = None,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    dataset: str | None = None,
    model_options: dict | None = None,
    runtime: str = "torch",
    **options: Any,
) -> Segmenter:
    """The Segmenter ``deeplab predict`` asks for: ``weights`` (a checkpoint, or a bare file
    of the registered ``model``), else the zoo entry ``model``, else the default VOC model.
    ``options`` are the Segmenter's test-time options; ``runtime`` see ``use_runtime``."""
    if weights:
        seg = Segmenter.from_weights(weights, model=model, num_classes=num_classes,
                                     dataset=dataset, model_options=model_options,
                                     **options)  # fmt: skip
        return use_runtime(seg, runtime)
    given = [flag for flag, v in (("--num-classes", num_classes), ("--dataset", dataset),
                                  ("--model-option", model_options)) if v]  # fmt: skip
    if given:
        raise ValueError(f"{', '.join(given)} describe a bare --weights file; a zoo model "
                         "brings its own classes and options")  # fmt: skip
    zoo = [e.name for e in list_entries(kind="segmentation")]
    if model is not None and model not in zoo:
        raise ValueError(f"{model!r} is not a pretrained zoo entry ({', '.join(zoo)}); for an "
                         "architecture of your own training pass its file with --weights")
    return use_runtime(Segmenter.from_pretrained(model, **options), runtime)


def use_runtime(seg: Segmenter, runtime: str) -> Segmenter:
    """The segmenter with its network run by ``runtime``: ``torch``; ``onnxruntime`` (the
    network exported once, as ``deeplab export --raw`` does, to the cache, keyed by its
    weights); ``auto``: onnxruntime where it applies (installed, CPU, fp32, a PyTorch
    network) and measured faster here: 35 vs 100 ms for the default model on an Intel Xeon,
    docs/BENCHMARKS.md. ``seg.runtime`` says which runs."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
    network = seg.model
    if runtime == "torch" or seg.runtime == "onnxruntime":
        return seg
    if runtime == "onnxruntime":
        require("export", "--runtime onnxruntime", ("onnxruntime",))
    chosen, why = auto_runtime(seg.device, seg.precision)
    if chosen != "onnxruntime" or not any(True for _ in network.parameters()):
        if runtime == "onnxruntime":
            raise ValueError(f"--runtime onnxruntime cannot run this model: {why}")
        return seg
    info = ModelInfo(
        arch=getattr(network, "build_spec", {}).get("arch", type(network).__name__),
        options={"num_classes": seg.num_classes, "output_stride": seg._stride(),
                 "align_corners": seg.align_corners},
        class_names=seg.class_names, mean=tuple(seg.mean.flatten().tolist()),
        std=tuple(seg.std.flatten().tolist()), palette=None, input_size=seg.input_size,
    )  # fmt: skip
    try:
        seg.model = onnx_network(network, info, threads=torch.get_num_threads())
    except (ExportError, ValueError, OSError) as e:
        if runtime == "onnxruntime":
            raise
        log.info("onnxruntime not used: %s", e)
        return seg
    seg.runtime = "onnxruntime"
    return seg


def save_prediction(
    pred: Prediction,
    out_dir: str | Path,
    stem: str,
    *,
    alpha: float = 0.5,
    probabilities: bool = False,
    portrait: str | None = None,
    outputs: Sequence[str] = OUTPUTS,
) -> list[Path]:
    """Write one prediction's files into ``out_dir``; returns their paths.

    ``outputs`` (default all three): ``labels`` (``<stem>.png``, index PNG with palette),
    ``color`` (``<stem>_color.png``), ``overlay`` (``<stem>_overlay.jpg``); then
    ``<stem>_probs.npy`` (CxHxW float32) with ``probabilities``, and ``<stem>_portrait.jpg``
    (class ``portrait`` sharp, the rest blurred) when a class is named.
    """
    if pred.image is None:
        raise ValueError("this Prediction carries no image; make it with Segmenter.predict")
    if probabilities and pred.probabilities is None:
        raise ValueError("predict with probabilities=True to save them")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = viz.write_outputs(out, stem, pred.labels, pred.image, pred.palette,
                                outputs=outputs, alpha=alpha)  # fmt: skip
    if probabilities:
        written.append(out / f"{stem}_probs.npy")
        np.save(written[-1], pred.probabilities.astype(np.float32))
    if portrait is not None:
        written += viz.write_outputs(out, stem, pred.labels, pred.image, outputs=(),
                                     keep=pred.mask(portrait))  # fmt: skip
    return written


def predict_files(
    segmenter: Segmenter,
    paths: Sequence[Path],
    out_dir: str | Path,
    *,
    alpha: float = 0.5,
    probabilities: bool = False,
    portrait: str | None = None,
    labelme: bool = False,
    io_threads: int = 2,
    outputs: Sequence[str] = OUTPUTS,
) -> Iterator[tuple[Path, Prediction | Exception]]:
    """Segment each file and write its outputs (``save_prediction``) into ``out_dir``.

    Yields ``(path, prediction)``, or ``(path, error)`` for a file that cannot be read, so
    that one bad file is reported and the others are still written. Two files with the
    same name in different folders are written as ``stem`` and ``stem-2``. ``labelme``:
    also ``<stem>.json``, the prediction as labelme polygons to correct by hand, and
    ``labels.txt`` for ``deeplab labelme2voc``. ``io_threads`` threads decode the next
    images and encode the last outputs while the model runs (Pillow and the model both
    work outside the GIL); a file's outputs are on disk when it is yielded.
    """
    if portrait is not None and portrait not in segmenter.class_names:
        raise ValueError(f"--portrait {portrait!r} is not a class of this model; choose one "
                         f"of: {', '.join(segmenter.class_names)}")  # fmt: skip
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the outputs")
    if labelme:
        out.mkdir(parents=True, exist_ok=True)
        names = ["__ignore__", *segmenter.class_names]  # for deeplab labelme2voc
        (out / "labels.txt").write_text("".join(f"{n}\n" for n in names))

    def write(path: Path, pred: Prediction, stem: str) -> None:
        save_prediction(pred, out, stem, alpha=alpha, probabilities=probabilities,
                        portrait=portrait, outputs=outputs)  # fmt: skip
        if labelme:
            relative = os.path.relpath(path.resolve(), out.resolve())
            doc = mask_to_labelme(pred.labels, segmenter.class_names, image_path=relative)
            (out / f"{stem}.json").write_text(json.dumps(doc, indent=1))

    def segment(image: np.ndarray) -> Prediction:
        return segmenter.predict(image, probabilities=probabilities)

    yield from through_files(paths, segment, write, io_threads=io_threads)
