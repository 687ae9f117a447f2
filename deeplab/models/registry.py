"""The one model registry: a name maps to a typed, keyword-only builder.

A variant is a few lines: a function decorated with ``@register_model`` that
fills a private builder (see ``deeplab/models/deeplab.py``). Strings appear
only at the edges (CLI, configs, zoo entries); inside the library models are
built by calling functions.
"""

from __future__ import annotations

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
    _import_variants()
    return sorted(_MODELS)


def get_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered as ``name``, or a ``KeyError`` that lists the choices."""
    _import_variants()
    try:
        return _MODELS[name]
    except KeyError:
        raise KeyError(
            f"unknown model {name!r}; choose one of: {', '.join(sorted(_MODELS))}"
        ) from None


def create_model(name: str, *, pretrained: str | bool | None = None, **options) -> nn.Module:
    """Build the registered model ``name`` with keyword ``options``.

    ``pretrained`` names a zoo entry (``deeplab zoo`` lists them), is a path to a
    weight file, or ``True`` for the model's default entry. Options the entry
    fixes (classes, width) are filled from it; a different ``num_classes`` keeps
    every weight except the classifier and says so.
    """
    if pretrained:
        from deeplab.weights import create_pretrained

        return create_pretrained(name, pretrained, **options)
    return get_builder(name)(**options)


def _import_variants() -> None:
    # The variants register themselves on import; importing here keeps
    # ``registry`` free of a circular import with ``deeplab.models.deeplab``.
    import deeplab.models.deeplab  # noqa: F401
