"""`deeplab serve` on a network: tokens, hosts, limits enforced while reading, deadlines,
photo formats only, the access log and /metrics, and the refusals at start."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from _helpers.serving import serve_command, toy_segmenter  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from deeplab.cli import main  # noqa: E402
from deeplab.inference import Segmenter  # noqa: E402
from deeplab.serve.app import create_app  # noqa: E402
from deeplab.serve.guard import Access, Limits  # noqa: E402

TOKEN = "correct-horse-battery-staple"


def _segmenter(delay: float = 0.0) -> Segmenter:
    return toy_segmenter(delay)


def _image(fmt: str = "PNG", size=(24, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 200, 200)).save(buffer, format=fmt)
    return buffer.getvalue()


def _files(data: bytes = b"", name: str = "x.png"):
    return {"image": (name, data or _image(), "application/octet-stream")}


@contextlib.contextmanager
def _uvicorn(app):
    """The app served by uvicorn on a free loopback port, in a thread."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                           access_log=False))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def _written_chars() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux's /proc/self/io")
def test_a_chunked_upload_over_the_limit_is_cut_while_it_arrives():
    """30 MB sent chunked (no Content-Length) against a 1 MB limit: 413 long before the end,
    and nothing written to a file (the process's own write counter, and the temp folder)."""
    app = create_app({"tiny": _segmenter()}, limits=Limits(max_upload_mb=1))
    temp = set(os.listdir(tempfile.gettempdir()))
    with _uvicorn(app) as port:
        written = _written_chars()
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: "
                     b"chunked\r\nContent-Type: multipart/form-data; boundary=bnd\r\n\r\n")
        head = b'--bnd\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n\r\n'
        chunk = os.urandom(64 * 1024)
        sent = 0
        with contextlib.suppress(OSError):  # the server closes the connection at the limit
            sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
            while sent < 30 * 2**20:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        answer = sock.recv(4096)
        sock.close()
        written = _written_chars() - written
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"1 MB limit" in answer
    assert sent < 20 * 2**20  # cut while arriving (socket buffers hold a few MB)
    assert written < 2**20, f"{written} bytes written to files during the upload"
    assert set(os.listdir(tempfile.gettempdir())) <= temp


def test_the_api_needs_the_token_the_page_and_probes_do_not():
    app = create_app({"tiny": _segmenter()}, access=Access(token=TOKEN))
    with TestClient(app) as client:
        r = client.get("/v1/models")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in r.json()["detail"]
        assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code \
            == 401  # fmt: skip
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/v1/models", headers=auth).status_code == 200
        assert client.post("/v1/segment", files=_files()).status_code == 401
        assert client.post("/v1/segment", files=_files(), headers=auth).status_code == 200
        for open_path in ("/", "/static/app.js", "/healthz", "/readyz"):
            assert client.get(open_path).status_code == 200, open_path
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=auth).status_code == 200


def test_the_live_socket_takes_the_token_as_the_page_encodes_it():
    token = "a+b/c=d e&f%g-0123456789"  # what a hand-chosen token may hold
    app = create_app({"tiny": _segmenter()}, access=Access(token=token))
    with TestClient(app) as client:
        query = urlencode({"model": "tiny", "token": token})  # as URLSearchParams does
        with client.websocket_connect(f"/v1/live?{query}") as socket:
            socket.send_bytes(np.array([8, 6], "<u4").tobytes() + bytes(8 * 6 * 3))
            answer = socket.receive_bytes()
        assert np.frombuffer(answer[:8], "<u4").tolist() == [8, 6] and len(answer) == 8 + 48
        with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect(
                "/v1/live?" + urlencode({"model": "tiny", "token": token[:-1]})):
            pass
        assert refused.value.code == 1008


def test_a_loopback_server_answers_only_to_loopback_names():
    app = create_app({"tiny": _segmenter()}, access=Access.for_bind("127.0.0.1", None))
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/healthz", headers={"Host": "localhost:8000"}).status_code == 200
        r = client.get("/v1/models", headers={"Host": "attacker.example"})
        assert r.status_code == 421 and "--allowed-host attacker.example" in r.json()["detail"]
    extra = Access.for_bind("127.0.0.1", None, ["seg.lan"])
    with TestClient(create_app({"tiny": _segmenter()}, access=extra),
                    base_url="http://seg.lan") as client:  # fmt: skip
        assert client.get("/healthz").status_code == 200


def test_only_photo_formats_are_decoded():
    with TestClient(create_app({"tiny": _segmenter()})) as client:
        for fmt in ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"):
            r = client.post("/v1/segment", files=_files(_image(fmt)))
            assert r.status_code == 200, (fmt, r.text)
        for fmt in ("TGA", "SGI", "PCX"):
            r = client.post("/v1/segment", files=_files(_image(fmt), f"x.{fmt.lower()}"))
            assert r.status_code == 400 and "send JPEG, PNG" in r.json()["detail"], fmt
        eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
        r = client.post("/v1/segment", files=_files(eps, "x.eps"))
        assert r.status_code == 400 and "x.eps: not a readable image" in r.json()["detail"]


def test_malformed_and_odd_forms_get_a_reason():
    with TestClient(create_app({"tiny": _segmenter()})) as client:
        r = client.post("/v1/segment", content=b"{}", headers={"content-type": "application/json"})
        assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
        r = client.post("/v1/segment", data={"output": "json"})  # no image part
        assert r.status_code in (415, 422)
        r = client.post("/v1/segment", files={"other": ("x.png", _image(), "image/png")})
        assert r.status_code == 422 and "form field 'image'" in r.json()["detail"]
        assert client.post("/v1/segment", files=_files(b"", "empty.png")).status_code in (400, 200)
        many = {f"f{i}": (None, "x") for i in range(20)}
        r = client.post("/v1/segment", files={**many, **_files()})
        assert r.status_code == 400 and "parts" in r.json()["detail"]
        r = client.post("/v1/segment", content=b"--b\r\nnot a part",
                        headers={"content-type": "multipart/form-data; boundary=zz"})  # fmt: skip
        assert r.status_code in (400, 422)
        r = client.post("/v1/segment", files=_files(), data={"alpha": "lots"})
        assert r.status_code == 422


def test_a_request_past_its_deadline_gets_504_and_keeps_its_slot():
    app = create_app({"slow": _segmenter(delay=1.0)},
                     limits=Limits(concurrency=1, queue=2, deadline_s=0.3))  # fmt: skip
    with TestClient(app) as client:
        start = time.monotonic()
        r = client.post("/v1/segment", files=_files())
        assert r.status_code == 504 and "0.3 s" in r.json()["detail"]
        assert time.monotonic() - start < 0.9
        # The thread still runs: the next request waits for the slot, then its own deadline.
        assert client.post("/v1/segment", files=_files()).status_code == 504


def test_readyz_says_when_the_queue_is_full():
    app = create_app({"slow": _segmenter(delay=0.8)}, limits=Limits(concurrency=1, queue=0))
    with TestClient(app) as client:
        assert client.get("/readyz").json()["ready"] is True
        worker = threading.Thread(target=lambda: client.post("/v1/segment", files=_files()))
        worker.start()
        time.sleep(0.3)
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json() == {"ready": False, "queue": 1, "capacity": 1}
        assert client.post("/v1/segment", files=_files()).status_code == 503
        worker.join()
        assert client.get("/readyz").status_code == 200


def test_every_request_gets_an_access_log_line_and_metrics(caplog):
    app = create_app({"tiny": _segmenter()}, load_seconds={"tiny": 1.25})
    with TestClient(app) as client, caplog.at_level(logging.INFO, "deeplab.serve.access"):
        client.get("/healthz")
        client.post("/v1/segment", files=_files())
        client.post("/v1/segment", files=_files(b"not an image"))
        client.get("/no/such/page")
        metrics = client.get("/metrics").text
        client.get("/x%0A127.0.0.1 \"GET /admin\" 200")  # a forged line, escaped
    lines = [r.getMessage() for r in caplog.records if r.name == "deeplab.serve.access"]
    assert len(lines) == 6 and all("\n" not in line for line in lines)
    assert '/x\\n127.0.0.1' in lines[5]
    assert '"GET /healthz" 200' in lines[0] and " ms " in lines[0] and lines[0].endswith(" B")
    assert '"POST /v1/segment" 200' in lines[1] and '"POST /v1/segment" 400' in lines[2]
    assert 'deeplab_requests_total{path="/v1/segment",status="200"} 1.0' in metrics
    assert 'deeplab_requests_total{path="/v1/segment",status="400"} 1.0' in metrics
    assert 'deeplab_requests_total{path="other",status="404"} 1.0' in metrics
    assert 'deeplab_images_segmented_total{model="tiny"} 1.0' in metrics
    assert 'deeplab_model_load_seconds{model="tiny"} 1.25' in metrics
    assert "deeplab_queue_depth 0.0" in metrics
    assert 'deeplab_request_seconds_bucket{le="0.1",path="/v1/segment"}' in metrics


@pytest.mark.parametrize(("argv", "says"), [
    (["serve", "--host", "0.0.0.0"], "--token"),
    (["serve", "--host", "0.0.0.0", "--token", "short"], "too short"),
    (["serve", "--concurrency", "0"], "concurrency 0 must be >= 1"),
    (["serve", "--weights", "a/best.pt", "--weights", "b/best.pt"], "two models are named"),
    (["serve", "--workers", "0"], "--workers 0"),
])  # fmt: skip
def test_unsafe_or_impossible_settings_stop_at_start(argv, says, capsys, monkeypatch):
    monkeypatch.delenv("DEEPLAB_SERVE_TOKEN", raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err


@pytest.mark.slow
def test_workers_share_the_load_and_their_metrics_add_up(weights_dir, tmp_path):
    """`deeplab serve --workers 2`: both processes load the model, and a scrape of either
    counts every request (Prometheus multiprocess mode)."""
    import httpx

    env = {"DEEPLAB_WEIGHTS_DIR": str(weights_dir)}
    args = ["--workers", "2", "--model", "deeplabv3_257_mv_gpu"]
    with serve_command(args, env) as (url, proc):
        for _ in range(5):  # new connections: either worker may answer
            r = httpx.post(url + "/v1/segment", files=_files(_image("PNG", (64, 48))))
            assert r.status_code == 200
        metrics = [httpx.get(url + "/metrics").text for _ in range(4)]
        assert all('deeplab_requests_total{path="/v1/segment",status="200"} 5.0' in m
                   for m in metrics), metrics[0]  # fmt: skip
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert out.count("ready in") == 2 and "with 2 worker processes" in out


def test_served_models_are_named_by_entry_file_or_name(tmp_path):
    from deeplab.serve.run import model_names

    odd = tmp_path / "lr=0.01" / "best.pt"
    odd.parent.mkdir()
    odd.write_bytes(b"")
    named = model_names(["deeplabv3_257_mv_gpu"], ["camvid=runs/a/best.pt", str(odd)])
    assert named == {"deeplabv3_257_mv_gpu": ("deeplabv3_257_mv_gpu", None),
                     "camvid": (None, "runs/a/best.pt"), "best": (None, str(odd))}  # fmt: skip
    assert model_names([], []) == {"default": (None, None)}
