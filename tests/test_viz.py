"""deeplab.viz: palette lookup, alpha blend, portrait blur, index PNG round trip."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from deeplab.data.labels import CAMVID_PALETTE, voc_palette
from deeplab.viz import (
    colorize,
    flat_palette,
    gaussian_blur,
    overlay,
    palette_array,
    portrait,
    save_index_png,
)


def test_palette_forms_agree():
    tuples = palette_array(CAMVID_PALETTE)
    flat = palette_array([v for rgb in CAMVID_PALETTE for v in rgb])
    assert tuples.shape == (256, 3) and tuples.dtype == np.uint8
    np.testing.assert_array_equal(tuples, flat)
    np.testing.assert_array_equal(tuples[: len(CAMVID_PALETTE)], np.array(CAMVID_PALETTE))
    # Entries the palette does not set fall back to the VOC map.
    np.testing.assert_array_equal(tuples[255], voc_palette(256)[255])
    assert len(flat_palette(None)) == 768


def test_colorize_looks_up_each_pixel():
    labels = np.array([[0, 1, 2], [15, 255, 1]])
    rgb = colorize(labels)
    voc = voc_palette(256)
    for (i, j), k in np.ndenumerate(labels):
        assert tuple(rgb[i, j]) == voc[k]
    with pytest.raises(ValueError, match="256-colour"):
        colorize(np.array([[300]]))


def test_overlay_blends_with_alpha():
    image = np.full((2, 3, 3), 200, dtype=np.uint8)
    labels = np.array([[1, 1, 0], [0, 2, 2]])
    color = colorize(labels, CAMVID_PALETTE)
    out = overlay(image, labels, CAMVID_PALETTE, alpha=0.25)
    expected = np.rint(0.75 * 200 + 0.25 * color.astype(float)).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(overlay(image, labels, alpha=0.0), image)
    with pytest.raises(ValueError, match="differ in size"):
        overlay(image, labels[:1])


def test_portrait_keeps_subject_sharp_and_blurs_background():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    keep = np.zeros((64, 64), dtype=bool)
    keep[16:48, 16:48] = True
    out = portrait(image, keep, blur_radius=4, feather=1)
    inner, outer = np.zeros_like(keep), np.ones_like(keep)
    inner[20:44, 20:44] = True
    outer[8:56, 8:56] = False
    # Subject interior unchanged; far background matches a plain blur, smoother than the input.
    diff_in = np.abs(out[inner].astype(int) - image[inner]).max()
    assert diff_in <= 1
    blurred = gaussian_blur(image, 4)
    assert np.abs(out[outer].astype(int) - blurred[outer]).max() <= 1
    assert out[outer].std() < 0.5 * image[outer].std()
    # The seam is soft: right at the mask edge a pixel mixes sharp and blurred,
    # out = s * image + (1 - s) * blurred with 0 < s < 1.
    for col in (15, 16):
        sharp, soft, got = (a[32, col].astype(float) for a in (image, blurred, out))
        usable = np.abs(sharp - soft) > 30
        assert usable.any()
        s = ((got - soft) / (sharp - soft))[usable].mean()
        assert 0.05 < s < 0.95, (col, s)


def test_portrait_default_radius_scales_with_image():
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    image[:, ::2] = 255  # stripes: a blur turns them grey
    out = portrait(image, np.zeros((100, 200), dtype=bool))
    assert abs(float(out[50, 100:110].mean()) - 127.5) < 10
    assert out[50, 100:110].std() < 10


def test_index_png_round_trip(tmp_path):
    labels = np.array([[0, 3, 3], [7, 255, 10]])
    path = tmp_path / "m.png"
    save_index_png(labels, path, CAMVID_PALETTE)
    with Image.open(path) as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(np.asarray(im), labels)
        pal = np.array(im.getpalette()[: 3 * len(CAMVID_PALETTE)]).reshape(-1, 3)
        np.testing.assert_array_equal(pal, np.array(CAMVID_PALETTE))
        np.testing.assert_array_equal(
            np.asarray(im.convert("RGB")), colorize(labels, CAMVID_PALETTE)
        )
