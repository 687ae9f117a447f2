"""The one model registry: a name maps to a typed, keyword-only builder.

A variant is a few lines: a function decorated with ``@register_model`` that fills a
private builder (``deeplab/models/deeplab.py``). The variants register themselves when
``deeplab.models`` is imported; this module imports nothing of the package. Strings
appear only at the edges (CLI, configs, zoo entries).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its own name. Names are unique; re-registering is an error."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_MODELS)


def get_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered as ``name``, or a ``KeyError`` that lists the choices."""
    try:
        return _MODELS[name]
    except KeyError:
        raise KeyError(
            f"unknown model {name!r}; choose one of: {', '.join(sorted(_MODELS))} "
            "(`deeplab models` lists them)"
        ) from None


def build_model(name: str, **options) -> nn.Module:
    """A freshly initialised registered model; ``deeplab.hub.create_model`` adds weights.

    The model remembers how it was built (``model.build_spec``: name and every option,
    defaults included), so a checkpoint can build it again even after a default changes.
    """
    builder = get_builder(name)
    try:
        bound = inspect.signature(builder).bind(**options)
    except TypeError as e:
        raise TypeError(f"{name}: {e}; its options are "
                        f"{', '.join(inspect.signature(builder).parameters)}") from None
    bound.apply_defaults()
    model = builder(**options)
    model.build_spec = {"arch": name, "options": dict(bound.arguments)}
    return model
