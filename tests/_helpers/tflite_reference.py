"""The reference: Google's TFLite interpreter (``ai-edge-litert``) running a .tflite file.

Test-only. ``make test`` installs it with the ``test`` extra; it lives beside
numpy 2 and torch in the same environment. When it is missing the parity
tests skip on a developer machine but FAIL under CI (``CI=true``), so the
comparison against Google's own runtime can never silently disappear.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np
import pytest


def require(module: str, package: str):
    """Import ``module`` or skip the test; under CI (``CI=true``) a missing module fails it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        msg = (
            f"{module} is missing ({e}); install it with `pip install -e '.[test]'` "
            f"(package {package}) or run `make test`"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg, allow_module_level=True)


def interpreter_class():
    """``ai_edge_litert``'s Interpreter, or skip (fail under CI) with the install command."""
    return require("ai_edge_litert.interpreter", "ai-edge-litert").Interpreter


def run_reference(path: Path, image: np.ndarray) -> dict[str, np.ndarray]:
    """Run ``path`` on one uint8 HxWx3 image already at the model's input size.

    Float graphs get ``image / 127.5 - 1`` (what they were trained on), 8-bit
    graphs the uint8 pixels (their input quantization is 1/128, zero point 128).
    Returns ``{"output": final output without batch axis}``; for float models
    that is [H, W, classes] logits, for the 8-bit models the [H, W] argmax.
    """
    interpreter = interpreter_class()(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    if tuple(inp["shape"][1:3]) != image.shape[:2]:
        raise ValueError(f"{path.name} wants {tuple(inp['shape'][1:3])}, got {image.shape[:2]}")
    if inp["dtype"] == np.uint8:
        x = image[None]
    else:
        x = (image[None].astype(np.float32) / 127.5 - 1.0).astype(np.float32)
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    return {"output": interpreter.get_tensor(out["index"])[0].copy()}
