"""The web app and REST API of ``deeplab serve`` (FastAPI; the extra ``serve``).

- ``GET /``: a page to drop photos on and look at what the models see (every asset is
  served from this package: it works offline);
- ``POST /v1/segment``: multipart field ``image`` (JPEG, PNG, WebP, BMP, GIF or TIFF);
  form fields ``model`` (a loaded model's name), ``output`` = ``json`` (default: the
  classes found by name with their pixel shares, ``polygons=true`` adds labelme polygons,
  ``raw_labels=true`` the labels as base64 bytes) | ``labels`` (index PNG) | ``color``
  (PNG) | ``overlay`` (JPEG, ``alpha``) | ``portrait`` (JPEG, the class ``portrait`` sharp);
- ``GET /v1/models``: the loaded models with their classes and colours;
  ``GET /v1/models/{name}/model.onnx``: the model the live view runs in the browser (the
  ONNX contract with uint8 labels, exported once into the cache);
- ``WS /v1/live?model=NAME``: the live view's server path, where the browser cannot run
  the model: a frame in and its labels out, each as ``width, height`` (uint32 LE) then the
  pixels (RGB) or the labels (uint8);
- ``GET /healthz`` (alive), ``GET /readyz`` (models loaded and the queue not full),
  ``GET /metrics`` (Prometheus), the OpenAPI schema at ``/openapi.json``.

``guard.Guard`` checks every request first (host, token, admission, byte limits). At most
``concurrency`` images are decoded, segmented and encoded at once, in worker threads, so
the server keeps answering; a request not answered within ``deadline_s`` gets 504. A model
is chosen by name among those loaded: no request can make the server read a file.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from PIL import Image

from deeplab import viz
from deeplab.data.images import DataError, read_image
from deeplab.data.labelme import mask_to_labelme
from deeplab.extras import require
from deeplab.inference import Prediction, Segmenter

require("serve", "deeplab serve")
from fastapi import (  # noqa: E402
    FastAPI,
    HTTPException,
    Request,
    WebSocket,
    WebSocketDisconnect,
)
from fastapi.concurrency import run_in_threadpool  # noqa: E402
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response  # noqa: E402
from fastapi.staticfiles import StaticFiles  # noqa: E402

from deeplab.serve.forms import FormError, FormReader  # noqa: E402
from deeplab.serve.guard import Access, Guard, Limits, Traffic  # noqa: E402
from deeplab.serve.observe import Metrics  # noqa: E402
from deeplab.web import web_model_for  # noqa: E402

OUTPUTS = ("json", "labels", "color", "overlay", "portrait")
# Photo formats only: Pillow opens many more (EPS through Ghostscript, PSD, SGI, TGA, ...),
# each one more decoder facing the network.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
SEGMENT_FORM = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["image"], "properties": {
            "image": {"type": "string", "format": "binary",
                      "description": "the photo: " + ", ".join(FORMATS)},
            "model": {"type": "string", "description": "a loaded model (GET /v1/models)"},
            "output": {"type": "string", "enum": list(OUTPUTS), "default": "json"},
            "polygons": {"type": "boolean", "default": False,
                         "description": "json: add labelme polygons"},
            "raw_labels": {"type": "boolean", "default": False,
                           "description": "json: the labels as base64 uint8"},
            "alpha": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5,
                      "description": "overlay opacity"},
            "portrait": {"type": "string", "description": "portrait: the class kept sharp"},
        }}}}},
}  # fmt: skip


@dataclass(frozen=True)
class Ask:
    """One request's choices, checked."""

    model: str
    output: str
    polygons: bool
    raw_labels: bool
    alpha: float
    portrait: str
    filename: str
    data: bytes


def create_app(
    segmenters: dict[str, Segmenter],
    *,
    limits: Limits | None = None,
    access: Access | None = None,
    load_seconds: dict[str, float] | None = None,
    sources: dict[str, tuple[str | None, str | None]] | None = None,
) -> FastAPI:
    """The app serving ``segmenters`` (name -> Segmenter; the first is the default);
    ``sources`` (name -> (zoo entry, weight file)) lets the live view fetch each model for
    the browser."""
    if not segmenters:
        raise ValueError("deeplab serve needs at least one model")
    limits, access = limits or Limits(), access or Access()
    app = FastAPI(title="deeplab", version="1", description=__doc__.split("\n\n")[0],
                  docs_url=None, redoc_url=None)  # Swagger UI would come from a CDN
    traffic, metrics = Traffic(ready=True), Metrics()
    for name, seconds in (load_seconds or {}).items():
        metrics.load_seconds.labels(name).set(seconds)
    app.add_middleware(Guard, limits=limits, access=access, traffic=traffic, metrics=metrics)
    slots = asyncio.Semaphore(limits.concurrency)
    default = next(iter(segmenters))
    static = resources.files("deeplab.serve") / "static"

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return (static / "index.html").read_text()

    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "models": list(segmenters)}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        full = traffic.admitted >= limits.concurrency + limits.queue
        ready = traffic.ready and not full
        return JSONResponse({"ready": ready, "queue": traffic.admitted,
                             "capacity": limits.concurrency + limits.queue},
                            status_code=200 if ready else 503)  # fmt: skip

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        body, kind = metrics.exposition()
        return Response(body, media_type=kind)

    @app.get("/v1/models")
    def models() -> list[dict[str, Any]]:
        return [
            {"name": name, "default": name == default, "classes": list(seg.class_names),
             "palette": viz.palette_array(seg.palette)[: seg.num_classes].tolist(),
             "input_size": list(seg.input_size) if seg.input_size else None}
            for name, seg in segmenters.items()
        ]  # fmt: skip

    exporting = asyncio.Lock()

    @app.get("/v1/models/{name}/model.onnx", include_in_schema=False)
    async def browser_model(name: str) -> FileResponse:
        if name not in segmenters:
            raise HTTPException(404, f"no model {name!r}; loaded: {', '.join(segmenters)}")
        if name not in (sources or {}):
            raise HTTPException(404, f"{name} has no browser model; live runs on the server")
        async with exporting:  # exported once (the cache), not by every first viewer
            path = await run_in_threadpool(web_model_for, *sources[name])
        return FileResponse(path, media_type="application/octet-stream",
                            filename=f"{name}.onnx")  # fmt: skip

    @app.websocket("/v1/live")
    async def live(socket: WebSocket, model: str = "") -> None:
        name = model or default
        if name not in segmenters:
            await socket.close(code=1008, reason=f"no model {name!r}")
            return
        if traffic.live >= limits.concurrency + limits.queue:
            await socket.close(code=1013, reason="busy: too many live viewers; try again later")
            return
        seg = segmenters[name]
        traffic.live += 1
        await socket.accept()
        try:
            while True:  # one frame at a time: the next one is read after this answer
                frame = await socket.receive_bytes()
                try:
                    rgb = _raw_frame(frame, limits.max_pixels)
                except HTTPException as e:
                    await socket.send_text(JSONResponse({"detail": e.detail}).body.decode())
                    continue

                def work(rgb: np.ndarray = rgb) -> bytes:
                    pred = seg.predict(rgb)
                    metrics.images.labels(name).inc()
                    h, w = pred.labels.shape
                    head = np.array([w, h], "<u4").tobytes()
                    return head + pred.labels.astype(np.uint8).tobytes()

                try:
                    await socket.send_bytes(await within_deadline(slots, work, limits.deadline_s))
                except HTTPException as e:
                    await socket.send_text(JSONResponse({"detail": e.detail}).body.decode())
        except WebSocketDisconnect:
            pass
        finally:
            traffic.live -= 1

    @app.post("/v1/segment", openapi_extra=SEGMENT_FORM)
    async def segment(request: Request) -> Response:
        ask = _ask(await _read_form(request), segmenters, default)
        seg = segmenters[ask.model]

        def work() -> Response:
            pred = _predict(seg, ask.data, ask.filename, limits.max_pixels)
            metrics.images.labels(ask.model).inc()
            return _respond(pred, ask)

        return await within_deadline(slots, work, limits.deadline_s)

    return app


async def within_deadline(slots: asyncio.Semaphore, work: Callable[[], Any],
                          deadline_s: float) -> Any:  # fmt: skip
    """``work()`` in a worker thread once a slot is free; 504 past ``deadline_s`` (waiting
    included). A thread cannot be stopped: one past its deadline keeps its slot until it
    ends, so no more than ``concurrency`` images are ever in work."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    try:
        await asyncio.wait_for(slots.acquire(), timeout=deadline_s)
    except asyncio.TimeoutError:
        raise HTTPException(504, f"no slot came free within {deadline_s:g} s; try again "
                                 "later") from None  # fmt: skip
    task = asyncio.ensure_future(run_in_threadpool(work))
    task.add_done_callback(lambda _: slots.release())
    try:
        return await asyncio.wait_for(asyncio.shield(task), timeout=max(0.0, end - loop.time()))
    except asyncio.TimeoutError:
        raise HTTPException(504, f"the image was not segmented within {deadline_s:g} s; "
                                 "send a smaller one or try again later") from None  # fmt: skip


async def _read_form(request: Request):
    try:
        reader = FormReader(request.headers.get("content-type"))
        async for chunk in request.stream():  # Guard has capped the bytes
            reader.feed(chunk)
        return reader.finish()
    except FormError as e:
        raise HTTPException(e.status, str(e)) from None


def _raw_frame(message: bytes, max_pixels: int) -> np.ndarray:
    """A live frame: width and height (uint32 LE), then width x height x 3 RGB bytes."""
    if len(message) < 8:
        raise HTTPException(400, "a frame is width, height (uint32 LE) and its RGB pixels")
    w, h = (int(v) for v in np.frombuffer(message[:8], "<u4"))
    if w * h > max_pixels or len(message) != 8 + 3 * w * h or not w or not h:
        raise HTTPException(400, f"a {w}x{h} frame needs {3 * w * h} RGB bytes (got "
                                 f"{len(message) - 8}; at most {max_pixels} pixels)")  # fmt: skip
    return np.frombuffer(message, np.uint8, offset=8).reshape(h, w, 3)


def _ask(form, segmenters: dict[str, Segmenter], default: str) -> Ask:
    """The request's fields, checked: 404 for an unknown model, 422 for a bad value."""
    fields = form.fields
    name = fields.get("model") or default
    if name not in segmenters:
        raise HTTPException(404, f"no model {name!r}; loaded: {', '.join(segmenters)}")
    output = fields.get("output") or "json"
    if output not in OUTPUTS:
        raise HTTPException(422, f"output {output!r}; choose one of: {', '.join(OUTPUTS)}")
    try:
        alpha = float(fields.get("alpha") or 0.5)
    except ValueError:
        alpha = -1.0
    if not 0.0 <= alpha <= 1.0:
        raise HTTPException(422, f"alpha {fields.get('alpha')!r} must be a number in [0, 1]")
    portrait = fields.get("portrait") or ""
    seg = segmenters[name]
    if output == "portrait" and portrait not in seg.class_names:
        raise HTTPException(422, f"portrait needs a class of {name}: "
                                 f"{', '.join(seg.class_names)}")  # fmt: skip
    if "image" not in form.files:
        raise HTTPException(422, "no image: send the photo in the form field 'image' "
                                 "(curl -F image=@photo.jpg)")  # fmt: skip
    filename, data = form.files["image"]
    if not data:
        raise HTTPException(400, f"{filename}: the file is empty")
    return Ask(name, output, _flag(fields, "polygons"), _flag(fields, "raw_labels"), alpha,
               portrait, filename, data)  # fmt: skip


def _flag(fields: dict[str, str], key: str) -> bool:
    value = (fields.get(key) or "false").strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise HTTPException(422, f"{key}={value!r}: give true or false")
    return value in ("true", "1", "yes", "on")


def _predict(seg: Segmenter, data: bytes, filename: str, max_pixels: int) -> Prediction:
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as pil:  # reads the header only
            if pil.width * pil.height > max_pixels:
                raise HTTPException(400, f"{filename}: {pil.width}x{pil.height} pixels, over the "
                                         f"{max_pixels / 1e6:g} megapixel limit")  # fmt: skip
            pil.load()
            rgb = read_image(pil)
    except (OSError, SyntaxError, ValueError, DataError, Image.DecompressionBombError) as e:
        raise HTTPException(400, f"{filename}: not a readable image ({e}); send "
                                 f"{', '.join(FORMATS)}") from None  # fmt: skip
    return seg.predict(rgb)


def _respond(pred: Prediction, ask: Ask) -> Response:
    labels = pred.labels
    if ask.output == "json":
        h, w = labels.shape
        body: dict[str, Any] = {
            "width": w, "height": h,
            "classes": [{"name": n, "share": s} for n, s in pred.shares().items()],
        }  # fmt: skip
        if ask.polygons:
            # Traced on at most 2 megapixels: points scaled back, time and memory bounded.
            body["shapes"] = mask_to_labelme(labels, pred.class_names, image_path="",
                                             max_pixels=2_000_000)["shapes"]  # fmt: skip
        if ask.raw_labels:
            body["labels"] = base64.b64encode(labels.astype(np.uint8).tobytes()).decode()
        return JSONResponse(body)
    buffer = io.BytesIO()
    if ask.output == "labels":
        viz.index_image(labels, pred.palette).save(buffer, format="PNG", compress_level=1)
        media = "image/png"
    elif ask.output == "color":
        Image.fromarray(viz.colorize(labels, pred.palette)).save(buffer, format="PNG",
                                                                 compress_level=1)  # fmt: skip
        media = "image/png"
    else:
        if ask.output == "overlay":
            shown = viz.overlay(pred.image, labels, pred.palette, alpha=ask.alpha)
        else:
            shown = viz.portrait(pred.image, pred.mask(ask.portrait))
        Image.fromarray(shown).save(buffer, format="JPEG", quality=90)
        media = "image/jpeg"
    return Response(buffer.getvalue(), media_type=media)
