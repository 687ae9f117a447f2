"""Dataset checks: CamVid's published frequencies, class weights, each kind of broken file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deeplab.cli import main as cli_main
from deeplab.data.check import check_pairs, known_palettes, rgb_to_index
from deeplab.data.datasets import CAMVID_INFO, dataset_info
from deeplab.data.labels import CAMVID_CLASSES, CAMVID_PALETTE, voc_palette
from deeplab.data.layouts import camvid_pairs, folder_pairs


@pytest.mark.slow
def test_camvid_train_frequencies_match_the_readme(camvid_dir):
    # All 367 masks, image headers only: about 3 s on 2 cores.
    report = check_pairs(camvid_pairs(camvid_dir, "train"), CAMVID_INFO, verify_images=False)
    assert report.ok and report.num_images == 367
    assert report.total_pixels == 367 * 480 * 360
    freq = dict(zip(CAMVID_CLASSES, 100 * report.frequencies(), strict=True))
    # README: "road 31.7%, building 23.3%, sky 16.9%, tree 9.7%, car 5.9%, ..., unlabelled 4.0%"
    for name, published in [("road", 31.7), ("building", 23.3), ("sky", 16.9), ("tree", 9.7),
                            ("car", 5.9), ("pavement", 4.5), ("bicyclist", 0.3)]:  # fmt: skip
        assert freq[name] == pytest.approx(published, abs=0.06), name
    assert 100 * report.ignore_fraction() == pytest.approx(4.0, abs=0.06)
    weights = report.median_frequency_weights()
    # Rare classes weigh more than common ones; the median class has weight 1.
    assert weights[CAMVID_CLASSES.index("bicyclist")] > 5 > 1 > weights[3]  # 3 = road
    assert np.isclose(np.sort(weights)[5], 1.0)


def _write(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


def _image(h: int = 4, w: int = 4) -> np.ndarray:
    return np.full((h, w, 3), 128, np.uint8)


def test_median_frequency_weights_follow_the_definition(tmp_path):
    # a: 12 px class 0, 4 px class 1; b: 8 px class 0, 6 px class 2, 2 px ignore.
    a = np.zeros((4, 4), np.uint8)
    a[0] = 1
    b = np.zeros((4, 4), np.uint8)
    b[:2] = 2
    b[1, 2:] = 255
    for name, mask in [("a", a), ("b", b)]:
        _write(tmp_path / "images" / f"{name}.png", _image())
        _write(tmp_path / "masks" / f"{name}.png", mask)
    info = dataset_info("folder", num_classes=4)
    report = check_pairs(folder_pairs(tmp_path / "images", tmp_path / "masks"), info)
    # freq_c = class pixels / labelled pixels of the images containing c:
    # f0 = 20 / 30, f1 = 4 / 16, f2 = 6 / 14; class 3 is absent; median(f0, f1, f2) = f2.
    f = np.array([20 / 30, 4 / 16, 6 / 14])
    expected = np.append(np.median(f) / f, 0.0)
    assert np.allclose(report.median_frequency_weights(), expected)
    assert np.allclose(report.frequencies(), np.array([20, 4, 6, 0]) / 32)
    assert report.ignore_pixels == 2


def test_every_kind_of_broken_file_is_reported(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    good = np.array([[0, 1], [2, 255]], np.uint8)
    _write(images / "good.png", _image(2, 2))
    _write(masks / "good.png", good)
    (images / "unreadable.png").write_bytes(b"\x89PNG garbage")
    _write(masks / "unreadable.png", good)
    _write(images / "size.png", _image(3, 2))
    _write(masks / "size.png", good)
    _write(images / "values.png", _image(2, 2))
    _write(masks / "values.png", np.array([[0, 37], [1, 2]], np.uint8))
    _write(images / "rgb_voc.png", _image(2, 2))
    _write(masks / "rgb_voc.png", np.array(voc_palette(4)[:4], np.uint8).reshape(2, 2, 3))
    _write(images / "rgb_odd.png", _image(2, 2))
    _write(masks / "rgb_odd.png", np.array([[[1, 2, 3]] * 2] * 2, np.uint8))

    info = dataset_info("folder", num_classes=3)
    report = check_pairs(folder_pairs(images, masks), info)
    kinds = {p.path.name: p.kind for p in report.problems}
    assert kinds == {
        "unreadable.png": "unreadable",
        "size.png": "size",
        "values.png": "values",
        "rgb_voc.png": "rgb",
        "rgb_odd.png": "rgb",
    }
    messages = {p.path.name: p.message for p in report.problems}
    assert "exceeds 3 classes" in messages["values.png"]
    assert "2x3" in messages["size.png"] and "2x2" in messages["size.png"]
    assert "voc palette" in messages["rgb_voc.png"] and "--convert-rgb" in messages["rgb_voc.png"]
    assert "match no known palette" in messages["rgb_odd.png"]
    palettes = {path.name: name for path, name in report.rgb_masks}
    assert palettes == {"rgb_voc.png": "voc", "rgb_odd.png": None}
    # Only the good pair is counted.
    assert report.num_images == 6 and report.total_pixels == 4


def test_missing_mask_is_reported_before_checking(tmp_path, capsys):
    _write(tmp_path / "images" / "a.png", _image())
    _write(tmp_path / "images" / "b.png", _image())
    _write(tmp_path / "masks" / "a.png", np.zeros((4, 4), np.uint8))
    assert cli_main(["check-data", "--images", str(tmp_path / "images"), "--masks",
                     str(tmp_path / "masks"), "--num-classes", "2"]) == 1  # fmt: skip
    assert "b.png" in capsys.readouterr().err


def test_rgb_masks_convert_to_the_ids_they_were_drawn_with(tmp_path):
    ids = np.array([[0, 1, 2], [10, 255, 3]], np.uint8)
    colors = list(CAMVID_PALETTE) + [(0, 0, 0)]  # black = CamVid's void
    rgb = np.array([[colors[min(i, 11)] for i in row] for row in ids], np.uint8)
    table = known_palettes(CAMVID_INFO)["camvid"]
    assert np.array_equal(rgb_to_index(rgb, table), ids)

    _write(tmp_path / "images" / "x.png", _image(2, 3))
    _write(tmp_path / "masks" / "x.png", rgb)
    out = tmp_path / "converted"
    report = check_pairs(
        folder_pairs(tmp_path / "images", tmp_path / "masks"), CAMVID_INFO, convert_dir=out
    )
    assert report.ok and report.rgb_masks[0][1] == "camvid"
    converted = Image.open(out / "x.png")
    assert converted.mode == "P" and np.array_equal(np.asarray(converted), ids)
    assert converted.getpalette()[3:6] == list(CAMVID_PALETTE[1])  # drawn colours kept
    assert report.pixel_counts.sum() == 5


def test_cli_check_data_weights_json_and_exit_codes(tmp_path, capsys):
    for name in ("a", "b"):
        _write(tmp_path / "images" / f"{name}.png", _image())
        _write(tmp_path / "masks" / f"{name}.png", np.tile(np.array([0, 1], np.uint8), (4, 2)))
    (tmp_path / "class_names.txt").write_text("background\nthing\n")
    out = tmp_path / "w.json"
    argv = ["check-data", "folder", "--root", str(tmp_path)]
    assert cli_main([*argv, "--weights-json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["class_names"] == ["background", "thing"]
    assert data["class_weights"] == [1.0, 1.0] and data["pixel_frequencies"] == [0.5, 0.5]
    assert "thing" in capsys.readouterr().out
    _write(tmp_path / "masks" / "b.png", np.full((4, 4), 9, np.uint8))
    assert cli_main(argv) == 1
    assert "mask value 9" in capsys.readouterr().out
