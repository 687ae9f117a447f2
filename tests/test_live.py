"""Live segmentation of a camera, in Debian's Chromium driven by Playwright with a fake
camera playing a photo held still (a Y4M clip at 30 fps): `deeplab serve`'s live view,
in the browser and through the server, and the page `deeplab export --format web` writes.
Each runs, reports its frames per second, and labels the frame it drew as `deeplab
predict` labels that same frame (>= 99% of pixels)."""

from __future__ import annotations

import base64
import os

import numpy as np
import pytest
from _helpers import PHOTOS
from _helpers.serving import serve_command
from PIL import Image

from deeplab.cli import main
from deeplab.web import CHROMIUM_ARGS, RUNTIME, static_server, write_fake_camera

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = os.environ.get("DEEPLAB_CHROMIUM") or next(
    (p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(p)), None)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install "
                       "chromium); CI installs it"),
    pytest.mark.skipif(not RUNTIME.is_dir(), reason="no browser runtime: make web-runtime"),
]  # fmt: skip
MODEL = "deeplabv3_257_mv_gpu"
TOKEN = "live-test-token-0123456789"
LAST_FRAME = """(live) => {
  const { frame, labels } = live.last;
  const canvas = document.createElement("canvas");
  canvas.width = frame.width;
  canvas.height = frame.height;
  canvas.getContext("2d").putImageData(frame, 0, 0);
  let text = "";
  for (let i = 0; i < labels.length; i += 8192) {
    text += String.fromCharCode(...labels.subarray(i, i + 8192));
  }
  return { png: canvas.toDataURL("image/png"), labels: btoa(text), width: frame.width,
           height: frame.height, stats: live.stats };
}"""


@pytest.fixture(scope="module")
def camera(tmp_path_factory):
    photo = np.asarray(Image.open(PHOTOS / "astronaut.jpg").convert("RGB").resize((480, 360)))
    return write_fake_camera(tmp_path_factory.mktemp("cam") / "still.y4m", [photo] * 30)


@pytest.fixture(scope="module")
def server(weights_dir):
    env = {"DEEPLAB_WEIGHTS_DIR": str(weights_dir), "DEEPLAB_SERVE_TOKEN": TOKEN}
    with serve_command(["--model", MODEL], env) as (url, _):
        yield url + "/"


def _browser(p, camera):
    return p.chromium.launch(executable_path=CHROMIUM, args=[
        *CHROMIUM_ARGS, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={camera}"])  # fmt: skip


def _agrees_with_predict(got: dict, tmp_path, name: str) -> float:
    """Share of pixels where the page's labels equal `deeplab predict` on the same frame."""
    png = tmp_path / f"{name}.png"
    png.write_bytes(base64.b64decode(got["png"].split(",", 1)[1]))
    assert main(["predict", str(png), "--model", MODEL, "--out", str(tmp_path / name),
                 "--quiet"]) == 0  # fmt: skip
    expected = np.asarray(Image.open(tmp_path / name / f"{name}.png"))
    labels = np.frombuffer(base64.b64decode(got["labels"]), np.uint8)
    labels = labels.reshape(got["height"], got["width"])
    assert labels.shape == expected.shape
    return float((labels == expected).mean())


def test_the_live_view_runs_in_the_browser_and_on_the_server(server, camera, tmp_path):
    with sync_api.sync_playwright() as p:
        browser = _browser(p, camera)
        page = browser.new_page()
        page.goto(server)
        page.wait_for_selector("#token-form:not([hidden])")
        page.fill("#token", TOKEN)
        page.click("#token-form button")
        page.wait_for_selector("body[data-ready=true]")
        assert page.evaluate("self.crossOriginIsolated")  # COOP/COEP: WASM threads
        page.click('#tabs button[data-tab="live"]')
        for where, says in (("browser", "in this browser"), ("server", "on the server")):
            page.select_option("#where", where)
            page.click("#live-start")
            backend = "server" if where == "server" else "wasm"
            page.wait_for_function(f"window.deeplabPage.live.segmenter?.backend === '{backend}' "
                                   "&& window.deeplabPage.live.running "
                                   "&& window.deeplabPage.live.stats.frames >= 6",
                                   timeout=120_000)  # fmt: skip
            status = page.inner_text("#live-status")
            assert says in status and "frames/s" in status, status
            got = page.evaluate(LAST_FRAME, page.evaluate_handle("window.deeplabPage.live"))
            # a 257-canvas model: frames segmented at 257 across (480x360 -> 257x193)
            assert got["stats"]["fps"] > 0.5 and (got["width"], got["height"]) == (257, 193)
            agreement = _agrees_with_predict(got, tmp_path, where)
            assert agreement >= 0.99, (where, agreement)
            page.click("#live-stop")
        assert "WebAssembly" in page.evaluate(
            "Object.values(window.deeplabPage.segmenters).map(s => s.runtime).join()")
        browser.close()


def test_the_exported_web_page_runs_a_camera(camera, tmp_path, weights_dir, monkeypatch):
    monkeypatch.setenv("DEEPLAB_WEIGHTS_DIR", str(weights_dir))
    folder = tmp_path / "site"
    assert main(["export", "--model", MODEL, "--format", "web", "--out", str(folder)]) == 0
    model = __import__("json").loads((folder / "model.json").read_text())
    assert model["classes"][15] == "person" and (folder / "ort" / "LICENSE").is_file()
    with static_server(folder) as url, sync_api.sync_playwright() as p:
        browser = _browser(p, camera)
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("window.deeplabWeb?.ready", timeout=120_000)
        page.click("#live-start")
        page.wait_for_function("window.deeplabWeb.live.stats.frames >= 6", timeout=120_000)
        got = page.evaluate(LAST_FRAME, page.evaluate_handle("window.deeplabWeb.live"))
        assert "frames/s" in page.inner_text("#status")
        assert _agrees_with_predict(got, tmp_path, "exported") >= 0.99
        browser.close()


def test_a_phone_sees_the_page_laid_out_for_it(server):
    """The page at a phone's viewport (Playwright's Pixel 7): nothing wider than the screen."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
        context = browser.new_context(**p.devices["Pixel 7"])
        page = context.new_page()
        page.goto(server)
        page.wait_for_selector("#token-form:not([hidden])")
        page.click('#tabs button[data-tab="live"]')
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= page.viewport_size["width"], width
        assert page.is_visible("#live-start") and page.is_visible("#where")
        box = page.locator("#live-canvas").bounding_box()
        assert box is not None and box["width"] <= page.viewport_size["width"]
        browser.close()
