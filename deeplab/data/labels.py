"""Class names and palettes of the datasets DeepLab is trained on.

The palette of an index mask is the PASCAL VOC colour map (bit-interleaved
colours, 255 = ignore drawn as near-white), so masks from every dataset open
as coloured images in any viewer and stay single-channel on disk.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IGNORE_INDEX = 255

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

CAMVID_CLASSES: tuple[str, ...] = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
    "pedestrian", "bicyclist",
)  # fmt: skip

# Cityscapes' 19 evaluation classes, in trainId order.
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip

CAMVID_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
    (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)  # fmt: skip


def voc_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map: class i's colour interleaves the bits of i."""
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return palette


Palette = Sequence[int] | Sequence[tuple[int, int, int]] | None


def palette_array(palette: Palette = None) -> np.ndarray:
    """Any palette form -> ``256x3 uint8`` colour table; entries not given use the VOC map.

    A palette is a sequence of ``(r, g, b)`` colours, a flat list of up to 768 values
    (PIL's layout), or ``None`` for the PASCAL VOC colour map.
    """
    table = np.asarray(voc_palette(256), dtype=np.int64)
    if palette is not None and len(palette):
        given = np.asarray(palette, dtype=np.int64).reshape(-1)[:768]
        table.reshape(-1)[: given.size] = given
    if table.min() < 0 or table.max() > 255:
        raise ValueError("palette values must lie in 0..255")
    return table.astype(np.uint8)


def flat_palette(palette: Palette = None) -> list[int]:
    """Any palette form -> the flat 768-value list ``Image.putpalette`` wants."""
    return palette_array(palette).reshape(-1).tolist()


# Input normalisation, in 0-255 pixel units: x_normalised = (x - mean) / std.
# ImageNet backbones in torchvision's layout expect the ImageNet statistics;
# Google's TF/TFLite DeepLab models expect x / 127.5 - 1.
IMAGENET_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)
TF_MEAN: tuple[float, float, float] = (127.5, 127.5, 127.5)
TF_STD: tuple[float, float, float] = (127.5, 127.5, 127.5)

# ADE20K (MIT Scene Parsing, ADEChallengeData2016): the 150 classes in mask-value order
# 1..150; mask value 0 ("other objects") is ignored, so class i is stored as value i + 1.
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator",
    "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door",
    "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower",
    "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt",
    "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan",
    "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)  # fmt: skip

# Cityscapes labelId (the value in *_gtFine_labelIds.png) -> trainId, for the 19 evaluated
# classes (cityscapesScripts' labels.py); every other labelId (void, flat parking, rail
# track, guard rail, bridge, tunnel, pole group, caravan, trailer, ...) becomes ignore.
CITYSCAPES_LABEL_TO_TRAIN: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
    25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip

# CamVid (SegNet's 11-class split) stores "unlabelled" as value 11.
CAMVID_UNLABELLED = 11
