"""Where training runs and what it leaves behind: processes (``torchrun``/DDP), stop
signals, random states, mixed precision and the metrics log.

Under ``torchrun`` (env:// rendezvous; nccl on CUDA, gloo on CPU) every process trains on
its own shard, gradients are averaged, and only rank 0 logs and writes checkpoints.
Ctrl-C or SIGTERM ends the current step, a checkpoint is written, the run returns; a
second Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from deeplab.config import ConfigError
from deeplab.evaluate import jsonable
from deeplab.extras import require
from deeplab.system import native_bf16_cpu


@dataclass(frozen=True)
class Process:
    """Where this process runs: rank, number of processes and device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_process(device: str = "auto") -> Process:
    """Join the ``torchrun`` process group if launched by it (env://), else a single process."""
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but CUDA is not available; use train.device=cpu")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Process(0, 1, torch.device("cuda" if want_cuda else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo", init_method="env://")
    dev = torch.device("cuda", local_rank) if want_cuda else torch.device("cpu")
    return Process(dist.get_rank(), dist.get_world_size(), dev)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def max_over_processes(value: float, proc: Process) -> float:
    """The largest ``value`` of all processes (every process gets the same number)."""
    if not proc.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64,
                     device=proc.device if proc.device.type == "cuda" else "cpu")  # fmt: skip
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def any_process(flag: bool, proc: Process) -> bool:
    """True if ``flag`` is set on any process (so all stop at the same step)."""
    if not proc.distributed:
        return flag
    t = torch.tensor([int(flag)], device=proc.device if proc.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def resolve_amp(device: torch.device) -> tuple[str, str]:
    """``train.amp=auto``: (bf16 or none, why). bf16 where the hardware computes it natively
    (CUDA with bf16; a CPU with AMX-BF16 or AVX512-BF16: 1.8x faster training steps on an
    Intel Xeon with AMX, docs/BENCHMARKS.md); elsewhere fp32, since emulated bf16 ran 7x
    slower on an AMD EPYC without it."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", f"{torch.cuda.get_device_name(device)} computes bf16"
        return "none", f"{torch.cuda.get_device_name(device)} has no bf16"
    native = native_bf16_cpu()
    if native:
        return "bf16", f"the CPU has {', '.join(native)}"
    return "none", "the CPU has no native bf16 (amx_bf16/avx512_bf16), so fp32"


def autocast_for(amp: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A context factory: bf16/fp16 autocast, or nothing for ``amp="none"``."""
    if amp == "none":
        return contextlib.nullcontext
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp=fp16 needs CUDA; on CPU use train.amp=bf16 or none")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks after each step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now, without a checkpoint
        self.signum = signum


# --- random states: exact resume ----------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's python, numpy and torch RNG states, as plain types (weights_only-safe)."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "key": np_state["state"]["key"].tolist(),
            "pos": np_state["state"]["pos"],
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state({
        "bit_generator": "MT19937",
        "state": {"key": np.asarray(n["key"], dtype=np.uint32), "pos": n["pos"]},
        "has_gauss": n["has_gauss"], "gauss": n["gauss"],
    })  # fmt: skip
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def gather_rng_states(proc: Process) -> list[dict[str, Any]]:
    """Every process's RNG state, indexed by rank (collective under DDP)."""
    if not proc.distributed:
        return [rng_state()]
    states: list[Any] = [None] * proc.world_size
    dist.all_gather_object(states, rng_state())
    return states


# --- the metrics log ----------------------------------------------------------------------


class MetricsLog:
    """Rank 0 appends one JSON object per line to ``out_dir/metrics.jsonl`` (and TensorBoard).

    ``truncate(step)`` drops the lines of steps after ``step``: a resumed run replays
    those steps and logs them again, once.
    """

    def __init__(self, out_dir: Path, *, enabled: bool, tensorboard: bool = False) -> None:
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        if enabled and tensorboard:
            require("tensorboard", "train.tensorboard=true")
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tb"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(jsonable(record)) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(key, value, record["step"])

    def truncate_after(self, step: int) -> None:
        """Drop the records of steps after ``step`` (atomically: temp file + rename)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if int(json.loads(line).get("step", 0)) <= step:
                    kept.append(line)
            except (ValueError, AttributeError):
                pass  # a line cut short by a killed process
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, self.path)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
