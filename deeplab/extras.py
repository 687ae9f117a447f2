"""The optional parts of deeplab, and the one line that says how to install each.

The core (predict, eval, train with the default model) needs only torch, numpy, Pillow,
PyYAML, tqdm and the pure-Python TFLite reader. Everything heavier is an extra of the
``deeplab-pytorch`` distribution; a command that needs a missing one stops before it
loads a model, with one line naming the exact ``pip install`` (``MissingExtra``; the CLI
prints it and exits with status 2).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

DISTRIBUTION = "deeplab-pytorch"  # the name on PyPI; the package imports as `deeplab`


@dataclass(frozen=True)
class Extra:
    """An extra of the distribution: the modules it provides (``a|b``: either import name)
    and the packages as a person names them."""

    modules: tuple[str, ...]
    packages: str


EXTRAS: dict[str, Extra] = {
    "export": Extra(("onnx", "onnxruntime"), "onnx and onnxruntime"),
    "tflite": Extra(("litert_torch", "ai_edge_litert"), "Google's litert-torch and ai-edge-litert"),
    "video": Extra(("av",), "PyAV (FFmpeg for Python)"),
    "serve": Extra(("fastapi", "uvicorn", "python_multipart", "prometheus_client", "websockets"),
                   "FastAPI, uvicorn, python-multipart, prometheus-client, websockets"),
    "crf": Extra(("numba",), "numba"),
    "plots": Extra(("matplotlib",), "matplotlib"),
    "labelme": Extra(("skimage",), "scikit-image"),
    "tensorboard": Extra(("tensorboard",), "tensorboard"),
}


class MissingExtra(ImportError):
    """An optional part is not installed; the message is one line with the install command."""


def install_command(extra: str) -> str:
    """``pip install 'deeplab-pytorch[video]'``."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def missing(extra: str, modules: tuple[str, ...] | None = None) -> list[str]:
    """The import names of ``extra`` (or just ``modules`` of it) that cannot be imported.

    Looked up, not imported (``importlib.util.find_spec``), so the check costs nothing; a
    module set to ``None`` in ``sys.modules`` counts as missing, which is how tests hide one.
    """
    names = modules if modules is not None else EXTRAS[extra].modules
    return [name for name in names if not any(_findable(alt) for alt in name.split("|"))]


def available(extra: str, modules: tuple[str, ...] | None = None) -> bool:
    return not missing(extra, modules)


def require(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise ``MissingExtra`` unless ``extra`` (or ``modules`` of it) is installed.

    ``what`` names the feature for the message: ``require("video", "reading videos")`` ->
    "reading videos needs PyAV (FFmpeg for Python): pip install 'deeplab-pytorch[video]'".
    """
    if missing(extra, modules):
        raise MissingExtra(f"{what} needs {EXTRAS[extra].packages}: {install_command(extra)}")


def _findable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module hidden as None
        return False
