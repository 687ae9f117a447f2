"""labelme annotations -> a VOC-style training set (``deeplab labelme2voc``).

labelme stores one JSON per image: ``shapes`` (each with ``label``, ``points`` and a
``shape_type``: polygon, rectangle, circle, line, linestrip, point or mask) and the image
itself, embedded as base64 ``imageData`` or referenced by ``imagePath``. Shapes are
rasterised with Pillow's ImageDraw in file order, so later shapes paint over earlier
ones, onto a mask that starts as class 0 (``_background_``).

A labels file lists the class names in id order, one per line; ``__ignore__`` (usually
the first line) maps to 255 and takes no id, so ``_background_`` on the next line is 0.

Output (``labelme2voc``), the layout ``build_dataset("folder", root=OUT_DIR, ...)`` reads:
``JPEGImages/<stem>.jpg``, ``SegmentationClass/<stem>.png`` (single-channel index PNG with
the VOC palette, 255 = ignore), ``SegmentationClassVisualization/<stem>.jpg`` (colour
overlay) and ``class_names.txt``.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from deeplab import viz
from deeplab.data.images import DataError
from deeplab.data.labels import IGNORE_INDEX
from deeplab.extras import require

IGNORE_LABEL = "__ignore__"
# labelme's own defaults for shapes without area: lines 10 px wide, points of radius 5.
LINE_WIDTH = 10
POINT_RADIUS = 5
SHAPE_TYPES = ("polygon", "rectangle", "circle", "line", "linestrip", "point", "mask")


@dataclass(frozen=True)
class LabelSet:
    """Class names in id order and the label -> id map (``__ignore__`` -> 255)."""

    class_names: tuple[str, ...]
    ids: Mapping[str, int]
    source: str = "labels.txt"


def read_labels(path: str | Path) -> LabelSet:
    """Parse a labels file: one class name per line, ``__ignore__`` -> 255, others 0, 1, ..."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"labels file {path} not found; write one class name per line, "
            "starting with __ignore__ and _background_"
        )
    names: list[str] = []
    ids: dict[str, int] = {}
    for line in path.read_text().splitlines():
        name = line.strip()
        if not name:
            continue
        if name in ids:
            raise ValueError(f"label {name!r} appears twice in {path}; keep one line per class")
        if name == IGNORE_LABEL:
            ids[name] = IGNORE_INDEX
            continue
        ids[name] = len(names)
        names.append(name)
    if not names:
        raise ValueError(f"{path} lists no classes; write one class name per line")
    if len(names) > IGNORE_INDEX:
        raise ValueError(f"{path} lists {len(names)} classes; index PNGs hold at most 255")
    return LabelSet(tuple(names), ids, str(path))


def shape_to_mask(
    shape: Mapping,
    size: tuple[int, int],
    *,
    line_width: int = LINE_WIDTH,
    point_radius: int = POINT_RADIUS,
    source: str = "<json>",
) -> np.ndarray:
    """One labelme shape -> bool mask of ``size`` = (height, width)."""
    h, w = size
    kind = shape.get("shape_type") or "polygon"  # labelme writes null for old polygons
    points = [(float(x), float(y)) for x, y in shape.get("points", [])]
    label = shape.get("label")

    def need(n: int) -> None:
        if len(points) < n:
            raise DataError(
                "labelme",
                source,
                f"{source}: {kind} shape {label!r} has {len(points)} point(s), needs {n}; "
                "fix or delete it in labelme",
            )

    if kind == "mask":
        need(2)
        return _bitmap_mask(shape, points, size, source)
    image = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(image)
    if kind == "polygon":
        need(3)
        draw.polygon(points, fill=1, outline=1)
    elif kind == "rectangle":
        need(2)
        (x0, y0), (x1, y1) = points[:2]
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=1, outline=1)
    elif kind == "circle":
        need(2)  # centre, then a point on the circle
        (cx, cy), (px, py) = points[:2]
        r = math.hypot(px - cx, py - cy)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1, outline=1)
    elif kind in ("line", "linestrip"):
        need(2)
        draw.line(points, fill=1, width=line_width)
    elif kind == "point":
        need(1)
        cx, cy = points[0]
        r = point_radius
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1, outline=1)
    else:
        raise DataError(
            "labelme",
            source,
            f"{source}: shape {label!r} has unsupported shape_type {kind!r}; "
            f"supported: {', '.join(SHAPE_TYPES)}",
        )
    return np.asarray(image, dtype=bool)


def _bitmap_mask(
    shape: Mapping, points: list[tuple[float, float]], size: tuple[int, int], source: str
) -> np.ndarray:
    """A ``mask`` shape: a base64 PNG bitmap whose top-left corner is the first point."""
    data = shape.get("mask")
    if not data:
        raise DataError("labelme", source, f"{source}: mask shape without 'mask' data")
    try:
        bitmap = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("L")) > 0
    except (OSError, ValueError) as e:
        raise DataError("labelme", source, f"{source}: cannot decode a mask shape ({e})") from e
    h, w = size
    out = np.zeros(size, dtype=bool)
    x0, y0 = int(points[0][0]), int(points[0][1])  # labelme truncates the box corners
    bh, bw = bitmap.shape
    # Clip the bitmap to the image (a box may reach past the border).
    top, left = max(y0, 0), max(x0, 0)
    bottom, right = min(y0 + bh, h), min(x0 + bw, w)
    if bottom > top and right > left:
        out[top:bottom, left:right] = bitmap[top - y0 : bottom - y0, left - x0 : right - x0]
    return out


def load_labelme_image(data: Mapping, json_path: Path) -> tuple[Image.Image, bytes | None]:
    """The annotated image (RGB, EXIF orientation applied as labelme does) and, when it is
    an unrotated JPEG, its original bytes so it can be written without re-encoding."""
    if data.get("imageData"):
        raw = base64.b64decode(data["imageData"])
        where = f"the imageData embedded in {json_path}"
    elif data.get("imagePath"):
        image_path = json_path.parent / str(data["imagePath"]).replace("\\", "/")
        if not image_path.is_file():
            raise DataError(
                "missing",
                json_path,
                f"{json_path}: imagePath {data['imagePath']!r} not found (looked for "
                f"{image_path}); put the image beside the JSON or embed it with labelme",
            )
        raw = image_path.read_bytes()
        where = str(image_path)
    else:
        raise DataError("missing", json_path, f"{json_path} has neither imageData nor imagePath")
    try:
        image = Image.open(io.BytesIO(raw))
        image.load()
    except (OSError, ValueError) as e:
        raise DataError("unreadable", json_path, f"cannot decode {where} ({e})") from e
    unrotated = image.getexif().get(0x0112, 1) == 1  # 0x0112 = EXIF Orientation
    keep_bytes = raw if image.format == "JPEG" and unrotated and image.mode == "RGB" else None
    return ImageOps.exif_transpose(image).convert("RGB"), keep_bytes


def labelme_to_mask(
    data: Mapping,
    labels: LabelSet,
    size: tuple[int, int],
    *,
    source: str = "<json>",
    line_width: int = LINE_WIDTH,
    point_radius: int = POINT_RADIUS,
) -> np.ndarray:
    """All shapes of one labelme document -> uint8 class-id mask (0 where nothing is drawn)."""
    mask = np.zeros(size, dtype=np.uint8)
    for shape in data.get("shapes", []):
        label = shape.get("label")
        if label not in labels.ids:
            raise DataError(
                "labelme",
                source,
                f"{source}: label {label!r} is not in {labels.source}; add it there "
                "(one class name per line) or rename the shape in labelme",
            )
        region = shape_to_mask(
            shape, size, line_width=line_width, point_radius=point_radius, source=source
        )
        mask[region] = labels.ids[label]  # later shapes paint over earlier ones
    return mask


def convert_labelme_file(
    json_path: str | Path, labels: LabelSet
) -> tuple[Image.Image, np.ndarray, bytes | None]:
    """One labelme JSON -> (RGB image, uint8 class-id mask, original JPEG bytes or None)."""
    json_path = Path(json_path)
    try:
        data = json.loads(json_path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(
            "unreadable", json_path, f"cannot read labelme JSON {json_path} ({e})"
        ) from e
    image, jpeg = load_labelme_image(data, json_path)
    size = (image.height, image.width)
    stated = (data.get("imageHeight"), data.get("imageWidth"))
    if None not in stated and tuple(stated) != size:
        raise DataError(
            "size",
            json_path,
            f"{json_path} says the image is {stated[1]}x{stated[0]} but it is "
            f"{size[1]}x{size[0]}; reopen and save it in labelme",
        )
    return image, labelme_to_mask(data, labels, size, source=str(json_path)), jpeg


@dataclass
class Conversion:
    """What ``labelme2voc`` did: converted stems, files it could not convert (with why),
    and warnings (e.g. a file without shapes, converted to an all-background mask)."""

    converted: list[str] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def labelme2voc(in_dir: str | Path, out_dir: str | Path, labels_file: str | Path) -> Conversion:
    """Convert every ``*.json`` in ``in_dir``: each good file is written, each bad one is
    reported, and one bad file stops nothing."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    labels = read_labels(labels_file)
    json_files = sorted(in_dir.glob("*.json"))
    if not json_files:
        raise FileNotFoundError(f"no labelme *.json files in {in_dir}")
    folders = {n: out_dir / n for n in ("JPEGImages", "SegmentationClass")}
    folders["viz"] = out_dir / "SegmentationClassVisualization"
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    (out_dir / "class_names.txt").write_text("\n".join(labels.class_names) + "\n")
    result = Conversion()
    for json_path in json_files:
        try:
            image, mask, jpeg = convert_labelme_file(json_path, labels)
        except DataError as e:
            result.failed.append((json_path, str(e)))
            continue
        if not mask.any():
            result.warnings.append(f"{json_path} has no shapes: its mask is all background; "
                                   "annotate it in labelme or leave it out")  # fmt: skip
        stem = json_path.stem
        if jpeg is not None:
            (folders["JPEGImages"] / f"{stem}.jpg").write_bytes(jpeg)
        else:
            image.save(folders["JPEGImages"] / f"{stem}.jpg", quality=95)
        viz.save_index_png(mask, folders["SegmentationClass"] / f"{stem}.png")
        # Background left unpainted so the photo stays readable.
        blend = viz.overlay(np.asarray(image), mask, alpha=0.5, unpainted=(0,))
        Image.fromarray(blend).save(folders["viz"] / f"{stem}.jpg", quality=90)
        result.converted.append(stem)
    return result


# --- and back: a predicted mask as a labelme document (pre-annotation) -------------------


def mask_to_labelme(
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    image_path: str,
    tolerance: float = 1.0,
    min_pixels: int = 4,
    max_pixels: int | None = None,
) -> dict:
    """A label map as a labelme document: one polygon per connected region of a class,
    traced along the region's outline and simplified to within ``tolerance`` pixels.

    labelme has no holes: ``labelme2voc`` paints shapes in file order, so the shapes are
    written largest first and a region inside another (a window in a wall, a background
    hole in a person) paints over it. Class 0 regions are written too unless class 0 is
    "background" (the mask starts as class 0), then only the ones inside other regions.
    Regions under ``min_pixels`` are left out. ``max_pixels``: a larger map is traced at a
    reduced size (nearest neighbour) and the points scaled back, which bounds the time and
    memory a server spends on a huge photo. Needs scikit-image.
    """
    require("labelme", "tracing labelme polygons")
    from skimage import measure

    labels = np.asarray(labels)
    h, w = labels.shape
    sy = sx = 1.0
    if max_pixels and labels.size > max_pixels and labels.dtype == np.uint8:
        f = (max_pixels / labels.size) ** 0.5
        rw, rh = max(1, round(w * f)), max(1, round(h * f))
        labels = np.asarray(Image.fromarray(labels).resize((rw, rh), Image.Resampling.NEAREST))
        sy, sx, min_pixels = h / rh, w / rw, max(1, round(min_pixels * f * f))
    th, tw = labels.shape
    background = "background" in class_names[0].lower()
    shapes = []
    for c in np.unique(labels):
        if c == IGNORE_INDEX or c >= len(class_names):
            continue
        regions, count = measure.label(labels == c, connectivity=1, return_num=True)
        for k in range(1, count + 1):
            region = regions == k
            if region.sum() < min_pixels:
                continue
            rows, cols = np.nonzero(region)
            on_border = rows.min() == 0 or cols.min() == 0 or rows.max() == th - 1 or \
                cols.max() == tw - 1  # fmt: skip
            if c == 0 and background and on_border:
                continue
            padded = np.pad(region, 1).astype(np.float32)
            contours = measure.find_contours(padded, 0.5)
            outer = max(contours, key=_polygon_area)  # the others are the region's holes
            outer = measure.approximate_polygon(outer, tolerance=tolerance)
            points = [[(float(x) - 1.0) * sx, (float(y) - 1.0) * sy] for y, x in outer[:-1]]
            if len(points) >= 3:
                shapes.append((_polygon_area(outer), {
                    "label": class_names[int(c)], "points": points, "group_id": None,
                    "description": "", "shape_type": "polygon", "flags": {}, "mask": None,
                }))  # fmt: skip
    shapes.sort(key=lambda item: -item[0])
    return {
        "version": "5.4.1", "flags": {}, "shapes": [s for _, s in shapes],
        "imagePath": image_path, "imageData": None, "imageHeight": h, "imageWidth": w,
    }  # fmt: skip


def _polygon_area(points: np.ndarray) -> float:
    y, x = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
