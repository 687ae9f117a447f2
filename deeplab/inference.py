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

Other inputs are padded bottom/right to the model's feature grid (k * output_stride + 1)
and the scores cropped back, as the training loop's validation feeds them.
Images come as paths, PIL images or numpy arrays (``deeplab.data.images``); models and
their class names come from ``deeplab.hub``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from deeplab import hub, viz
from deeplab.checkpoint import ModelInfo
from deeplab.crf import dense_crf
from deeplab.crf import prepare as prepare_crf
from deeplab.data.images import ImageInput, read_image
from deeplab.data.labels import Palette
from deeplab.data.transforms import as_size
from deeplab.models.layers import aligned_size, resize, scaled_size
from deeplab.runtimes import TorchRunner
from deeplab.upsample import as_tensor, bilinear_rows_first, upsampled_argmax

log = logging.getLogger(__name__)


# --- results ----------------------------------------------------------------


@dataclass
class Prediction:
    """One image's result: ``labels`` HxW class ids at the image's size (uint8 for up to 256
    classes, int64 beyond: a 10000x8000 photo's labels take 80 MB, not 640), ``probabilities``
    CxHxW."""

    labels: np.ndarray
    class_names: tuple[str, ...]
    palette: Palette = None
    probabilities: np.ndarray | None = None
    image: np.ndarray | None = field(default=None, repr=False)

    def shares(self) -> dict[str, float]:
        """Fraction of the pixels given to each class present, largest first."""
        return viz.shares(self.labels, self.class_names)

    def summary(self, min_share: float = 0.0005) -> str:
        """``"person 62.1%, background 37.9%"``: classes above ``min_share``, largest first."""
        return viz.summary(self.labels, self.class_names, min_share)

    def mask(self, class_name: str) -> np.ndarray:
        """HxW bool: the pixels labelled ``class_name``."""
        if class_name not in self.class_names:
            raise ValueError(
                f"unknown class {class_name!r}; this model knows: {', '.join(self.class_names)}"
            )
        return self.labels == self.class_names.index(class_name)



# --- the segmenter ----------------------------------------------------------


def crf_options_for(info: ModelInfo, explicit: dict[str, Any]) -> dict[str, Any]:
    """The dense CRF's parameters for this model, and a line saying which: the ones tuned
    for it on its training images (``deeplab tune-crf``), with ``explicit`` ones
    (``--crf-option``) over them. A model with neither gets the defaults and a warning: they
    suit VOC photos, and lowered the CamVid model's mIoU by 3 points (docs/BENCHMARKS.md)."""
    tuned = dict((info.crf or {}).get("options") or {})
    if tuned:
        record = info.crf or {}
        log.info("dense CRF: parameters tuned for this model on %s (mIoU %.2f -> %.2f there): "
                 "%s%s", record.get("source", "its training images"),
                 100 * record.get("miou_without", float("nan")),
                 100 * record.get("miou_with", float("nan")), tuned,
                 f"; overridden by --crf-option {explicit}" if explicit else "")  # fmt: skip
    elif explicit:
        log.info("dense CRF: parameters from --crf-option %s, the rest defaults", explicit)
    else:
        log.warning("dense CRF: this model has no tuned CRF parameters, so the defaults run; "
                    "they were chosen for VOC photos and can lower another model's mIoU. "
                    "Choose them with: deeplab tune-crf --weights FILE")  # fmt: skip
    return {**tuned, **explicit}


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
    model's stride), ``device`` (default: where the model's weights are),
    ``precision`` (fp32, or bf16/fp16 autocast), ``memory_format`` (``contiguous``,
    ``channels_last``, or ``auto``: the faster of the two, timed on the first input; the
    constructors from a model name or file use auto), ``batch_size`` (images, flips and
    tiles per forward pass), ``max_side`` (the longest side the network sees: a larger image
    is reduced, keeping its aspect ratio, and the labels come back at its full size; what
    bounds a server's memory per request).
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
        precision: str = "fp32",
        memory_format: str = "contiguous",
        batch_size: int = 4,
        align_corners: bool | None = None,
        max_side: int | None = None,
    ) -> None:
        self.device = _resolve_device(device, model)
        model = model.to(self.device).eval()
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
        self.input_size = None if input_size is None else as_size(input_size)
        self.crop = None if crop is None else as_size(crop)
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap is a fraction of the crop in [0, 1); got {overlap}")
        self.overlap = overlap
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"scales must be positive numbers; got {list(scales)}")
        self.scales = tuple(float(s) for s in scales)
        self.flip = flip
        self.crf = crf
        self.crf_options = dict(crf_options or {})
        if crf and self.device.type == "cpu":
            prepare_crf()  # numba loads beside the model's first run, not after it
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.batch_size = batch_size
        if max_side is not None and max_side < 16:
            raise ValueError(f"max_side must be at least 16 pixels; got {max_side}")
        self.max_side = max_side
        self.runner = TorchRunner(model, self.device, precision=precision,
                                  memory_format=memory_format)  # fmt: skip
        self.runtime = "onnxruntime" if isinstance(model, hub.OnnxNetwork) else "torch"
        # The TF release resizes with align_corners=True; follow the model's own choice.
        self.align_corners = (
            bool(getattr(model, "align_corners", False)) if align_corners is None else align_corners
        )
        if output_stride is not None:
            self.set_output_stride(output_stride)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def model(self) -> nn.Module:
        """The network (a PyTorch module, or ``hub.OnnxNetwork`` for onnxruntime)."""
        return self.runner.model

    @model.setter
    def model(self, network: nn.Module) -> None:
        self.runner.model = network

    @property
    def precision(self) -> str:
        return self.runner.precision

    @property
    def memory_format(self) -> str:
        """The PyTorch layout in use (``auto`` until the first input chose one)."""
        return self.runner.memory_format

    def set_output_stride(self, output_stride: int) -> None:
        """Evaluate at another output stride than training, e.g. 8 after training at 16."""
        if not hasattr(self.model, "set_output_stride"):
            raise ValueError(f"{type(self.model).__name__} has no set_output_stride method")
        self.model.set_output_stride(output_stride)

    # --- constructors: a model from deeplab.hub, with its ModelInfo ---------

    @classmethod
    def from_info(cls, model: nn.Module, info: ModelInfo, **options: Any) -> Segmenter:
        """``model`` fed and read as ``info`` says; ``options`` may override any of it. With
        ``crf=True`` the CRF runs with the parameters tuned for the model (``info.crf``),
        explicit ``crf_options`` winning (``crf_options_for``)."""
        fields = dict(mean=info.mean, std=info.std, class_names=info.class_names,
                      palette=info.palette, input_size=info.input_size,
                      memory_format="auto")  # fmt: skip
        if options.get("crf"):
            options["crf_options"] = crf_options_for(info, options.get("crf_options") or {})
        return cls(model, **{**fields, **options})

    @classmethod
    def from_pretrained(cls, name: str | None = None, **options: Any) -> Segmenter:
        """A zoo model by entry name (see ``deeplab zoo``); ``None``: the default VOC one."""
        return cls.from_info(*hub.load_pretrained(name), **options)

    @classmethod
    def from_checkpoint(cls, path: str | Path, **options: Any) -> Segmenter:
        """A training checkpoint (``last.pt``/``best.pt``): it says its model, classes and
        normalisation."""
        return cls.from_weights(path, **options)

    @classmethod
    def from_weights(
        cls,
        path: str | Path,
        *,
        model: str | None = None,
        num_classes: int | None = None,
        dataset: str | None = None,
        model_options: dict | None = None,
        fallback: dict | None = None,
        **options: Any,
    ) -> Segmenter:
        """A weight file: a training checkpoint (it says everything), or a state_dict /
        ``.tflite`` file for the registered ``model`` (see ``deeplab.hub.load_weights``,
        also for ``fallback``). ``model_options`` go to the builder (``{"width_mult": 0.5}``)."""
        net, info = hub.load_weights(path, arch=model, num_classes=num_classes, dataset=dataset,
                                     options=model_options, fallback=fallback)  # fmt: skip
        return cls.from_info(net, info, **options)

    # --- preprocessing ------------------------------------------------------

    def normalize(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``HxWx3`` or ``NxHxWx3`` uint8 RGB -> ``Nx3xHxW`` float, normalised, on the device."""
        x = as_tensor(images) if isinstance(images, np.ndarray) else images
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
        rgbs = [read_image(im) for im in images]
        results: list[Prediction | None] = [None] * len(rgbs)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, rgb in enumerate(rgbs):
            by_size.setdefault(rgb.shape, []).append(i)
        labels_only = not probabilities and self._labels_only()
        for indices in by_size.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                # One image: a view, not a copy (72 MB for a 24-megapixel photo).
                batch = rgbs[chunk[0]][None] if len(chunk) == 1 else \
                    np.stack([rgbs[i] for i in chunk])  # fmt: skip
                if labels_only:
                    for i, labels in zip(chunk, self.labels(batch), strict=True):
                        results[i] = Prediction(labels.astype(self._label_dtype, copy=False),
                                                self.class_names, self.palette,
                                                image=rgbs[i])  # fmt: skip
                    continue
                probs = self.probabilities(self.normalize(batch))
                for i, p in zip(chunk, probs, strict=True):
                    results[i] = self._finish(rgbs[i], p, keep_probs=probabilities)
        return [r for r in results if r is not None]

    def _labels_only(self) -> bool:
        """Whether no option needs the class probabilities (then ``labels`` is enough)."""
        return self.scales == (1.0,) and not self.flip and not self.crf and self.crop is None

    @torch.no_grad()
    def labels(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``[N, H, W, 3]`` images of one size -> labels ``[N, H, W]`` (uint8 up to 256
        classes): what ``argmax(probabilities)`` gives at one scale, without a softmax or a
        full-size score map (``upsampled_argmax``). A model made for one canvas gets the
        image resized into it from uint8, so a 40-megapixel photo is never a float tensor;
        an exported labels graph takes the images as they are."""
        if getattr(self.model, "contract", None) == "labels":
            return self.model.labels(images).astype(np.uint8)
        scores, upsample = self.scores_for_labels(images)
        return upsample(scores)

    @torch.no_grad()
    def scores_for_labels(
        self, images: np.ndarray
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], np.ndarray]]:
        """(class scores ``[N, C, h, w]`` at the network's resolution, and the function that
        turns such scores, or probabilities made from them, into labels at the images'
        size). Video smoothing averages probabilities in between."""
        n, h, w, _ = images.shape
        x = as_tensor(images).to(self.device).permute(0, 3, 1, 2)
        canvas = self._canvas(1.0)
        fitted = self._scaled_size((h, w), 1.0, canvas)
        reduced = canvas is not None or fitted != (h, w)
        if reduced:  # into the canvas (or max_side), reading only the rows the resize needs
            x = bilinear_rows_first(x, fitted, align_corners=self.align_corners)
        x = ((x.float() - self.mean.to(x.device)) / self.std.to(x.device))
        fh, fw = x.shape[-2:]
        grid = canvas or (aligned_size(fh, self._stride(), align_corners=self.align_corners),
                          aligned_size(fw, self._stride(), align_corners=self.align_corners))
        x = F.pad(x, (0, grid[1] - fw, 0, grid[0] - fh))
        if hasattr(self.model, "scores") and getattr(self.model, "scales", (1.0,)) == (1.0,):
            scores = self._run(lambda t: self.model.scores(t, None), x)  # resized below
        else:
            scores = self._run(self.model, x)
        scores = scores.float()
        ac = self.align_corners
        if reduced:  # as probabilities(): scores at the grid, cropped, resized
            def upsample(s: torch.Tensor) -> np.ndarray:
                valid = self._resize(s, grid)[:, :, :fh, :fw]
                return upsampled_argmax(valid, (h, w), align_corners=ac).cpu().numpy()
        else:
            def upsample(s: torch.Tensor) -> np.ndarray:
                return upsampled_argmax(s, grid, crop=(h, w), align_corners=ac).cpu().numpy()
        return scores, upsample

    def _stride(self) -> int:
        stride = getattr(self.model, "output_stride", None)
        return stride if isinstance(stride, int) and stride > 1 else 1

    @property
    def _label_dtype(self) -> type:
        return np.uint8 if len(self.class_names) <= 256 else np.int64

    def _finish(self, rgb: np.ndarray, probs: torch.Tensor, *, keep_probs: bool) -> Prediction:
        probs_np = probs.float().cpu().numpy()
        if self.crf:
            probs_np = dense_crf(rgb, probs_np, **self.crf_options)
        labels = probs_np.argmax(0).astype(self._label_dtype)
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
                p = F.softmax(self._resize(out.float(), size), dim=1)
                total = p if total is None else total + p
        assert total is not None
        return total / (len(self.scales) * (2 if self.flip else 1))

    def _canvas(self, scale: float) -> tuple[int, int] | None:
        """The fixed input size scaled, kept at k * output_stride + 1 (513 -> 257 at 0.5)."""
        if self.input_size is None:
            return None
        return (scaled_size(self.input_size[0], scale), scaled_size(self.input_size[1], scale))

    def _scaled_size(
        self, size: torch.Size, scale: float, canvas: tuple[int, int] | None
    ) -> tuple[int, int]:
        h, w = size
        # Fit the image inside the canvas keeping its aspect ratio, or plainly scale it
        # (and bring its longest side down to max_side).
        ratio = scale if canvas is None else min(canvas[0] / h, canvas[1] / w)
        if canvas is None and self.max_side and max(h, w) * ratio > self.max_side:
            ratio = self.max_side / max(h, w)
        return (max(1, round(h * ratio)), max(1, round(w * ratio)))

    def _resize(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return resize(x, size, align_corners=self.align_corners)

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

    def _forward(self, x: torch.Tensor, canvas: tuple[int, int] | None) -> torch.Tensor:
        """One model call; pads bottom/right to ``canvas`` (default: the feature grid, k *
        output_stride + 1) with the mean pixel (0 after normalisation, as the TF release
        pads) and crops the logits back. On the CamVid model, 480x360 frames fed as they
        are scored 45.8% val mIoU, padded to 481x369 47.4%."""
        h, w = x.shape[-2:]
        if canvas is None:
            canvas = (aligned_size(h, self._stride(), align_corners=self.align_corners),
                      aligned_size(w, self._stride(), align_corners=self.align_corners))
        if (h, w) != canvas:
            x = F.pad(x, (0, max(canvas[1] - w, 0), 0, max(canvas[0] - h, 0)))
        logits = self._run(self.model, x)
        if logits.shape[1] != self.num_classes:
            raise ValueError(
                f"the model returned {logits.shape[1]} channels for {self.num_classes} classes"
            )
        return self._resize(logits.float(), x.shape[-2:])[:, :, :h, :w]

    def _run(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``fn(x)`` in the chosen precision and memory layout (``runtimes.TorchRunner``)."""
        return self.runner(fn, x)




def _resolve_device(device: str | torch.device | None, model: nn.Module) -> torch.device:
    if device is None:
        first = next(iter(model.parameters()), None)
        return first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for but no CUDA GPU is visible; use --device cpu")
    return device

