"""Segmenter: image in, label map out (preprocess -> model -> postprocess).

Test-time options follow the DeepLab papers and the TF release's evaluation:

- multi-scale inputs with left-right flips, softmax probabilities averaged
  over every scale and flip (DeepLab-v3, sec. 4.1; v3+ eval scales 0.5:0.25:1.75);
- evaluation at a finer output stride than training, e.g. train 16, eval 8
  (DeepLab-v3, sec. 3.3), through ``model.set_output_stride``;
- sliding-window inference for images larger than the crop the model is
  used at (Cityscapes 1024x2048 with 769 or 1025 crops), overlapping tiles
  whose logits are averaged;
- the fully connected CRF on the probabilities (DeepLab-v1, sec. 4; v2, sec. 3.3);
- models imported from Google's TFLite files were made for one input size
  (513 or 257): the image is resized to fit it keeping its aspect ratio,
  padded with the mean pixel (as the TF demo does) and the logits resized back;
  at test scale s the canvas is that size times s (513 -> 257 at 0.5), as the
  TF release's multi-scale evaluation scales its 513 crop.

Images may come as paths, PIL images or numpy arrays in any mode Pillow reads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageOps

from deeplab.viz import Palette

ImageInput = str | Path | Image.Image | np.ndarray

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)

# --- reading images ---------------------------------------------------------


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """Expand folders into the image files inside them (recursively, sorted).

    Files named explicitly are kept whatever their suffix, so that an
    unreadable one is reported instead of silently skipped.
    """
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(p)
    return found


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    # 0..65535 -> 0..255: divide by 257 so that 65535 maps exactly to 255.
    return np.clip(np.rint(values.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)


def to_rgb(pil: Image.Image) -> np.ndarray:
    """A PIL image in any mode -> ``HxWx3 uint8`` RGB, EXIF orientation applied.

    16-bit and 32-bit integer greyscale is scaled to 8 bits (Pillow's own
    ``convert`` clips it instead); float images are read as 0..1 when their
    maximum is at most 1, else as 0..255; transparent images are composited
    over white.
    """
    try:
        pil = ImageOps.exif_transpose(pil)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # malformed EXIF: keep the stored orientation rather than fail the image
    mode = pil.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(pil).astype(np.int64)
        # Mode I holds 16-bit files on some Pillow versions; 8-bit data stays as is.
        gray = _scale_16bit(values) if values.max(initial=0) > 255 else np.clip(values, 0, 255)
        return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)
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
    return np.asarray(pil.convert("RGB"))


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


def load_image(source: ImageInput) -> np.ndarray:
    """A path, PIL image or numpy array -> ``HxWx3 uint8`` RGB.

    Raises ``ValueError`` naming the file when Pillow cannot read it.
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
        # Pillow raises UnidentifiedImageError (an OSError) for non-images,
        # OSError / SyntaxError for truncated or corrupt files, and
        # DecompressionBombError above Image.MAX_IMAGE_PIXELS * 2.
        raise ValueError(f"{path}: not a readable image ({err})") from err


# --- results ----------------------------------------------------------------


@dataclass
class Prediction:
    """One image's result: ``labels`` HxW int64 at the image's size, ``probabilities`` CxHxW."""

    labels: np.ndarray
    class_names: tuple[str, ...]
    palette: Palette = None
    probabilities: np.ndarray | None = None
    image: np.ndarray | None = field(default=None, repr=False)

    def shares(self) -> dict[str, float]:
        """Fraction of the pixels given to each class present, largest first."""
        counts = np.bincount(self.labels.reshape(-1), minlength=len(self.class_names))
        total = max(int(counts.sum()), 1)
        order = np.argsort(-counts, kind="stable")
        return {self._name(int(i)): counts[i] / total for i in order if counts[i] > 0}

    def summary(self, min_share: float = 0.0005) -> str:
        """``"person 62.1%, background 37.9%"``: classes above ``min_share``, largest first."""
        parts = [f"{n} {100 * s:.1f}%" for n, s in self.shares().items() if s >= min_share]
        return ", ".join(parts) if parts else "nothing"

    def mask(self, class_name: str) -> np.ndarray:
        """HxW bool: the pixels labelled ``class_name``."""
        if class_name not in self.class_names:
            raise ValueError(
                f"unknown class {class_name!r}; this model knows: {', '.join(self.class_names)}"
            )
        return self.labels == self.class_names.index(class_name)

    def _name(self, i: int) -> str:
        return self.class_names[i] if i < len(self.class_names) else f"class_{i}"


def save_prediction(
    pred: Prediction,
    out_dir: str | Path,
    stem: str,
    *,
    alpha: float = 0.5,
    probabilities: bool = False,
    portrait: str | None = None,
) -> list[Path]:
    """Write one prediction's files into ``out_dir``; returns their paths.

    ``<stem>.png`` (index PNG with palette), ``<stem>_color.png``, ``<stem>_overlay.jpg``,
    ``<stem>_probs.npy`` (CxHxW float32) with ``probabilities``, and ``<stem>_portrait.jpg``
    (class ``portrait`` sharp, the rest blurred) when a class is named.
    """
    from deeplab import viz

    if pred.image is None:
        raise ValueError("this Prediction carries no image; make it with Segmenter.predict")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{stem}.png", out / f"{stem}_color.png", out / f"{stem}_overlay.jpg"]
    viz.save_index_png(pred.labels, written[0], pred.palette)
    Image.fromarray(viz.colorize(pred.labels, pred.palette)).save(written[1])
    blend = viz.overlay(pred.image, pred.labels, pred.palette, alpha=alpha)
    Image.fromarray(blend).save(written[2], quality=92)
    if probabilities:
        if pred.probabilities is None:
            raise ValueError("predict with probabilities=True to save them")
        written.append(out / f"{stem}_probs.npy")
        np.save(written[-1], pred.probabilities.astype(np.float32))
    if portrait is not None:
        written.append(out / f"{stem}_portrait.jpg")
        Image.fromarray(viz.portrait(pred.image, pred.mask(portrait))).save(written[-1], quality=92)
    return written


# --- the segmenter ----------------------------------------------------------


def _pair(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def _tile_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of tiles of size ``crop`` covering ``length``; the last tile ends flush."""
    if length <= crop:
        return [0]
    n = math.ceil((length - crop) / stride) + 1
    return sorted({min(i * stride, length - crop) for i in range(n)})


class Segmenter:
    """Wraps a DeepLab model with its normalisation, class names and test-time options.

    ``predict(image) -> Prediction``; ``probabilities(x) -> NxCxHxW`` for tensors
    that are already normalised (what the evaluation loop feeds).

    Options: ``input_size`` (the one size the model was made for), ``scales``
    and ``flip`` (multi-scale + flip averaging), ``crop`` and ``overlap``
    (sliding window for larger inputs), ``crf`` with ``crf_options`` (keyword
    arguments of ``deeplab.crf.dense_crf``), ``output_stride`` (switch the
    model's stride), ``device``, ``batch_size`` (images, flips and tiles per
    forward pass).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        class_names: Sequence[str] | None = None,
        palette: Palette = None,
        input_size: int | Sequence[int] | None = None,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        crop: int | Sequence[int] | None = None,
        overlap: float = 1 / 3,
        crf: bool = False,
        crf_options: dict | None = None,
        output_stride: int | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 4,
        align_corners: bool | None = None,
    ) -> None:
        self.device = _resolve_device(device)
        self.model = model.to(self.device).eval()
        num_classes = getattr(model, "num_classes", None)
        if class_names is None:
            if num_classes is None:
                raise ValueError("pass class_names: the model has no num_classes attribute")
            class_names = tuple(f"class_{i}" for i in range(num_classes))
        self.class_names = tuple(class_names)
        if num_classes is not None and num_classes != len(self.class_names):
            raise ValueError(
                f"the model predicts {num_classes} classes but {len(self.class_names)} "
                "class names were given"
            )
        self.palette = palette
        self.mean = torch.tensor([float(v) for v in mean]).view(1, 3, 1, 1)
        self.std = torch.tensor([float(v) for v in std]).view(1, 3, 1, 1)
        self.input_size = _pair(input_size)
        self.crop = _pair(crop)
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap is a fraction of the crop in [0, 1); got {overlap}")
        self.overlap = overlap
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"scales must be positive numbers; got {list(scales)}")
        self.scales = tuple(float(s) for s in scales)
        self.flip = flip
        self.crf = crf
        self.crf_options = dict(crf_options or {})
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.batch_size = batch_size
        # The TF release resizes with align_corners=True; follow the model's own choice.
        self.align_corners = (
            bool(getattr(model, "align_corners", False)) if align_corners is None else align_corners
        )
        if output_stride is not None:
            self.set_output_stride(output_stride)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def set_output_stride(self, output_stride: int) -> None:
        """Evaluate at another output stride than training, e.g. 8 after training at 16."""
        if not hasattr(self.model, "set_output_stride"):
            raise ValueError(f"{type(self.model).__name__} has no set_output_stride method")
        self.model.set_output_stride(output_stride)

    # --- constructors -------------------------------------------------------

    @classmethod
    def from_pretrained(cls, name: str | None = None, **options) -> Segmenter:
        """A zoo model by entry name (see ``deeplab zoo``); ``None``: the default VOC one."""
        from deeplab.models import create_model
        from deeplab.weights import default_entry, get_entry

        entry = get_entry(name) if name else default_entry()
        model = create_model(entry.arch, pretrained=entry.name)
        fields = dict(
            mean=entry.mean,
            std=entry.std,
            class_names=entry.class_names,
            palette=entry.palette,
            input_size=entry.input_size,
        )
        return cls(model, **{**fields, **options})

    @classmethod
    def from_checkpoint(cls, path: str | Path, **options) -> Segmenter:
        """A training checkpoint (``last.pt``/``best.pt``): model, classes and
        normalisation come from the resolved config saved inside it."""
        from deeplab.config import from_dict
        from deeplab.train import load_checkpoint, normalisation

        state = load_checkpoint(path)
        if "config" not in state:
            raise ValueError(
                f"{path} has no 'config' entry; for a bare state_dict use "
                "Segmenter.from_weights(path, model=NAME, num_classes=N)"
            )
        cfg = from_dict(state["config"])
        model_options = dict(cfg.model.options, output_stride=cfg.model.output_stride)
        if cfg.model.align_corners is not None:
            model_options["align_corners"] = cfg.model.align_corners
        names, palette = _dataset_classes(cfg.data.dataset, cfg.model.num_classes, cfg.data.root)
        model = _build_and_load(
            cfg.model.name,
            state["model"],
            num_classes=cfg.model.num_classes or (len(names) if names else None),
            options=model_options,
            origin=str(path),
        )
        if names is None or len(names) != model.num_classes:
            names, palette = None, None
        mean, std = normalisation(cfg)
        fields = dict(mean=mean, std=std, class_names=names, palette=palette)
        return cls(model, **{**fields, **options})

    @classmethod
    def from_weights(
        cls,
        path: str | Path,
        *,
        model: str | None = None,
        num_classes: int | None = None,
        dataset: str | None = None,
        model_options: dict | None = None,
        **options,
    ) -> Segmenter:
        """A weight file: a training checkpoint (its config says everything), or a
        state_dict / ``.tflite`` file for the registered ``model``.

        Without ``num_classes`` the count is read from the file's classifier;
        class names and palette come from ``dataset`` or are guessed from the count
        (21 VOC, 19 Cityscapes, 11 CamVid, 150 ADE20K), mean/std default to ImageNet's.
        ``model_options`` go to the builder (e.g. ``{"width_mult": 0.5}``).
        """
        from deeplab.data.labels import IMAGENET_MEAN, IMAGENET_STD

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} not found")
        if path.suffix != ".tflite" and _is_training_checkpoint(path):
            return cls.from_checkpoint(path, **options)
        if model is None:
            raise ValueError(
                f"{path} is a bare weight file: say which network it fits with --model NAME "
                "(`deeplab models` lists them)"
            )
        from deeplab.models import create_model

        model_options = dict(model_options or {})
        if path.suffix == ".tflite":
            net = create_model(model, pretrained=str(path), **model_options)
        else:
            from deeplab.weights import read_state_dict

            state = read_state_dict(path)
            net = _build_and_load(
                model, state, num_classes=num_classes, options=model_options, origin=str(path)
            )
        names, palette = _dataset_classes(dataset, net.num_classes, None)
        if names is None or len(names) != net.num_classes:
            names, palette = None, None
        fields = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, class_names=names, palette=palette)
        if path.suffix == ".tflite":
            from deeplab.data.labels import TF_MEAN, TF_STD

            fields.update(mean=TF_MEAN, std=TF_STD)
        return cls(net, **{**fields, **options})

    # --- preprocessing ------------------------------------------------------

    def normalize(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``HxWx3`` or ``NxHxWx3`` uint8 RGB -> ``Nx3xHxW`` float, normalised, on the device."""
        x = torch.as_tensor(
            np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images
        )
        if x.ndim == 3:
            x = x.unsqueeze(0)
        x = x.permute(0, 3, 1, 2).float()
        return ((x - self.mean) / self.std).to(self.device)

    def denormalize(self, x: torch.Tensor) -> np.ndarray:
        """``3xHxW`` normalised tensor -> ``HxWx3 uint8`` image (for the CRF's colour term)."""
        img = x.detach().cpu().float().unsqueeze(0) * self.std + self.mean
        return img[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()

    # --- prediction ---------------------------------------------------------

    def predict(self, image: ImageInput, *, probabilities: bool = False) -> Prediction:
        """One image -> ``Prediction`` with labels at the image's own size."""
        return self.predict_batch([image], probabilities=probabilities)[0]

    def predict_batch(
        self, images: Sequence[ImageInput], *, probabilities: bool = False
    ) -> list[Prediction]:
        """Several images; those of equal size share forward passes of ``batch_size``."""
        rgbs = [load_image(im) for im in images]
        results: list[Prediction | None] = [None] * len(rgbs)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, rgb in enumerate(rgbs):
            by_size.setdefault(rgb.shape, []).append(i)
        for indices in by_size.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                probs = self.probabilities(self.normalize(np.stack([rgbs[i] for i in chunk])))
                for i, p in zip(chunk, probs, strict=True):
                    results[i] = self._finish(rgbs[i], p, keep_probs=probabilities)
        return [r for r in results if r is not None]

    def _finish(self, rgb: np.ndarray, probs: torch.Tensor, *, keep_probs: bool) -> Prediction:
        probs_np = probs.float().cpu().numpy()
        if self.crf:
            from deeplab.crf import dense_crf

            probs_np = dense_crf(rgb, probs_np, **self.crf_options)
        labels = probs_np.argmax(0).astype(np.int64)
        return Prediction(
            labels=labels,
            class_names=self.class_names,
            palette=self.palette,
            probabilities=probs_np.astype(np.float32) if keep_probs else None,
            image=rgb,
        )

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``Nx3xHxW`` -> softmax ``NxCxHxW`` averaged over scales and flips."""
        x = x.to(self.device).float()
        size = x.shape[-2:]
        total = None
        for scale in self.scales:
            canvas = self._canvas(scale)
            xs = self._resize(x, self._scaled_size(size, scale, canvas))
            views = [xs, xs.flip(-1)] if self.flip else [xs]
            logits = self._logits(torch.cat(views), canvas).chunk(len(views))
            for k, out in enumerate(logits):
                if k == 1:
                    out = out.flip(-1)  # undo the flip before averaging
                p = F.softmax(self._resize(out, size), dim=1)
                total = p if total is None else total + p
        assert total is not None
        return total / (len(self.scales) * (2 if self.flip else 1))

    def _canvas(self, scale: float) -> tuple[int, int] | None:
        """The fixed input size scaled, kept at k * output_stride + 1 (513 -> 257 at 0.5)."""
        if self.input_size is None:
            return None
        return (
            round((self.input_size[0] - 1) * scale) + 1,
            round((self.input_size[1] - 1) * scale) + 1,
        )

    def _scaled_size(
        self, size: torch.Size, scale: float, canvas: tuple[int, int] | None
    ) -> tuple[int, int]:
        h, w = size
        # Fit the image inside the canvas keeping its aspect ratio, or plainly scale it.
        ratio = scale if canvas is None else min(canvas[0] / h, canvas[1] / w)
        return (max(1, round(h * ratio)), max(1, round(w * ratio)))

    def _resize(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=self.align_corners)

    def _logits(self, x: torch.Tensor, canvas: tuple[int, int] | None) -> torch.Tensor:
        """``Nx3xHxW`` -> ``NxCxHxW`` logits, by overlapping tiles when larger than the crop."""
        n, _, h, w = x.shape
        if self.crop is None or (h <= self.crop[0] and w <= self.crop[1]):
            return self._forward(x, canvas)
        ch, cw = min(self.crop[0], h), min(self.crop[1], w)
        ys = _tile_starts(h, ch, max(1, int(ch * (1 - self.overlap))))
        xs = _tile_starts(w, cw, max(1, int(cw * (1 - self.overlap))))
        boxes = [(y, x0) for y in ys for x0 in xs]
        total = x.new_zeros((n, self.num_classes, h, w))
        count = x.new_zeros((1, 1, h, w))
        per_pass = max(1, self.batch_size // n)
        for start in range(0, len(boxes), per_pass):
            group = boxes[start : start + per_pass]
            tiles = torch.cat([x[:, :, y : y + ch, x0 : x0 + cw] for y, x0 in group])
            for (y, x0), out in zip(group, self._forward(tiles, None).split(n), strict=True):
                total[:, :, y : y + ch, x0 : x0 + cw] += out
                count[:, :, y : y + ch, x0 : x0 + cw] += 1
        return total / count

    def _aligned(self, length: int) -> int:
        """The size the model's feature grid fits: k * output_stride + 1 with corner-aligned
        resizing (the TF release's 513 = 32 * 16 + 1), else a multiple of the stride. On the
        CamVid model, 480x360 frames fed as they are scored 45.8% val mIoU, padded to
        481x369 47.4%, the figure the training loop's validation (which pads) reports."""
        stride = getattr(self.model, "output_stride", None)
        if not isinstance(stride, int) or stride <= 1:
            return length
        if self.align_corners:
            return math.ceil((length - 1) / stride) * stride + 1
        return math.ceil(length / stride) * stride

    def _forward(self, x: torch.Tensor, canvas: tuple[int, int] | None) -> torch.Tensor:
        """One model call; pads bottom/right to ``canvas`` with the mean pixel (0 after
        normalisation, as the TF release pads) and crops the logits back."""
        h, w = x.shape[-2:]
        if canvas is None:
            canvas = (self._aligned(h), self._aligned(w))
        if (h, w) != canvas:
            x = F.pad(x, (0, max(canvas[1] - w, 0), 0, max(canvas[0] - h, 0)))
        logits = self.model(x)
        if logits.shape[1] != self.num_classes:
            raise ValueError(
                f"the model returned {logits.shape[1]} channels for {self.num_classes} classes"
            )
        return self._resize(logits, x.shape[-2:])[:, :, :h, :w]


def _is_training_checkpoint(path: Path) -> bool:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return False  # not for us to judge: the state_dict reader gives the real error
    return isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "config" in obj


def _dataset_classes(
    dataset: str | None, num_classes: int | None, root: str | None
) -> tuple[tuple[str, ...] | None, Palette]:
    """Class names and palette of a dataset name, or guessed from the class count."""
    from deeplab.data.datasets import dataset_info

    guesses = {21: "voc", 19: "cityscapes", 11: "camvid", 150: "ade20k"}
    name = dataset or guesses.get(num_classes or -1)
    if name is None:
        return None, None
    try:
        root_path = Path(root) if root and Path(root).is_dir() else None
        info = dataset_info(name, num_classes=num_classes, root=root_path)
    except (KeyError, ValueError):
        return None, None
    return info.class_names, info.palette()


def _build_and_load(
    arch: str,
    state: dict[str, torch.Tensor],
    *,
    num_classes: int | None,
    options: dict,
    origin: str,
) -> nn.Module:
    """The registered ``arch`` holding exactly ``state``; the class count is read from
    the classifier when ``num_classes`` is not given."""
    from deeplab.models import create_model
    from deeplab.weights import load_matching

    model = create_model(arch, **options, **({"num_classes": num_classes} if num_classes else {}))
    model.eval()
    dropped = load_matching(model, state, origin=origin)
    if not dropped:
        return model
    found = int(state[dropped[0]].shape[0])
    if num_classes is not None:
        raise ValueError(
            f"{origin} was trained for {found} classes, not {num_classes}; "
            f"pass --num-classes {found}"
        )
    model = create_model(arch, **options, num_classes=found)
    load_matching(model, state, origin=origin)
    return model


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for but no CUDA GPU is visible; use --device cpu")
    return device
