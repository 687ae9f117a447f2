"""Your own data without a traceback: every bad input a new user meets, through the CLI.

Each case is a CamVid-layout copy with one defect (or a bad option). The command must exit
with status 2 (1 where the command ran and reports failures, as labelme2voc and predict
do for some files), print one message that names the file or setting and the fix, and lose
or double nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deeplab.checkpoint import read as load_checkpoint
from deeplab.cli import main

H, W = 40, 48
TRAIN = ["-c", "camvid_v3plus_mobilenetv2", "model.init_from=null",
         "model.backbone_weights=null", "model.name=deeplabv3_mobilenetv2",
         "model.options={width_mult: 0.5}", "model.frozen_modules=[]", "data.crop_size=33",
         "train.batch_size=2", "train.iters=4", "train.val_every=0", "train.ckpt_every=2",
         "train.progress=false", "data.num_workers=0", "loss.class_weights=null"]  # fmt: skip


def _mask(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((H, W), np.uint8)
    for c in range(11):  # every class somewhere, and some unlabelled (11)
        y, x = rng.integers(0, H - 6), rng.integers(0, W - 6)
        mask[y : y + 6, x : x + 6] = c
    mask[0, :] = 11
    return mask


@pytest.fixture()
def camvid(tmp_path) -> Path:
    """A CamVid-layout root: 6 train and 2 val images of 48x40."""
    root = tmp_path / "camvid"
    for split, n in (("train", 6), ("val", 2)):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        lines = []
        for i in range(n):
            mask = _mask(i + (100 if split == "val" else 0))
            image = (np.random.default_rng(i).random((H, W, 3)) * 50 + mask[..., None] * 15)
            Image.fromarray(image.astype(np.uint8)).save(root / split / f"f{i}.png")
            Image.fromarray(mask).save(root / f"{split}annot" / f"f{i}.png")
            lines.append(f"{split}/f{i}.png {split}annot/f{i}.png")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def _train(root: Path, out: Path, *extra: str) -> int:
    return main(["train", *TRAIN, f"data.root={root}", f"train.out_dir={out}", *extra])


def _err(capsys) -> str:
    return capsys.readouterr().err


# --- the data doctor refuses before the first step ------------------------------------------


def test_good_data_passes_the_check_and_trains(camvid, tmp_path, capsys):
    assert _train(camvid, tmp_path / "run") == 0
    out = capsys.readouterr().out
    assert "data check: 8 of 8 image/mask pairs" in out and "0 problem(s)" in out
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 4


@pytest.mark.parametrize("defect", ["value_50", "wrong_size", "rgb_mask", "missing_file"])
def test_a_broken_file_is_named_before_training(camvid, tmp_path, capsys, defect):
    mask = camvid / "trainannot" / "f3.png"
    if defect == "value_50":
        bad = _mask(3)
        bad[5, 5] = 50
        Image.fromarray(bad).save(mask)
    elif defect == "wrong_size":
        Image.fromarray(_mask(3)[:30]).save(mask)
    elif defect == "rgb_mask":
        Image.fromarray(np.stack([_mask(3) * 20] * 3, -1)).save(mask)
    else:
        (camvid / "train" / "f3.png").unlink()
    assert _train(camvid, tmp_path / "run") == 2
    err = _err(capsys)
    assert "f3.png" in err and "Traceback" not in err
    fix = {"value_50": "mask value 50", "wrong_size": "masks must have their image's size",
           "rgb_mask": "RGB", "missing_file": "do not exist"}[defect]  # fmt: skip
    assert fix in err
    assert not (tmp_path / "run" / "last.pt").exists()  # refused before any step


def test_every_problem_in_one_report(camvid, tmp_path, capsys):
    bad = _mask(1)
    bad[2, 2] = 77
    Image.fromarray(bad).save(camvid / "trainannot" / "f1.png")
    Image.fromarray(_mask(2)[:20]).save(camvid / "trainannot" / "f2.png")
    (camvid / "val" / "f0.png").write_bytes(b"not a png")
    assert _train(camvid, tmp_path / "run") == 2
    err = _err(capsys)
    assert "3 problem(s)" in err
    assert "f1.png" in err and "f2.png" in err and "val/f0.png" in err


def test_class_count_that_cannot_hold_the_masks(camvid, tmp_path, capsys):
    assert _train(camvid, tmp_path / "run", "model.num_classes=5") == 2
    err = _err(capsys)
    assert "model.num_classes=5" in err and "set model.num_classes=11" in err


def test_class_weights_of_the_wrong_length(camvid, tmp_path, capsys):
    assert _train(camvid, tmp_path / "run", "loss.class_weights=[1, 2, 3]") == 2
    err = _err(capsys)
    assert "loss.class_weights has 3 values for 11 classes" in err and "--weights-json" in err


def test_binary_masks_saved_as_0_and_255(camvid, tmp_path, capsys):
    for split, n in (("train", 6), ("val", 2)):
        for i in range(n):
            binary = np.where(_mask(i) > 5, 255, 0).astype(np.uint8)
            Image.fromarray(binary).save(camvid / f"{split}annot" / f"f{i}.png")
    assert _train(camvid, tmp_path / "run") == 2
    assert "data.options={mask_map: {255: 1}}" in _err(capsys)


def test_empty_split_and_unknown_model(camvid, tmp_path, capsys):
    (camvid / "train.txt").write_text("")
    assert _train(camvid, tmp_path / "run") == 2
    assert "train.txt lists no images" in _err(capsys)
    assert main(["train", "model.name=deeplabv9", "--print-config"]) == 2
    assert "model.name='deeplabv9' is not a registered model" in _err(capsys)


def test_flat_folder_would_validate_on_its_training_images(tmp_path, capsys):
    root = tmp_path / "flat"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(4):
        Image.fromarray(np.full((H, W, 3), 60 * i, np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray((_mask(i) > 5).astype(np.uint8)).save(root / "masks" / f"{i}.png")
    args = ["train", "-c", "own_data", f"data.root={root}", "model.num_classes=2",
            f"train.out_dir={tmp_path / 'run'}"]  # fmt: skip
    assert main(args) == 2
    err = _err(capsys)
    assert "4 of 4 validation images are also training images" in err
    assert "data.val_split=null" in err


# --- during and after training --------------------------------------------------------------


def test_a_file_that_breaks_mid_run_saves_a_checkpoint_first(camvid, tmp_path, capsys):
    # data.check=off stands in for a file that went bad after the check. With seed 0 the
    # first epoch reads f2, f5, f3, f0, ...: f0 is met at the fourth step.
    bad = _mask(0)
    bad[0, 0] = 50
    Image.fromarray(bad).save(camvid / "trainannot" / "f0.png")
    out = tmp_path / "run"
    assert _train(camvid, out, "data.check=off", "train.batch_size=1", "train.log_every=1",
                  "train.ckpt_every=100") == 2  # fmt: skip
    err = _err(capsys)
    assert "mask value 50" in err and "f0.png" in err and "Traceback" not in err
    state = load_checkpoint(out / "last.pt")  # written at the failure, not at a schedule
    assert state["step"] == 3 and state["data"] == {"epoch": 0, "batch": 3}
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]


def test_kill_and_resume_logs_each_step_once(camvid, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(camvid, out, "train.stop_at=3", "train.log_every=1") == 0
    # kill -9 after step 3 was logged but before its checkpoint (written at step 2):
    state = load_checkpoint(out / "last.pt")
    assert state["step"] == 3
    shutil.copy(out / "last.pt", tmp_path / "at3.pt")
    state["step"] = 2
    torch.save(state, out / "last.pt")
    assert main(["train", "--resume", str(out / "last.pt"), "train.stop_at=null"]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]  # step 3 logged once


# --- predict, zoo and weight files ----------------------------------------------------------


@pytest.fixture()
def checkpoint_file(camvid, tmp_path, capsys) -> Path:
    assert _train(camvid, tmp_path / "run") == 0
    capsys.readouterr()
    return tmp_path / "run" / "last.pt"


def test_predict_refuses_options_a_checkpoint_decides(checkpoint_file, camvid, capsys):
    image = str(camvid / "val" / "f0.png")
    for extra, named in ((["--model", "deeplabv3plus_resnet101"], "--model"),
                         (["--num-classes", "21"], "--num-classes"),
                         (["--dataset", "voc"], "--dataset")):  # fmt: skip
        assert main(["predict", image, "--weights", str(checkpoint_file), *extra]) == 2
        err = _err(capsys)
        assert "is a training checkpoint" in err and named in err
    assert main(["predict", image, "--weights", str(checkpoint_file), "--dataset", "camvid",
                 "--out", str(checkpoint_file.parent / "p")]) == 0  # agrees: fine


def test_predict_bad_dataset_bad_weights_bad_out(tmp_path, camvid, capsys, weights_dir):
    image = str(camvid / "val" / "f0.png")
    garbage = tmp_path / "random.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    for extra in ([], ["--model", "deeplabv3_mobilenetv2"]):
        assert main(["predict", image, "--weights", str(garbage), *extra]) == 2
        err = _err(capsys)
        assert "random.pt is not a readable PyTorch weight file" in err
        assert len(err.strip().splitlines()) == 1 and "weights_only" not in err
    cut = tmp_path / "cut.tflite"
    cut.write_bytes((weights_dir / "deeplabv3_257_mv_gpu.tflite").read_bytes()[:300000])
    assert main(["predict", image, "--weights", str(cut)]) == 2
    assert "cut.tflite" in _err(capsys)
    state = tmp_path / "w.pt"
    torch.save({"head.classifier.weight": torch.zeros(21, 256, 1, 1)}, state)
    assert main(["predict", image, "--weights", str(state), "--model",
                 "deeplabv3_mobilenetv2", "--dataset", "nosuch"]) == 2  # fmt: skip
    assert "unknown dataset 'nosuch'" in _err(capsys)
    (tmp_path / "taken").write_text("a file")
    assert main(["predict", image, "--out", str(tmp_path / "taken")]) == 2
    assert "is a file" in _err(capsys)
    assert main(["models", "--size", "abc"]) == 2
    assert "give H or HxW" in _err(capsys)


def test_voc_model_with_camvid_names_is_refused(weights_dir, monkeypatch, camvid, capsys):
    monkeypatch.setenv("DEEPLAB_WEIGHTS_DIR", str(weights_dir))
    tflite = weights_dir / "deeplabv3_257_mv_gpu.tflite"
    assert main(["predict", str(camvid / "val" / "f0.png"), "--weights", str(tflite),
                 "--dataset", "camvid"]) == 2  # fmt: skip
    assert "has 11 classes but the model predicts 21" in _err(capsys)


def test_zoo_shows_a_damaged_file_as_corrupt(tmp_path, monkeypatch, capsys):
    (tmp_path / "deeplabv3_257_mv_gpu.tflite").write_bytes(b"damaged")
    monkeypatch.setenv("DEEPLAB_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("DEEPLAB_CACHE", str(tmp_path / "cache"))
    assert main(["zoo"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines()
                if x.startswith("deeplabv3_257_mv_gpu"))  # fmt: skip
    assert "corrupt" in line and "delete it" in line


# --- labelme both ways ----------------------------------------------------------------------


def test_labelme2voc_converts_every_good_file_and_reports_every_bad_one(tmp_path, capsys):
    src = tmp_path / "jsons"
    src.mkdir()
    image = np.zeros((20, 30, 3), np.uint8)
    Image.fromarray(image).save(src / "photo.png")

    def doc(shapes):
        return json.dumps({"shapes": shapes, "imagePath": "photo.png", "imageData": None,
                           "imageHeight": 20, "imageWidth": 30})  # fmt: skip

    square = {"label": "thing", "points": [[2, 2], [10, 2], [10, 10], [2, 10]],
              "shape_type": "polygon"}  # fmt: skip
    (src / "a_good.json").write_text(doc([square]))
    (src / "b_broken.json").write_text("{ not json")
    (src / "c_zebra.json").write_text(doc([{**square, "label": "zebra"}]))
    (src / "d_empty.json").write_text(doc([]))
    (src / "e_good.json").write_text(doc([square]))
    (tmp_path / "labels.txt").write_text("__ignore__\n_background_\nthing\n")
    code = main(["labelme2voc", str(src), str(tmp_path / "out"), "--labels",
                 str(tmp_path / "labels.txt")])  # fmt: skip
    assert code == 1
    captured = capsys.readouterr()
    assert "b_broken.json" in captured.err and "c_zebra.json" in captured.err
    assert "d_empty.json has no shapes" in captured.err
    written = sorted(p.stem for p in (tmp_path / "out" / "SegmentationClass").glob("*.png"))
    assert written == ["a_good", "d_empty", "e_good"]
    assert "converted 3 labelme file(s)" in captured.out


def test_predict_labelme_round_trip(tmp_path, weights_dir, monkeypatch, capsys, shared):
    """A model pre-annotates; labelme2voc turns its polygons back into its own masks."""
    pytest.importorskip("skimage")
    monkeypatch.setenv("DEEPLAB_WEIGHTS_DIR", str(weights_dir))
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted((shared / "data" / "labelme_voc_example").glob("*.jpg")):
        shutil.copy(p, photos / p.name)
    out = tmp_path / "pre"
    assert main(["predict", str(photos), "--out", str(out), "--labelme", "--quiet"]) == 0
    assert main(["labelme2voc", str(out), str(tmp_path / "voc"), "--labels",
                 str(out / "labels.txt")]) == 0  # fmt: skip
    for photo in sorted(photos.glob("*.jpg")):
        doc = json.loads((out / f"{photo.stem}.json").read_text())
        assert doc["shapes"] and doc["imageHeight"] > 0
        predicted = np.asarray(Image.open(out / f"{photo.stem}.png"))
        back = np.asarray(Image.open(tmp_path / "voc" / "SegmentationClass" / f"{photo.stem}.png"))
        agreement = (predicted == back).mean()
        assert agreement >= 0.98, f"{photo.name}: {agreement:.4f}"
        assert len(np.unique(predicted)) > 1  # a real, non-trivial prediction


def test_eval_writes_a_confusion_picture_and_precision(checkpoint_file, camvid, tmp_path,
                                                      capsys):  # fmt: skip
    pytest.importorskip("matplotlib")
    out = tmp_path / "m.json"
    assert main(["eval", "--weights", str(checkpoint_file), "--dataset", "camvid",
                 "--data-root", str(camvid), "--out", str(out), "--workers", "0",
                 "--quiet"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "precision %" in text and "recall %" in text
    picture = tmp_path / "m_confusion.png"
    with Image.open(picture) as im:
        assert im.size[0] > 200 and im.size[1] > 200
    data = json.loads(out.read_text())
    assert len(data["precision"]) == 11
