"""deeplab.evaluate and `deeplab eval`: a model whose prediction the test controls, on a
tiny generated dataset, so every IoU can be counted by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from deeplab.evaluate import evaluate, format_report, save_results
from deeplab.inference import Segmenter

NUM_CLASSES = 3


class RedChannelIsTheAnswer(nn.Module):
    """Predicts class k where the (normalised) red channel equals k: logits -(x_r - k)^2."""

    num_classes = NUM_CLASSES

    def forward(self, x):
        ks = torch.arange(self.num_classes, dtype=x.dtype).view(1, -1, 1, 1)
        return -((x[:, :1] - ks) ** 2)


def _case(seed: int, h: int = 12, w: int = 16):
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, NUM_CLASSES, size=(h, w))
    target = pred.copy()
    wrong = rng.random((h, w)) < 0.3
    target[wrong] = rng.integers(0, NUM_CLASSES, size=int(wrong.sum()))
    target[rng.random((h, w)) < 0.1] = 255  # ignored pixels
    return pred, target


def _iou_by_hand(pairs) -> list[float]:
    ious = []
    for k in range(NUM_CLASSES):
        inter = union = 0
        for pred, target in pairs:
            valid = target != 255
            p, t = (pred == k) & valid, (target == k) & valid
            inter += int((p & t).sum())
            union += int((p | t).sum())
        ious.append(inter / union)
    return ious


def _loader(pairs, batch_size: int = 1):
    """Batches of (image whose red channel holds the prediction, mask)."""
    batches = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        images = torch.stack(
            [torch.from_numpy(np.stack([p, p * 0, p * 0])).float() for p, _ in chunk]
        )
        masks = torch.stack([torch.from_numpy(t) for _, t in chunk]).long()
        batches.append((images, masks))
    return batches


def test_evaluate_counts_iou_like_by_hand():
    pairs = [_case(0), _case(1), _case(2)]
    results = evaluate(RedChannelIsTheAnswer(), _loader(pairs), num_classes=NUM_CLASSES,
                       progress=False)  # fmt: skip
    expected = _iou_by_hand(pairs)
    assert results["iou"] == pytest.approx(expected)
    assert results["miou"] == pytest.approx(np.mean(expected))
    valid = sum(int((t != 255).sum()) for _, t in pairs)
    correct = sum(int(((p == t) & (t != 255)).sum()) for p, t in pairs)
    assert results["pixel_acc"] == pytest.approx(correct / valid)
    assert results["pixels"] == valid and results["images"] == 3
    assert np.sum(results["confusion_matrix"]) == valid


def test_test_time_options_and_batches_do_not_change_a_pointwise_result():
    pairs = [_case(3), _case(4), _case(5), _case(6)]
    plain = evaluate(RedChannelIsTheAnswer(), _loader(pairs), num_classes=NUM_CLASSES,
                     progress=False)  # fmt: skip
    seg = Segmenter(RedChannelIsTheAnswer(), mean=(0, 0, 0), std=(1, 1, 1), flip=True, crop=8)
    tta = evaluate(seg, _loader(pairs, batch_size=2), num_classes=NUM_CLASSES, progress=False)
    assert tta["iou"] == pytest.approx(plain["iou"])
    assert tta["images"] == 4
    first = evaluate(seg, _loader(pairs), num_classes=NUM_CLASSES, progress=False, max_batches=1)
    assert first["iou"] == pytest.approx(_iou_by_hand(pairs[:1]))


def test_trimap_perfect_prediction_and_band_restriction():
    target = np.zeros((20, 20), dtype=np.int64)
    target[5:15, 5:15] = 1
    perfect = evaluate(RedChannelIsTheAnswer(), _loader([(target, target)]),
                       num_classes=NUM_CLASSES, trimap=(1, 3), progress=False)  # fmt: skip
    assert perfect["trimap"] == pytest.approx({1: 1.0, 3: 1.0})
    # A prediction wrong only far from any boundary: the narrow band never sees it.
    pred = target.copy()
    pred[9:11, 9:11] = 2
    r = evaluate(RedChannelIsTheAnswer(), _loader([(pred, target)]), num_classes=NUM_CLASSES,
                 trimap=(1, 3), progress=False)  # fmt: skip
    assert r["trimap"][1] == pytest.approx(1.0)
    assert r["miou"] < 1.0


def test_class_count_mismatch_is_an_error():
    with pytest.raises(ValueError, match="dataset has 5"):
        evaluate(RedChannelIsTheAnswer(), [], num_classes=5, progress=False)


def test_report_and_json(tmp_path):
    pairs = [_case(7)]
    results = evaluate(RedChannelIsTheAnswer(), _loader(pairs), num_classes=NUM_CLASSES,
                       trimap=(2,), progress=False)  # fmt: skip
    table = format_report(results, ["sky", "road", "car"])
    assert "road" in table and "mean IoU" in table and "trimap" in table
    assert f"{100 * results['miou']:6.2f}" in table
    path = save_results(results, tmp_path / "m.json", model="test")
    data = json.loads(path.read_text())
    assert data["model"] == "test" and data["miou"] == pytest.approx(results["miou"])
    assert data["trimap"]["2"] == pytest.approx(results["trimap"][2])


def test_cli_eval_on_a_generated_folder_dataset(tmp_path, monkeypatch, capsys):
    """`deeplab eval --pretrained X --dataset folder ...`: images on disk, the real data
    pipeline, the metrics JSON."""
    from deeplab.cli import main

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "class_names.txt").write_text("sky\nroad\ncar\n")
    pairs = [_case(10, 17, 23), _case(11, 17, 23), _case(12, 9, 30)]
    for i, (pred, target) in enumerate(pairs):
        rgb = np.stack([pred, pred * 0, pred * 0], -1).astype(np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"{i}.png")
        Image.fromarray(target.astype(np.uint8)).save(root / "masks" / f"{i}.png")
    asked = []

    def fake(cls, name=None, **options):
        asked.append((name, options))
        return cls(RedChannelIsTheAnswer(), mean=(0, 0, 0), std=(1, 1, 1),
                   class_names=("sky", "road", "car"), **options)  # fmt: skip

    monkeypatch.setattr(Segmenter, "from_pretrained", classmethod(fake))
    out = tmp_path / "metrics.json"
    code = main(["eval", "--pretrained", "some_entry", "--dataset", "folder", "--data-root",
                 str(root), "--split", "val", "--flip", "--trimap", "1,2", "--out", str(out),
                 "--workers", "0", "--quiet"])  # fmt: skip
    assert code == 0
    assert asked[0][0] == "some_entry" and asked[0][1]["flip"] is True
    data = json.loads(out.read_text())
    assert data["iou"] == pytest.approx(_iou_by_hand(pairs))
    assert data["images"] == 3 and set(data["trimap"]) == {"1", "2"}
    assert "mean IoU" in capsys.readouterr().out


def test_cli_eval_needs_data(capsys):
    from deeplab.cli import main

    assert main(["eval", "--pretrained", "x"]) == 2
    assert "--data-root" in capsys.readouterr().err


def test_cli_eval_from_config_and_checkpoint(tmp_path, capsys):
    """`deeplab eval -c cfg.yaml --weights best.pt`: dataset, model and normalisation all
    come from the config; the figures equal evaluate() run by hand."""
    import deeplab
    from deeplab.cli import main
    from deeplab.config import load_config, to_dict
    from deeplab.data.datasets import build_dataset
    from deeplab.data.transforms import eval_transform

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(2):
        _, target = _case(20 + i, 33, 41)
        rgb = np.random.default_rng(i).integers(0, 256, size=(33, 41, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"{i}.png")
        Image.fromarray(target.astype(np.uint8)).save(root / "masks" / f"{i}.png")
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(
        "model: {name: deeplabv3_mobilenetv2, num_classes: 3, options: {width_mult: 0.5}}\n"
        f"data: {{dataset: folder, root: {root}, mean: [100, 100, 100], std: [50, 50, 50]}}\n"
    )
    cfg = load_config(cfg_path)
    torch.manual_seed(0)
    model = deeplab.create_model("deeplabv3_mobilenetv2", num_classes=3, width_mult=0.5).eval()
    ckpt = tmp_path / "best.pt"
    torch.save({"model": model.state_dict(), "config": to_dict(cfg)}, ckpt)
    out = tmp_path / "m.json"
    args = ["eval", "-c", str(cfg_path), "--weights", str(ckpt), "--out", str(out),
            "--workers", "0", "--quiet"]  # fmt: skip
    assert main(args) == 0
    got = json.loads(out.read_text())
    seg = Segmenter(model, mean=(100, 100, 100), std=(50, 50, 50))
    ds = build_dataset("folder", root=root, split="val", num_classes=3)
    ds.transform = eval_transform(mean=(100, 100, 100), std=(50, 50, 50), output_stride=16)
    expected = evaluate(seg, [(x[None], y[None]) for x, y in ds], num_classes=3, progress=False)
    assert got["images"] == 2
    assert got["confusion_matrix"] == expected["confusion_matrix"]
