"""`deeplab predict` and `deeplab eval` under torchrun: 2 gloo processes on the CPU share the
files out and give what one process gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deeplab.checkpoint import ModelInfo, best_state, save
from deeplab.config import load_config, to_dict
from deeplab.hub import create_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 3-class checkpoint and a folder dataset of 5 images (an odd count: uneven shards)."""
    root = tmp_path_factory.mktemp("sharded")
    torch.manual_seed(0)
    model = create_model("deeplabv3_mobilenetv2", num_classes=3, width_mult=0.5).eval()
    info = ModelInfo(arch="deeplabv3_mobilenetv2", options=model.build_spec["options"],
                     class_names=("a", "b", "c"), mean=(120.0,) * 3, std=(60.0,) * 3)  # fmt: skip
    cfg = to_dict(load_config("own_data"))
    ckpt = save(root / "best.pt", best_state(model=model, step=1, config=cfg, info=info,
                                             metrics={}))  # fmt: skip
    data = root / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        image = rng.integers(0, 256, (41, 57, 3), dtype=np.uint8)
        Image.fromarray(image).save(data / "images" / f"{i}.png")
        mask = rng.integers(0, 3, (41, 57), dtype=np.uint8)
        Image.fromarray(mask).save(data / "masks" / f"{i}.png")
    (data / "class_names.txt").write_text("a\nb\nc\n")
    return ckpt, data


def _run(args: list[str], nproc: int) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    if nproc == 1:
        cmd = [sys.executable, "-m", "deeplab.cli", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "deeplab.cli", *args]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
def test_two_processes_predict_the_same_files(setup, tmp_path):
    ckpt, data = setup
    for n in (1, 2):
        _run(["predict", str(data / "images"), "--weights", str(ckpt), "--out",
              str(tmp_path / f"p{n}"), "--quiet"], nproc=n)  # fmt: skip
    one = sorted(p.name for p in (tmp_path / "p1").iterdir())
    two = sorted(p.name for p in (tmp_path / "p2").iterdir())
    assert one == two and len(one) == 5 * 3  # label PNG, colour PNG, overlay per image
    for name in one:
        if name.endswith(".png"):
            a = np.asarray(Image.open(tmp_path / "p1" / name))
            b = np.asarray(Image.open(tmp_path / "p2" / name))
            np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_two_processes_evaluate_to_the_same_figures(setup, tmp_path):
    ckpt, data = setup
    for n in (1, 2):
        _run(["eval", "--weights", str(ckpt), "--dataset", "folder", "--data-root", str(data),
              "--split", "all", "--out", str(tmp_path / f"m{n}.json"), "--workers", "0",
              "--quiet"], nproc=n)  # fmt: skip
    one = json.loads((tmp_path / "m1.json").read_text())
    two = json.loads((tmp_path / "m2.json").read_text())
    assert one["images"] == two["images"] == 5
    assert one["confusion_matrix"] == two["confusion_matrix"]
    assert one["miou"] == pytest.approx(two["miou"])
