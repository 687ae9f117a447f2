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
from deeplab.extras import require


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
    out = np.empty_like(color)
    for top in range(0, out.shape[0], 256):  # strips: float memory stays small on big photos
        rows = slice(top, top + 256)
        blend = (1.0 - alpha) * image[rows].astype(np.float32) + alpha * color[rows]
        out[rows] = np.clip(np.rint(blend), 0, 255)
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
    photo = Image.fromarray(np.ascontiguousarray(image))
    blurred = photo.filter(ImageFilter.GaussianBlur(blur_radius))
    # A blurred mask gives a soft seam instead of a hard cut-out outline.
    soft = Image.fromarray(keep.astype(np.uint8) * 255)
    if feather > 0:
        soft = soft.filter(ImageFilter.GaussianBlur(feather))
    # photo * soft + blurred * (1 - soft), in uint8 inside Pillow: a 24-megapixel photo
    # costs 7 bytes a pixel here, not the 40 of float32 copies.
    return np.asarray(Image.composite(photo, blurred, soft))


def shares(labels: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """Fraction of the pixels given to each class present, largest first. Counted in
    chunks: bincount widens uint8 labels to int64, 190 MB at once for a 24-megapixel photo."""
    flat = np.asarray(labels).reshape(-1)
    size = max(len(class_names), int(flat.max()) + 1 if flat.size else 0)
    counts = np.zeros(size, np.int64)
    for start in range(0, flat.size, 1 << 21):
        counts += np.bincount(flat[start : start + (1 << 21)], minlength=size)
    total = max(int(counts.sum()), 1)
    order = np.argsort(-counts, kind="stable")
    return {(class_names[i] if i < len(class_names) else f"class_{i}"): counts[i] / total
            for i in order if counts[i] > 0}  # fmt: skip


def summary(labels: np.ndarray, class_names: Sequence[str], min_share: float = 0.0005) -> str:
    """``"person 62.1%, background 37.9%"``: classes above ``min_share``, largest first."""
    parts = [f"{n} {100 * s:.1f}%" for n, s in shares(labels, class_names).items()
             if s >= min_share]  # fmt: skip
    return ", ".join(parts) if parts else "nothing"


OUTPUTS = ("labels", "color", "overlay")  # the pictures deeplab predict writes per image


def write_outputs(out: Path, stem: str, labels: np.ndarray, image: np.ndarray,
                  palette: Palette = None, *, outputs: Sequence[str] = OUTPUTS,
                  alpha: float = 0.5, keep: np.ndarray | None = None) -> list[Path]:  # fmt: skip
    """``<stem>.png`` (index PNG, ``labels``), ``<stem>_color.png`` (``color``) and
    ``<stem>_overlay.jpg`` (``overlay``) as ``outputs`` asks, and ``<stem>_portrait.jpg``
    when a ``keep`` mask is given; one full-size picture alive at a time, so memory
    follows the photo on big inputs. Returns the paths written."""
    written = []
    if "labels" in outputs:
        written.append(out / f"{stem}.png")
        save_index_png(labels, written[-1], palette)
    if "color" in outputs:  # zlib level 1: a colour map compresses well even so (3x faster)
        written.append(out / f"{stem}_color.png")
        Image.fromarray(colorize(labels, palette)).save(written[-1], compress_level=1)
    if "overlay" in outputs:
        written.append(out / f"{stem}_overlay.jpg")
        Image.fromarray(overlay(image, labels, palette, alpha=alpha)).save(written[-1],
                                                                           quality=92)
    if keep is not None:
        written.append(out / f"{stem}_portrait.jpg")
        Image.fromarray(portrait(image, keep)).save(written[-1], quality=92)
    return written


def index_image(labels: np.ndarray, palette: Palette = None) -> Image.Image:
    """Label map -> single-channel PIL image in mode ``P`` with the palette attached."""
    pil = Image.fromarray(np.ascontiguousarray(_check_labels(labels)))
    pil.putpalette(flat_palette(palette))  # turns the L image into mode P, values unchanged
    return pil


def save_index_png(labels: np.ndarray, path: str | Path, palette: Palette = None) -> None:
    """Write ``labels`` as an index PNG: pixel values are class ids, viewers show colours.

    The one writer of label maps: predictions, labelme conversions and converted masks.
    zlib level 1: 0.8 vs 2.6 ms for a 480x360 CamVid label map at level 6, for 2.7 vs 1.6
    KB (label maps compress well either way)."""
    index_image(labels, palette).save(path, format="PNG", compress_level=1)


# --- charts (matplotlib, the optional extra `plots`) -------------------------------------


def _pyplot():
    require("plots", "drawing charts")
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt

    return plt


def save_confusion_matrix(
    matrix: np.ndarray, class_names: Sequence[str], path: str | Path, *, title: str = ""
) -> Path:
    """The confusion matrix as a PNG, each row (true class) normalised to 100%: the diagonal
    is each class's recall, the rest shows what it is mistaken for."""
    plt = _pyplot()
    m = np.asarray(matrix, dtype=np.float64)
    rows = m / np.maximum(m.sum(1, keepdims=True), 1)
    n = len(class_names)
    size = max(4.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=90)
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (rows sum to 100%)")
    if n <= 30:  # numbers stay readable up to about 30 classes
        for i in range(n):
            for j in range(n):
                if rows[i, j] >= 0.005:
                    ax.text(j, i, f"{100 * rows[i, j]:.0f}", ha="center", va="center",
                            fontsize=7, color="white" if rows[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def save_training_curve(records: Sequence[dict], path: str | Path) -> Path:
    """Loss and validation mIoU against step (bottom axis) and minutes (top axis), from the
    records of ``metrics.jsonl``."""
    plt = _pyplot()
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_miou" in r]
    fig, loss_ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    loss_ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:gray",
                 lw=0.8, label="training loss")  # fmt: skip
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("loss")
    miou_ax = loss_ax.twinx()
    miou_ax.plot([r["step"] for r in val], [100 * r["val_miou"] for r in val], "o-",
                 color="tab:blue", label="val mIoU")  # fmt: skip
    miou_ax.set_ylabel("val mIoU %")
    if train and train[-1].get("elapsed_s"):
        per_step = train[-1]["elapsed_s"] / 60 / max(train[-1]["step"], 1)
        top = loss_ax.secondary_xaxis("top", functions=(lambda s: s * per_step,
                                                        lambda m: m / per_step))  # fmt: skip
        top.set_xlabel("minutes")
    fig.legend(loc="upper center", ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
