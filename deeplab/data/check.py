"""Dataset checks and class statistics (``deeplab check-data``).

``check_pairs(pairs, info)`` reads every (image, mask) pair once and reports, without
stopping at the first error: unreadable files, image/mask size mismatches, mask values
outside the classes, and RGB colour masks (3-channel masks whose colours all belong to a
known palette; ``convert_dir`` writes them as index PNGs). It also counts class pixels
and computes median-frequency class weights (Eigen & Fergus, ICCV 2015, sec. 4.1):
``w_c = median(freq) / freq_c`` with ``freq_c`` = pixels of class c divided by the
pixels of the images in which c appears (ignore pixels not counted), the weighting
SegNet used on CamVid. Classes that never appear get weight 0.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from deeplab import viz
from deeplab.data.datasets import (
    DatasetInfo,
    build_dataset,
    dataset_info,
    read_class_names,
    read_raw_mask,
)
from deeplab.data.images import DataError, read_image
from deeplab.data.labels import (
    CAMVID_PALETTE,
    CITYSCAPES_PALETTE,
    IGNORE_INDEX,
    voc_palette,
)
from deeplab.data.layouts import Pair, folder_pairs
from deeplab.table import text_table

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Problem:
    """One file with a problem; ``kind``: unreadable, missing, size, values or rgb."""

    kind: str
    path: Path
    message: str


@dataclass
class DataReport:
    """What ``check_pairs`` found: problems and class pixel statistics."""

    class_names: tuple[str, ...]
    num_images: int = 0
    pixel_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    present_pixels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ignore_pixels: int = 0
    total_pixels: int = 0
    problems: list[Problem] = field(default_factory=list)
    rgb_masks: list[tuple[Path, str | None]] = field(default_factory=list)
    converted: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def frequencies(self) -> np.ndarray:
        """Each class's share of all counted pixels, ignore pixels included in the total."""
        return self.pixel_counts / max(self.total_pixels, 1)

    def ignore_fraction(self) -> float:
        return self.ignore_pixels / max(self.total_pixels, 1)

    def median_frequency_weights(self) -> np.ndarray:
        """``median(freq) / freq_c`` over images where c appears; 0 for absent classes."""
        present = self.present_pixels > 0
        freq = np.zeros(len(self.class_names))
        freq[present] = self.pixel_counts[present] / self.present_pixels[present]
        weights = np.zeros_like(freq)
        seen = freq > 0
        if seen.any():
            weights[seen] = np.median(freq[seen]) / freq[seen]
        return weights

    def to_dict(self) -> dict:
        """JSON-ready summary; ``class_weights`` can be passed to the training loss."""
        return {
            "class_names": list(self.class_names),
            "num_images": self.num_images,
            "pixel_frequencies": [round(float(f), 6) for f in self.frequencies()],
            "ignore_fraction": round(self.ignore_fraction(), 6),
            "class_weights": [round(float(w), 6) for w in self.median_frequency_weights()],
            "weighting": "median frequency (Eigen & Fergus 2015)",
            "problems": [{"kind": p.kind, "path": str(p.path)} for p in self.problems],
        }

    def format(self, max_problems: int = 20) -> str:
        """A printable report: problems first, then the class table."""
        lines = [f"{self.num_images} image/mask pairs checked, {len(self.problems)} problem(s)"]
        for p in self.problems[:max_problems]:
            lines.append(f"  [{p.kind}] {p.message}")
        if len(self.problems) > max_problems:
            lines.append(f"  ... and {len(self.problems) - max_problems} more")
        if self.total_pixels:
            freqs, weights = self.frequencies(), self.median_frequency_weights()
            rows = [(i, name, f"{100 * freqs[i]:.2f}", f"{weights[i]:.4f}")
                    for i, name in enumerate(self.class_names)]  # fmt: skip
            rows.append((IGNORE_INDEX, "(ignore)", f"{100 * self.ignore_fraction():.2f}", ""))
            lines.append(text_table(("id", "class", "pixels %", "weight"), rows,
                                    right=(0, 2, 3)))  # fmt: skip
        return "\n".join(lines)


# --- RGB colour masks --------------------------------------------------------------------


def known_palettes(info: DatasetInfo | None = None) -> dict[str, dict[RGB, int]]:
    """Colour -> class id for the dataset's own colours and the common label palettes.

    Black maps to ignore in the CamVid and Cityscapes colour codings (their "void");
    in the VOC colour map black is background and (224, 224, 192) is ignore.
    """
    palettes: dict[str, dict[RGB, int]] = {}
    if info is not None and info.colors:
        palettes[info.name] = _color_table(info.colors)
    palettes.setdefault("voc", {c: i for i, c in enumerate(voc_palette(256))})
    palettes.setdefault("camvid", _color_table(CAMVID_PALETTE))
    palettes.setdefault("cityscapes", _color_table(CITYSCAPES_PALETTE))
    return palettes


def _color_table(colors: Sequence[RGB]) -> dict[RGB, int]:
    table = {tuple(c): i for i, c in enumerate(colors)}
    table.setdefault((0, 0, 0), IGNORE_INDEX)
    table.setdefault((224, 224, 192), IGNORE_INDEX)
    return table


def mask_colors(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct colours of an HxWx3 mask ([K,3] uint8) and each pixel's colour index."""
    keys = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    uniq, inverse = np.unique(keys.ravel(), return_inverse=True)
    colors = np.stack([(uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255], axis=1)
    return colors.astype(np.uint8), inverse.reshape(rgb.shape[:2])


def match_palette(
    colors: np.ndarray, palettes: Mapping[str, Mapping[RGB, int]]
) -> str | None:
    """The first palette that contains every colour in ``colors`` ([K,3]), else None."""
    wanted = [tuple(int(v) for v in c) for c in colors]
    for name, table in palettes.items():
        if all(c in table for c in wanted):
            return name
    return None


def rgb_to_index(rgb: np.ndarray, table: Mapping[RGB, int], path: Path | str = "<mask>"):
    """An HxWx3 colour mask -> uint8 HxW class ids through ``table`` (colour -> id)."""
    colors, inverse = mask_colors(rgb)
    ids = []
    for c in colors:
        key = tuple(int(v) for v in c)
        if key not in table:
            raise DataError(
                "rgb", path, f"colour {key} in {path} is not in the palette; fix the mask"
            )
        ids.append(table[key])
    return np.asarray(ids, dtype=np.uint8)[inverse]


# --- the check ---------------------------------------------------------------------------


def check_pairs(
    pairs: Iterable[Pair],
    info: DatasetInfo,
    *,
    verify_images: bool = True,
    convert_dir: str | Path | None = None,
    progress: bool = False,
    workers: int = 2,
) -> DataReport:
    """Check every pair and gather class statistics; never raises for a bad file.

    ``verify_images=False`` reads only image headers (sizes), much faster than decoding.
    ``convert_dir``: write RGB palette masks there as index PNGs named ``<mask stem>.png``.
    ``workers`` threads read the files (Pillow decodes outside the GIL).
    """
    pairs = list(pairs)
    n = info.num_classes
    report = DataReport(
        class_names=info.class_names,
        pixel_counts=np.zeros(n, np.int64),
        present_pixels=np.zeros(n, np.int64),
    )
    palettes = known_palettes(info)
    if convert_dir is not None:
        Path(convert_dir).mkdir(parents=True, exist_ok=True)

    def check(pair: Pair) -> tuple[np.ndarray | None, Problem | None, tuple | None, Path | None]:
        image_path, mask_path = pair
        rgb = converted = None
        try:
            size = _image_size(image_path, verify_images)
            raw = read_raw_mask(mask_path)
            if raw.ndim == 3:
                raw, rgb, converted = _handle_rgb(raw, mask_path, palettes, convert_dir)
            mask = info.encode(raw, mask_path)
            if mask.shape != size:
                raise DataError(
                    "size", mask_path,
                    f"image {image_path} is {size[1]}x{size[0]} but mask {mask_path} is "
                    f"{mask.shape[1]}x{mask.shape[0]}; masks must have their image's size",
                )  # fmt: skip
        except DataError as e:
            return None, Problem(e.kind, e.path, str(e)), rgb or getattr(e, "rgb", None), None
        return np.bincount(mask.ravel(), minlength=256), None, rgb, converted

    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = pool.map(check, pairs)
        if progress:
            results = tqdm(results, total=len(pairs), desc="checking", unit="img")
        for counts, problem, rgb, converted in results:
            report.num_images += 1
            if rgb is not None:
                report.rgb_masks.append(rgb)
            if converted is not None:
                report.converted.append(converted)
            if problem is not None:
                report.problems.append(problem)
                continue
            classes = counts[:n]
            report.pixel_counts += classes
            report.present_pixels[classes > 0] += int(classes.sum())
            report.ignore_pixels += int(counts[IGNORE_INDEX])
            report.total_pixels += int(counts.sum())
    return report


def check_dataset(
    dataset: str | None,
    *,
    root: str | Path | None = None,
    split: str = "train",
    images: str | Path | None = None,
    masks: str | Path | None = None,
    class_names_file: str | Path | None = None,
    num_classes: int | None = None,
    verify_images: bool = True,
    convert_dir: str | Path | None = None,
    progress: bool = False,
) -> DataReport:
    """``deeplab check-data``: a named dataset's split (``root``), or an ``images`` and a
    ``masks`` folder matched by file stem, through ``check_pairs``."""
    names = read_class_names(class_names_file) if class_names_file else None
    if dataset is None:
        info = dataset_info("folder", class_names=names, num_classes=num_classes,
                            root=Path(images).parent)  # where labelme2voc puts class_names.txt
        pairs = folder_pairs(images, masks)
    else:
        data = build_dataset(dataset, root=root, split=split, images=images, masks=masks,
                             class_names=names, num_classes=num_classes)  # fmt: skip
        info, pairs = data.info, data.pairs
    return check_pairs(pairs, info, verify_images=verify_images, convert_dir=convert_dir,
                       progress=progress)  # fmt: skip


def _image_size(path: Path, verify: bool) -> tuple[int, int]:
    if verify:
        return read_image(path).shape[:2]
    try:
        with Image.open(path) as img:
            return (img.height, img.width)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DataError("unreadable", path, f"cannot read image {path} ({e})") from e


def _handle_rgb(
    rgb: np.ndarray,
    path: Path,
    palettes: Mapping[str, Mapping[RGB, int]],
    convert_dir: str | Path | None,
) -> tuple[np.ndarray, tuple[Path, str | None], Path]:
    """An RGB mask: (class ids, (path, palette name), converted file) when its colours match
    a palette and ``convert_dir`` is given; else a ``DataError`` carrying ``.rgb``."""
    colors, _ = mask_colors(rgb)
    name = match_palette(colors, palettes)
    if name is None:
        shown = ", ".join(str(tuple(int(v) for v in c)) for c in colors[:6])
        error = DataError(
            "rgb", path,
            f"{path} is an RGB mask whose colours ({shown}{', ...' if len(colors) > 6 else ''})"
            " match no known palette; export single-channel class ids (and no JPEG masks)",
        )  # fmt: skip
    elif convert_dir is None:
        error = DataError(
            "rgb", path,
            f"{path} is an RGB mask in the {name} palette; convert it to class ids with "
            "`deeplab check-data ... --convert-rgb OUT_DIR`",
        )  # fmt: skip
    else:
        table = palettes[name]
        mask = rgb_to_index(rgb, table, path)
        out = Path(convert_dir) / f"{path.stem}.png"
        colors = voc_palette(256)
        for color, i in table.items():
            if i != IGNORE_INDEX:
                colors[i] = color  # the converted mask shows the colours it was drawn with
        viz.save_index_png(mask, out, colors)
        return mask, (path, name), out
    error.rgb = (path, name)
    raise error


def write_weights_json(report: DataReport, path: str | Path) -> None:
    """Save ``report.to_dict()`` (class weights and frequencies) for the training config."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report.to_dict(), indent=2) + "\n")


# --- the data doctor: what `deeplab train` checks before its first step --------------------

CHECK_MODES = ("full", "sample", "off")
SAMPLE_SIZE = 2000  # pairs checked by data.check=sample, and above which full samples too


class DataCheckError(ValueError):
    """The data check refused to start training; the message is the whole report."""


@dataclass
class Diagnosis:
    """Refusals (``problems``: the run cannot work) and ``warnings``, each one line that
    names the file or setting and the fix; ``report`` holds the training set's statistics."""

    report: DataReport
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked: int = 0
    total: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self, max_lines: int = 12) -> str:
        head = (f"data check: {self.checked} of {self.total} image/mask pairs in "
                f"{self.seconds:.1f} s, {len(self.problems)} problem(s), "
                f"{len(self.warnings)} warning(s)")  # fmt: skip
        lines = [head] + [f"  problem: {p}" for p in self.problems[:max_lines]]
        if len(self.problems) > max_lines:
            lines.append(f"  ... and {len(self.problems) - max_lines} more problems")
        return "\n".join(lines + [f"  warning: {w}" for w in self.warnings])


def diagnose(
    train: Any,
    val: Any = None,
    *,
    num_classes: int,
    class_weights: Sequence[float] | None = None,
    mode: str = "full",
    workers: int = 2,
) -> Diagnosis:
    """Check a training (and validation) set before training on it: every file readable,
    masks of their image's size, single-channel, values the model's classes can hold (or
    ignore), no 0/255 binary masks, class weights of the right length, no validation image
    that is also a training image. ``mode``: ``full`` (every pair, sampled above
    ``SAMPLE_SIZE`` pairs per split), ``sample`` or ``off``."""
    if mode not in CHECK_MODES:
        raise ValueError(f"data.check={mode!r}; choose one of: {', '.join(CHECK_MODES)}")
    start = time.perf_counter()
    splits = [("training", train)] + ([("validation", val)] if val is not None else [])
    diagnosis = Diagnosis(report=DataReport(class_names=tuple(train.class_names)))
    for split, data in splits:
        pairs = list(data.pairs)
        diagnosis.total += len(pairs)
        if not pairs:
            diagnosis.problems.append(f"the {split} split has no images; add some or check "
                                      "data.train_split / data.val_split")  # fmt: skip
            continue
        if mode == "off":
            continue
        if mode == "sample" or len(pairs) > SAMPLE_SIZE:
            pairs = random.Random(0).sample(pairs, min(SAMPLE_SIZE, len(pairs)))
        report = check_pairs(pairs, data.info, verify_images=True, workers=workers)
        diagnosis.checked += report.num_images
        diagnosis.problems += [p.message for p in report.problems]
        if split == "training":
            diagnosis.report = report
    if mode != "off":
        _diagnose_classes(diagnosis, num_classes, class_weights)
    if val is not None:
        train_images = {Path(a).resolve() for a, _ in train.pairs}
        shared = [a for a, _ in val.pairs if Path(a).resolve() in train_images]
        if shared:
            diagnosis.problems.append(
                f"{len(shared)} of {len(val.pairs)} validation images are also training "
                f"images (e.g. {shared[0]}): validation would measure memory, not accuracy. "
                "Split the data (images/train + images/val, or train.txt + val.txt) or set "
                "data.val_split=null"
            )
    diagnosis.seconds = time.perf_counter() - start
    return diagnosis


def _diagnose_classes(
    diagnosis: Diagnosis, num_classes: int, class_weights: Sequence[float] | None
) -> None:
    report = diagnosis.report
    counts = report.pixel_counts
    names = report.class_names
    if class_weights is not None and len(class_weights) != num_classes:
        diagnosis.problems.append(
            f"loss.class_weights has {len(class_weights)} values for {num_classes} classes; "
            "give one per class (`deeplab check-data ... --weights-json w.json` computes "
            "them; then loss.class_weights=w.json)"
        )
    if not report.total_pixels:
        return
    beyond = [i for i in range(num_classes, len(counts)) if counts[i] > 0]
    if beyond:
        diagnosis.problems.append(
            f"the masks hold class ids up to {max(beyond)} but model.num_classes={num_classes}:"
            f" set model.num_classes={len(names)} (or remap the masks)"
        )
    labelled = counts[: min(num_classes, len(counts))]
    if len(counts) > 1 and labelled[0] > 0 and counts[1:].sum() == 0 and \
            report.ignore_fraction() > 0.01:  # fmt: skip
        diagnosis.problems.append(
            f"the masks hold only 0 and 255 ({100 * report.ignore_fraction():.1f}% of pixels "
            "are 255, the ignore label): binary masks saved as 0/255? If 255 marks the "
            "object, map it to class 1: data.options={mask_map: {255: 1}}"
        )
        return
    absent = [names[i] for i in range(len(labelled)) if labelled[i] == 0]
    if absent:
        diagnosis.warnings.append(
            f"classes never seen in the training masks: {', '.join(absent)}; the model cannot "
            "learn them (check the class list and the masks' values)"
        )
    present = labelled[labelled > 0]
    if present.size > 1 and present.max() / present.min() > 100 and class_weights is None:
        weights = ", ".join(f"{w:.4g}" for w in report.median_frequency_weights()[:num_classes])
        diagnosis.warnings.append(
            f"the rarest class has {present.max() / present.min():.0f}x fewer pixels than the "
            f"commonest: consider median-frequency weights, loss.class_weights=[{weights}]"
        )
