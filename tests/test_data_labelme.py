"""labelme -> VOC conversion: the real example folder and synthetic shapes of each type."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deeplab.cli import main as cli_main
from deeplab.data.datasets import DataError, build_dataset
from deeplab.data.labelme import (
    LINE_WIDTH,
    POINT_RADIUS,
    convert_labelme_file,
    labelme2voc,
    read_labels,
)
from deeplab.data.labels import voc_palette

# --- geometry helpers, independent of the converter ---------------------------------------


def _inside(x: float, y: float, poly: list[list[float]]) -> bool:
    """Even-odd ray casting."""
    inside = False
    for (x0, y0), (x1, y1) in zip(poly, poly[1:] + poly[:1], strict=True):
        if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
            inside = not inside
    return inside


def _edge_distance(x: float, y: float, poly: list[list[float]]) -> float:
    best = math.inf
    for (x0, y0), (x1, y1) in zip(poly, poly[1:] + poly[:1], strict=True):
        dx, dy = x1 - x0, y1 - y0
        length2 = dx * dx + dy * dy
        t = 0.0 if length2 == 0 else max(0, min(1, ((x - x0) * dx + (y - y0) * dy) / length2))
        best = min(best, math.hypot(x - x0 - t * dx, y - y0 - t * dy))
    return best


def _interior_point(poly, later_polys) -> tuple[int, int] | None:
    """A pixel centre well inside ``poly`` and outside every later shape: the centroid if it
    qualifies, else the first such point of a grid over the bounding box."""
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    candidates = [(round(sum(xs) / len(xs)), round(sum(ys) / len(ys)))]
    candidates += [
        (x, y)
        for y in range(int(min(ys)), int(max(ys)) + 1, 3)
        for x in range(int(min(xs)), int(max(xs)) + 1, 3)
    ]
    for x, y in candidates:
        if not _inside(x, y, poly) or _edge_distance(x, y, poly) < 2:
            continue
        if any(_inside(x, y, q) or _edge_distance(x, y, q) < 2 for q in later_polys):
            continue
        return x, y
    return None


# --- the real example folder ---------------------------------------------------------------


@pytest.fixture(scope="module")
def example_dir(shared) -> Path:
    return shared / "data" / "labelme_voc_example"


@pytest.fixture(scope="module")
def converted(example_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("voc")
    labelme2voc(example_dir, out, example_dir / "labels.txt")
    return out


def test_real_examples_have_the_polygon_classes(example_dir, converted):
    labels = read_labels(example_dir / "labels.txt")
    checked = 0
    for json_path in sorted(example_dir.glob("*.json")):
        doc = json.loads(json_path.read_text())
        mask = np.asarray(Image.open(converted / "SegmentationClass" / f"{json_path.stem}.png"))
        polys = [s["points"] for s in doc["shapes"]]
        for i, shape in enumerate(doc["shapes"]):
            point = _interior_point(shape["points"], polys[i + 1 :])
            if point is None:
                continue  # fully covered by later shapes, or too thin
            x, y = point
            assert mask[y, x] == labels.ids[shape["label"]], (json_path.name, i, shape["label"])
            checked += 1
        # Far from every shape the mask is background.
        outside = [
            (x, y)
            for y in range(0, mask.shape[0], 7)
            for x in range(0, mask.shape[1], 7)
            if all(not _inside(x, y, p) and _edge_distance(x, y, p) > 12 for p in polys)
        ]
        assert outside and all(mask[y, x] == 0 for x, y in outside)
    assert checked >= 12  # most of the 18 shapes are checked


def test_real_examples_files_sizes_and_palette(example_dir, converted):
    for json_path in sorted(example_dir.glob("*.json")):
        doc = json.loads(json_path.read_text())
        png = Image.open(converted / "SegmentationClass" / f"{json_path.stem}.png")
        assert png.mode == "P"
        assert png.getpalette()[:63] == [v for c in voc_palette(21) for v in c]
        assert png.size == (doc["imageWidth"], doc["imageHeight"])
        jpg = converted / "JPEGImages" / f"{json_path.stem}.jpg"
        assert jpg.read_bytes() == (example_dir / doc["imagePath"]).read_bytes()
        viz = Image.open(converted / "SegmentationClassVisualization" / f"{json_path.stem}.jpg")
        assert viz.size == png.size
    names = (converted / "class_names.txt").read_text().split("\n")
    assert names[0] == "_background_" and names[15] == "person" and "__ignore__" not in names
    # __ignore__ shapes become 255 (2011_000003 has one).
    with_ignore = Image.open(converted / "SegmentationClass" / "2011_000003.png")
    assert (np.asarray(with_ignore) == 255).any()


def test_converted_folder_loads_as_a_dataset(converted):
    ds = build_dataset("folder", root=converted, split="train")
    assert len(ds) == 3 and ds.num_classes == 21
    _, y = ds[0]
    assert set(y.unique().tolist()) <= set(range(21)) | {255}


# --- synthetic documents -------------------------------------------------------------------

H, W = 40, 50


def _doc(shapes: list[dict], *, embed: bool = True, image_path: str | None = None) -> dict:
    doc = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imageHeight": H, "imageWidth": W}
    if embed:
        buf = io.BytesIO()
        Image.new("RGB", (W, H), (90, 120, 150)).save(buf, format="PNG")
        doc["imageData"] = base64.b64encode(buf.getvalue()).decode()
    else:
        doc["imageData"] = None
        doc["imagePath"] = image_path
    return doc


def _shape(label: str, kind: str, points, **extra) -> dict:
    return {"label": label, "shape_type": kind, "points": points, "group_id": None, **extra}


def _convert(tmp_path: Path, doc: dict, labels=("__ignore__", "_background_", "a", "b")):
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(doc))
    _, mask, _ = convert_labelme_file(path, read_labels(tmp_path / "labels.txt"))
    return mask


def test_label_ids_from_the_labels_file(tmp_path):
    (tmp_path / "labels.txt").write_text("__ignore__\n_background_\ncat\n\ndog\n")
    labels = read_labels(tmp_path / "labels.txt")
    assert labels.ids == {"__ignore__": 255, "_background_": 0, "cat": 1, "dog": 2}
    assert labels.class_names == ("_background_", "cat", "dog")


def test_polygon(tmp_path):
    mask = _convert(tmp_path, _doc([_shape("a", "polygon", [[5, 5], [30, 5], [5, 30]])]))
    assert mask[10, 10] == 1 and mask[25, 25] == 0 and mask[2, 2] == 0


def test_rectangle_in_any_corner_order(tmp_path):
    mask = _convert(tmp_path, _doc([_shape("b", "rectangle", [[30, 25], [10, 5]])]))
    ys, xs = np.nonzero(mask == 2)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (10, 30, 5, 25)
    assert (mask == 2).sum() == 21 * 21  # filled, edges included


def test_circle(tmp_path):
    mask = _convert(tmp_path, _doc([_shape("a", "circle", [[25, 20], [25, 30]])]))  # r = 10
    yy, xx = np.mgrid[:H, :W]
    r = np.hypot(xx - 25, yy - 20)
    assert (mask[r < 9] == 1).all() and (mask[r > 11] == 0).all()


def _check_band(column: np.ndarray, centre: int) -> None:
    """A line crossing ``column`` at row ``centre`` covers LINE_WIDTH pixels around it."""
    rows = np.nonzero(column == 1)[0]
    assert len(rows) in (LINE_WIDTH, LINE_WIDTH + 1)
    assert rows.min() >= centre - LINE_WIDTH // 2 - 1 and rows.max() <= centre + LINE_WIDTH // 2
    assert (np.diff(rows) == 1).all()  # one solid band


def test_line_has_labelme_width(tmp_path):
    mask = _convert(tmp_path, _doc([_shape("a", "line", [[5, 20], [45, 20]])]))
    _check_band(mask[:, 25], 20)
    assert (mask[:, 1] == 0).all() and (mask[:, 48] == 0).all()  # ends stay where they are


def test_linestrip_follows_every_segment(tmp_path):
    mask = _convert(tmp_path, _doc([_shape("a", "linestrip", [[5, 10], [25, 10], [25, 35]])]))
    _check_band(mask[:, 15], 10)  # the horizontal segment
    _check_band(mask[28, :], 25)  # the vertical segment
    assert mask[20, 13] == 0  # on the segment back to the start: a linestrip stays open


def test_point_is_a_small_disc(tmp_path):
    mask = _convert(tmp_path, _doc([_shape("b", "point", [[20, 20]])]))
    ys, xs = np.nonzero(mask == 2)
    assert mask[20, 20] == 2
    assert xs.max() - xs.min() == 2 * POINT_RADIUS and ys.max() - ys.min() == 2 * POINT_RADIUS


def test_mask_shape_bitmap_is_placed_at_its_box(tmp_path):
    bitmap = np.zeros((6, 8), np.uint8)
    bitmap[1:4, 2:7] = 255
    buf = io.BytesIO()
    Image.fromarray(bitmap).convert("1").save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode()
    mask = _convert(tmp_path, _doc([_shape("a", "mask", [[10, 20], [17, 25]], mask=data)]))
    expected = np.zeros((H, W), np.uint8)
    expected[21:24, 12:17] = 1
    assert np.array_equal(mask, expected)


def test_later_shapes_paint_over_earlier_ones(tmp_path):
    first = _shape("a", "rectangle", [[5, 5], [30, 30]])
    second = _shape("b", "rectangle", [[20, 20], [40, 35]])
    mask = _convert(tmp_path, _doc([first, second]))
    assert mask[25, 25] == 2 and mask[10, 10] == 1
    mask = _convert(tmp_path, _doc([second, first]))
    assert mask[25, 25] == 1 and mask[33, 38] == 2


def test_ignore_label_is_255(tmp_path):
    shapes = [
        _shape("a", "rectangle", [[0, 0], [20, 20]]),
        _shape("__ignore__", "point", [[10, 10]]),
    ]
    mask = _convert(tmp_path, _doc(shapes))
    assert mask[10, 10] == 255 and mask[2, 2] == 1


def test_image_from_image_path(tmp_path):
    Image.new("RGB", (W, H), (1, 2, 3)).save(tmp_path / "photo.png")
    doc = _doc([_shape("a", "point", [[5, 5]])], embed=False, image_path="photo.png")
    mask = _convert(tmp_path, doc)
    assert mask.shape == (H, W) and mask[5, 5] == 1


def test_missing_image_and_unknown_label_are_reported(tmp_path):
    with pytest.raises(DataError, match=r"imagePath 'gone\.jpg' not found"):
        _convert(tmp_path, _doc([], embed=False, image_path="gone.jpg"))
    with pytest.raises(DataError, match=r"doc\.json: label 'zebra' is not in .*labels\.txt; add"):
        _convert(tmp_path, _doc([_shape("zebra", "point", [[5, 5]])]))


def test_cli_writes_the_voc_layout_and_fails_on_unknown_labels(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "one.json").write_text(json.dumps(_doc([_shape("a", "circle", [[20, 20], [20, 25]])])))
    (tmp_path / "labels.txt").write_text("__ignore__\n_background_\na\n")
    argv = ["labelme2voc", str(src), str(out), "--labels", str(tmp_path / "labels.txt")]
    assert cli_main(argv) == 0
    assert (out / "JPEGImages" / "one.jpg").is_file()
    assert np.asarray(Image.open(out / "SegmentationClass" / "one.png"))[20, 20] == 1
    (src / "two.json").write_text(json.dumps(_doc([_shape("b", "point", [[5, 5]])])))
    assert cli_main(argv) == 1
    assert "two.json: label 'b'" in capsys.readouterr().err
