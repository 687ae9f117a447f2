"""Joint image/mask transforms for training and evaluation, and a padding collate.

The training augmentation follows DeepLab's recipe (DeepLab-v3 sec. 4, DeepLab-v3+
sec. 4, the official TF input pipeline): random scale in [0.5, 2.0] with step 0.25,
pad to the crop size with the mean pixel (image) and the ignore label (mask), random
crop, random horizontal flip. Images are resized bilinearly, masks with nearest
neighbour so that no new class ids appear. Two options go beyond the TF release, for
footage that differs from the training drives: photometric jitter (brightness,
contrast, saturation, hue, blur: ``Photometric``) and crops centred, with a probability,
on a pixel of a rare class (``focus_classes``) so that poles and signs are seen whole.

A transform is called as ``transform(image, mask, rng)``:
``image`` uint8 numpy HxWx3 (RGB), ``mask`` integer numpy HxW (class ids, 255 = ignore),
``rng`` a ``numpy.random.Generator``; it returns ``(float32 tensor [3,h,w] normalised as
(x - mean) / std, int64 tensor [h,w])``. Randomness comes only from ``rng``: the dataset
derives it from ``(seed, epoch, index)`` (see ``deeplab.data.datasets``), so results do
not depend on global RNG state, the number of DataLoader workers or their order.
``mean``/``std`` are in 0-255 pixel units (``deeplab.data.labels.IMAGENET_MEAN`` etc.).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from deeplab.data.labels import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from deeplab.models.layers import aligned_size, check_output_stride

Size = tuple[int, int]


def as_size(size: int | Sequence[int]) -> Size:
    """``513`` -> (513, 513); ``(h, w)`` -> (h, w)."""
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def parse_scales(text: str) -> tuple[float, ...]:
    """``"0.5:0.25:1.75"`` (start:step:stop, inclusive) or ``"0.5,1,1.5"`` -> scales."""
    try:
        if ":" in text:
            start, step, stop = (float(v) for v in text.split(":"))
            if step <= 0:
                raise ValueError
            return tuple(scale_choices((start, stop), step))
        scales = tuple(float(v) for v in text.split(",") if v.strip())
        if not scales or min(scales) <= 0:
            raise ValueError
        return scales
    except ValueError:
        raise ValueError(
            f"scales {text!r}: give start:step:stop (0.5:0.25:1.75) or a list (0.5,1,1.5)"
        ) from None


def scale_choices(scale_range: tuple[float, float], scale_step: float) -> list[float]:
    """The discrete scales DeepLab samples from: 0.5, 0.75, ..., 2.0 for the default recipe."""
    lo, hi = scale_range
    if lo <= 0 or hi < lo:
        raise ValueError(f"scale_range {scale_range} must satisfy 0 < min <= max")
    if scale_step <= 0:
        return []  # continuous uniform sampling
    n = int(round((hi - lo) / scale_step)) + 1
    return [round(lo + i * scale_step, 6) for i in range(n) if lo + i * scale_step <= hi + 1e-6]


def to_normalised_tensor(image: np.ndarray, mean: Sequence[float], std: Sequence[float]):
    """uint8 HxWx3 -> float32 [3,H,W] as (x - mean) / std, mean/std in 0-255 units."""
    # torch.tensor copies: arrays viewed from PIL images are read-only
    x = torch.tensor(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s


def to_mask_tensor(mask: np.ndarray) -> torch.Tensor:
    """integer HxW -> int64 [H,W]."""
    return torch.from_numpy(np.asarray(mask).astype(np.int64))  # astype copies


def pad_bottom_right(
    image: torch.Tensor, mask: torch.Tensor, size: Size, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a normalised image with 0 (the mean pixel) and the mask with ``ignore_index``.

    Padding goes bottom/right, as in the TF release, so pixel (0, 0) keeps its place.
    """
    h, w = mask.shape
    ph, pw = max(size[0] - h, 0), max(size[1] - w, 0)
    if ph == 0 and pw == 0:
        return image, mask
    image = F.pad(image, (0, pw, 0, ph), value=0.0)
    mask = F.pad(mask, (0, pw, 0, ph), value=ignore_index)
    return image, mask


@dataclass(frozen=True)
class Photometric:
    """Colour and sharpness jitter of a uint8 RGB image (torchvision's ColorJitter, in numpy):
    brightness, contrast and saturation factors drawn from ``[1 - x, 1 + x]``, the hue
    turned by up to ``hue`` of the colour circle, and with probability ``blur`` a Gaussian
    blur of radius 0.3-1.5 px. All zero: the image is returned as it is."""

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    blur: float = 0.0

    KEYS = ("brightness", "contrast", "saturation", "hue", "blur")

    def __bool__(self) -> bool:
        return any(getattr(self, k) for k in self.KEYS)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        draws = rng.uniform(-1.0, 1.0, 4)  # always four draws: the stream stays aligned
        b, c, s = (1.0 + x * d for x, d in zip((self.brightness, self.contrast,
                                                self.saturation), draws[:3], strict=True))
        x = image.astype(np.float32)
        if self.brightness:
            x *= b
        gray = x @ np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 luma
        if self.contrast:
            x = (x - gray.mean()) * c + gray.mean()
            gray = (gray - gray.mean()) * c + gray.mean()
        if self.saturation:
            x = gray[..., None] + (x - gray[..., None]) * s
        out = np.clip(x + 0.5, 0, 255).astype(np.uint8)
        if self.hue:
            hsv = np.array(Image.fromarray(out).convert("HSV"))
            hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(self.hue * draws[3] * 255)) % 256
            out = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
        if self.blur and rng.random() < self.blur:
            radius = float(rng.uniform(0.3, 1.5))
            out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(radius)))
        return out


@dataclass(frozen=True)
class TrainTransform:
    """Random scale -> flip -> photometric jitter -> normalise -> pad (mean / ignore) ->
    random crop (centred on a rare-class pixel with probability ``focus_prob``).

    ``(uint8 HxWx3, int HxW, rng) -> (float32 [3,crop_h,crop_w], int64 [crop_h,crop_w])``.
    """

    crop_size: Size
    scales: tuple[float, ...]  # discrete choices; empty = uniform in scale_range
    scale_range: tuple[float, float]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flip: bool = True
    ignore_index: int = IGNORE_INDEX
    photometric: Photometric = Photometric()
    focus_classes: tuple[int, ...] = ()  # class ids a crop may be centred on
    focus_prob: float = 0.0

    def sample_scale(self, rng: np.random.Generator) -> float:
        if self.scales:
            return float(self.scales[int(rng.integers(len(self.scales)))])
        return float(rng.uniform(*self.scale_range))

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if rng is None:
            rng = np.random.default_rng()  # fresh OS entropy; pass an rng for repeatability
        _check_pair(image, mask)
        scale = self.sample_scale(rng)
        h, w = mask.shape
        if scale != 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))  # PIL takes (w, h)
            image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
            mask = _resize_mask(mask, size)
        if self.flip and rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        # The crop is placed on the image padded to the crop size, then cut from the image
        # itself (the part inside it) and padded: the same pixels, and the jitter only
        # pays for the crop.
        ch, cw = self.crop_size
        top, left = self._crop_origin(mask, rng)
        image = image[top : top + ch, left : left + cw]
        mask = mask[top : top + ch, left : left + cw]
        if self.photometric:
            image = self.photometric(np.ascontiguousarray(image), rng)
        x = to_normalised_tensor(image, self.mean, self.std)
        return pad_bottom_right(x, to_mask_tensor(mask), self.crop_size, self.ignore_index)

    def _crop_origin(self, mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
        """A uniform crop of the padded image, or (``focus_prob``) one holding a pixel of a
        focus class present in the mask, at a random place inside the crop."""
        ch, cw = self.crop_size
        h, w = max(mask.shape[0], ch), max(mask.shape[1], cw)  # padded to the crop
        if self.focus_classes and rng.random() < self.focus_prob:
            present = [c for c in self.focus_classes if bool((mask == c).any())]
            if present:
                ys, xs = np.nonzero(mask == present[int(rng.integers(len(present)))])
                k = int(rng.integers(len(ys)))
                top = int(ys[k]) - int(rng.integers(ch))
                left = int(xs[k]) - int(rng.integers(cw))
                return min(max(top, 0), h - ch), min(max(left, 0), w - cw)
        return int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))


@dataclass(frozen=True)
class EvalTransform:
    """Normalise, optionally pad bottom/right to a fixed size or to k * output_stride + 1.

    ``(uint8 HxWx3, int HxW, rng) -> (float32 [3,H',W'], int64 [H',W'])``; padded pixels
    are 0 in the image (the mean) and ignore in the mask, so metrics skip them.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    output_stride: int | None = None
    pad_to: Size | None = None
    ignore_index: int = IGNORE_INDEX

    def target_size(self, h: int, w: int) -> Size:
        if self.pad_to is not None:
            if h > self.pad_to[0] or w > self.pad_to[1]:
                raise ValueError(
                    f"image {h}x{w} is larger than pad_to {self.pad_to}; raise pad_to "
                    f"or use output_stride={self.output_stride or 16} to pad per image"
                )
            return self.pad_to
        if self.output_stride is not None:
            return (aligned_size(h, self.output_stride), aligned_size(w, self.output_stride))
        return (h, w)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        del rng  # evaluation is deterministic
        _check_pair(image, mask)
        x = to_normalised_tensor(image, self.mean, self.std)
        y = to_mask_tensor(mask)
        return pad_bottom_right(x, y, self.target_size(*mask.shape), self.ignore_index)


def train_transform(
    *,
    crop_size: int | Sequence[int] = 513,
    scale_range: tuple[float, float] = (0.5, 2.0),
    scale_step: float = 0.25,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    flip: bool = True,
    ignore_index: int = IGNORE_INDEX,
    photometric: dict[str, float] | None = None,
    focus_classes: Sequence[int] = (),
    focus_prob: float = 0.0,
) -> TrainTransform:
    """DeepLab's training augmentation; ``crop_size`` is an int or (height, width).

    ``scale_step=0`` samples the scale uniformly in ``scale_range`` instead of on a grid;
    ``photometric``: ``Photometric``'s fields by name; ``focus_classes``/``focus_prob``:
    crops centred on a pixel of one of those class ids that often.
    """
    unknown = set(photometric or {}) - set(Photometric.KEYS)
    if unknown:
        raise ValueError(f"photometric {sorted(unknown)}: the keys are "
                         f"{', '.join(Photometric.KEYS)}")  # fmt: skip
    if not 0.0 <= focus_prob <= 1.0:
        raise ValueError(f"focus probability {focus_prob} must be in [0, 1]")
    crop = as_size(crop_size)
    if min(crop) < 1:
        raise ValueError(f"crop_size {crop_size} must be positive")
    return TrainTransform(
        crop_size=crop,
        scales=tuple(scale_choices(tuple(scale_range), scale_step)),
        scale_range=(float(scale_range[0]), float(scale_range[1])),
        mean=_triple(mean, "mean"),
        std=_triple(std, "std"),
        flip=flip,
        ignore_index=ignore_index,
        photometric=Photometric(**{k: float(v) for k, v in (photometric or {}).items()}),
        focus_classes=tuple(int(c) for c in focus_classes),
        focus_prob=float(focus_prob),
    )


def eval_transform(
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    output_stride: int | None = None,
    pad_to: int | Sequence[int] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> EvalTransform:
    """No augmentation; pad to ``pad_to`` (e.g. 513) or to k * ``output_stride`` + 1 if given."""
    if output_stride is not None:
        check_output_stride(output_stride)
    return EvalTransform(
        mean=_triple(mean, "mean"),
        std=_triple(std, "std"),
        output_stride=output_stride,
        pad_to=None if pad_to is None else as_size(pad_to),
        ignore_index=ignore_index,
    )


def pad_collate(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]], ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(image [3,H,W], mask [H,W])`` items into ``([N,3,Hmax,Wmax], [N,Hmax,Wmax])``.

    Items of different sizes (evaluation at native resolution) are padded bottom/right
    with 0 (the normalised mean pixel) and ``ignore_index``; at batch 1 nothing is padded.
    """
    if not batch:
        raise ValueError("pad_collate got an empty batch")
    hmax = max(int(m.shape[0]) for _, m in batch)
    wmax = max(int(m.shape[1]) for _, m in batch)
    images, masks = [], []
    for x, y in batch:
        x, y = pad_bottom_right(x, y, (hmax, wmax), ignore_index)
        images.append(x)
        masks.append(y)
    return torch.stack(images), torch.stack(masks)


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a class-id mask to PIL ``size`` = (w, h)."""
    if mask.dtype != np.uint8:
        if mask.min() < 0 or mask.max() > 255:
            raise ValueError(f"mask values must lie in 0..255 to resize, got {mask.max()}")
        mask = mask.astype(np.uint8)
    return np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))


def _check_pair(image: np.ndarray, mask: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 HxWx3, got {image.dtype} {image.shape}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} and image {image.shape[:2]} differ in size")


def _triple(values: Sequence[float], what: str) -> tuple[float, float, float]:
    if len(values) != 3:
        raise ValueError(f"{what} needs 3 values (R, G, B in 0-255 units), got {values}")
    if what == "std" and min(values) <= 0:
        raise ValueError(f"std {values} must be positive")
    return (float(values[0]), float(values[1]), float(values[2]))
