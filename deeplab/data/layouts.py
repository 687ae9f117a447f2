"""Where the (image, mask) files of each dataset layout are: the official layouts of PASCAL
VOC 2012 (+SBD trainaug), Cityscapes, ADE20K and CamVid, list files, and image/mask
folders. Functions here only find and check pairs of paths; ``datasets`` reads them.
"""

from __future__ import annotations

from pathlib import Path

from deeplab.data.images import IMAGE_SUFFIXES, DataError

Pair = tuple[Path, Path]


def voc_pairs(root: str | Path, split: str) -> list[Pair]:
    """VOC 2012 ``train``/``val``/``trainval`` or ``trainaug`` (SBD, SegmentationClassAug)."""
    root = _voc_root(Path(root))
    if split in ("trainaug", "train_aug"):
        candidates = [root / "ImageSets" / "Segmentation" / "train_aug.txt", root / "train_aug.txt"]
        list_file = next((p for p in candidates if p.is_file()), None)
        if list_file is None:
            raise FileNotFoundError(
                f"no train_aug.txt in {root}/ImageSets/Segmentation or {root}; download the "
                "SBD augmented list and SegmentationClassAug masks and unpack them there"
            )
        pairs = []
        for line in _read_lines(list_file):
            parts = line.split()
            if len(parts) >= 2:  # "/JPEGImages/x.jpg /SegmentationClassAug/x.png"
                pairs.append((root / parts[0].lstrip("/"), root / parts[1].lstrip("/")))
            else:  # "x"
                image = root / "JPEGImages" / f"{parts[0]}.jpg"
                pairs.append((image, root / "SegmentationClassAug" / f"{parts[0]}.png"))
        return _require_files(pairs, list_file)
    list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_file.is_file():
        raise FileNotFoundError(
            f"{list_file} not found; VOC splits are train, val, trainval, trainaug and the "
            "root must hold JPEGImages/ and SegmentationClass/ (VOCdevkit/VOC2012)"
        )
    stems = [line.split()[0] for line in _read_lines(list_file)]
    pairs = [
        (root / "JPEGImages" / f"{s}.jpg", root / "SegmentationClass" / f"{s}.png") for s in stems
    ]
    return _require_files(pairs, list_file)


def cityscapes_pairs(root: str | Path, split: str) -> list[Pair]:
    """leftImg8bit/<split>/<city>/X_leftImg8bit.png, gtFine/.../X_gtFine_labelIds.png masks."""
    root = Path(root)
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise FileNotFoundError(
            f"{image_dir} not found; unpack leftImg8bit_trainvaltest.zip and "
            "gtFine_trainvaltest.zip into the same root (splits: train, val, test)"
        )
    pairs = []
    for image in sorted(image_dir.glob("*/*_leftImg8bit.png")):
        stem = image.name[: -len("_leftImg8bit.png")]
        mask = root / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelIds.png"
        pairs.append((image, mask))
    return _require_files(pairs, image_dir, what="gtFine mask")


def ade20k_pairs(root: str | Path, split: str) -> list[Pair]:
    """ADEChallengeData2016 images/<training|validation>/*.jpg with annotations/.../*.png."""
    root = Path(root)
    if not (root / "images").is_dir() and (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"
    folder = {"train": "training", "val": "validation"}.get(split, split)
    image_dir = root / "images" / folder
    if not image_dir.is_dir():
        raise FileNotFoundError(
            f"{image_dir} not found; the root must be ADEChallengeData2016 (splits: train, val)"
        )
    images = sorted(image_dir.glob("*.jpg"))
    pairs = [(p, root / "annotations" / folder / f"{p.stem}.png") for p in images]
    return _require_files(pairs, image_dir)


def camvid_pairs(root: str | Path, split: str) -> list[Pair]:
    """CamVid's ``<split>.txt``: "image label" per line, relative to the root."""
    root = Path(root)
    list_file = root / f"{split}.txt"
    if not list_file.is_file():
        raise FileNotFoundError(
            f"{list_file} not found; the CamVid root must hold train.txt / val.txt / test.txt"
        )
    return list_pairs(list_file, root=root)


def list_pairs(list_file: str | Path, *, root: str | Path | None = None) -> list[Pair]:
    """A list file of "image mask" lines, paths relative to ``root`` (default: its folder)."""
    list_file = Path(list_file)
    base = Path(root) if root is not None else list_file.parent
    pairs = []
    for n, line in enumerate(_read_lines(list_file), start=1):
        parts = line.split()
        if len(parts) != 2:
            raise DataError(
                "missing",
                list_file,
                f"line {n} of {list_file} should be 'image_path mask_path', got {line!r}",
            )
        pairs.append((base / parts[0].lstrip("/"), base / parts[1].lstrip("/")))
    return _require_files(pairs, list_file)


def folder_pairs(images: str | Path, masks: str | Path) -> list[Pair]:
    """Every image in ``images`` with the mask of the same stem in ``masks`` (.png preferred)."""
    images, masks = Path(images), Path(masks)
    for folder in (images, masks):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder")
    by_stem: dict[str, Path] = {}
    for p in sorted(masks.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES and (p.stem not in by_stem or p.suffix == ".png"):
            by_stem[p.stem] = p
    pairs, missing = [], []
    for p in sorted(images.iterdir()):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if p.stem in by_stem:
            pairs.append((p, by_stem[p.stem]))
        else:
            missing.append(p)
    if missing:
        names = ", ".join(p.name for p in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(
            "missing",
            missing[0],
            f"{len(missing)} image(s) in {images} have no mask of the same name in {masks}: "
            f"{names}; add the masks (e.g. {masks / (missing[0].stem + '.png')}) or move the "
            "images out",
        )
    if not pairs:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise FileNotFoundError(f"no images ({suffixes}) found in {images}")
    return pairs


def _voc_root(root: Path) -> Path:
    """Accept VOCdevkit/VOC2012 itself, VOCdevkit, or the folder holding VOCdevkit."""
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    return root


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _require_files(pairs: list[Pair], source: Path, *, what: str = "file") -> list[Pair]:
    missing = [p for pair in pairs for p in pair if not p.is_file()]
    if missing:
        raise DataError(
            "missing",
            missing[0],
            f"{len(missing)} {what}(s) listed by {source} do not exist, first {missing[0]}; "
            "check the dataset root and that the download was fully unpacked",
        )
    if not pairs:
        raise FileNotFoundError(f"{source} lists no images")
    return pairs


def folder_dirs(
    root: Path, split: str, images: str | Path | None, masks: str | Path | None
) -> tuple[Path, Path]:
    if images is None or masks is None:
        for image_name, mask_name in (("images", "masks"), ("JPEGImages", "SegmentationClass")):
            if (root / image_name).is_dir():
                images, masks = images or image_name, masks or mask_name
                break
        else:
            raise FileNotFoundError(
                f"no images/ + masks/ (or JPEGImages/ + SegmentationClass/) folders in {root}, "
                f"and no {root / (split + '.txt')} list file"
            )
    image_dir, mask_dir = root / images, root / masks
    if (image_dir / split).is_dir():
        image_dir, mask_dir = image_dir / split, mask_dir / split
    return image_dir, mask_dir
