"""A ready model from a name or a file: build the registered network, then load weights.

The order is timm's: ``models`` builds a freshly initialised network, then weights go
into it, so ``models`` and ``weights`` never import each other. Weights come from a zoo
entry (``deeplab zoo``; ``True``: the architecture's entry), Google's DeepLab ``.tflite``
files (options read from the file first), a ``torch.save`` state_dict of a whole DeepLab
or of an ImageNet backbone, or a training checkpoint (it says its own architecture). A
different ``num_classes`` keeps every weight but the classifier and logs what was left
fresh (fine-tuning 21 -> 11 classes). ``load_pretrained``/``load_weights`` also return the
``ModelInfo`` (class names, palette, mean/std, input size) prediction and export need.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from deeplab.checkpoint import ModelInfo, info_of, is_checkpoint, model_from_state
from deeplab.data.datasets import DATASET_NAMES, dataset_classes
from deeplab.data.labels import IMAGENET_MEAN, IMAGENET_STD
from deeplab.extras import require
from deeplab.models import build_model
from deeplab.weights import (
    ZooEntry,
    default_entry,
    default_entry_for,
    entry_path,
    get_entry,
    list_entries,
    load_backbone_state_dict,
)
from deeplab.weights import tflite_import as tflite
from deeplab.weights.backbones import load_file, state_dict_of

log = logging.getLogger(__name__)

Pretrained = str | Path | bool | None


def create_model(
    name: str, *, pretrained: Pretrained = None, init_from: Pretrained = None, **options: Any
) -> nn.Module:
    """Build the registered model ``name`` with keyword ``options`` and load ``pretrained``.

    Options the weights fix (classes, width) are filled from them; the caller may change
    ``num_classes`` (fine-tuning) and ``output_stride`` / ``align_corners`` (evaluation).
    ``init_from`` takes the weights of *another* DeepLab (e.g. Google's v3 VOC model for a
    v3+ model with a decoder): see ``transfer``.
    """
    if init_from:
        return transfer(name, init_from, **options)
    if not pretrained:
        return build_model(name, **options)
    entry, path = _resolve(name, pretrained)
    if entry is not None:
        if entry.kind == "segmentation" and entry.arch != name:
            raise ValueError(
                f"zoo entry {entry.name!r} holds weights for {entry.arch!r}, not {name!r}: "
                f"use create_model({entry.arch!r}, pretrained={entry.name!r}), or "
                f"init_from={entry.name!r} (model.init_from) to start {name} from it"
            )
        options = {**dict(entry.options), **options}
        path = entry_path(entry)
    if path.suffix == ".tflite":
        return _from_tflite(name, path, options)
    obj = load_file(path)
    state = state_dict_of(obj, str(path))
    model = build_model(name, **options)
    if entry is not None:
        is_backbone = entry.kind == "backbone"
    else:  # a whole DeepLab's keys start with its parts' names
        is_backbone = not any(k.startswith("backbone.") for k in state)
    if is_backbone:
        report = load_backbone_state_dict(model.backbone, state)
        log.info("%s -> %s.backbone: %s", path.name, name, str(report).splitlines()[0])
    else:
        load_matching(model, state, origin=str(path))
    return model


def _resolve(arch: str, pretrained: str | Path | bool) -> tuple[ZooEntry | None, Path | None]:
    """(zoo entry, None) or (None, file path) for a ``pretrained`` argument."""
    if pretrained is True:
        return default_entry_for(arch), None
    if isinstance(pretrained, str) and pretrained in {e.name for e in list_entries()}:
        return get_entry(pretrained), None
    path = Path(pretrained).expanduser()
    if path.is_file():
        return None, path
    raise ValueError(
        f"pretrained={pretrained!r} is neither a zoo entry nor an existing file; "
        f"zoo entries: {', '.join(e.name for e in list_entries())} (see `deeplab zoo`)"
    )


def _from_tflite(arch: str, path: Path, options: dict[str, Any]) -> nn.Module:
    graph = tflite.read_deeplab(path)
    if arch != "deeplabv3_mobilenetv2":
        raise ValueError(
            f"{path} is a DeepLab-v3 MobileNetV2 TFLite model; load it with "
            f"create_model('deeplabv3_mobilenetv2', pretrained={str(path)!r})"
        )
    model = build_model(arch, **{**tflite.model_options(graph), **options})
    load_matching(model, tflite.state_dict(graph), origin=str(path))
    return model


def transfer(name: str, source: str | Path | bool, **options: Any) -> nn.Module:
    """A fresh ``name`` model started from another architecture's weights (``source``: a zoo
    entry or a weight file of a registered model).

    Tensors are matched by name, the v3 head's ``head.aspp.*`` standing for the v3+ head's
    ``head.*``: equal shapes are copied; a 1x1 projection that gained input channels (ASPP
    with atrous branches on a zoo head without them) gets the old weights in its first
    channels and zeros in the new ones, so it starts computing what the source computed.
    Everything else (decoder, classifier, new branches) starts fresh. The backbone must load
    completely. Logs which tensors came from where.
    """
    entry, path = _resolve(name, source)
    arch = entry.arch if entry is not None else _arch_of_file(path)
    src = create_model(arch, pretrained=entry.name if entry else str(path)).state_dict()
    width = {k: v for k, v in (entry.options if entry else {}).items() if k == "width_mult"}
    model = build_model(name, **{**width, **options})
    own = model.state_dict()
    copied, widened, fresh, to_load = [], [], [], {}
    for key, value in own.items():
        alias = key.replace("head.", "head.aspp.", 1)  # v3+'s ASPP is v3's head.aspp
        old = src.get(key, src.get(alias))
        if old is not None and old.shape == value.shape:
            to_load[key] = old
            copied.append(key)
        elif (old is not None and old.dim() == 4 and value.dim() == 4 and old.shape[2:] == (1, 1)
              and old.shape[0] == value.shape[0] and old.shape[1] < value.shape[1]):  # fmt: skip
            widened_value = torch.zeros_like(value)
            widened_value[:, : old.shape[1]] = old
            to_load[key] = widened_value
            widened.append(key)
        elif not key.endswith("num_batches_tracked"):
            fresh.append(key)
    missing = [k for k in fresh if k.startswith("backbone.")]
    if missing:
        raise ValueError(
            f"{source} does not fit {name}'s backbone ({len(missing)} tensors differ, first "
            f"{missing[0]}); start from weights of the same backbone and width"
        )
    model.load_state_dict(to_load, strict=False)
    heads = sorted({k.rsplit(".", 2)[0] for k in fresh})
    log.info("%s from %s: %d tensors copied, %d widened with zeros (%s), %d fresh in %s",
             name, source, len(copied), len(widened), ", ".join(widened) or "none", len(fresh),
             ", ".join(heads) or "nothing")  # fmt: skip
    model.transfer_report = {"copied": copied, "widened": widened, "fresh": fresh}
    return model


def _arch_of_file(path: Path) -> str:
    if path.suffix == ".tflite":
        return "deeplabv3_mobilenetv2"
    obj = load_file(path)
    if is_checkpoint(obj):
        return info_of(obj).arch
    raise ValueError(f"{path} does not say its architecture; give a zoo entry or a checkpoint")


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], *, origin: str) -> list[str]:
    """Load ``state`` into ``model``, dropping only the classifier when the class count differs.

    Returns the dropped keys. Raises ``ValueError`` for any other missing, unexpected or
    mis-shaped tensor, naming ``origin``.
    """
    own = model.state_dict()
    classifier = _classifier_keys(model)
    dropped, bad_shape, to_load = [], [], {}
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            (dropped if key in classifier else bad_shape).append(key)
        else:
            to_load[key] = value
    unexpected = [k for k in to_load if k not in own]
    missing = [k for k in own if k not in to_load and k not in dropped
               and not k.endswith("num_batches_tracked")]  # fmt: skip
    if bad_shape or unexpected or missing:
        details = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in bad_shape]
        raise ValueError(
            f"weights in {origin} do not fit {type(model).__name__}: "
            f"shape mismatches {details[:6]}, unexpected {unexpected[:6]}, missing {missing[:6]}; "
            "check the model name and its options (width_mult, separable; output_stride does "
            "not matter)"
        )
    model.load_state_dict(to_load, strict=False)
    if dropped:
        log.warning(
            "%s: kept every weight except the classifier, whose class count differs "
            "(%d in the model); freshly initialised: %s",
            origin, getattr(model, "num_classes", -1), ", ".join(dropped),
        )  # fmt: skip
    return dropped


def _classifier_keys(model: nn.Module) -> set[str]:
    """Parameter names of every conv that outputs the class scores (several in v2's ASPP-L)."""
    num_classes = getattr(model, "num_classes", None)
    keys = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.out_channels == num_classes:
            keys.update(f"{name}.{p}" for p, _ in module.named_parameters(recurse=False))
    return keys


# --- ready models with their ModelInfo ----------------------------------------------------


def entry_info(entry: ZooEntry, **options: Any) -> ModelInfo:
    """The ``ModelInfo`` of a segmentation zoo entry (with builder ``options`` applied)."""
    return ModelInfo(
        arch=entry.arch, options={**dict(entry.options), **options},
        class_names=entry.class_names, mean=entry.mean, std=entry.std, palette=entry.palette,
        input_size=entry.input_size, extra={"zoo_entry": entry.name},
    )  # fmt: skip


def load_pretrained(name: str | None = None, **options: Any) -> tuple[nn.Module, ModelInfo]:
    """A zoo model by entry name (``None``: the default VOC model), in eval mode."""
    entry = get_entry(name) if name else default_entry()
    if entry.kind != "segmentation":
        segmentation = ", ".join(e.name for e in list_entries(kind="segmentation"))
        raise ValueError(
            f"{entry.name!r} holds ImageNet backbone weights, not a segmentation model; "
            f"choose one of: {segmentation}"
        )
    model = create_model(entry.arch, pretrained=entry.name, **options)
    return model.eval(), entry_info(entry, **options)


def load_weights(
    path: str | Path,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    dataset: str | None = None,
    options: dict[str, Any] | None = None,
    fallback: dict[str, Any] | None = None,
) -> tuple[nn.Module, ModelInfo]:
    """A model from a weight file, in eval mode, and its ``ModelInfo``.

    A training checkpoint says everything itself (``arch``/``num_classes``/``dataset``
    that contradict it are an error). A bare state_dict or ``.tflite`` file needs ``arch``;
    its class count is read from the classifier unless ``num_classes`` is given; class
    names come from ``dataset`` or are guessed from the count; mean/std are ImageNet's.
    ``fallback`` (keys arch, num_classes, dataset, options, mean, std) fills what a bare
    file does not say and the caller did not ask for, e.g. from a training config.
    """
    path = Path(path)
    fallback = dict(fallback or {})
    options = dict(options or {})
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    if dataset is not None and dataset not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASET_NAMES)}")
    if path.suffix == ".onnx":
        network = OnnxNetwork(path)
        return network, network.info
    if path.suffix == ".tflite":
        graph = tflite.read_deeplab(path)
        model = create_model(arch or "deeplabv3_mobilenetv2", pretrained=str(path), **options)
        names, palette = dataset_classes(dataset, model.num_classes)
        info = ModelInfo(
            arch=arch or "deeplabv3_mobilenetv2",
            options={**tflite.model_options(graph), **options, "num_classes": model.num_classes},
            class_names=names, palette=None if palette is None else tuple(palette),
            mean=(graph.input_mean,) * 3, std=(graph.input_std,) * 3,
            input_size=graph.input_size,
        )  # fmt: skip
        return model.eval(), info
    obj = load_file(path)
    if is_checkpoint(obj):
        _check_agrees(path, info_of(obj), arch=arch, num_classes=num_classes, dataset=dataset)
        keep = {k: v for k, v in options.items() if k in ("output_stride", "align_corners")}
        return model_from_state(obj, origin=str(path), **keep)
    arch = arch or fallback.get("arch")
    num_classes = num_classes or fallback.get("num_classes")
    dataset = dataset or fallback.get("dataset")
    options = options or dict(fallback.get("options") or {})
    if arch is None:
        raise ValueError(
            f"{path} is a bare weight file: say which network it fits with --model NAME "
            "(`deeplab models` lists them)"
        )
    state = state_dict_of(obj, str(path))
    model = _build_and_load(arch, state, num_classes=num_classes, options=options,
                            origin=str(path))  # fmt: skip
    names, palette = dataset_classes(dataset, model.num_classes)
    info = ModelInfo(
        arch=arch, options={**options, "num_classes": model.num_classes}, class_names=names,
        palette=None if palette is None else tuple(palette),
        mean=tuple(fallback.get("mean") or IMAGENET_MEAN),
        std=tuple(fallback.get("std") or IMAGENET_STD),
    )  # fmt: skip
    return model.eval(), info


def _check_agrees(path: Path, info: ModelInfo, *, arch, num_classes, dataset) -> None:
    """A checkpoint carries its own model: options that contradict it are refused."""
    conflicts = []
    if arch is not None and arch != info.arch:
        conflicts.append(f"--model {arch} (it holds {info.arch})")
    if num_classes is not None and num_classes != info.num_classes:
        conflicts.append(f"--num-classes {num_classes} (it has {info.num_classes})")
    if dataset is not None:
        try:
            names, _ = dataset_classes(dataset, info.num_classes)
        except ValueError:  # another class count
            names = ()
        if tuple(names) != tuple(info.class_names):
            conflicts.append(f"--dataset {dataset} (its classes: {', '.join(info.class_names)})")
    if conflicts:
        raise ValueError(
            f"{path} is a training checkpoint and says its own model; drop "
            + "; ".join(conflicts)
        )


def _build_and_load(
    arch: str, state: dict[str, torch.Tensor], *, num_classes: int | None, options: dict,
    origin: str,
) -> nn.Module:  # fmt: skip
    """The registered ``arch`` holding exactly ``state``; the class count is read from the
    classifier when ``num_classes`` is not given."""
    with torch.device("meta"):  # shapes only: which tensors score the classes
        probe = build_model(arch, **options)
    scores = sorted(k for k in _classifier_keys(probe) if k.endswith("weight") and k in state)
    found = int(state[scores[0]].shape[0]) if scores else None
    if num_classes is not None and found is not None and found != num_classes:
        raise ValueError(
            f"{origin} was trained for {found} classes, not {num_classes}; "
            f"pass --num-classes {found}"
        )
    count = num_classes or found
    model = build_model(arch, **options, **({"num_classes": count} if count else {}))
    load_matching(model, state, origin=origin)
    return model


def save_entry(name: str, out: str | Path) -> ZooEntry:
    """Convert a zoo entry and save its model as a plain PyTorch state_dict at ``out``."""
    entry = get_entry(name)
    model = create_model(entry.arch, pretrained=entry.name)
    torch.save(model.state_dict(), out)
    return entry


class OnnxNetwork(nn.Module):
    """A model exported by ``deeplab export`` (ONNX), run by onnxruntime, in the place of the
    PyTorch network: normalised float ``[N, 3, H, W]`` in, class scores ``[N, C, H, W]`` out.

    A ``raw`` export is the network itself. A ``labels`` export (uint8 image in, labels and
    maybe probabilities out) does its own padding and resizing, so it reports
    ``output_stride`` 1 and its input is turned back into the uint8 image; its scores are
    log-probabilities when it has them, else one-hot labels (averaging them over flips and
    scales is a vote). ``labels(images)`` runs a labels export on uint8 images directly.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        super().__init__()
        require("export", f"running {Path(path).name}", ("onnxruntime",))
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Idle threads sleep rather than spin: the image decoding and writing threads of
        # deeplab predict need the cores between two forward passes.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])  # fmt: skip
        except Exception as e:  # onnxruntime's own errors: protobuf, graph, opset
            raise ValueError(f"{path} is not a readable ONNX model ({str(e).splitlines()[0]})"
                             "; export it again with `deeplab export`") from None  # fmt: skip
        meta = self.session.get_modelmeta().custom_metadata_map
        if "deeplab.info" not in meta:
            raise ValueError(f"{path} was not exported by `deeplab export` (no deeplab.info "
                             "metadata); export the model with it")  # fmt: skip
        info = json.loads(meta["deeplab.info"])
        self.contract = meta.get("contract", "labels")
        self.outputs = [o.name for o in self.session.get_outputs()]
        if self.contract == "labels":  # the graph pads and resizes itself
            info["input_size"] = None
        self.info = ModelInfo(**{k: tuple(v) if isinstance(v, list) and k != "options" else v
                                 for k, v in info.items()})  # fmt: skip
        self.num_classes = self.info.num_classes
        self.output_stride = 1 if self.contract == "labels" else self.info.output_stride
        self.align_corners = bool(self.info.options.get("align_corners", True))
        self.register_buffer("mean", torch.tensor(self.info.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.info.std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.contract == "raw":
            (logits,) = self.session.run(["logits"], {"input": x.float().cpu().numpy()})
            return torch.from_numpy(logits)
        image = (x.float().cpu() * self.std + self.mean).round().clamp(0, 255)
        image = image.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
        if "probabilities" in self.outputs:
            (probs,) = self.session.run(["probabilities"], {"image": image})
            return torch.from_numpy(probs).clamp(min=1e-30).log()
        labels = torch.from_numpy(self.labels(image))
        return F.one_hot(labels, self.num_classes).permute(0, 3, 1, 2).float()

    def labels(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``[N, H, W, 3]`` -> int64 labels ``[N, H, W]`` (a ``labels`` export)."""
        return self.session.run(["labels"], {"image": np.ascontiguousarray(images)})[0]
