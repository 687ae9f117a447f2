"""`deeplab tune-crf`: the CRF's parameters chosen on training images, stored in the
checkpoint, used by `predict --crf` and `eval --crf`; validation images are refused."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from deeplab.checkpoint import read as read_checkpoint
from deeplab.cli import main
from deeplab.tune import TuningError, tune_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny v3+ trained 3 steps on 6 + 2 images of 40x48 with 3 classes."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(n):
            mask = np.zeros((40, 48), np.uint8)
            mask[:, 16 + i:] = 1
            mask[20:, 30:] = 2
            image = (rng.random((40, 48, 3)) * 60 + mask[..., None] * 60).astype(np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"{split}{i}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{split}{i}.png")
    (root / "class_names.txt").write_text("background\nroad\ncar\n")
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "-c", "own_data", f"data.root={root}", f"train.out_dir={out}",
                 "model.num_classes=3", "model.backbone_weights=null", "data.crop_size=33",
                 "train.batch_size=2", "train.iters=3", "train.val_every=3",
                 "train.progress=false", "data.num_workers=0",
                 "model.options={width_mult: 0.5}"]) == 0  # fmt: skip
    return root, out / "best.pt"


def test_tune_crf_stores_its_choice_and_crf_uses_it(trained, tmp_path, capsys):
    root, best = trained
    assert read_checkpoint(best)["info"].get("crf") is None
    assert main(["eval", "--weights", str(best), "--dataset", "folder", "--data-root", str(root),
                 "--crf", "--quiet"]) == 0  # fmt: skip
    assert "no tuned CRF parameters" in capsys.readouterr().out  # the defaults, with a warning
    assert main(["tune-crf", "--weights", str(best), "--images", "3", "--iterations", "2"]) == 0
    said = capsys.readouterr().out
    assert "3 folder train images" in said and "stored in" in said
    record = read_checkpoint(best)["info"]["crf"]
    assert set(record["options"]) >= {"bilateral_sxy", "bilateral_srgb", "bilateral_compat"}
    assert record["options"]["iterations"] == 2 and 0 <= record["miou_with"] <= 1
    assert record["miou_with"] == max(m for m in [record["miou_with"], record["miou_without"]])
    photo = root / "images" / "val" / "val0.png"
    assert main(["predict", str(photo), "--weights", str(best), "--crf", "--out",
                 str(tmp_path / "o")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "parameters tuned for this model on 3 folder train images" in out
    assert main(["eval", "--weights", str(best), "--dataset", "folder", "--data-root", str(root),
                 "--crf", "--crf-option", "bilateral_srgb=7", "--quiet"]) == 0  # fmt: skip
    assert "overridden by --crf-option {'bilateral_srgb': 7}" in capsys.readouterr().out


def test_tuning_refuses_validation_images(trained, tmp_path, capsys):
    root, best = trained
    assert main(["tune-crf", "--weights", str(best), "--split", "val"]) == 2
    assert "validation images" in capsys.readouterr().err
    # A list whose "train" split holds a val image (the same files, through links).
    for folder in ("images", "masks"):
        (tmp_path / folder).symlink_to(root / folder)
    (tmp_path / "train.txt").write_text("images/train/train0.png masks/train/train0.png\n"
                                        "images/val/val1.png masks/val/val1.png\n")
    (tmp_path / "val.txt").write_text("images/val/val1.png masks/val/val1.png\n")
    with pytest.raises(TuningError, match="also val images"):
        tune_checkpoint(best, data_root=tmp_path, images=2, write=False)


def test_train_tune_crf_gives_each_checkpoint_its_own_parameters(trained, tmp_path):
    """``train.tune_crf``: last.pt (the end of the schedule) and best.pt are both tuned."""
    root, _ = trained
    assert main(["train", "-c", "own_data", f"data.root={root}", f"train.out_dir={tmp_path}",
                 "model.num_classes=3", "model.backbone_weights=null", "data.crop_size=33",
                 "train.batch_size=2", "train.iters=2", "train.val_every=2",
                 "train.progress=false", "data.num_workers=0", "train.tune_crf=true",
                 "model.options={width_mult: 0.5}"]) == 0  # fmt: skip
    for name in ("last.pt", "best.pt"):
        record = read_checkpoint(tmp_path / name)["info"]["crf"]
        assert "folder train images" in record["source"], name
