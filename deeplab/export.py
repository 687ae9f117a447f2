"""Leave Python: export a DeepLab to ONNX (or TFLite), then check it against PyTorch.

The ONNX contract (``export_onnx``), so that a consumer needs no other file and no code
of ours:

- input ``image``: uint8 RGB ``[N, H, W, 3]``, N, H and W dynamic;
- inside the graph: normalisation with the model's mean/std, the padding DeepLab feeds
  (bottom/right with the mean pixel to k * output_stride + 1; models made for one canvas,
  Google's 513/257, are resized into it keeping the aspect ratio, as the TF demo does),
  the network, the bilinear resize back to H x W (align_corners as the model) and argmax;
- outputs ``labels`` int64 ``[N, H, W]`` and, with ``probabilities=True``, the softmax
  ``probabilities`` float32 ``[N, C, H, W]``;
- ``metadata_props``: ``deeplab.info`` (the ``ModelInfo`` as JSON: architecture, options,
  class names, palette, mean/std, input size), plus ``class_names``, ``palette``, ``mean``,
  ``std``, ``input_size``, ``output_stride`` and ``contract`` (``labels`` or ``raw``).

``raw=True`` exports the bare network instead: float ``input`` ``[N, 3, H, W]`` already
normalised, ``logits`` ``[N, C, H, W]`` at the input size, for those who do their own pre-
and post-processing. ``check`` runs the exported file (onnxruntime, or Google's TFLite
interpreter) and PyTorch on real photos and reports label agreement and the largest logit
difference.
"""

from __future__ import annotations

import importlib
import json
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from deeplab import hub
from deeplab.checkpoint import ModelInfo
from deeplab.data.datasets import dataset_classes
from deeplab.data.images import example_photos, find_images, read_image
from deeplab.data.labels import IMAGENET_MEAN, IMAGENET_STD
from deeplab.extras import require
from deeplab.weights import list_entries

OPSET = 17


class ExportError(RuntimeError):
    """An export that could not be made or did not pass its check; the message says which."""


class LabelGraph(nn.Module):
    """uint8 ``[N, H, W, 3]`` -> labels ``[N, H, W]`` (and probabilities ``[N, C, H, W]``):
    the whole of ``Segmenter.predict`` at one scale, in operations ONNX can hold.

    Sizes are read from the input with tensor arithmetic, so the exported graph keeps H and
    W dynamic (under tracing ``x.shape[i]`` is a traced value, in eager mode an int).
    """

    def __init__(self, net: nn.Module, info: ModelInfo, *, probabilities: bool,
                 uint8_labels: bool = False) -> None:  # fmt: skip
        super().__init__()
        # uint8 labels for browsers: onnxruntime-web's WebGPU backend handles int64 poorly,
        # and JavaScript reads a Uint8Array directly (up to 256 classes).
        self.uint8_labels = uint8_labels
        self.net = net
        self.register_buffer("mean", torch.tensor(info.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(info.std, dtype=torch.float32).view(1, 3, 1, 1))
        self.canvas = info.input_size
        self.stride = int(getattr(net, "output_stride", 1) or 1)
        self.align_corners = bool(getattr(net, "align_corners", True))
        self.probabilities = probabilities

    def forward(self, image: torch.Tensor):
        x = (image.permute(0, 3, 1, 2).float() - self.mean) / self.std
        h, w = x.shape[2], x.shape[3]
        if self.canvas is not None:  # fit into the fixed canvas, keeping the aspect ratio
            ch, cw = self.canvas
            ratio = _minimum(ch / h, cw / w)
            nh, nw = _round(h * ratio), _round(w * ratio)
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=self.align_corners)
            x = F.pad(x, (0, cw - nw, 0, ch - nh))
            logits = self.net(x)
            logits = F.interpolate(logits, size=(ch, cw), mode="bilinear",
                                   align_corners=self.align_corners)[:, :, :nh, :nw]  # fmt: skip
        else:  # pad to the feature grid: k * output_stride + 1 (DeepLab-v2 sec. 4)
            s = self.stride
            ph = ((h - 1 + s - 1) // s) * s + 1 - h if self.align_corners else (-h) % s
            pw = ((w - 1 + s - 1) // s) * s + 1 - w if self.align_corners else (-w) % s
            logits = self.net(F.pad(x, (0, pw, 0, ph)))
            logits = F.interpolate(logits, size=(h + ph, w + pw), mode="bilinear",
                                   align_corners=self.align_corners)[:, :, :h, :w]  # fmt: skip
            return self._outputs(logits)
        logits = F.interpolate(logits, size=(h, w), mode="bilinear",
                               align_corners=self.align_corners)  # fmt: skip
        return self._outputs(logits)

    def _outputs(self, logits: torch.Tensor):
        labels = logits.argmax(1)
        if self.uint8_labels:
            labels = labels.to(torch.uint8)
        return (labels, logits.softmax(1)) if self.probabilities else labels


def _minimum(a, b):
    return torch.minimum(a, b) if torch.is_tensor(a) else min(a, b)


def _round(v):
    return torch.round(v).to(torch.int64) if torch.is_tensor(v) else round(v)


class RawGraph(nn.Module):
    """Normalised float ``[N, 3, H, W]`` -> logits ``[N, C, H, W]``: the bare network."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _require(module: str, extra: str):
    require(extra, "ONNX export and its check", (module,))
    return importlib.import_module(module)


def export_onnx(
    model: nn.Module,
    info: ModelInfo,
    out: str | Path,
    *,
    probabilities: bool = False,
    raw: bool = False,
    uint8_labels: bool = False,
    opset: int = OPSET,
) -> Path:
    """Write ``model`` as an ONNX file following the contract above; returns its path.
    ``uint8_labels``: the labels output as uint8 (the web variant, up to 256 classes)."""
    onnx = _require("onnx", "export")
    out = Path(out)
    if out.is_dir() or (out.parent.exists() and not out.parent.is_dir()):
        raise ExportError(f"--out {out}: give a file path such as model.onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.float().eval()
    if raw:
        graph, example = RawGraph(model).eval(), torch.zeros(1, 3, *(info.input_size or (65, 65)))
        names, outputs = ["input"], ["logits"]
        axes = {"input": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "h", 3: "w"}}
    else:
        if uint8_labels and info.num_classes > 256:
            raise ExportError(f"{info.num_classes} classes do not fit uint8 labels")
        graph = LabelGraph(model, info, probabilities=probabilities,
                           uint8_labels=uint8_labels).eval()  # fmt: skip
        example = torch.zeros(1, 97, 129, 3, dtype=torch.uint8)
        names, outputs = ["image"], ["labels"] + (["probabilities"] if probabilities else [])
        axes = {"image": {0: "n", 1: "h", 2: "w"}, "labels": {0: "n", 1: "h", 2: "w"}}
        if probabilities:
            axes["probabilities"] = {0: "n", 2: "h", 3: "w"}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer notes on shape arithmetic
            torch.onnx.export(graph, (example,), str(out), input_names=names,
                              output_names=outputs, dynamic_axes=axes, opset_version=opset,
                              dynamo=False)  # fmt: skip
    except Exception as e:  # the exporter raises assorted errors for unsupported operations
        raise ExportError(f"{info.arch} could not be exported to ONNX ({type(e).__name__}: "
                          f"{str(e).splitlines()[0]})") from None  # fmt: skip
    # The exporter puts the wrapper back in its mode on leaving: keep the model in eval mode.
    model.eval()
    document = onnx.load(str(out))
    for key, value in metadata(info, contract="raw" if raw else "labels").items():
        entry = document.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(document, str(out))
    return out


def metadata(info: ModelInfo, *, contract: str) -> dict[str, str]:
    """The strings an exported file carries about its model."""
    return {
        "deeplab.info": json.dumps(info.to_dict()),
        "contract": contract,
        "class_names": json.dumps(list(info.class_names)),
        "palette": json.dumps([list(c) for c in info.palette] if info.palette else None),
        "mean": json.dumps(list(info.mean)),
        "std": json.dumps(list(info.std)),
        "input_size": json.dumps(list(info.input_size) if info.input_size else None),
        "output_stride": json.dumps(info.output_stride),
    }


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``metadata_props`` of an exported ONNX file, values decoded."""
    onnx = _require("onnx", "export")
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return {k: (v if k == "contract" else json.loads(v)) for k, v in props.items()}


# --- running exported files -------------------------------------------------------------------


def onnx_session(path: str | Path, *, threads: int | None = None):
    """An onnxruntime session on the CPU (all graph optimisations on)."""
    ort = _require("onnxruntime", "export")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ExportError(f"{path} is not a readable ONNX model ({str(e).splitlines()[0]}); "
                          "export it again") from None  # fmt: skip


@dataclass
class Parity:
    """How an exported file agrees with PyTorch on real photos."""

    images: int
    label_agreement: float  # fraction of pixels with the same label
    max_logit_diff: float  # largest absolute logit difference (nan when not compared)
    threshold: float

    @property
    def ok(self) -> bool:
        return self.label_agreement >= self.threshold

    def __str__(self) -> str:
        logits = "" if self.max_logit_diff != self.max_logit_diff else \
            f", largest logit difference {self.max_logit_diff:.2e}"  # fmt: skip
        return (f"{'passed' if self.ok else 'FAILED'}: labels agree on "
                f"{100 * self.label_agreement:.3f}% of pixels of {self.images} photos "
                f"(threshold {100 * self.threshold:.1f}%){logits}")  # fmt: skip


def check_images(folder: str | Path | None = None) -> list[np.ndarray]:
    """Photos for the parity check: the files in ``folder``, else the photos shipped with the
    package."""
    paths = find_images([folder]) if folder else example_photos()
    if not paths:
        raise ExportError(f"no images in {folder} for the parity check; give a folder of "
                          "photos with --check-images")  # fmt: skip
    return [read_image(p) for p in paths[:8]]


@torch.no_grad()
def check_onnx(
    path: str | Path, model: nn.Module, info: ModelInfo, images: list[np.ndarray],
    *, threshold: float = 0.999,
) -> Parity:  # fmt: skip
    """Run the exported file and PyTorch on ``images``; compare labels and logits.

    A labels graph is compared label for label with the same pipeline in PyTorch; its
    network is compared logit for logit through a raw export of the same model.
    """
    contract = read_metadata(path).get("contract", "labels")
    session = onnx_session(path)
    model = model.float().eval()
    same = total = 0
    diff = 0.0
    if contract == "labels":
        graph = LabelGraph(model, info, probabilities=False).eval()
        for image in images:
            ours = graph(torch.from_numpy(image.copy())[None]).numpy()
            theirs = session.run(["labels"], {"image": image[None]})[0]
            same += int((ours == theirs).sum())
            total += ours.size
        with tempfile.TemporaryDirectory() as tmp:
            raw = export_onnx(model, info, Path(tmp) / "raw.onnx", raw=True)
            diff = _max_logit_diff(onnx_session(raw), model, info, images)
    else:
        diff = _max_logit_diff(session, model, info, images)
        for image in images:
            x = network_input(image, info)
            ours = model(x).argmax(1).numpy()
            theirs = session.run(["logits"], {"input": x.numpy()})[0].argmax(1)
            same += int((ours == theirs).sum())
            total += ours.size
    return Parity(len(images), same / max(total, 1), diff, threshold)


def network_input(image: np.ndarray, info: ModelInfo) -> torch.Tensor:
    """A photo as the bare network takes it: normalised ``[1, 3, H, W]`` float, resized to
    the model's canvas when it has one."""
    x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float()
    x = (x - torch.tensor(info.mean).view(1, 3, 1, 1)) / torch.tensor(info.std).view(1, 3, 1, 1)
    if info.input_size is not None:
        x = F.interpolate(x, size=info.input_size, mode="bilinear", align_corners=True)
    return x


def _max_logit_diff(session, model: nn.Module, info: ModelInfo, images) -> float:
    worst = 0.0
    for image in images:
        x = network_input(image, info)
        ours = model(x).numpy()
        theirs = session.run(["logits"], {"input": x.numpy()})[0]
        worst = max(worst, float(np.abs(ours - theirs).max()))
    return worst


# --- `deeplab export`: which model, which format, then the check -------------------------------


def model_to_export(
    *,
    model: str | None = None,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    dataset: str | None = None,
    model_options: dict | None = None,
) -> tuple[nn.Module, ModelInfo]:
    """The model ``deeplab export`` means: ``weights`` (a checkpoint, or a bare file of the
    registered ``model``), else the zoo entry ``model`` (default: the VOC model), else the
    registered architecture ``model`` freshly initialised."""
    if weights:
        return hub.load_weights(weights, arch=model, num_classes=num_classes, dataset=dataset,
                                options=model_options)  # fmt: skip
    zoo = {e.name for e in list_entries(kind="segmentation")}
    if model is None or model in zoo:
        return hub.load_pretrained(model)
    options = {**(model_options or {}), **({"num_classes": num_classes} if num_classes else {})}
    net = hub.create_model(model, **options).eval()
    names, palette = dataset_classes(dataset, net.num_classes)
    info = ModelInfo(arch=model, options={**options, "num_classes": net.num_classes},
                     class_names=names, palette=None if palette is None else tuple(palette),
                     mean=IMAGENET_MEAN, std=IMAGENET_STD)  # fmt: skip
    return net, info


def export(
    model: nn.Module,
    info: ModelInfo,
    out: str | Path,
    *,
    format: str = "onnx",
    probabilities: bool = False,
    raw: bool = False,
    check: bool = True,
    check_folder: str | Path | None = None,
    input_size: tuple[int, int] | None = None,
) -> tuple[Path, Parity | None]:
    """Export and (unless ``check=False``) check; raises ``ExportError`` when the check
    fails, after writing the file so that it can be inspected."""
    if format == "onnx":
        path = export_onnx(model, info, out, probabilities=probabilities, raw=raw)
        parity = check_onnx(path, model, info, check_images(check_folder)) if check else None
    elif format == "tflite":
        path = export_tflite(model, info, out, input_size=input_size)
        parity = check_tflite(path, model, info, check_images(check_folder)) if check else None
    else:
        raise ExportError(f"--format {format!r}: choose onnx or tflite")
    if parity is not None and not parity.ok:
        raise ExportError(f"{path} was written but its parity check {parity}")
    return path, parity


# --- TFLite, through Google's converter for PyTorch (litert-torch) ----------------------------


class NHWCGraph(nn.Module):
    """Normalised float ``[1, H, W, 3]`` -> logits ``[1, H, W, C]``: the layout of Google's own
    DeepLab .tflite files (input x/127.5 - 1 or the model's mean/std, fixed size)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def export_tflite(
    model: nn.Module, info: ModelInfo, out: str | Path, *, input_size: tuple[int, int] | None,
    calibration: list[np.ndarray] | None = None,
) -> Path:
    """Write ``model`` as a .tflite file of fixed input size (the model's canvas, else
    ``input_size``, else 513x513), with ``<out>.json`` holding its ``ModelInfo``: float32,
    or with ``calibration`` photos full integer (int8 in and out, per-channel weights;
    litert-torch's post-training quantization, observed on those photos)."""
    require("tflite", "TFLite export", ("litert_torch",))
    import litert_torch

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    size = tuple(input_size or info.input_size or (513, 513))
    graph = NHWCGraph(model.float().eval()).eval()
    example = (torch.zeros(1, *size, 3),)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if calibration:
                graph, options = _quantized_pt2e(graph, example, calibration,
                                                 replace(info, input_size=size))  # fmt: skip
            else:
                options = {}
            edge = litert_torch.convert(graph, example, **options)
        edge.export(str(out))
    except Exception as e:
        raise ExportError(f"{info.arch} could not be converted to TFLite ({type(e).__name__}: "
                          f"{str(e).splitlines()[0]})") from None  # fmt: skip
    model.eval()
    sidecar = {**info.to_dict(), "input_size": list(size), "layout": "NHWC logits",
               "int8": bool(calibration)}  # fmt: skip
    Path(f"{out}.json").write_text(json.dumps(sidecar, indent=1) + "\n")
    return out


def _quantized_pt2e(graph: nn.Module, example: tuple, photos: list[np.ndarray],
                    info: ModelInfo) -> tuple[nn.Module, dict]:  # fmt: skip
    """PyTorch 2 export quantization with litert-torch's quantizer: symmetric int8,
    per-channel weights, static activations observed on ``photos``."""
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from litert_torch.quantize.quant_config import QuantConfig

    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError:  # older stacks keep it in torch.ao
        from torch.ao.quantization.quantize_pt2e import convert_pt2e, prepare_pt2e
    quantizer = PT2EQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    prepared = prepare_pt2e(torch.export.export(graph, example).module(), quantizer)
    with torch.no_grad():
        for photo in photos:
            prepared(network_input(photo, info).permute(0, 2, 3, 1).contiguous())
    return convert_pt2e(prepared, fold_quantize=False), {
        "quant_config": QuantConfig(pt2e_quantizer=quantizer)}


def tflite_interpreter(path: str | Path, *, threads: int | None = None):
    """Google's TFLite interpreter (ai-edge-litert, XNNPACK on the CPU) on ``path``."""
    require("tflite", "running .tflite files in Google's interpreter", ("ai_edge_litert",))
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


@torch.no_grad()
def check_tflite(
    path: str | Path, model: nn.Module, info: ModelInfo, images: list[np.ndarray],
    *, threshold: float = 0.999,
) -> Parity:  # fmt: skip
    """Google's interpreter against PyTorch on ``images`` resized to the file's input size."""
    interpreter = tflite_interpreter(path)
    (inp,), (outp,) = interpreter.get_input_details(), interpreter.get_output_details()
    size = tuple(int(v) for v in inp["shape"][1:3])
    sized = replace(info, input_size=size)
    same = total = 0
    worst = 0.0
    for image in images:
        x = network_input(image, sized)
        ours = model.float().eval()(x).permute(0, 2, 3, 1).numpy()
        interpreter.set_tensor(inp["index"], x.permute(0, 2, 3, 1).contiguous().numpy())
        interpreter.invoke()
        theirs = interpreter.get_tensor(outp["index"])
        worst = max(worst, float(np.abs(ours - theirs).max()))
        same += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
        total += ours[..., 0].size
    return Parity(len(images), same / max(total, 1), worst, threshold)
