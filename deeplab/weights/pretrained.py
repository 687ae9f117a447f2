"""``create_model(name, pretrained=...)``: build a registered model and fill it with weights.

``pretrained`` is one of:

- a zoo entry name (``deeplab zoo`` lists them), fetched from the local weights
  folder, the cache or its public URL;
- ``True``: the zoo's entry for this architecture;
- a path to a ``.tflite`` file (Google's DeepLab-v3 MobileNetV2 models) or to
  a ``torch.save`` state_dict / checkpoint (``.pt``, ``.pth``).

Segmentation weights fill the whole model; a "backbone" entry (ImageNet
weights) fills ``model.backbone`` only. Asking for a different ``num_classes``
than the weights have keeps everything but the classifier and logs which
tensors were left at their fresh initialisation (fine-tuning 21 -> 11 classes).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn

from deeplab.weights.backbones import load_backbone_state_dict, read_state_dict
from deeplab.weights.download import fetch
from deeplab.weights.zoo import ZooEntry, default_entry_for, get_entry, list_entries

log = logging.getLogger(__name__)


def entry_path(entry: ZooEntry, *, progress: bool = True) -> Path:
    """Local, verified path of an entry's weight file (downloading it if needed)."""
    return fetch(
        entry.url,
        entry.file_name,
        entry.sha256,
        archive_member=entry.archive_member,
        archive_sha256=entry.archive_sha256,
        progress=progress,
    )


def resolve(arch: str, pretrained: str | Path | bool) -> tuple[ZooEntry | None, Path | None]:
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


def create_pretrained(arch: str, pretrained: str | Path | bool, **options) -> nn.Module:
    """Build the registered model ``arch`` with ``options`` and load ``pretrained`` into it."""
    from deeplab.models.registry import get_builder

    entry, path = resolve(arch, pretrained)
    if entry is not None:
        if entry.kind == "segmentation" and entry.arch != arch:
            raise ValueError(
                f"zoo entry {entry.name!r} holds weights for {entry.arch!r}, not {arch!r}: "
                f"use create_model({entry.arch!r}, pretrained={entry.name!r})"
            )
        # The entry fixes the architecture (width, classes); the caller may override
        # num_classes (fine-tuning) and output_stride / align_corners (evaluation).
        options = {**dict(entry.options), **options}
        path = entry_path(entry)
        fmt, kind = entry.format, entry.kind
    else:
        fmt = "tflite" if path.suffix == ".tflite" else "state_dict"
        kind = None  # decided from the file's keys below

    if fmt == "tflite":
        from deeplab.weights.tflite_import import model_options, read_deeplab, state_dict_for

        graph = read_deeplab(path)
        if arch != "deeplabv3_mobilenetv2":
            raise ValueError(
                f"{path} is a DeepLab-v3 MobileNetV2 TFLite model; load it with "
                f"create_model('deeplabv3_mobilenetv2', pretrained={str(path)!r})"
            )
        source_options = model_options(graph)
        options = {**source_options, **options}
        model = get_builder(arch)(**options)
        # Map onto a model with the file's class count, then copy what fits.
        source = get_builder(arch)(**{**options, "num_classes": source_options["num_classes"]})
        state = state_dict_for(source, graph)
        del source
        load_matching(model, state, origin=str(path))
        return model

    state = read_state_dict(path)
    model = get_builder(arch)(**options)
    if kind is None:
        kind = "segmentation" if any(k.startswith("backbone.") for k in state) else "backbone"
    if kind == "backbone":
        report = load_backbone_state_dict(model.backbone, state)
        log.info("%s -> %s.backbone: %s", path.name, arch, str(report).splitlines()[0])
        return model
    load_matching(model, state, origin=str(path))
    return model


def load_matching(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    origin: str,
) -> list[str]:
    """Load ``state`` into ``model``, dropping only the classifier when the class count differs.

    Returns the dropped keys. Raises ``ValueError`` for any other missing,
    unexpected or mis-shaped tensor, naming ``origin``.
    """
    own = model.state_dict()
    classifier = _classifier_keys(model)
    dropped, bad_shape = [], []
    to_load = {}
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            (dropped if key in classifier else bad_shape).append(key)
        else:
            to_load[key] = value
    unexpected = [k for k in to_load if k not in own]
    missing = [
        k
        for k in own
        if k not in to_load and k not in dropped and not k.endswith("num_batches_tracked")
    ]
    if bad_shape or unexpected or missing:
        details = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in bad_shape]
        raise ValueError(
            f"weights in {origin} do not fit {type(model).__name__}: "
            f"shape mismatches {details[:6]}, unexpected {unexpected[:6]}, missing {missing[:6]}; "
            "check the model name and its options (width_mult, output_stride does not matter)"
        )
    model.load_state_dict(to_load, strict=False)
    if dropped:
        log.warning(
            "%s: kept every weight except the classifier, whose class count differs "
            "(%d in the model); freshly initialised: %s",
            origin,
            getattr(model, "num_classes", -1),
            ", ".join(dropped),
        )
    return dropped


def _classifier_keys(model: nn.Module) -> set[str]:
    """Parameter names of every conv that outputs the class scores (several in v2's ASPP-L)."""
    num_classes = getattr(model, "num_classes", None)
    keys = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.out_channels == num_classes:
            keys.update(f"{name}.{p}" for p, _ in module.named_parameters(recurse=False))
    return keys
