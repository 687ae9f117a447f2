"""Dataset readers: each official layout (built in tmp_path), CamVid for real, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deeplab.data.datasets import (
    DataError,
    build_dataset,
    camvid_dataset,
    dataset_info,
    duplicate_hard_images,
)
from deeplab.data.labels import voc_palette
from deeplab.data.transforms import eval_transform, pad_collate, train_transform


def _write_image(path: Path, h: int = 6, w: int = 8, seed: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)
    Image.fromarray(array).save(path)  # PNG or lossy JPEG by suffix
    return array


def _write_mask(path: Path, values: np.ndarray, *, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(values.astype(np.uint8), mode="P" if palette else "L")
    if palette:
        image.putpalette([v for c in voc_palette() for v in c])
    image.save(path)


def _grid(values: list[int], h: int = 6, w: int = 8) -> np.ndarray:
    """A mask cycling through ``values``."""
    return np.resize(np.asarray(values), h * w).reshape(h, w)


def _raw_mask(dataset, index: int) -> torch.Tensor:
    return dataset[index][1]


def test_voc_splits_and_palette_masks(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    for i, stem in enumerate(["2007_000032", "2007_000039"]):
        _write_image(root / "JPEGImages" / f"{stem}.jpg", seed=i)
        mask = root / "SegmentationClass" / f"{stem}.png"
        _write_mask(mask, _grid([0, 1, 15, 255]), palette=True)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2007_000032\n")
    (lists / "val.txt").write_text("2007_000039\n")
    # The root may be given as the folder that holds VOCdevkit.
    ds = build_dataset("voc", root=tmp_path, split="train")
    assert len(ds) == 1 and ds.num_classes == 21 and ds.class_names[15] == "person"
    assert ds.pairs[0][0].name == "2007_000032.jpg"
    assert torch.equal(_raw_mask(ds, 0), torch.from_numpy(_grid([0, 1, 15, 255])))
    with pytest.raises(FileNotFoundError, match="trainval"):
        build_dataset("voc", root=root, split="trainval")


@pytest.mark.parametrize("line_format", ["ids", "paths"])
def test_voc_trainaug_reads_sbd_masks(tmp_path, line_format):
    root = tmp_path / "VOC2012"
    _write_image(root / "JPEGImages" / "2008_000002.jpg")
    _write_mask(root / "SegmentationClassAug" / "2008_000002.png", _grid([0, 7, 255]))
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    line = (
        "2008_000002"
        if line_format == "ids"
        else "/JPEGImages/2008_000002.jpg /SegmentationClassAug/2008_000002.png"
    )
    (lists / "train_aug.txt").write_text(line + "\n")
    ds = build_dataset("voc", root=root, split="trainaug")
    assert ds.pairs[0][1].parent.name == "SegmentationClassAug"
    assert torch.equal(_raw_mask(ds, 0), torch.from_numpy(_grid([0, 7, 255])))


def test_cityscapes_label_ids_become_train_ids(tmp_path):
    stem = "aachen_000000_000019"
    _write_image(tmp_path / "leftImg8bit" / "val" / "aachen" / f"{stem}_leftImg8bit.png")
    # labelIds: 7 road, 26 car, 33 bicycle, 0 unlabeled, 6 ground, 34 (not evaluated)
    _write_mask(
        tmp_path / "gtFine" / "val" / "aachen" / f"{stem}_gtFine_labelIds.png",
        _grid([7, 26, 33, 0, 6]),
    )
    ds = build_dataset("cityscapes", root=tmp_path, split="val")
    assert ds.num_classes == 19
    expected = _grid([0, 13, 18, 255, 255])
    assert torch.equal(_raw_mask(ds, 0), torch.from_numpy(expected))


def test_ade20k_shifts_classes_and_ignores_other(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    _write_image(root / "images" / "validation" / "ADE_val_00000001.jpg")
    _write_mask(root / "annotations" / "validation" / "ADE_val_00000001.png", _grid([0, 1, 150]))
    ds = build_dataset("ade20k", root=tmp_path, split="val")
    assert ds.num_classes == 150 and ds.class_names[0] == "wall"
    assert torch.equal(_raw_mask(ds, 0), torch.from_numpy(_grid([255, 0, 149])))


def test_camvid_real_split(camvid_dir):
    ds = camvid_dataset(root=camvid_dir, split="val", transform=eval_transform())
    assert len(ds) == 101 and ds.num_classes == 11
    raw = np.asarray(Image.open(ds.pairs[0][1]))
    assert (raw == 11).any()  # the first val image has unlabelled pixels
    x, y = ds[0]
    assert x.shape == (3, 360, 480) and x.dtype == torch.float32
    raw_t = torch.from_numpy(raw.astype(np.int64))
    assert torch.equal(y[raw_t == 11], torch.full_like(y[raw_t == 11], 255))
    assert torch.equal(y[raw_t != 11], raw_t[raw_t != 11])
    assert len(build_dataset("camvid", root=camvid_dir, split="train")) == 367


def _folder(tmp_path: Path, n: int = 4, h: int = 6, w: int = 8) -> Path:
    for i in range(n):
        _write_image(tmp_path / "images" / f"img{i}.png", h, w, seed=i)
        _write_mask(tmp_path / "masks" / f"img{i}.png", _grid([i % 3, 1, 2], h, w))
    return tmp_path


def test_folder_dataset_with_class_names_file(tmp_path):
    root = _folder(tmp_path)
    (root / "class_names.txt").write_text("_background_\ncat\ndog\n")
    ds = build_dataset("folder", root=root, split="train")
    assert ds.class_names == ("_background_", "cat", "dog") and len(ds) == 4
    assert [p[0].stem for p in ds.pairs] == [p[1].stem for p in ds.pairs]


def test_bootstrapping_duplicates_the_images_holding_hard_classes(tmp_path):
    root = tmp_path
    for i, values in enumerate([[0, 1], [0, 2], [1], [2, 255]]):  # class 2 in images 1 and 3
        _write_image(root / "images" / f"img{i}.png", seed=i)
        _write_mask(root / "masks" / f"img{i}.png", _grid(values))
    ds = build_dataset("folder", root=root, split="train", class_names=["bg", "cat", "dog"],
                       seed=0)  # fmt: skip
    assert duplicate_hard_images(ds, ["dog"], copies=3) == [1, 3]
    assert [p[0].stem for p in ds.pairs] == ["img0", "img1", "img2", "img3"] + ["img1"] * 2 + [
        "img3"
    ] * 2
    # A copy is its own item: same pixels, its own augmentation stream.
    assert ds.read(4)[0].tobytes() == ds.read(1)[0].tobytes()
    assert ds.rng(4).random() != ds.rng(1).random()
    again = build_dataset("folder", root=root, split="train", class_names=["bg", "cat", "dog"])
    assert duplicate_hard_images(again, [1, "dog"], copies=2) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="'bird' is not a class.*bg, cat, dog"):
        duplicate_hard_images(again, ["bird"], copies=2)


def test_list_file_dataset(tmp_path):
    root = _folder(tmp_path)
    lines = ["images/img1.png masks/img1.png", "images/img3.png masks/img3.png"]
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    ds = build_dataset("folder", root=root, split="val", num_classes=3)
    assert [p[0].name for p in ds.pairs] == ["img1.png", "img3.png"]


def test_dataset_info_for_every_name():
    assert dataset_info("voc").num_classes == 21
    assert dataset_info("cityscapes").palette()[0] == (128, 64, 128)
    assert dataset_info("ade20k").num_classes == 150
    assert dataset_info("camvid").class_names[3] == "road"
    assert dataset_info("folder", num_classes=4).num_classes == 4
    with pytest.raises(ValueError, match="choose one of"):
        dataset_info("coco")
    with pytest.raises(ValueError, match="class_names.txt"):
        dataset_info("folder")


def test_missing_mask_names_the_image(tmp_path):
    root = _folder(tmp_path)
    (root / "masks" / "img2.png").unlink()
    with pytest.raises(DataError, match=r"img2\.png") as err:
        build_dataset("folder", root=root, split="train", num_classes=3)
    assert err.value.kind == "missing"


def test_unreadable_image_names_the_file(tmp_path):
    root = _folder(tmp_path)
    (root / "images" / "img1.png").write_bytes(b"not an image")
    ds = build_dataset("folder", root=root, split="train", num_classes=3)
    with pytest.raises(DataError, match=r"cannot read image .*img1\.png") as err:
        ds[1]
    assert err.value.kind == "unreadable"


def test_size_mismatch_names_both_files(tmp_path):
    root = _folder(tmp_path)
    _write_mask(root / "masks" / "img0.png", _grid([0], 5, 8))
    ds = build_dataset("folder", root=root, split="train", num_classes=3)
    with pytest.raises(DataError, match=r"img0\.png is 8x6 but mask .*img0\.png is 8x5"):
        ds[0]


def test_out_of_range_value_says_how_to_fix(tmp_path):
    root = _folder(tmp_path)
    _write_mask(root / "masks" / "a.png", _grid([0, 37]))
    _write_image(root / "images" / "a.png")
    ds = build_dataset("folder", root=root, split="train", num_classes=11)
    index = [p[0].name for p in ds.pairs].index("a.png")
    with pytest.raises(DataError, match=r"mask value 37 in .*a\.png exceeds 11 classes") as err:
        ds[index]
    assert "map it to 255 or raise num_classes" in str(err.value)


def test_rgb_mask_is_refused_with_the_conversion_command(tmp_path):
    root = _folder(tmp_path)
    Image.new("RGB", (8, 6), (128, 0, 0)).save(root / "masks" / "img0.png")
    ds = build_dataset("folder", root=root, split="train", num_classes=3)
    with pytest.raises(DataError, match="--convert-rgb") as err:
        ds[0]
    assert err.value.kind == "rgb"


def test_seeded_augmentation_is_repeatable_and_changes_with_epoch(tmp_path):
    root = _folder(tmp_path, n=2, h=20, w=24)
    t = train_transform(crop_size=(12, 16), mean=(0, 0, 0), std=(1, 1, 1))
    a = build_dataset("folder", root=root, split="train", num_classes=3, transform=t, seed=5)
    b = build_dataset("folder", root=root, split="train", num_classes=3, transform=t, seed=5)
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(len(a)))
    epoch0 = [a[i][0] for i in range(len(a))]
    a.set_epoch(1)
    assert any(not torch.equal(a[i][0], epoch0[i]) for i in range(len(a)))


def test_dataloader_workers_do_not_change_the_augmentation(tmp_path):
    root = _folder(tmp_path, n=4, h=20, w=24)
    t = train_transform(crop_size=(12, 16))
    ds = build_dataset("folder", root=root, split="train", num_classes=3, transform=t, seed=1)

    def batches(workers: int):
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=workers)
        return [b for b in loader]

    serial, parallel = batches(0), batches(2)
    for (x0, y0), (x1, y1) in zip(serial, parallel, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_eval_loader_with_variable_sizes_at_batch_one(tmp_path):
    _write_image(tmp_path / "images" / "a.png", 6, 8)
    _write_mask(tmp_path / "masks" / "a.png", _grid([0, 1], 6, 8))
    _write_image(tmp_path / "images" / "b.png", 9, 5)
    _write_mask(tmp_path / "masks" / "b.png", _grid([1, 0], 9, 5))
    ds = build_dataset("folder", root=tmp_path, split="val", num_classes=2)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, collate_fn=pad_collate)
    shapes = [tuple(y.shape) for _, y in loader]
    assert shapes == [(1, 6, 8), (1, 9, 5)]


def test_a_split_can_be_the_union_of_two(camvid_dir):
    """`train+val`: both lists, one after the other (a recipe's final model)."""
    both = build_dataset("camvid", root=camvid_dir, split="train+val")
    train = build_dataset("camvid", root=camvid_dir, split="train")
    val = build_dataset("camvid", root=camvid_dir, split="val")
    assert both.pairs == train.pairs + val.pairs and len(both) == 468
