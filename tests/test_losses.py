"""Losses: ignore label, class weights, top-k% hard-pixel mining and its ramp."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from deeplab.losses import (
    SegmentationLoss,
    load_class_weights,
    mining_fraction,
    pixel_cross_entropy,
)


def _batch(seed: int = 0, n: int = 2, c: int = 4, h: int = 5, w: int = 6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g)
    target = torch.randint(0, c, (n, h, w), generator=g)
    target[0, 0, :3] = 255
    return logits, target


def test_plain_cross_entropy_matches_torch_and_skips_ignored():
    logits, target = _batch()
    got = pixel_cross_entropy(logits, target)
    want = F.cross_entropy(logits, target, ignore_index=255)
    torch.testing.assert_close(got, want)
    # Changing the logits of ignored pixels changes nothing.
    logits2 = logits.clone()
    logits2[0, :, 0, :3] += 100.0
    torch.testing.assert_close(pixel_cross_entropy(logits2, target), got)


def test_class_weights_divide_by_labelled_pixels_like_tf():
    logits, target = _batch(1)
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0])
    got = pixel_cross_entropy(logits, target, weight=weight)
    per_pixel = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    keep = target != 255
    want = (per_pixel * weight[target.clamp(max=3)] * keep).sum() / keep.sum()
    torch.testing.assert_close(got, want)


def test_top_k_keeps_hardest_pixels():
    logits, target = _batch(2, h=10, w=10)
    per_pixel = F.cross_entropy(logits, target, ignore_index=255, reduction="none").flatten()
    k = int(0.25 * per_pixel.numel())
    want = per_pixel.sort(descending=True).values[:k].mean()
    torch.testing.assert_close(pixel_cross_entropy(logits, target, top_k_percent=0.25), want)
    assert pixel_cross_entropy(logits, target, top_k_percent=0.25) > pixel_cross_entropy(
        logits, target
    )


def test_mining_ramp_follows_tf_schedule():
    assert mining_fraction(0, top_k_percent=0.2, ramp_steps=100) == 1.0
    assert mining_fraction(50, top_k_percent=0.2, ramp_steps=100) == pytest.approx(0.6)
    assert mining_fraction(500, top_k_percent=0.2, ramp_steps=100) == pytest.approx(0.2)
    assert mining_fraction(0, top_k_percent=0.2, ramp_steps=0) == 0.2
    loss = SegmentationLoss(num_classes=4, top_k_percent_pixels=0.2, hard_example_mining_step=100)
    logits, target = _batch(3, h=10, w=10)
    assert loss(logits, target, step=0) == pytest.approx(pixel_cross_entropy(logits, target).item())
    assert loss(logits, target, step=100) > loss(logits, target, step=0)


def test_gradient_flows_only_to_labelled_pixels():
    logits, target = _batch(4)
    logits.requires_grad_(True)
    SegmentationLoss(num_classes=4, top_k_percent_pixels=0.5)(logits, target).backward()
    assert logits.grad[0, :, 0, :3].abs().sum() == 0
    assert logits.grad.abs().sum() > 0


def test_class_weights_from_json(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"weights": [1, 2.5, 3]}))
    assert load_class_weights(str(path), num_classes=3) == [1.0, 2.5, 3.0]
    with pytest.raises(ValueError, match="3 weights for 4 classes"):
        load_class_weights(str(path), num_classes=4)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_class_weights(str(tmp_path / "missing.json"), num_classes=3)
    with pytest.raises(ValueError, match="one weight per class"):
        SegmentationLoss(num_classes=4, class_weights=[1.0, 2.0])


def test_size_mismatch_is_explained():
    with pytest.raises(ValueError, match="input's height and width"):
        pixel_cross_entropy(torch.zeros(1, 3, 4, 4), torch.zeros(1, 8, 8, dtype=torch.long))


def test_label_smoothing_penalises_confident_correct_pixels_and_skips_ignored():
    target = torch.tensor([[[0, 1], [255, 1]]])
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 0, 0, 0] = logits[0, 1, 0, 1] = logits[0, 1, 1, 1] = 10.0
    plain = SegmentationLoss(num_classes=3)(logits, target)
    smooth = SegmentationLoss(num_classes=3, label_smoothing=0.1)(logits, target)
    assert plain < 1e-3 < smooth
    expected = torch.nn.functional.cross_entropy(logits, target, ignore_index=255,
                                                 label_smoothing=0.1)  # fmt: skip
    assert smooth == pytest.approx(float(expected), rel=1e-5)
