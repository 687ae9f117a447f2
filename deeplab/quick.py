"""Files through a model, and ``deeplab predict`` without importing torch when it can.

``through_files`` is the one file pipeline of ``deeplab predict``: threads decode the next
photos and encode the last outputs while the model works (Pillow, onnxruntime and torch
all release the GIL), the writes bounded so memory does not grow with the folder.

The quick path: with its default options on a CPU, ``deeplab predict`` runs the model's
whole pipeline as the exported ONNX contract (uint8 photo in, labels out: normalisation,
canvas or grid padding, resizes and argmax in the graph). A first run exports it into the
cache, keyed by the weight file's hash and the options that build the model; later runs
find it there and need onnxruntime, numpy and Pillow alone. Importing torch took 2.65 s
of a one-photo run on a 2-core AMD EPYC (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

import deeplab
from deeplab import viz
from deeplab.data.images import read_image
from deeplab.extras import available
from deeplab.weights import cache_dir, default_entry, get_entry, sha256_of


def through_files(
    paths: Sequence[Path],
    segment: Callable[[np.ndarray], Any],
    write: Callable[[Path, Any, str], None],
    *,
    io_threads: int = 2,
) -> Iterator[tuple[Path, Any]]:
    """``segment(rgb)`` each file and ``write(path, result, stem)`` it; yields ``(path,
    result)``, or ``(path, error)`` for a file that cannot be read (the others are still
    written). Two files of one name in different folders get stems ``name`` and
    ``name-2``. A file's outputs are on disk when it is yielded."""
    stems: set[str] = set()
    with ThreadPoolExecutor(max(1, io_threads)) as pool:
        reads = deque(pool.submit(read_image, p) for p in paths[: io_threads + 1])
        writes: deque = deque()
        for k, path in enumerate(paths):
            try:
                image = reads.popleft().result()
            except (OSError, ValueError) as err:
                image = err
            if k + io_threads + 1 < len(paths):  # keep the decoder busy ahead of the model
                reads.append(pool.submit(read_image, paths[k + io_threads + 1]))
            if isinstance(image, Exception):
                while writes:  # in order: the files before it first
                    done_path, done, future = writes.popleft()
                    future.result()
                    yield done_path, done
                yield path, image
                continue
            result = segment(image)
            stem, n = path.stem, 1
            while stem in stems:
                n += 1
                stem = f"{path.stem}-{n}"
            stems.add(stem)
            writes.append((path, result, pool.submit(write, path, result, stem)))
            while len(writes) > io_threads:  # bounded: memory does not grow with the folder
                done_path, done, future = writes.popleft()
                future.result()
                yield done_path, done
        for done_path, done, future in writes:
            future.result()
            yield done_path, done


# --- the quick path -----------------------------------------------------------------------


def cache_path(*, model: str | None, weights: str | None, options: dict[str, Any]) -> Path:
    """Where the pipeline of this model is cached: keyed by deeplab's version, the weight
    file's SHA-256 (a zoo entry's published one) and the options that build the model."""
    if weights:
        ident = ["file", sha256_of(weights)]
    else:
        entry = get_entry(model) if model else default_entry()
        ident = ["zoo", entry.name, entry.sha256]
    key = json.dumps([deeplab.__version__, ident, options], sort_keys=True, default=str)
    return cache_dir() / "onnx" / f"predict-{hashlib.sha256(key.encode()).hexdigest()[:24]}.onnx"


def usable() -> bool:
    """Whether onnxruntime is here to run a cached pipeline."""
    return available("export", ("onnxruntime",))


class Pipeline:
    """A cached labels-contract ONNX file run by onnxruntime: ``labels(rgb)`` and the
    model's class names and palette from the file's metadata."""

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Idle threads sleep: the decoding and writing threads need the cores in between.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])  # fmt: skip
        meta = self.session.get_modelmeta().custom_metadata_map
        self.contract = meta.get("contract", "")  # "labels": uint8 photo in, labels out
        self.class_names = tuple(json.loads(meta.get("class_names", "[]")))
        palette = json.loads(meta.get("palette", "null"))
        self.palette = [tuple(c) for c in palette] if palette else None

    def labels(self, rgb: np.ndarray) -> np.ndarray:
        (labels,) = self.session.run(["labels"], {"image": np.ascontiguousarray(rgb)[None]})
        return labels[0].astype(np.uint8, copy=False)

    def predict_files(self, paths: Sequence[Path], out: Path, *, outputs: Sequence[str],
                      alpha: float = 0.5,
                      portrait: str | None = None) -> Iterator[tuple[Path, Any]]:  # fmt: skip
        """Like ``predict.predict_files``: yields ``(path, summary line)`` or an error."""
        if portrait is not None and portrait not in self.class_names:
            raise ValueError(f"--portrait {portrait!r} is not a class of this model; choose one "
                             f"of: {', '.join(self.class_names)}")  # fmt: skip
        keep = self.class_names.index(portrait) if portrait is not None else None
        out.mkdir(parents=True, exist_ok=True)

        def segment(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return rgb, self.labels(rgb)

        def write(path: Path, result, stem: str) -> None:
            rgb, labels = result
            viz.write_outputs(out, stem, labels, rgb, self.palette, outputs=outputs, alpha=alpha,
                              keep=None if keep is None else labels == keep)  # fmt: skip

        for path, result in through_files(paths, segment, write):
            yield path, result if isinstance(result, Exception) else Summary(
                viz.summary(result[1], self.class_names))


class Summary(str):
    """The line printed for one image (``summary()`` as ``Prediction`` has it)."""

    def summary(self) -> str:
        return str(self)
