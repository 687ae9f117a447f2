"""What this machine can do: the CPU's name and the instructions that decide fast paths.

Fast paths are chosen by capability (and, where it matters, by timing), never by
assumption: bf16 autocast made training 1.8x faster on an Intel Xeon with AMX and 7x
slower on an AMD EPYC without native bf16 (docs/BENCHMARKS.md); int8 speed depends on
VNNI and AMX-INT8.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path

# The CPU features that change which path is fast here (named as /proc/cpuinfo names them).
FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni", "amx_int8")
BF16_FEATURES = ("amx_bf16", "avx512_bf16")


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: features unknown, fp32 paths everywhere
        return ""


def cpu_name() -> str:
    """``AMD EPYC 9654 96-Core Processor``; the platform's word where /proc/cpuinfo is absent."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> frozenset[str]:
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_features() -> dict[str, bool]:
    """Each of ``FEATURES``: present or not."""
    flags = cpu_flags()
    return {name: name in flags for name in FEATURES}


def native_bf16_cpu() -> list[str]:
    """The CPU's bf16 instructions (empty: bf16 would be emulated, and slow)."""
    return sorted(cpu_flags() & set(BF16_FEATURES))


def cpu_count() -> int:
    """Cores this process may use (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
