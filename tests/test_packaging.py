"""The sdist and the wheel: they build, pass `twine check`, and hold what a user needs
(recipes, photos, the web page, py.typed, LICENSE and NOTICE) and nothing of the repo's
own (tests, benchmarks, docs, weights)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import deeplab
from deeplab.config import list_recipes

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(REPO)], check=True,
                   capture_output=True)  # fmt: skip
    return out


def test_both_build_and_pass_twine_check(dist):
    files = sorted(p.name for p in dist.iterdir())
    assert files == [f"deeplab_pytorch-{deeplab.__version__}-py3-none-any.whl",
                     f"deeplab_pytorch-{deeplab.__version__}.tar.gz"]  # fmt: skip
    check = subprocess.run([sys.executable, "-m", "twine", "check", "--strict",
                            *map(str, dist.iterdir())], capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_wheel_holds_the_package_data_and_nothing_else(dist):
    (wheel,) = dist.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    info = f"deeplab_pytorch-{deeplab.__version__}.dist-info"
    must = {f"deeplab/recipes/{name}.yaml" for name in list_recipes()} | {
        "deeplab/photos/astronaut.jpg", "deeplab/photos/chelsea.jpg", "deeplab/photos/coffee.jpg",
        "deeplab/photos/README.md", "deeplab/py.typed", "deeplab/serve/static/index.html",
        "deeplab/serve/static/app.js", f"{info}/licenses/LICENSE", f"{info}/licenses/NOTICE",
        "deeplab/cli/__init__.py", "deeplab/models/backbones/xception.py",
        "deeplab/serve/static/live.js", "deeplab/serve/static/web/index.html",
    }  # fmt: skip
    runtime = REPO / "deeplab" / "serve" / "static" / "ort"
    if runtime.is_dir():  # fetched by `make web-runtime`: the wheel must carry it all
        must |= {f"deeplab/serve/static/ort/{p.name}" for p in runtime.iterdir()}
    assert must <= names, must - names
    top = {n.split("/")[0] for n in names}
    assert top == {"deeplab", info}, top
    assert not [n for n in names if n.endswith((".pt", ".pth", ".onnx", ".tflite", ".pyc"))]
    metadata = zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode()
    assert "Name: deeplab-pytorch" in metadata and f"Version: {deeplab.__version__}" in metadata
    assert "Provides-Extra: serve" in metadata and "License-Expression: Apache-2.0" in metadata
    entry = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "deeplab = deeplab.cli:main" in entry
    assert wheel.stat().st_size < 25_000_000  # the browser runtime is most of it (11 MB)


def test_the_sdist_leaves_the_repo_tooling_out(dist):
    (sdist,) = dist.glob("*.tar.gz")
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    assert {"LICENSE", "NOTICE", "CHANGELOG.md", "pyproject.toml", "deeplab/recipes/own_data.yaml",
            "deeplab/photos/astronaut.jpg"} <= names  # fmt: skip
    assert not [n for n in names if n.split("/")[0] in ("tests", "benchmarks", "docs", ".ci")]
