"""Load ImageNet weights saved in torchvision's key layout into our backbones.

Our backbones use torchvision's names where torchvision has the network
(ResNet ``conv1``/``bn1``/``layer1..4``, MobileNetV2 ``features.0..17``), so
such state_dicts load by name. One other published layout is translated:
MobileNetV2 "flat" blocks (``features.N.conv.0..7``, each conv, BN and ReLU6
numbered in one Sequential), the layout of the widely copied pre-torchvision
port and of ``mobilenet_v2_imagenet.pt`` in the zoo.

Nothing is loaded silently in part: the result is a ``LoadReport`` of loaded,
missing, unexpected and shape-mismatched keys, and by default anything but
the classifier extras (``fc.*``, ``classifier.*``, MobileNetV2's final 1280
conv ``features.18.*``, which DeepLab drops) is an error.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

# Keys ImageNet classifiers carry that a DeepLab backbone does not use.
_EXPECTED_EXTRAS = (
    re.compile(r"^fc\."),  # torchvision ResNet classifier
    re.compile(r"^classifier\."),  # torchvision MobileNetV2 classifier
    re.compile(r"^features\.18\."),  # MobileNetV2's final 1x1 conv to 1280 channels
    re.compile(r"^head\.fc\."),  # timm classifier
    re.compile(r"^(head|fc|last_linear)\.(weight|bias)$"),
)
_WRAPPER_PREFIXES = ("module.", "model.", "backbone.", "encoder.")


@dataclass
class LoadReport:
    """What happened to each key when loading ImageNet weights into a backbone."""

    layout: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the backbone, absent from the file
    unexpected: list[str] = field(default_factory=list)  # in the file, unknown to the backbone
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # expected extras (classifier, last conv)

    @property
    def ok(self) -> bool:
        """True when every backbone tensor was loaded and nothing unknown was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [
            f"layout {self.layout}: loaded {len(self.loaded)} tensors, "
            f"ignored {len(self.ignored)} (classifier / final conv), "
            f"missing {len(self.missing)}, unexpected {len(self.unexpected)}, "
            f"shape mismatches {len(self.mismatched)}"
        ]
        if self.missing:
            lines.append(f"  missing: {_short(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected: {_short(self.unexpected)}")
        for key, got, want in self.mismatched[:8]:
            lines.append(f"  shape {key}: file {got}, backbone {want}")
        return "\n".join(lines)


def _short(keys: list[str], n: int = 8) -> str:
    more = f" ... (+{len(keys) - n})" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_file(path: str | Path) -> Any:
    """``torch.load`` of a weight file (tensors only, never code); one clear error line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and unpickler errors all mean "not for us"
        raise ValueError(
            f"{path} is not a readable PyTorch weight file ({type(e).__name__}); it is corrupt, "
            "truncated or another format: download or export it again"
        ) from None


def state_dict_of(obj: Any, origin: str) -> dict[str, torch.Tensor]:
    """The state_dict inside a loaded file; unwraps {"model": ...} / {"state_dict": ...}."""
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{origin} holds a {type(obj).__name__}, not a state_dict of tensors")
    return dict(obj)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from a ``torch.save`` file (``load_file`` + ``state_dict_of``)."""
    return state_dict_of(load_file(path), str(path))


def detect_layout(state_dict: dict[str, torch.Tensor]) -> str:
    """Name the published layout of an ImageNet state_dict."""
    keys = state_dict.keys()
    if "features.1.conv.0.0.weight" in keys:
        return "torchvision-mobilenetv2"
    if "features.1.conv.0.weight" in keys and state_dict["features.1.conv.0.weight"].ndim == 4:
        return "flat-mobilenetv2"
    if "layer1.0.conv1.weight" in keys:
        return "torchvision-resnet"
    return "unknown"


def _strip_wrappers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # DDP ("module.") and wrapper modules prefix every key; drop a prefix that all keys share.
    for prefix in _WRAPPER_PREFIXES:
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def _flat_mobilenetv2_key(key: str) -> str:
    """features.N.conv.K.* of the flat layout -> torchvision's nested names."""
    m = re.fullmatch(r"features\.(\d+)\.conv\.(\d+)\.(.+)", key)
    if not m:
        return key
    block, k, rest = int(m.group(1)), int(m.group(2)), m.group(3)
    if block == 1:  # expansion 1: dw conv, bn, relu6, project conv, bn
        nested = {0: "0.0", 1: "0.1", 3: "1", 4: "2"}
    else:  # expand conv, bn, relu6, dw conv, bn, relu6, project conv, bn
        nested = {0: "0.0", 1: "0.1", 3: "1.0", 4: "1.1", 6: "2", 7: "3"}
    return f"features.{block}.conv.{nested[k]}.{rest}" if k in nested else key


_TRANSLATE = {
    "flat-mobilenetv2": _flat_mobilenetv2_key,
}


def load_backbone_state_dict(
    backbone: nn.Module,
    state_dict: dict[str, torch.Tensor],
    *,
    strict: bool = True,
) -> LoadReport:
    """Copy ImageNet weights into ``backbone``; return a ``LoadReport``.

    With ``strict`` (default) any missing, unexpected or mis-shaped tensor
    raises ``ValueError`` carrying the report and nothing is changed; without
    it, matching tensors are loaded and the rest is only reported.
    """
    state_dict = _strip_wrappers(dict(state_dict))
    layout = detect_layout(state_dict)
    translate = _TRANSLATE.get(layout, lambda k: k)
    report = LoadReport(layout=layout)
    own = backbone.state_dict()
    to_load = {}
    for key, value in state_dict.items():
        if any(p.search(key) for p in _EXPECTED_EXTRAS):
            report.ignored.append(key)
            continue
        name = translate(key)
        if name not in own:
            report.unexpected.append(key)
        elif tuple(own[name].shape) != tuple(value.shape):
            report.mismatched.append((key, tuple(value.shape), tuple(own[name].shape)))
        else:
            to_load[name] = value
    report.loaded = sorted(to_load)
    report.missing = [k for k in own if k not in to_load and not k.endswith("num_batches_tracked")]
    if strict and not report.ok:
        raise ValueError(f"ImageNet weights do not fit the backbone:\n{report}")
    backbone.load_state_dict(to_load, strict=False)
    log.info("ImageNet backbone weights: %s", report.__str__().splitlines()[0])
    return report


def load_backbone_weights(
    backbone: nn.Module, path: str | Path, *, strict: bool = True
) -> LoadReport:
    """``load_backbone_state_dict`` from a ``torch.save`` file."""
    return load_backbone_state_dict(backbone, read_state_dict(path), strict=strict)
