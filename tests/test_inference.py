"""deeplab.inference: image reading in every Pillow mode, and the Segmenter's test-time
options (multi-scale, flip, sliding window, fixed input size) on tiny models."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from _helpers import PHOTOS
from PIL import Image

from deeplab.data.images import find_images, read_image
from deeplab.inference import Prediction, Segmenter

# --- tiny models -------------------------------------------------------------


class Pointwise(nn.Module):
    """1x1 conv: every output pixel sees only its own input pixel."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.num_classes = num_classes
        self.conv = nn.Conv2d(3, num_classes, 1)

    def forward(self, x):
        return self.conv(x)


class SmallFCN(nn.Module):
    """Two 3x3 convs, no global pooling: fully convolutional, 5x5 receptive field."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.num_classes = num_classes
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 3, padding=1)
        )

    def forward(self, x):
        return self.body(x)


class Recorder(nn.Module):
    """Wraps a model and records the input sizes and output strides it was asked for."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.num_classes = inner.num_classes
        self.sizes: list[tuple[int, int]] = []  # one entry per image or tile seen
        self.calls = 0
        self.output_stride = 16

    def set_output_stride(self, output_stride: int) -> None:
        self.output_stride = output_stride

    def forward(self, x):
        self.sizes += [tuple(x.shape[-2:])] * x.shape[0]
        self.calls += 1
        return self.inner(x)


def _segmenter(model: nn.Module, **options) -> Segmenter:
    return Segmenter(model, mean=(120.0, 110.0, 100.0), std=(60.0, 60.0, 60.0), **options)


def _random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _smooth_image(h: int, w: int) -> np.ndarray:
    """Slowly varying colours, so that resizing changes little."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    channels = [np.sin(3 * x + 1), np.cos(4 * y), np.sin(2 * x + 3 * y)]
    return np.clip(127.5 + 127.5 * np.stack(channels, -1), 0, 255).astype(np.uint8)


# --- image reading -----------------------------------------------------------

RGB = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [40, 80, 120]]], dtype=np.uint8)


def _roundtrip(pil: Image.Image, fmt: str, **save) -> Image.Image:
    buf = io.BytesIO()
    pil.save(buf, format=fmt, **save)
    buf.seek(0)
    return Image.open(buf)


def test_rgb_and_greyscale_modes():
    np.testing.assert_array_equal(read_image(Image.fromarray(RGB)), RGB)
    gray = np.array([[0, 50], [200, 255]], dtype=np.uint8)
    for pil in (Image.fromarray(gray), _roundtrip(Image.fromarray(gray), "PNG")):
        assert pil.mode == "L"
        np.testing.assert_array_equal(read_image(pil), np.repeat(gray[..., None], 3, 2))
    one_bit = Image.fromarray(gray > 100).convert("1")
    np.testing.assert_array_equal(read_image(one_bit)[..., 0], np.where(gray > 100, 255, 0))


def test_sixteen_bit_is_scaled_not_clipped():
    values = np.array([[0, 257], [32896, 65535]], dtype=np.uint16)
    pil = _roundtrip(Image.fromarray(values), "PNG")
    assert pil.mode.startswith("I;16")
    expected = np.array([[0, 1], [128, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(read_image(pil)[..., 0], expected)
    np.testing.assert_array_equal(read_image(pil.convert("I"))[..., 1], expected)
    np.testing.assert_array_equal(read_image(values)[..., 2], expected)  # numpy uint16 too
    # 32-bit mode I holding 8-bit values is left as it is.
    small = Image.fromarray(np.array([[0, 9], [100, 255]], dtype=np.int32))
    assert small.mode == "I"
    np.testing.assert_array_equal(read_image(small)[..., 0], [[0, 9], [100, 255]])


def test_float_mode():
    pil = Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32))
    assert pil.mode == "F"
    np.testing.assert_array_equal(read_image(pil)[..., 0], [[0, 128], [255, 64]])


def test_alpha_is_composited_over_white():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (0, 0, 0, 0)  # fully transparent
    rgba[1, 0] = (0, 0, 255, 128)  # half-transparent blue
    rgba[1, 1] = (10, 20, 30, 255)
    expected = np.array([[[255, 0, 0], [255, 255, 255]], [[127, 127, 255], [10, 20, 30]]])
    pil = _roundtrip(Image.fromarray(rgba), "PNG")
    assert pil.mode == "RGBA"
    assert np.abs(read_image(pil).astype(int) - expected).max() <= 1
    assert np.abs(read_image(rgba).astype(int) - expected).max() <= 1
    la = Image.fromarray(np.array([[[100, 255], [100, 0]]], dtype=np.uint8), mode="LA")
    np.testing.assert_array_equal(read_image(la)[0, :, 0], [100, 255])


def test_palette_modes_with_and_without_transparency():
    pil = Image.fromarray(RGB).quantize(colors=4)
    assert pil.mode == "P"
    np.testing.assert_array_equal(read_image(pil), RGB)
    indexed = Image.fromarray(np.array([[0, 1]], dtype=np.uint8))
    indexed.putpalette([255, 0, 0, 0, 255, 0])  # index 0 red, 1 green
    transparent = _roundtrip(indexed, "PNG", transparency=0)
    assert transparent.mode == "P" and "transparency" in transparent.info
    np.testing.assert_array_equal(read_image(transparent)[0], [[255, 255, 255], [0, 255, 0]])


def test_cmyk_and_other_colour_spaces():
    cmyk = Image.new("CMYK", (2, 1), (0, 255, 255, 0))  # no cyan, full magenta+yellow = red
    np.testing.assert_array_equal(read_image(cmyk)[0, 0], [255, 0, 0])
    jpeg = _roundtrip(cmyk, "JPEG", quality=95)
    assert jpeg.mode == "CMYK"
    assert np.abs(read_image(jpeg)[0, 0].astype(int) - [255, 0, 0]).max() <= 8
    ycc = Image.fromarray(RGB).convert("YCbCr")
    assert np.abs(read_image(ycc).astype(int) - RGB).max() <= 3


def test_exif_rotation_is_applied():
    # A 4x2 (w x h) image whose EXIF says "rotate 90 cw to display": displayed 2x4.
    image = np.zeros((2, 4, 3), dtype=np.uint8)
    image[:, 0] = 255  # left column white
    exif = Image.Exif()
    exif[0x0112] = 6
    pil = _roundtrip(Image.fromarray(image), "JPEG", exif=exif, quality=100)
    rgb = read_image(pil)
    assert rgb.shape == (4, 2, 3)
    # Orientation 6: the stored left column becomes the top row.
    assert rgb[0].mean() > 200 and rgb[-1].mean() < 50


def test_unreadable_file_is_named(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="broken.png"):
        read_image(bad)
    whole = tmp_path / "whole.jpg"
    Image.fromarray(_random_image(64, 64)).save(whole)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(whole.read_bytes()[:300])
    with pytest.raises(ValueError, match="truncated.jpg"):
        read_image(truncated)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        read_image(tmp_path / "missing.jpg")


def test_find_images_expands_folders(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.jpg", "a.PNG", "sub/c.tif", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    explicit = tmp_path / "notes.txt"
    found = find_images([tmp_path, explicit])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.PNG",
        "b.jpg",
        "sub/c.tif",
        "notes.txt",
    ]


# --- the segmenter -----------------------------------------------------------


def test_predict_shapes_and_probabilities():
    seg = _segmenter(Pointwise(4), class_names=("bg", "a", "b", "c"))
    image = _random_image(37, 53)
    pred = seg.predict(image, probabilities=True)
    assert pred.labels.shape == (37, 53) and pred.labels.dtype == np.uint8  # 4 classes
    assert pred.probabilities.shape == (4, 37, 53)
    np.testing.assert_allclose(pred.probabilities.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(pred.labels, pred.probabilities.argmax(0))
    # The same as running the model by hand on the normalised image.
    x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() - seg.mean) / seg.std
    with torch.no_grad():
        by_hand = seg.model(x).softmax(1)[0].numpy()
    np.testing.assert_allclose(pred.probabilities, by_hand, atol=1e-5)
    assert seg.predict(image).probabilities is None


def test_shares_and_summary_are_computed_from_labels():
    labels = np.zeros((10, 10), dtype=np.int64)
    labels[:6] = 2  # 60% "person"
    labels[6:, :5] = 0  # 20% background, the rest (20%) "car"
    labels[6:, 5:] = 1
    pred = Prediction(labels=labels, class_names=("background", "car", "person"))
    assert pred.shares() == pytest.approx({"person": 0.6, "background": 0.2, "car": 0.2})
    assert list(pred.shares()) == ["person", "background", "car"]
    assert pred.summary() == "person 60.0%, background 20.0%, car 20.0%"
    assert pred.mask("car").sum() == 20
    with pytest.raises(ValueError, match="this model knows"):
        pred.mask("dog")


def test_flip_averaging_makes_prediction_mirror_equivariant():
    image = _random_image(24, 31)
    mirrored = image[:, ::-1]
    seg = _segmenter(SmallFCN(), flip=True)
    a = seg.predict(image, probabilities=True).probabilities
    b = seg.predict(mirrored, probabilities=True).probabilities
    np.testing.assert_allclose(a, b[:, :, ::-1], atol=1e-5)
    # Without flip averaging the asymmetric kernels break the mirror symmetry.
    plain = _segmenter(SmallFCN())
    a = plain.predict(image, probabilities=True).probabilities
    b = plain.predict(mirrored, probabilities=True).probabilities
    assert np.abs(a - b[:, :, ::-1]).max() > 1e-3


def test_flip_of_a_symmetric_input_changes_nothing_for_a_symmetric_model():
    model = SmallFCN()
    with torch.no_grad():  # mirror-symmetric kernels: the model commutes with flips
        for conv in (model.body[0], model.body[2]):
            conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)
    half = _random_image(20, 8)
    symmetric = np.concatenate([half, half[:, ::-1]], axis=1)
    a = _segmenter(model, flip=True).predict(symmetric, probabilities=True).probabilities
    b = _segmenter(model).predict(symmetric, probabilities=True).probabilities
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_multi_scale_averages_the_single_scales():
    model = Recorder(SmallFCN())
    x = _segmenter(model).normalize(_random_image(32, 48))
    both = _segmenter(model, scales=(0.5, 1.5)).probabilities(x)
    # 16x24 and 48x72, padded to multiples of the output stride (16)
    assert model.sizes == [(16, 32), (48, 80)]
    half = _segmenter(model, scales=(0.5,)).probabilities(x)
    big = _segmenter(model, scales=(1.5,)).probabilities(x)
    assert both.shape == (1, 3, 32, 48)
    torch.testing.assert_close(both, (half + big) / 2)
    assert (half - big).abs().max() > 1e-3  # the scales really differ


def test_sliding_window_equals_whole_image():
    image = _random_image(70, 90)
    # Receptive field 1: tiles give exactly the whole-image logits.
    whole = _segmenter(Pointwise()).predict(image, probabilities=True)
    model = Recorder(Pointwise())
    tiled = _segmenter(model, crop=32, overlap=0.25).predict(image, probabilities=True)
    assert set(model.sizes) == {(32, 32)} and len(model.sizes) > 4
    np.testing.assert_allclose(tiled.probabilities, whole.probabilities, atol=1e-5)
    # 5x5 receptive field: only pixels near tile borders see zero padding instead of
    # their neighbours, so the two agree within a tolerance.
    whole = _segmenter(SmallFCN()).predict(image, probabilities=True)
    tiled = _segmenter(SmallFCN(), crop=(40, 48), batch_size=3).predict(image, probabilities=True)
    diff = np.abs(tiled.probabilities - whole.probabilities)
    assert diff.mean() < 0.02
    assert (tiled.labels == whole.labels).mean() > 0.95


def test_fixed_input_size_resizes_pads_and_maps_back():
    model = Recorder(Pointwise())
    seg = _segmenter(model, input_size=33)
    image = _smooth_image(50, 100)
    pred = seg.predict(image, probabilities=True)
    assert model.sizes == [(33, 33)]  # the model only ever sees its own size
    assert pred.labels.shape == (50, 100)
    # A pointwise model commutes with resizing up to interpolation error.
    whole = _segmenter(Pointwise()).predict(image)
    assert (pred.labels == whole.labels).mean() > 0.95
    # At scale s the canvas is the input size times s, kept at k * 16 + 1.
    model.sizes.clear()
    _segmenter(model, input_size=33, scales=(0.5, 1.0, 1.75)).predict(image)
    assert model.sizes == [(17, 17), (33, 33), (57, 57)]


@pytest.mark.parametrize("align_corners, padded", [(True, (65, 113)), (False, (64, 112))])
def test_inputs_are_padded_to_the_feature_grid_and_cropped_back(align_corners, padded):
    # As the training loop's validation does: k * 16 + 1 (corner-aligned) or k * 16.
    model = Recorder(Pointwise())
    image = _random_image(50, 100)
    pred = _segmenter(model, align_corners=align_corners).predict(image, probabilities=True)
    assert model.sizes == [padded] and pred.labels.shape == (50, 100)
    # A pointwise model gives the same answer on the unpadded pixels.
    plain = _segmenter(Pointwise()).predict(image, probabilities=True)
    np.testing.assert_allclose(pred.probabilities, plain.probabilities, atol=1e-6)


def test_output_stride_override_reaches_the_model():
    model = Recorder(Pointwise())
    _segmenter(model, output_stride=8)
    assert model.output_stride == 8
    with pytest.raises(ValueError, match="set_output_stride"):
        _segmenter(Pointwise(), output_stride=8)


def test_predict_batch_matches_single_predictions():
    images = [_random_image(20, 30, 1), _random_image(25, 25, 2), _random_image(20, 30, 3)]
    model = Recorder(SmallFCN())
    seg = _segmenter(model, batch_size=2)
    batch = seg.predict_batch(images, probabilities=True)
    assert model.calls == 2  # the two 20x30 images share one forward pass
    for image, got in zip(images, batch, strict=True):
        single = seg.predict(image, probabilities=True)
        np.testing.assert_allclose(got.probabilities, single.probabilities, atol=1e-5)


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="2 class names"):
        _segmenter(Pointwise(3), class_names=("a", "b"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cpu"):
            _segmenter(Pointwise(), device="cuda")


# --- files and the `deeplab predict` command ----------------------------------


def test_save_prediction_writes_every_file(tmp_path):
    seg = _segmenter(Pointwise(3), class_names=("background", "cat", "person"))
    image = _smooth_image(30, 40)
    pred = seg.predict(image, probabilities=True)
    from deeplab.predict import save_prediction

    files = save_prediction(pred, tmp_path, "pic", probabilities=True, portrait="person")
    assert [f.name for f in files] == [
        "pic.png",
        "pic_color.png",
        "pic_overlay.jpg",
        "pic_probs.npy",
        "pic_portrait.jpg",
    ]
    with Image.open(tmp_path / "pic.png") as im:
        assert im.mode == "P" and im.size == (40, 30)
        np.testing.assert_array_equal(np.asarray(im), pred.labels)
    np.testing.assert_allclose(np.load(tmp_path / "pic_probs.npy"), pred.probabilities)
    with Image.open(tmp_path / "pic_portrait.jpg") as im:
        assert im.size == (40, 30)


@pytest.fixture
def tiny_zoo(monkeypatch):
    """`Segmenter.from_pretrained` answers with a tiny model, so the CLI runs offline and fast."""
    made = []

    def fake(cls, name=None, **options):
        made.append((name, options))
        names = ("background", "thing", "person")
        return cls(Pointwise(3), mean=(127.5,) * 3, std=(127.5,) * 3, class_names=names, **options)

    monkeypatch.setattr(Segmenter, "from_pretrained", classmethod(fake))
    # The tiny model lives in the Segmenter path: keep `deeplab predict` off the quick one
    # (the real zoo model's cached pipeline).
    import deeplab.quick as quick

    monkeypatch.setattr(quick, "usable", lambda: False)
    return made


def test_cli_predict_writes_outputs_and_reports_unreadable(tmp_path, tiny_zoo, capsys):
    from deeplab.cli import main

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(_smooth_image(30, 40)).save(src / "a.jpg")
    Image.fromarray(_smooth_image(20, 25)[..., 0]).save(src / "sub" / "b.png")  # greyscale
    (src / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    code = main(["predict", str(src), "--out", str(out), "--probs", "--portrait", "person",
                 "--scales", "0.75,1", "--flip"])  # fmt: skip
    captured = capsys.readouterr()
    assert code != 0
    assert "broken.png" in captured.err
    for stem, size in (("a", (40, 30)), ("b", (25, 20))):
        with Image.open(out / f"{stem}.png") as im:
            assert im.mode == "P" and im.size == size
        for suffix in ("_color.png", "_overlay.jpg", "_probs.npy", "_portrait.jpg"):
            assert (out / f"{stem}{suffix}").is_file()
    assert not list(out.glob("broken*"))
    assert "a.jpg: " in captured.out and "%" in captured.out
    assert tiny_zoo[0][0] is None  # no model named: the default zoo entry
    assert tiny_zoo[0][1]["scales"] == (0.75, 1.0) and tiny_zoo[0][1]["flip"] is True


def test_cli_predict_success_and_bad_portrait_class(tmp_path, tiny_zoo, capsys):
    from deeplab.cli import main

    Image.fromarray(_smooth_image(16, 16)).save(tmp_path / "x.png")
    assert main(["predict", str(tmp_path / "x.png"), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "x_overlay.jpg").is_file()
    assert main(["predict", str(tmp_path / "x.png"), "--portrait", "dog"]) == 2
    assert "person" in capsys.readouterr().err  # the error lists the valid classes


def testparse_scales():
    from deeplab.data.transforms import parse_scales

    assert parse_scales("0.5:0.25:1.75") == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    assert parse_scales("1,1.5") == (1.0, 1.5)


def test_crf_option_refines_the_model_probabilities():
    from deeplab.crf import dense_crf

    image = _smooth_image(24, 32)
    options = dict(iterations=3, bilateral_srgb=20)
    plain = _segmenter(SmallFCN()).predict(image, probabilities=True)
    refined = _segmenter(SmallFCN(), crf=True, crf_options=options).predict(
        image, probabilities=True
    )
    expected = dense_crf(image, plain.probabilities, **options)
    np.testing.assert_allclose(refined.probabilities, expected, atol=1e-5)
    np.testing.assert_array_equal(refined.labels, expected.argmax(0))
    assert np.abs(refined.probabilities - plain.probabilities).max() > 1e-3


def test_cli_crf_options_reach_the_segmenter_and_are_checked(capsys):
    from deeplab.cli import build_parser
    from deeplab.cli.common import segmenter_options

    args = build_parser().parse_args(
        ["predict", "x.jpg", "--crf-option", "bilateral_srgb=5", "--crf-option", "iterations=10"]
    )
    options = segmenter_options(args)
    assert options["crf"] is True  # a CRF option implies --crf
    assert options["crf_options"] == {"bilateral_srgb": 5, "iterations": 10}
    bad = build_parser().parse_args(["predict", "x.jpg", "--crf-option", "srgb=5"])
    with pytest.raises(ValueError, match="bilateral_srgb"):
        segmenter_options(bad)


def _save_tiny_deeplab(tmp_path, num_classes: int):
    import deeplab

    torch.manual_seed(0)
    model = deeplab.create_model("deeplabv3_mobilenetv2", num_classes=num_classes, width_mult=0.5)
    return model.eval()


def test_from_weights_reads_the_class_count_from_a_state_dict(tmp_path):
    model = _save_tiny_deeplab(tmp_path, 11)
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    arch, width = "deeplabv3_mobilenetv2", {"width_mult": 0.5}
    seg = Segmenter.from_weights(path, model=arch, model_options=width)
    assert seg.num_classes == 11
    assert seg.class_names[0] == "sky"  # 11 classes: CamVid's names guessed
    image = _smooth_image(33, 41)
    x = seg.normalize(image)
    with torch.no_grad():
        np.testing.assert_allclose(seg.probabilities(x), model(x).softmax(1), atol=1e-5)
    with pytest.raises(ValueError, match="--num-classes 11"):
        Segmenter.from_weights(path, model=arch, num_classes=21, model_options=width)
    with pytest.raises(ValueError, match="--model NAME"):
        Segmenter.from_weights(path)


def test_from_checkpoint_rebuilds_model_classes_and_normalisation(tmp_path):
    import dataclasses

    from deeplab.config import Config, to_dict
    from deeplab.data.labels import CAMVID_CLASSES, IMAGENET_MEAN

    model = _save_tiny_deeplab(tmp_path, 11)
    cfg = Config()
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(
            cfg.model, name="deeplabv3_mobilenetv2", num_classes=11, options={"width_mult": 0.5}
        ),
        data=dataclasses.replace(cfg.data, dataset="camvid", std=[50.0, 50.0, 50.0]),
    )
    path = tmp_path / "best.pt"
    torch.save({"model": model.state_dict(), "config": to_dict(cfg), "step": 7}, path)
    seg = Segmenter.from_weights(path)  # a checkpoint needs no --model
    assert seg.class_names == CAMVID_CLASSES
    assert seg.mean.flatten().tolist() == pytest.approx(IMAGENET_MEAN)
    assert seg.std.flatten().tolist() == pytest.approx([50.0] * 3)
    x = seg.normalize(_smooth_image(33, 33))
    with torch.no_grad():
        np.testing.assert_allclose(seg.probabilities(x), model(x).softmax(1), atol=1e-5)


@pytest.mark.slow
def test_default_zoo_model_finds_the_astronaut(tmp_path, weights_dir, monkeypatch, capsys):
    """The README's first command, offline: the default VOC model on the shipped astronaut.jpg."""
    import os

    from deeplab.cli import main

    if not (weights_dir / "deeplabv3_mnv2_pascal_quant.tflite").is_file():
        pytest.skip(f"{weights_dir} lacks the default VOC model")
    if not os.environ.get("DEEPLAB_WEIGHTS_DIR"):
        monkeypatch.setenv("DEEPLAB_WEIGHTS_DIR", str(weights_dir))
    example = PHOTOS / "astronaut.jpg"
    out = tmp_path / "out"
    assert main(["predict", str(example), "--out", str(out)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("astronaut.jpg:"))
    shares = dict(part.rsplit(" ", 1) for part in line.split(": ", 1)[1].split(", "))
    assert float(shares["person"].rstrip("%")) > 25.0
    with Image.open(out / "astronaut.png") as im:
        labels = np.asarray(im)
        assert im.size == (512, 512)
    # The face (rows 60-160, columns 170-280 of the 512x512 photo) is labelled person (15).
    assert (labels[60:160, 170:280] == 15).mean() > 0.8


def test_cli_predict_with_a_state_dict(tmp_path, capsys):
    from deeplab.cli import main

    model = _save_tiny_deeplab(tmp_path, 11)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    Image.fromarray(_smooth_image(40, 30)).save(tmp_path / "street.png")
    args = ["predict", str(tmp_path / "street.png"), "--out", str(tmp_path / "o"),
            "--weights", str(tmp_path / "w.pt"), "--model", "deeplabv3_mobilenetv2",
            "--model-option", "width_mult=0.5", "--output-stride", "8"]  # fmt: skip
    assert main(args) == 0
    with Image.open(tmp_path / "o" / "street.png") as im:
        assert im.size == (30, 40) and np.asarray(im).max() < 11
    # CamVid names: the class count (11) says which dataset the weights are for.
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("street.png: ")
    assert set(n.rsplit(" ", 1)[0] for n in line[12:].split(", ")) <= set(
        ("sky building pole road pavement tree sign_symbol fence car pedestrian bicyclist").split()
    )


def test_max_side_reduces_what_the_network_sees_not_the_labels():
    """A 300x200 image with max_side 64: the network gets at most 48x64 (padded to its grid),
    the labels come back at 300x200 and agree with full-size labels away from edges."""
    seen = []

    class Halves(torch.nn.Module):
        num_classes = 2
        output_stride = 8

        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            v = x.mean(1, keepdim=True)
            return torch.cat([-v, v], 1)

    image = np.zeros((200, 300, 3), np.uint8)
    image[:, 150:] = 255
    small = Segmenter(Halves(), mean=(127.5,) * 3, std=(127.5,) * 3, max_side=64)
    full = Segmenter(Halves(), mean=(127.5,) * 3, std=(127.5,) * 3)
    a, b = small.predict(image).labels, full.predict(image).labels
    assert max(seen[0]) <= 65 and seen[1] == (200, 304)  # padded to multiples of 8
    assert a.shape == b.shape == (200, 300)
    assert (a[:, :140] == 0).all() and (a[:, 160:] == 1).all() and (a == b).mean() > 0.97
    with pytest.raises(ValueError, match="max_side"):
        Segmenter(Halves(), mean=(0,) * 3, std=(1,) * 3, max_side=4)


@pytest.mark.parametrize("align_corners", [True, False])
def test_both_resize_paths_into_a_canvas_are_torchs_bilinear(align_corners, monkeypatch):
    """Small images are resized as a float copy, big ones row by row; both equal torch's
    bilinear resize (the row-by-row path forced here on a small image)."""
    import deeplab.upsample as upsample

    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, (1, 3, 61, 83), dtype=np.uint8))
    expected = F.interpolate(image.float(), size=(97, 129), mode="bilinear",
                             align_corners=align_corners)  # fmt: skip
    fast = upsample.bilinear_rows_first(image, (97, 129), align_corners=align_corners)
    monkeypatch.setattr(upsample, "FLOAT_COPY_PIXELS", 0)
    rows = upsample.bilinear_rows_first(image, (97, 129), align_corners=align_corners)
    assert torch.allclose(fast, expected) and torch.allclose(rows, expected, atol=1e-3)


def test_predict_writes_only_the_outputs_asked_for(tmp_path, capsys):
    """`--outputs labels,overlay` writes those two files per image, the default all three;
    a wrong name is a one-line usage error."""
    from deeplab.cli import main
    from deeplab.predict import predict_files

    photo = tmp_path / "p.png"
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(photo)
    seg = Segmenter(Pointwise(), mean=(0.0,) * 3, std=(1.0,) * 3)
    list(predict_files(seg, [photo], tmp_path / "a", outputs=("labels", "overlay")))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["p.png", "p_overlay.jpg"]
    list(predict_files(seg, [photo], tmp_path / "b"))
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "p.png", "p_color.png", "p_overlay.jpg"]
    assert main(["predict", str(photo), "--outputs", "labels,mask"]) == 2
    assert "choose from labels, color, overlay" in capsys.readouterr().err


@pytest.mark.slow
def test_a_second_predict_reuses_its_cache_and_never_imports_torch(tmp_path, weights_dir):
    """The first `deeplab predict` exports the model's pipeline into the cache; the second
    finds it and runs without importing torch, writing the same labels."""
    import os
    import subprocess
    import sys

    if not (weights_dir / "deeplabv3_257_mv_gpu.tflite").is_file():
        pytest.skip("the mobile VOC model is not in the weights folder")
    env = {**os.environ, "DEEPLAB_CACHE": str(tmp_path / "cache"),
           "DEEPLAB_WEIGHTS_DIR": str(weights_dir)}  # fmt: skip
    code = ("import sys; from deeplab.cli import main; "
            "rc = main(['predict', {photo!r}, '--model', 'deeplabv3_257_mv_gpu', '--out', "
            "{out!r}, '--quiet']); print(rc, 'torch' in sys.modules)")  # fmt: skip
    runs = []
    for name in ("first", "second"):
        done = subprocess.run([sys.executable, "-c", code.format(
            photo=str(PHOTOS / "astronaut.jpg"), out=str(tmp_path / name))],
            env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
        runs.append(done.stdout.split())
    assert runs == [["0", "True"], ["0", "False"]]
    assert len(list((tmp_path / "cache" / "onnx").glob("predict-*.onnx"))) == 1
    first = np.asarray(Image.open(tmp_path / "first" / "astronaut.png"))
    second = np.asarray(Image.open(tmp_path / "second" / "astronaut.png"))
    assert np.array_equal(first, second) and (first == 15).mean() > 0.2  # a person
