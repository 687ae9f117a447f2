"""Pictures of label maps: colour, overlay, portrait blur, index PNG files.

All functions take and return numpy arrays: images are ``HxWx3 uint8`` RGB,
label maps ``HxW`` integer class indices (255 = ignore). A palette is either a
flat list of up to 768 values (PIL's layout), a sequence of ``(r, g, b)``
tuples, or ``None`` for the PASCAL VOC colour map (``deeplab.data.labels``).

The portrait effect is the synthetic shallow depth of field that DeepLab was
announced with on phones: the chosen class stays sharp, the rest is blurred,
and a soft mask edge hides the seam.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from deeplab.data.labels import Palette, flat_palette, palette_array


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"a label map is HxW; got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(
            f"label values {labels.min()}..{labels.max()} do not fit a 256-colour palette"
        )
    return labels.astype(np.uint8, copy=False)


def colorize(labels: np.ndarray, palette: Palette = None) -> np.ndarray:
    """Label map ``HxW`` -> colour image ``HxWx3 uint8`` by palette lookup."""
    return palette_array(palette)[_check_labels(labels)]


def overlay(
    image: np.ndarray,
    labels: np.ndarray,
    palette: Palette = None,
    *,
    alpha: float = 0.5,
    unpainted: Sequence[int] = (),
) -> np.ndarray:
    """Alpha-blend the colour label map over ``image``: ``(1-alpha)*image + alpha*colour``.

    Pixels labelled with a class in ``unpainted`` (e.g. ``(0,)``, the background) keep
    the photo's own colours.
    """
    image = np.asarray(image)
    color = colorize(labels, palette)
    if image.shape != color.shape:
        raise ValueError(f"image {image.shape} and label map {labels.shape} differ in size")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * color.astype(np.float32)
    out = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    if unpainted:
        keep = np.isin(labels, list(unpainted))
        out[keep] = image[keep]
    return out


def gaussian_blur(image: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur (standard deviation ``radius`` pixels) of an ``HxW`` or ``HxWx3`` uint8."""
    if radius <= 0:
        return np.array(image, copy=True)
    pil = Image.fromarray(np.ascontiguousarray(image))
    return np.asarray(pil.filter(ImageFilter.GaussianBlur(radius)))


def portrait(
    image: np.ndarray,
    keep: np.ndarray,
    *,
    blur_radius: float | None = None,
    feather: float | None = None,
) -> np.ndarray:
    """Keep pixels where ``keep`` (``HxW`` bool) is set sharp and blur the rest -> ``HxWx3``.

    ``blur_radius`` defaults to 2% of the longer side; ``feather`` (the soft
    edge of the mask, in pixels) to a quarter of the blur radius.
    """
    image = np.asarray(image)
    keep = np.asarray(keep, dtype=bool)
    if image.shape[:2] != keep.shape:
        raise ValueError(f"image {image.shape} and mask {keep.shape} differ in size")
    if blur_radius is None:
        blur_radius = max(2.0, 0.02 * max(keep.shape))
    if feather is None:
        feather = blur_radius / 4
    blurred = gaussian_blur(image, blur_radius).astype(np.float32)
    # A blurred mask gives a soft seam instead of a hard cut-out outline.
    soft = gaussian_blur(keep.astype(np.uint8) * 255, feather).astype(np.float32) / 255.0
    soft = soft[..., None]
    out = soft * image.astype(np.float32) + (1.0 - soft) * blurred
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def index_image(labels: np.ndarray, palette: Palette = None) -> Image.Image:
    """Label map -> single-channel PIL image in mode ``P`` with the palette attached."""
    pil = Image.fromarray(np.ascontiguousarray(_check_labels(labels)))
    pil.putpalette(flat_palette(palette))  # turns the L image into mode P, values unchanged
    return pil


def save_index_png(labels: np.ndarray, path: str | Path, palette: Palette = None) -> None:
    """Write ``labels`` as an index PNG: pixel values are class ids, viewers show colours.

    The one writer of label maps: predictions, labelme conversions and converted masks."""
    index_image(labels, palette).save(path, format="PNG")
