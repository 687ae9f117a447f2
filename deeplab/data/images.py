"""The one image reader: a path, PIL image or numpy array -> ``HxWx3 uint8`` RGB.

Every Pillow mode is read as a person would see it: EXIF orientation applied (as labelme
does when annotating), 16- and 32-bit greyscale scaled to 8 bits (Pillow's own
``convert`` clips), float images read as 0..1 or 0..255, transparency composited over
white, LAB converted by colour transform. Datasets, prediction, video frames and uploads
all come through here, so a photo looks the same to training and to inference.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ImageInput = str | Path | Image.Image | np.ndarray

# What a folder of images holds (``find_images``, folder datasets); named files are read
# whatever their suffix.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg",
                            ".wmv", ".flv", ".ts", ".3gp"})  # fmt: skip


def is_video(path: str | Path) -> bool:
    """A file ``deeplab predict`` treats as a video (by its suffix)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


class DataError(ValueError):
    """A problem with one data file; ``kind``: unreadable, missing, size, rgb, values, ...

    The message names the file and the fix. A DataLoader worker's error comes back to the
    training process as one string (the worker's traceback); its last line is the message.
    """

    def __init__(self, kind: str, path: Path | str | None = None, message: str | None = None):
        if message is None:  # re-raised from a DataLoader worker: DataError(traceback text)
            last = kind.strip().splitlines()[-1] if kind.strip() else kind
            kind, message = "worker", last.split("DataError: ", 1)[-1]
        super().__init__(message)
        self.kind = kind
        self.path = Path(path) if path is not None else None


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """Expand folders into the image files inside them (recursively, sorted).

    Files named explicitly are kept whatever their suffix, so that an unreadable one is
    reported instead of silently skipped.
    """
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(p)
    return found


def example_photos() -> list[Path]:
    """The photos shipped with the package (public domain / CC0, see ``photos/README.md``):
    what ``deeplab export`` checks exported files on, and ``deeplab examples`` copies out."""
    folder = Path(str(resources.files("deeplab") / "photos"))
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(source: ImageInput) -> np.ndarray:
    """A path, PIL image or numpy array -> ``HxWx3 uint8`` RGB.

    Raises ``FileNotFoundError`` for a missing file and ``DataError`` (kind "unreadable")
    naming the file when Pillow cannot decode it (not an image, truncated, corrupt, or a
    decompression bomb above ``PIL.Image.MAX_IMAGE_PIXELS`` * 2).
    """
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source)
    if isinstance(source, Image.Image):
        return to_rgb(source)
    path = Path(source)
    try:
        with Image.open(path) as pil:
            pil.load()
            return to_rgb(pil)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(
            "unreadable", path, f"cannot read image {path} ({err}); replace or remove the file"
        ) from None


def to_rgb(pil: Image.Image) -> np.ndarray:
    """A PIL image in any mode -> ``HxWx3 uint8`` RGB, EXIF orientation applied."""
    try:  # only when tagged: exif_transpose copies even an upright image (memory, big photos)
        if pil.getexif().get(0x0112, 1) != 1:
            pil = ImageOps.exif_transpose(pil)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # malformed EXIF: keep the stored orientation rather than fail the image
    mode = pil.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(pil)  # uint16 or int32 as stored: no wider copy
        # Mode I holds 16-bit files on some Pillow versions; 8-bit data stays as is.
        gray = _scale_16bit(values) if values.max(initial=0) > 255 else \
            np.clip(values, 0, 255).astype(np.uint8)  # fmt: skip
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        values = np.nan_to_num(np.asarray(pil, dtype=np.float64))
        if values.max(initial=0.0) <= 1.0:
            values = values * 255.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P" and "transparency" in pil.info:
        pil = pil.convert("RGBA")
        mode = "RGBA"
    if mode == "La":  # premultiplied grey + alpha: Pillow converts it only via RGBa
        pil = Image.merge("RGBa", (*[pil.getchannel(0)] * 3, pil.getchannel(1)))
        mode = "RGBa"
    if mode in ("LA", "PA", "RGBA", "RGBa"):
        rgba = pil.convert("RGBA")  # also undoes premultiplied alpha (RGBa)
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        pil = Image.alpha_composite(white, rgba)
    if mode == "LAB":
        pil = _lab_to_rgb(pil)
    return np.asarray(pil if pil.mode == "RGB" else pil.convert("RGB"))  # convert copies


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    # 0..65535 -> 0..255: divide by 257 so that 65535 maps exactly to 255, rounded:
    # (v + 128) // 257 is rint(v / 257) (no ties: 257 is odd), in 4 bytes a pixel, not 16.
    v = np.clip(values, 0, 65535).astype(np.uint32)
    return ((v + 128) // 257).astype(np.uint8)


def _lab_to_rgb(pil: Image.Image) -> Image.Image:
    # Pillow's convert("RGB") copies LAB bytes unchanged; a colour transform is needed.
    from PIL import ImageCms

    transform = ImageCms.buildTransform(
        ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
    )
    return ImageCms.applyTransform(pil, transform)


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"an image array is HxW, HxWx1, HxWx3 or HxWx4; got shape {a.shape}")
    if a.dtype == np.uint16:
        a = _scale_16bit(a)
    elif a.dtype.kind == "f":
        a = np.nan_to_num(a.astype(np.float64))
        a = np.clip(np.rint(a * 255.0 if a.max(initial=0.0) <= 1.0 else a), 0, 255)
    elif a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255)
    a = a.astype(np.uint8)
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=2)
    if a.shape[2] == 4:
        return to_rgb(Image.fromarray(a))  # RGBA: composite over white like files
    return np.ascontiguousarray(a)
