"""The one home of training checkpoints: ``last.pt`` and ``best.pt``.

Both files describe themselves, so a model comes back from either without the config
file or the dataset it was trained with:

- ``model``: the state_dict; ``step``: the optimizer step it was saved at;
- ``info``: a ``ModelInfo`` as a dict (architecture and builder options, class names,
  palette, input mean/std), what predict, eval, export and serve need;
- ``config``: the resolved training config (``deeplab.config.to_dict``).

``last.pt`` adds what an exact resume needs: optimizer, scheduler and grad-scaler states,
every process's RNG states, the data position, the best mIoU so far. ``best.pt`` adds the
validation ``metrics`` of its step and nothing else, so it stays the size of the model;
resuming from it restarts from its weights and step with a fresh optimizer (see
``resume_state``). Files written before ``info`` existed are described from their config.

Writes are atomic (temporary file + ``os.replace``): an interrupted run never leaves a
half-written checkpoint under the real name.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from deeplab.config import from_dict, normalisation
from deeplab.data.datasets import dataset_classes
from deeplab.models import build_model


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or not a deeplab checkpoint; the message
    names the file and what to do."""


@dataclass(frozen=True)
class ModelInfo:
    """How to rebuild, feed and read a model: what every checkpoint (and zoo entry) says.

    ``options`` are the builder's keyword arguments (``num_classes`` and ``output_stride``
    included); ``mean``/``std`` are in 0-255 pixel units; ``input_size`` is the one input
    size of models made for a fixed canvas (Google's 513 / 257 TFLite models), else None.
    ``crf``: the dense CRF's parameters chosen for this model on its training images
    (``deeplab tune-crf``): ``{"options": {...}, "source": ..., "miou_without": ...,
    "miou_with": ...}``; None when never tuned.
    """

    arch: str
    options: dict[str, Any]
    class_names: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    palette: tuple[tuple[int, int, int], ...] | None = None
    input_size: tuple[int, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the zoo entry's name
    crf: dict[str, Any] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def output_stride(self) -> int | None:
        return self.options.get("output_stride")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe(
    cfg_dict: dict[str, Any],
    *,
    num_classes: int,
    model: nn.Module | None = None,
    class_names: tuple[str, ...] | None = None,
    palette: list[tuple[int, int, int]] | None = None,
) -> ModelInfo:
    """The ``ModelInfo`` of a model trained with a config (as ``to_dict`` gives it).

    Architecture and options come from ``model.build_spec`` when the model has one (it
    holds what a zoo entry added, such as a width), else from the config; class names from
    the training set when given, else from the config's dataset.
    """
    cfg = from_dict(cfg_dict)
    m = cfg.model
    spec = getattr(model, "build_spec", None)
    if spec is not None:
        arch, options = spec["arch"], dict(spec["options"])
    else:
        arch, options = m.name, dict(m.options, output_stride=m.output_stride)
        if m.align_corners is not None:
            options["align_corners"] = m.align_corners
    options["num_classes"] = num_classes
    if class_names is None or len(class_names) != num_classes:
        try:
            class_names, palette = dataset_classes(cfg.data.dataset, num_classes,
                                                   root=cfg.data.root)  # fmt: skip
        except ValueError:  # the config's dataset has another class count
            class_names, palette = dataset_classes(None, num_classes)
    mean, std = normalisation(cfg)
    return ModelInfo(
        arch=arch, options=options, class_names=tuple(class_names),
        mean=tuple(mean), std=tuple(std),
        palette=None if palette is None else tuple(tuple(int(v) for v in c) for c in palette),
    )  # fmt: skip


# --- files --------------------------------------------------------------------------------


def save(path: str | Path, state: dict[str, Any]) -> Path:
    """``torch.save`` to a temp file beside ``path``, then ``os.replace``: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def read(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents; errors name the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} not found; give the path of an existing last.pt or best.pt"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and unpickler errors all mean "unreadable"
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(e).__name__}); it may be truncated. "
            "Resume from another file (e.g. best.pt) or delete it to start over"
        ) from None
    if not (isinstance(state, dict) and isinstance(state.get("model"), dict)):
        raise CheckpointError(
            f"{path} is not a deeplab training checkpoint (no 'model' entry); "
            "for a bare state_dict pass --weights FILE with --model NAME"
        )
    return state


def is_checkpoint(obj: Any) -> bool:
    """Whether a loaded object is a training checkpoint (not a bare state_dict)."""
    return isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "config" in obj


def info_of(state: dict[str, Any]) -> ModelInfo:
    """The checkpoint's ``ModelInfo``; older files are described from their config (whose
    class count training always resolved before saving)."""
    if "info" in state:
        return ModelInfo(**state["info"])
    return describe(state["config"], num_classes=from_dict(state["config"]).model.num_classes)


def model_from_checkpoint(path: str | Path, **options: Any) -> tuple[nn.Module, ModelInfo]:
    """The model a checkpoint file holds, in eval mode, and its ``ModelInfo``.

    ``options`` override builder options that do not change the weights' shapes
    (``output_stride``, ``align_corners``).
    """
    return model_from_state(read(path), origin=str(path), **options)


# Builder defaults that changed. Files written before deeplab 0.2.0 recorded only the
# options given explicitly, so an option a file lacks had the default of its day.
CHANGED_DEFAULTS: dict[str, dict[str, Any]] = {
    "deeplabv3plus_resnet101": {"separable": False},  # separable since 0.2.0, as the TF release
}


def model_from_state(
    state: dict[str, Any], *, origin: str, **options: Any
) -> tuple[nn.Module, ModelInfo]:
    """``model_from_checkpoint`` for a checkpoint already loaded (``origin`` names it)."""
    info = info_of(state)
    built = {**CHANGED_DEFAULTS.get(info.arch, {}), **info.options, **options}
    model = build_model(info.arch, **built)
    own, weights = model.state_dict(), state["model"]
    wrong = [k for k in weights if k in own and own[k].shape != weights[k].shape]
    missing = [k for k in own if k not in weights and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in weights if k not in own]
    if wrong or missing or unexpected:
        raise CheckpointError(
            f"{origin}: its weights do not fit {info.arch} with {info.options} (shapes differ: "
            f"{wrong[:3]}, missing {missing[:3]}, unexpected {unexpected[:3]}); the file does "
            "not describe its model correctly: pass it as a bare state_dict with --model"
        )
    model.load_state_dict(weights, strict=False)
    return model.eval(), info


# --- what training writes and resumes from ------------------------------------------------


def last_state(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    rng: list[dict[str, Any]],
    data: dict[str, int],
    step: int,
    best_miou: float,
    config: dict[str, Any],
    info: ModelInfo | None,
    world_size: int,
    elapsed_s: float = 0.0,
) -> dict[str, Any]:
    """The contents of ``last.pt``: everything an exact resume needs (``elapsed_s``: the
    training time so far, which a time-driven schedule continues from)."""
    state = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng,
        "data": data, "step": step, "best_miou": best_miou, "config": config,
        "world_size": world_size, "elapsed_s": elapsed_s,
    }  # fmt: skip
    if info is not None:
        state["info"] = info.to_dict()
    return state


def best_state(
    *, model: nn.Module, step: int, config: dict, info: ModelInfo | None, metrics: dict
) -> dict[str, Any]:
    """The contents of ``best.pt``: the model, its description and its validation metrics."""
    state = {"model": model.state_dict(), "config": config, "step": step, "metrics": metrics}
    if info is not None:
        state["info"] = info.to_dict()
    return state


def resume_state(path: str | Path) -> tuple[dict[str, Any], str | None]:
    """(checkpoint, note): ``last.pt`` resumes exactly (no note); ``best.pt`` holds weights
    only, and the note says what resuming from it means."""
    state = read(path)
    if "optimizer" in state:
        return state, None
    return state, (
        f"{path} holds weights only (no optimizer, data position or RNG states): training "
        f"continues from its weights at step {state.get('step', 0)} with fresh momentum and "
        "a new data order; for an exact resume use last.pt"
    )


def restore_training(
    state: dict[str, Any],
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
) -> dict[str, Any]:
    """Put a ``last.pt``'s optimizer, scheduler and scaler states back; return the rest of
    the run's position (``step``, ``best_miou``, ``data``, ``rng``). A weights-only file
    (``best.pt``) gives its step, with the schedule moved there, and nothing else."""
    step = int(state.get("step", 0))
    if "optimizer" not in state:
        scheduler.last_epoch = step  # the poly schedule continues from the file's step
        factors = [f(step) for f in scheduler.lr_lambdas]
        for group, base, f in zip(optimizer.param_groups, scheduler.base_lrs, factors,
                                  strict=True):  # fmt: skip
            group["lr"] = base * f
        return {"step": step, "best_miou": float(state.get("metrics", {}).get("miou", -1.0)),
                "data": None, "rng": None}  # fmt: skip
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    return {"step": step, "best_miou": float(state["best_miou"]), "data": state["data"],
            "rng": state["rng"]}  # fmt: skip
