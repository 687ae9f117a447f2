"""`deeplab export`: ONNX (and TFLite) files that agree with PyTorch, carry their metadata,
and run in `deeplab predict`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _helpers import PHOTOS
from PIL import Image

from deeplab.checkpoint import ModelInfo
from deeplab.cli import main
from deeplab.export import (
    ExportError,
    LabelGraph,
    check_images,
    check_onnx,
    export_onnx,
    model_to_export,
    onnx_session,
    read_metadata,
)
from deeplab.hub import create_model
from deeplab.models import list_models

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

HEAVY = ("resnet101", "xception", "vgg16")
SIZES = ((33, 41), (50, 37))


def _info(name: str, model: torch.nn.Module) -> ModelInfo:
    return ModelInfo(arch=name, options={"num_classes": model.num_classes},
                     class_names=tuple(f"c{i}" for i in range(model.num_classes)),
                     mean=(120.0, 110.0, 100.0), std=(60.0, 60.0, 60.0))  # fmt: skip


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if any(h in n for h in HEAVY) else n
             for n in list_models()],  # fmt: skip
)
def test_every_architecture_exports_with_label_parity(name, tmp_path, one_thread):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).eval()
    info = _info(name, model)
    path = export_onnx(model, info, tmp_path / f"{name}.onnx")
    session = onnx_session(path)
    graph = LabelGraph(model, info, probabilities=False).eval()
    rng = np.random.default_rng(0)
    for h, w in SIZES:  # two sizes through one file: H and W are dynamic
        image = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        with torch.no_grad():
            ours = graph(torch.from_numpy(image)).numpy()
        theirs = session.run(["labels"], {"image": image})[0]
        assert theirs.shape == (2, h, w)
        assert (ours == theirs).mean() >= 0.999, name


def test_zoo_model_on_real_photos_with_metadata(tmp_path, weights_dir, monkeypatch, one_thread):
    monkeypatch.setenv("DEEPLAB_WEIGHTS_DIR", str(weights_dir))
    model, info = model_to_export(model="deeplabv3_257_mv_gpu")
    path = export_onnx(model, info, tmp_path / "voc.onnx", probabilities=True)
    parity = check_onnx(path, model, info, check_images())
    assert parity.ok and parity.images == 3 and parity.label_agreement >= 0.999
    assert parity.max_logit_diff < 1e-3
    meta = read_metadata(path)
    assert meta["contract"] == "labels" and meta["class_names"][15] == "person"
    assert meta["input_size"] == [257, 257] and meta["output_stride"] == 8
    assert meta["mean"] == [127.5] * 3 and meta["palette"][1] == [128, 0, 0]
    assert ModelInfo(**meta["deeplab.info"]).arch == "deeplabv3_mobilenetv2"
    # Probabilities are a softmax over the classes, at the photo's size.
    photo = check_images()[0]
    probs = onnx_session(path).run(["probabilities"], {"image": photo[None]})[0]
    assert probs.shape == (1, 21, *photo.shape[:2])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)


def test_predict_with_the_onnx_file_equals_predict_with_pytorch(tmp_path, camvid_checkpoint,
                                                                capsys):  # fmt: skip
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee"):
        Image.open(PHOTOS / f"{name}.jpg").save(photos / f"{name}.png")
    onnx_file = tmp_path / "camvid.onnx"
    assert main(["export", "--weights", str(camvid_checkpoint), "--out", str(onnx_file)]) == 0
    assert "parity with PyTorch: passed" in capsys.readouterr().out
    for weights, out in ((camvid_checkpoint, "torch"), (onnx_file, "onnx")):
        assert main(["predict", str(photos), "--weights", str(weights), "--out",
                     str(tmp_path / out), "--quiet"]) == 0  # fmt: skip
    for name in ("astronaut", "coffee"):
        a = np.asarray(Image.open(tmp_path / "torch" / f"{name}.png"))
        b = np.asarray(Image.open(tmp_path / "onnx" / f"{name}.png"))
        assert (a == b).mean() >= 0.999
    # Test-time options run the exported graph several times (raw export: exact).
    raw = tmp_path / "raw.onnx"
    assert main(["export", "--weights", str(camvid_checkpoint), "--raw", "--out", str(raw)]) == 0
    for weights, out in ((camvid_checkpoint, "torch_flip"), (raw, "raw_flip")):
        assert main(["predict", str(photos / "coffee.png"), "--weights", str(weights), "--flip",
                     "--scales", "0.75,1", "--out", str(tmp_path / out), "--quiet"]) == 0
    a = np.asarray(Image.open(tmp_path / "torch_flip" / "coffee.png"))
    b = np.asarray(Image.open(tmp_path / "raw_flip" / "coffee.png"))
    assert (a == b).mean() >= 0.999


@pytest.fixture()
def camvid_checkpoint(tmp_path):
    """A CamVid-style training checkpoint: v3+ MobileNetV2 (width 0.5), 11 classes."""
    from deeplab.checkpoint import ModelInfo, best_state, save
    from deeplab.config import load_config, to_dict
    from deeplab.data.labels import CAMVID_CLASSES, CAMVID_PALETTE

    torch.manual_seed(0)
    model = create_model("deeplabv3plus_mobilenetv2", num_classes=11, width_mult=0.5).eval()
    for m in model.modules():  # non-trivial statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    info = ModelInfo(arch="deeplabv3plus_mobilenetv2", options=model.build_spec["options"],
                     class_names=CAMVID_CLASSES, palette=CAMVID_PALETTE,
                     mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))  # fmt: skip
    cfg = to_dict(load_config("camvid_v3plus_mobilenetv2"))
    return save(tmp_path / "best.pt", best_state(model=model, step=10, config=cfg, info=info,
                                                 metrics={"miou": 0.5}))  # fmt: skip


def test_bad_exports_are_one_line(tmp_path, capsys, monkeypatch):
    assert main(["export", "--model", "deeplabv3_mobilenetv2", "--format", "gif", "--out",
                 str(tmp_path / "m.gif")]) == 2  # fmt: skip
    assert "invalid choice: 'gif'" in capsys.readouterr().err
    (tmp_path / "file").write_text("not a folder")
    assert main(["export", "--model", "deeplabv3_mobilenetv2", "--out",
                 str(tmp_path / "file" / "m.onnx"), "--no-check"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "file" in err and len(err.strip().splitlines()) == 1

    def broken(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::weird' to ONNX is not supported\nmore")

    monkeypatch.setattr(torch.onnx, "export", broken)
    assert main(["export", "--model", "deeplabv3_mobilenetv2", "--out",
                 str(tmp_path / "m.onnx")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "could not be exported to ONNX" in err and "aten::weird" in err
    assert len(err.strip().splitlines()) == 1


def test_a_failed_check_keeps_the_file_and_exits_1(tmp_path, capsys, monkeypatch):
    torch.manual_seed(0)
    model = create_model("deeplabv3_mobilenetv2", num_classes=5, width_mult=0.5).eval()
    info = _info("deeplabv3_mobilenetv2", model)
    path = export_onnx(model, info, tmp_path / "a.onnx")
    other = create_model("deeplabv3_mobilenetv2", num_classes=5, width_mult=0.5).eval()
    parity = check_onnx(path, other, info, check_images())  # another model's weights
    assert not parity.ok and "FAILED" in str(parity)

    import deeplab.export as export

    monkeypatch.setattr(export, "check_onnx", lambda *a, **k: parity)
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", "deeplabv3_mobilenetv2", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "was written but its parity check FAILED" in err and out.is_file()


def test_tflite_export_runs_in_googles_interpreter(tmp_path, weights_dir, monkeypatch):
    pytest.importorskip("litert_torch", reason="TFLite export needs litert-torch "
                        "(pip install 'deeplab[tflite]'); CI installs it")  # fmt: skip
    pytest.importorskip("ai_edge_litert")
    from deeplab.export import check_tflite, export_tflite

    monkeypatch.setenv("DEEPLAB_WEIGHTS_DIR", str(weights_dir))
    model, info = model_to_export(model="deeplabv3_257_mv_gpu")
    path = export_tflite(model, info, tmp_path / "m.tflite", input_size=None)
    parity = check_tflite(path, model, info, check_images())
    assert parity.ok and parity.max_logit_diff < 1e-3, parity
    assert json.loads((tmp_path / "m.tflite.json").read_text())["input_size"] == [257, 257]
    with pytest.raises(ExportError, match="could not be converted"):
        export_tflite(_Branchy(), info, tmp_path / "x.tflite", input_size=(33, 33))


class _Branchy(torch.nn.Module):
    """Data-dependent control flow: no converter can trace it (an identity converts fine)."""

    def forward(self, x):
        return x * 2 if x.sum() > 0 else x


def test_eval_runs_both_kinds_of_export_and_agrees_with_pytorch(camvid_checkpoint, tmp_path,
                                                                 capsys):  # fmt: skip
    """`deeplab eval --weights model.onnx` on the default export (uint8 in, labels out) and on
    a --raw one: the mIoU PyTorch gets, on 3 real CamVid-sized photos with drawn masks."""
    root = tmp_path / "data"
    for sub in ("images/val", "masks/val"):
        (root / sub).mkdir(parents=True)
    for i, name in enumerate(("astronaut", "chelsea", "coffee")):
        photo = Image.open(PHOTOS / f"{name}.jpg").convert("RGB").resize((240, 180))
        photo.save(root / "images" / "val" / f"{name}.png")
        mask = np.zeros((180, 240), np.uint8)
        mask[60:, :] = 3
        mask[:, 100 + 20 * i :] = 8
        Image.fromarray(mask).save(root / "masks" / "val" / f"{name}.png")
    (root / "class_names.txt").write_text("\n".join(
        ["sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
         "pedestrian", "bicyclist"]) + "\n")  # fmt: skip
    labels, raw = tmp_path / "labels.onnx", tmp_path / "raw.onnx"
    assert main(["export", "--weights", str(camvid_checkpoint), "--out", str(labels)]) == 0
    assert main(["export", "--weights", str(camvid_checkpoint), "--raw", "--out", str(raw)]) == 0
    capsys.readouterr()
    figures = {}
    for weights in (camvid_checkpoint, labels, raw):
        assert main(["eval", "--weights", str(weights), "--dataset", "folder", "--data-root",
                     str(root), "--runtime", "torch", "--quiet"]) == 0  # fmt: skip
        line = [x for x in capsys.readouterr().out.splitlines() if "mean IoU" in x][-1]
        figures[weights.name] = float(line.split("mean IoU ")[1].split("%")[0])
    assert figures["labels.onnx"] == pytest.approx(figures["best.pt"], abs=0.1), figures
    assert figures["raw.onnx"] == pytest.approx(figures["best.pt"], abs=0.1), figures


@pytest.fixture()
def labelled(tmp_path):
    """3 photos at 240x180 with drawn 11-class masks, as a folder dataset (val split)."""
    root = tmp_path / "labelled"
    for sub in ("images/val", "masks/val"):
        (root / sub).mkdir(parents=True)
    for i, name in enumerate(("astronaut", "chelsea", "coffee")):
        Image.open(PHOTOS / f"{name}.jpg").convert("RGB").resize((240, 180)).save(
            root / "images" / "val" / f"{name}.png")
        mask = np.zeros((180, 240), np.uint8)
        mask[60:, :] = 3
        mask[:, 100 + 20 * i :] = 8
        Image.fromarray(mask).save(root / "masks" / "val" / f"{name}.png")
    (root / "class_names.txt").write_text("\n".join(f"c{k}" for k in range(11)) + "\n")
    return root


@pytest.mark.slow
def test_int8_export_is_judged_by_miou_and_runs_everywhere(camvid_checkpoint, labelled,
                                                           tmp_path, capsys, caplog):  # fmt: skip
    out = tmp_path / "m_int8.onnx"
    args = ["export", "--weights", str(camvid_checkpoint), "--int8", "--calibrate", str(PHOTOS),
            "--out", str(out)]  # fmt: skip
    assert main([*args, "--eval-data", str(labelled), "--max-drop", "100"]) == 0
    said = capsys.readouterr().out
    assert "as int8, calibrated on 3 photos" in said and "mIoU (folder val, 3 images)" in said
    assert "Collecting tensor data" not in said  # onnxruntime's calibration prints, silenced
    assert "pre-processing" not in caplog.text  # and its root-logger advice
    assert "within the 100-point limit" in said
    float_mb, int8_mb = (float(line.split("|")[-2]) for line in said.splitlines()
                         if line.startswith(("| float", "| int8")))  # fmt: skip
    assert int8_mb < 0.45 * float_mb
    meta = read_metadata(out)
    assert meta["contract"] == "labels" and meta["quantization"]["int8"]["per_channel"]
    assert meta["class_names"] == list(read_metadata_classes(camvid_checkpoint))
    # The int8 file is a model like any other for predict and eval.
    assert main(["predict", str(PHOTOS / "coffee.jpg"), "--weights", str(out), "--out",
                 str(tmp_path / "p"), "--quiet"]) == 0  # fmt: skip
    assert (tmp_path / "p" / "coffee.png").is_file()
    assert main(["eval", "--weights", str(out), "--dataset", "folder", "--data-root",
                 str(labelled), "--quiet"]) == 0  # fmt: skip
    assert "mean IoU" in capsys.readouterr().out
    # Without labels: written, and said to be unchecked.
    assert main(args) == 0
    assert "accuracy unchecked" in capsys.readouterr().out


@pytest.mark.slow
def test_int8_over_the_limit_exits_1_and_keeps_the_file(camvid_checkpoint, labelled, tmp_path,
                                                        capsys, monkeypatch):  # fmt: skip
    import deeplab.quantize as quantize

    def scored(path, pairs, num_classes):  # the int8 file scores 3 points under the float one
        assert len(list(pairs)) == 3
        return 0.30 if "int8" in str(path) else 0.33

    monkeypatch.setattr(quantize, "miou", scored)
    out = tmp_path / "m_int8.onnx"
    assert main(["export", "--weights", str(camvid_checkpoint), "--int8", "--calibrate",
                 str(PHOTOS), "--out", str(out), "--eval-data", str(labelled),
                 "--eval-dataset", "folder"]) == 1  # fmt: skip
    said = capsys.readouterr().out
    assert "int8 costs 3.00 mIoU points" in said and "OVER the 1-point limit" in said
    assert out.is_file()
    assert main(["export", "--weights", str(camvid_checkpoint), "--int8", "--out",
                 str(out)]) == 2  # fmt: skip
    assert "--calibrate DIR" in capsys.readouterr().err


def read_metadata_classes(checkpoint):
    from deeplab.checkpoint import info_of, read

    return info_of(read(checkpoint)).class_names


@pytest.mark.slow
def test_tflite_int8_is_full_integer_and_scored_like_onnx(camvid_checkpoint, labelled, tmp_path,
                                                         capsys):  # fmt: skip
    pytest.importorskip("litert_torch", reason="TFLite export needs litert-torch; CI has it")
    from deeplab.quantize import TfliteLabeler

    out = tmp_path / "m_int8.tflite"
    assert main(["export", "--weights", str(camvid_checkpoint), "--format", "tflite", "--int8",
                 "--calibrate", str(PHOTOS), "--input-size", "129", "--out", str(out),
                 "--eval-data", str(labelled), "--max-drop", "100"]) == 0  # fmt: skip
    said = capsys.readouterr().out
    assert "mIoU (folder val, 3 images)" in said and "as int8" in said
    run = TfliteLabeler(out)
    assert str(run.inp["dtype"]).endswith("int8'>") and run.size == (129, 129)
    labels = run.labels(np.asarray(Image.open(PHOTOS / "coffee.jpg").convert("RGB")))
    assert labels.shape == (400, 600) and labels.max() < 11
    assert json.loads((tmp_path / "m_int8.tflite.json").read_text())["int8"] is True
