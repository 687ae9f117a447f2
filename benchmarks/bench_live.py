"""Live segmentation in a browser: frames per second, end to end, and the cold start.

    DEEPLAB_WEIGHTS_DIR=../shared/weights python benchmarks/bench_live.py \
        --camvid ../shared/data/camvid [--seconds 15] [--screenshot docs/live.png]

Debian's Chromium (headless, Playwright) with a fake camera playing 101 CamVid val frames
(480x360) at 30 fps. For the mobile 257 model and the default VOC model, each row runs
the camera for ``--seconds`` and reads the page's own counters:

- the exported web page (`deeplab export --format web`) on onnxruntime-web: WASM with the
  threads the page may use (cross-origin isolated: min(4, cores)), WASM with 1 thread,
  and WebGPU when headless Chromium offers an adapter (a software one says nothing about
  GPU speed);
- `deeplab serve`'s live view through the server (frames as JPEG over a WebSocket);
- native onnxruntime on the same machine and thread count: the same ONNX file, labels
  contract, one 480x360 frame per run (the network alone, no camera or drawing).

fps: frames segmented and drawn per second after the first; ms: a frame's segment-and-draw
time (moving average); cold: from opening the page to the first drawn frame (the page,
runtime download and compile, model, session, camera, first frame). ``--screenshot``
saves the server page's live portrait view at a phone's viewport (Pixel 7 emulation), the
astronaut as camera. Frames are segmented at the model's canvas size (257 or 513 across)
when it has one, as the pages do.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from deeplab.data.images import example_photos, read_image
from deeplab.export import export, model_to_export
from deeplab.quantize import ms_per_image
from deeplab.system import cpu_name
from deeplab.web import CHROMIUM_ARGS, chromium_path, export_web, static_server, write_fake_camera

REPO = Path(__file__).resolve().parents[1]
MODELS = ("deeplabv3_257_mv_gpu", "deeplabv3_mnv2_pascal_quant")
FAKE_CAMERA = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")


def run_camera(p, url: str, camera: Path, seconds: float, *, start: str, stats: str,
               gpu: bool = False, before=None) -> dict | None:  # fmt: skip
    """Open ``url``, click ``start``, let the camera run; the page's stats (None if the page
    could not run it)."""
    args = [*CHROMIUM_ARGS, *FAKE_CAMERA, f"--use-file-for-fake-video-capture={camera}"]
    if gpu:
        args = [a for a in args if a != "--disable-gpu"] + ["--enable-unsafe-webgpu"]
    browser = p.chromium.launch(executable_path=chromium_path(), args=args)
    try:
        page = browser.new_page()
        opened = time.perf_counter()
        page.goto(url)
        if before:
            before(page)
        failed = page.evaluate("document.body.dataset.error")
        if failed:
            raise RuntimeError(f"the page could not start: {failed}")
        page.click(start)
        page.wait_for_function(f"({stats})?.frames >= 1", timeout=180_000, polling=20)
        cold = time.perf_counter() - opened
        time.sleep(seconds)
        result = page.evaluate(f"({stats})")
        result["cold"] = cold
        result["runtime"] = page.evaluate("(window.deeplabWeb || {}).runtime || ''")
        return result
    finally:
        browser.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "deeplab.cli", "serve", "--model", model,
                             "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("deeplab serve did not start")


def main() -> None:
    from playwright.sync_api import sync_playwright

    p_ = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p_.add_argument("--camvid", type=Path, default=REPO.parent / "shared" / "data" / "camvid")
    p_.add_argument("--seconds", type=float, default=15)
    p_.add_argument("--threads", type=int, default=2, help="native onnxruntime threads")
    p_.add_argument("--models", nargs="+", default=list(MODELS))
    p_.add_argument("--screenshot", type=Path, help="save the phone portrait view here")
    args = p_.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="live-"))
    frames = [np.asarray(Image.open(f).convert("RGB"))
              for f in sorted((args.camvid / "val").glob("*.png"))]  # fmt: skip
    camera = write_fake_camera(tmp / "camvid.y4m", frames, fps=30)
    print(f"{cpu_name()}, {os.cpu_count()} cores; headless Chromium; fake camera: "
          f"{len(frames)} CamVid val frames 480x360 at 30 fps; {args.seconds:g} s per row")
    print("| model | runs | fps | ms/frame | cold start s |")
    print("|---|---|---|---|---|")
    with sync_playwright() as p:
        for name in args.models:
            model, info = model_to_export(model=name)
            site, _, _ = export_web(model, info, tmp / name, check=False)
            with static_server(site) as url:
                rows = [("browser, WASM, page's threads", "?backend=wasm", False),
                        ("browser, WASM, 1 thread", "?backend=wasm&threads=1", False),
                        ("browser, WebGPU", "?backend=webgpu", True)]  # fmt: skip
                for label, query, gpu in rows:
                    try:
                        s = run_camera(p, url + query, camera, args.seconds, start="#live-start",
                                       stats="window.deeplabWeb?.live.stats", gpu=gpu,
                                       before=lambda page: page.wait_for_function(
                                           "window.deeplabWeb?.ready || document.body."
                                           "dataset.error", timeout=60_000))  # fmt: skip
                    except Exception as e:  # no WebGPU adapter, say so
                        print(f"| {name} | {label} | - | - | - ({str(e).splitlines()[0][:80]}) |")
                        continue
                    print(f"| {name} | {label} ({s['runtime']}) | {s['fps']:.1f} | "
                          f"{s['ms']:.0f} | {s['cold']:.2f} |", flush=True)
            proc, url = start_server(name)
            try:
                s = run_camera(p, url, camera, args.seconds, start="#live-start",
                               stats="window.deeplabPage?.live.stats",
                               before=lambda page: (page.wait_for_selector("body[data-ready]"),
                                                    page.click('#tabs [data-tab="live"]'),
                                                    page.select_option("#where", "server")))
                print(f"| {name} | deeplab serve, server path (WebSocket) | {s['fps']:.1f} | "
                      f"{s['ms']:.0f} | {s['cold']:.2f} |", flush=True)
            finally:
                proc.terminate()
                proc.wait(10)
            path, _ = export(model, info, tmp / f"{name}.onnx", check=False)
            (ms,) = ms_per_image([path], frames[:20], threads=args.threads)
            print(f"| {name} | native onnxruntime, {args.threads} threads (network alone) | "
                  f"{1000 / ms:.1f} | {ms:.0f} | - |", flush=True)
        if args.screenshot:
            still = write_fake_camera(tmp / "still.y4m", [np.asarray(Image.fromarray(
                read_image(example_photos()[0])).resize((480, 480)))] * 30)
            proc, url = start_server(MODELS[0])
            try:
                browser = p.chromium.launch(executable_path=chromium_path(), args=[
                    *CHROMIUM_ARGS, *FAKE_CAMERA, f"--use-file-for-fake-video-capture={still}"])
                context = browser.new_context(**{**p.devices["Pixel 7"],
                                                 "device_scale_factor": 1})  # fmt: skip
                page = context.new_page()
                page.goto(url)
                page.wait_for_selector("body[data-ready]")
                page.click('#tabs [data-tab="live"]')
                page.check('input[name="mode"][value="portrait"]')
                page.click("#live-start")
                page.wait_for_function("window.deeplabPage.live.stats.frames >= 10",
                                       timeout=120_000)  # fmt: skip
                page.screenshot(path=str(args.screenshot), full_page=True)
                browser.close()
                print(f"screenshot: {args.screenshot}")
            finally:
                proc.terminate()
                proc.wait(10)


if __name__ == "__main__":
    main()
