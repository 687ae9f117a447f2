"""`deeplab train` end to end: config + overrides -> real model and folder dataset -> resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from deeplab.checkpoint import read as load_checkpoint
from deeplab.cli import main


@pytest.fixture()
def folder_data(tmp_path):
    """4 train + 2 val images of 40x48 with 3-class masks (and some ignore pixels)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for split, n in (("train", 4), ("val", 2)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(n):
            mask = np.zeros((40, 48), np.uint8)
            mask[:, 16:] = 1
            mask[20:, 30:] = 2
            mask[0, :] = 255
            image = (rng.random((40, 48, 3)) * 60 + mask[..., None] * 60).astype(np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"{i}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    return root


def test_print_config_shows_overrides(capsys):
    assert main(["train", "-c", "own_data", "--print-config", "optim.lr=0.5"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["optim"]["lr"] == 0.5 and cfg["data"]["dataset"] == "folder"


def test_errors_are_one_line_with_the_fix(capsys, tmp_path):
    assert main(["train", "optim.lrr=1"]) == 2
    assert "valid keys: optim.lr" in capsys.readouterr().err
    assert main(["train", f"train.out_dir={tmp_path}"]) == 2
    assert "data.root is required" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "none.pt")]) == 2
    assert "none.pt not found" in capsys.readouterr().err


def test_train_real_model_on_folder_data_then_resume(folder_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train", "-c", "own_data", f"data.root={folder_data}", f"train.out_dir={out}",
        "model.num_classes=3", "model.backbone_weights=null", "data.crop_size=33",
        "train.batch_size=2", "train.iters=3", "train.stop_at=2", "train.val_every=2",
        "train.progress=false", "data.num_workers=0", "model.options={width_mult: 0.5}",
        "train.log_every=1", "loss.class_weights=[1, 2, 3]", "loss.top_k_percent_pixels=0.5",
        "data.bootstrap_classes=[2]", "model.frozen_modules=[backbone.features.0]",
        "train.channels_last=true",
    ]  # fmt: skip
    assert main(args) == 0
    # every train mask holds class 2: 4 images seen twice
    assert "bootstrapping: 4 training images" in capsys.readouterr().out
    state = load_checkpoint(out / "last.pt")
    assert state["step"] == 2 and state["config"]["model"]["num_classes"] == 3
    best = load_checkpoint(out / "best.pt")
    assert 0 <= best["metrics"]["miou"] <= 1 and len(best["metrics"]["iou"]) == 3
    # Resume from the checkpoint's own config; the override lifts the stop.
    assert main(["train", "--resume", str(out / "last.pt"), "train.stop_at=null"]) == 0
    assert load_checkpoint(out / "last.pt")["step"] == 3
    assert "done at step 3" in capsys.readouterr().out
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert [r["step"] for r in rows if "val_miou" in r] == [2, 3]
    # best.pt holds weights only: training restarts from them, with a note.
    again = tmp_path / "from_best"
    assert main(["train", "--resume", str(out / "best.pt"), f"train.out_dir={again}",
                 "train.iters=4", "train.stop_at=null"]) == 0  # fmt: skip
    assert "holds weights only" in capsys.readouterr().out
    assert load_checkpoint(again / "last.pt")["step"] == 4


@pytest.mark.parametrize("normalisation", ["config", "only_in_the_checkpoint"])
def test_deeplab_eval_reproduces_the_training_validation(folder_data, tmp_path, capsys,
                                                         normalisation):  # fmt: skip
    """One evaluation loop: `deeplab eval --weights best.pt` scores the saved model exactly as
    the training run's validation did. The second case trains with a mean/std that only the
    checkpoint knows (as when fine-tuning Google's VOC model, x/128 - 1): the YAML given to
    `deeplab eval` resolves to ImageNet's, and the checkpoint's own must win. The model must
    predict more than one class, or any normalisation would score the same."""
    out = tmp_path / "run"
    extra = ["data.mean=[50, 60, 70]", "data.std=[30, 40, 50]"]
    # Fine-tuned BN with precise statistics: the fresh model's labels depend on its input.
    args = ["train", "-c", "own_data", f"data.root={folder_data}",
            f"train.out_dir={out}", "model.num_classes=3", "model.backbone_weights=null",
            "model.name=deeplabv3_mobilenetv2", "model.options={width_mult: 0.5}",
            "model.bn=finetune", "eval.precise_bn_batches=2", "data.crop_size=33",
            "train.batch_size=2", "train.iters=2", "train.val_every=2",
            "train.progress=false", "data.num_workers=0", "optim.lr=1e-6"]  # fmt: skip
    assert main(args + (extra if normalisation == "only_in_the_checkpoint" else [])) == 0
    best = load_checkpoint(out / "best.pt")
    if normalisation == "only_in_the_checkpoint":
        assert list(best["info"]["mean"]) == [50.0, 60.0, 70.0]
    assert np.count_nonzero(np.asarray(best["metrics"]["confusion_matrix"]).sum(0)) > 1
    metrics = tmp_path / "eval.json"
    evaluate = ["eval", "-c", "own_data", f"data.root={folder_data}",
                "model.num_classes=3", "--weights", str(out / "best.pt"), "--out", str(metrics),
                "--workers", "0", "--quiet"]  # fmt: skip
    assert main(evaluate) == 0
    got = json.loads(metrics.read_text())
    assert got["confusion_matrix"] == best["metrics"]["confusion_matrix"]
    assert got["miou"] == pytest.approx(best["metrics"]["miou"], abs=1e-12)
