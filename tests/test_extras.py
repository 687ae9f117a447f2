"""A missing optional part: one line with the exact install command, exit status 2, before
any model loads. Each case hides the extra's modules (``sys.modules[name] = None`` makes
both ``import name`` and the lookup fail) and runs the command that needs it."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

from deeplab.cli import main
from deeplab.extras import EXTRAS, MissingExtra, install_command, missing, require

CASES = [
    # (extra, modules hidden, the command; {tmp} is a temporary folder)
    ("serve", ("fastapi",), ["serve"]),
    ("serve", ("uvicorn",), ["serve", "--model", "deeplabv3_257_mv_gpu"]),
    ("serve", ("python_multipart",), ["serve"]),
    ("serve", ("prometheus_client",), ["serve"]),
    ("export", ("onnxruntime",), ["serve", "--weights", "{tmp}/model.onnx"]),
    ("video", ("av",), ["predict", "{tmp}/clip.mp4", "--out", "{tmp}/out"]),
    ("export", ("onnx",), ["export", "--out", "{tmp}/model.onnx"]),
    ("export", ("onnxruntime",), ["export", "--out", "{tmp}/model.onnx"]),
    ("tflite", ("litert_torch",), ["export", "--format", "tflite", "--out", "{tmp}/m.tflite"]),
    ("tflite", ("ai_edge_litert",), ["export", "--format", "tflite", "--out", "{tmp}/m.tflite"]),
    ("export", ("onnxruntime",), ["predict", "{tmp}/photo.png", "--weights", "{tmp}/model.onnx"]),
    ("export", ("onnxruntime",), ["predict", "{tmp}/photo.png", "--runtime", "onnxruntime"]),
    ("export", ("onnxruntime",), ["eval", "--weights", "{tmp}/model.onnx", "--dataset", "folder",
                                  "--data-root", "{tmp}"]),
    ("plots", ("matplotlib",), ["eval", "--confusion", "{tmp}/c.png", "--dataset", "folder",
                                "--data-root", "{tmp}"]),
    ("labelme", ("skimage",), ["predict", "{tmp}/photo.png", "--labelme", "--out", "{tmp}/o"]),
    ("tensorboard", ("tensorboard",), ["train", "-c", "own_data", "data.root={tmp}",
                                       "train.tensorboard=true"]),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "hidden", "argv"), CASES,
                         ids=[f"{c[2][0]}-{c[1][0]}" for c in CASES])  # fmt: skip
def test_a_missing_extra_is_one_line_and_exit_2(extra, hidden, argv, tmp_path, monkeypatch,
                                                 capsys):  # fmt: skip
    (tmp_path / "clip.mp4").write_bytes(b"")
    (tmp_path / "photo.png").write_bytes(b"")
    for name in hidden:
        monkeypatch.setitem(sys.modules, name, None)
    assert missing(extra)
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert install_command(extra) in lines[0] and "Traceback" not in captured.err
    assert not (tmp_path / "out").exists()  # stopped before doing anything


def test_every_extra_is_named_with_its_modules():
    assert set(EXTRAS) == {"export", "tflite", "video", "serve", "crf", "plots", "labelme",
                           "tensorboard"}  # fmt: skip
    assert install_command("video") == "pip install 'deeplab-pytorch[video]'"


def test_require_says_what_needs_what(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(MissingExtra, match=r"^reading videos needs PyAV .*: pip install "):
        require("video", "reading videos")
    require("video", "x", ())  # nothing asked for: nothing missing


def test_without_numba_the_torch_crf_runs_and_says_so_once(monkeypatch, caplog):
    """The compiled CRF is the one optional part with a fallback: a note, not an error."""
    import deeplab.crf.compiled as compiled
    from deeplab import crf

    monkeypatch.setitem(sys.modules, "numba", None)
    monkeypatch.setattr(compiled, "_NUMBA", None)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    probs = rng.dirichlet(np.ones(3), (24, 32)).transpose(2, 0, 1).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="deeplab.crf"):
        first = crf.dense_crf(image, probs, iterations=2)
        crf.dense_crf(image, probs, iterations=2)
    notes = [r.getMessage() for r in caplog.records if "numba" in r.getMessage()]
    assert len(notes) == 1 and install_command("crf") in notes[0] and "torch CRF" in notes[0]
    assert first.shape == probs.shape and np.allclose(first.sum(0), 1, atol=1e-4)
