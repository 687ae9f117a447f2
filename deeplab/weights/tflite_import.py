"""Read Google's DeepLab-v3 MobileNetV2 TFLite models as a ``deeplabv3_mobilenetv2`` state_dict.

The flatbuffer is read with the pure-Python ``tflite`` package (a dependency of
``deeplab``; no TensorFlow needed). Each CONV_2D / DEPTHWISE_CONV_2D op carries its weights and
bias as constant tensors named after the TF-Slim scope that made them
(``MobilenetV2/expanded_conv_3/depthwise``, ``aspp0``, ``logits/semantic``),
so the import maps scopes to our module names, not op positions. Nothing here builds a
model: ``model_options`` says which one the file fits, ``state_dict`` gives its weights,
and ``deeplab.hub`` puts them into the built model.

What the export did, and how it is undone:

- batch norm was folded into the conv: weight = W * gamma / sqrt(var + eps),
  bias = beta - mean * gamma / sqrt(var + eps). We keep the folded weight in
  the conv and restore each BN as identity + bias (weight 1, mean 0,
  sqrt(var + eps) = 1, bias = folded bias), so the model trains afterwards
  exactly like one with batch norm;
- kernels are stored [out, h, w, in] (regular conv) and [1, h, w, channels]
  (depthwise); PyTorch wants [out, in, h, w] and [channels, 1, h, w];
- 8-bit models store uint8 weights: real = (q - zero_point) * scale, with one
  scale per tensor or per output channel; int32 biases use zero point 0.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# TFLite's TensorType enum values (schema.fbs) we may meet in constant buffers.
_NUMPY_TYPES = {
    0: np.float32,
    1: np.float16,
    2: np.int32,
    3: np.uint8,
    4: np.int64,
    7: np.int16,
    9: np.int8,
}


@dataclass
class Tensor:
    """A graph tensor; ``data`` holds constant values (dequantized to float32) or None."""

    index: int
    name: str
    shape: tuple[int, ...]
    data: np.ndarray | None
    scale: np.ndarray | None = None
    zero_point: np.ndarray | None = None


@dataclass
class Op:
    """One graph operator: its builtin name, input/output tensors and options."""

    kind: str
    inputs: list[Tensor | None]
    outputs: list[Tensor]
    options: dict


@dataclass
class Conv:
    """A convolution ready for PyTorch: scope, [out, in/groups, h, w] weight, bias, options."""

    scope: str
    weight: torch.Tensor
    bias: torch.Tensor
    depthwise: bool
    stride: int
    dilation: int
    activation: str  # "none", "relu" or "relu6"


@dataclass
class TFLiteDeepLab:
    """A DeepLab graph read from a .tflite file, in PyTorch terms."""

    convs: dict[str, Conv]
    width_mult: float
    output_stride: int
    num_classes: int
    input_size: tuple[int, int]
    input_mean: float  # 0-255 pixel units, x_normalised = (x - mean) / std
    input_std: float
    quantized: bool


def _require_tflite():
    try:
        import tflite
    except ImportError as e:
        raise ImportError(
            "reading .tflite files needs the `tflite` and `flatbuffers` packages: "
            "pip install tflite flatbuffers"
        ) from e
    return tflite


def read_ops(path: str | Path) -> list[Op]:
    """Every operator of the main subgraph of a .tflite file, constants dequantized."""
    tflite = _require_tflite()
    path = Path(path)
    buf = path.read_bytes()
    try:
        model = tflite.Model.GetRootAsModel(buf, 0)
        graph = model.Subgraphs(0)
        n_ops = graph.OperatorsLength()
    except Exception as e:  # flatbuffers raises assorted errors on garbage
        raise ValueError(
            f"{path} is not a readable TFLite flatbuffer ({e}); the file is corrupt or not "
            "a .tflite model: delete it and download it again"
        ) from e
    if graph is None or n_ops == 0:
        raise ValueError(f"{path} holds no TFLite graph; delete it and download it again")

    try:
        return _read_graph(tflite, model, graph)
    except (struct.error, IndexError, TypeError, AttributeError) as e:
        # A truncated or damaged file decodes until an offset runs past its end.
        raise ValueError(
            f"{path} is a damaged TFLite file ({type(e).__name__}: {e}); the download was "
            "probably cut short: delete it and download it again"
        ) from None


def _read_graph(tflite, model, graph) -> list[Op]:
    from tflite.BuiltinOperator import BuiltinOperator

    op_names = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
    tensors: dict[int, Tensor] = {}

    def tensor(i: int) -> Tensor | None:
        if i < 0:
            return None
        if i not in tensors:
            tensors[i] = _read_tensor(model, graph, i)
        return tensors[i]

    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        # Newer files keep builtin codes > 127 in BuiltinCode, older ones in the deprecated field.
        kind = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
        ops.append(
            Op(
                kind=kind,
                inputs=[tensor(int(j)) for j in op.InputsAsNumpy()],
                outputs=[tensor(int(j)) for j in op.OutputsAsNumpy()],
                options=_read_options(tflite, kind, op),
            )
        )
    return ops


def _read_tensor(model, graph, i: int) -> Tensor:
    t = graph.Tensors(i)
    shape = tuple(int(s) for s in t.ShapeAsNumpy()) if t.ShapeLength() else ()
    scale = zero_point = None
    q = t.Quantization()
    if q is not None and q.ScaleLength():
        scale = q.ScaleAsNumpy().astype(np.float64)
        zero_point = q.ZeroPointAsNumpy().astype(np.float64)
        axis = q.QuantizedDimension()
    data = None
    raw = model.Buffers(t.Buffer()).DataAsNumpy()
    if isinstance(raw, np.ndarray) and raw.size:
        dtype = _NUMPY_TYPES.get(t.Type())
        if dtype is None:
            raise ValueError(f"tensor {t.Name().decode()} has unsupported TFLite type {t.Type()}")
        values = np.frombuffer(raw.tobytes(), dtype=dtype).reshape(shape)
        if scale is not None and dtype is not np.float32:
            values = dequantize(values, scale, zero_point, axis=axis)
        data = values.astype(np.float32)
    return Tensor(i, t.Name().decode(), shape, data, scale, zero_point)


def dequantize(q: np.ndarray, scale, zero_point, *, axis: int = 0) -> np.ndarray:
    """real = (q - zero_point) * scale, per tensor (one scale) or per channel along ``axis``."""
    scale = np.asarray(scale, dtype=np.float64).reshape(-1)
    zero_point = np.asarray(zero_point, dtype=np.float64).reshape(-1)
    shape = [1] * q.ndim
    if scale.size > 1:
        if q.shape[axis] != scale.size:
            raise ValueError(f"{scale.size} scales for axis {axis} of size {q.shape[axis]}")
        shape[axis] = scale.size
    if zero_point.size == 1:  # some files give one zero point for per-channel scales
        zero_point = np.full(scale.size, zero_point[0])
    return ((q.astype(np.float64) - zero_point.reshape(shape)) * scale.reshape(shape)).astype(
        np.float32
    )


_ACTIVATIONS = {0: "none", 1: "relu", 3: "relu6"}


def _read_options(tflite, kind: str, op) -> dict:
    table = op.BuiltinOptions()
    if table is None:
        return {}
    if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        o = tflite.Conv2DOptions() if kind == "CONV_2D" else tflite.DepthwiseConv2DOptions()
        o.Init(table.Bytes, table.Pos)
        return {
            "padding": "SAME" if o.Padding() == 0 else "VALID",
            "stride": (o.StrideH(), o.StrideW()),
            "dilation": (o.DilationHFactor(), o.DilationWFactor()),
            "activation": _ACTIVATIONS.get(o.FusedActivationFunction(), "other"),
        }
    if kind == "RESIZE_BILINEAR":
        o = tflite.ResizeBilinearOptions()
        o.Init(table.Bytes, table.Pos)
        return {"align_corners": bool(o.AlignCorners()), "half_pixel": bool(o.HalfPixelCenters())}
    return {}


def _scope(weight_name: str) -> str:
    """TF-Slim scope of a conv from its weight tensor's name.

    Float files name it ``MobilenetV2/Conv/weights``; 8-bit files join several
    names with ';' and start with the folded one, ``MobilenetV2/Conv/Conv2D_Fold``.
    """
    first = weight_name.split(";")[0]
    return first.rsplit("/", 1)[0]


def read_deeplab(path: str | Path) -> TFLiteDeepLab:
    """Read a DeepLab-v3 MobileNetV2 .tflite file into PyTorch-layout convs and options."""
    ops = read_ops(path)
    convs: dict[str, Conv] = {}
    for op in ops:
        if op.kind not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        _, w, b = op.inputs[:3]
        if w is None or w.data is None or b is None or b.data is None:
            raise ValueError(f"{path}: {op.kind} without constant weights/bias; not a DeepLab file")
        depthwise = op.kind == "DEPTHWISE_CONV_2D"
        if depthwise:
            # [1, h, w, channels] -> [channels, 1, h, w]
            weight = np.transpose(w.data, (3, 0, 1, 2))
        else:
            # [out, h, w, in] -> [out, in, h, w]
            weight = np.transpose(w.data, (0, 3, 1, 2))
        scope = _scope(w.name)
        convs[scope] = Conv(
            scope=scope,
            weight=torch.from_numpy(np.ascontiguousarray(weight)),
            bias=torch.from_numpy(b.data.copy()),
            depthwise=depthwise,
            stride=op.options["stride"][0],
            dilation=op.options["dilation"][0],
            activation=op.options["activation"],
        )
    if "MobilenetV2/Conv" not in convs or "logits/semantic" not in convs:
        raise ValueError(
            f"{path} is not a DeepLab-v3 MobileNetV2 graph (no MobilenetV2/Conv or "
            f"logits/semantic conv); found scopes: {', '.join(list(convs)[:6])} ..."
        )

    first = ops[0].inputs[0]
    _, in_h, in_w, _ = first.shape
    if first.scale is not None:  # uint8 input: real = (q - zero_point) * scale
        mean, std = float(first.zero_point[0]), 1.0 / float(first.scale[0])
    else:  # the float graphs expect x / 127.5 - 1, done before the graph
        mean, std = 127.5, 127.5

    last_backbone = max(
        (o for o in ops if o.kind == "CONV_2D" and "/project" in _scope(o.inputs[1].name)),
        key=lambda o: _block_index(_scope(o.inputs[1].name)),
    )
    feat_h = last_backbone.outputs[0].shape[1]
    return TFLiteDeepLab(
        convs=convs,
        width_mult=convs["MobilenetV2/Conv"].weight.shape[0] / 32,
        # Corner-aligned sizes: feature = (input - 1) / OS + 1 (DeepLab's k * OS + 1 inputs).
        output_stride=(in_h - 1) // (feat_h - 1),
        num_classes=convs["logits/semantic"].weight.shape[0],
        input_size=(in_h, in_w),
        input_mean=mean,
        input_std=std,
        quantized=first.scale is not None,
    )


def _block_index(scope: str) -> int:
    m = re.search(r"expanded_conv(?:_(\d+))?/", scope + "/")
    return -1 if m is None else int(m.group(1) or 0)


# --- TF-Slim scope -> module names of ``deeplabv3_mobilenetv2`` -------------------
#
# MobileNetV2 follows torchvision's layout: features.0 is the stem conv,
# features.1 the expansion-1 block (depthwise, project), features.2..17 the
# expand / depthwise / project blocks. TF's expanded_conv_N is features.{N+1}.


def module_names(scope: str) -> tuple[str, str | None]:
    """(conv module, batch-norm module or None) in our model for a TF-Slim conv scope."""
    if scope == "MobilenetV2/Conv":
        return "backbone.features.0.0", "backbone.features.0.1"
    m = re.fullmatch(r"MobilenetV2/expanded_conv(?:_(\d+))?/(expand|depthwise|project)", scope)
    if m:
        n = int(m.group(1) or 0)
        part = m.group(2)
        block = f"backbone.features.{n + 1}.conv"
        if n == 0:  # expansion factor 1: no expand conv
            layers = {"depthwise": ("0.0", "0.1"), "project": ("1", "2")}
        else:
            layers = {"expand": ("0.0", "0.1"), "depthwise": ("1.0", "1.1"), "project": ("2", "3")}
        conv, bn = layers[part]
        return f"{block}.{conv}", f"{block}.{bn}"
    if scope in _HEAD:
        return _HEAD[scope]
    raise KeyError(f"no module for TF scope {scope!r}")


# The zoo head: ASPP with image pooling + 1x1 branch only (concatenated in that
# order, as in the graph), 1x1 projection, then the classifier conv with a bias.
_HEAD: dict[str, tuple[str, str | None]] = {
    "image_pooling": ("head.aspp.pooling.conv.0", "head.aspp.pooling.conv.1"),
    "aspp0": ("head.aspp.conv1x1.0", "head.aspp.conv1x1.1"),
    "concat_projection": ("head.aspp.project.0", "head.aspp.project.1"),
    "logits/semantic": ("head.classifier", None),
}


def state_dict(graph: TFLiteDeepLab, *, bn_eps: float = 1e-5) -> dict[str, torch.Tensor]:
    """The graph's weights under ``deeplabv3_mobilenetv2``'s names, batch norm restored as
    identity + bias (``bn_eps``: the model's BatchNorm eps, PyTorch's default 1e-5).

    ``num_batches_tracked`` is not produced; loading checks every shape against the model.
    """
    out: dict[str, torch.Tensor] = {}
    for scope, conv in graph.convs.items():
        conv_name, bn_name = module_names(scope)
        out[f"{conv_name}.weight"] = conv.weight
        if bn_name is None:
            out[f"{conv_name}.bias"] = conv.bias
            continue
        # Identity BN + bias: (x - 0) / sqrt((1 - eps) + eps) * 1 + bias = x + bias.
        c = conv.bias.numel()
        out[f"{bn_name}.weight"] = torch.ones(c)
        out[f"{bn_name}.bias"] = conv.bias
        out[f"{bn_name}.running_mean"] = torch.zeros(c)
        out[f"{bn_name}.running_var"] = torch.full((c,), 1.0 - bn_eps)
    return out


def model_options(graph: TFLiteDeepLab) -> dict:
    """Builder options of ``deeplabv3_mobilenetv2`` that match the graph."""
    return {
        "width_mult": graph.width_mult,
        "output_stride": graph.output_stride,
        "num_classes": graph.num_classes,
    }
