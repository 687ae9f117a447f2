"""DeepLab in the browser: a trained model shipped as a web page, and the model the live
page of ``deeplab serve`` runs on the viewer's device.

``export_web`` writes a self-contained folder: ``index.html`` and its scripts (the same
drawing, segmenting and live-camera modules as ``deeplab serve``'s page), the runtime
(onnxruntime-web, ``ort/``), ``model.onnx`` (the ONNX contract with uint8 labels, the web
variant: onnxruntime-web's WebGPU backend handles int64 poorly) and ``model.json`` (name,
class names, colours). It works from any static host; with the cross-origin isolation
headers (``_headers``, README.txt) onnxruntime-web uses several threads, else one. The
same check as the other formats: the page, run in headless Chromium, labels the check
photos as PyTorch does on >= 99.9% of pixels (skipped, with the reason, without Playwright
or Chromium).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import io
import json
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from deeplab import viz
from deeplab.checkpoint import ModelInfo
from deeplab.export import ExportError, LabelGraph, Parity, check_images, model_to_export
from deeplab.runtimes import cached_export

STATIC = Path(str(resources.files("deeplab.serve") / "static"))
RUNTIME = STATIC / "ort"
PAGE_MODULES = ("draw.js", "segment.js", "live.js", "style.css")
# What a static host must send for onnxruntime-web's threads (SharedArrayBuffer).
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin",
             "Cross-Origin-Embedder-Policy": "require-corp"}  # fmt: skip


def runtime_files() -> list[Path]:
    """The onnxruntime-web files this installation carries, or an ``ExportError``."""
    files = sorted(p for p in RUNTIME.glob("*") if p.is_file()) if RUNTIME.is_dir() else []
    if not any(p.suffix == ".wasm" for p in files):
        raise ExportError("this installation has no browser runtime (onnxruntime-web); in a "
                          "clone run `make web-runtime` (needs npm), or install the wheel")
    return files


def web_model(network: nn.Module, info: ModelInfo) -> Path:
    """The web variant of ``network`` (labels contract, uint8 labels), exported into the
    cache once."""
    return cached_export(network, info, "web", uint8_labels=True)


@functools.lru_cache(maxsize=8)
def web_model_for(entry: str | None, weights: str | None) -> Path:
    """The web variant of a served model named by zoo entry or weight file (an exported
    labels-contract ``.onnx`` is served as it is)."""
    if weights and str(weights).lower().endswith(".onnx"):
        return Path(weights)
    network, info = model_to_export(model=entry, weights=weights)
    return web_model(network, info)


def export_web(model: nn.Module, info: ModelInfo, out: str | Path, *, check: bool = True,
               check_folder: str | Path | None = None) -> tuple[Path, Parity | None, str]:
    """Write the page folder ``out`` (see the module's docstring); returns it, the page's
    parity with PyTorch (None when not checked) and a line saying how it was checked."""
    files = runtime_files()
    out = Path(out)
    if out.is_file():
        raise ExportError(f"--out {out} is a file; give a folder for the web page")
    out.mkdir(parents=True, exist_ok=True)
    (out / "ort").mkdir(exist_ok=True)
    for f in files:
        shutil.copyfile(f, out / "ort" / f.name)
    for name in PAGE_MODULES:
        shutil.copyfile(STATIC / name, out / name)
    for f in (STATIC / "web").iterdir():
        shutil.copyfile(f, out / f.name)
    shutil.copyfile(web_model(model, info), out / "model.onnx")
    palette = viz.palette_array(info.palette)[: info.num_classes].tolist()
    (out / "model.json").write_text(json.dumps({
        "name": info.extra.get("zoo_entry") or info.arch, "arch": info.arch,
        "classes": list(info.class_names), "palette": palette,
        "input_size": list(info.input_size) if info.input_size else None,
        "runtime": f"onnxruntime-web {(RUNTIME / 'VERSION').read_text().strip()}",
    }, indent=1) + "\n")  # fmt: skip
    (out / "_headers").write_text("/*\n" + "".join(f"  {k}: {v}\n" for k, v in ISOLATION.items()))
    (out / "README.txt").write_text(README.format(headers="\n".join(
        f"    {k}: {v}" for k, v in ISOLATION.items())))  # fmt: skip
    if not check:
        return out, None, "not checked (--no-check)"
    try:
        labels = page_labels(out, check_images(check_folder))
    except BrowserUnavailable as e:
        return out, None, f"not checked in a browser: {e}"
    parity = compare_with_pytorch(model, info, check_images(check_folder), labels)
    if not parity.ok:
        raise ExportError(f"{out} was written but its parity check {parity}")
    return out, parity, "checked in headless Chromium"


README = """This folder is a DeepLab model that runs in a web browser: open index.html through
any static web server, drop a photo or open the camera. Nothing leaves the device.

    python -m http.server --directory .      # then http://localhost:8000/

onnxruntime-web uses several threads only when the page is cross-origin isolated; a
server must then send, for every file:

{headers}

(`_headers` says so for Netlify and Cloudflare Pages; python -m http.server sends no
headers, and the page runs on one thread). Browsers open the camera only on https://
pages or on localhost.

model.onnx: uint8 RGB [1, H, W, 3] in, uint8 labels [1, H, W] out (class names and
colours in model.json); ort/: ONNX Runtime Web (MIT, see ort/LICENSE).
"""


class BrowserUnavailable(RuntimeError):
    """Playwright or Chromium is missing; the page cannot be checked here."""


def chromium_path() -> str:
    """Chromium's executable: ``DEEPLAB_CHROMIUM``, else chromium on the PATH."""
    found = os.environ.get("DEEPLAB_CHROMIUM") or shutil.which("chromium") or \
        shutil.which("chromium-browser") or shutil.which("google-chrome")  # fmt: skip
    if not found:
        raise BrowserUnavailable("no Chromium (apt-get install chromium, or set "
                                 "DEEPLAB_CHROMIUM)")  # fmt: skip
    return found


CHROMIUM_ARGS = ("--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-gpu")  # fmt: skip


@contextlib.contextmanager
def static_server(folder: Path) -> Iterator[str]:
    """``folder`` served on a free loopback port with the isolation headers; yields its URL."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                          ".wasm": "application/wasm", ".mjs": "text/javascript",
                          ".js": "text/javascript"}  # fmt: skip

        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def end_headers(self):
            for key, value in ISOLATION.items():
                self.send_header(key, value)
            super().end_headers()

        def log_message(self, *args):  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def chromium_page(url: str, *, args: Sequence[str] = ()):
    """A Playwright page of headless Chromium at ``url``."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise BrowserUnavailable("no Playwright (pip install playwright; its own browser "
                                 "download is not needed)") from None  # fmt: skip
    executable = chromium_path()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=[*CHROMIUM_ARGS, *args])
        try:
            page = browser.new_page()
            page.goto(url)
            yield page
        finally:
            browser.close()


def page_labels(folder: Path, photos: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The exported page's labels for ``photos``, computed in headless Chromium."""
    with static_server(folder) as url, chromium_page(url) as page:
        page.wait_for_function("window.deeplabWeb?.ready || document.body.dataset.error",
                               timeout=120_000)  # fmt: skip
        failed = page.evaluate("document.body.dataset.error")
        if failed:
            raise ExportError(f"the exported page did not start in Chromium: {failed}")
        results = []
        for photo in photos:
            buffer = io.BytesIO()
            Image.fromarray(photo).save(buffer, format="PNG")
            url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
            got = page.evaluate("(u) => window.deeplabWeb.segmentDataUrl(u)", url)
            flat = np.frombuffer(base64.b64decode(got["labels"]), np.uint8)
            results.append(flat.reshape(got["height"], got["width"]))
        return results


@torch.no_grad()
def compare_with_pytorch(
    model: nn.Module, info: ModelInfo, photos: Sequence[np.ndarray],
    labels: Sequence[np.ndarray], *, threshold: float = 0.999,
) -> Parity:  # fmt: skip
    """The page's ``labels`` against PyTorch's (the same pipeline, ``LabelGraph``)."""
    graph = LabelGraph(model.float().eval(), info, probabilities=False).eval()
    same = total = 0
    for photo, theirs in zip(photos, labels, strict=True):
        ours = graph(torch.from_numpy(photo.copy())[None])[0].numpy()
        if ours.shape != theirs.shape:
            raise ExportError(f"the page returned {theirs.shape} labels for a "
                              f"{photo.shape[:2]} photo")  # fmt: skip
        same += int((ours == theirs).sum())
        total += ours.size
    return Parity(len(photos), same / max(total, 1), float("nan"), threshold)


def write_fake_camera(path: str | Path, frames: Sequence[np.ndarray], fps: int = 30) -> Path:
    """RGB frames (uint8 HxWx3, even sides) as a Y4M clip (4:2:0, BT.601 full range), the
    format Chromium's fake camera plays (``--use-file-for-fake-video-capture=PATH``, an
    absolute path), at ``fps``: a still photo repeated makes a camera held still."""
    path = Path(path)
    h, w = frames[0].shape[:2]
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg XYSCSS=420JPEG\n".encode())
        for rgb in frames:
            ycc = np.asarray(Image.fromarray(rgb).convert("YCbCr"), dtype=np.float32)
            chroma = ycc[:, :, 1:].reshape(h // 2, 2, w // 2, 2, 2).mean(axis=(1, 3))
            f.write(b"FRAME\n")
            f.write(ycc[:, :, 0].round().astype(np.uint8).tobytes())
            for k in range(2):
                f.write(chroma[:, :, k].round().astype(np.uint8).tobytes())
    return path
