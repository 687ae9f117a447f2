"""Segmentation datasets: PASCAL VOC 2012 (+SBD trainaug), Cityscapes, ADE20K, CamVid, folders.

Every dataset is one class, ``SegmentationDataset``: a list of (image, mask) file pairs,
a ``DatasetInfo`` (class names, palette, how raw mask values map to class ids) and a
joint transform. The functions below only find the pairs in each official layout:

- ``voc_pairs``: VOCdevkit/VOC2012 (JPEGImages, SegmentationClass,
  ImageSets/Segmentation/{train,val,trainval}.txt); split ``trainaug`` reads
  ``train_aug.txt`` with the SBD masks in ``SegmentationClassAug`` (DeepLab's 10,582 images).
- ``cityscapes_pairs``: leftImg8bit/<split>/<city>/*_leftImg8bit.png with
  gtFine/<split>/<city>/*_gtFine_labelIds.png; labelIds -> 19 trainIds, others ignore.
- ``ade20k_pairs``: ADEChallengeData2016/{images,annotations}/{training,validation};
  mask value 0 ("other") -> ignore, 1..150 -> 0..149.
- ``camvid_pairs``: the SegNet 11-class split, ``train.txt``/``val.txt`` list files
  ("image label" relative to the root); value 11 (unlabelled) -> ignore.
- ``folder_pairs`` / ``list_pairs``: an image folder and a mask folder matched by file
  stem, or a list file of "image mask" lines.

An item is ``(image float32 [3,H,W] normalised by the transform, mask int64 [H,W])`` with
255 = ignore. With ``seed`` set, item ``i``'s augmentation is drawn from
``numpy.random.default_rng((seed, epoch, i))``: repeatable and independent of DataLoader
workers; ``dataset.set_epoch(epoch)`` before each epoch gives new augmentations.
Bad files raise ``DataError`` naming the file and the fix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from deeplab.data.images import DataError, read_image
from deeplab.data.labels import (
    ADE20K_CLASSES,
    CAMVID_CLASSES,
    CAMVID_PALETTE,
    CAMVID_UNLABELLED,
    CITYSCAPES_CLASSES,
    CITYSCAPES_LABEL_TO_TRAIN,
    CITYSCAPES_PALETTE,
    IGNORE_INDEX,
    VOC_CLASSES,
    palette_array,
)
from deeplab.data.layouts import (
    Pair,
    ade20k_pairs,
    camvid_pairs,
    cityscapes_pairs,
    folder_dirs,
    folder_pairs,
    list_pairs,
    voc_pairs,
)
from deeplab.data.transforms import eval_transform

Transform = Callable[..., tuple]


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset's masks mean: class names, colours and the raw-value -> class-id map.

    ``lookup`` is a 256-entry table applied to raw 8-bit mask values (None = identity);
    ``colors`` gives each class's RGB colour (None = the PASCAL VOC colour map).
    """

    name: str
    class_names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...] | None = None
    lookup: tuple[int, ...] | None = None
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def palette(self) -> list[tuple[int, int, int]]:
        """256 RGB colours: the classes' own colours first, the VOC colour map for the rest."""
        return [tuple(c) for c in palette_array(self.colors).tolist()]

    def encode(self, raw: np.ndarray, path: Path | str = "<mask>") -> np.ndarray:
        """Raw mask values -> uint8 class ids (255 = ignore); raise if a value is out of range."""
        if self.lookup is not None:
            if raw.size and (raw.min() < 0 or raw.max() > 255):
                raise DataError(
                    "values",
                    path,
                    f"mask value {int(raw.max())} in {path} is outside 0..255, but the "
                    f"{self.name} masks are 8-bit; re-export it as an 8-bit PNG",
                )
            raw = np.asarray(self.lookup, dtype=np.int64)[raw.astype(np.int64)]
        check_mask_values(raw, self.num_classes, path, self.ignore_index)
        return raw.astype(np.uint8)


def lookup_table(mapping: Mapping[int, int], *, default: int | None = None) -> tuple[int, ...]:
    """A 256-entry table: ``mapping`` where given, else ``default`` (None = keep the value)."""
    return tuple(mapping.get(v, v if default is None else default) for v in range(256))


def check_mask_values(
    mask: np.ndarray, num_classes: int, path: Path | str, ignore_index: int = IGNORE_INDEX
) -> None:
    """Raise ``DataError`` naming the file if a value is neither a class id nor ignore."""
    values = np.unique(mask)
    bad = values[((values < 0) | (values >= num_classes)) & (values != ignore_index)]
    if bad.size:
        v = int(bad[0])
        raise DataError(
            "values",
            path,
            f"mask value {v} in {path} exceeds {num_classes} classes (valid 0..{num_classes - 1},"
            f" {ignore_index} = ignore); map it to {ignore_index} or raise num_classes",
        )


# --- the known datasets ------------------------------------------------------------------

VOC_INFO = DatasetInfo("voc", VOC_CLASSES)  # VOC masks already use 255 for object borders
CITYSCAPES_INFO = DatasetInfo(
    "cityscapes",
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    lookup_table(CITYSCAPES_LABEL_TO_TRAIN, default=IGNORE_INDEX),
)
ADE20K_INFO = DatasetInfo(
    "ade20k",
    ADE20K_CLASSES,
    None,
    lookup_table({0: IGNORE_INDEX, **{v: v - 1 for v in range(1, 151)}}, default=IGNORE_INDEX),
)
CAMVID_INFO = DatasetInfo(
    "camvid", CAMVID_CLASSES, CAMVID_PALETTE, lookup_table({CAMVID_UNLABELLED: IGNORE_INDEX})
)

_INFOS = {info.name: info for info in (VOC_INFO, CITYSCAPES_INFO, ADE20K_INFO, CAMVID_INFO)}
DATASET_NAMES = ("voc", "cityscapes", "ade20k", "camvid", "folder")


def dataset_info(
    name: str,
    *,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    root: str | Path | None = None,
) -> DatasetInfo:
    """Class names, palette and raw-value map of a named dataset.

    For ``folder`` data the classes come from ``class_names``, else ``root/class_names.txt``
    (as written by ``deeplab labelme2voc``), else ``num_classes`` generic names.
    """
    if name in _INFOS:
        return _INFOS[name]
    if name != "folder":
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    if class_names is None and root is not None and (Path(root) / "class_names.txt").is_file():
        class_names = read_class_names(Path(root) / "class_names.txt")
    if class_names is None:
        if num_classes is None:
            raise ValueError(
                "folder data needs its classes: pass num_classes or class_names, "
                "or put a class_names.txt (one name per line) in the dataset root"
            )
        class_names = [f"class_{i}" for i in range(num_classes)]
    if num_classes is not None and num_classes != len(class_names):
        raise ValueError(f"num_classes {num_classes} but {len(class_names)} class names given")
    return DatasetInfo("folder", tuple(class_names))


def read_class_names(path: Path) -> list[str]:
    """One class name per line; blank lines and ``__ignore__`` are skipped."""
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    return [n for n in lines if n and n != "__ignore__"]


# The class count of a model says which dataset its weights were most likely trained on.
_DATASET_BY_COUNT = {21: "voc", 19: "cityscapes", 11: "camvid", 150: "ade20k"}


def dataset_classes(
    dataset: str | None, num_classes: int, *, root: str | Path | None = None
) -> tuple[tuple[str, ...], list[tuple[int, int, int]] | None]:
    """Class names and palette for a model of ``num_classes`` classes.

    ``dataset`` names them (an error if its class count differs); without it they are
    guessed from the count (21 VOC, 19 Cityscapes, 11 CamVid, 150 ADE20K), else generic
    names ``class_0`` ... with the VOC colours.
    """
    name = dataset or _DATASET_BY_COUNT.get(num_classes)
    if name is not None:
        folder = Path(root) if root and Path(root).is_dir() else None
        try:
            info = dataset_info(name, num_classes=num_classes if name == "folder" else None,
                                root=folder)  # fmt: skip
        except ValueError:
            if dataset:
                raise
            info = None
        if info is not None and info.num_classes == num_classes:
            return info.class_names, info.palette()
        if dataset:
            raise ValueError(
                f"dataset {dataset!r} has {info.num_classes} classes but the model predicts "
                f"{num_classes}; name the dataset the weights were trained on, or leave it out"
            )
    return tuple(f"class_{i}" for i in range(num_classes)), None


# --- reading files -----------------------------------------------------------------------


def read_raw_mask(path: str | Path) -> np.ndarray:
    """The stored mask values: HxW for index masks (palette 'P' gives indices), HxWx3 for RGB."""
    try:
        with Image.open(path) as img:
            if img.mode in ("RGB", "RGBA"):
                return np.asarray(img.convert("RGB"))
            if img.mode == "LA":
                img = img.convert("L")
            return np.asarray(img)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DataError(
            "unreadable", path, f"cannot read mask {path} ({e}); replace or remove the file"
        ) from e


def read_mask(path: str | Path, info: DatasetInfo) -> np.ndarray:
    """A mask as uint8 class ids HxW (255 = ignore), after the dataset's value map."""
    raw = read_raw_mask(path)
    if raw.ndim == 3:
        raise DataError(
            "rgb",
            path,
            f"{path} is an RGB colour mask, but masks must be single-channel class ids; "
            "convert it with `deeplab check-data ... --convert-rgb OUT_DIR`",
        )
    return info.encode(raw, path)


def read_pair(
    image_path: Path, mask_path: Path, info: DatasetInfo
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 HxWx3 image, uint8 HxW class ids), checked for size and class range."""
    image = read_image(image_path)
    mask = read_mask(mask_path, info)
    if image.shape[:2] != mask.shape:
        h, w = image.shape[:2]
        mh, mw = mask.shape
        raise DataError(
            "size",
            mask_path,
            f"image {image_path} is {w}x{h} but mask {mask_path} is {mw}x{mh}; "
            "masks must have their image's size (re-export the mask)",
        )
    return image, mask


# --- the dataset -------------------------------------------------------------------------


class SegmentationDataset:
    """A map-style dataset over (image, mask) file pairs.

    ``dataset[i] -> (float32 [3,H,W] normalised by the transform, int64 [H,W], 255 = ignore)``.
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        info: DatasetInfo,
        transform: Transform | None = None,
        *,
        seed: int | None = None,
    ):
        if transform is None:
            transform = eval_transform()
        self.pairs = [(Path(a), Path(b)) for a, b in pairs]
        self.info = info
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    def set_epoch(self, epoch: int) -> None:
        """Use a new augmentation stream per epoch when a seed is set."""
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The item's random stream: from (seed, epoch, index), or fresh entropy without a seed."""
        if self.seed is None:
            return np.random.default_rng()
        return np.random.default_rng((self.seed, self.epoch, index))

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The untransformed (uint8 HxWx3 image, uint8 HxW class ids) of item ``index``."""
        return read_pair(*self.pairs[index], self.info)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        image, mask = self.read(index)
        return self.transform(image, mask, self.rng(index))

    def __repr__(self) -> str:
        return (
            f"SegmentationDataset({self.info.name}, {len(self)} images, "
            f"{self.num_classes} classes)"
        )


def class_ids(names: Sequence[str], classes: Sequence[int | str], *, what: str) -> list[int]:
    """Class names or ids -> sorted ids; an unknown one is an error listing the classes."""
    ids = set()
    for c in classes:
        if isinstance(c, str) and c in names:
            ids.add(names.index(c))
        elif isinstance(c, int) and 0 <= c < len(names):
            ids.add(c)
        else:
            raise ValueError(f"{what} {c!r} is not a class of this dataset; use an id "
                             f"0..{len(names) - 1} or one of: {', '.join(names)}")  # fmt: skip
    return sorted(ids)


def duplicate_hard_images(
    dataset: SegmentationDataset, classes: Sequence[int | str], *, copies: int
) -> list[int]:
    """"Bootstrapping" of DeepLab-v3 (sec. 4.1): training images whose mask holds any of
    ``classes`` (ids or names) appear ``copies`` times in all, so that rare, hard classes
    (VOC: bicycle, chair, table, potted plant, sofa) are seen more often. Each copy is a
    separate item with its own augmentation. Reads every mask once; returns the indices
    of the duplicated images."""
    if copies < 1:
        raise ValueError(f"data.bootstrap_copies={copies} must be >= 1 (1: no duplicates)")
    ids = class_ids(dataset.class_names, classes, what="bootstrap class")
    wanted = np.zeros(256, dtype=bool)
    wanted[sorted(ids)] = True
    original = list(dataset.pairs)
    hard = [i for i, (_, m) in enumerate(original) if wanted[read_mask(m, dataset.info)].any()]
    dataset.pairs = original + [original[i] for i in hard for _ in range(copies - 1)]
    return hard


def camvid_dataset(
    *, root: str | Path, split: str, transform: Transform | None = None, seed: int | None = None
) -> SegmentationDataset:
    """CamVid, SegNet's 11-class 480x360 split (unlabelled -> 255)."""
    return SegmentationDataset(camvid_pairs(root, split), CAMVID_INFO, transform, seed=seed)


def build_dataset(
    name: str,
    *,
    root: str | Path,
    split: str,
    transform: Transform | None = None,
    seed: int | None = None,
    images: str | Path | None = None,
    masks: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    mask_map: Mapping[int, int] | None = None,
) -> SegmentationDataset:
    """A dataset by name: ``voc``, ``cityscapes``, ``ade20k``, ``camvid`` or ``folder``.

    ``mask_map`` changes raw mask values before the dataset's own mapping, e.g. ``{255: 1}``
    for 0/255 binary masks whose 255 marks the object (255 is the ignore label otherwise).

    ``folder``: ``root/<split>.txt`` ("image mask" lines) if it exists, else the image
    folder ``images`` and mask folder ``masks`` (relative to ``root``; defaults:
    ``images``/``masks``, or ``JPEGImages``/``SegmentationClass`` as written by
    ``deeplab labelme2voc``), with a ``<split>`` subfolder when there is one; without split
    subfolders or list files every split is the whole folder. ``split="train+val"``: the
    pairs of both splits, one after the other (the final model of a recipe, trained on
    everything labelled, as before a test set).
    """
    root = Path(root)
    info = dataset_info(name, class_names=class_names, num_classes=num_classes, root=root)
    pairs = [pair for part in split.split("+")
             for pair in _split_pairs(name, root, part.strip(), images, masks)]  # fmt: skip
    if mask_map:
        given = lookup_table({int(k): int(v) for k, v in mask_map.items()})
        then = info.lookup or tuple(range(256))
        info = dataclasses.replace(info, lookup=tuple(then[v] for v in given))
    return SegmentationDataset(pairs, info, transform, seed=seed)


def _split_pairs(name: str, root: Path, split: str, images, masks) -> list[Pair]:
    if name == "voc":
        return voc_pairs(root, split)
    if name == "cityscapes":
        return cityscapes_pairs(root, split)
    if name == "ade20k":
        return ade20k_pairs(root, split)
    if name == "camvid":
        return camvid_pairs(root, split)
    if (root / f"{split}.txt").is_file() and images is None:
        return list_pairs(root / f"{split}.txt", root=root)
    return folder_pairs(*folder_dirs(root, split, images, masks))


