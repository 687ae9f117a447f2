"""Training in other processes: SIGTERM saves a checkpoint; torchrun DDP on gloo.

Each test starts ``python tests/test_train.py OUT_DIR key=value ...`` (TinyNet on Synthetic
data, see test_train.py), so they take a few seconds each on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _helpers.toys import Synthetic, TinyNet, tiny_config

from deeplab.checkpoint import read as load_checkpoint
from deeplab.train import train

TESTS = Path(__file__).resolve().parent
SCRIPT = TESTS / "_helpers" / "train_script.py"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_that_resumes(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(out), "train.iters=100000"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while len(_metrics(out)) < 3:  # wait until it is really training
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "training did not start within 60 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    assert "finished: interrupted" in output
    state = load_checkpoint(out / "last.pt")
    step = state["step"]
    assert 3 <= step < 100000
    assert state["data"]["batch"] > 0 or state["data"]["epoch"] > 0

    cfg = tiny_config(out, "train.iters=100000", f"train.stop_at={step + 2}")
    progress = train(cfg, model=TinyNet(dropout=0.0), train_set=Synthetic(16),
                     resume=out / "last.pt")  # fmt: skip
    assert (progress.status, progress.step) == ("stopped", step + 2)
    assert load_checkpoint(out / "last.pt")["step"] == step + 2


def _run_ddp(out: Path, *overrides: str, nproc: int) -> str:
    if nproc == 1:
        cmd = [sys.executable, str(SCRIPT), str(out), *overrides]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", str(SCRIPT), str(out), *overrides]  # fmt: skip
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
def test_ddp_on_two_processes_matches_one_process(tmp_path):
    # Frozen BN and no dropout: the two runs differ only in how the batch is split.
    common = (
        "train.iters=4",
        "train.batch_size=4",
        "train.val_every=2",
        "model.bn=freeze",
        "--val",
    )
    _run_ddp(tmp_path / "one", *common, nproc=1)
    _run_ddp(tmp_path / "two", *common, nproc=2)
    one, two = (
        load_checkpoint(tmp_path / "one" / "last.pt"),
        load_checkpoint(tmp_path / "two" / "last.pt"),
    )
    assert two["world_size"] == 2 and len(two["rng"]) == 2
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    torch.manual_seed(0)
    start = TinyNet(dropout=0.0).state_dict()["classifier.weight"]
    assert not torch.allclose(one["model"]["classifier.weight"], start, atol=1e-4)
    # Validation: each process scores half of the images; the summed confusion matrix
    # gives the same mIoU as one process scoring all of them.
    val_one = [r["val_miou"] for r in _metrics(tmp_path / "one") if "val_miou" in r]
    val_two = [r["val_miou"] for r in _metrics(tmp_path / "two") if "val_miou" in r]
    assert len(val_one) == 2 and val_one == pytest.approx(val_two, abs=1e-6)
    # Losses logged by rank 0 are its own shard's; the run itself matched above.
    assert len(_metrics(tmp_path / "two")) == len(_metrics(tmp_path / "one"))
