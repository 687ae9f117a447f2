"""``deeplab env``: what a bug report needs to say about this installation and machine.

Versions of deeplab, Python, torch and every extra; the CPU and the instructions that pick
fast paths (bf16 autocast, int8); GPUs; what ``deeplab predict`` will run the network with
and why; where weight files are looked up. Like ``python -m torch.utils.collect_env``, it
imports none of the optional packages (their versions come from the installed metadata),
so it is quick and works whatever is broken.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path

import torch

import deeplab
from deeplab import system
from deeplab.extras import DISTRIBUTION, EXTRAS, install_command, missing
from deeplab.runtimes import auto_runtime
from deeplab.weights import cache_dir, weights_dirs

# The distributions behind each extra's import names, for their versions.
_DISTRIBUTIONS = {
    "onnx": "onnx", "onnxruntime": "onnxruntime", "litert_torch": "litert-torch",
    "ai_edge_litert": "ai-edge-litert", "av": "av", "fastapi": "fastapi", "uvicorn": "uvicorn",
    "python_multipart": "python-multipart", "prometheus_client": "prometheus-client",
    "websockets": "websockets",
    "numba": "numba",
    "matplotlib": "matplotlib", "skimage": "scikit-image", "tensorboard": "tensorboard",
}  # fmt: skip


def version_of(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def report() -> str:
    """The whole report, one fact per line."""
    lines = [
        f"deeplab {deeplab.__version__} ({DISTRIBUTION}; {Path(deeplab.__file__).parent})",
        f"Python {platform.python_version()} ({platform.python_implementation()}, "
        f"{platform.system()} {platform.machine()}; {sys.executable})",
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"numpy {version_of('numpy')}, Pillow {version_of('pillow')}",
        "",
        "extras:",
    ]
    for extra, spec in EXTRAS.items():
        versions = ", ".join(f"{_DISTRIBUTIONS[m]} {version_of(_DISTRIBUTIONS[m]) or '-'}"
                             for m in spec.modules)  # fmt: skip
        state = f"not installed: {install_command(extra)}" if missing(extra) else versions
        lines.append(f"  {extra:<12} {state}")
    features = system.cpu_features()
    bf16 = system.native_bf16_cpu()
    lines += [
        "",
        f"CPU: {system.cpu_name()}, {system.cpu_count()} cores for this process",
        "  " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in features.items()),
        "  bf16: " + (f"native ({', '.join(bf16)}): train.amp=auto trains in bf16" if bf16 else
                      "emulated: train.amp=auto stays in fp32"),  # fmt: skip
        f"GPU: {_gpus()}",
        "",
    ]
    runtime, why = auto_runtime("cpu", "fp32")
    lines.append(f"deeplab predict runs the network with {runtime}: {why}")
    folders = [str(p) for p in weights_dirs()]
    lines.append("weights looked up in: "
                 + ("DEEPLAB_WEIGHTS_DIR " + ", ".join(folders) + "; then " if folders else "")
                 + f"the cache {cache_dir()} (DEEPLAB_CACHE); then downloaded")  # fmt: skip
    return "\n".join(lines)


def _gpus() -> str:
    if not torch.cuda.is_available():
        built = torch.version.cuda
        return "none" + (f" (torch built with CUDA {built})" if built else
                         " (a CPU build of torch)")  # fmt: skip
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"{len(names)} x CUDA {torch.version.cuda}: " + ", ".join(names)
