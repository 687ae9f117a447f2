"""`deeplab serve`: the REST API's answers and refusals, and the page in a real browser."""

from __future__ import annotations

import io
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from _helpers import PHOTOS
from _helpers.serving import serve_command, toy_segmenter
from fastapi.testclient import TestClient  # noqa: E402

from deeplab.inference import Segmenter  # noqa: E402
from deeplab.serve.app import Limits, create_app  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ASTRONAUT = PHOTOS / "astronaut.jpg"
TOKEN = "page-test-token-0123456789"


def _segmenter() -> Segmenter:
    return toy_segmenter()


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture()
def client():
    app = create_app({"tiny": _segmenter()}, limits=Limits(concurrency=1, queue=1,
                                                           max_upload_mb=0.5))  # fmt: skip
    with TestClient(app) as client:
        yield client


def test_health_models_and_schema(client):
    assert client.get("/healthz").json() == {"status": "ok", "models": ["tiny"]}
    (model,) = client.get("/v1/models").json()
    assert model["name"] == "tiny" and model["classes"] == ["night", "day", "dusk"]
    assert len(model["palette"]) == 3 and model["default"]
    schema = client.get("/openapi.json").json()
    assert "/v1/segment" in schema["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_segment_json_and_every_picture(client):
    image = np.zeros((20, 30, 3), np.uint8)
    image[:, 15:] = 255  # right half bright
    files = {"image": ("half.png", _png(image), "image/png")}
    body = client.post("/v1/segment", files=files, data={"raw_labels": "true",
                                                         "polygons": "true"}).json()  # fmt: skip
    assert body["width"] == 30 and body["height"] == 20
    shares = {c["name"]: c["share"] for c in body["classes"]}
    assert shares == pytest.approx({"night": 0.5, "day": 0.5})
    import base64

    labels = np.frombuffer(base64.b64decode(body["labels"]), np.uint8).reshape(20, 30)
    assert (labels[:, :15] == 0).all() and (labels[:, 15:] == 1).all()
    assert {s["label"] for s in body["shapes"]} == {"night", "day"}  # class 0 is no "background"
    for output, kind in (("labels", "PNG"), ("color", "PNG"), ("overlay", "JPEG")):
        r = client.post("/v1/segment", files=files, data={"output": output})
        assert r.status_code == 200
        with Image.open(io.BytesIO(r.content)) as im:
            assert im.format == kind and im.size == (30, 20)
            if output == "labels":
                assert im.mode == "P" and np.array_equal(np.asarray(im), labels)
    r = client.post("/v1/segment", files=files, data={"output": "portrait", "portrait": "day"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"


def test_refusals_say_why(client):
    ok = {"image": ("x.png", _png(np.zeros((8, 8, 3), np.uint8)), "image/png")}
    r = client.post("/v1/segment", files={"image": ("notes.txt", b"hello", "text/plain")})
    assert r.status_code == 400 and "notes.txt: not a readable image" in r.json()["detail"]
    big = {"image": ("big.bin", os.urandom(600_000), "image/png")}
    assert client.post("/v1/segment", files=big).status_code == 413
    bomb = Image.new("L", (10_000, 6_000))  # 60 megapixels in a small PNG
    buffer = io.BytesIO()
    bomb.save(buffer, format="PNG")
    r = client.post("/v1/segment", files={"image": ("bomb.png", buffer.getvalue(), "image/png")})
    assert r.status_code == 400 and "megapixel limit" in r.json()["detail"]
    for name in ("other", "../../etc/passwd", "/tmp/model.pt"):
        r = client.post("/v1/segment", files=ok, data={"model": name})
        assert r.status_code == 404 and "loaded: tiny" in r.json()["detail"]
    r = client.post("/v1/segment", files=ok, data={"output": "gif"})
    assert r.status_code == 422
    r = client.post("/v1/segment", files=ok, data={"output": "portrait", "portrait": "cat"})
    assert r.status_code == 422 and "night" in r.json()["detail"]


def test_beyond_the_queue_requests_get_503_and_none_is_lost(monkeypatch):
    seg = _segmenter()
    slow = seg.predict

    def predict(image, **kwargs):
        time.sleep(0.5)
        return slow(image, **kwargs)

    monkeypatch.setattr(seg, "predict", predict)
    files = {"image": ("x.png", _png(np.zeros((8, 8, 3), np.uint8)), "image/png")}
    codes: list[int] = []
    app = create_app({"tiny": seg}, limits=Limits(concurrency=1, queue=1))
    with TestClient(app) as client:  # one event loop for every request, as under uvicorn
        threads = [threading.Thread(target=lambda: codes.append(
            client.post("/v1/segment", files=files).status_code)) for _ in range(4)]  # fmt: skip
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join(timeout=30)
    assert sorted(codes) == [200, 200, 503, 503]  # one running, one queued, two refused


# --- the page, in Debian's Chromium driven by Playwright -------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def server(weights_dir):
    """`deeplab serve` with the default VOC model, started as a user would."""
    if not (weights_dir / "deeplabv3_mnv2_pascal_quant.tflite").is_file():
        pytest.skip("the default VOC model is not in the weights folder")
    env = {"DEEPLAB_WEIGHTS_DIR": str(weights_dir), "OMP_NUM_THREADS": "2",
           "DEEPLAB_SERVE_TOKEN": TOKEN}  # as an operator would set it  # fmt: skip
    with serve_command([], env) as (url, _):
        yield url


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install "
                    "chromium); CI installs it")  # fmt: skip
def test_page_in_a_real_browser(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    from deeplab.cli import main

    assert main(["predict", str(ASTRONAUT), "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    expected = np.asarray(Image.open(tmp_path / "cli" / "astronaut.png"))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])  # fmt: skip
        page = browser.new_page(accept_downloads=True)
        page.goto(server)
        # The server wants a token: the page asks once, then keeps it for the tab.
        page.wait_for_selector("#token-form:not([hidden])")
        page.fill("#token", "not-the-token")
        page.click("#token-form button")
        page.wait_for_function("document.querySelector('#message').textContent.includes("
                               "'refused')")  # fmt: skip
        page.fill("#token", TOKEN)
        page.click("#token-form button")
        page.wait_for_selector("body[data-ready=true]")
        assert "default" in page.inner_text("#model")
        page.set_input_files("#file", str(ASTRONAUT))
        page.wait_for_selector(".card[data-ready=true]", timeout=60_000)
        legend = page.inner_text(".card .legend")
        assert "person" in legend and "%" in legend
        assert page.get_attribute(".card canvas", "data-view") == "overlay"
        page.check('input[name="mode"][value="portrait"]')
        assert page.get_attribute(".card canvas", "data-view") == "portrait"
        assert page.input_value("#portrait-class") == "person"
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        with page.expect_download() as download:
            page.click(".card .download")
        saved = tmp_path / "download.png"
        download.value.save_as(saved)
        got = np.asarray(Image.open(saved))
        assert got.shape == expected.shape and (got == expected).mean() > 0.999
        page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                              "buffer": b"not an image"}])  # fmt: skip
        page.wait_for_function("document.querySelector('#message').textContent.length > 0")
        assert "not a readable image" in page.inner_text("#message")
        browser.close()
