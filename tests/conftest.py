"""Shared fixtures: paths to the real data and weights in ../shared, small threads."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Idle OpenMP threads that spin-wait steal the core a busy neighbour needs: on a
# loaded 2-core machine small forward passes were ~100x slower without this.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402  (after the OpenMP setting, which is read at import)

REPO = Path(__file__).resolve().parents[1]
# Files the library caches (ONNX exports of the runtime choice) go to a folder of the test
# session, not the user's ~/.cache/deeplab.
os.environ.setdefault("DEEPLAB_CACHE", tempfile.mkdtemp(prefix="deeplab-test-cache-"))
SHARED = Path(os.environ.get("DEEPLAB_SHARED", REPO.parent / "shared"))
# Pretrained weights come from the shared folder (no downloads in tests); a test that needs
# another folder sets its own.
if (SHARED / "weights").is_dir():
    os.environ.setdefault("DEEPLAB_WEIGHTS_DIR", str(SHARED / "weights"))

# Two cores on CI: keep intra-op threads small so parallel tests don't thrash.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found (set DEEPLAB_SHARED to the shared data folder)")
    return SHARED


@pytest.fixture(scope="session")
def weights_dir(shared: Path) -> Path:
    return shared / "weights"


@pytest.fixture(scope="session")
def camvid_dir(shared: Path) -> Path:
    return shared / "data" / "camvid"


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: on a shared, busy 2-core machine two OpenMP
    threads spin against each other and a small forward pass takes seconds, not ms."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
