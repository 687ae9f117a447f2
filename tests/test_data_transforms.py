"""Joint transforms: DeepLab's scale/pad/crop/flip recipe, determinism, eval padding, collate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deeplab.data.transforms import (
    eval_transform,
    pad_collate,
    scale_choices,
    to_normalised_tensor,
    train_transform,
)

MEAN = (100.0, 110.0, 120.0)
STD = (50.0, 40.0, 30.0)


def _pair(h: int = 24, w: int = 36, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random image and a mask whose red channel encodes the class (R = 20 * class)."""
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, 5, size=(h, w)).astype(np.uint8)
    image = rng.integers(0, 256, size=(h, w, 3)).astype(np.uint8)
    image[..., 0] = mask * 20
    return image, mask


def _unnormalise(x: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    return x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)


def test_scale_grid_is_the_paper_recipe():
    scales = scale_choices((0.5, 2.0), 0.25)
    assert scales[0] == 0.5 and scales[-1] == 2.0
    assert np.allclose(np.diff(scales), 0.25)
    assert len(scales) == 7
    assert scale_choices((0.5, 2.0), 0) == []  # continuous sampling


def test_sampled_scales_cover_the_grid_and_only_it():
    t = train_transform(crop_size=8, mean=MEAN, std=STD)
    rng = np.random.default_rng(3)
    seen = {t.sample_scale(rng) for _ in range(400)}
    assert seen == set(scale_choices((0.5, 2.0), 0.25))
    uniform = train_transform(crop_size=8, scale_range=(0.5, 2.0), scale_step=0)
    draws = [uniform.sample_scale(rng) for _ in range(200)]
    assert 0.5 <= min(draws) and max(draws) <= 2.0 and len(set(draws)) > 150


def test_normalisation_uses_mean_and_std_in_pixel_units():
    image = np.full((2, 3, 3), 150, np.uint8)
    x = to_normalised_tensor(image, MEAN, STD)
    expected = [(150 - m) / s for m, s in zip(MEAN, STD, strict=True)]
    assert torch.allclose(x[:, 0, 0], torch.tensor(expected))


def test_output_has_crop_size_types_and_valid_values():
    image, mask = _pair(40, 50)
    t = train_transform(crop_size=(33, 45), mean=MEAN, std=STD)
    for seed in range(6):
        x, y = t(image, mask, np.random.default_rng(seed))
        assert x.shape == (3, 33, 45) and x.dtype == torch.float32
        assert y.shape == (33, 45) and y.dtype == torch.int64
        assert set(y.unique().tolist()) <= {0, 1, 2, 3, 4, 255}


def test_padding_uses_mean_pixel_and_ignore_label():
    image, mask = _pair(20, 30)
    t = train_transform(crop_size=33, scale_range=(1.0, 1.0), flip=False, mean=MEAN, std=STD)
    x, y = t(image, mask, np.random.default_rng(0))
    # Padding goes bottom/right, so a crop as large as the padded image keeps the original
    # at the top-left corner.
    assert torch.equal(y[:20, :30], torch.from_numpy(mask.astype(np.int64)))
    assert (y[20:] == 255).all() and (y[:, 30:] == 255).all()
    assert torch.allclose(x[:, :20, :30], to_normalised_tensor(image, MEAN, STD))
    assert (x[:, 20:] == 0).all() and (x[:, :, 30:] == 0).all()  # 0 = the mean pixel


def test_downscale_then_pad_keeps_the_scaled_area_labelled():
    image, mask = _pair(40, 60)
    t = train_transform(crop_size=(25, 35), scale_range=(0.5, 0.5), mean=MEAN, std=STD)
    _, y = t(image, mask, np.random.default_rng(1))
    assert int((y != 255).sum()) == 20 * 30  # the 0.5x image is 20x30


def test_masks_use_nearest_and_images_bilinear():
    image, mask = _pair(16, 16)
    mask = (mask % 2 * 4).astype(np.uint8)  # ids 0 and 4 only: blending would create 1..3
    image[..., 1] = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))  # a ramp
    t = train_transform(crop_size=16, scale_range=(1.75, 1.75), flip=False, mean=MEAN, std=STD)
    x, y = t(image, mask, np.random.default_rng(0))
    assert set(y.unique().tolist()) == {0, 4}  # no new ids
    green = _unnormalise(x)[1].round()
    # Bilinear upsampling of a ramp creates values between the original steps of 16.
    assert (green % 16 != 0).any()
    assert green.min() >= 0 and green.max() <= 240


def test_image_and_mask_move_together():
    image, mask = _pair(24, 36)
    t = train_transform(crop_size=(16, 20), scale_range=(1.0, 1.0), mean=MEAN, std=STD)
    flipped = 0
    for seed in range(12):
        x, y = t(image, mask, np.random.default_rng(seed))
        red = _unnormalise(x)[0].round().long()
        assert torch.equal(red, y * 20)  # R = 20 * class survives crop and flip
        # A crop of the original or of its mirror image:
        windows = [torch.from_numpy(mask.astype(np.int64)), torch.from_numpy(mask[:, ::-1].copy())]
        found = [
            any(
                torch.equal(m[i : i + 16, j : j + 20], y)
                for i in range(24 - 16 + 1)
                for j in range(36 - 20 + 1)
            )
            for m in windows
        ]
        assert any(found)
        flipped += int(found[1] and not found[0])
    assert 0 < flipped < 12  # both flipped and unflipped crops occur


def test_same_rng_seed_gives_same_result_and_other_seeds_differ():
    image, mask = _pair(30, 40)
    t = train_transform(crop_size=21, mean=MEAN, std=STD)
    a = t(image, mask, np.random.default_rng(7))
    b = t(image, mask, np.random.default_rng(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    others = [t(image, mask, np.random.default_rng(s))[1] for s in range(8, 14)]
    assert any(not torch.equal(a[1], o) for o in others)


def test_eval_pads_to_k_times_output_stride_plus_one():
    image, mask = _pair(36, 48)
    x, y = eval_transform(mean=MEAN, std=STD, output_stride=16)(image, mask)
    assert y.shape == (49, 49) and x.shape == (3, 49, 49)  # 3 * 16 + 1
    assert torch.equal(y[:36, :48], torch.from_numpy(mask.astype(np.int64)))
    assert (y[36:] == 255).all() and (x[:, 36:] == 0).all()
    x, y = eval_transform(mean=MEAN, std=STD)(image, mask)
    assert y.shape == (36, 48)  # no padding without a stride
    x, y = eval_transform(mean=MEAN, std=STD, pad_to=65)(image, mask)
    assert y.shape == (65, 65)
    with pytest.raises(ValueError, match="larger than pad_to"):
        eval_transform(pad_to=33)(image, mask)


def test_pad_collate_stacks_variable_sizes():
    t = eval_transform(mean=MEAN, std=STD)
    a, b = t(*_pair(10, 14)), t(*_pair(12, 9, seed=1))
    images, masks = pad_collate([a, b])
    assert images.shape == (2, 3, 12, 14) and masks.shape == (2, 12, 14)
    assert torch.equal(masks[0, :10, :14], a[1]) and (masks[0, 10:] == 255).all()
    assert (masks[1, :, 9:] == 255).all() and (images[1, :, :, 9:] == 0).all()
    one_image, one_mask = pad_collate([b])
    assert torch.equal(one_image[0], b[0]) and torch.equal(one_mask[0], b[1])


def test_bad_arguments_are_reported():
    with pytest.raises(ValueError, match="mean needs 3 values"):
        train_transform(crop_size=8, mean=(1.0, 2.0))
    with pytest.raises(ValueError, match="scale_range"):
        train_transform(crop_size=8, scale_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="differ in size"):
        train_transform(crop_size=8)(*_pair(8, 8)[:1], np.zeros((7, 8), np.uint8))


def test_photometric_jitter_changes_colours_not_labels_and_repeats_with_its_rng():
    from deeplab.data.transforms import Photometric

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
    jitter = Photometric(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.05, blur=1.0)
    a = jitter(image, np.random.default_rng(5))
    b = jitter(image, np.random.default_rng(5))
    assert a.dtype == np.uint8 and a.shape == image.shape and np.array_equal(a, b)
    assert np.abs(a.astype(int) - image).mean() > 3
    assert not Photometric() and np.array_equal(Photometric()(image, rng), image)
    tf = train_transform(crop_size=33, scale_range=(1.0, 1.0), flip=False,
                         photometric={"brightness": 0.5, "hue": 0.1})  # fmt: skip
    mask = (np.arange(40 * 48).reshape(40, 48) % 3).astype(np.uint8)
    plain = train_transform(crop_size=33, scale_range=(1.0, 1.0), flip=False)
    x, y = tf(image, mask, np.random.default_rng(1))
    x0, y0 = plain(image, mask, np.random.default_rng(1))
    assert x.shape == x0.shape and not torch.equal(x, x0)
    with pytest.raises(ValueError, match="brightness"):
        train_transform(photometric={"brightnes": 0.2})


def test_focus_crops_hold_the_rare_class():
    """A 4x4 'pole' in a 200x200 image: uniform 65x65 crops rarely hold it, focus crops
    always do (the pixel chosen lies inside the crop)."""
    image = np.full((200, 200, 3), 90, np.uint8)
    mask = np.zeros((200, 200), np.uint8)
    mask[150:154, 20:24] = 2
    focus = train_transform(crop_size=65, scale_range=(1.0, 1.0), flip=False,
                            focus_classes=[2], focus_prob=1.0)  # fmt: skip
    plain = train_transform(crop_size=65, scale_range=(1.0, 1.0), flip=False)
    held = [bool((focus(image, mask, np.random.default_rng(s))[1] == 2).any()) for s in range(30)]
    seen = [bool((plain(image, mask, np.random.default_rng(s))[1] == 2).any()) for s in range(30)]
    assert all(held) and sum(seen) < 15
    # Absent from the mask: a uniform crop, no error.
    crop = focus(image, np.zeros_like(mask), np.random.default_rng(0))[1]
    assert crop.shape == (65, 65)
