"""What runs the network a ``Segmenter`` holds, and which one ``--runtime auto`` picks.

- PyTorch (``TorchRunner``): fp32, or bf16/fp16 autocast; the memory layout (NCHW or
  channels-last) chosen by timing both on the first input, since which wins depends on
  the CPU and the network (channels-last ran MobileNetV2 1.35x faster on an Intel Xeon).
- onnxruntime (``onnx_network``): the network exported once, as ``deeplab export --raw``
  does, into the cache (keyed by its weights), then run as ``hub.OnnxNetwork``; 2-3x
  faster than PyTorch on CPUs here (docs/BENCHMARKS.md).

``auto_runtime`` says which ``--runtime auto`` uses on a device and precision, and why.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from deeplab import hub
from deeplab.checkpoint import ModelInfo
from deeplab.export import export_onnx
from deeplab.extras import available, install_command
from deeplab.weights import cache_dir

RUNTIMES = ("auto", "torch", "onnxruntime")
PRECISIONS = ("fp32", "bf16", "fp16")
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")


class TorchRunner:
    """Runs ``fn(x)`` for a PyTorch network in ``precision`` and ``memory_format``.

    ``memory_format="auto"`` times the network in NCHW and in channels-last on the first
    input and keeps the faster, once, under a lock: a server's first requests would
    otherwise switch the layout while another request runs the network.
    """

    def __init__(self, model: nn.Module, device: torch.device, *, precision: str = "fp32",
                 memory_format: str = "contiguous") -> None:  # fmt: skip
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if precision == "fp16" and device.type != "cuda":
            raise ValueError("precision fp16 needs a CUDA device; on a CPU use bf16 or fp32")
        if memory_format not in MEMORY_FORMATS:
            raise ValueError(f"memory_format {memory_format!r}: auto, contiguous or channels_last")
        self.model, self.device = model, device
        self.precision, self.memory_format = precision, memory_format
        self._choosing = threading.Lock()

    def __call__(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor):
        if self.memory_format == "auto":
            with self._choosing:
                if self.memory_format == "auto":  # the first caller chooses, the rest wait
                    self.memory_format = self._fastest_layout(fn, x) if _has_weights(
                        self.model) else "contiguous"  # fmt: skip
        layout = torch.channels_last if self.memory_format == "channels_last" else \
            torch.contiguous_format  # fmt: skip
        with self.autocast():
            return fn(x.contiguous(memory_format=layout))

    def _fastest_layout(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> str:
        times = {}
        for name, layout in (("contiguous", torch.contiguous_format),
                             ("channels_last", torch.channels_last)):  # fmt: skip
            self.model.to(memory_format=layout)
            xs = x.contiguous(memory_format=layout)
            with self.autocast():
                fn(xs)  # warm-up: kernel choice
                self._sync()
                start = time.perf_counter()
                fn(xs)
                self._sync()
            times[name] = time.perf_counter() - start
        best = min(times, key=times.get)
        self.model.to(memory_format=torch.channels_last if best == "channels_last" else
                      torch.contiguous_format)  # fmt: skip
        return best

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)


def _has_weights(model: nn.Module) -> bool:
    return isinstance(model, nn.Module) and any(True for _ in model.parameters())


def auto_runtime(device: str | torch.device | None, precision: str) -> tuple[str, str]:
    """(what ``--runtime auto`` runs the network with, and why)."""
    device = torch.device(device or "cpu")
    if device.type != "cpu":
        return "torch", f"the network runs on {device}"
    if precision != "fp32":
        return "torch", f"{precision} autocast runs in PyTorch"
    if not available("export", ("onnxruntime",)):
        return "torch", (f"onnxruntime is not installed ({install_command('export')}: 2-3x "
                         "faster on a CPU)")  # fmt: skip
    return "onnxruntime", "a CPU at fp32 with onnxruntime installed (exported once, cached)"


def cached_export(network: nn.Module, info: ModelInfo, kind: str, **options) -> Path:
    """``export_onnx(network, info, **options)`` into the cache once (``onnx/<kind>-<digest>``,
    keyed by the weights and ``info``); written beside, then renamed, so an interrupted
    export leaves nothing half-written."""
    digest = hashlib.sha256(repr((info, type(network).__name__, sorted(options.items())))
                            .encode())  # fmt: skip
    for key, value in network.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    path = cache_dir() / "onnx" / f"{kind}-{digest.hexdigest()[:24]}.onnx"
    if not path.is_file():
        partial = path.with_name(f".{path.stem}.{os.getpid()}.onnx")
        export_onnx(network, info, partial, **options)
        os.replace(partial, path)
    return path


def onnx_network(network: nn.Module, info: ModelInfo, *, threads: int) -> hub.OnnxNetwork:
    """``network`` exported (raw: normalised input, logits out) into the cache once and
    loaded for onnxruntime."""
    return hub.OnnxNetwork(cached_export(network, info, "raw", raw=True), threads=threads)
