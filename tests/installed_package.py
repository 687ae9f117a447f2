"""The package as a user gets it: build the wheel, install it into a fresh environment and
run the README's commands from an empty folder, with no clone in sight.

    python tests/installed_package.py [--weights-dir ../shared/weights] [--keep]
    make test-installed

Steps: ``python -m build`` (sdist, then the wheel from it) and ``twine check``; a new venv
that sees this interpreter's packages through a ``.pth`` line (torch is not downloaded
again) and gets the wheel with the ``export,video,serve,labelme`` extras; then, in an empty
temporary folder: ``deeplab --version`` and ``env``, ``examples --out``, ``predict`` on a
photo (and with ``--portrait``), ``export`` with its default check on the shipped photos,
``export --int8`` and ``--format web`` (the wheel carries the browser runtime), the
own-data walk-through (``labelme2voc``, ``check-data``, ``train -c own_data`` for a
few steps, ``eval`` of the checkpoint, ``predict --labelme``), ``train -c
camvid_v3plus_mobilenetv2`` by recipe name on a tiny CamVid-layout dataset written here,
``serve`` answering ``/healthz`` and one ``POST /v1/segment``, and ``predict`` on a short
video written here. Pretrained weights come from ``--weights-dir`` (no network).
Each step prints its time; the first failure prints the command's output and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# A tiny dataset in CamVid's layout and a short clip, made by the installed environment's
# own Python (numpy, Pillow and PyAV come with the package and its extras).
MAKE_DATA = r"""
import sys, numpy as np, av
from pathlib import Path
from PIL import Image
root = Path(sys.argv[1])
rng = np.random.default_rng(0)
for split, n in (("train", 4), ("val", 2)):
    (root / split).mkdir(parents=True); (root / f"{split}annot").mkdir()
    for i in range(n):
        mask = np.zeros((48, 64), np.uint8); mask[24:] = 3; mask[:, 40:] = 8
        image = (rng.random((48, 64, 3)) * 50 + mask[..., None] * 20).astype(np.uint8)
        Image.fromarray(image).save(root / split / f"f{i}.png")
        Image.fromarray(mask).save(root / f"{split}annot" / f"f{i}.png")
    (root / f"{split}.txt").write_text("".join(
        f"{split}/f{i}.png {split}annot/f{i}.png\n" for i in range(n)))
photo = np.asarray(Image.open(sys.argv[2]).convert("RGB").resize((160, 160)))
with av.open(sys.argv[3], "w") as out:
    stream = out.add_stream("libx264", rate=10); stream.width = stream.height = 160
    stream.pix_fmt = "yuv420p"
    for k in range(8):
        frame = av.VideoFrame.from_ndarray(np.roll(photo, 4 * k, axis=1), format="rgb24")
        out.mux(stream.encode(frame))
    out.mux(stream.encode())
"""
TINY_TRAIN = ["train.batch_size=2", "train.iters=3", "train.val_every=3", "train.progress=false",
              "data.num_workers=0", "data.crop_size=65", "data.check=full"]  # fmt: skip


class Failed(RuntimeError):
    pass


def run(cmd: list[str], *, cwd: Path, env: dict, expect: str | None = None,
        timeout: float = 600) -> str:  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    seconds = time.perf_counter() - start
    shown = " ".join("<script>" if "\n" in c else Path(c).name if c.startswith(str(cwd.parent))
                     else c for c in cmd)  # fmt: skip
    print(f"{seconds:6.1f} s  {shown[:110]}", flush=True)
    output = done.stdout + done.stderr
    if done.returncode != 0 or (expect is not None and expect not in output):
        raise Failed(f"{' '.join(cmd)} (exit {done.returncode}"
                     + (f", no {expect!r} in its output" if expect else "") + f"):\n{output}")
    return output


def build(dist: Path, env: dict) -> Path:
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)], cwd=dist, env=env)
    run([sys.executable, "-m", "twine", "check", *map(str, dist.iterdir())], cwd=dist, env=env,
        expect="PASSED")  # fmt: skip
    (wheel,) = dist.glob("*.whl")
    return wheel


def make_venv(where: Path, wheel: Path, env: dict) -> Path:
    """A venv whose own site-packages hold the wheel; this interpreter's packages (torch,
    the extras' dependencies) are reachable after them, through a .pth line."""
    run([sys.executable, "-m", "venv", str(where)], cwd=where.parent, env=env)
    python = where / "bin" / "python"
    where_site = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.check_output([str(python), "-c", where_site], text=True).strip())
    (site / "_reuse_outer_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([str(python), "-m", "pip", "install", "-q", f"{wheel}[export,video,serve,labelme]"],
        cwd=where.parent, env=env)  # fmt: skip
    return where / "bin"


def post_image(port: int, photo: Path) -> dict:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\""
            f"{photo.name}\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + photo.read_bytes() \
        + f"\r\n--{boundary}--\r\n".encode()  # fmt: skip
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/segment", data=body,
                                     headers={"Content-Type": f"multipart/form-data; "
                                              f"boundary={boundary}"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def serve(bin_dir: Path, cwd: Path, env: dict, photo: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    server = subprocess.Popen([str(bin_dir / "deeplab"), "serve", "--port", str(port)], cwd=cwd,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)  # fmt: skip
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.perf_counter() - start > 120:
                    raise Failed(f"deeplab serve did not answer /healthz:\n"
                                 f"{server.stdout.read() if server.stdout else ''}") from None
                time.sleep(0.5)
        answer = post_image(port, photo)
        if "person" not in [c["name"] for c in answer["classes"]]:
            raise Failed(f"POST /v1/segment of {photo.name} found no person: {answer}")
        print(f"{time.perf_counter() - start:6.1f} s  deeplab serve: /healthz, then POST "
              f"/v1/segment {photo.name} -> {[c['name'] for c in answer['classes']]}")
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights-dir", type=Path,
                        default=os.environ.get("DEEPLAB_WEIGHTS_DIR", REPO.parent / "shared" /
                                               "weights"))  # fmt: skip
    parser.add_argument("--labelme", type=Path,
                        default=REPO.parent / "shared" / "data" / "labelme_voc_example")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="deeplab-installed-"))
    total = time.perf_counter()
    try:
        (tmp / "dist").mkdir()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        wheel = build(tmp / "dist", env)
        size = wheel.stat().st_size
        bin_dir = make_venv(tmp / "venv", wheel, env)
        work = tmp / "user"  # an empty folder: no clone, no configs/, no examples/
        work.mkdir()
        env = {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
               "DEEPLAB_WEIGHTS_DIR": str(args.weights_dir.resolve()),
               "DEEPLAB_CACHE": str(tmp / "cache")}  # fmt: skip
        deeplab = [str(bin_dir / "deeplab")]
        where = run([str(bin_dir / "python"), "-c", "import deeplab; print(deeplab.__file__)"],
                    cwd=work, env=env)  # fmt: skip
        if not where.startswith(str(tmp / "venv")):
            raise Failed(f"`import deeplab` found {where.strip()}, not the installed wheel")
        run(deeplab + ["--version"], cwd=work, env=env, expect="deeplab ")
        run(deeplab + ["env"], cwd=work, env=env, expect="deeplab predict runs the network")
        run(deeplab + ["examples", "--out", "photos"], cwd=work, env=env, expect="astronaut.jpg")
        # Quickstart and Predict
        run(deeplab + ["predict", "photos/astronaut.jpg", "--out", "out"], cwd=work, env=env,
            expect="person")  # fmt: skip
        run(deeplab + ["predict", "photos/astronaut.jpg", "--portrait", "person", "--out", "out"],
            cwd=work, env=env)  # fmt: skip
        for name in ("astronaut.png", "astronaut_color.png", "astronaut_overlay.jpg",
                     "astronaut_portrait.jpg"):  # fmt: skip
            if not (work / "out" / name).is_file():
                raise Failed(f"deeplab predict wrote no out/{name}")
        # Export, checked by default on the photos inside the package
        run(deeplab + ["export", "--out", "model.onnx"], cwd=work, env=env,
            expect="parity with PyTorch: passed")  # fmt: skip
        run(deeplab + ["predict", "photos/coffee.jpg", "--weights", "model.onnx", "--out", "o2"],
            cwd=work, env=env)  # fmt: skip
        run(deeplab + ["export", "--int8", "--calibrate", "photos", "--out", "model_int8.onnx"],
            cwd=work, env=env, expect="as int8")  # fmt: skip
        run(deeplab + ["export", "--model", "deeplabv3_257_mv_gpu", "--format", "web", "--out",
                       "site"], cwd=work, env=env, expect="exported as a web page")
        if not (work / "site" / "ort" / "LICENSE").is_file():
            raise Failed("the web export carries no browser runtime (the wheel lacks it)")
        # Own data: labelme -> index masks -> check -> train (recipe by name) -> eval -> predict
        if args.labelme.is_dir():
            shutil.copytree(args.labelme, work / "my_jsons")
            run(deeplab + ["labelme2voc", "my_jsons", "my_data", "--labels",
                           "my_jsons/labels.txt"], cwd=work, env=env)  # fmt: skip
            stems = sorted(p.stem for p in (work / "my_data" / "JPEGImages").glob("*.jpg"))
            for split, names in (("train", stems[:-1]), ("val", stems[-1:])):
                (work / "my_data" / f"{split}.txt").write_text("".join(
                    f"JPEGImages/{s}.jpg SegmentationClass/{s}.png\n" for s in names))
            run(deeplab + ["check-data", "folder", "--root", "my_data", "--weights-json",
                           "my_data/class_weights.json"], cwd=work, env=env)  # fmt: skip
            run(deeplab + ["train", "-c", "own_data", "data.root=my_data",
                           "train.out_dir=runs/mine", "model.backbone_weights=null",
                           "model.init_from=deeplabv3_mnv2_pascal_quant", *TINY_TRAIN],
                cwd=work, env=env, expect="best val mIoU")  # fmt: skip
            run(deeplab + ["eval", "--weights", "runs/mine/best.pt", "--dataset", "folder",
                           "--data-root", "my_data"], cwd=work, env=env, expect="mean IoU")
            run(deeplab + ["predict", "photos", "--weights", "runs/mine/best.pt", "--out", "pre",
                           "--labelme"], cwd=work, env=env)  # fmt: skip
            if not (work / "pre" / "astronaut.json").is_file():
                raise Failed("predict --labelme wrote no pre/astronaut.json")
        else:
            print(f"  (own-data steps skipped: no labelme examples at {args.labelme})")
        # Train by recipe name on a tiny CamVid-layout dataset; a short video for predict
        run([str(bin_dir / "python"), "-c", MAKE_DATA, "camvid_tiny", "photos/astronaut.jpg",
             "clip.mp4"], cwd=work, env=env)  # fmt: skip
        run(deeplab + ["train", "-c", "camvid_v3plus_mobilenetv2", "data.root=camvid_tiny",
                       "train.out_dir=runs/camvid", "model.frozen_modules=[]", *TINY_TRAIN],
            cwd=work, env=env, expect="best val mIoU")  # fmt: skip
        run(deeplab + ["eval", "-c", "camvid_v3plus_mobilenetv2", "data.root=camvid_tiny",
                       "--weights", "runs/camvid/best.pt"], cwd=work, env=env, expect="mean IoU")
        serve(bin_dir, work, env, work / "photos" / "astronaut.jpg")
        run(deeplab + ["predict", "clip.mp4", "--model", "deeplabv3_257_mv_gpu", "--out", "vid"],
            cwd=work, env=env, expect="frames/s")  # fmt: skip
        if not (work / "vid" / "clip_overlay.mp4").is_file():
            raise Failed("deeplab predict clip.mp4 wrote no vid/clip_overlay.mp4")
    except (Failed, subprocess.TimeoutExpired) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"the installed package passed every step in {time.perf_counter() - total:.0f} s "
          f"(wheel {wheel.name}, {size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
